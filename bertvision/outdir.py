"""Output folders: checked, created, held by one process at a time, and judged on a rerun.

Every stage that writes a folder (a store split, a fine-tuning run, a head run, an ensemble)
claims it first: ``--out`` naming a file is refused with one line, a folder that cannot be
created is a RunError naming it, and an exclusive lock (`bertvision.locks.hold`) keeps a second
process out while the first writes (its message names the holder). A lock left by a killed
process never blocks a rerun. `previous_run` says what an earlier run found there means: reuse,
refuse, or start over. A Ray job's paths (`job_paths`, `absolute_inputs`) are checked here too.
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
    """What an earlier run in ``out_dir`` means for this one, by its config.json.

    ``config`` (stored under ``key``) holds the settings and ``inputs`` the fingerprints of what
    the run reads (`bertvision.fingerprint`: data splits, or stores), stored under "inputs".
    ``upgrade`` (optional) turns a stored config written by an earlier version into this
    version's (settings added since, at the values that reproduce what the earlier code did).

    * a finished run (metrics.json written) with the same settings and inputs: its metrics,
      reused;
    * a finished run with other settings or inputs: ConfigError saying which, nothing touched;
    * an unfinished run (the process was killed) with the same settings and inputs: its
      artifacts (the ``leftovers`` globs, e.g. checkpoint folders) are removed and None returned:
      the run starts over and no artifact stays that its config does not describe;
    * an unfinished run with other settings or inputs, or artifacts without a config.json:
      ConfigError (another --out, or delete the folder), nothing touched.
    """
    import shutil

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
        diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ConfigError(f"{out_dir} holds {state} run with other settings ({', '.join(diff)}); use another --out"
                          + ("" if finished else " or delete the folder"))  # fmt: skip
    from bertvision.fingerprint import differing

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
    """The absolute output folder of a job started as ``python -m ray_jobs.<name>``, its paths
    checked before anything is read or written (ConfigError, exit status 1).

    A submitted job (attached to a cluster: ``job.address`` or $RAY_ADDRESS) runs in Ray's
    temporary copy of the working directory. A relative --out would land there and is refused,
    unless --storage-root says what to resolve it against (the extraction job, which has one,
    refuses a relative --out even unattached: its actors on every node write there). Relative
    inputs are read from that copy, which holds only what was uploaded: one that is not there
    is refused rather than looked up (as a Hub id) or silently missed."""
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
    """``cfg`` with its local input paths made absolute (a task file, an encoder or checkpoint
    folder, stores) and ``data_dir`` pinned to the absolute folder it names or $BERTVISION_DATA
    names: Ray runs each trial and worker in a folder of its own, where a relative path means
    something else. Names that are not local paths (Hub ids, registered task names) are kept."""
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
