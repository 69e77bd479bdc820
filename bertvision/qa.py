"""Fine-tuning an encoder for extractive question answering (SQuAD 2.0), in fractions of an epoch.

    bertvision finetune --task squad2-articles --epochs 1 --save-at 0.3 --out runs/squad/ft

is the span counterpart of `bertvision.finetune`: questions and contexts are cut into windows
(`bertvision.spans.make_windows`: ``max_length`` tokens, ``doc_stride`` overlap, character
offsets per token), a linear layer gives start and end logits per token
(`AutoModelForQuestionAnswering`), and the CLS position stands for "no answer".

Honest evaluation, as for sentence tasks: training never sees the validation part (the task's
``validation`` split for ``squad2-articles``; otherwise articles carved from train, seeded), the
no-answer threshold of every checkpoint is chosen on that part, and the eval split (``test`` of
the article split, ``dev`` of the official files) is scored once per checkpoint at the end, with
that threshold, by the official scorer.

Output folder: as `bertvision.finetune` (config.json, checkpoint-e<f>/, metrics.json), and per
checkpoint ``predictions-<split>.json`` (question id -> answer after the threshold) and
``null-diff-<split>.json`` (the no-answer score differences), readable by
``bertvision squad-eval``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bertvision.errors import ConfigError
from bertvision.io import atomic_write_json


@dataclass(frozen=True)
class QAFinetuneConfig:
    task: str
    """A span task (squad2, squad2-articles)."""
    encoder: str | None = None
    """Hugging Face id or folder; None: the bundled all-MiniLM-L6-v2."""
    data_dir: str | None = None
    epochs: float = 1.0
    """Training length in epochs of windows; fractions allowed."""
    save_at: tuple[float, ...] = ()
    """Epoch fractions at which to save a checkpoint; the end of training is always saved."""
    lr: float = 5e-5
    batch_size: int = 32
    warmup: float = 0.1
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int = 384
    """Tokens per window (question, context chunk and special tokens)."""
    doc_stride: int = 128
    """Tokens shared by consecutive windows of a long context."""
    max_query_length: int = 64
    """Questions are cut to this many tokens."""
    max_answer_tokens: int = 30
    """Longest answer span (tokens) post-processing considers."""
    seed: int = 0
    validation_fraction: float = 0.1
    """Share of train's articles carved off as the validation part, when the task has no
    validation split of its own."""
    validation_seed: int = 0
    eval_batch_size: int = 64
    device: str | None = None
    score_dev: bool = True
    """Score the eval split(s) at the end (once per saved checkpoint)."""

    def __post_init__(self):
        from bertvision.finetune import check_schedule

        check_schedule(self, ("lr", "batch_size", "max_length", "doc_stride", "max_query_length",
                              "max_answer_tokens", "eval_batch_size"))  # fmt: skip

    def checkpoint_fractions(self) -> list[float]:
        return sorted({*self.save_at, self.epochs})


# ---------------------------------------------------------------------------------------------
# Parts of the data


def span_parts(task, validation_fraction: float = 0.1, validation_seed: int = 0) -> dict:
    """{"train": SquadSplit, "validation": SquadSplit} for a span task.

    A task with its own validation split (the article split) uses it; otherwise whole articles
    are carved from train (seeded), so no paragraph is shared between the parts. Every stage
    (fine-tuning, span heads, ensembles) calls this with the same arguments.
    """
    from bertvision.tasks.squad import SquadSplit

    if "validation" in task.spec.splits:
        return {"train": task.load("train"), "validation": task.load("validation")}
    full = task.load("train")
    titles = sorted({ex.title for ex in full.examples})
    if len(titles) < 2:
        raise ConfigError(f"{full.source}: cannot carve a validation part from {len(titles)} article(s)")
    rng = np.random.default_rng(validation_seed)
    n_val = max(1, round(len(titles) * validation_fraction))
    held = {titles[i] for i in rng.permutation(len(titles))[:n_val]}
    parts = {
        "train": [ex for ex in full.examples if ex.title not in held],
        "validation": [ex for ex in full.examples if ex.title in held],
    }
    return {k: SquadSplit(task.spec, k, full.source, v) for k, v in parts.items()}


def eval_splits(task) -> dict:
    """The task's labelled eval splits that exist, loaded (``test`` or ``dev``)."""
    return {s: task.load(s) for s in task.spec.eval_splits if task.exists(s)}


