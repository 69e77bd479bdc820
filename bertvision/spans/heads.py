"""The span head kind: start/end logits per token of SQuAD windows (token stores), streamed from
STORE/train shard by shard; selection on validation F1 with the no-answer threshold chosen there."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from bertvision import store as st
from bertvision.distributed import ONE, World
from bertvision.errors import ConfigError
from bertvision.heads import HeadData, HeadKind
from bertvision.models.adapter_pooler import SpanAdapterPooler, span_loss
from bertvision.spans.answers import evaluate
from bertvision.spans.data import (
    WindowSet,
    check_ids,
    head_logits,
    load_parts,
    pad_batch,
    train_batches,
)
from bertvision.tasks import get_task


class SpanHeads(HeadKind):
    name = family = "span"
    module = SpanAdapterPooler
    layout, store, reads = "windows", "span token", "window token"

    def num_outputs(self, spec: dict) -> int:
        return 2

    def load(self, cfg, root: Path, spec: dict, eval_names: list[str]) -> HeadData:
        if cfg.train_examples is not None:
            raise ConfigError(f"{root}: --train-examples is for sentence stores; span heads train on every window")
        parts = load_parts(root, st.read_manifest(root / "train"), spec, cfg.data_dir, cfg.validation_fraction,
                           cfg.validation_seed, eval_names)  # fmt: skip
        sets = {"validation": parts.validation, **parts.evals}
        return HeadData(parts.spec, parts.manifest, parts, parts.train_windows,
                        {name: (windows, parts.questions[name]) for name, windows in sets.items()})  # fmt: skip

    def steps_per_epoch(self, data: HeadData, batch_size: int, world: World = ONE) -> int:
        shards = len(data.manifest["shards"])
        if shards < world.size:
            raise ConfigError(f"{data.train.train_path}: {shards} shard(s) for {world.size} workers; each "
                              "worker reads shards of its own: use fewer workers (or re-embed with smaller "
                              "--shard-rows)")  # fmt: skip
        # Per-shard batching may add a few. With several ranks, each holds about rows / ranks
        # windows in batches of batch_size / ranks: the same count.
        return math.ceil(data.train_rows / batch_size) + 1

    def batches(self, data: HeadData, batch_size: int, rng, world: World = ONE):
        return train_batches(data.train, batch_size, rng, world)

    def loss(self, trained, model, batch: WindowSet, device):
        x, mask = pad_batch(batch.hidden, device)
        return span_loss(trained(x, mask), torch.as_tensor(batch.labels, device=device))

    def score(self, model, part, data: HeadData, cfg, device, threshold=None):
        windows, questions = part
        return evaluate(questions, windows, *head_logits(model, windows, device), cfg.max_answer_tokens, threshold)[:2]

    def selection(self, scores: dict) -> float:
        return scores["f1"]

    def logged(self, scores: dict) -> dict:
        return {k: scores[k] for k in ("exact", "f1", "HasAns_f1", "NoAns_f1") if k in scores}

    def config_extras(self, data: HeadData, chosen: dict) -> dict:
        return {**super().config_extras(data, chosen), "threshold": chosen["threshold"],
                "windowing": data.manifest.get("extra", {}).get("windowing")}  # fmt: skip

    def evaluate(self, model, meta: dict, split, store_dir: Path, data_dir: str | None) -> dict:
        questions = get_task(meta["task"]["name"], data_dir).load(split.manifest["split"])
        windows = WindowSet.from_split(split)
        check_ids(Path(store_dir), windows.example_ids, questions)
        s, e = head_logits(model, windows)
        scores, _, _ = evaluate(questions, windows, s, e, meta["train"]["max_answer_tokens"], meta["threshold"])
        return {"split": split.manifest["split"], "windows": len(windows), **scores}
