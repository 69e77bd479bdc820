"""SQuAD 2.0 study (docs/RESULTS.md): the fine-tuned encoder, span AdapterPoolers on its
token-level embeddings, and their ensembles, on the article split of the official dev file.

    python benchmarks/squad_study.py --out runs/squad

runs (or reuses, when already finished with the same settings) each stage through the CLI users
run, timing each one:

1. ``bertvision finetune --task squad2-articles --epochs 2 --save-at 0.3 1 --lr 1e-4``
2. ``bertvision embed`` of every split with the checkpoint(s) in ``--checkpoints``
3. ``bertvision train`` span heads, ``--head-seeds`` seeds, on each store
4. ``bertvision ensemble``: every head seed with the encoder (max and mean), and all heads +
   the encoder

and writes ``OUT/study.json`` and a markdown table (``OUT/study.md``). Data: only the official
dev file exists here, so train / validation / test are its seeded article split
(``squad2-articles``); thresholds and epochs are chosen on validation, test is scored once.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bertvision.metrics import mean_std as spread

CLI = [str(Path(sys.executable).parent / "bertvision")]
ORIGINAL_POSITIONS = 386  # the original study stored every window at 386 positions, float32


def run(args: list[str], log: Path) -> float:
    """Run one CLI stage, its output to ``log``; returns wall seconds."""
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"$ bertvision {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run(CLI + args, stdout=f, stderr=subprocess.STDOUT, env=os.environ)
    if proc.returncode:
        sys.exit(f"stage failed ({proc.returncode}): bertvision {' '.join(args)}; see {log}")
    return time.perf_counter() - t0


def mean_std(values) -> tuple[float, float, int]:
    values = list(values)
    return (*spread(values).values(), len(values))


def fmt(ms) -> str:
    m, s, n = ms
    return f"{m:.2f} ± {s:.2f}" if n > 1 else f"{m:.2f}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="study folder")
    p.add_argument("--epochs", type=float, default=2.0, help="fine-tuning length (default: 2)")
    p.add_argument("--lr", type=float, default=1e-4, help="fine-tuning learning rate (default: 1e-4)")
    p.add_argument("--checkpoints", nargs="+", default=["1"], help="epoch fractions to embed (default: 1)")
    p.add_argument("--head-seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--seed", type=int, default=0, help="fine-tuning seed")
    p.add_argument("--report", action="store_true", help="only rebuild the table from OUT/study.json")
    args = p.parse_args()
    root = Path(args.out)
    if args.report:
        result = json.loads((root / "study.json").read_text())
        (root / "study.md").write_text(table(result, args))
        print(table(result, args))
        return
    root.mkdir(parents=True, exist_ok=True)
    log = root / "study.log"
    task = "squad2-articles"
    ft = root / f"ft-seed{args.seed}"
    stages: dict[str, float] = {}
    saves = sorted({0.3, *map(float, args.checkpoints)} - {args.epochs})
    stages["finetune (wall)"] = run(["finetune", "--task", task, "--epochs", f"{args.epochs:g}", "--save-at",
                                     *[f"{f:g}" for f in saves], "--lr", f"{args.lr:g}", "--seed", str(args.seed),
                                     "--out", str(ft)], log)  # fmt: skip
    ft_metrics = json.loads((ft / "metrics.json").read_text())
    result = {"finetune": ft_metrics, "stores": {}, "heads": {}, "ensembles": {}, "stage_seconds": stages}
    for frac in args.checkpoints:
        name = f"e{float(frac):g}"
        store, heads, ens = root / "emb" / name, root / "heads" / name, root / "ens" / name
        stages[f"embed {name} (wall)"] = run(["embed", "--task", task, "--checkpoint", str(ft / f"checkpoint-{name}"),
                                              "--out", str(store)], log)  # fmt: skip
        sizes = {}
        for split in ("train", "validation", "test"):
            manifest = json.loads((store / split / "_manifest.json").read_text())
            nbytes = sum((store / split / s["file"]).stat().st_size for s in manifest["shards"])
            tokens = manifest["extra"]["tokens"]
            sizes[split] = {"windows": manifest["rows"], "tokens": tokens, "bytes": nbytes,
                            "bytes_per_window": nbytes / manifest["rows"], "bytes_per_token": nbytes / tokens,
                            "seconds": manifest["extra"].get("last_run", {}).get("seconds")}  # fmt: skip
            L, H = manifest["num_hidden_states"], manifest["hidden_size"]
        original = ORIGINAL_POSITIONS * L * H * 4
        result["stores"][name] = {"splits": sizes, "original_bytes_per_window": original, "L": L, "H": H}
        stages[f"train heads {name} (wall)"] = run(["train", "--store", str(store), "--seeds",
                                                    *map(str, args.head_seeds), "--out", str(heads)], log)  # fmt: skip
        result["heads"][name] = json.loads((heads / "summary.json").read_text())
        seeds = [heads / f"seed-{s}" for s in args.head_seeds]
        per_seed = []
        t0 = time.perf_counter()
        for s in seeds:
            run(["ensemble", "--store", str(store), "--heads", str(s), "--encoder", "--out", str(ens / s.name)], log)
            per_seed.append(json.loads((ens / s.name / "ensemble.json").read_text()))
        run(["ensemble", "--store", str(store), "--heads", *map(str, seeds), "--encoder", "--out", str(ens / "all")], log)
        stages[f"ensembles {name} (wall)"] = time.perf_counter() - t0
        result["ensembles"][name] = {"per_seed": per_seed, "all": json.loads((ens / "all" / "ensemble.json").read_text())}
    (root / "study.json").write_text(json.dumps(result, indent=2))
    (root / "study.md").write_text(table(result, args))
    print(table(result, args))


def table(result: dict, args) -> str:
    keys = ("exact", "f1", "HasAns_f1", "NoAns_f1")
    lines = ["| model (test part of the article split) | EM | F1 | HasAns F1 | NoAns F1 | runs |", "|---|---|---|---|---|---|"]

    def row(label, runs):
        cells = [fmt(mean_std(r[k] for r in runs)) for k in keys]
        lines.append(f"| {label} | {' | '.join(cells)} | {len(runs)} |")

    for _name, meta in sorted(result["finetune"].items(), key=lambda kv: kv[1]["fraction"]):
        row(f"encoder alone, {meta['fraction']:g} epoch(s) (fine-tuning seed {args.seed})", [meta["test"]])
    for name, summary in result["heads"].items():
        row(f"AdapterPooler on {name} tokens (head seeds)", [r["test"] for r in summary["runs"]])
        ens = result["ensembles"][name]
        for method in ("max", "mean"):
            row(f"AdapterPooler + encoder {name}, {method} (one head each)", [e["ensembles"][method]["test"] for e in ens["per_seed"]])
            row(f"{len(summary['runs'])} AdapterPoolers + encoder {name}, {method}", [ens["all"]["ensembles"][method]["test"]])
    lines.append("")
    lines.append("| stage | wall seconds |")
    lines.append("|---|---|")
    for _name, meta in sorted(result["finetune"].items(), key=lambda kv: kv[1]["fraction"]):
        lines.append(f"| fine-tuning to {meta['fraction']:g} epoch(s): training steps only | {meta['train_seconds']:.0f} |")
        lines.append(f"| scoring that checkpoint: validation / test | {meta['validation_seconds']:.0f} / {meta['test_seconds']:.0f} |")
    for stage, sec in result["stage_seconds"].items():
        if not stage.startswith("finetune"):  # a reused run: its wall time is the line above
            lines.append(f"| {stage} | {sec:.0f} |")
    for name, summary in result["heads"].items():
        lines.append(f"| heads {name}: training per seed (mean), per epoch | {summary['train_seconds'] / len(summary['runs']):.0f}, "
                     f"{summary['epoch_seconds']:.0f} |")
    for name, st in result["stores"].items():
        lines.append("")
        lines.append(f"Store {name}: L={st['L']}, H={st['H']}; original layout {st['original_bytes_per_window']:,} bytes per window")
        for split, s in st["splits"].items():
            lines.append(f"- {split}: {s['windows']} windows, {s['tokens']} tokens, {s['bytes'] / 2**30:.2f} GiB, "
                         f"{s['bytes_per_window']:,.0f} bytes per window "
                         f"({st['original_bytes_per_window'] / s['bytes_per_window']:.1f}x smaller)")  # fmt: skip
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
