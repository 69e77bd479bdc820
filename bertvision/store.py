"""The embedding store: every layer's hidden states of one split, written once, read many times.

One folder holds one (task, encoder, checkpoint, split); the caller chooses the folder. Inside::

    manifest.json             what is stored and how far writing got (see below)
    shard-00000.parquet       rows [0, shard_rows) of the split, in the split's order
    shard-00001.parquet       rows [shard_rows, 2 * shard_rows)
    ...

A store has one of two layouts, set by the manifest's ``selection``.

**One vector per layer and example** (selection "cls" or "mean"): one row per example, and each
shard is a Parquet file with the columns

* ``id`` (string): the example id, unique across the store;
* ``hidden``: Arrow's canonical fixed-shape tensor type (extension name
  ``arrow.fixed_shape_tensor``, value type float16, shape ``[L, H]``), so pyarrow alone reads it
  back with its shape: ``table.column("hidden").combine_chunks().to_numpy_ndarray()`` gives
  ``(rows, L, H)``; ``L`` is the number of hidden states (embedding output + every layer) and
  ``H`` the hidden size;
* ``label``: int64 (classification) or float32 (regression), only in labelled splits;
* ``encoder_logits`` (only when the manifest's ``encoder_logits`` is true): ``fixed_size_list<
  float32, C>``, the fine-tuned encoder's own task head's outputs for the example (C =
  ``encoder_outputs``: the logits of a classification head, 1 for a regression head's
  prediction), so an ensemble can include the encoder without running it. A store of a bare
  encoder has no such column (and the same shard bytes as before the column existed).

**Every token** (selection "tokens", for span tasks such as SQuAD): one row per *window*, a
question and a chunk of its context of at most ``max_length`` tokens (a long context gives
several windows). A window keeps its ``T`` real tokens only, no padding, so ``T`` varies from row
to row (1 <= T <= max_length). The columns, none of them null:

* ``id`` (string): the window id, unique across the store (as "<question id>#<k>");
* ``example_id`` (string): the question the window belongs to (shared by its windows);
* ``hidden``: ``list<arrow.fixed_shape_tensor[float16, [L, H]]>``, the window's tokens in order;
  ``col.combine_chunks()`` gives a list array whose ``.offsets`` are the row starts and whose
  ``.flatten().to_numpy_ndarray()`` is every token of the shard, ``(sum T, L, H)``;
* ``offsets``: ``list<fixed_size_list<int32, 2>>``, per token its (start, end) character offsets
  into the context, or (-1, -1) for a token outside it (CLS, the question, SEP); otherwise
  0 <= start <= end;
* ``label`` (only in labelled splits, label_kind "span"): ``fixed_size_list<int64, 2>``, the
  window's target (start, end) token positions, 0 <= start <= end < T; (0, 0), the CLS token,
  means the answer is not in the window;
* ``encoder_logits`` (only when the manifest's ``encoder_logits`` is true):
  ``list<fixed_size_list<float32, 2>>``, per token the fine-tuned encoder's own (start, end)
  logits, as many as ``hidden`` has tokens.

Every list column of a row has the same length T. Shards hold ``shard_rows`` windows
(`suggest_window_rows` by default), so their sizes in bytes vary with the windows' lengths.

**Every token of a sentence** (selection "tokens" with ``token_layout`` "sentences", for
sentence tasks: single sentences and pairs): one row per example, its ``T`` real tokens (special
tokens included, after truncation to ``max_length``), no padding. The columns, none of them null:

* ``id`` (string): the example id, unique across the store;
* ``hidden``: ``list<arrow.fixed_shape_tensor[float16, [L, H]]>``, the example's tokens in order;
* ``segments``: ``list<int8>``, per token 0 (the first sentence, with CLS and its SEP) or 1
  (the second sentence of a pair, with the last SEP), as BERT's token types;
* ``label``: int64 (classification) or float32 (regression), only in labelled splits;
* ``encoder_logits`` (only when the manifest's ``encoder_logits`` is true):
  ``fixed_size_list<float32, C>``, the fine-tuned encoder's task head outputs for the example,
  as in a cls/mean store.

``manifest.json`` holds ``format_version`` (1), ``status`` ("incomplete" while writing,
"complete" at the end), the fields of `StoreSpec` (encoder {name, revision}, checkpoint,
checkpoint_sha256, task, split, num_hidden_states, hidden_size, selection, max_length, dtype,
label_kind, shard_rows, encoder_logits, source_sha256, ``encoder_outputs`` where a cls/mean
store (or a sentence token store) has encoder logits, and ``token_layout`` for a sentence token
store), ``rows`` (the split's size, known from
the start; windows for a token store), ``shards`` (one {file, rows, sha256, first_id, last_id}
per shard, filled in at the end), ``code_version``, ``created`` (UTC) and ``extra`` (free:
throughput and the like). A manifest written before ``encoder_logits`` existed reads as
``encoder_logits`` false, one before ``source_sha256`` as null (unknown data).

Writing is resumable: a shard appears under its final name only when it is whole (it is written
under a temporary name and renamed), so after a crash the shards on disk are the ones done and
`StoreWriter.pending_shards` lists the rest. One writer per folder at a time: opening a writer
removes temporary files left by a killed one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertvision.errors import ConfigError, DataError
from bertvision.io import atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:
    import torch

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SELECTIONS = ("cls", "mean", "tokens")
LABEL_KINDS = ("classification", "regression", "span")
DTYPES = ("float16",)
TENSOR_EXTENSION = "arrow.fixed_shape_tensor"

# Shards of about this size: big enough that per-file overhead does not matter, small enough
# that one shard (the unit of streaming and of resuming) fits easily in memory.
TARGET_SHARD_BYTES = 64 * 2**20

# Measured on random N(0, 1) float16, 2048 x 7 x 384 (11 MB), pyarrow 26, 2 CPU cores:
#   none                       1.00 of raw size, write ~310 MB/s, read ~715 MB/s
#   zstd                       0.92,             write ~280 MB/s, read ~510 MB/s
#   zstd + byte_stream_split   0.85,             write ~305 MB/s, read ~630 MB/s
# Mantissa bits of float16 hidden states are close to random, so compression saves little,
# while a store is written once and read by every head trained on it: no compression keeps
# reads fastest and the files readable by any Parquet reader.
COMPRESSION = "none"

_STATUS = ("incomplete", "complete")
_LABEL_TYPES = {
    "classification": pa.int64(),
    "regression": pa.float32(),
    "span": pa.list_(pa.int64(), 2),
}
_LABEL_DTYPES = {"classification": np.int64, "regression": np.float32, "span": np.int64}
# Token stores: per token (start, end) character offsets, and (start, end) encoder logits.
_OFFSETS_TYPE = pa.list_(pa.list_(pa.int32(), 2))
# Sentence token stores: per token its sentence (0 or 1).
_SEGMENTS_TYPE = pa.list_(pa.int8())
TOKEN_LAYOUTS = ("sentences",)
_LOGITS_TYPE = pa.list_(pa.list_(pa.float32(), 2))
_INT32_MAX = 2**31 - 1
_INCOMPLETE_HINT = "rerun the embed command to finish it"
_MISSING_SHARD = (
    "missing shard; the store is damaged: delete the folder and rerun the embed command"
)


# --------------------------------------------------------------------------- names and plan


def shard_file(index: int) -> str:
    """The file name of shard `index` ("shard-00000.parquet")."""
    return f"shard-{index:05d}.parquet"


def num_shards(rows: int, shard_rows: int) -> int:
    """How many shards hold `rows` rows at `shard_rows` rows per shard."""
    return math.ceil(rows / shard_rows)


def shard_bounds(index: int, rows: int, shard_rows: int) -> tuple[int, int]:
    """The rows [start, stop) of the split that shard `index` holds."""
    start = index * shard_rows
    return start, min(start + shard_rows, rows)


def suggest_shard_rows(num_hidden_states: int, hidden_size: int) -> int:
    """Rows per shard for shards of about `TARGET_SHARD_BYTES`, a multiple of 256."""
    row_bytes = num_hidden_states * hidden_size * 2  # float16
    return max(256, TARGET_SHARD_BYTES // row_bytes // 256 * 256)


def suggest_window_rows(num_hidden_states: int, hidden_size: int, max_length: int) -> int:
    """Windows per shard of a token store for shards of about `TARGET_SHARD_BYTES`.

    Assumes windows of max_length / 2 tokens on average (short contexts fill a window only
    partly; long ones fill all their windows but the last). At least 16, a multiple of 16.
    """
    window_bytes = num_hidden_states * hidden_size * 2 * max(max_length / 2, 1)  # float16
    return max(16, int(TARGET_SHARD_BYTES // window_bytes) // 16 * 16)


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds; two writers with different specs must not share a folder.

    Attributes:
      task: the task name ("sst2", "squad_v2", ...).
      split: the split name ("train", "validation", ...).
      encoder_name: the encoder's name, as `EncoderInfo.name`.
      encoder_revision: the encoder's revision, as `EncoderInfo.revision`.
      checkpoint: the fine-tuned checkpoint's path, or "pretrained".
      num_hidden_states: L, the embedding output plus one per layer.
      hidden_size: H.
      selection: how one example's token states became one vector per layer ("cls", "mean"),
        or "tokens": every real token of every window kept (span tasks).
      max_length: the tokenizer's max_length; a window's most tokens in a token store.
      checkpoint_sha256: the checkpoint weights' sha256, or None.
      label_kind: "classification", "regression", "span" (token stores only: a window's
        (start, end) token positions), or None for an unlabelled split.
      shard_rows: planned rows (windows, for "tokens") per shard; None picks
        `suggest_shard_rows`, or `suggest_window_rows` for "tokens".
      dtype: the stored dtype; only "float16".
      encoder_logits: whether rows carry the fine-tuned encoder's own logits: (start, end) per
        token in a token store; in a cls/mean store the task head's `encoder_outputs` outputs
        per example.
      source_sha256: a fingerprint of the split's data (`bertvision.fingerprint`: ids, texts,
        labels in order), so a rerun over changed data with the same row count is refused
        instead of mixing old and new shards; None where unknown (stores written before it).
      encoder_outputs: cls/mean stores with `encoder_logits`: C, the width of the encoder's task
        head (classes, or 1 for regression); None otherwise (and then absent from the manifest,
        so a store without encoder logits has the manifest fields it had before this field).
      token_layout: "sentences" for a token store of a sentence task (one row per example,
        with segments; sentence labels and encoder outputs); None otherwise (windows of a span
        task, or cls/mean; then absent from the manifest).
    """

    task: str
    split: str
    encoder_name: str
    encoder_revision: str
    checkpoint: str
    num_hidden_states: int
    hidden_size: int
    selection: str
    max_length: int
    checkpoint_sha256: str | None = None
    label_kind: str | None = None
    shard_rows: int | None = None
    dtype: str = "float16"
    encoder_logits: bool = False
    source_sha256: str | None = None
    encoder_outputs: int | None = None
    token_layout: str | None = None

    def __post_init__(self) -> None:
        for name in ("task", "split", "encoder_name", "encoder_revision", "checkpoint"):
            _require(
                isinstance(getattr(self, name), str) and getattr(self, name),
                name,
                "a non-empty string",
                getattr(self, name),
            )
        for name in ("num_hidden_states", "hidden_size", "max_length"):
            _require(
                _is_positive_int(getattr(self, name)),
                name,
                "a positive integer",
                getattr(self, name),
            )
        for name in ("checkpoint_sha256", "source_sha256"):
            _require(
                getattr(self, name) is None or isinstance(getattr(self, name), str),
                name,
                "a string or null",
                getattr(self, name),
            )
        _require(self.selection in SELECTIONS, "selection", f"one of {SELECTIONS}", self.selection)
        _require(
            self.label_kind is None or self.label_kind in LABEL_KINDS,
            "label_kind",
            f"one of {LABEL_KINDS} or null",
            self.label_kind,
        )
        _require(self.dtype in DTYPES, "dtype", f"one of {DTYPES}", self.dtype)
        _require(
            isinstance(self.encoder_logits, bool),
            "encoder_logits",
            "true or false",
            self.encoder_logits,
        )
        tokens = self.selection == "tokens"
        _require(
            self.token_layout is None or self.token_layout in TOKEN_LAYOUTS,
            "token_layout",
            f"one of {TOKEN_LAYOUTS} or null",
            self.token_layout,
        )
        sentences = self.token_layout == "sentences"
        if sentences and not tokens:
            raise ConfigError(
                f"token_layout: 'sentences' needs selection 'tokens', got selection {self.selection!r}"
            )
        if sentences and self.label_kind == "span":
            raise ConfigError("label_kind: a sentence token store holds sentence labels, not 'span'")
        if tokens and not sentences and self.label_kind not in ("span", None):
            raise ConfigError(
                f"label_kind: selection 'tokens' stores span labels ('span' or null), "
                f"got {self.label_kind!r} (a sentence task's token store has token_layout 'sentences')"
            )
        if self.label_kind == "span" and not tokens:
            raise ConfigError(
                f"label_kind: 'span' needs selection 'tokens', got selection {self.selection!r}"
            )
        if self.encoder_outputs is not None:
            _require(
                _is_positive_int(self.encoder_outputs),
                "encoder_outputs",
                "a positive integer or null",
                self.encoder_outputs,
            )
            if (tokens and not sentences) or not self.encoder_logits:
                raise ConfigError(
                    "encoder_outputs: set only for a cls/mean store with encoder_logits true, got "
                    f"selection {self.selection!r}, encoder_logits {self.encoder_logits}"
                )
        if self.encoder_logits and (not tokens or sentences) and self.encoder_outputs is None:
            raise ConfigError(
                f"encoder_logits: true needs selection 'tokens', got selection {self.selection!r} "
                "(a cls/mean store's encoder logits need encoder_outputs, the task head's width)"
            )
        if self.shard_rows is None:
            # Frozen dataclass: the only way to fill in a computed default.
            if tokens:
                rows = suggest_window_rows(
                    self.num_hidden_states, self.hidden_size, self.max_length
                )
            else:
                rows = suggest_shard_rows(self.num_hidden_states, self.hidden_size)
            object.__setattr__(self, "shard_rows", rows)
        _require(
            _is_positive_int(self.shard_rows), "shard_rows", "a positive integer", self.shard_rows
        )

    def to_dict(self) -> dict[str, Any]:
        """The spec as manifest fields (the encoder nested as {name, revision})."""
        return {
            "encoder": {"name": self.encoder_name, "revision": self.encoder_revision},
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "task": self.task,
            "split": self.split,
            "num_hidden_states": self.num_hidden_states,
            "hidden_size": self.hidden_size,
            "selection": self.selection,
            "max_length": self.max_length,
            "dtype": self.dtype,
            "label_kind": self.label_kind,
            "shard_rows": self.shard_rows,
            "encoder_logits": self.encoder_logits,
            "source_sha256": self.source_sha256,
            **({} if self.encoder_outputs is None else {"encoder_outputs": self.encoder_outputs}),
            **({} if self.token_layout is None else {"token_layout": self.token_layout}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreSpec:
        """The spec from manifest fields; other keys are ignored.

        A missing ``encoder_logits`` (a manifest written before it existed) reads as false, a
        missing ``source_sha256``, ``encoder_outputs`` or ``token_layout`` as null.

        Raises:
          ConfigError: a field is missing or has a bad value.
        """
        encoder = data.get("encoder")
        if not isinstance(encoder, Mapping):
            raise ConfigError("encoder: expected {name, revision}")
        kwargs = {"encoder_name": encoder.get("name"), "encoder_revision": encoder.get("revision")}
        for f in fields(cls):
            if f.name in kwargs:
                continue
            if f.name in ("encoder_logits", "source_sha256", "encoder_outputs", "token_layout") and f.name not in data:
                kwargs[f.name] = False if f.name == "encoder_logits" else None
                continue
            if f.name not in data:
                raise ConfigError(f"{f.name}: missing")
            kwargs[f.name] = data[f.name]
        return cls(**kwargs)

    def differences(self, other: StoreSpec) -> list[str]:
        """The manifest fields where `self` and `other` differ, as "field: a != b" lines."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        keys = [*mine, *(k for k in theirs if k not in mine)]  # encoder_outputs may be absent
        return [f"{k}: {mine.get(k)!r} != {theirs.get(k)!r}" for k in keys if mine.get(k) != theirs.get(k)]


def _short(sha: str | None) -> str:
    return "none (written before fingerprints)" if sha is None else sha[:12]


def _require(ok: Any, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: expected {expected}, got {got!r}")


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# --------------------------------------------------------------------------- manifest


@lru_cache(maxsize=1)
def code_version() -> str:
    """bertvision's version, plus "+git.<commit>" when the package sits in a git checkout."""
    from bertvision import __version__

    package = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel", "HEAD"],
            cwd=package,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return __version__
    # An installed copy inside some other repository (a venv in a project) must not borrow
    # that repository's commit.
    if len(out) != 2 or Path(out[0]).resolve() != package.parent:
        return __version__
    return f"{__version__}+git.{out[1]}"


def _utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _new_manifest(spec: StoreSpec, rows: int) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "status": "incomplete",
        **spec.to_dict(),
        "rows": rows,
        "shards": [],
        "code_version": code_version(),
        "created": _utc_now(),
        "extra": {},
    }


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the store in folder `path`, checked for shape.

    Raises:
      DataError: naming manifest.json, when it is missing, not JSON, of another format version,
        or its fields do not add up (a complete store's shards must match its rows).
    """
    file = Path(path) / MANIFEST_NAME
    try:
        data = file.read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise DataError(
            file,
            "missing: the folder is not an embedding store (or its embed command never started)",
        ) from None
    except OSError as exc:
        raise DataError(file, f"cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        from bertvision.errors import decode_error

        raise decode_error(file, exc, data) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        from bertvision.errors import json_error

        raise json_error(file, exc) from None
    _check_manifest(manifest, file)
    return manifest


def _check_manifest(manifest: Any, file: Path) -> None:
    if not isinstance(manifest, dict):
        raise DataError(file, "expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(file, f"format_version {version!r}; this bertvision reads {FORMAT_VERSION}")
    if manifest.get("status") not in _STATUS:
        raise DataError(file, f"status: expected one of {_STATUS}, got {manifest.get('status')!r}")
    try:
        spec = StoreSpec.from_dict(manifest)
    except ConfigError as exc:
        raise DataError(file, str(exc)) from None
    rows = manifest.get("rows")
    if not (isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0):
        raise DataError(file, f"rows: expected a count, got {rows!r}")
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise DataError(file, "shards: expected a list")
    if manifest["status"] == "complete":
        _check_shard_entries(shards, rows, spec.shard_rows, file)
    if not isinstance(manifest.get("extra", {}), dict):
        raise DataError(file, "extra: expected an object")


def _check_shard_entries(shards: list, rows: int, shard_rows: int, file: Path) -> None:
    """A complete manifest lists exactly the planned shards, with the planned row counts."""
    planned = num_shards(rows, shard_rows)
    if len(shards) != planned:
        raise DataError(
            file,
            f"{len(shards)} shards listed, but {rows} rows at {shard_rows} "
            f"per shard make {planned}",
        )
    keys = ("file", "rows", "sha256", "first_id", "last_id")
    for k, entry in enumerate(shards):
        if not isinstance(entry, dict) or any(key not in entry for key in keys):
            raise DataError(file, f"shards[{k}]: expected an object with {', '.join(keys)}")
        if entry["file"] != shard_file(k):
            raise DataError(
                file, f"shards[{k}].file: expected {shard_file(k)!r}, got {entry['file']!r}"
            )
        start, stop = shard_bounds(k, rows, shard_rows)
        if entry["rows"] != stop - start:
            raise DataError(
                file,
                f"shards[{k}].rows: the plan ({rows} rows, {shard_rows} per "
                f"shard) gives {stop - start}, the manifest says {entry['rows']}",
            )


def is_complete(path: str | os.PathLike) -> bool:
    """True when folder `path` holds a finished store; False when it has no manifest yet.

    Raises:
      DataError: the manifest exists but is malformed.
    """
    if not (Path(path) / MANIFEST_NAME).is_file():
        return False
    return read_manifest(path)["status"] == "complete"


def _written_shards(folder: Path, manifest: Mapping[str, Any]) -> list[int]:
    planned = num_shards(manifest["rows"], manifest["shard_rows"])
    return [k for k in range(planned) if (folder / shard_file(k)).is_file()]


def _complete_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete store, or a DataError saying how far writing got."""
    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest["status"] != "complete":
        done = len(_written_shards(folder, manifest))
        planned = num_shards(manifest["rows"], manifest["shard_rows"])
        raise DataError(
            folder, f"incomplete store: {done} of {planned} shards written; {_INCOMPLETE_HINT}"
        )
    return manifest


def store_bytes(path: str | os.PathLike) -> int:
    """The total size in bytes of the shards on disk (complete or not)."""
    folder = Path(path)
    manifest = read_manifest(folder)
    return sum((folder / shard_file(k)).stat().st_size for k in _written_shards(folder, manifest))


# --------------------------------------------------------------------------- writing


class StoreWriter:
    """Writes the shards of one store, resuming a store that a killed run left incomplete.

    Shard k holds rows [k * shard_rows, (k + 1) * shard_rows) of the split, in order. Write the
    shards `pending_shards` lists (any order), then call `finish`.

    Args:
      path: the store's folder (created when missing).
      spec: what is stored.
      total_rows: the number of rows of the split.

    Raises:
      ConfigError: the folder holds a store made with another spec or another row count.
      DataError: the split is empty, or the folder's manifest is malformed, or the folder has
        shard files but no manifest.
    """

    def __init__(self, path: str | os.PathLike, spec: StoreSpec, total_rows: int):
        self.path = Path(path)
        self.spec = spec
        if not (isinstance(total_rows, int) and total_rows >= 0):
            raise ConfigError(f"total_rows: expected a count, got {total_rows!r}")
        if total_rows == 0:
            raise DataError(
                self.path, f"empty split: {spec.task}/{spec.split} has no rows to store"
            )
        self.total_rows = total_rows
        self.num_shards = num_shards(total_rows, spec.shard_rows)
        self._checksums: dict[int, str] = {}  # of the shards this writer wrote
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path}: expected a folder for the store, found a file")
        self.path.mkdir(parents=True, exist_ok=True)
        self._remove_stale_temp_files()
        self.complete = self._open()

    @classmethod
    def attach(cls, path: str | os.PathLike, spec: StoreSpec, total_rows: int) -> StoreWriter:
        """A shard-only writer for a store that another process opened (a Ray actor's view).

        It neither creates the manifest nor removes temporary files (other writers may be
        mid-write), and must not `finish`: the process that opened the store finishes it.

        Raises:
          DataError: the folder has no readable manifest (the store was never opened).
          ConfigError: the manifest describes another spec or row count.
        """
        self = cls.__new__(cls)
        self.path, self.spec, self.total_rows = Path(path), spec, total_rows
        self.num_shards = num_shards(total_rows, spec.shard_rows)
        self._checksums = {}
        manifest = read_manifest(self.path)
        diffs = self._differences(StoreSpec.from_dict(manifest), manifest)
        if diffs:
            raise ConfigError(f"{self.path} holds a store made with other settings ({'; '.join(diffs)})")
        self.complete = manifest["status"] == "complete"
        self.attached = True
        return self

    attached = False

    # -- opening

    def _open(self) -> bool:
        """Start a new store or check the existing one; True when it is already complete."""
        if not (self.path / MANIFEST_NAME).exists():
            if any(self.path.glob("shard-*.parquet")):
                raise DataError(
                    self.path,
                    "has shard files but no manifest.json; use another folder or delete it",
                )
            atomic_write_json(self.path / MANIFEST_NAME, _new_manifest(self.spec, self.total_rows))
            return False
        manifest = read_manifest(self.path)
        stored = StoreSpec.from_dict(manifest)
        if stored.source_sha256 != self.spec.source_sha256 and not [
            d for d in stored.differences(self.spec) if not d.startswith("source_sha256")
        ]:
            state = "a complete" if manifest["status"] == "complete" else "an unfinished"
            raise ConfigError(
                f"{self.path} holds {state} store of other data: the {self.spec.task}/"
                f"{self.spec.split} examples (for span tasks: or their windowing) changed since it "
                f"was written (source_sha256 "
                f"{_short(stored.source_sha256)} stored, {_short(self.spec.source_sha256)} now); "
                "its shards would mix old and new data. Use another --out, or delete the folder "
                "to embed the new data"
            )
        diffs = self._differences(stored, manifest)
        if diffs:
            raise ConfigError(
                f"{self.path} holds a store made with other settings (store != asked: "
                f"{'; '.join(diffs)}); use another folder or delete it"
            )
        if manifest["status"] == "complete":
            return True
        self._drop_bad_shards()
        return False

    def _differences(self, stored: StoreSpec, manifest: Mapping[str, Any]) -> list[str]:
        """Where the folder's store (`stored`, from `manifest`) differs from this writer's spec
        and row count, as "field: stored != asked" lines."""
        diffs = stored.differences(self.spec)
        if manifest["rows"] != self.total_rows:
            diffs.append(f"rows: {manifest['rows']!r} != {self.total_rows!r}")
        return diffs

    def _remove_stale_temp_files(self) -> None:
        # atomic_write_bytes names its temporary files ".<final name>.<random>.tmp".
        for pattern in (".shard-*.parquet.*.tmp", f".{MANIFEST_NAME}.*.tmp"):
            for tmp in self.path.glob(pattern):
                tmp.unlink(missing_ok=True)

    def _drop_bad_shards(self) -> None:
        """Delete shards of an incomplete store whose footer is unreadable or off-plan.

        Shards appear by rename, so this only happens when a file was damaged or copied in;
        deleting it makes it pending again rather than failing at the end.
        """
        for k in range(self.num_shards):
            file = self.path / shard_file(k)
            if not file.is_file():
                continue
            start, stop = self.shard_range(k)
            try:
                ok = pq.read_metadata(file).num_rows == stop - start
            except (OSError, pa.ArrowException):
                ok = False
            if not ok:
                warnings.warn(
                    f"{file}: damaged or not of this plan; it will be rewritten", stacklevel=4
                )
                file.unlink()

    # -- plan

    def shard_range(self, index: int) -> tuple[int, int]:
        """The rows [start, stop) of the split that shard `index` holds."""
        if not (isinstance(index, (int, np.integer)) and 0 <= index < self.num_shards):
            raise ValueError(f"shard index: expected 0..{self.num_shards - 1}, got {index!r}")
        return shard_bounds(int(index), self.total_rows, self.spec.shard_rows)

    def pending_shards(self) -> list[int]:
        """The shards not yet on disk, in order; empty for a complete store."""
        if self.complete:
            return []
        return [k for k in range(self.num_shards) if not (self.path / shard_file(k)).is_file()]

    # -- writing

    def write_shard(
        self,
        index: int,
        ids: Sequence[str],
        hidden: np.ndarray | Sequence[np.ndarray],
        labels: np.ndarray | None = None,
        *,
        example_ids: Sequence[str] | None = None,
        offsets: Sequence[np.ndarray] | None = None,
        encoder_logits: Sequence[np.ndarray] | None = None,
        segments: Sequence[np.ndarray] | None = None,
    ) -> None:
        """Write shard `index` atomically (a temporary name, then a rename).

        Nothing is written unless every check passes.

        Args:
          index: the shard number.
          ids: the rows' ids (example ids; window ids for "tokens"), unique strings.
          hidden: (n, L, H) float16 (float32/float64 are converted; values must be finite). For
            "tokens": n arrays (T_i, L, H), one per window, 1 <= T_i <= max_length, converted
            and checked the same way.
          labels: (n,) labels; integers for classification, floats for regression; (n, 2)
            integer (start, end) token positions for "span", 0 <= start <= end < T_i; None for
            an unlabelled split.
          example_ids: "tokens" only (required): the n windows' question ids.
          offsets: "tokens" only (required): n integer arrays (T_i, 2), per token its (start,
            end) character offsets into the context, or (-1, -1) outside it.
          encoder_logits: required exactly when the spec's `encoder_logits` is true: for
            "tokens" n float arrays (T_i, 2) of finite (start, end) logits; for cls/mean (and
            sentence token stores) one (n, encoder_outputs) float array of the task head's
            finite outputs.
          segments: sentence token stores only (required): n integer arrays (T_i,), each
            token's sentence, 0 or 1. (A sentence token store takes no example_ids or offsets;
            its labels are per example, as in a cls/mean store.)

        Raises:
          ValueError: the store is complete, or shapes, dtypes, lengths or the row count do not
            match the plan, or a keyword is given that the store's selection does not take (the
            message gives the shard, the window id where one applies, expected and got).
          DataError: duplicate ids, NaN/inf values, or offsets or labels out of range (the
            message names the id).
        """
        if self.complete:
            raise ValueError(f"{self.path}: the store is complete; nothing to write")
        start, stop = self.shard_range(index)
        index = int(index)
        if self.spec.token_layout == "sentences":
            table = self._sentence_token_table(
                index, ids, stop - start, hidden, labels, segments, encoder_logits, example_ids, offsets
            )
        elif self.spec.selection == "tokens":
            if segments is not None:
                raise ValueError(f"shard {index}: segments go with a sentence token store, not windows")
            table = self._token_table(
                index, ids, stop - start, hidden, labels, example_ids, offsets, encoder_logits
            )
        else:
            given = [
                name
                for name, value in (
                    ("example_ids", example_ids),
                    ("offsets", offsets),
                    ("segments", segments),
                    ("encoder_logits", None if self.spec.encoder_logits else encoder_logits),
                )
                if value is not None
            ]
            if given:
                raise ValueError(
                    f"shard {index}: {', '.join(given)} only go with selection 'tokens' (encoder "
                    f"logits: or a spec with encoder_logits true); this store's selection is "
                    f"{self.spec.selection!r}"
                )
            ids = self._check_ids(index, ids, stop - start)
            self._check_hidden_array(f"shard {index}", hidden, len(ids))
            hidden16 = self._check_hidden(index, ids, hidden)
            label_array = self._check_labels(index, ids, labels)
            columns = {
                "id": pa.array(ids, type=pa.string()),
                "hidden": pa.FixedShapeTensorArray.from_numpy_ndarray(hidden16),
            }
            if label_array is not None:
                columns["label"] = pa.array(label_array, type=_LABEL_TYPES[self.spec.label_kind])
            if self.spec.encoder_logits:  # the column comes last: without it, shards are as before
                logits = self._check_sentence_logits(index, ids, encoder_logits)
                columns["encoder_logits"] = _pairs(logits, pa.float32(), logits.shape[1])
            table = pa.table(columns)
        data = _encode_parquet(table)
        atomic_write_bytes(self.path / shard_file(index), data)
        self._checksums[index] = hashlib.sha256(data).hexdigest()

    def _check_sentence_logits(self, index: int, ids: list[str], logits: Any) -> np.ndarray:
        """A cls/mean shard's encoder outputs as (n, encoder_outputs) float32, checked finite."""
        if logits is None:
            raise ValueError(f"shard {index}: the spec has encoder_logits true, but none were given")
        if not isinstance(logits, np.ndarray) or not np.issubdtype(logits.dtype, np.floating):
            raise ValueError(f"shard {index}: encoder_logits must be a float numpy array")
        shape = (len(ids), self.spec.encoder_outputs)
        if logits.shape != shape:
            raise ValueError(
                f"shard {index}: encoder_logits shape expected (rows, encoder_outputs) = {shape}, "
                f"got {logits.shape}"
            )
        with np.errstate(over="ignore"):
            out = np.ascontiguousarray(logits, dtype=np.float32)
        _require_finite(
            self.path, f"shard {index}: encoder_logits contain NaN or inf (or overflow float32)", out, ids
        )
        return out

    def _sentence_token_table(
        self,
        index: int,
        ids: Sequence[str],
        expected: int,
        hidden: Any,
        labels: Any,
        segments: Any,
        encoder_logits: Any,
        example_ids: Any,
        offsets: Any,
    ) -> pa.Table:
        """Check one shard of a sentence token store and build its table (module docstring)."""
        ids = self._check_ids(index, ids, expected)
        given = [name for name, value in (("example_ids", example_ids), ("offsets", offsets)) if value is not None]
        if given:
            raise ValueError(f"shard {index}: {', '.join(given)} go with windows of a span task, not a "
                             "sentence token store")  # fmt: skip
        lengths = self._window_lengths(index, ids, hidden)
        row_starts = np.zeros(len(ids) + 1, dtype=np.int64)
        np.cumsum(lengths, out=row_starts[1:])
        hidden16 = self._check_hidden(index, ids, hidden, row_starts)
        if segments is None:
            raise ValueError(f"shard {index}: a sentence token store needs segments, got none")
        self._check_per_window(index, ids, "segments", segments, "(T,)")
        flat = np.empty(int(row_starts[-1]), dtype=np.int8)
        for k, (row, array) in enumerate(zip(ids, segments, strict=True)):
            array = np.asarray(array)
            if array.shape != (lengths[k],):
                raise ValueError(f"shard {index}, row {row!r}: segments shape expected (T,) = ({lengths[k]},) "
                                 f"to match hidden, got {array.shape}")  # fmt: skip
            if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
                raise ValueError(f"shard {index}, row {row!r}: segments must be integers, got {array.dtype}")
            if array.size and (array.min() < 0 or array.max() > 1):
                raise DataError(self.path, f"shard {index}: segments must be 0 or 1, found "
                                f"{array.min()} to {array.max()}", key=row)  # fmt: skip
            flat[row_starts[k] : row_starts[k + 1]] = array
        logits = None
        if self.spec.encoder_logits:
            logits = self._check_sentence_logits(index, ids, encoder_logits)
        elif encoder_logits is not None:
            raise ValueError(f"shard {index}: the spec has encoder_logits false, but encoder_logits were given")
        label_array = self._check_labels(index, ids, labels)
        lists = _lists_over(row_starts)
        columns = {
            "id": pa.array(ids, type=pa.string()),
            "hidden": lists(pa.FixedShapeTensorArray.from_numpy_ndarray(hidden16)),
            "segments": lists(pa.array(flat, type=pa.int8())),
        }
        if label_array is not None:
            columns["label"] = pa.array(label_array, type=_LABEL_TYPES[self.spec.label_kind])
        if logits is not None:
            columns["encoder_logits"] = _pairs(logits, pa.float32(), logits.shape[1])
        return pa.table(columns)

    def _token_table(
        self,
        index: int,
        ids: Sequence[str],
        expected: int,
        hidden: Any,
        labels: Any,
        example_ids: Any,
        offsets: Any,
        encoder_logits: Any,
    ) -> pa.Table:
        """Check one shard of windows and build its table (the layout in the module docstring)."""
        ids = self._check_ids(index, ids, expected)
        n = len(ids)
        if example_ids is None:
            raise ValueError(f"shard {index}: a 'tokens' store needs example_ids, got none")
        example_ids = list(example_ids)
        if len(example_ids) != n:
            raise ValueError(
                f"shard {index}: expected {n} example_ids (one per window), got {len(example_ids)}"
            )
        for window, example in zip(ids, example_ids, strict=True):
            if not isinstance(example, str):
                raise ValueError(
                    f"shard {index}, window {window!r}: example_id must be a string, "
                    f"got {type(example).__name__}"
                )
        lengths = self._window_lengths(index, ids, hidden)
        row_starts = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(lengths, out=row_starts[1:])
        hidden16 = self._check_hidden(index, ids, hidden, row_starts)
        if offsets is None:
            raise ValueError(f"shard {index}: a 'tokens' store needs offsets, got none")
        flat_offsets = self._per_token(index, ids, "offsets", offsets, lengths, integer=True)
        _check_offsets(self.path, f"shard {index}: ", flat_offsets, ids, row_starts)
        logits = None
        if self.spec.encoder_logits:
            if encoder_logits is None:
                raise ValueError(
                    f"shard {index}: the spec has encoder_logits true, but none were given"
                )
            logits = self._per_token(
                index, ids, "encoder_logits", encoder_logits, lengths, integer=False
            )
            _require_finite(
                self.path,
                f"shard {index}: encoder_logits contain NaN or inf (or overflow float32)",
                logits,
                ids,
                row_starts,
            )
        elif encoder_logits is not None:
            raise ValueError(
                f"shard {index}: the spec has encoder_logits false, but encoder_logits were given"
            )
        label_array = self._check_labels(index, ids, labels, lengths)

        lists = _lists_over(row_starts)
        columns = {
            "id": pa.array(ids, type=pa.string()),
            "example_id": pa.array(example_ids, type=pa.string()),
            "hidden": lists(pa.FixedShapeTensorArray.from_numpy_ndarray(hidden16)),
            "offsets": lists(_pairs(flat_offsets, pa.int32())),
        }
        if label_array is not None:
            columns["label"] = _pairs(label_array, pa.int64())
        if logits is not None:
            columns["encoder_logits"] = lists(_pairs(logits, pa.float32()))
        return pa.table(columns)

    def _window_lengths(self, index: int, ids: list[str], hidden: Any) -> np.ndarray:
        """Each window's T, checking the arrays' types, shapes and dtypes."""
        self._check_per_window(index, ids, "hidden", hidden, "(T, L, H)")
        lengths = np.empty(len(ids), dtype=np.int64)
        for k, (window, array) in enumerate(zip(ids, hidden, strict=True)):
            self._check_hidden_array(f"shard {index}, window {window!r}", array, None)
            lengths[k] = array.shape[0]
        return lengths

    def _check_per_window(
        self, index: int, ids: list[str], name: str, arrays: Any, shape: str
    ) -> None:
        """`arrays` (a token store's `name`) is a sequence of `shape` arrays, one per window."""
        if isinstance(arrays, (str, bytes)) or not isinstance(arrays, (Sequence, np.ndarray)):
            raise ValueError(
                f"shard {index}: {name} must be a sequence of {shape} arrays, one per window, "
                f"got {type(arrays).__name__}"
            )
        if len(arrays) != len(ids):
            raise ValueError(
                f"shard {index}: expected {len(ids)} {name} arrays (one per window), "
                f"got {len(arrays)}"
            )

    def _check_hidden_array(self, where: str, array: Any, rows: int | None) -> None:
        """A numpy array of hidden states, (rows, L, H), or for `rows` None one window's
        (T, L, H) with 1 <= T <= max_length, of a dtype that converts to float16. `where`
        ("shard k" or "shard k, window 'id'") starts the message."""
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{where}: hidden must be a numpy array, got {type(array).__name__}")
        shape = (self.spec.num_hidden_states, self.spec.hidden_size)
        if rows is not None and array.shape != (rows, *shape):
            raise ValueError(
                f"{where}: hidden shape expected (rows, L, H) = {(rows, *shape)}, got {array.shape}"
            )
        if rows is None:
            if array.ndim != 3 or array.shape[1:] != shape:
                raise ValueError(
                    f"{where}: hidden shape expected (T, L, H) = (T, {shape[0]}, {shape[1]}), "
                    f"got {array.shape}"
                )
            if not 1 <= array.shape[0] <= self.spec.max_length:
                raise ValueError(
                    f"{where}: expected 1 to max_length = {self.spec.max_length} tokens, "
                    f"got {array.shape[0]}"
                )
        if array.dtype not in (np.float16, np.float32, np.float64):
            raise ValueError(
                f"{where}: hidden dtype expected float16 (or float32/float64 to convert), "
                f"got {array.dtype}"
            )

    def _check_hidden(
        self, index: int, ids: list[str], hidden: Any, row_starts: np.ndarray | None = None
    ) -> np.ndarray:
        """The hidden states (checked by `_check_hidden_array`) as float16, checked finite: one
        (n, L, H) array, or for a token store (`row_starts` given) every window's tokens in one
        (sum T, L, H) array."""
        # Converting can overflow float16 (|x| > 65504 becomes inf), so check after it; the
        # check also catches NaN/inf from an encoder run in float16.
        with np.errstate(over="ignore"):  # overflow is reported below, with the row's id
            if row_starts is None:
                hidden16 = np.ascontiguousarray(hidden, dtype=np.float16)
            else:
                shape = (self.spec.num_hidden_states, self.spec.hidden_size)
                hidden16 = np.empty((int(row_starts[-1]), *shape), dtype=np.float16)
                for k, array in enumerate(hidden):
                    hidden16[row_starts[k] : row_starts[k + 1]] = array
        _require_finite(
            self.path,
            f"shard {index}: hidden states contain NaN or inf (or overflow float16 when converted)",
            hidden16,
            ids,
            row_starts,
        )
        return hidden16

    def _per_token(
        self,
        index: int,
        ids: list[str],
        name: str,
        arrays: Any,
        lengths: np.ndarray,
        *,
        integer: bool,
    ) -> np.ndarray:
        """n per-window (T_i, 2) arrays as one (sum T, 2) int32 or float32 array."""
        self._check_per_window(index, ids, name, arrays, "(T, 2)")
        dtype = np.int32 if integer else np.float32
        flat = np.empty((int(lengths.sum()), 2), dtype=dtype)
        at = 0
        for window, array, length in zip(ids, arrays, lengths, strict=True):
            where = f"shard {index}, window {window!r}"
            array = np.asarray(array)
            if array.shape != (length, 2):
                raise ValueError(
                    f"{where}: {name} shape expected (T, 2) = ({length}, 2) to match hidden, "
                    f"got {array.shape}"
                )
            if integer:
                if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.integer):
                    raise ValueError(f"{where}: {name} must be integers, got {array.dtype}")
                if array.size and (array.min() < -_INT32_MAX or array.max() > _INT32_MAX):
                    raise DataError(
                        self.path,
                        f"shard {index}: {name} beyond int32, from {array.min()} to {array.max()}",
                        key=window,
                    )
            elif not np.issubdtype(array.dtype, np.floating):
                raise ValueError(f"{where}: {name} must be floats, got {array.dtype}")
            with np.errstate(over="ignore"):  # float64 beyond float32 is reported as inf
                flat[at : at + length] = array
            at += length
        return flat

    def _check_ids(self, index: int, ids: Sequence[str], expected: int) -> list[str]:
        ids = list(ids)
        if len(ids) != expected:
            raise ValueError(
                f"shard {index}: expected {expected} rows (rows "
                f"{self.shard_range(index)}), got {len(ids)} ids"
            )
        bad = next((i for i in ids if not isinstance(i, str)), None)
        if bad is not None:
            raise ValueError(f"shard {index}: ids must be strings, got {type(bad).__name__}")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            for i in ids:
                if i in seen:
                    raise DataError(self.path, f"shard {index}: duplicate id", key=i)
                seen.add(i)
        return ids

    def _check_labels(
        self, index: int, ids: list[str], labels: Any, lengths: np.ndarray | None = None
    ) -> np.ndarray | None:
        """The labels in their stored dtype, checked against the spec's label_kind; `lengths`,
        each window's T, bounds span labels."""
        kind = self.spec.label_kind
        if kind is None:
            if labels is not None:
                raise ValueError(
                    f"shard {index}: the spec has label_kind null, but labels were given"
                )
            return None
        if labels is None:
            raise ValueError(f"shard {index}: label_kind is {kind!r}, but no labels were given")
        labels = np.asarray(labels)
        shape = (len(ids), 2) if kind == "span" else (len(ids),)
        if labels.shape != shape:
            pairs = " (start, end)" if kind == "span" else ""
            raise ValueError(
                f"shard {index}: labels shape expected {shape}{pairs}, got {labels.shape}"
            )
        if kind == "regression":
            if not np.issubdtype(labels.dtype, np.number) or labels.dtype == np.bool_:
                raise ValueError(
                    f"shard {index}: regression labels must be numbers, got {labels.dtype}"
                )
            out = labels.astype(np.float32)
            _require_finite(self.path, f"shard {index}: label is NaN or inf", out, ids)
            return out
        if labels.dtype == np.bool_ or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"shard {index}: {kind} labels must be integers, got {labels.dtype}")
        out = labels.astype(np.int64)
        if kind == "span":
            _check_spans(self.path, f"shard {index}: ", out, lengths, ids)
        return out

    # -- finishing

    def finish(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Check every planned shard is on disk and mark the store complete.

        Records each shard's rows, sha256 (read from disk for shards an earlier run wrote),
        first and last id. On an already complete store, returns its manifest unchanged.

        Args:
          extra: JSON-serialisable facts to record under "extra" (merged with earlier ones).

        Returns:
          The manifest written.

        Raises:
          DataError: shards are missing, hold the wrong rows, or repeat an id.
          ConfigError: `extra` is not JSON-serialisable.
        """
        if self.attached:
            raise ValueError(f"{self.path}: an attached (shard-only) writer cannot finish the store")
        if self.complete:
            return read_manifest(self.path)
        try:
            json.dumps(dict(extra or {}))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"extra: must be JSON-serialisable ({exc})") from None
        missing = self.pending_shards()
        if missing:
            raise DataError(
                self.path,
                f"cannot finish: {len(missing)} of {self.num_shards} "
                f"shards not written ({_ranges(missing)})",
            )
        entries = self._shard_entries()
        manifest = read_manifest(self.path)
        manifest.update(
            status="complete",
            rows=self.total_rows,
            shards=entries,
            code_version=code_version(),
            created=_utc_now(),
            extra={**manifest.get("extra", {}), **dict(extra or {})},
        )
        atomic_write_json(self.path / MANIFEST_NAME, manifest)
        self.complete = True
        return manifest

    def _shard_entries(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        seen: dict[str, str] = {}
        for k in range(self.num_shards):
            file = self.path / shard_file(k)
            start, stop = self.shard_range(k)
            ids = _read_ids(file)
            if len(ids) != stop - start:
                raise DataError(
                    file,
                    f"expected {stop - start} rows by the plan, found "
                    f"{len(ids)}; delete the file and rerun",
                )
            _check_unique(file, ids, seen)
            sha = self._checksums.get(k) or _file_sha256(file)
            entries.append(
                {
                    "file": shard_file(k),
                    "rows": len(ids),
                    "sha256": sha,
                    "first_id": ids[0],
                    "last_id": ids[-1],
                }
            )
        return entries


def _lists_over(row_starts: np.ndarray):
    """A maker of list columns whose rows start at ``row_starts`` (int32 offsets, int64 where
    they would overflow), from the flat values of every row."""
    list_type = pa.int32() if row_starts[-1] <= _INT32_MAX else pa.int64()
    starts = pa.array(row_starts, type=list_type)
    list_array = pa.ListArray if list_type == pa.int32() else pa.LargeListArray
    return lambda values: list_array.from_arrays(starts, values)


def _pairs(values: np.ndarray, type_: pa.DataType, size: int = 2) -> pa.FixedSizeListArray:
    """An (n, size) array (pairs by default) as a fixed_size_list<type_, size> array of n rows."""
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1), type=type_), size)


def _window_of(row_starts: np.ndarray, token: int) -> int:
    """The window that flat token position `token` falls in."""
    return int(np.searchsorted(row_starts, token, side="right")) - 1


# The checks that writing and reading both make. `place` is the store's folder (writing) or the
# shard file (reading), `where` what starts the message ("shard k: " when writing, "" reading).


def _require_finite(
    place: Path,
    message: str,
    values: np.ndarray,
    ids: Sequence[str],
    row_starts: np.ndarray | None = None,
) -> None:
    """No NaN or inf in `values`, one row per id or, with `row_starts`, one row per token of
    the windows `ids`; a DataError names the id of the first bad row (or its window)."""
    finite = np.isfinite(values)
    if finite.ndim > 1:
        finite = finite.reshape(len(finite), -1).all(axis=1)
    if not finite.all():
        row = int(np.argmin(finite))
        if row_starts is not None:
            row = _window_of(row_starts, row)
        raise DataError(place, message, key=ids[row])


def _check_spans(
    place: Path, where: str, labels: np.ndarray, lengths: np.ndarray, ids: Sequence[str]
) -> None:
    """Every window's (start, end) label within 0 <= start <= end < T."""
    start, end = labels[:, 0], labels[:, 1]
    bad = (start < 0) | (start > end) | (end >= lengths)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            place,
            f"{where}label (start, end) = {tuple(int(v) for v in labels[row])} outside "
            f"0 <= start <= end < T = {lengths[row]}",
            key=ids[row],
        )


