"""The embed stage: every split of a task through `HiddenStateExtractor` into the store.

    bertvision embed --task rte --checkpoint runs/rte/ft/checkpoint-e0.3 --out runs/rte/emb/e0.3

One store per split (``OUT/<split>/``); shards are written atomically and a rerun writes only
the missing ones. Span tasks are cut into windows, one row a window ``<question id>#<k>``."""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bertvision.config import EmbedConfig
from bertvision.encoders import encoder_info, load_tokenizer
from bertvision.errors import ConfigError
from bertvision.extract import SELECTIONS, HiddenStateExtractor, has_qa_head, has_task_head
from bertvision.fingerprint import split_fingerprint
from bertvision.outdir import check_out_dir, claim
from bertvision.runtime import pick_device
from bertvision.spans.windows import make_windows, offsets_array, window_ids
from bertvision.store import LAYOUTS, StoreSpec, StoreWriter, file_sha256
from bertvision.tasks import get_task


def checkpoint_identity(checkpoint: str | None) -> tuple[dict, str, str | None, object]:
    """(base encoder {name, revision}, checkpoint label, weights sha256, `EncoderInfo`) of a
    checkpoint: a fine-tuning checkpoint names the encoder it started from in its run's
    config.json; a plain encoder is its own base ("pretrained")."""
    info = encoder_info(checkpoint)
    folder = Path(info.location)
    run_config, weights = folder.parent / "config.json", folder / "model.safetensors"
    if (folder / "bertvision.json").is_file() and run_config.is_file():
        base = json.loads(run_config.read_text())["encoder"]
        sha = file_sha256(weights) if weights.is_file() else None
        return {"name": base["name"], "revision": base["revision"]}, str(folder), sha, info
    return {"name": info.name, "revision": info.revision}, "pretrained", None, info


@dataclass
class SplitPlan:
    """One split to embed: its open store writer and the extractor's input rows, in store order.
    The driver (this process, or a Ray job's) opens and finishes the store; shards are written
    by anyone holding a `StoreWriter.attach` to it (a Ray actor), one file each, atomically."""

    name: str
    writer: StoreWriter
    columns: dict[str, list]  # extractor input columns for every row (sentence: texts; span: windows)
    stats: dict  # facts for the manifest's ``extra``: the task spec, the data source, windowing

    def batch(self, shard: int) -> dict[str, list]:
        """The extractor input rows of one shard."""
        lo, hi = self.writer.shard_range(shard)
        return {k: v[lo:hi] for k, v in self.columns.items()}


@dataclass
class EmbedPlan:
    """What to embed, every split's store open and locked (`bertvision.locks`) until `close`
    (or the end of a ``with`` block): one process writes a store folder at a time."""

    extractor: dict  # `HiddenStateExtractor` keyword arguments; the runner adds batch_size and device
    splits: list[SplitPlan]
    locks: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)

    def pending(self) -> list[tuple[str, int]]:
        """(split, shard) pairs still to write, in order."""
        return [(p.name, k) for p in self.splits for k in p.writer.pending_shards()]

    def close(self) -> None:
        self.locks.close()

    def __enter__(self) -> EmbedPlan:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _mixed(source: str, facts: dict) -> str:
    return hashlib.sha256(f"{source}:{json.dumps(facts, sort_keys=True)}".encode()).hexdigest()


