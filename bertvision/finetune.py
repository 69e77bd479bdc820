"""Partial (and full) fine-tuning of an encoder with a task head.

    bertvision finetune --task rte --epochs 1 --save-at 0.1 0.3 1 --out runs/rte/ft-seed0

trains for ``epochs`` epochs (a fraction is fine: 0.3 stops after 30% of one epoch) and saves a
checkpoint at each fraction in ``save_at``. Run to convergence (3 epochs), the same function is
the full fine-tuning baseline that every AdapterPooler result is set beside.

Honest evaluation: a validation part is carved from train (seeded, stratified); the encoder
never trains on it, and it scores every checkpoint. The dev split is scored at the very end,
once per saved checkpoint, and nothing is selected on it.

Output folder::

    config.json                 the resolved FinetuneConfig, task spec, encoder info
    checkpoint-e0.3/            model.safetensors + config.json (transformers) + tokenizer
                                + bertvision.json (fraction, step, seconds, validation metrics)
    metrics.json                per checkpoint: validation and dev metrics, wall times
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bertvision.errors import ConfigError, RunError
from bertvision.fingerprint import splits_fingerprint
from bertvision.io import atomic_folder, atomic_write_json
from bertvision.outdir import check_out_dir, claim, previous_run
from bertvision.runtime import (
    adamw,
    check_finite_state,
    check_loss,
    check_optimisation,
    linear_schedule,
    pick_device,
    quiet_transformers,
    set_seed,
)

CHECKPOINT_META = "bertvision.json"
# What a fine-tuning run writes besides config.json and metrics.json (a killed run's are removed
# before it starts over).
CHECKPOINT_GLOBS = ("checkpoint-e*", ".checkpoint-e*.tmp")


@dataclass(frozen=True)
class FinetuneConfig:
    task: str
    """Task name or user task config file."""
    encoder: str | None = None
    """Hugging Face id or folder; None: the bundled all-MiniLM-L6-v2."""
    data_dir: str | None = None
    """Local data folder (else $BERTVISION_DATA, else the Hub)."""
    epochs: float = 1.0
    """Training length in epochs; fractions allowed (0.1 = a tenth of one epoch)."""
    save_at: tuple[float, ...] = ()
    """Epoch fractions at which to save a checkpoint; the end of training is always saved."""
    lr: float = 5e-5
    """Peak learning rate of AdamW."""
    batch_size: int = 32
    warmup: float = 0.1
    """Share of the optimizer steps spent warming the learning rate up from 0 (then linear decay)."""
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 128
    """Tokens per example after truncation."""
    seed: int = 0
    """Seeds the head's initialisation, dropout and the batch order."""
    validation_fraction: float = 0.1
    """Share of train carved off (stratified) as the validation part."""
    validation_seed: int = 0
    """Seed of the validation carve; keep it equal across runs that are compared."""
    eval_batch_size: int = 64
    device: str | None = None
    """"cpu", "cuda", ...; None picks CUDA when available."""
    score_dev: bool = True
    """Score the dev split(s) at the end (once per saved checkpoint)."""

    def __post_init__(self):
        check_schedule(self, ("lr", "batch_size", "max_length", "eval_batch_size"))

    def checkpoint_fractions(self) -> list[float]:
        return sorted({*self.save_at, self.epochs})


def check_schedule(cfg, positive: tuple[str, ...]) -> None:
    """The checks every fine-tuning config shares: epochs, save_at fractions, the named fields
    that must be positive, and `check_optimisation`."""
    check_optimisation(cfg)
    if not (cfg.epochs > 0 and math.isfinite(cfg.epochs)):
        raise ConfigError(f"--epochs must be in (0, inf), not {cfg.epochs}")
    for f in cfg.save_at:
        if not (f > 0 and math.isfinite(f)):
            raise ConfigError(f"--save-at fractions must be in (0, inf), not {f}")
        if f > cfg.epochs + 1e-9:
            raise ConfigError(f"--save-at {f} lies beyond --epochs {cfg.epochs}")
    for name in positive:
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be positive")


@dataclass
class FinetuneResult:
    out_dir: Path
    checkpoints: dict[str, dict] = field(default_factory=dict)
    """checkpoint folder name -> its metadata (fraction, step, seconds, metrics)."""


def checkpoint_name(fraction: float) -> str:
    return f"checkpoint-e{fraction:g}"


def fraction_step(fraction: float, steps_per_epoch: int) -> int:
    """The optimizer step at which ``fraction`` epochs are complete (at least 1)."""
    return max(1, math.ceil(fraction * steps_per_epoch - 1e-9))


