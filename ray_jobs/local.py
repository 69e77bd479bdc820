"""What every Ray job here shares: attaching to a cluster, or starting a local Ray of its own."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import fields, replace

import ray

from bertvision.tasks.base import resolve_data_dir


def init_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = False) -> str | None:
    """Attach to ``address`` (or $RAY_ADDRESS: a submitted job's cluster), else start a local
    Ray of this process's own; returns the local Ray's temporary folder (None when attached).

    A plain ``ray.init()`` would attach to the head that the last ``ray start`` on this machine
    recorded in the default temporary folder (``/tmp/ray/ray_current_cluster``), someone else's
    cluster perhaps. ``address="local"`` and a fresh temporary folder keep the local Ray apart:
    its own session, sockets and ports, shut down with this process. ``num_cpus``: the local
    Ray's logical CPUs (default: the cores, at least 4). ``dashboard``: start the local Ray's
    dashboard too (on 127.0.0.1, a free port from 8265, behind Ray's token). Ray Train needs it:
    its controller's placement-group cleaner asks the dashboard's state API every second whether
    the controller lives, and without one logs a failure each time.
    """
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
        return None
    # Unix socket paths (<temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store, up
    # to 64 bytes after the temp dir) are limited to 107 bytes; mkdtemp adds 15.
    base = tempfile.gettempdir()
    temp_dir = tempfile.mkdtemp(prefix="bvray-", dir=base if len(base) + 15 + 64 <= 107 else "/tmp")
    # On a small machine give Ray more logical CPUs than cores, so the actor and the tasks that
    # feed it can all be scheduled.
    try:
        ray.init(address="local", _temp_dir=temp_dir, num_cpus=num_cpus or max(4, os.cpu_count() or 1),
                 include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=True)  # fmt: skip
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    print(f"local Ray of this process in {temp_dir} (removed at the end)", flush=True)
    return temp_dir


class JobRay:
    """The Ray a job runs on, as a context: the one this process already has, else ``address``
    / $RAY_ADDRESS's cluster, else a local Ray of the job's own (`init_ray`, with ``dashboard``),
    started on the first `need` (a job with nothing left to run starts none) and shut down and
    removed on exit."""

    def __init__(self, address: str | None = None, dashboard: bool = False):
        self.address, self.dashboard, self._local_dir = address, dashboard, None

    def need(self) -> None:
        if not ray.is_initialized():
            self._local_dir = init_ray(self.address, dashboard=self.dashboard)

    def __enter__(self) -> JobRay:
        return self

    def __exit__(self, *exc) -> None:
        if self._local_dir:  # the job's own local Ray: stop it and drop its session folder
            ray.shutdown()
            shutil.rmtree(self._local_dir, ignore_errors=True)
            self._local_dir = None


def on_ray(address: str | None, fn, dashboard: bool = False):
    """``fn()`` on a `JobRay` (``dashboard``: for Ray Train's state queries)."""
    with JobRay(address, dashboard) as job_ray:
        job_ray.need()
        return fn()


def absolute_inputs(cfg):
    """``cfg`` with its local input paths made absolute (a task file, an encoder or checkpoint
    folder, stores) and ``data_dir`` pinned to the absolute folder it names or $BERTVISION_DATA
    names: Tune runs each trial in a folder of its own, where a relative path means something
    else. Names that are not local paths (Hub ids, registered task names) are kept."""

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