def prepare(cfg: EmbedConfig, out_dir: str | Path) -> EmbedPlan:
    """Read and check every split, then open (or resume) one store per split under ``out_dir``;
    nothing is written before all splits have been read, so bad data leaves no store behind.
    ``cfg`` is resolved for the task's family first; ``plan.extractor`` holds the values."""
    out_dir = check_out_dir(out_dir)
    task = get_task(cfg.task, cfg.data_dir)
    span = task.spec.traits.windows
    cfg = cfg.resolved(task.spec.kind)
    selection, max_length, quantize = cfg.selection, cfg.max_length, cfg.quantize
    if selection not in SELECTIONS:
        raise ConfigError(f"--selection must be one of {SELECTIONS}, not {selection!r}")
    # the store layout that holds this kind's labels and takes this selection
    layout = next((x for x in LAYOUTS.values() if task.spec.kind in x.label_kinds and selection in x.selections), None)
    if layout is None:
        raise ConfigError(f"task {task.name!r} ({task.spec.kind}) cannot be embedded with --selection {selection}: "
                          "span tasks take 'tokens' (sentence tasks 'cls', 'mean' or 'tokens')")  # fmt: skip
    sentence_tokens = layout.per_token and not span  # every token of each sentence (or pair)
    names = cfg.splits or tuple(s for s in task.spec.splits if task.exists(s))
    if not names:
        raise ConfigError(f"no split of task {task.name!r} found; see 'bertvision tasks'")
    for s in names:
        task.check_split(s)
    checkpoint = cfg.checkpoint
    encoder, label, sha, info = checkpoint_identity(checkpoint)
    logits = span and has_qa_head(info.location)
    outputs = None  # sentence stores: the task head's width, when the checkpoint has one
    if not span and has_task_head(info.location):
        outputs = _head_outputs(info.location)
        if outputs != task.spec.num_outputs:  # fine-tuned on another task: its head is not this task's
            warnings.warn(f"{info.location}: its task head has {outputs} output(s), task {task.name!r} "
                          f"{task.spec.num_outputs}; its logits are not stored", stacklevel=2)  # fmt: skip
            outputs = None
    loaded = {name: task.load(name) for name in names}  # bad data fails before anything is written
    subset = None
    if cfg.train_examples is not None:
        if span:
            raise ConfigError("--train-examples: sentence tasks only (span heads train on every window)")
        if "train" in loaded:
            subset = train_subset(loaded["train"], cfg)
    # Key order is the manifest's (extra.windowing): keep it.
    windowing = {"max_length": max_length, "doc_stride": cfg.windowing.doc_stride,
                 "max_query_length": cfg.windowing.max_query_length}  # fmt: skip
    columns, stats, specs = {}, {}, {}
    for name, data in loaded.items():
        stats[name] = {"task_spec": task.spec.to_dict(), "source": data.source, "quantize": quantize}
        source = split_fingerprint(data)
        if span:
            windows = make_windows(load_tokenizer(checkpoint), data.examples, **windowing)
            columns[name] = {
                "id": window_ids(windows.example_ids), "example_id": windows.example_ids,
                "input_ids": windows.input_ids, "token_type_ids": windows.token_type_ids,
                "offsets": [offsets_array(o) for o in windows.offsets],
                "label": [(int(a), int(b)) for a, b in zip(windows.start_positions, windows.end_positions, strict=True)],
            }  # fmt: skip
            stats[name].update(windowing=windowing, questions=len(data), tokens=sum(len(x) for x in windows.input_ids))
            source = _mixed(source, windowing)  # windowing fixes the rows too; only max_length is a spec field
        else:
            columns[name] = {"id": list(data.ids), **dict(zip(task.spec.text_fields, data.texts, strict=True))}
            if data.labels is not None:
                columns[name]["label"] = list(data.labels)
            if name == "train" and subset is not None:  # only the rows heads can read, in split order
                keep = subset.pop("rows")
                columns[name] = {k: [v[i] for i in keep] for k, v in columns[name].items()}
                stats[name]["subset"] = subset
                source = _mixed(source, {k: subset[k] for k in ("train_examples", "validation_fraction",
                                                                "validation_seed")})  # so are the subset's rows
        specs[name] = StoreSpec(
            task=task.name, split=name, encoder_name=encoder["name"], encoder_revision=encoder["revision"],
            checkpoint=label if not quantize else f"{label} ({quantize} dynamic quantisation)",
            checkpoint_sha256=sha, num_hidden_states=info.num_hidden_states, hidden_size=info.hidden_size,
            selection=selection, max_length=max_length, shard_rows=cfg.shard_rows, source_sha256=source,
            label_kind=task.spec.kind if span or data.labels is not None else None,
            encoder_logits=bool(logits) or outputs is not None, encoder_outputs=outputs,
            token_layout=layout.name if sentence_tokens else None,
        )  # fmt: skip
    extractor = {"checkpoint": checkpoint, "text_fields": task.spec.text_fields, "selection": selection,
                 "max_length": max_length, "quantize": quantize, "task_head": outputs is not None,
                 "sentence_tokens": sentence_tokens}  # fmt: skip
    plan = EmbedPlan(extractor, [])
    try:  # lock each split's folder before its writer opens it (and cleans temporary files)
        for name, spec in specs.items():
            folder = plan.locks.enter_context(claim(Path(out_dir) / name, "embed store"))
            writer = StoreWriter(folder, spec, len(columns[name]["id"]))
            plan.splits.append(SplitPlan(name, writer, columns[name], stats[name]))
    except BaseException:
        plan.close()
        raise
    return plan