def _check_offsets(
    place: Path, where: str, offsets: np.ndarray, ids: Sequence[str], row_starts: np.ndarray
) -> None:
    """Every token's (start, end) character offsets (-1, -1) or 0 <= start <= end."""
    outside = (offsets == -1).all(axis=1)
    inside = (offsets[:, 0] >= 0) & (offsets[:, 0] <= offsets[:, 1])
    bad = ~(outside | inside)
    if bad.any():
        token = int(np.argmax(bad))
        raise DataError(
            place,
            f"{where}offsets must be (-1, -1) or 0 <= start <= end, got "
            f"{tuple(int(v) for v in offsets[token])}",
            key=ids[_window_of(row_starts, token)],
        )


def _check_unique(file: Path, ids: Sequence[str], seen: dict[str, str]) -> None:
    """No id of shard `file` in an earlier shard; `seen` maps the ids so far to their shard's
    file name, and gains this shard's."""
    for i in ids:
        if seen.setdefault(i, file.name) != file.name:
            raise DataError(file, f"duplicate id also in {seen[i]}", key=i)


def _encode_parquet(table: pa.Table) -> pa.Buffer:
    """The table as Parquet bytes, in memory so they can be hashed before the atomic write."""
    sink = pa.BufferOutputStream()
    pq.write_table(
        table,
        sink,
        compression=COMPRESSION,
        # Dictionary encoding never pays for float tensors, and min/max statistics of the
        # float16 column halve write speed (measured) while no reader filters on them.
        use_dictionary=False,
        write_statistics=[
            name for name in ("id", "example_id", "label") if name in table.column_names
        ],
        row_group_size=max(table.num_rows, 1),
    )
    return sink.getvalue()


