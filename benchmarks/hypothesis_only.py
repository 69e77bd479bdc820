"""Controls for heads on sentence pairs: the second sentence alone (RTE's hypothesis).

    BERTVISION_DATA=../shared/data .venv/bin/python benchmarks/hypothesis_only.py --task rte \\
        --store runs/token-heads/rte/pre-tokens --out runs/hypothesis-only/rte \\
        --json docs/bench/hypothesis_only_rte.json

Two controls, each with the same head (`bertvision train`'s defaults, ``--pooling``), the same
validation carve, selection on validation and dev scored once per seed:

- ``alone``: the second sentence embedded on its own (a user task of the second text field
  written from the task's own reader into OUT/task, then ``--selection tokens``) by the
  pretrained encoder: what the hypothesis says with no premise anywhere. This is the
  hypothesis-only baseline of Poliak et al. (2018) and Gururangan et al. (2018).
- ``in-pair``: the pair store's second-sentence tokens only, every first-sentence token dropped.
  Those states were computed with the premise in context (the encoder attends across the pair),
  so the premise can still reach the head through them; the head itself cannot compare the two
  sentences' pooled vectors (its output is linear in them).

If ``alone`` scores as well as the pair head, the pair head's gain over chance is cues in the
second sentence, not a comparison of the two.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np

from bertvision.config import EmbedConfig, HeadArchitecture, HeadTrainConfig
from bertvision.embed import embed
from bertvision.io import atomic_write_json
from bertvision.kinds import store_kind
from bertvision.sentences.heads import TokenRows
from bertvision.tasks import get_task
from bertvision.train import fit_head, summarize, train_heads


def second_sentence(rows: TokenRows) -> TokenRows:
    """The same rows with only their second sentence's tokens (segment 1, stored after the first)."""
    seg = rows.segments.numpy()
    first = np.array([int((seg[a : a + n] == 0).sum()) for a, n in zip(rows.starts, rows.lengths, strict=True)])
    if ((rows.lengths - first) < 1).any():
        raise SystemExit("some rows have no second sentence: not a store of pairs")
    return replace(rows, starts=rows.starts + first, lengths=rows.lengths - first)


def in_pair(store: str, head: HeadArchitecture, seeds: list[int]) -> dict:
    kind, _, spec = store_kind(store)
    if len(spec["text_fields"]) != 2:
        raise SystemExit(f"{store}: a single-sentence task; the controls are for pairs")
    cfg = HeadTrainConfig(store=store, head=head).resolved("sentence")
    data = kind.load(cfg, Path(store), spec, ["dev"])
    data.train = second_sentence(data.train)
    data.parts = {name: (second_sentence(part[0]), part[1]) for name, part in data.parts.items()}
    runs = []
    for seed in seeds:
        fit = fit_head(cfg.for_seed(seed), data, kind)
        runs.append({"seed": seed, "dev": kind.score(fit.model, data.parts["dev"], data, cfg, "cpu")[0],
                     "best_epoch": fit.best_epoch, "epoch_seconds": statistics.mean(fit.epoch_seconds),
                     "train_seconds": sum(fit.epoch_seconds)})  # fmt: skip
        print(f"in-pair seed {seed}: dev {runs[-1]['dev']}", flush=True)
    return {"store": store, **summarize(runs, ["dev"])}  # the seeds' mean and std, as train_heads


def alone(task_name: str, data_dir: str | None, out: Path, head: HeadArchitecture, seeds: list[int]) -> dict:
    task = get_task(task_name, data_dir)
    spec = task.spec
    if len(spec.text_fields) != 2:
        raise SystemExit(f"{task_name}: a single-sentence task; the controls are for pairs")
    folder = out / "task"
    folder.mkdir(parents=True, exist_ok=True)
    field = spec.text_fields[1]
    for split in ("train", "dev"):
        data = task.load(split)
        lines = [json.dumps({"id": i, field: data.texts[1][k], "label": spec.labels[int(data.labels[k])]})
                 for k, i in enumerate(data.ids)]  # fmt: skip
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    config = folder / f"{task_name}_{field}.json"
    config.write_text(json.dumps({"name": f"{task_name}_{field}", "kind": "classification", "text_fields": [field],
                                  "label_field": "label", "labels": list(spec.labels), "id_field": "id",
                                  "metrics": list(spec.metrics),
                                  "splits": {"train": "train.jsonl", "dev": "dev.jsonl"}}))  # fmt: skip
    store = out / "store"
    embed(EmbedConfig(task=str(config), selection="tokens", splits=("train", "dev")), store)
    summary = train_heads(HeadTrainConfig(store=str(store), head=head, seeds=tuple(seeds)), out / "heads")
    print(f"alone: dev {summary['dev']}", flush=True)
    return {"store": str(store), "dev": summary["dev"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", required=True, help="the pair task (its second text field is embedded alone)")
    p.add_argument("--store", required=True, help="the task's sentence token store of pairs (train, dev)")
    p.add_argument("--out", required=True, help="folder for the second sentences' task, store and heads")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--pooling", default="attention", choices=["mean", "attention"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", required=True)
    args = p.parse_args()
    head = HeadArchitecture(pooling=args.pooling)
    result = {"task": args.task, "pooling": args.pooling, "seeds": args.seeds,
              "alone": alone(args.task, args.data_dir, Path(args.out), head, args.seeds),
              "in_pair": in_pair(args.store, head, args.seeds)}  # fmt: skip
    atomic_write_json(Path(args.json), result)
    print(json.dumps({k: result[k]["dev"] for k in ("alone", "in_pair")}))


if __name__ == "__main__":
    main()
