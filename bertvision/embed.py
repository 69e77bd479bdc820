"""The embed stage: every split of a task through `HiddenStateExtractor` into the store.

    bertvision embed --task rte --checkpoint runs/rte/ft/checkpoint-e0.3 --out runs/rte/emb/e0.3

writes ``OUT/<split>/`` for each split (Parquet shards + manifest.json, see `bertvision.store`).
Shards are written atomically and a rerun skips complete ones, so a killed run resumes.

Span tasks (SQuAD 2.0) are cut into windows (`bertvision.spans.make_windows`) and stored with the
``tokens`` selection: one row per window ``<question id>#<k>``, every real token of every layer,
the tokens' character offsets, the (start, end) target and, from a question-answering
checkpoint, the encoder's own start/end logits.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from bertvision.errors import ConfigError


def checkpoint_identity(checkpoint: str | None) -> tuple[dict, str, str | None]:
    """(base encoder {name, revision}, checkpoint label, checkpoint weights sha256) of a checkpoint.

    A fine-tuning checkpoint (a folder written by `bertvision finetune`) names the encoder it
    started from in its run's config.json; a plain encoder is its own base ("pretrained").
    """
    from bertvision.encoders import encoder_info

    info = encoder_info(checkpoint)
    folder = Path(info.location)
    run_config = folder.parent / "config.json"
    weights = folder / "model.safetensors"
    if (folder / "bertvision.json").is_file() and run_config.is_file():
        base = json.loads(run_config.read_text())["encoder"]
        sha = _sha256(weights) if weights.is_file() else None
        return {"name": base["name"], "revision": base["revision"]}, str(folder), sha
    return {"name": info.name, "revision": info.revision}, "pretrained", None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def embed(
    task_name: str,
    checkpoint: str | None,
    out_dir: str | Path,
    *,
    splits: tuple[str, ...] | None = None,
    data_dir: str | None = None,
    selection: str = "cls",
    max_length: int = 128,
    batch_size: int = 16,
    shard_rows: int | None = None,
    device: str | None = None,
    quantize: str | None = None,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> dict[str, dict]:
    """Embed ``splits`` (default: every split found) of a task; returns split -> manifest.

    Span tasks always use the ``tokens`` selection (``selection`` "cls", the default, is taken
    to mean it); ``doc_stride`` and ``max_query_length`` apply to them only.
    """
    from tqdm.auto import tqdm

    from bertvision.extract import HiddenStateExtractor, iter_split_batches
    from bertvision.store import StoreSpec, StoreWriter
    from bertvision.tasks import get_task

    task = get_task(task_name, data_dir)
    if task.spec.kind == "span" or selection == "tokens":
        if task.spec.kind != "span" or selection not in ("tokens", "cls"):
            raise ConfigError(f"task {task.name!r} ({task.spec.kind}) cannot be embedded with --selection {selection}: "
                              "span tasks take 'tokens', sentence tasks 'cls' or 'mean'")  # fmt: skip
        return embed_spans(task, checkpoint, out_dir, splits=splits, max_length=max_length, doc_stride=doc_stride,
                           max_query_length=max_query_length, batch_size=batch_size, shard_rows=shard_rows,
                           device=device, quantize=quantize)  # fmt: skip
    names = splits or tuple(s for s in task.spec.splits if task.exists(s))
    if not names:
        raise ConfigError(f"no split of task {task.name!r} found; see 'bertvision tasks'")
    for s in names:
        task.check_split(s)
    encoder, label, sha = checkpoint_identity(checkpoint)
    extractor = HiddenStateExtractor(
        checkpoint, task.spec.text_fields, selection=selection, max_length=max_length,
        batch_size=batch_size, device=device, quantize=quantize,
    )  # fmt: skip
    loaded = {name: task.load(name) for name in names}  # bad data fails before anything is written
    manifests = {}
    for name, data in loaded.items():
        spec = StoreSpec(
            task=task.name, split=name, encoder_name=encoder["name"], encoder_revision=encoder["revision"],
            checkpoint=label if not quantize else f"{label} ({quantize} dynamic quantisation)",
            checkpoint_sha256=sha, num_hidden_states=extractor.output_shape[0],
            hidden_size=extractor.output_shape[1], selection=selection, max_length=max_length,
            label_kind=task.spec.kind if data.labels is not None else None, shard_rows=shard_rows,
        )  # fmt: skip
        writer = StoreWriter(Path(out_dir) / name, spec, len(data))
        pending = writer.pending_shards()
        t0, tokens0 = time.perf_counter(), extractor.tokens_seen
        rows = 0
        with tqdm(total=sum(len(range(*writer.shard_range(k))) for k in pending), desc=f"embed {name}", disable=None) as bar:
            for k in pending:
                start, stop = writer.shard_range(k)
                batch = next(iter_split_batches(data, stop - start, start, stop))
                out = extractor(batch)
                writer.write_shard(k, out["id"], out["hidden"], out.get("label"))
                rows += stop - start
                bar.update(stop - start)
        seconds = time.perf_counter() - t0
        stats = {"task_spec": task.spec.to_dict(), "source": data.source, "quantize": quantize}
        if rows:
            stats["last_run"] = {"rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows / seconds, 1),
                                 "tokens_per_second": round((extractor.tokens_seen - tokens0) / seconds, 1),
                                 "device": str(extractor.device)}  # fmt: skip
        manifests[name] = writer.finish(extra=stats)
    return manifests


def window_ids(example_ids) -> list[str]:
    """``<question id>#<k>``: the k-th window of a question (k from 0), unique per store."""
    seen: dict[str, int] = {}
    out = []
    for qid in example_ids:
        k = seen.get(qid, 0)
        seen[qid] = k + 1
        out.append(f"{qid}#{k}")
    return out