# ---------------------------------------------------------------------------------------------
# Data


def encode_split(tokenizer, split, max_length: int) -> dict:
    """Tokenise a SentenceSplit once: input ids per example, no padding."""
    from bertvision.encoders import tokenize

    texts_b = split.texts[1] if len(split.texts) > 1 else None
    return tokenize(tokenizer, split.texts[0], texts_b, max_length=max_length)


def length_grouped_batches(lengths, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random batches of similar length: shuffle, sort within windows of 50 batches, shuffle.

    Padding each batch only to its own longest example saves about half the compute on GLUE
    lengths, while the order stays random at the scale of the window.
    """
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(tokenizer, encoded: dict, indices, device, labels=None) -> dict:
    """Pad the examples at ``indices`` to their longest and move them to ``device``."""
    feats = [{k: encoded[k][i] for k in encoded} for i in indices]
    batch = tokenizer.pad(feats, padding=True, return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    if labels is not None:
        import torch

        batch["labels"] = torch.as_tensor(labels[indices]).to(device)
    return batch


# ---------------------------------------------------------------------------------------------
# Training


def load_model(location: str, spec, device):
    from transformers import AutoModelForSequenceClassification

    quiet_transformers()
    kind = "regression" if spec.kind == "regression" else "single_label_classification"
    kwargs = {"num_labels": spec.num_outputs, "problem_type": kind}
    if spec.labels:
        kwargs["id2label"] = dict(enumerate(spec.labels))
        kwargs["label2id"] = {name: i for i, name in enumerate(spec.labels)}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(location, attn_implementation="sdpa", **kwargs)
    except ValueError:  # an architecture without SDPA
        model = AutoModelForSequenceClassification.from_pretrained(location, **kwargs)
    return model.to(device)


def predict(model, tokenizer, encoded, device, batch_size: int, desc: str = "predict") -> np.ndarray:
    """The model's outputs (logits, or scores of shape (N, 1)) for every encoded example."""
    import torch
    from tqdm.auto import tqdm

    lengths = np.array([len(x) for x in encoded["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    out = None
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=None):
            idx = order[start : start + batch_size]
            logits = model(**collate(tokenizer, encoded, idx, device)).logits.float().cpu().numpy()
            if out is None:
                out = np.empty((len(order), logits.shape[1]), dtype=np.float32)
            out[idx] = logits
    return out


def finetune(cfg: FinetuneConfig, out_dir: str | Path) -> FinetuneResult:
    """Fine-tune ``cfg.encoder`` on ``cfg.task`` and save checkpoints; see the module docstring."""
    from bertvision.tasks import get_task

    out_dir = check_out_dir(out_dir)
    device = pick_device(cfg.device)
    task = get_task(cfg.task, cfg.data_dir)
    spec = task.spec
    if spec.kind == "span":
        raise ConfigError(f"task {spec.name!r} is a span task; sentence-level fine-tuning needs classification or regression")
    # ---- every split read and checked before anything is written: train, and the dev split(s)
    # scored at the end (a bad dev line must not surface after the training time is spent)
    full = task.load("train")
    dev_splits = {s: task.load(s) for s in spec.eval_splits if task.exists(s)} if cfg.score_dev else {}
    inputs = splits_fingerprint({"train": full, **dev_splits})
    with claim(out_dir, "finetune run"):
        done = previous_run(out_dir, asdict(cfg), "finetune", inputs, CHECKPOINT_GLOBS)
        if done is not None:
            return FinetuneResult(out_dir, done)
        return _finetune(cfg, out_dir, task, full, dev_splits, inputs, device)


def _finetune(cfg: FinetuneConfig, out_dir: Path, task, full, dev_splits: dict, inputs: dict, device) -> FinetuneResult:
    import torch
    from tqdm.auto import tqdm

    from bertvision.encoders import encoder_info, load_tokenizer, resolve_encoder
    from bertvision.metrics import compute_metrics
    from bertvision.tasks.base import carve_validation

    spec = task.spec
    set_seed(cfg.seed)

    # ---- data: train minus a carved validation part; dev only at the end
    tr_idx, va_idx = carve_validation(full.labels, len(full), cfg.validation_fraction, cfg.validation_seed)
    train, val = full.subset(tr_idx, "train"), full.subset(va_idx, "validation")
    _, location = resolve_encoder(cfg.encoder)
    info = encoder_info(cfg.encoder)
    tokenizer = load_tokenizer(cfg.encoder)
    enc_train = encode_split(tokenizer, train, cfg.max_length)
    enc_val = encode_split(tokenizer, val, cfg.max_length)
    lengths = np.array([len(x) for x in enc_train["input_ids"]])

    # ---- model and optimizer
    model = load_model(location, spec, device)
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    # A checkpoint "after 0.3 epochs" comes after the step that completes 30% of the batches.
    total_steps = fraction_step(cfg.epochs, steps_per_epoch)
    save_steps = {fraction_step(f, steps_per_epoch): f for f in cfg.checkpoint_fractions()}
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    scheduler = linear_schedule(optimizer, round(cfg.warmup * total_steps), total_steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        out_dir / "config.json",
        {"finetune": asdict(cfg), "inputs": inputs, "task": spec.to_dict(), "encoder": info.to_dict(),
         "train_examples": len(train), "validation_examples": len(val), "steps_per_epoch": steps_per_epoch,
         "total_steps": total_steps},
    )  # fmt: skip

    # ---- loop
    result = FinetuneResult(out_dir)
    rng = np.random.default_rng(cfg.seed)
    labels = train.labels
    step, train_seconds, loss_sum, loss_n = 0, 0.0, 0.0, 0
    bar = tqdm(total=total_steps, desc=f"finetune {spec.name}", disable=None)
    while step < total_steps:
        for idx in length_grouped_batches(lengths, cfg.batch_size, rng):
            t0 = time.perf_counter()
            model.train()
            loss = model(**collate(tokenizer, enc_train, idx, device, labels)).loss
            value = check_loss(loss, step + 1, cfg.lr, "fine-tuning")
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            train_seconds += time.perf_counter() - t0
            loss_sum, loss_n = loss_sum + value, loss_n + 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}")
            if step in save_steps:
                fraction = save_steps[step]
                t1 = time.perf_counter()
                val_out = predict(model, tokenizer, enc_val, device, cfg.eval_batch_size, "validation")
                meta = {
                    "fraction": fraction, "step": step, "examples_seen": min(step * cfg.batch_size, round(fraction * len(train))),
                    "train_seconds": round(train_seconds, 2), "train_loss": loss_sum / loss_n,
                    "validation": compute_metrics(spec.metrics, val_out, val.labels),
                    "validation_seconds": round(time.perf_counter() - t1, 2), "seed": cfg.seed,
                }  # fmt: skip
                _save_checkpoint(model, tokenizer, out_dir / checkpoint_name(fraction), meta)
                result.checkpoints[checkpoint_name(fraction)] = meta
                loss_sum = loss_n = 0
            if step >= total_steps:
                break
    bar.close()
    _score_dev(task, dev_splits, result, tokenizer, cfg, device)
    atomic_write_json(out_dir / "metrics.json", result.checkpoints)
    return result


def _save_checkpoint(model, tokenizer, path: Path, meta: dict) -> None:
    """Weights as safetensors, the transformers config, the tokenizer, and our metadata.

    The folder appears whole or not at all (`io.atomic_folder`); a failure (a full disk, a
    permission) leaves nothing and raises a RunError naming the checkpoint. Non-finite weights
    (a diverged run) are never saved.
    """
    check_finite_state(model.state_dict(), path)
    try:
        with atomic_folder(path, f"saving checkpoint {path}") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            atomic_write_json(tmp / CHECKPOINT_META, meta)
    except Exception as exc:
        if type(exc).__name__ == "SafetensorError":  # safetensors' writer reports a full disk so
            raise RunError(f"{path}: cannot save the checkpoint ({exc}); nothing was left behind") from None
        raise


def _score_dev(task, dev_splits: dict, result: FinetuneResult, tokenizer, cfg: FinetuneConfig, device) -> None:
    """Score each saved checkpoint on the labelled dev split(s), once, at the end."""
    from bertvision.metrics import compute_metrics

    encoded = {s: encode_split(tokenizer, d, cfg.max_length) for s, d in dev_splits.items()}
    for name, meta in result.checkpoints.items():
        model = load_model(str(result.out_dir / name), task.spec, device)
        for split, data in dev_splits.items():
            t0 = time.perf_counter()
            out = predict(model, tokenizer, encoded[split], device, cfg.eval_batch_size, split)
            meta[split] = compute_metrics(task.spec.metrics, out, data.labels)
            meta[f"{split}_seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(result.out_dir / name / CHECKPOINT_META, meta)
