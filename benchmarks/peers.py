"""Peers of the method on a run's task: what a user might pick instead, on the same encoder, the
same validation carve, the same training examples, and the same rule (choose on validation,
score dev once). Each writes RUN/peers/<name>.json, which the run's report shows as a row.

    python benchmarks/peers.py logreg --run runs/results/rte

``logreg``: a logistic regression (regression tasks: ridge) on the *pretrained* encoder's mean
states of the last layer (the all-MiniLM-L6-v2 sentence embedding, of the pair encoded
together), standardised; the inverse regularisation C (ridge: alpha) chosen on the validation
part from a grid; dev scored once. One run (the fit is deterministic). Its store (mean states of
every layer, pretrained encoder) goes to RUN/peers/store-pretrained-mean.

Not here yet: LoRA through `peft` and SetFit (`setfit`), which the issue also asks for.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def logreg(run: Path) -> dict:
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    from bertvision.config import EmbedConfig, HeadTrainConfig
    from bertvision.embed import embed
    from bertvision.io import atomic_write_json
    from bertvision.kinds import KINDS, store_kind
    from bertvision.metrics import compute_metrics
    from bertvision.store import store_bytes

    pipeline = json.loads((run / "pipeline.json").read_text())
    cfg, spec = pipeline["config"], pipeline["task"]
    evals = json.loads((run / "stages" / "majority.json").read_text())["result"]["scores"].keys()
    store = run / "peers" / "store-pretrained-mean"
    t0 = time.perf_counter()
    manifests = embed(EmbedConfig(task=cfg["task"], checkpoint=None, splits=("train", *evals), data_dir=cfg["data_dir"],
                                  selection="mean", max_length=cfg["max_length"]), store)  # fmt: skip
    embed_seconds = sum((m.get("this_run") or {}).get("seconds") or 0 for m in manifests.values())
    kind, _, stored_spec = store_kind(store)
    hcfg = HeadTrainConfig(store=str(store), validation_fraction=cfg["validation_fraction"],
                           validation_seed=cfg["validation_seed"], train_examples=cfg["train_examples"])  # fmt: skip
    data = kind.load(hcfg, store, stored_spec, list(evals))
    x_train, y_train = data.train
    last = lambda x: np.asarray(x[:, -1, :], dtype=np.float32)  # noqa: E731  the last layer's mean state
    scaler = StandardScaler().fit(last(x_train))
    xs = {"train": scaler.transform(last(x_train))}
    ys = {"train": np.asarray(y_train)}
    for name, (x, y) in data.parts.items():
        xs[name], ys[name] = scaler.transform(last(x)), np.asarray(y)
    regression = spec["kind"] == "regression"
    t1 = time.perf_counter()
    grid = []
    for c in GRID:
        model = Ridge(alpha=1.0 / c) if regression else LogisticRegression(C=c, max_iter=2000)
        model.fit(xs["train"], ys["train"])
        scores = compute_metrics(spec["metrics"], _predict(model, xs["validation"], regression), ys["validation"])
        grid.append({"C": c, "validation": scores, "score": KINDS[spec["kind"]].selection(scores), "model": model})
    best = max(grid, key=lambda g: g["score"])
    fit_seconds = time.perf_counter() - t1
    scores = {name: compute_metrics(spec["metrics"], _predict(best["model"], xs[name], regression), ys[name])
              for name in evals}  # fmt: skip
    width = xs["train"].shape[1]
    result = {
        "name": "Logistic regression, pretrained mean states" if not regression else "Ridge regression, pretrained mean states",
        "how": f"the pretrained encoder's last-layer mean state (width {width}), standardised; "
               f"{'C' if not regression else '1/alpha'} {best['C']:g} chosen on validation from {list(GRID)}",
        "task": spec["name"], "scores": scores, "n": 1, "validation": best["validation"],
        "grid": [{k: v for k, v in g.items() if k != "model"} for g in grid],
        "wall_seconds": round(time.perf_counter() - t0, 1), "device_seconds": round(embed_seconds + fit_seconds, 1),
        "bytes": store_bytes(store / "train") + sum(store_bytes(store / e) for e in evals),
        "parameters": int(width * (1 if regression else len(spec["labels"])) + (1 if regression else len(spec["labels"]))),
        "train_rows": data.train_rows,
    }  # fmt: skip
    atomic_write_json(run / "peers" / "logreg.json", result)
    return result


def _predict(model, x, regression: bool):
    return model.predict(x) if regression else model.predict_proba(x)


PEERS = {"logreg": logreg}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("peer", choices=sorted(PEERS))
    p.add_argument("--run", required=True, help="a run folder written by 'bertvision run'")
    args = p.parse_args()
    result = PEERS[args.peer](Path(args.run))
    print(json.dumps({k: result[k] for k in ("name", "scores", "wall_seconds", "device_seconds")}, indent=1))
    from bertvision.report import write_report

    print(f"report: {write_report(args.run)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