def _read_ids(file: Path) -> list[str]:
    try:
        return pq.read_table(file, columns=["id"]).column("id").to_pylist()
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise DataError(file, f"cannot read the id column: {exc}") from None


def _file_sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(2**20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] -> "0-2, 5", so a message stays short for many missing shards."""
    runs: list[list[int]] = []
    for k in indices:
        if runs and k == runs[-1][-1] + 1:
            runs[-1].append(k)
        else:
            runs.append([k])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


# --------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class EmbeddingSplit:
    """A whole store in memory.

    Attributes:
      ids: the example ids, in the split's order.
      hidden: (N, L, H) float16.
      labels: (N,) int64 or float32, or None for an unlabelled split.
      manifest: the store's manifest.
      path: the store's folder.
      encoder_logits: (N, C) float32, the fine-tuned encoder's own task head outputs (C
        logits, or 1 regression prediction), or None when the store has none.
    """

    ids: list[str]
    hidden: torch.Tensor
    labels: torch.Tensor | None
    manifest: dict[str, Any] = field(repr=False)
    path: Path
    encoder_logits: np.ndarray | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class TokenSplit:
    """A token store (selection "tokens") in memory: every window's tokens, flat, no padding.

    Window i's tokens are rows ``row_starts[i]:row_starts[i + 1]`` of `hidden`, `offsets` and
    `encoder_logits`; `window` slices them out.

    Attributes:
      ids: the window ids, in the store's order.
      example_ids: each window's question id (repeated across a question's windows).
      hidden: (sum T, L, H) float16, every window's tokens in order.
      row_starts: (n + 1,) int64; window i is ``hidden[row_starts[i]:row_starts[i + 1]]``.
      offsets: (sum T, 2) int32, per token its (start, end) character offsets into the
        context, or (-1, -1) outside it.
      labels: (n, 2) int64 target (start, end) token positions within each window, or None for
        an unlabelled split.
      encoder_logits: (sum T, 2) float32 (start, end) logits of the fine-tuned encoder, or None
        when the store has none.
      manifest: the store's manifest.
      path: the store's folder.
      segments: a sentence token store (token_layout "sentences"): (sum T,) int8, each token's
        sentence (0 or 1); None for windows. There rows are examples: `example_ids` are the
        ids, `offsets` is None, `labels` (n,) sentence labels and `encoder_logits` (n, C).
    """

    ids: list[str]
    example_ids: list[str]
    hidden: torch.Tensor
    row_starts: np.ndarray
    offsets: np.ndarray | None
    labels: torch.Tensor | None
    encoder_logits: np.ndarray | None
    manifest: dict[str, Any] = field(repr=False)
    path: Path
    segments: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        """(n,) int64: each window's number of tokens T."""
        return np.diff(self.row_starts)

    def window(self, i: int) -> dict[str, Any]:
        """Window `i` (negative counts from the end): {"id", "example_id", "hidden" (T, L, H)
        (a view), "offsets" (T, 2), "label" (2,) or None, "encoder_logits" (T, 2) or None};
        for a sentence token store "segments" (T,) instead of "offsets", the example's label
        and its (C,) encoder logits."""
        k = range(len(self.ids))[i]  # IndexError out of range, like a list
        a, b = int(self.row_starts[k]), int(self.row_starts[k + 1])
        logits = self.encoder_logits
        if self.segments is not None:
            return {
                "id": self.ids[k],
                "example_id": self.example_ids[k],
                "hidden": self.hidden[a:b],
                "segments": self.segments[a:b],
                "label": None if self.labels is None else self.labels[k],
                "encoder_logits": None if logits is None else logits[k],
            }
        return {
            "id": self.ids[k],
            "example_id": self.example_ids[k],
            "hidden": self.hidden[a:b],
            "offsets": self.offsets[a:b],
            "label": None if self.labels is None else self.labels[k],
            "encoder_logits": None if logits is None else logits[a:b],
        }


