"""A control for token heads on sentence pairs: the same head trained and scored on the second
sentence alone (RTE's hypothesis, MRPC's second sentence), every first-sentence token dropped.

    BERTVISION_DATA=../shared/data .venv/bin/python benchmarks/hypothesis_only.py \\
        --store runs/token-heads/rte/pre-tokens --pooling attention --json docs/bench/hypothesis_only_rte.json

If a pair head scores as well without the first sentence, its gain over chance comes from cues in
the second sentence alone (hypothesis-only artefacts; Poliak et al. 2018, Gururangan et al. 2018),
not from comparing the two. Same settings as `bertvision train`'s defaults and the same
validation carve; selection on validation, dev scored once per seed. The head keeps its two
pooled slots: the first sentence's pools nothing (zeros), so only the input changes.
"""

from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import replace
from pathlib import Path

import numpy as np

from bertvision.config import HeadArchitecture, HeadTrainConfig
from bertvision.io import atomic_write_json
from bertvision.kinds import TokenRows, store_kind
from bertvision.train import fit_head


def second_sentence(rows: TokenRows) -> TokenRows:
    """The same rows with only their second sentence's tokens (segment 1, stored after the first)."""
    seg = rows.segments.numpy()
    first = np.array([int((seg[a : a + n] == 0).sum()) for a, n in zip(rows.starts, rows.lengths, strict=True)])
    if ((rows.lengths - first) < 1).any():
        raise SystemExit("some rows have no second sentence: not a store of pairs")
    return replace(rows, starts=rows.starts + first, lengths=rows.lengths - first)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--store", required=True, help="a sentence token store of a pair task (train, dev)")
    p.add_argument("--pooling", default="attention", choices=["mean", "attention"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--json", required=True)
    args = p.parse_args()
    kind, _, spec = store_kind(args.store)
    if len(spec["text_fields"]) != 2:
        raise SystemExit(f"{args.store}: a single-sentence task; the control is for pairs")
    cfg = HeadTrainConfig(store=args.store, head=HeadArchitecture(pooling=args.pooling)).resolved("sentence")
    data = kind.load(cfg, Path(args.store), spec, ["dev"])
    data.train = second_sentence(data.train)
    data.parts = {name: (second_sentence(rows), y) for name, (rows, y) in data.parts.items()}
    runs = []
    for seed in args.seeds:
        fit = fit_head(cfg.for_seed(seed), data, kind)
        dev = kind.score(fit.model, data.parts["dev"], data, cfg, "cpu")[0]
        validation = fit.history[fit.best_epoch - 1]
        runs.append({"seed": seed, "dev": dev, "validation": {k: validation[k] for k in dev}, "best_epoch": fit.best_epoch})
        print(f"seed {seed}: dev {dev}", flush=True)
    summary = {name: {"mean": statistics.mean(r["dev"][name] for r in runs),
                      "std": statistics.stdev(r["dev"][name] for r in runs) if len(runs) > 1 else 0.0}
               for name in runs[0]["dev"]}  # fmt: skip
    atomic_write_json(Path(args.json), {"store": args.store, "pooling": args.pooling, "input": "second sentence only",
                                        "dev": summary, "runs": runs})  # fmt: skip
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
