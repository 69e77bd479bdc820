"""Fine-tuning an encoder with a task head, in fractions of an epoch, for every task family.

    bertvision finetune --task rte --epochs 1 --save-at 0.1 0.3 1 --out runs/rte/ft-seed0

A *partially* fine-tuned encoder (0.3: 30% of one epoch's schedule) is BERTVision's premise; run
to convergence, the same loop is the baseline. One loop; what a family does differently comes
from `TUNING`. Validation (carved from train) scores every checkpoint, the eval split is scored
once per checkpoint at the end."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bertvision.config import FAMILY, FinetuneConfig
from bertvision.distributed import ONE, World
from bertvision.encoders import (
    collate,
    encoder_info,
    length_batches,
    load_tokenizer,
)
from bertvision.errors import RunError
from bertvision.fingerprint import splits_fingerprint
from bertvision.io import atomic_folder, atomic_write_json
from bertvision.outdir import check_out_dir, claim, previous_run
from bertvision.runtime import (
    adamw,
    check_finite_state,
    check_loss,
    linear_schedule,
    pick_device,
    progress,
    set_seed,
)
from bertvision.sentences.tuning import SentenceTuning
from bertvision.spans.tuning import SpanTuning

CHECKPOINT_META = "bertvision.json"
# What a run writes besides config.json and metrics.json (a killed run's go before it starts over).
CHECKPOINT_GLOBS = ("checkpoint-e*", ".checkpoint-e*.tmp")


@dataclass
class FinetuneResult:
    out_dir: Path
    checkpoints: dict[str, dict] = field(default_factory=dict)  # folder name -> its metadata


def checkpoint_name(fraction: float) -> str:
    return f"checkpoint-e{fraction:g}"


def fraction_step(fraction: float, steps_per_epoch: int) -> int:
    """The optimizer step at which ``fraction`` epochs are complete (at least 1)."""
    return max(1, math.ceil(fraction * steps_per_epoch - 1e-9))


TUNING = {"sentence": SentenceTuning, "span": SpanTuning}
"""Task family -> its fine-tuning: the parts (`read`), a split encoded (`encode`, `training_inputs`,
`counts` for config.json), the model with its head (`load`), a batch's `loss`, validation scored
into a checkpoint's metadata (`validate`; spans choose their threshold there), an eval `score`."""


def eval_splits(task) -> dict:
    """The task's labelled eval splits that exist, loaded (``test`` or ``dev``)."""
    return {s: task.load(s) for s in task.spec.eval_splits if task.exists(s)}


def _tuning(cfg: FinetuneConfig):
    """(task, its kind of fine-tuning with the config resolved for the task)."""
    from bertvision.tasks import get_task

    device = pick_device(cfg.device)
    task = get_task(cfg.task, cfg.data_dir)
    return task, TUNING[FAMILY[task.spec.kind]](task, cfg.resolved(task.spec.kind), device)


def finetune(cfg: FinetuneConfig, out_dir: str | Path, runner: Callable | None = None,
             settings: dict | None = None) -> FinetuneResult:  # fmt: skip
    """Fine-tune ``cfg.encoder`` on ``cfg.task`` and save checkpoints. ``runner(cfg, out_dir,
    inputs)``, when given, runs the loop elsewhere (Ray Train: `run_loop` on every worker) once
    every split has been read and checked here; ``settings``: what else a finished run must
    match to be reused (e.g. the number of workers)."""
    out_dir = check_out_dir(out_dir)
    task, kind = _tuning(cfg)
    cfg = kind.cfg
    # ---- every split read and checked before anything is written: train, validation, and the
    # eval split(s) scored at the end (a bad dev line must not surface after the training time)
    parts, fingerprinted = kind.read()
    evals = eval_splits(task) if cfg.score_dev else {}
    inputs = splits_fingerprint({**fingerprinted, **evals})
    with claim(out_dir, "finetune run"):
        done = previous_run(out_dir, {**asdict(cfg), **(settings or {})}, "finetune", inputs, CHECKPOINT_GLOBS)
        if done is not None:
            return FinetuneResult(out_dir, done)
        if runner is not None:
            return FinetuneResult(out_dir, runner(cfg, out_dir, inputs))
        return _finetune(kind, out_dir, parts, evals, inputs)


def run_loop(cfg: FinetuneConfig, out_dir: Path, inputs: dict, world: World, resume: dict | None = None,
             on_save: Callable | None = None, settings: dict | None = None) -> FinetuneResult:  # fmt: skip
    """The loop on one of ``world``'s ranks (a Ray Train worker), the task read again here;
    ``cfg`` is the resolved config the driver checked."""
    task, kind = _tuning(cfg)
    parts, _ = kind.read()
    evals = eval_splits(task) if cfg.score_dev and world.main else {}
    return _finetune(kind, out_dir, parts, evals, inputs, world, resume, on_save, settings)