@dataclass(frozen=True)
class _Shard:
    ids: list[str]
    hidden: np.ndarray
    labels: np.ndarray | None
    encoder_logits: np.ndarray | None = None


@dataclass(frozen=True)
class _TokenShard:
    """One shard of a token store, as numpy arrays (the fields of `TokenSplit`)."""

    ids: list[str]
    example_ids: list[str]
    hidden: np.ndarray
    row_starts: np.ndarray
    offsets: np.ndarray | None
    labels: np.ndarray | None
    encoder_logits: np.ndarray | None
    segments: np.ndarray | None = None


def _sentences(manifest: Mapping[str, Any]) -> bool:
    """A sentence token store (one row per example, with segments)."""
    return manifest.get("token_layout") == "sentences"


def _read_shard(
    file: Path,
    manifest: Mapping[str, Any],
    expected_rows: int,
    data: pa.Buffer | bytes | None = None,
) -> _Shard | _TokenShard:
    """Read one shard and check it against the manifest: rows, column types, no nulls; for a
    token store also each row's lengths, labels and offsets (a `_TokenShard`)."""
    if data is None and not file.is_file():
        raise DataError(file, _MISSING_SHARD)
    try:
        table = pq.read_table(pa.BufferReader(data) if data is not None else file)
    except (OSError, pa.ArrowException) as exc:
        raise DataError(
            file, f"not a readable Parquet file (truncated or corrupt?): {exc}"
        ) from None
    if table.num_rows != expected_rows:
        raise DataError(file, f"expected {expected_rows} rows, found {table.num_rows}")
    _check_schema(file, table.schema, manifest)
    for name in table.column_names:
        if table.column(name).null_count:
            raise DataError(file, f"column {name!r} has null values")
    if manifest["selection"] == "tokens":
        return _token_shard(file, table, manifest)
    hidden = table.column("hidden").combine_chunks().to_numpy_ndarray()
    labels = None
    if "label" in table.column_names:
        labels = table.column("label").to_numpy()
    logits = None
    if "encoder_logits" in table.column_names:
        column = table.column("encoder_logits").combine_chunks()
        if _has_nested_nulls(column):
            raise DataError(file, "column 'encoder_logits' has null values")
        logits = column.flatten().to_numpy().reshape(len(hidden), -1)
    return _Shard(table.column("id").to_pylist(), hidden, labels, logits)


