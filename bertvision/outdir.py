"""Output folders: checked, created, held by one process at a time (`claim`), and judged on a
rerun (`previous_run`: reuse, refuse, or start over); and a Ray job's paths (`job_paths`,
`absolute_inputs`), checked before anything is read or written.
"""

from __future__ import annotations

import json
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
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(exc, f"creating the {option} folder") from None
    try:
        with hold(path, what):
            yield path
    except BaseException:
        # A run refused before it wrote anything (bad data found while reading) leaves no
        # empty folder behind.
        if created and path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        raise


def previous_run(out_dir: Path, config: dict, key: str, inputs: dict[str, str], leftovers: tuple[str, ...],
                 upgrade=None) -> dict | None:  # fmt: skip
    """What an earlier run in ``out_dir`` means for this one, by its config.json: the settings
    ``config`` (under ``key``) and the input fingerprints ``inputs`` (under "inputs") equal, its
    metrics when it finished (None when it did not: its ``leftovers`` globs are removed, and it
    starts over); a ConfigError saying what differs otherwise, nothing touched. ``upgrade``: a
    stored config of an earlier version into this one's (new settings at their old behaviour)."""
    import shutil

    from bertvision.fingerprint import differing

    cfg_file, metrics = out_dir / "config.json", out_dir / "metrics.json"
    found = sorted(p for pattern in leftovers for p in out_dir.glob(pattern))
    if not cfg_file.is_file():
        if found:
            raise ConfigError(f"{out_dir} holds {found[0].name} but no config.json saying what made it; "
                              "use another --out or delete the folder")  # fmt: skip
        return None
    stored = json.loads(cfg_file.read_text())
    finished = metrics.is_file()
    state = "a finished" if finished else "an unfinished (killed?)"
    old, new = json.loads(json.dumps(stored.get(key, {}))), json.loads(json.dumps(config))  # tuples -> lists
    if upgrade is not None:
        old = json.loads(json.dumps(upgrade(old)))
    if old != new:
        raise ConfigError(f"{out_dir} holds {state} run with other settings ({', '.join(differing(old, new))}); use another --out"
                          + ("" if finished else " or delete the folder"))  # fmt: skip
    if "inputs" not in stored:
        raise ConfigError(f"{out_dir} holds {state} run made before input fingerprints were recorded, so "
                          "whether its data is this data is unknown; use another --out or delete the folder")  # fmt: skip
    changed = differing(stored["inputs"], inputs)
    if changed:
        raise ConfigError(f"{out_dir} holds {state} run on other data: {', '.join(changed)} changed since it ran "
                          "(content fingerprints differ); use another --out, or delete the folder to rerun")  # fmt: skip
    if finished:
        return json.loads(metrics.read_text())
    for path in found:  # a killed run with these settings: start over, leaving nothing stale
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return None


# ---------------------------------------------------------------------------------------------
# The paths of a Ray job (`ray_jobs/`)

TEMP_COPY = "a Ray job runs in a temporary copy of the working directory, deleted when Ray cleans up"


def _relative(path: str) -> bool:
    return not os.path.isabs(os.path.expanduser(path))


def absolute_out(out_dir: str, job) -> str:
    """``out_dir`` made absolute: against the job's --storage-root when it has one, else this
    process's folder (where the job runs, as `bertvision ... --ray` runs it)."""
    root = getattr(job, "storage_root", None)
    if root is not None and _relative(out_dir):
        out_dir = os.path.join(os.path.expanduser(root), out_dir)
    return os.path.normpath(os.path.abspath(os.path.expanduser(out_dir)))


def job_paths(cfg, out_dir: str, job) -> str:
    """The absolute output folder of a ``python -m ray_jobs.<name>`` job, its paths checked first.
    An attached job (or any with a --storage-root option: its actors write on every node) runs in
    Ray's temporary copy of the working directory: a relative --out is refused unless
    --storage-root resolves it, and a relative input missing from the copy is refused."""
    rooted = hasattr(job, "storage_root")
    if not (rooted or job.address or os.environ.get("RAY_ADDRESS")):
        return absolute_out(out_dir, job)
    root = getattr(job, "storage_root", None)
    if root is not None and _relative(root):
        raise ConfigError(f"--storage-root {root} is relative: {TEMP_COPY}; give an absolute path on shared storage")
    if _relative(out_dir) and root is None:
        raise ConfigError(f"--out {out_dir} is relative: {TEMP_COPY}; give an absolute path on shared storage"
                          + (", or --storage-root DIR to resolve it against" if rooted else ""))  # fmt: skip
    checkpoint = getattr(cfg, "checkpoint", None)
    # A checkpoint string that can only be a path (not a Hub id 'name' or 'owner/name').
    path_like = bool(checkpoint) and (checkpoint.startswith(".") or checkpoint.count("/") > 1 or checkpoint.endswith("/"))
    for option, value, check in (("--checkpoint", checkpoint, path_like), ("--data-dir", getattr(cfg, "data_dir", None), True)):
        if value and check and _relative(value) and not os.path.exists(value):
            raise ConfigError(f"{option} {value} is relative and not in the job's working directory ({os.getcwd()}): {TEMP_COPY}, "
                              "holding only the uploaded files (not those git ignores, such as runs/); give an absolute path on shared storage")  # fmt: skip
    return absolute_out(out_dir, job)


def absolute_inputs(cfg):
    """``cfg`` with its local input paths (task file, encoder, checkpoint, stores) and ``data_dir``
    (or $BERTVISION_DATA) made absolute: Ray runs each trial and worker in a folder of its own.
    Names that are not local paths (Hub ids, registered task names) are kept."""
    from dataclasses import fields, replace

    from bertvision.tasks.base import resolve_data_dir

    def pin(value: str, test) -> str:
        path = os.path.expanduser(value)
        return os.path.abspath(path) if test(path) else value

    names = {f.name for f in fields(cfg)}
    changes = {}
    for name, test in (("task", os.path.isfile), ("encoder", os.path.isdir), ("checkpoint", os.path.isdir),
                       ("store", os.path.isdir)):  # fmt: skip
        if name in names and isinstance(getattr(cfg, name), str):
            changes[name] = pin(getattr(cfg, name), test)
    if "stores" in names:
        changes["stores"] = tuple(pin(s, os.path.isdir) for s in cfg.stores)
    if "data_dir" in names:
        found = resolve_data_dir(cfg.data_dir)  # a folder named but missing is refused here
        changes["data_dir"] = None if found is None else str(found)
    return replace(cfg, **changes)
