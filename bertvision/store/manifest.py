"""A store's manifest: what it holds (`StoreSpec`'s fields), how far writing got, and each
shard's row count, sha256 and first/last id once complete.

It is named ``_manifest.json`` so that Parquet readers that take a folder
(``pyarrow.dataset.dataset``, ``pandas.read_parquet``) skip it, as they skip files starting
with ``_`` or ``.``; stores written before read theirs from ``manifest.json``.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path
from typing import Any

from bertvision.errors import ConfigError, DataError, decode_error, json_error
from bertvision.store.spec import StoreSpec, num_shards, shard_bounds, shard_file

FORMAT_VERSION = 1
MANIFEST_NAME = "_manifest.json"
LEGACY_MANIFEST_NAME = "manifest.json"
STATUS = ("incomplete", "complete")
INCOMPLETE_HINT = "rerun the embed command to finish it"


def manifest_path(folder: str | os.PathLike) -> Path:
    """The manifest file of a store folder: ``_manifest.json``, or an older store's
    ``manifest.json`` when only that exists."""
    folder = Path(folder)
    legacy = folder / LEGACY_MANIFEST_NAME
    return legacy if legacy.is_file() and not (folder / MANIFEST_NAME).is_file() else folder / MANIFEST_NAME


def has_manifest(folder: str | os.PathLike) -> bool:
    return manifest_path(folder).is_file()


@lru_cache(maxsize=1)
def code_version() -> str:
    """bertvision's version, plus "+git.<commit>" when the package sits in a git checkout."""
    from bertvision import __version__

    package = Path(__file__).resolve().parents[1]
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=package, capture_output=True,
                             text=True, timeout=10, check=True).stdout.split()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return __version__
    # An installed copy inside some other repository (a venv in a project) must not borrow
    # that repository's commit.
    if len(out) != 2 or Path(out[0]).resolve() != package.parent:
        return __version__
    return f"{__version__}+git.{out[1]}"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_manifest(spec: StoreSpec, rows: int) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "status": "incomplete", **spec.to_dict(), "rows": rows, "shards": [],
            "code_version": code_version(), "created": utc_now(), "extra": {}}  # fmt: skip


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the store in folder `path`, checked for shape (a DataError naming it when
    it is missing, not JSON, of another version, or its fields do not add up)."""
    file = manifest_path(path)
    try:
        data = file.read_bytes()
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise DataError(file, "missing: the folder is not an embedding store (or its embed command never started)") from None
    except OSError as exc:
        raise DataError(file, f"cannot read: {exc}") from None
    except UnicodeDecodeError as exc:
        raise decode_error(file, exc, data) from None
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as exc:
        raise json_error(file, exc) from None
    _check(manifest, file)
    return manifest


def _check(manifest: Any, file: Path) -> None:
    if not isinstance(manifest, dict):
        raise DataError(file, "expected a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(file, f"format_version {version!r}; this bertvision reads {FORMAT_VERSION}")
    if manifest.get("status") not in STATUS:
        raise DataError(file, f"status: expected one of {STATUS}, got {manifest.get('status')!r}")
    try:
        spec = StoreSpec.from_dict(manifest)
    except ConfigError as exc:
        raise DataError(file, str(exc)) from None
    rows = manifest.get("rows")
    if not (isinstance(rows, int) and not isinstance(rows, bool) and rows >= 0):
        raise DataError(file, f"rows: expected a count, got {rows!r}")
    if not isinstance(manifest.get("shards"), list):
        raise DataError(file, "shards: expected a list")
    if manifest["status"] == "complete":
        _check_shard_entries(manifest["shards"], rows, spec.shard_rows, file)
    if not isinstance(manifest.get("extra", {}), dict):
        raise DataError(file, "extra: expected an object")


def _check_shard_entries(shards: list, rows: int, shard_rows: int, file: Path) -> None:
    """A complete manifest lists exactly the planned shards, with the planned row counts."""
    planned = num_shards(rows, shard_rows)
    if len(shards) != planned:
        raise DataError(file, f"{len(shards)} shards listed, but {rows} rows at {shard_rows} per shard make {planned}")
    keys = ("file", "rows", "sha256", "first_id", "last_id")
    for k, entry in enumerate(shards):
        if not isinstance(entry, dict) or any(key not in entry for key in keys):
            raise DataError(file, f"shards[{k}]: expected an object with {', '.join(keys)}")
        if entry["file"] != shard_file(k):
            raise DataError(file, f"shards[{k}].file: expected {shard_file(k)!r}, got {entry['file']!r}")
        start, stop = shard_bounds(k, rows, shard_rows)
        if entry["rows"] != stop - start:
            raise DataError(file, f"shards[{k}].rows: the plan ({rows} rows, {shard_rows} per shard) gives "
                            f"{stop - start}, the manifest says {entry['rows']}")  # fmt: skip


def split_folders(root: str | os.PathLike) -> list[Path]:
    """The store split folders at ``root``: itself when it is one, else its sub-folders that are."""
    root = Path(root)
    if has_manifest(root):
        return [root]
    folders = sorted({p.parent for p in root.glob("*/*manifest.json") if has_manifest(p.parent)})
    if not folders:
        raise DataError(root, f"no {MANIFEST_NAME} here or in its sub-folders: not a store")
    return folders


def is_complete(path: str | os.PathLike) -> bool:
    """True when folder `path` holds a finished store; False when it has no manifest yet."""
    return has_manifest(path) and read_manifest(path)["status"] == "complete"


def written_shards(folder: Path, manifest: Mapping[str, Any]) -> list[int]:
    planned = num_shards(manifest["rows"], manifest["shard_rows"])
    return [k for k in range(planned) if (folder / shard_file(k)).is_file()]


def complete_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a complete store, or a DataError saying how far writing got."""
    folder = Path(path)
    manifest = read_manifest(folder)
    if manifest["status"] != "complete":
        done, planned = len(written_shards(folder, manifest)), num_shards(manifest["rows"], manifest["shard_rows"])
        raise DataError(folder, f"incomplete store: {done} of {planned} shards written; {INCOMPLETE_HINT}")
    return manifest


def store_bytes(path: str | os.PathLike) -> int:
    """The total size in bytes of the shards on disk (complete or not)."""
    folder = Path(path)
    return sum((folder / shard_file(k)).stat().st_size for k in written_shards(folder, read_manifest(folder)))