def _finetune(kind, out_dir: Path, parts: dict, evals: dict, inputs: dict, world: World = ONE,
              resume: dict | None = None, on_save: Callable | None = None,
              settings: dict | None = None) -> FinetuneResult:  # fmt: skip
    """The loop. With several ranks each trains on its piece of every global batch (DDP); rank 0
    alone validates, saves and scores the eval splits. ``on_save(fraction, meta, state)`` runs on
    every rank after each checkpoint (``state()``: the whole training state, tensors and plain
    values, for `torch.save`); ``resume=state`` continues as the uninterrupted run would."""
    import torch

    cfg, spec, device = kind.cfg, kind.task.spec, kind.device
    world.check_batch(cfg.batch_size)
    set_seed(cfg.seed)
    info = encoder_info(cfg.encoder)
    tokenizer = load_tokenizer(cfg.encoder)
    encoded = {name: kind.encode(tokenizer, data) for name, data in parts.items()}
    feats, targets = kind.training_inputs(encoded["train"], parts["train"])
    lengths = np.array([len(x) for x in feats["input_ids"]])

    model = kind.load(info.location)
    trained = world.wrap(model, device)  # DDP for several ranks; the model itself for one
    steps_per_epoch = math.ceil(len(targets) / cfg.batch_size)
    # A checkpoint "after 0.3 epochs" comes after the step that completes 30% of the batches.
    total_steps = fraction_step(cfg.epochs, steps_per_epoch)
    save_steps = {fraction_step(f, steps_per_epoch): f for f in cfg.checkpoint_fractions()}
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    scheduler = linear_schedule(optimizer, round(cfg.warmup * total_steps), total_steps)
    if world.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out_dir / "config.json", {
            "finetune": {**asdict(cfg), **(settings or {})}, "inputs": inputs, "task": spec.to_dict(),
            "encoder": info.to_dict(), **kind.counts(parts, encoded), "steps_per_epoch": steps_per_epoch,
            "total_steps": total_steps})  # fmt: skip

    result = FinetuneResult(out_dir)
    rng = np.random.default_rng(cfg.seed)
    step, train_seconds, loss_sum, loss_n, in_epoch = 0, 0.0, 0.0, 0, 0
    if resume is not None:  # a checkpoint's state (`on_save`): the same weights, schedule and batches
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        rng.bit_generator.state = resume["epoch_rng"]
        torch.set_rng_state(resume["torch_rng"])
        step, train_seconds, in_epoch = resume["step"], resume["train_seconds"], resume["in_epoch"]
        result.checkpoints = dict(resume["checkpoints"])
    bar = progress(total_steps, f"finetune {spec.name} seed {cfg.seed}", initial=step)
    try:  # closed however the loop ends: a Ray worker's open bar is drawn again under the driver's last line
        while step < total_steps:
            epoch_rng = rng.bit_generator.state  # the state this epoch's batches are drawn from
            # random batches of similar length: shuffled, sorted within 50 batches, batches shuffled
            for position, idx in enumerate(length_batches(lengths, cfg.batch_size, rng, window=cfg.batch_size * 50)):
                if position < in_epoch or len(idx) < world.size:  # done before a resume; too few rows to split
                    continue
                idx = world.piece(idx)
                t0 = time.perf_counter()
                model.train()
                batch = collate(tokenizer, feats, idx, device)
                loss = kind.loss(trained, batch, torch.as_tensor(targets[idx], device=device))
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
                if hasattr(bar, "set_postfix"):  # tqdm (Ray's bar has none)
                    bar.set_postfix(loss=f"{loss_sum / loss_n:.4f}")
                if step in save_steps:
                    fraction, meta = save_steps[step], None
                    if world.main:
                        t1 = time.perf_counter()
                        scored = kind.validate(model, tokenizer, parts["validation"], encoded["validation"])
                        meta = {
                            "fraction": fraction, "step": step, kind.seen: min(step * cfg.batch_size, round(fraction * len(targets))),
                            "train_seconds": round(train_seconds, 2), "train_loss": loss_sum / loss_n, **scored,
                            "validation_seconds": round(time.perf_counter() - t1, 2), "seed": cfg.seed,
                            **({"workers": world.size} if world.size > 1 else {}),
                        }  # fmt: skip
                        _save_checkpoint(model, tokenizer, out_dir / checkpoint_name(fraction), meta)
                        result.checkpoints[checkpoint_name(fraction)] = meta
                    loss_sum = loss_n = 0
                    if on_save is not None:
                        done = position + 1

                        def state(done=done, epoch_rng=epoch_rng, step=step, train_seconds=train_seconds) -> dict:
                            return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                    "scheduler": scheduler.state_dict(), "epoch_rng": epoch_rng,
                                    "torch_rng": torch.get_rng_state(), "step": step, "train_seconds": train_seconds,
                                    "in_epoch": done, "checkpoints": dict(result.checkpoints)}  # fmt: skip

                        on_save(fraction, meta, state)
                if step >= total_steps:
                    break
            in_epoch = 0
    finally:
        bar.close()
    if world.main:
        _score_evals(kind, evals, result, tokenizer)
        atomic_write_json(out_dir / "metrics.json", result.checkpoints)
    return result


def _save_checkpoint(model, tokenizer, path: Path, meta: dict) -> None:
    """Weights (safetensors), the transformers config, the tokenizer and our metadata, in a folder
    that appears whole or not at all; never non-finite weights (a diverged run)."""
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


def _score_evals(kind, evals: dict, result: FinetuneResult, tokenizer) -> None:
    """Score each saved checkpoint on the labelled eval split(s), once, at the end."""
    encoded = {split: kind.encode(tokenizer, data) for split, data in evals.items()}
    for name, meta in result.checkpoints.items():
        folder = result.out_dir / name
        model = kind.load(str(folder))
        for split, data in evals.items():
            t0 = time.perf_counter()
            meta[split] = kind.score(model, tokenizer, split, data, encoded[split], folder, meta)
            meta[f"{split}_seconds"] = round(time.perf_counter() - t0, 2)
        atomic_write_json(folder / CHECKPOINT_META, meta)
