"""Output folders: checked, created and held by one process at a time.

Every stage that writes a folder (a store split, a fine-tuning run, a head run, an ensemble)
claims it first: ``--out`` naming a file is refused with one line, a folder that cannot be
created is a RunError naming it, and an exclusive lock (`bertvision.locks.hold`) keeps a second
process out while the first writes (its message names the holder). A lock left by a killed
process never blocks a rerun.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bertvision.errors import ConfigError, os_error


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """``path`` as a Path, refusing one that names an existing file (or lies under one)."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                what = "is a file" if p == path else f"lies under {p}, which is a file"
                raise ConfigError(f"{option} {path} {what}, not a folder; give a folder path")
            break
    return path


@contextmanager
def claim(path: str | os.PathLike, what: str, option: str = "--out") -> Iterator[Path]:
    """Check, create and lock the output folder ``path`` for the block (see the module doc)."""
    from bertvision.locks import hold

    path = check_out_dir(path, option)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, f"creating the {option} folder") from None
    with hold(path, what):
        yield path
