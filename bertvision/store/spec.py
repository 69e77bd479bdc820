"""What a store holds (`StoreSpec`) and how its rows are cut into shards."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from bertvision.errors import ConfigError

SELECTIONS = ("cls", "mean", "tokens")
LABEL_KINDS = ("classification", "regression", "span")
DTYPES = ("float16",)
TOKEN_LAYOUTS = ("sentences",)
_MANIFEST_ORDER = ("checkpoint", "checkpoint_sha256", "task", "split", "num_hidden_states", "hidden_size",
                   "selection", "max_length", "dtype", "label_kind", "shard_rows", "encoder_logits", "source_sha256")

# Shards of about this size: big enough that per-file overhead does not matter, small enough
# that one shard (the unit of streaming and of resuming) fits easily in memory.
TARGET_SHARD_BYTES = 64 * 2**20


def shard_file(index: int) -> str:
    """The file name of shard `index` ("shard-00000.parquet")."""
    return f"shard-{index:05d}.parquet"


def num_shards(rows: int, shard_rows: int) -> int:
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
    """Rows per shard of a token store, assuming max_length / 2 tokens a row on average; at
    least 16, a multiple of 16."""
    window_bytes = num_hidden_states * hidden_size * 2 * max(max_length / 2, 1)  # float16
    return max(16, int(TARGET_SHARD_BYTES // window_bytes) // 16 * 16)


@dataclass(frozen=True)
class StoreSpec:
    """What a store holds; two writers with different specs must not share a folder. The fields
    are the manifest's (the encoder nested as {name, revision}; encoder_outputs and token_layout
    only where set, so older manifests keep their fields); docs/ARCHITECTURE.md says what each
    layout stores. ``selection`` is "cls" or "mean" (a vector per layer and example) or "tokens"
    (windows of a span task, or with ``token_layout`` "sentences" a sentence task's rows);
    ``label_kind`` None is an unlabelled split; ``shard_rows`` None takes the layout's
    suggestion; ``source_sha256`` fingerprints the split's data (`bertvision.fingerprint`), so
    a rerun over changed data is refused instead of mixing old and new shards."""

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
        from bertvision.store.layouts import layout_of

        for name in ("task", "split", "encoder_name", "encoder_revision", "checkpoint"):
            value = getattr(self, name)
            _require(isinstance(value, str) and value, name, "a non-empty string", value)
        for name in ("num_hidden_states", "hidden_size", "max_length"):
            _require(is_positive_int(getattr(self, name)), name, "a positive integer", getattr(self, name))
        for name in ("checkpoint_sha256", "source_sha256"):
            value = getattr(self, name)
            _require(value is None or isinstance(value, str), name, "a string or null", value)
        for name, allowed in (("selection", SELECTIONS), ("dtype", DTYPES)):
            _require(getattr(self, name) in allowed, name, f"one of {allowed}", getattr(self, name))
        for name, allowed in (("label_kind", LABEL_KINDS), ("token_layout", TOKEN_LAYOUTS)):
            value = getattr(self, name)
            _require(value is None or value in allowed, name, f"one of {allowed} or null", value)
        _require(isinstance(self.encoder_logits, bool), "encoder_logits", "true or false", self.encoder_logits)
        if self.encoder_outputs is not None:
            _require(is_positive_int(self.encoder_outputs), "encoder_outputs", "a positive integer or null",
                     self.encoder_outputs)  # fmt: skip
        layout = layout_of(self.to_dict())
        if self.shard_rows is None:  # frozen: the only way to fill in a computed default
            object.__setattr__(self, "shard_rows", layout.suggest_rows(self))
        _require(is_positive_int(self.shard_rows), "shard_rows", "a positive integer", self.shard_rows)

    def to_dict(self) -> dict[str, Any]:
        """The spec as manifest fields, in the manifest's order."""
        out = {"encoder": {"name": self.encoder_name, "revision": self.encoder_revision}}
        out.update({name: getattr(self, name) for name in _MANIFEST_ORDER})
        for name in ("encoder_outputs", "token_layout"):  # only where set: older manifests lack them
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StoreSpec:
        """The spec from manifest fields (others ignored); fields newer than the manifest read as
        unset, a missing or bad one is a ConfigError."""
        encoder = data.get("encoder")
        if not isinstance(encoder, Mapping):
            raise ConfigError("encoder: expected {name, revision}")
        kwargs = {"encoder_name": encoder.get("name"), "encoder_revision": encoder.get("revision")}
        optional = {"encoder_logits": False, "source_sha256": None, "encoder_outputs": None, "token_layout": None}
        for f in fields(cls):
            if f.name in kwargs:
                continue
            if f.name not in data and f.name not in optional:
                raise ConfigError(f"{f.name}: missing")
            kwargs[f.name] = data.get(f.name, optional.get(f.name))
        return cls(**kwargs)

    def differences(self, other: StoreSpec) -> list[str]:
        """The manifest fields where `self` and `other` differ, as "field: a != b" lines."""
        mine, theirs = _flatten(self.to_dict()), _flatten(other.to_dict())
        keys = [*mine, *(k for k in theirs if k not in mine)]  # encoder_outputs may be absent
        return [f"{k}: {mine.get(k)!r} != {theirs.get(k)!r}" for k in keys if mine.get(k) != theirs.get(k)]


def _require(ok: Any, name: str, expected: str, got: Any) -> None:
    if not ok:
        raise ConfigError(f"{name}: expected {expected}, got {got!r}")


def is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
