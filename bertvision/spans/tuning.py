"""Fine-tuning's span kind: SQuAD windows, start and end logits per token, the CLS position for
"no answer", and each checkpoint's no-answer threshold chosen on the validation part."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertvision.config import FinetuneConfig
from bertvision.encoders import batched_forward, load_task_model
from bertvision.errors import ConfigError
from bertvision.io import atomic_write_json
from bertvision.spans.answers import evaluate
from bertvision.spans.data import span_parts
from bertvision.spans.windows import Windows, make_windows


def window_features(windows: Windows) -> dict:
    """The model inputs of `Windows` (unpadded lists), as `collate` takes them."""
    return {"input_ids": windows.input_ids, "token_type_ids": windows.token_type_ids,
            "attention_mask": [[1] * len(x) for x in windows.input_ids]}  # fmt: skip


def load_qa_model(location: str, device):
    return load_task_model(location, device, "span")


def window_logits(model, tokenizer, windows: Windows, device, batch_size: int, desc: str = "predict"):
    """Start and end logits of every window, one (T,) float32 array each (no padding)."""
    feats = window_features(windows)
    starts, ends = [None] * len(feats["input_ids"]), [None] * len(feats["input_ids"])
    for idx, out in batched_forward(model, tokenizer, feats, device, batch_size, desc):
        s, e = out.start_logits.float().cpu().numpy(), out.end_logits.float().cpu().numpy()
        for row, i in enumerate(idx):
            n = len(feats["input_ids"][i])
            starts[i], ends[i] = s[row, :n], e[row, :n]
    return starts, ends


@dataclass
class SpanTuning:
    """Fine-tuning for span answers; the methods are those of `SentenceTuning`."""

    task: Any
    cfg: FinetuneConfig
    device: Any
    seen = "windows_seen"

    def read(self) -> tuple[dict, dict]:
        if self.cfg.train_examples is not None:
            raise ConfigError("--train-examples: only sentence tasks take a subset of train")
        parts = span_parts(self.task, self.cfg.validation_fraction, self.cfg.validation_seed)
        return parts, parts

    def encode(self, tokenizer, data) -> Windows:
        w = self.cfg.windowing
        return make_windows(tokenizer, data.examples, max_length=self.cfg.max_length, doc_stride=w.doc_stride,
                            max_query_length=w.max_query_length)  # fmt: skip

    def counts(self, parts: dict, encoded: dict) -> dict:
        return {"train_examples": len(parts["train"]), "train_windows": len(encoded["train"]),
                "validation_examples": len(parts["validation"]), "validation_windows": len(encoded["validation"])}  # fmt: skip

    def training_inputs(self, windows: Windows, data) -> tuple[dict, np.ndarray]:
        return window_features(windows), np.stack([windows.start_positions, windows.end_positions], axis=1)

    def load(self, location: str):
        return load_qa_model(location, self.device)

    def loss(self, model, batch: dict, targets):
        return model(**batch, start_positions=targets[:, 0], end_positions=targets[:, 1]).loss

    def validate(self, model, tokenizer, data, windows) -> dict:
        s, e = window_logits(model, tokenizer, windows, self.device, self.cfg.eval_batch_size, "validation")
        scores, _, threshold = evaluate(data, windows, s, e, self.cfg.max_answer_tokens)
        return {"validation": scores, "threshold": threshold}

    def score(self, model, tokenizer, split: str, data, windows, folder: Path, meta: dict) -> dict:
        """Scores with the checkpoint's validation threshold; its answers and no-answer score
        differences are written beside it."""
        s, e = window_logits(model, tokenizer, windows, self.device, self.cfg.eval_batch_size, split)
        scores, preds, _ = evaluate(data, windows, s, e, self.cfg.max_answer_tokens, meta["threshold"])
        atomic_write_json(folder / f"predictions-{split}.json", preds.predictions(meta["threshold"]))
        # JSON has no infinity: a question with no scorable span gets a large no-answer score.
        atomic_write_json(folder / f"null-diff-{split}.json",
                          {k: (v if math.isfinite(v) else 1e9) for k, v in preds.null_diff.items()})  # fmt: skip
        return scores