def embed_spans(
    task,
    checkpoint: str | None,
    out_dir: str | Path,
    *,
    splits: tuple[str, ...] | None = None,
    max_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
    batch_size: int = 16,
    shard_rows: int | None = None,
    device: str | None = None,
    quantize: str | None = None,
) -> dict[str, dict]:
    """Token-level store of a span task's splits; returns split -> manifest."""
    from tqdm.auto import tqdm

    from bertvision.extract import HiddenStateExtractor
    from bertvision.spans import make_windows, offsets_array
    from bertvision.store import StoreSpec, StoreWriter

    names = splits or tuple(s for s in task.spec.splits if task.exists(s))
    if not names:
        raise ConfigError(f"no split of task {task.name!r} found; see 'bertvision tasks'")
    for s in names:
        task.check_split(s)
    encoder, label, sha = checkpoint_identity(checkpoint)
    extractor = HiddenStateExtractor(checkpoint, task.spec.text_fields, selection="tokens", max_length=max_length,
                                     batch_size=batch_size, device=device, quantize=quantize)  # fmt: skip
    loaded = {name: task.load(name) for name in names}  # bad data fails before anything is written
    windowing = {"max_length": max_length, "doc_stride": doc_stride, "max_query_length": max_query_length}
    manifests = {}
    for name, data in loaded.items():
        windows = make_windows(extractor.tokenizer, data.examples, **windowing)
        ids = window_ids(windows.example_ids)
        spec = StoreSpec(
            task=task.name, split=name, encoder_name=encoder["name"], encoder_revision=encoder["revision"],
            checkpoint=label if not quantize else f"{label} ({quantize} dynamic quantisation)",
            checkpoint_sha256=sha, num_hidden_states=extractor.output_shape[0],
            hidden_size=extractor.output_shape[1], selection="tokens", max_length=max_length,
            label_kind="span", shard_rows=shard_rows, encoder_logits=extractor.has_encoder_logits,
        )  # fmt: skip
        writer = StoreWriter(Path(out_dir) / name, spec, len(windows))
        pending = writer.pending_shards()
        t0, tokens0, rows = time.perf_counter(), extractor.tokens_seen, 0
        total = sum(len(range(*writer.shard_range(k))) for k in pending)
        with tqdm(total=total, desc=f"embed {name} windows", disable=None) as bar:
            for k in pending:
                lo, hi = writer.shard_range(k)
                out = extractor({
                    "id": ids[lo:hi], "example_id": windows.example_ids[lo:hi],
                    "input_ids": windows.input_ids[lo:hi], "token_type_ids": windows.token_type_ids[lo:hi],
                    "offsets": [offsets_array(o) for o in windows.offsets[lo:hi]],
                    "label": list(zip(windows.start_positions[lo:hi], windows.end_positions[lo:hi], strict=True)),
                })  # fmt: skip
                writer.write_shard(k, list(out["id"]), out["hidden"], out["label"], example_ids=list(out["example_id"]),
                                   offsets=out["offsets"], encoder_logits=out.get("encoder_logits"))  # fmt: skip
                rows += hi - lo
                bar.update(hi - lo)
        seconds = time.perf_counter() - t0
        stats = {"task_spec": task.spec.to_dict(), "source": data.source, "quantize": quantize,
                 "windowing": windowing, "questions": len(data),
                 "tokens": sum(len(x) for x in windows.input_ids)}  # fmt: skip
        if rows:
            stats["last_run"] = {"rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows / seconds, 1),
                                 "tokens_per_second": round((extractor.tokens_seen - tokens0) / seconds, 1),
                                 "device": str(extractor.device)}  # fmt: skip
        manifests[name] = writer.finish(extra=stats)
    return manifests
