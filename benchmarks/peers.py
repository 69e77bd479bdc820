"""Peers of the method on a run's task: what a user might pick instead, on the same encoder, the
same validation carve, the same training examples, and the same rule (choose on validation,
score dev once). Each writes RUN/peers/<name>.json, which the run's report shows as a row.

    python benchmarks/peers.py logreg --run runs/results/rte

``logreg``: a logistic regression (regression tasks: ridge) on the *pretrained* encoder's mean
states of the last layer (the all-MiniLM-L6-v2 sentence embedding, of the pair encoded
together), standardised; the inverse regularisation C (ridge: alpha) chosen on the validation
part from a grid; dev scored once. One run (the fit is deterministic). Its store (mean states of
every layer, pretrained encoder) goes to RUN/peers/store-pretrained-mean.

``lora``: LoRA through `peft` (the ``peers`` extra: ``pip install -e '.[peers]'``) in the
library's fine-tuning loop, the run's seeds, epochs chosen on validation (`lora` below).

Not here yet: SetFit (`setfit`), which the issue also asks for.
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


def lora(run: Path, rank: int = 8, lr: float = 5e-4, max_epochs: int = 3) -> dict:
    """LoRA (``peft``: rank ``rank`` on the attention's query and value matrices, the task head
    trained whole) through the library's own fine-tuning loop: the same training part, batches,
    schedule and scoring as full fine-tuning, each of the run's seeds for ``max_epochs`` with a
    checkpoint per epoch; the epoch with the best mean validation score over the seeds is
    chosen, and its dev scores reported."""
    from peft import LoraConfig, TaskType, get_peft_model

    import bertvision.finetune as ft
    from bertvision.config import FinetuneConfig
    from bertvision.io import atomic_write_json
    from bertvision.kinds import KINDS

    pipeline = json.loads((run / "pipeline.json").read_text())
    cfg, spec = pipeline["config"], pipeline["task"]
    if spec["kind"] == "span":
        raise SystemExit("lora: sentence tasks only here")
    original = ft.SentenceTuning.load
    trainable = {}

    def load(self, location):
        model = get_peft_model(original(self, location), LoraConfig(
            task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=["query", "value"]))  # fmt: skip
        trainable["n"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model

    ft.SentenceTuning.load = load
    t0 = time.perf_counter()
    metrics = {}
    for seed in cfg["seeds"]:
        fcfg = FinetuneConfig(task=cfg["task"], encoder=cfg["encoder"], data_dir=cfg["data_dir"], lr=lr,
                              epochs=float(max_epochs), save_at=tuple(float(e) for e in range(1, max_epochs)), seed=seed,
                              validation_fraction=cfg["validation_fraction"], validation_seed=cfg["validation_seed"],
                              train_examples=cfg["train_examples"], max_length=cfg["max_length"], device="cpu")  # fmt: skip
        metrics[seed] = ft.finetune(fcfg, run / "peers" / "lora" / f"seed-{seed}").checkpoints
    ft.SentenceTuning.load = original
    select = KINDS[spec["kind"]].selection
    names = list(next(iter(metrics.values())))
    mean_val = {n: float(np.mean([select(m[n]["validation"]) for m in metrics.values()])) for n in names}
    best = max(names, key=lambda n: mean_val[n])
    evals = [k for k in metrics[cfg["seeds"][0]][best] if k.startswith(("dev", "test")) and not k.endswith("_seconds")]
    scores = {e: {m: {"mean": float(np.mean([ms[best][e][m] for ms in metrics.values()])),
                      "std": float(np.std([ms[best][e][m] for ms in metrics.values()], ddof=1)) if len(metrics) > 1 else 0.0}
                  for m in metrics[cfg["seeds"][0]][best][e]} for e in evals}  # fmt: skip
    epochs = metrics[cfg["seeds"][0]][best]["fraction"]
    result = {
        "name": f"LoRA (peft), rank {rank}",
        "how": f"query/value low-rank updates and the task head, lr {lr:g}, {epochs:g} epoch(s) of 1..{max_epochs} "
               f"chosen on validation (mean over seeds); the encoder runs on every step",
        "task": spec["name"], "scores": scores, "n": len(metrics), "validation_by_epoch": mean_val,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "device_seconds": round(float(sum(m[best]["train_seconds"] for m in metrics.values())), 1),
        "bytes": None, "parameters": trainable.get("n"),
    }  # fmt: skip
    atomic_write_json(run / "peers" / "lora.json", result)
    return result


def _predict(model, x, regression: bool):
    return model.predict(x) if regression else model.predict_proba(x)


PEERS = {"logreg": logreg, "lora": lora}


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