def _read_entry(
    folder: Path, manifest: Mapping[str, Any], entry: Mapping[str, Any], *, again: bool = False
) -> _Shard | _TokenShard:
    """Read the shard of one manifest entry and check what was read: the Parquet structure
    (`_read_shard`), the file's sha256 against the manifest's, and finite values. Every reader
    of a complete store goes through here, so a flipped byte or a NaN never reaches a head.

    The checks cost about half as much again as the read itself (benchmarks/checked_reads.py),
    so a shard already checked by this process is not checked again while its file is
    unchanged (same inode, size and modification time): a head streaming a token store checks
    each shard in its first epoch only. ``again`` checks regardless (`verify`)."""
    file = folder / entry["file"]
    try:
        info = os.stat(file)
    except FileNotFoundError:
        raise DataError(file, _MISSING_SHARD) from None
    except OSError as exc:
        raise DataError(file, f"cannot read: {exc.strerror or exc}") from None
    key = (str(file.resolve()), info.st_ino, info.st_size, info.st_mtime_ns, entry["sha256"])
    shard = _read_shard(file, manifest, entry["rows"])
    if key in _CHECKED and not again:
        return shard
    try:
        sha = _file_sha256(file)
    except OSError as exc:
        raise DataError(file, f"cannot read: {exc.strerror or exc}") from None
    if sha != entry["sha256"]:
        raise DataError(
            file,
            f"sha256 checksum mismatch: manifest {entry['sha256']}, file {sha}; the file was "
            "changed or damaged ('bertvision store verify' checks a whole store): re-embed it",
        )
    _check_finite(file, shard)
    _CHECKED.add(key)
    return shard


