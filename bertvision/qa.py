"""Extractive question answering (SQuAD 2.0): the span kind of fine-tuning, and the pieces every
span stage shares.

    bertvision finetune --task squad2-articles --epochs 1 --save-at 0.3 --out runs/squad/ft

runs the one fine-tuning loop of `bertvision.finetune` with `SpanTuning`, which supplies what
differs from sentence tasks: questions and contexts are cut into windows
(`bertvision.spans.make_windows`: ``max_length`` tokens, ``doc_stride`` overlap, character
offsets per token), a linear layer gives start and end logits per token
(`AutoModelForQuestionAnswering`), and the CLS position stands for "no answer".

Honest evaluation, as for sentence tasks: training never sees the validation part (`span_parts`:
the task's ``validation`` split for ``squad2-articles``; otherwise articles carved from train,
seeded), the no-answer threshold of every checkpoint is chosen on that part, and the eval split
(``test`` of the article split, ``dev`` of the official files) is scored once per checkpoint at
the end, with that threshold, by the official scorer. The span heads and ensembles use the same
`span_parts`, `eval_splits` and `window_logits`.

Output folder: as `bertvision.finetune` (config.json, checkpoint-e<f>/, metrics.json), and per
checkpoint ``predictions-<split>.json`` (question id -> answer after the threshold) and
``null-diff-<split>.json`` (the no-answer score differences), readable by
``bertvision squad-eval``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertvision import spans
from bertvision.config import FinetuneConfig
from bertvision.encoders import batched_forward, load_task_model
from bertvision.errors import ConfigError
from bertvision.io import atomic_write_json

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
    return load_task_model(location, device, "span")


def window_logits(model, tokenizer, windows, device, batch_size: int, desc: str = "predict"):
    """Start and end logits of every window, one (T,) float32 array each (no padding)."""
    feats = window_features(windows)
    starts: list = [None] * len(feats["input_ids"])
    ends: list = [None] * len(feats["input_ids"])
    for idx, out in batched_forward(model, tokenizer, feats, device, batch_size, desc):
        s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for row, i in enumerate(idx):
            n = len(feats["input_ids"][i])
            starts[i], ends[i] = s[row, :n], e[row, :n]
    return starts, ends


# ---------------------------------------------------------------------------------------------
# The span kind of fine-tuning (`bertvision.finetune.TUNING["span"]`)


@dataclass
class SpanTuning:
    """Fine-tuning for span answers: windows, start/end targets, a threshold set on validation.
    The methods are those of `bertvision.finetune.SentenceTuning`."""

    task: Any
    cfg: FinetuneConfig
    device: Any
    seen = "windows_seen"

    def read(self) -> tuple[dict, dict]:
        if self.cfg.train_examples is not None:
            raise ConfigError("--train-examples: only sentence tasks take a subset of train")
        parts = span_parts(self.task, self.cfg.validation_fraction, self.cfg.validation_seed)
        return parts, parts

    def encode(self, tokenizer, data) -> spans.Windows:
        w = self.cfg.windowing
        return spans.make_windows(tokenizer, data.examples, max_length=self.cfg.max_length,
                                  doc_stride=w.doc_stride, max_query_length=w.max_query_length)  # fmt: skip

    def counts(self, parts: dict, encoded: dict) -> dict:
        return {"train_examples": len(parts["train"]), "train_windows": len(encoded["train"]),
                "validation_examples": len(parts["validation"]), "validation_windows": len(encoded["validation"])}  # fmt: skip

    def training_inputs(self, windows, data) -> tuple[dict, np.ndarray]:
        return window_features(windows), np.stack([windows.start_positions, windows.end_positions], axis=1)

    def load(self, location: str):
        return load_qa_model(location, self.device)

    def loss(self, model, batch: dict, targets):
        return model(**batch, start_positions=targets[:, 0], end_positions=targets[:, 1]).loss

    def validate(self, model, tokenizer, data, windows) -> dict:
        s, e = window_logits(model, tokenizer, windows, self.device, self.cfg.eval_batch_size, "validation")
        scores, _, threshold = spans.evaluate(data, windows, s, e, self.cfg.max_answer_tokens)
        return {"validation": scores, "threshold": threshold}

    def score(self, model, tokenizer, split: str, data, windows, folder: Path, meta: dict) -> dict:
        """Scores with the checkpoint's validation threshold; its answers and no-answer score
        differences are written beside it."""
        s, e = window_logits(model, tokenizer, windows, self.device, self.cfg.eval_batch_size, split)
        scores, preds, _ = spans.evaluate(data, windows, s, e, self.cfg.max_answer_tokens, meta["threshold"])
        atomic_write_json(folder / f"predictions-{split}.json", preds.predictions(meta["threshold"]))
        atomic_write_json(folder / f"null-diff-{split}.json", _finite(preds.null_diff))
        return scores


def _finite(d: dict[str, float]) -> dict[str, float]:
    """JSON has no infinity: a question with no scorable span gets a large no-answer score."""
    return {k: (v if math.isfinite(v) else 1e9) for k, v in d.items()}
