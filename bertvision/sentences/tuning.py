"""Fine-tuning's sentence kind (`bertvision.finetune.TUNING`): one example a row, a sequence-
classification head, the validation part carved from train, ``--train-examples`` from the rest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertvision.config import FinetuneConfig
from bertvision.encoders import encode_split, load_model, predict
from bertvision.metrics import compute_metrics
from bertvision.tasks.base import carve_validation, training_subset


@dataclass
class SentenceTuning:
    """The methods `bertvision.finetune.TUNING` describes; `SpanTuning` has the same."""

    task: Any
    cfg: FinetuneConfig
    device: Any
    seen = "examples_seen"  # the checkpoint metadata's count of training rows seen

    def read(self) -> tuple[dict, dict]:
        full = self.task.load("train")
        tr, va = carve_validation(full.labels, len(full), self.cfg.validation_fraction, self.cfg.validation_seed,
                                  source=full.source)  # fmt: skip
        tr = training_subset(tr, self.cfg.train_examples, self.cfg.validation_seed)  # validation as carved
        return {"train": full.subset(tr, "train"), "validation": full.subset(va, "validation")}, {"train": full}

    def encode(self, tokenizer, data) -> dict:
        return encode_split(tokenizer, data, self.cfg.max_length)

    def counts(self, parts: dict, encoded: dict) -> dict:
        return {"train_examples": len(parts["train"]), "validation_examples": len(parts["validation"])}

    def training_inputs(self, encoded, data) -> tuple[dict, np.ndarray]:
        return encoded, data.labels

    def load(self, location: str):
        return load_model(location, self.task.spec, self.device)

    def loss(self, model, batch: dict, targets):
        return model(**batch, labels=targets).loss

    def validate(self, model, tokenizer, data, encoded) -> dict:
        return {"validation": self.score(model, tokenizer, "validation", data, encoded)}

    def score(self, model, tokenizer, split: str, data, encoded, folder: Path | None = None, meta=None) -> dict:
        out = predict(model, tokenizer, encoded, self.device, self.cfg.eval_batch_size, split)
        return compute_metrics(self.task.spec.metrics, out, data.labels)