# (file, inode, size, mtime_ns, manifest sha256) of the shards this process has checked.
_CHECKED: set[tuple] = set()


def _check_finite(file: Path, shard: _Shard | _TokenShard) -> None:
    """Finite hidden states (and encoder logits), naming the first example (or window) with a
    bad value."""
    if isinstance(shard, _TokenShard):
        per_row = shard.segments is not None  # sentence token store: encoder logits per example
        for name, values in (
            ("hidden states", shard.hidden),
            ("encoder_logits", shard.encoder_logits),
        ):
            if values is not None:
                starts = None if per_row and name == "encoder_logits" else shard.row_starts
                _require_finite(file, f"{name} contain NaN or inf", values, shard.ids, starts)
    else:
        _require_finite(file, "hidden states contain NaN or inf", shard.hidden, shard.ids)
        if shard.encoder_logits is not None:
            _require_finite(file, "encoder_logits contain NaN or inf", shard.encoder_logits, shard.ids)


def _check_schema(file: Path, schema: pa.Schema, manifest: Mapping[str, Any]) -> None:
    _check_string_column(file, schema, "id")
    _has_column(file, schema, "hidden")
    htype = schema.field("hidden").type
    tokens = manifest["selection"] == "tokens"
    if tokens:
        if not _is_list(htype):
            raise DataError(
                file,
                f"'hidden' should be a list of {TENSOR_EXTENSION} (one per token), found {htype}",
            )
        htype = htype.value_type
    shape = [manifest["num_hidden_states"], manifest["hidden_size"]]
    if getattr(htype, "extension_name", None) != TENSOR_EXTENSION:
        raise DataError(file, f"'hidden' should be {TENSOR_EXTENSION}, found {htype}")
    if list(htype.shape) != shape or htype.permutation not in (None, [0, 1]):
        raise DataError(
            file,
            f"'hidden' shape expected [L, H] = {shape} as in the manifest, "
            f"found {list(htype.shape)}",
        )
    if not pa.types.is_float16(htype.value_type):
        raise DataError(file, f"'hidden' dtype expected float16, found {htype.value_type}")
    kind = manifest["label_kind"]
    setting = "label_kind is null" if kind is None else f"label_kind is {kind!r}"
    if _has_column(file, schema, "label", kind is not None, setting):
        ltype = _LABEL_TYPES[kind]
        _check_type(file, schema, "label", f"{ltype} for {kind}", lambda t: t == ltype)
    if tokens and _sentences(manifest):
        _has_column(file, schema, "segments")
        _check_type(file, schema, "segments", _SEGMENTS_TYPE,
                    lambda t: _is_list(t) and t.value_type == pa.int8())  # fmt: skip
    if tokens and not _sentences(manifest):
        _check_token_schema(file, schema, manifest)
    else:
        wanted = manifest.get("encoder_logits", False)
        if _has_column(file, schema, "encoder_logits", wanted, f"encoder_logits is {'true' if wanted else 'false'}"):
            width = manifest.get("encoder_outputs")
            expected = pa.list_(pa.float32(), width) if width else "fixed_size_list<float, C>"
            _check_type(file, schema, "encoder_logits", expected, lambda t: t == expected)


def _check_token_schema(file: Path, schema: pa.Schema, manifest: Mapping[str, Any]) -> None:
    """The columns only a token store has: example_id, offsets, perhaps encoder_logits."""
    _check_string_column(file, schema, "example_id")
    _has_column(file, schema, "offsets")
    _check_type(file, schema, "offsets", _OFFSETS_TYPE, lambda t: _is_pairs_list(t, pa.int32()))
    wanted = manifest.get("encoder_logits", False)
    setting = f"encoder_logits is {'true' if wanted else 'false'}"
    if _has_column(file, schema, "encoder_logits", wanted, setting):
        _check_type(
            file, schema, "encoder_logits", _LOGITS_TYPE, lambda t: _is_pairs_list(t, pa.float32())
        )


def _check_string_column(file: Path, schema: pa.Schema, name: str) -> None:
    if name not in schema.names or not pa.types.is_string(schema.field(name).type):
        raise DataError(file, f"expected a string column {name!r}")


def _has_column(
    file: Path, schema: pa.Schema, name: str, wanted: bool = True, setting: str | None = None
) -> bool:
    """Whether column `name` is there; refused when missing but `wanted`, or there but not
    wanted. `setting` is the manifest field that decides, as the message gives it."""
    present = name in schema.names
    if wanted and not present:
        but = f", but the manifest's {setting}" if setting else ""
        raise DataError(file, f"no {name!r} column{but}")
    if present and not wanted:
        article = "an" if name[0] in "aeiou" else "a"
        raise DataError(file, f"has {article} {name!r} column, but the manifest's {setting}")
    return present


def _check_type(
    file: Path, schema: pa.Schema, name: str, expected: Any, ok: Callable[[pa.DataType], bool]
) -> None:
    """Column `name` has a type that `ok` accepts (`expected`, as the message gives it)."""
    found = schema.field(name).type
    if not ok(found):
        raise DataError(file, f"{name!r} expected {expected}, found {found}")


def _is_list(type_: pa.DataType) -> bool:
    return pa.types.is_list(type_) or pa.types.is_large_list(type_)


def _is_pairs_list(type_: pa.DataType, value_type: pa.DataType) -> bool:
    """list<fixed_size_list<value_type, 2>> (or with large list offsets)."""
    if not _is_list(type_) or not pa.types.is_fixed_size_list(type_.value_type):
        return False
    return type_.value_type.list_size == 2 and type_.value_type.value_type == value_type


def _has_nested_nulls(array: pa.Array) -> bool:
    """Nulls anywhere in a (nested) array: in its lists, their items, or the values."""
    while True:
        if array.null_count:
            return True
        if isinstance(array, pa.ExtensionArray):
            array = array.storage
        elif isinstance(array, (pa.ListArray, pa.LargeListArray, pa.FixedSizeListArray)):
            array = array.flatten()
        else:
            return False


def _row_starts(array: pa.Array) -> np.ndarray:
    """A list array's offsets as (n + 1,) int64 from 0 (the array may be a slice)."""
    offsets = array.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0]


def _token_shard(file: Path, table: pa.Table, manifest: Mapping[str, Any]) -> _TokenShard:
    """The arrays of one token shard, checked row by row (the window id names a bad row)."""
    if _sentences(manifest):
        return _sentence_token_shard(file, table, manifest)
    ids = table.column("id").to_pylist()
    columns = {}
    for name in ("hidden", "offsets", "label", "encoder_logits"):
        if name in table.column_names:
            columns[name] = table.column(name).combine_chunks()
            if _has_nested_nulls(columns[name]):
                raise DataError(file, f"column {name!r} has null values")
    row_starts = _row_starts(columns["hidden"])
    lengths = np.diff(row_starts)
    max_length = manifest["max_length"]
    bad = (lengths < 1) | (lengths > max_length)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(
            file,
            f"a window of {lengths[row]} tokens; expected 1 to max_length = {max_length}",
            key=ids[row],
        )
    for name in ("offsets", "encoder_logits"):
        if name in columns:
            other = np.diff(_row_starts(columns[name]))
            if not np.array_equal(other, lengths):
                row = int(np.argmax(other != lengths))
                raise DataError(
                    file,
                    f"{name!r} has {other[row]} tokens, 'hidden' has {lengths[row]}",
                    key=ids[row],
                )
    offsets = columns["offsets"].flatten().flatten().to_numpy().reshape(-1, 2)
    _check_offsets(file, "", offsets, ids, row_starts)
    labels = None
    if "label" in columns:
        labels = columns["label"].flatten().to_numpy().reshape(-1, 2)
        _check_spans(file, "", labels, lengths, ids)
    logits = None
    if "encoder_logits" in columns:
        logits = columns["encoder_logits"].flatten().flatten().to_numpy().reshape(-1, 2)
    return _TokenShard(
        ids=ids,
        example_ids=table.column("example_id").to_pylist(),
        hidden=columns["hidden"].flatten().to_numpy_ndarray(),
        row_starts=row_starts,
        offsets=offsets,
        labels=labels,
        encoder_logits=logits,
    )


