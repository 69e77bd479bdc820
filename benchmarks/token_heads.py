"""Sentence heads on cls, mean and token states, pretrained and 1-epoch fine-tuned (docs/RESULTS.md).

    BERTVISION_DATA=../shared/data .venv/bin/python benchmarks/token_heads.py \\
        --tasks rte mrpc stsb cola sst2 --study runs/tune-study --out runs/token-heads \\
        --json docs/bench/token_heads.json

For each task and encoder (the pretrained bundled all-MiniLM-L6-v2, and the 1-epoch checkpoint
of the tune study's fine-tuning baseline, seed 0: ``STUDY/<task>/baseline/seed-0/checkpoint-e1``)
the heads use the study's cls and mean stores (``STUDY/<task>/{pre,ft}-{cls,mean}``) and a
sentence token store embedded here (``OUT/<task>/{pre,ft}-tokens``, train and dev). Every head
has the default settings of `bertvision train` (adapter 64, shared, flatten layers, residual,
AdamW lr 1e-3, batch 64, up to 20 epochs, patience 4, selection on the validation part carved
from train), 3 seeds; the token heads differ only in ``pooling`` (mean, attention, and flatten
over 128 positions: the original GLUE head). Recorded per head: validation and dev mean / std
over the seeds, the train store's bytes per example, head seconds per training epoch (mean over
seeds and epochs), epochs run; beside them the study's full fine-tuning baseline (dev mean / std
over its 5 seeds). Finished runs are reused, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from bertvision import store as st
from bertvision.config import EmbedConfig, HeadArchitecture, HeadTrainConfig
from bertvision.embed import embed
from bertvision.io import atomic_write_json
from bertvision.train import train_heads

SEEDS = (0, 1, 2)
HEADS = {  # name -> (store selection, head architecture)
    "cls": ("cls", HeadArchitecture()),
    "mean": ("mean", HeadArchitecture()),
    "tokens-mean": ("tokens", HeadArchitecture(pooling="mean")),
    "tokens-attention": ("tokens", HeadArchitecture(pooling="attention")),
    "tokens-flatten": ("tokens", HeadArchitecture(pooling="flatten", positions=128)),
}


def token_store(task: str, checkpoint: str | None, out: Path, data_dir: str | None) -> tuple[Path, float]:
    """The sentence token store (train, dev) of one task and checkpoint; embedding seconds (0 if
    it was complete)."""
    t0 = time.perf_counter()
    if not all(st.is_complete(out / s) for s in ("train", "dev")):
        embed(EmbedConfig(task=task, checkpoint=checkpoint, splits=("train", "dev"), selection="tokens",
                          data_dir=data_dir), out)  # fmt: skip
        return out, time.perf_counter() - t0
    return out, 0.0


def head_row(store: Path, head: HeadArchitecture, out: Path, train_examples: int | None = None) -> dict:
    summary = train_heads(HeadTrainConfig(store=str(store), seeds=SEEDS, head=head, train_examples=train_examples), out)
    metrics = [json.loads((out / f"seed-{seed}" / "metrics.json").read_text()) for seed in SEEDS]
    epochs = [m["epochs_run"] for m in metrics]
    seconds = [m["epoch_seconds"] for m in metrics]  # each seed's mean training seconds per epoch
    manifest = st.read_manifest(store / "train")
    params = metrics[0]["parameters"]
    return {"store": str(store), "dev": summary["dev"], "validation": summary["validation"],
            "bytes_per_example": st.store_bytes(store / "train") / manifest["rows"],
            "head_seconds_per_epoch": statistics.mean(seconds), "epochs_run": epochs, "parameters": params,
            "train_examples": json.loads((out / "config.json").read_text())["train_rows"]}  # fmt: skip


METRIC_NAMES = {"rte": "accuracy", "mrpc": "f1 / accuracy", "stsb": "pearson / spearman", "cola": "mcc", "sst2": "accuracy"}


def _cell(dev: dict) -> str:
    return " / ".join(f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}" for v in dev.values())


def table(results: dict) -> str:
    """The markdown table of docs/RESULTS.md: dev mean ± std (%) per task, encoder and head."""
    lines = ["| task (metric) | encoder | " + " | ".join(HEADS) + " | full fine-tuning, 5 seeds |",
             "|---|---|" + "---|" * (len(HEADS) + 1)]
    for task, row in results.items():
        base = _cell(row["finetuning_baseline"]["dev"]["dev"]) if "finetuning_baseline" in row else "–"
        for enc, label in (("pre", "pretrained"), ("ft", "1-epoch fine-tuned")):
            cells = [_cell({k: v for k, v in row[f"{enc}-{h}"]["dev"].items()}) if f"{enc}-{h}" in row else "not run"
                     for h in HEADS]  # fmt: skip
            lines.append(f"| {task} ({METRIC_NAMES.get(task, '')}) | {label} | " + " | ".join(cells)
                         + f" | {base if enc == 'ft' else ''} |")  # fmt: skip
    lines += ["", "| task | encoder | " + " | ".join(f"{h}: B/example, s/epoch, params" for h in HEADS) + " |",
              "|---|---|" + "---|" * len(HEADS)]
    for task, row in results.items():
        for enc in ("pre", "ft"):
            cells = []
            for h in HEADS:
                r = row.get(f"{enc}-{h}")
                cells.append("not run" if r is None else
                             f"{r['bytes_per_example']:,.0f}, {r['head_seconds_per_epoch']:.2f}, {r['parameters']:,}")
            lines.append(f"| {task} | {enc} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["rte", "mrpc", "stsb", "cola", "sst2"])
    p.add_argument("--study", default="runs/tune-study", help="the tune study's folder (cls/mean stores, baselines)")
    p.add_argument("--out", required=True)
    p.add_argument("--json", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS), help="these heads, in this order")
    p.add_argument("--train-examples", type=int, default=None,
                   help="heads train on this seeded subset of the training part (fine-tuning's --train-examples draw)")
    p.add_argument("--encoders", nargs="+", choices=["pre", "ft"], default=["pre", "ft"])
    p.add_argument("--table", action="store_true", help="print the tables of --json (or OUT's results) and stop")
    args = p.parse_args()
    study, out = Path(args.study), Path(args.out)
    result_file = Path(args.json) if args.json else out / "token_heads.json"
    results = json.loads(result_file.read_text()) if result_file.exists() else {}
    if args.table:
        print(table(results))
        return
    for task in args.tasks:
        row = results.setdefault(task, {})
        baseline_file = study / task / "baseline" / "baseline.json"
        if baseline_file.exists():  # a study of only seed 0's run has none: the row keeps what it had
            baseline = json.loads(baseline_file.read_text())
            dev_keys = [k for k in baseline if k.startswith("dev")]
            row["finetuning_baseline"] = {"dev": {k: baseline[k] for k in dev_keys}, "chosen": baseline["chosen"],
                                          "train_examples": baseline.get("train_examples"), "seeds": baseline["seeds"]}  # fmt: skip
        for enc, checkpoint in (("pre", None), ("ft", str(study / task / "baseline" / "seed-0" / "checkpoint-e1"))):
            if enc not in args.encoders:
                continue
            tokens, embed_seconds = token_store(task, checkpoint, out / task / f"{enc}-tokens", args.data_dir)
            row.setdefault(f"{enc}-embed-tokens-seconds", round(embed_seconds, 1) or None)
            for name in args.heads:
                selection, head = HEADS[name]
                key = f"{enc}-{name}"
                if key in row:
                    continue
                store = tokens if selection == "tokens" else study / task / f"{enc}-{selection}"
                t0 = time.perf_counter()
                row[key] = {**head_row(store, head, out / task / "heads" / key, args.train_examples),
                            "wall_seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
                atomic_write_json(result_file, results)
                dev = row[key]["dev"]
                first = next(iter(dev))
                print(f"{task} {key}: dev {first} {dev[first]['mean']:.4f} ± {dev[first]['std']:.4f}, "
                      f"{row[key]['bytes_per_example']:.0f} B/example, {row[key]['head_seconds_per_epoch']:.2f} s/epoch",
                      flush=True)  # fmt: skip
        atomic_write_json(result_file, results)


if __name__ == "__main__":
    main()
