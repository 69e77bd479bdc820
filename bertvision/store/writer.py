"""Writing a store: shards atomically (a temporary name, then a rename), resumably, one writer
per folder; the manifest completed last."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bertvision.errors import ConfigError, DataError
from bertvision.io import atomic_write_bytes, atomic_write_json
from bertvision.store.layouts import layout_of
from bertvision.store.manifest import (
    MANIFEST_NAME,
    code_version,
    has_manifest,
    manifest_path,
    new_manifest,
    read_manifest,
    utc_now,
)
from bertvision.store.spec import StoreSpec, num_shards, shard_bounds, shard_file

# Measured on random N(0, 1) float16, 2048 x 7 x 384 (11 MB), pyarrow 26, 2 CPU cores:
#   none                       1.00 of raw size, write ~310 MB/s, read ~715 MB/s
#   zstd                       0.92,             write ~280 MB/s, read ~510 MB/s
#   zstd + byte_stream_split   0.85,             write ~305 MB/s, read ~630 MB/s
# Mantissa bits of float16 hidden states are close to random, so compression saves little,
# while a store is written once and read by every head trained on it: no compression keeps
# reads fastest and the files readable by any Parquet reader.
COMPRESSION = "none"


class StoreWriter:
    """Writes the shards of one store (shard k: rows [k * shard_rows, (k + 1) * shard_rows)),
    resuming one a killed run left: write what `pending_shards` lists, in any order, then
    `finish`. A folder holding another spec's store, or shards without a manifest, is refused."""

    attached = False

    def __init__(self, path: str | os.PathLike, spec: StoreSpec, total_rows: int):
        self._setup(path, spec, total_rows)
        if not (isinstance(total_rows, int) and total_rows >= 0):
            raise ConfigError(f"total_rows: expected a count, got {total_rows!r}")
        if total_rows == 0:
            raise DataError(self.path, f"empty split: {spec.task}/{spec.split} has no rows to store")
        if self.path.exists() and not self.path.is_dir():
            raise ConfigError(f"{self.path}: expected a folder for the store, found a file")
        self.path.mkdir(parents=True, exist_ok=True)
        # atomic_write_bytes names its temporary files ".<final name>.<random>.tmp".
        for pattern in (".shard-*.parquet.*.tmp", ".*manifest.json.*.tmp"):
            for tmp in self.path.glob(pattern):
                tmp.unlink(missing_ok=True)
        self.complete = self._open()

    def _setup(self, path, spec: StoreSpec, total_rows: int) -> None:
        self.path, self.spec, self.total_rows = Path(path), spec, total_rows
        self.layout, self.fields = layout_of(spec.to_dict()), spec.to_dict()
        self.num_shards = num_shards(total_rows, spec.shard_rows) if isinstance(total_rows, int) and total_rows > 0 else 0
        self._checksums: dict[int, str] = {}  # of the shards this writer wrote

    @classmethod
    def attach(cls, path: str | os.PathLike, spec: StoreSpec, total_rows: int) -> StoreWriter:
        """A shard-only writer for a store another process opened (a Ray actor's view): it
        neither creates the manifest nor removes temporary files, and must not `finish`."""
        self = cls.__new__(cls)
        self._setup(path, spec, total_rows)
        manifest = read_manifest(self.path)
        diffs = self._differences(StoreSpec.from_dict(manifest), manifest)
        if diffs:
            raise ConfigError(f"{self.path} holds a store made with other settings ({'; '.join(diffs)})")
        self.complete, self.attached = manifest["status"] == "complete", True
        return self

    def _open(self) -> bool:
        """Start a new store or check the existing one; True when it is already complete."""
        if not has_manifest(self.path):
            if any(self.path.glob("shard-*.parquet")):
                raise DataError(self.path, f"has shard files but no {MANIFEST_NAME}; use another folder or delete it")
            atomic_write_json(self.path / MANIFEST_NAME, new_manifest(self.spec, self.total_rows))
            return False
        manifest = read_manifest(self.path)
        stored = StoreSpec.from_dict(manifest)
        if stored.source_sha256 != self.spec.source_sha256 and not [
            d for d in stored.differences(self.spec) if not d.startswith("source_sha256")
        ]:
            state = "a complete" if manifest["status"] == "complete" else "an unfinished"
            raise ConfigError(
                f"{self.path} holds {state} store of other data: the {self.spec.task}/{self.spec.split} examples "
                f"(for span tasks: or their windowing) changed since it was written (source_sha256 "
                f"{_short(stored.source_sha256)} stored, {_short(self.spec.source_sha256)} now); its shards would "
                "mix old and new data. Use another --out, or delete the folder to embed the new data"
            )
        diffs = self._differences(stored, manifest)
        if diffs:
            raise ConfigError(f"{self.path} holds a store made with other settings (store != asked: "
                              f"{'; '.join(diffs)}); use another folder or delete it")  # fmt: skip
        if manifest["status"] == "complete":
            return True
        self._drop_bad_shards()
        return False

    def _differences(self, stored: StoreSpec, manifest: Mapping[str, Any]) -> list[str]:
        """Where the folder's store differs from this writer's spec and row count."""
        diffs = stored.differences(self.spec)
        if manifest["rows"] != self.total_rows:
            diffs.append(f"rows: {manifest['rows']!r} != {self.total_rows!r}")
        return diffs

    def _drop_bad_shards(self) -> None:
        """Delete shards of an incomplete store whose footer is unreadable or off-plan: shards
        appear by rename, so only a damaged or copied-in file gets here; it becomes pending."""
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
                warnings.warn(f"{file}: damaged or not of this plan; it will be rewritten", stacklevel=4)
                file.unlink()

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

    def write_shard(self, index: int, ids: Sequence[str], hidden: np.ndarray | Sequence[np.ndarray],
                    labels: np.ndarray | None = None, *, example_ids: Sequence[str] | None = None,
                    offsets: Sequence[np.ndarray] | None = None, encoder_logits: Any = None,
                    segments: Sequence[np.ndarray] | None = None) -> None:  # fmt: skip
        """Write shard `index` atomically, once every check passed (`Layout.table`): `hidden`
        (n, L, H), or per row (T_i, L, H); the other columns as the layout has them. A
        ValueError names a shape, dtype or input that does not fit; a DataError the id of a
        duplicate, a NaN or a value out of range."""
        if self.complete:
            raise ValueError(f"{self.path}: the store is complete; nothing to write")
        start, stop = self.shard_range(index)
        index, ids = int(index), list(ids)
        if len(ids) != stop - start:
            raise ValueError(f"shard {index}: expected {stop - start} rows (rows {(start, stop)}), got {len(ids)} ids")
        bad = next((i for i in ids if not isinstance(i, str)), None)
        if bad is not None:
            raise ValueError(f"shard {index}: ids must be strings, got {type(bad).__name__}")
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            for i in ids:
                if i in seen:
                    raise DataError(self.path, f"shard {index}: duplicate id", key=i)
                seen.add(i)
        given = {"hidden": hidden, "label": labels, "example_id": example_ids, "offsets": offsets,
                 "encoder_logits": encoder_logits, "segments": segments}  # fmt: skip
        data = encode_parquet(self.layout.table(self.fields, index, given, ids, self.path))
        atomic_write_bytes(self.path / shard_file(index), data)
        self._checksums[index] = hashlib.sha256(data).hexdigest()

    def finish(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Mark the store complete once every planned shard is on disk, recording each shard's
        rows, sha256 and first/last id, and `extra` facts; returns the manifest."""
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
            raise DataError(self.path, f"cannot finish: {len(missing)} of {self.num_shards} shards not written "
                            f"({_ranges(missing)})")  # fmt: skip
        entries, seen = [], {}
        for k in range(self.num_shards):
            file = self.path / shard_file(k)
            start, stop = self.shard_range(k)
            ids = read_ids(file)
            if len(ids) != stop - start:
                raise DataError(file, f"expected {stop - start} rows by the plan, found {len(ids)}; delete the file and rerun")
            check_unique(file, ids, seen)
            entries.append({"file": shard_file(k), "rows": len(ids), "sha256": self._checksums.get(k) or file_sha256(file),
                            "first_id": ids[0], "last_id": ids[-1]})  # fmt: skip
        manifest = read_manifest(self.path)
        manifest.update(status="complete", rows=self.total_rows, shards=entries, code_version=code_version(),
                        created=utc_now(), extra={**manifest.get("extra", {}), **dict(extra or {})})  # fmt: skip
        atomic_write_json(manifest_path(self.path), manifest)
        self.complete = True
        return manifest


def encode_parquet(table: pa.Table) -> pa.Buffer:
    """The table as Parquet bytes, in memory so they can be hashed before the atomic write."""
    sink = pa.BufferOutputStream()
    # Dictionary encoding never pays for float tensors, and min/max statistics of the float16
    # column halve write speed (measured) while no reader filters on them.
    pq.write_table(table, sink, compression=COMPRESSION, use_dictionary=False,
                   write_statistics=[n for n in ("id", "example_id", "label") if n in table.column_names],
                   row_group_size=max(table.num_rows, 1))  # fmt: skip
    return sink.getvalue()


def read_ids(file: Path) -> list[str]:
    try:
        return pq.read_table(file, columns=["id"]).column("id").to_pylist()
    except (OSError, pa.ArrowException, KeyError) as exc:
        raise DataError(file, f"cannot read the id column: {exc}") from None


def check_unique(file: Path, ids: Sequence[str], seen: dict[str, str]) -> None:
    """No id of shard `file` in an earlier shard; `seen` (id -> shard file name) gains its ids."""
    for i in ids:
        if seen.setdefault(i, file.name) != file.name:
            raise DataError(file, f"duplicate id also in {seen[i]}", key=i)


def file_sha256(file: Path) -> str:
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


def _short(sha: str | None) -> str:
    return "none (written before fingerprints)" if sha is None else sha[:12]