def _sentence_token_shard(file: Path, table: pa.Table, manifest: Mapping[str, Any]) -> _TokenShard:
    """`_token_shard` for a sentence token store: hidden and segments per example, checked
    row by row (the example id names a bad row)."""
    ids = table.column("id").to_pylist()
    hidden, segments = (table.column(name).combine_chunks() for name in ("hidden", "segments"))
    for name, column in (("hidden", hidden), ("segments", segments)):
        if _has_nested_nulls(column):
            raise DataError(file, f"column {name!r} has null values")
    row_starts = _row_starts(hidden)
    lengths = np.diff(row_starts)
    max_length = manifest["max_length"]
    bad = (lengths < 1) | (lengths > max_length)
    if bad.any():
        row = int(np.argmax(bad))
        raise DataError(file, f"an example of {lengths[row]} tokens; expected 1 to max_length = {max_length}",
                        key=ids[row])  # fmt: skip
    other = np.diff(_row_starts(segments))
    if not np.array_equal(other, lengths):
        row = int(np.argmax(other != lengths))
        raise DataError(file, f"'segments' has {other[row]} tokens, 'hidden' has {lengths[row]}", key=ids[row])
    flat = segments.flatten().to_numpy()
    outside = (flat < 0) | (flat > 1)
    if outside.any():
        row = int(np.searchsorted(row_starts, int(np.argmax(outside)), side="right") - 1)
        raise DataError(file, "segments must be 0 or 1", key=ids[row])
    labels = table.column("label").to_numpy() if "label" in table.column_names else None
    logits = None
    if "encoder_logits" in table.column_names:
        column = table.column("encoder_logits").combine_chunks()
        if _has_nested_nulls(column):
            raise DataError(file, "column 'encoder_logits' has null values")
        logits = column.flatten().to_numpy().reshape(len(ids), -1)
    return _TokenShard(ids=ids, example_ids=ids, hidden=hidden.flatten().to_numpy_ndarray(), row_starts=row_starts,
                       offsets=None, labels=labels, encoder_logits=logits, segments=flat)  # fmt: skip


def load_split(path: str | os.PathLike, *, verify: bool = False) -> EmbeddingSplit | TokenSplit:
    """Read a whole complete store into memory.

    Every shard read is checked against the manifest (sha256, rows, schema) and for finite
    values, here and in `iter_batches` / `iter_token_shards`.

    Args:
      path: the store's folder.
      verify: also run `verify` first (first/last ids, ids unique across shards; reads every
        shard twice).

    Returns:
      An `EmbeddingSplit`, or a `TokenSplit` for a token store (selection "tokens").

    Raises:
      DataError: the store is incomplete, or a shard is missing, unreadable or off the
        manifest.
    """
    import torch

    folder = Path(path)
    manifest = _complete_manifest(folder)
    if verify:
        _verify(folder)
    if manifest["selection"] == "tokens":
        return _load_tokens(folder, manifest)
    rows, shape = manifest["rows"], (manifest["num_hidden_states"], manifest["hidden_size"])
    # Fill preallocated arrays shard by shard: one copy, peak memory the result plus one shard.
    hidden = np.empty((rows, *shape), dtype=np.float16)
    kind = manifest["label_kind"]
    labels = np.empty(rows, dtype=_LABEL_DTYPES[kind]) if kind else None
    width = manifest.get("encoder_outputs") if manifest.get("encoder_logits") else None
    logits = np.empty((rows, width), dtype=np.float32) if width else None
    ids: list[str] = []
    for entry in manifest["shards"]:
        shard = _read_entry(folder, manifest, entry)
        start = len(ids)
        hidden[start : start + entry["rows"]] = shard.hidden
        if labels is not None:
            labels[start : start + entry["rows"]] = shard.labels
        if logits is not None:
            logits[start : start + entry["rows"]] = shard.encoder_logits
        ids.extend(shard.ids)
    return EmbeddingSplit(
        ids=ids,
        hidden=torch.from_numpy(hidden),
        labels=None if labels is None else torch.from_numpy(labels),
        manifest=manifest,
        path=folder,
        encoder_logits=logits,
    )


def _load_tokens(folder: Path, manifest: dict[str, Any]) -> TokenSplit:
    """`load_split` for a token store: learn each shard's token count from its small 'offsets'
    column, allocate the result once, then fill it shard by shard (peak memory: the result plus
    one shard)."""
    entries = manifest["shards"]
    counts = [_token_count(folder / e["file"], manifest, e["rows"]) for e in entries]
    rows, total = manifest["rows"], sum(counts)
    shape = (manifest["num_hidden_states"], manifest["hidden_size"])
    hidden = np.empty((total, *shape), dtype=np.float16)
    sentences = _sentences(manifest)
    offsets = None if sentences else np.empty((total, 2), dtype=np.int32)
    segments = np.empty(total, dtype=np.int8) if sentences else None
    kind = manifest["label_kind"]
    logits = None
    if manifest.get("encoder_logits"):
        logits = np.empty((rows, manifest["encoder_outputs"]) if sentences else (total, 2), dtype=np.float32)
    labels = None
    if kind:
        labels = np.empty((rows, 2) if kind == "span" else rows, dtype=_LABEL_DTYPES[kind])
    row_starts = np.zeros(rows + 1, dtype=np.int64)
    ids: list[str] = []
    example_ids: list[str] = []
    token = 0
    for entry, count in zip(entries, counts, strict=True):
        file = folder / entry["file"]
        shard = _read_entry(folder, manifest, entry)
        assert isinstance(shard, _TokenShard)
        if shard.row_starts[-1] != count:
            raise DataError(file, "changed while being read; read the store again")
        row, stop = len(ids), token + count
        hidden[token:stop] = shard.hidden
        if offsets is not None:
            offsets[token:stop] = shard.offsets
        if segments is not None:
            segments[token:stop] = shard.segments
        if logits is not None:
            if sentences:
                logits[row : row + len(shard.ids)] = shard.encoder_logits
            else:
                logits[token:stop] = shard.encoder_logits
        if labels is not None:
            labels[row : row + len(shard.ids)] = shard.labels
        row_starts[row + 1 : row + len(shard.ids) + 1] = token + shard.row_starts[1:]
        ids.extend(shard.ids)
        example_ids.extend(shard.example_ids)
        token = stop
    return _token_split(
        _TokenShard(ids, example_ids, hidden, row_starts, offsets, labels, logits, segments),
        manifest,
        folder,
    )


def _token_count(file: Path, manifest: Mapping[str, Any], rows: int) -> int:
    """The number of tokens in a token shard, from its small 'offsets' (sentence token stores:
    'segments') column alone."""
    name = "segments" if _sentences(manifest) else "offsets"
    try:
        column = pq.read_table(file, columns=[name]).column(name)
        return sum(len(chunk.flatten()) for chunk in column.chunks)
    except (OSError, pa.ArrowException, KeyError):
        # Missing, unreadable or malformed: the full read says which, naming the file.
        shard = _read_shard(file, manifest, rows)
        assert isinstance(shard, _TokenShard)
        return int(shard.row_starts[-1])


def _writable(a: np.ndarray) -> np.ndarray:
    # Arrow's buffers are read-only, and torch warns on (and must not write to) those.
    return a if a.flags.writeable else a.copy()


def _token_split(shard: _TokenShard, manifest: dict[str, Any], folder: Path) -> TokenSplit:
    import torch

    return TokenSplit(
        ids=shard.ids,
        example_ids=shard.example_ids,
        hidden=torch.from_numpy(_writable(shard.hidden)),
        row_starts=shard.row_starts,
        offsets=None if shard.offsets is None else _writable(shard.offsets),
        labels=None if shard.labels is None else torch.from_numpy(_writable(shard.labels)),
        encoder_logits=None if shard.encoder_logits is None else _writable(shard.encoder_logits),
        manifest=manifest,
        path=folder,
        segments=None if shard.segments is None else _writable(shard.segments),
    )


def iter_token_shards(
    path: str | os.PathLike, *, shuffle: bool = False, seed: int = 0,
    part: tuple[int, int] | None = None,
) -> Iterator[TokenSplit]:  # fmt: skip
    """Stream a complete token store shard by shard, holding one shard in memory at a time.

    Each item is a `TokenSplit` of one shard's windows (its `row_starts` count from 0 within
    the shard). With `shuffle`, shards come in a random order and windows are shuffled within
    each shard (a window's tokens stay together and in order), reproducibly for a given `seed`.

    Args:
      path: the store's folder.
      shuffle: shuffle as above.
      seed: the shuffle's seed.
      part: ``(k, n)``: only every ``n``-th shard of that order, from the ``k``-th (one
        training rank's share; the other shards are not read).

    Raises:
      ConfigError: (when called) the store is not a token store; use `iter_batches`.
      DataError: (when called) the store is incomplete; (while iterating) a shard is missing,
        unreadable or off the manifest.
    """
    folder = Path(path)
    manifest = _complete_manifest(folder)
    if manifest["selection"] != "tokens":
        raise ConfigError(
            f"{folder}: selection {manifest['selection']!r} stores one vector per layer and "
            "example; stream it with iter_batches (iter_token_shards reads token stores)"
        )

    def shards() -> Iterator[TokenSplit]:
        rng = np.random.default_rng(seed)
        for shard in _read_in_order(folder, manifest, rng, shuffle, part):
            assert isinstance(shard, _TokenShard)
            if shuffle:
                shard = _permute_windows(shard, rng.permutation(len(shard.ids)))
            yield _token_split(shard, manifest, folder)

    return shards()


def _read_in_order(
    folder: Path, manifest: Mapping[str, Any], rng: np.random.Generator, shuffle: bool,
    part: tuple[int, int] | None = None,
) -> Iterator[_Shard | _TokenShard]:  # fmt: skip
    """The store's shards, read and checked one at a time; in a random order with `shuffle`;
    with ``part = (k, n)`` every ``n``-th of that order from the ``k``-th only."""
    entries = manifest["shards"]
    order = rng.permutation(len(entries)) if shuffle else np.arange(len(entries))
    if part is not None:
        k, n = part
        if n < 1 or not 0 <= k < n:
            raise ConfigError(f"part {k} of {n}: not a valid share of a store's shards")
        order = order[k::n]
    for k in order:
        yield _read_entry(folder, manifest, entries[int(k)])