def train_subset(data, cfg: EmbedConfig) -> dict:
    """What a store made with ``--train-examples N`` keeps of train: the validation part and the
    training subset, carved as fine-tuning and heads carve them. Returns the manifest's
    ``extra.subset`` (the carve, each part's positions among the stored rows) and ``rows``."""
    from bertvision.tasks.base import carve_validation, training_subset

    if data.labels is None:
        raise ConfigError(f"{data.source}: --train-examples needs a labelled train split")
    labels = np.asarray(data.labels)
    tr, va = carve_validation(labels, len(labels), cfg.validation_fraction, cfg.validation_seed, source=data.source)
    sub = training_subset(tr, cfg.train_examples, cfg.validation_seed)
    keep = np.union1d(sub, va)
    position = {int(r): k for k, r in enumerate(keep)}
    return {"of_rows": len(labels), "train_examples": cfg.train_examples, "validation_fraction": cfg.validation_fraction,
            "validation_seed": cfg.validation_seed, "train": [position[int(r)] for r in sub],
            "validation": [position[int(r)] for r in va], "rows": keep.tolist()}  # fmt: skip


def _head_outputs(location: str) -> int:
    """The number of outputs of a sequence checkpoint's task head."""
    from transformers import AutoConfig

    return int(AutoConfig.from_pretrained(location).num_labels)


def write_output(writer, shard: int, out: dict) -> None:
    """Write an extractor's output for one shard through ``writer``."""
    tokens = {"encoder_logits": out.get("encoder_logits")}
    if "example_id" in out:
        tokens.update(example_ids=list(out["example_id"]), offsets=out["offsets"])
    if "segments" in out:
        tokens["segments"] = out["segments"]
    label = None if out.get("label") is None else np.asarray(out["label"])
    writer.write_shard(shard, list(out["id"]), out["hidden"], label, **tokens)


def finish_split(plan: SplitPlan, run: dict | None) -> dict:
    """Mark a split's store complete, recording the data facts and this run's throughput."""
    return plan.writer.finish(extra={**plan.stats, **({"last_run": run} if run else {})})


def embed(cfg: EmbedConfig, out_dir: str | Path) -> dict[str, dict]:
    """Embed ``cfg.splits`` (default: every split found) of ``cfg.task`` in this process; returns
    split -> manifest (with ``this_run``: this run's throughput, None where already complete)."""
    pick_device(cfg.device)  # a bad --device fails before any store is opened
    with prepare(cfg, out_dir) as plan:
        return _run(plan, cfg.batch_size, cfg.device)


def _run(plan: EmbedPlan, batch_size: int, device: str | None) -> dict[str, dict]:
    from bertvision.runtime import progress

    # A rerun over complete stores loads no model.
    extractor = HiddenStateExtractor(**plan.extractor, batch_size=batch_size, device=device) if plan.pending() else None
    manifests = {}
    pending = {split.name: split.writer.pending_shards() for split in plan.splits}
    total = sum(len(range(*split.writer.shard_range(k))) for split in plan.splits for k in pending[split.name])
    bar = progress(total, "embed", unit="row")  # one bar over every split
    for split in plan.splits:
        t0, tokens0, rows = time.perf_counter(), extractor.tokens_seen if extractor else 0, 0
        for k in pending[split.name]:
            batch = split.batch(k)
            write_output(split.writer, k, extractor(batch))
            rows += len(batch["id"])
            bar.update(len(batch["id"]))
        seconds = time.perf_counter() - t0
        run = None
        if rows:
            run = {"rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows / seconds, 1),
                   "tokens_per_second": round((extractor.tokens_seen - tokens0) / seconds, 1),
                   "device": str(extractor.device), "runner": "in-process"}  # fmt: skip
        manifests[split.name] = {**finish_split(split, run), "this_run": run}
    bar.close()
    return manifests

