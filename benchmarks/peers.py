"""Peers of the method on a run's task: what a user might pick instead, on the same encoder, the
same validation carve, the same training examples, and the same rule (choose on validation,
score dev once). Each writes RUN/peers/<name>.json, which the run's report shows as a row.

    python benchmarks/peers.py logreg --run runs/results/rte   # several at once: logreg lora setfit

``logreg``: a logistic regression (regression tasks: ridge) on the *pretrained* encoder's
sentence embeddings (mean states of the last layer, normalised: how all-MiniLM-L6-v2 is meant
to be used), each sentence of a pair embedded alone; the inverse regularisation C (ridge:
alpha) chosen on the validation part from a grid; dev scored once. One run (deterministic).

``lora``: LoRA through `peft` (the ``peers`` extra: ``pip install -e '.[peers]'``) in the
library's fine-tuning loop, the run's seeds, epochs chosen on validation (`lora` below).

``setfit``: SetFit (the ``peers`` extra) on the run's training part, per seed, classification
only (`setfit` below).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

GRID = (1e-3, 1e-2, 1e-1, 1.0, 10.0)


def logreg(run: Path) -> dict:
    """Logistic regression (regression tasks: ridge) on the pretrained encoder's sentence
    embeddings, the way the bundled model is meant to be used (sentence-transformers: the mean of
    the last layer's token states, normalised): u for one sentence, (u, v, |u - v|, u * v) for a
    pair (each sentence embedded alone, as SBERT's classifier reads them); standardised; C
    (ridge: 1 / alpha) chosen on the validation part from ``GRID``; dev scored once; one run."""
    from sentence_transformers import SentenceTransformer
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.preprocessing import StandardScaler

    from bertvision.encoders import resolve_encoder
    from bertvision.io import atomic_write_json
    from bertvision.kinds import KINDS
    from bertvision.metrics import compute_metrics

    pipeline = json.loads((run / "pipeline.json").read_text())
    cfg, spec = pipeline["config"], pipeline["task"]
    if spec["kind"] == "span":
        raise SystemExit("logreg: sentence tasks only")
    task, train, part, val, evals = _carve(run, cfg)
    _, location = resolve_encoder(cfg["encoder"])
    model = SentenceTransformer(location, device="cpu")
    t0 = time.perf_counter()

    def features(data, rows):
        cols = [model.encode([col[i] for i in rows], batch_size=64, convert_to_numpy=True) for col in data.texts]
        if len(cols) == 1:
            return cols[0]
        u, v = cols
        return np.hstack([u, v, np.abs(u - v), u * v])

    xs = {"train": features(train, part), "validation": features(train, val)}
    labels = np.asarray(train.labels)
    ys = {"train": labels[part], "validation": labels[val]}
    for name in evals:
        data = task.load(name)
        xs[name], ys[name] = features(data, range(len(data))), np.asarray(data.labels)
    encode_seconds = time.perf_counter() - t0
    scaler = StandardScaler().fit(xs["train"])
    xs = {k: scaler.transform(v) for k, v in xs.items()}
    regression = spec["kind"] == "regression"
    t1 = time.perf_counter()
    grid = []
    for c in GRID:
        fit = Ridge(alpha=1.0 / c) if regression else LogisticRegression(C=c, max_iter=2000)
        fit.fit(xs["train"], ys["train"])
        scores = compute_metrics(spec["metrics"], _predict(fit, xs["validation"], regression), ys["validation"])
        grid.append({"C": c, "validation": scores, "score": KINDS[spec["kind"]].selection(scores), "model": fit})
    best = max(grid, key=lambda g: g["score"])
    fit_seconds = time.perf_counter() - t1
    scores = {name: compute_metrics(spec["metrics"], _predict(best["model"], xs[name], regression), ys[name])
              for name in evals}  # fmt: skip
    width = xs["train"].shape[1]
    outputs = 1 if regression else len(spec["labels"])
    result = {
        "name": ("Ridge" if regression else "Logistic") + " regression on pretrained sentence embeddings",
        "how": f"{'(u, v, |u-v|, u*v) of each sentence embedded alone' if len(train.texts) == 2 else 'the sentence embedding'} "
               f"(width {width}), standardised; {'1/alpha' if regression else 'C'} {best['C']:g} chosen on validation "
               f"from {list(GRID)}; the encoder not trained",
        "task": spec["name"], "scores": scores, "n": 1, "validation": best["validation"],
        "grid": [{k: v for k, v in g.items() if k != "model"} for g in grid],
        "wall_seconds": round(time.perf_counter() - t0, 1), "device_seconds": round(encode_seconds + fit_seconds, 1),
        "bytes": None, "parameters": int(width * outputs + outputs), "train_rows": len(part),
    }  # fmt: skip
    atomic_write_json(run / "peers" / "logreg.json", result)
    return result


def _carve(run: Path, cfg: dict):
    """(task, train split, training rows, validation rows, labelled eval splits) as the run carved."""
    from bertvision.tasks import get_task
    from bertvision.tasks.base import carve_validation, training_subset

    task = get_task(cfg["task"], cfg["data_dir"])
    train = task.load("train")
    labels = np.asarray(train.labels)
    part, val = carve_validation(labels, len(labels), cfg["validation_fraction"], cfg["validation_seed"])
    part = training_subset(part, cfg["train_examples"], cfg["validation_seed"])
    evals = list(json.loads((run / "stages" / "majority.json").read_text())["result"]["scores"])
    return task, train, part, val, evals


def lora_loader(original, rank: int, trainable: dict):
    """A ``SentenceTuning.load`` for LoRA: the encoder at a location wrapped in a fresh rank
    ``rank`` adapter (query and value; the task head trained whole), its trainable parameter
    count kept in ``trainable``; a saved checkpoint (a folder with ``adapter_config.json``, scored
    on dev after training) is the encoder with the adapter and head it saved. Wrapping a saved
    checkpoint in a second fresh adapter scored SST-2 at 60% where the saved one scores 84%."""
    from peft import LoraConfig, PeftModel, TaskType, get_peft_model

    def load(self, location):
        adapter = Path(location) / "adapter_config.json"
        if adapter.exists():
            base = trainable.get("base") or json.loads(adapter.read_text())["base_model_name_or_path"]
            return PeftModel.from_pretrained(original(self, base), location).eval()
        trainable["base"] = location
        model = get_peft_model(original(self, location), LoraConfig(
            task_type=TaskType.SEQ_CLS, r=rank, lora_alpha=2 * rank, lora_dropout=0.1, target_modules=["query", "value"]))  # fmt: skip
        trainable["n"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        return model

    return load


def lora(run: Path, rank: int = 8, lr: float = 5e-4, max_epochs: int = 3) -> dict:
    """LoRA (``peft``: rank ``rank`` on the attention's query and value matrices, the task head
    trained whole) through the library's own fine-tuning loop: the same training part, batches,
    schedule and scoring as full fine-tuning, each of the run's seeds for ``max_epochs`` with a
    checkpoint per epoch; the epoch with the best mean validation score over the seeds is
    chosen, and its dev scores reported."""
    import bertvision.finetune as ft
    from bertvision.config import FinetuneConfig
    from bertvision.io import atomic_write_json
    from bertvision.kinds import KINDS
    from bertvision.metrics import mean_std
    from bertvision.sentences.tuning import SentenceTuning

    pipeline = json.loads((run / "pipeline.json").read_text())
    cfg, spec = pipeline["config"], pipeline["task"]
    if spec["kind"] == "span":
        raise SystemExit("lora: sentence tasks only here")
    original = SentenceTuning.load
    trainable = {}
    SentenceTuning.load = lora_loader(original, rank, trainable)
    t0 = time.perf_counter()
    metrics = {}
    try:
        for seed in cfg["seeds"]:
            fcfg = FinetuneConfig(task=cfg["task"], encoder=cfg["encoder"], data_dir=cfg["data_dir"], lr=lr,
                                  epochs=float(max_epochs), save_at=tuple(float(e) for e in range(1, max_epochs)),
                                  seed=seed, validation_fraction=cfg["validation_fraction"],
                                  validation_seed=cfg["validation_seed"], train_examples=cfg["train_examples"],
                                  max_length=cfg["max_length"], device="cpu")  # fmt: skip
            metrics[seed] = ft.finetune(fcfg, run / "peers" / "lora" / f"seed-{seed}").checkpoints
    finally:
        SentenceTuning.load = original
    select = KINDS[spec["kind"]].selection
    names = list(next(iter(metrics.values())))
    mean_val = {n: float(np.mean([select(m[n]["validation"]) for m in metrics.values()])) for n in names}
    best = max(names, key=lambda n: mean_val[n])
    evals = [k for k in metrics[cfg["seeds"][0]][best] if k.startswith(("dev", "test")) and not k.endswith("_seconds")]
    scores = {e: {m: mean_std([ms[best][e][m] for ms in metrics.values()]) for m in metrics[cfg["seeds"][0]][best][e]}
              for e in evals}  # fmt: skip
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


def setfit(run: Path, max_steps: int = 300, batch_size: int = 16) -> dict:
    """SetFit (``setfit``): the encoder tuned contrastively on pairs of training examples (same
    label or not; ``max_steps`` steps of ``batch_size`` pairs), then a logistic regression on its
    embeddings, per seed of the run; a pair task's two texts joined by ' [SEP] '. Classification
    only. Nothing is chosen on validation (one setting, the library's defaults but the step
    cap); validation is reported beside dev."""
    from datasets import Dataset
    from setfit import SetFitModel, Trainer, TrainingArguments

    from bertvision.encoders import resolve_encoder
    from bertvision.io import atomic_write_json
    from bertvision.metrics import compute_metrics, mean_std
    pipeline = json.loads((run / "pipeline.json").read_text())
    cfg, spec = pipeline["config"], pipeline["task"]
    if spec["kind"] != "classification":
        raise SystemExit(f"setfit: classification tasks only, not {spec['kind']}")
    task, train, part, val, evals = _carve(run, cfg)
    labels = np.asarray(train.labels)
    texts = lambda data, rows: [" [SEP] ".join(col[i] for col in data.texts) for i in rows]  # noqa: E731
    parts = {"validation": (texts(train, val), labels[val])}
    for name in evals:
        data = task.load(name)
        parts[name] = (texts(data, range(len(data))), np.asarray(data.labels))
    _, location = resolve_encoder(cfg["encoder"])
    t0 = time.perf_counter()
    runs, seconds, params = [], 0.0, None
    for seed in cfg["seeds"]:
        model = SetFitModel.from_pretrained(location)
        # save_strategy "no": the trainer's checkpoints (260 MB a seed: optimizer state and pickled
        # training_args.bin) are never read; the scores are the result
        args = TrainingArguments(batch_size=batch_size, max_steps=max_steps, seed=seed, show_progress_bar=False,
                                 save_strategy="no", report_to="none",
                                 output_dir=str(run / "peers" / "setfit" / f"seed-{seed}"))  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict(
            {"text": texts(train, part), "label": labels[part].tolist()}))  # fmt: skip
        t1 = time.perf_counter()
        trainer.train()
        seconds += time.perf_counter() - t1
        params = sum(p.numel() for p in model.model_body.parameters()) + int(np.size(model.model_head.coef_)) + len(spec["labels"])
        runs.append({name: compute_metrics(spec["metrics"], np.asarray(model.predict_proba(x)), y)
                     for name, (x, y) in parts.items()})  # fmt: skip
    scores = {name: {m: mean_std([r[name][m] for r in runs]) for m in spec["metrics"]} for name in parts}
    result = {
        "name": "SetFit", "task": spec["name"],
        "how": f"contrastive tuning of the encoder, {max_steps} steps of {batch_size} pairs, then logistic regression; "
               "nothing chosen on validation",
        "scores": {e: scores[e] for e in evals}, "validation": scores["validation"], "n": len(runs),
        "wall_seconds": round(time.perf_counter() - t0, 1), "device_seconds": round(seconds, 1), "bytes": None,
        "parameters": params,
    }  # fmt: skip
    atomic_write_json(run / "peers" / "setfit.json", result)
    return result


def _predict(model, x, regression: bool):
    return model.predict(x) if regression else model.predict_proba(x)


PEERS = {"logreg": logreg, "lora": lora, "setfit": setfit}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("peers", nargs="+", choices=sorted(PEERS), metavar="PEER", help=f"one or more of {sorted(PEERS)}")
    p.add_argument("--run", required=True, help="a run folder written by 'bertvision run'")
    p.add_argument("--max-epochs", type=int, default=3, help="lora: epochs per seed, one checkpoint each (default 3)")
    p.add_argument("--max-steps", type=int, default=300, help="setfit: contrastive steps per seed (default 300)")
    args = p.parse_args()
    for peer in dict.fromkeys(args.peers):
        options = {"lora": {"max_epochs": args.max_epochs}, "setfit": {"max_steps": args.max_steps}}.get(peer, {})
        result = PEERS[peer](Path(args.run), **options)
        print(json.dumps({k: result[k] for k in ("name", "scores", "wall_seconds", "device_seconds")}, indent=1))
    from bertvision.report import write_report

    print(f"report: {write_report(args.run)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