def _permute_windows(shard: _TokenShard, perm: np.ndarray) -> _TokenShard:
    """The shard with its windows in the order `perm`, each window's tokens kept together."""
    lengths = np.diff(shard.row_starts)[perm]
    row_starts = np.zeros(len(perm) + 1, dtype=np.int64)
    np.cumsum(lengths, out=row_starts[1:])
    # Token j of the new order comes from old position j - new start + old start of its window.
    shift = np.repeat(shard.row_starts[:-1][perm] - row_starts[:-1], lengths)
    tokens = np.arange(int(row_starts[-1]), dtype=np.int64) + shift
    per_row = shard.segments is not None  # sentence token store: encoder logits per example
    logits = shard.encoder_logits
    return _TokenShard(
        ids=[shard.ids[i] for i in perm],
        example_ids=[shard.example_ids[i] for i in perm],
        hidden=shard.hidden[tokens],
        row_starts=row_starts,
        offsets=None if shard.offsets is None else shard.offsets[tokens],
        labels=None if shard.labels is None else shard.labels[perm],
        encoder_logits=None if logits is None else logits[perm] if per_row else logits[tokens],
        segments=None if shard.segments is None else shard.segments[tokens],
    )


def iter_batches(
    path: str | os.PathLike,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> Iterator[tuple[list[str], torch.Tensor, torch.Tensor | None]]:
    """Stream a complete store in batches, holding one shard in memory at a time.

    Every batch has `batch_size` rows except perhaps the last (batches run across shard
    boundaries). With `shuffle`, shards come in a random order and rows are shuffled within
    each shard: not a global shuffle, but enough for training heads, at the memory of one shard.

    Args:
      path: the store's folder.
      batch_size: rows per batch.
      shuffle: shuffle as above, reproducibly for a given `seed`.
      seed: the shuffle's seed.
      drop_last: leave out a last, short batch.

    Yields:
      (ids, hidden (b, L, H) float16, labels (b,) or None).

    Raises:
      ConfigError: a bad batch_size, or a token store (selection "tokens", whose rows have no
        common shape; stream it with `iter_token_shards`).
    """
    if not _is_positive_int(batch_size):
        raise ConfigError(f"batch_size: expected a positive integer, got {batch_size!r}")
    folder = Path(path)
    manifest = _complete_manifest(folder)
    if manifest["selection"] == "tokens":
        raise ConfigError(
            f"{folder}: a token store (selection 'tokens') has windows of different lengths; "
            "stream it shard by shard with iter_token_shards"
        )
    rng = np.random.default_rng(seed)

    def shards() -> Iterator[_Shard]:
        for shard in _read_in_order(folder, manifest, rng, shuffle):
            assert isinstance(shard, _Shard)
            if shuffle:
                perm = rng.permutation(len(shard.ids))
                labels = None if shard.labels is None else shard.labels[perm]
                shard = _Shard([shard.ids[i] for i in perm], shard.hidden[perm], labels)
            yield shard

    for batch in _rebatch(shards(), batch_size, drop_last):
        yield _to_torch(batch)


def _rebatch(shards: Iterator[_Shard], batch_size: int, drop_last: bool) -> Iterator[_Shard]:
    """Cut a stream of shards into batches of exactly `batch_size` rows (the last may be short)."""
    held: list[_Shard] = []  # pieces of the next batch
    count = 0
    for shard in shards:
        n, start = len(shard.ids), 0
        if count:
            take = min(batch_size - count, n)
            held.append(_slice(shard, 0, take))
            count, start = count + take, take
            if count == batch_size:
                yield _join(held)
                held, count = [], 0
        while n - start >= batch_size:
            yield _slice(shard, start, start + batch_size)
            start += batch_size
        if start < n:
            held.append(_slice(shard, start, n))
            count += n - start
    if count and not drop_last:
        yield _join(held)


def _slice(shard: _Shard, start: int, stop: int) -> _Shard:
    labels = None if shard.labels is None else shard.labels[start:stop]
    return _Shard(shard.ids[start:stop], shard.hidden[start:stop], labels)


def _join(pieces: list[_Shard]) -> _Shard:
    if len(pieces) == 1:
        return pieces[0]
    labels = None
    if pieces[0].labels is not None:
        labels = np.concatenate([p.labels for p in pieces])
    return _Shard(
        [i for p in pieces for i in p.ids], np.concatenate([p.hidden for p in pieces]), labels
    )


def _to_torch(batch: _Shard) -> tuple[list[str], torch.Tensor, torch.Tensor | None]:
    import torch

    labels = None if batch.labels is None else torch.from_numpy(_writable(batch.labels))
    return batch.ids, torch.from_numpy(_writable(batch.hidden)), labels


# --------------------------------------------------------------------------- checking


def verify(path: str | os.PathLike) -> dict[str, Any]:
    """Check a store end to end, stopping at the first problem. (Every read of a store checks
    each shard's sha256 and finite values too; this adds the ids across shards.)

    Checks the manifest is complete and consistent with the plan; every shard exists, is
    readable Parquet, matches its sha256, holds the planned rows with the manifest's first and
    last id, has `hidden` as a float16 fixed-shape tensor [L, H] with finite values, and a
    `label` column exactly when the manifest has a label_kind; ids are unique across shards.
    For a token store, also: the column types of the layout (module docstring), an
    `encoder_logits` column exactly when the manifest says so, every row's lists of one length
    T (1 <= T <= max_length), offsets (-1, -1) or 0 <= start <= end, labels within
    0 <= start <= end < T, and finite encoder logits.

    Returns:
      {"rows", "shards", "bytes", "bytes_per_row"}; a token store adds "tokens" (in all
      windows) and "bytes_per_token" (rows are windows there).

    Raises:
      DataError: naming the shard file (or manifest.json) and the problem.
    """
    return _verify(path)


def _verify(path: str | os.PathLike) -> dict[str, Any]:
    # A second name, because load_split's `verify` argument hides this function there.
    folder = Path(path)
    manifest = _complete_manifest(folder)
    seen: dict[str, str] = {}
    total_bytes = tokens = 0
    for entry in manifest["shards"]:
        file = folder / entry["file"]
        shard = _read_entry(folder, manifest, entry, again=True)
        total_bytes += file.stat().st_size
        if (shard.ids[0], shard.ids[-1]) != (entry["first_id"], entry["last_id"]):
            raise DataError(
                file,
                f"first/last id {shard.ids[0]!r}/{shard.ids[-1]!r} differ "
                f"from the manifest's {entry['first_id']!r}/"
                f"{entry['last_id']!r}",
            )
        _check_unique(file, shard.ids, seen)
        if isinstance(shard, _TokenShard):
            tokens += int(shard.row_starts[-1])
    rows = manifest["rows"]
    report = {
        "rows": rows,
        "shards": len(manifest["shards"]),
        "bytes": total_bytes,
        "bytes_per_row": total_bytes / rows if rows else 0.0,
    }
    if manifest["selection"] == "tokens":
        report["tokens"] = tokens
        report["bytes_per_token"] = total_bytes / tokens if tokens else 0.0
    return report


def check_compatible(
    store: str | os.PathLike | EmbeddingSplit | TokenSplit | Mapping[str, Any],
    *,
    num_hidden_states: int | None = None,
    hidden_size: int | None = None,
    encoder: str | Mapping[str, Any] | Any | None = None,
    checkpoint: Any = ...,
) -> None:
    """Check a store fits a head: its shape [L, H], the encoder and the checkpoint that made it.

    Args:
      store: the store's folder, a loaded `EmbeddingSplit` or `TokenSplit`, or a manifest dict.
      num_hidden_states: the L the head expects, or None to skip.
      hidden_size: the H the head expects, or None to skip.
      encoder: the expected encoder: a name, a {name, revision} mapping, or an object with
        `name` and `revision` (an `EncoderInfo`); a revision of None is not compared.
      checkpoint: the checkpoint label the head (or the train split) was made from
        ("pretrained" or a checkpoint folder); left out, not compared.

    Raises:
      ConfigError: naming the store, the expected and the found values.
    """
    manifest, where = _manifest_and_place(store)
    problems = []
    for name, expected in (("num_hidden_states", num_hidden_states), ("hidden_size", hidden_size)):
        if expected is not None and manifest[name] != expected:
            problems.append(f"{name}: expected {expected}, found {manifest[name]}")
    if encoder is not None:
        name, revision = _encoder_pair(encoder)
        found = manifest["encoder"]
        if found["name"] != name or (revision is not None and found["revision"] != revision):
            want = name if revision is None else f"{name}@{revision}"
            problems.append(f"encoder: expected {want}, found {found['name']}@{found['revision']}")
    if checkpoint is not ... and manifest.get("checkpoint") != checkpoint:
        problems.append(f"made from checkpoint {manifest.get('checkpoint')!r}, but the head is trained on {checkpoint!r}")
    if problems:
        raise ConfigError(f"store {where} does not fit: {'; '.join(problems)}")


def _manifest_and_place(store: Any) -> tuple[Mapping[str, Any], str]:
    if isinstance(store, (EmbeddingSplit, TokenSplit)):
        return store.manifest, str(store.path)
    if isinstance(store, Mapping):
        return store, f"for {store.get('task')}/{store.get('split')}"
    return read_manifest(store), str(Path(store))


def _encoder_pair(encoder: Any) -> tuple[str, str | None]:
    if isinstance(encoder, str):
        return encoder, None
    if isinstance(encoder, Mapping):
        return encoder["name"], encoder.get("revision")
    return encoder.name, getattr(encoder, "revision", None)


def read_example(path: str | os.PathLike, example_id: str) -> dict[str, Any] | None:
    """One example (or window) of a complete store, or None when the store has no such id:
    {"id", "hidden" ((L, H) for cls/mean stores, (T, L, H) float16 for token stores),
    "label", "segments" (sentence token stores, else None)}. Only the shard holding it is read
    (and checked, as every read is)."""
    folder = Path(path)
    manifest = _complete_manifest(folder)
    for entry in manifest["shards"]:
        ids = _read_ids(folder / entry["file"])
        if example_id not in ids:
            continue
        shard = _read_entry(folder, manifest, entry)
        k = ids.index(example_id)
        label = None if shard.labels is None else shard.labels[k]
        if isinstance(shard, _TokenShard):
            a, b = int(shard.row_starts[k]), int(shard.row_starts[k + 1])
            segments = None if shard.segments is None else shard.segments[a:b]
            return {"id": example_id, "hidden": shard.hidden[a:b], "label": label, "segments": segments}
        return {"id": example_id, "hidden": shard.hidden[k], "label": label, "segments": None}
    return None


def first_ids(path: str | os.PathLike, n: int) -> list[str]:
    """The first ``n`` ids of a complete store, in order (from its first shards' id columns)."""
    folder = Path(path)
    out: list[str] = []
    for entry in _complete_manifest(folder)["shards"]:
        out.extend(_read_ids(folder / entry["file"]))
        if len(out) >= n:
            break
    return out[:n]