def window_features(windows) -> dict:
    """The model inputs of `Windows` (unpadded lists), as `collate` takes them."""
    return {
        "input_ids": windows.input_ids,
        "token_type_ids": windows.token_type_ids,
        "attention_mask": [[1] * len(x) for x in windows.input_ids],
    }


# ---------------------------------------------------------------------------------------------
# Model


def load_qa_model(location: str, device):
    from transformers import AutoModelForQuestionAnswering

    from bertvision.runtime import quiet_transformers

    quiet_transformers()
    try:
        model = AutoModelForQuestionAnswering.from_pretrained(location, attn_implementation="sdpa")
    except ValueError:  # an architecture without SDPA
        model = AutoModelForQuestionAnswering.from_pretrained(location)
    return model.to(device)


def window_logits(model, tokenizer, windows, device, batch_size: int, desc: str = "predict"):
    """Start and end logits of every window, one (T,) float32 array each (no padding)."""
    import torch
    from tqdm.auto import tqdm

    from bertvision.finetune import collate

    feats = window_features(windows)
    lengths = np.array([len(x) for x in feats["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    starts: list = [None] * len(lengths)
    ends: list = [None] * len(lengths)
    model.eval()
    with torch.inference_mode():
        for lo in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=None):
            idx = order[lo : lo + batch_size]
            out = model(**collate(tokenizer, feats, idx, device))
            s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
            for row, i in enumerate(idx):
                starts[i], ends[i] = s[row, : lengths[i]], e[row, : lengths[i]]
    return starts, ends


# ---------------------------------------------------------------------------------------------
# Training


def finetune_qa(cfg: QAFinetuneConfig, out_dir: str | Path):
    """Fine-tune for span answers and save checkpoints; see the module docstring."""
    from bertvision.finetune import CHECKPOINT_GLOBS, FinetuneResult
    from bertvision.fingerprint import splits_fingerprint
    from bertvision.outdir import check_out_dir, claim, previous_run
    from bertvision.runtime import pick_device
    from bertvision.tasks import get_task

    out_dir = check_out_dir(out_dir)
    device = pick_device(cfg.device)
    task = get_task(cfg.task, cfg.data_dir)
    if task.spec.kind != "span":
        raise ConfigError(f"task {task.name!r} is not a span task; use the sentence-level finetune")
    # every split read and checked before anything is written or trained
    parts = span_parts(task, cfg.validation_fraction, cfg.validation_seed)
    evals = eval_splits(task) if cfg.score_dev else {}
    inputs = splits_fingerprint({**parts, **evals})
    with claim(out_dir, "finetune run"):
        done = previous_run(out_dir, asdict(cfg), "finetune", inputs, CHECKPOINT_GLOBS)
        if done is not None:
            return FinetuneResult(out_dir, done)
        return _finetune_qa(cfg, out_dir, task, parts, evals, inputs, device)


def _finetune_qa(cfg: QAFinetuneConfig, out_dir: Path, task, parts: dict, evals: dict, inputs: dict, device):
    import torch
    from tqdm.auto import tqdm

    from bertvision import spans
    from bertvision.encoders import encoder_info, load_tokenizer, resolve_encoder
    from bertvision.finetune import (
        FinetuneResult,
        _save_checkpoint,
        checkpoint_name,
        collate,
        fraction_step,
        length_grouped_batches,
    )  # fmt: skip
    from bertvision.runtime import adamw, check_loss, linear_schedule, set_seed
    from bertvision.spans import make_windows

    set_seed(cfg.seed)
    _, location = resolve_encoder(cfg.encoder)
    info = encoder_info(cfg.encoder)
    tokenizer = load_tokenizer(cfg.encoder)
    wkw = {"max_length": cfg.max_length, "doc_stride": cfg.doc_stride, "max_query_length": cfg.max_query_length}
    train_w = make_windows(tokenizer, parts["train"].examples, **wkw)
    val_w = make_windows(tokenizer, parts["validation"].examples, **wkw)
    feats = window_features(train_w)
    targets = np.stack([train_w.start_positions, train_w.end_positions], axis=1)
    lengths = np.array([len(x) for x in feats["input_ids"]])

    model = load_qa_model(location, device)
    steps_per_epoch = math.ceil(len(train_w) / cfg.batch_size)
    total_steps = fraction_step(cfg.epochs, steps_per_epoch)
    save_steps = {fraction_step(f, steps_per_epoch): f for f in cfg.checkpoint_fractions()}
    optimizer = adamw(model, cfg.lr, cfg.weight_decay)
    scheduler = linear_schedule(optimizer, round(cfg.warmup * total_steps), total_steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "config.json", {
        "finetune": asdict(cfg), "inputs": inputs, "task": task.spec.to_dict(), "encoder": info.to_dict(),
        "train_examples": len(parts["train"]), "train_windows": len(train_w),
        "validation_examples": len(parts["validation"]), "validation_windows": len(val_w),
        "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
    })  # fmt: skip

    result = FinetuneResult(out_dir)
    rng = np.random.default_rng(cfg.seed)
    step, train_seconds, loss_sum, loss_n = 0, 0.0, 0.0, 0
    bar = tqdm(total=total_steps, desc=f"finetune {task.name}", disable=None)
    while step < total_steps:
        for idx in length_grouped_batches(lengths, cfg.batch_size, rng):
            t0 = time.perf_counter()
            model.train()
            batch = collate(tokenizer, feats, idx, device)
            t = torch.as_tensor(targets[idx], device=device)
            loss = model(**batch, start_positions=t[:, 0], end_positions=t[:, 1]).loss
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
                s, e = window_logits(model, tokenizer, val_w, device, cfg.eval_batch_size, "validation")
                scores, _, threshold = spans.evaluate(parts["validation"], val_w, s, e, cfg.max_answer_tokens)
                meta = {
                    "fraction": fraction, "step": step, "windows_seen": min(step * cfg.batch_size, round(fraction * len(train_w))),
                    "train_seconds": round(train_seconds, 2), "train_loss": loss_sum / loss_n,
                    "validation": scores, "threshold": threshold,
                    "validation_seconds": round(time.perf_counter() - t1, 2), "seed": cfg.seed,
                }  # fmt: skip
                _save_checkpoint(model, tokenizer, out_dir / checkpoint_name(fraction), meta)
                result.checkpoints[checkpoint_name(fraction)] = meta
                loss_sum = loss_n = 0
            if step >= total_steps:
                break
    bar.close()
    _score_eval(evals, result, tokenizer, cfg, device, wkw)
    atomic_write_json(out_dir / "metrics.json", result.checkpoints)
    return result


def _score_eval(evals: dict, result, tokenizer, cfg: QAFinetuneConfig, device, wkw: dict) -> None:
    """Score every saved checkpoint on the eval split(s), once, with its validation threshold."""
    from bertvision import spans
    from bertvision.finetune import CHECKPOINT_META
    from bertvision.spans import make_windows

    for split, data in evals.items():
        windows = make_windows(tokenizer, data.examples, **wkw)
        for name, meta in result.checkpoints.items():
            folder = result.out_dir / name
            model = load_qa_model(str(folder), device)
            t0 = time.perf_counter()
            s, e = window_logits(model, tokenizer, windows, device, cfg.eval_batch_size, split)
            scores, preds, _ = spans.evaluate(data, windows, s, e, cfg.max_answer_tokens, meta["threshold"])
            meta[split] = scores
            meta[f"{split}_seconds"] = round(time.perf_counter() - t0, 2)
            atomic_write_json(folder / f"predictions-{split}.json", preds.predictions(meta["threshold"]))
            atomic_write_json(folder / f"null-diff-{split}.json", _finite(preds.null_diff))
            atomic_write_json(folder / CHECKPOINT_META, meta)


def _finite(d: dict[str, float]) -> dict[str, float]:
    """JSON has no infinity: a question with no scorable span gets a large no-answer score."""
    return {k: (v if math.isfinite(v) else 1e9) for k, v in d.items()}
