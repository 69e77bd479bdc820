"""What the Ray jobs share: the Ray they run on (a cluster's, or a local one of their own), one
`TorchTrainer` builder, one checkpoint-and-report helper, and one `main`."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import psutil
import ray
import torch
from ray._private import ray_constants
from ray.exceptions import RayError
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from bertvision.config import add_arguments, from_arguments
from bertvision.errors import EXIT_RUN, BertVisionError, DataError, RunError, os_error
from bertvision.io import atomic_write_json
from bertvision.outdir import claim, job_paths
from bertvision.runtime import warn

STATE = "state.pt"
RAY_RECORD = ".bertvision-ray.json"  # in a job's folder: the local Ray it runs on, while it runs


def init_ray(address: str | None, num_cpus: int | None = None, dashboard: bool = False) -> str | None:
    """Attach to ``address`` (or $RAY_ADDRESS: a submitted job's cluster), else start a local Ray
    of this process's own in a fresh temporary folder (returned): a plain ``ray.init()`` would
    attach to the head the last ``ray start`` here recorded, someone else's perhaps. ``dashboard``:
    Ray Train's placement-group cleaner asks its state API every second if the controller lives."""
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, log_to_driver=True)
        return None
    # Unix socket paths (<temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store, up
    # to 64 bytes after the temp dir) are limited to 107 bytes; mkdtemp adds 15.
    base = tempfile.gettempdir()
    temp_dir = tempfile.mkdtemp(prefix="bvray-", dir=base if len(base) + 15 + 64 <= 107 else "/tmp")
    # Ray's local-only mode (its default on macOS and Windows; its variable, read when ray is
    # imported, is RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER): the node's address is 127.0.0.1, so GCS,
    # raylet, workers, agents and the metrics endpoints left listen there alone (README, "On Ray");
    # the agent exports no metrics at all.
    cluster, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    # On a small machine more logical CPUs than cores, so an actor and the tasks feeding it all fit.
    try:
        ray.init(address="local", _temp_dir=temp_dir, num_cpus=num_cpus or max(4, os.cpu_count() or 1),
                 include_dashboard=dashboard, dashboard_host="127.0.0.1", log_to_driver=True,
                 _system_config={"enable_metrics_collection": False})  # fmt: skip
    except BaseException:
        shutil.rmtree(temp_dir, ignore_errors=True)
        raise
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = cluster
    print(f"local Ray of this process in {temp_dir} (removed at the end)", flush=True)
    return temp_dir


class JobRay(contextlib.AbstractContextManager):
    """The Ray a job runs on, as a context: this process's, ``address`` / $RAY_ADDRESS's, or a local
    one of its own (`init_ray`) started on the first `need` (if any) and removed on exit. A Ray it
    started or attached to is left on exit: its workers' logs stop there, above the job's last line.
    A local one is recorded in ``record`` (the job's folder, held) while it runs: see `holding`."""

    def __init__(self, address: str | None = None, dashboard: bool = False, record: Path | None = None):  # fmt: skip
        self.address, self.dashboard, self.record, self._local_dir, self._started = address, dashboard, record, None, False  # fmt: skip

    def need(self) -> None:
        if not ray.is_initialized():
            self._local_dir, self._started = init_ray(self.address, dashboard=self.dashboard), True
            if self._local_dir and self.record:  # its processes: GCS, raylet, agents, workers...
                me = psutil.Process()
                atomic_write_json(self.record / RAY_RECORD, {"temp_dir": self._local_dir, "driver": _entry(me),
                                                             "processes": [_entry(p) for p in me.children(True)]})  # fmt: skip

    def __exit__(self, *exc) -> None:
        if self._started:
            ray.shutdown()
            self._started = False
        if self._local_dir:  # the job's own local Ray: drop its session folder
            shutil.rmtree(self._local_dir, ignore_errors=True)
            if self.record:
                (self.record / RAY_RECORD).unlink(missing_ok=True)
            self._local_dir = None


def holding(what: str):
    """A job's ``run(cfg, out_dir, job)`` holding ``out_dir`` (`claim`) from its first step: a second
    job into it is refused before any Ray starts, and what the local Ray of a killed holder left
    (its `RAY_RECORD`) is cleaned up first."""

    def wrap(run):
        @functools.wraps(run)
        def held(cfg, out_dir: str, job=None):
            with claim(Path(out_dir).expanduser(), what) as out:
                reap(out / RAY_RECORD)
                return run(cfg, out_dir, job)

        return held

    return wrap


def reap(record: Path) -> None:
    """Kill what the local Ray of a job killed in this folder left (its agents live on for a minute
    or so) and remove its temporary folder, by ``record``. Only while that job's driver is dead,
    and only this user's processes that are the recorded ones (pid and start time) and name that
    folder (command line or an open file: agents rename themselves)."""
    try:
        left = json.loads(record.read_text())
        temp_dir, driver, processes = left["temp_dir"], left["driver"], left["processes"]
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(record, f"not a record of a local Ray ({e}); delete it if no job runs there") from None  # fmt: skip
    if _running(driver):  # the job lives: a copy of its folder, or one the file system cannot lock
        return

    def ours(p: psutil.Process) -> bool:
        with contextlib.suppress(psutil.Error):
            return p.uids().real == os.getuid() and (temp_dir in " ".join(p.cmdline()) or any(
                f.path.startswith(temp_dir + os.sep) for f in p.open_files()))  # fmt: skip
        return False

    doomed = [p for p in map(_running, processes) if p and ours(p)]
    for p in doomed:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(doomed, timeout=10)
    folder = Path(temp_dir)
    if folder.name.startswith("bvray-") and not folder.is_symlink() and folder.is_dir() and folder.stat().st_uid == os.getuid():  # fmt: skip
        shutil.rmtree(folder, ignore_errors=True)
    record.unlink(missing_ok=True)


def _entry(p: psutil.Process) -> dict:
    return {"pid": p.pid, "created": p.create_time()}


def _running(entry: dict) -> psutil.Process | None:
    """The process of an `_entry` if it still runs (a recycled pid has another start time)."""
    with contextlib.suppress(psutil.Error):
        p = psutil.Process(entry["pid"])
        if p.create_time() == entry["created"] and p.status() != psutil.STATUS_ZOMBIE:
            return p
    return None


def on_ray(address: str | None, fn, dashboard: bool = False, record: Path | None = None):
    """``fn()`` on a `JobRay` (``dashboard``: for Ray Train's state queries)."""
    with JobRay(address, dashboard, record) as job_ray:
        job_ray.need()
        return fn()


def trainer(job, loop, config: dict, storage: Path, name: str, keep: int, callbacks=()):
    """The `TorchTrainer` (Ray Train V2) of a `TrainJobConfig`'s workers running ``loop(config)``
    (with "threads" and "gpus" added): gloo or NCCL, ``keep`` checkpoints under ``storage/name``."""
    gpu = job.gpus_per_worker > 0
    return TorchTrainer(
        loop, train_loop_config={**config, "threads": max(1, int(job.cpus_per_worker)), "gpus": gpu},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=job.workers, use_gpu=gpu, resources_per_worker={
            "CPU": job.cpus_per_worker, **({"GPU": job.gpus_per_worker} if gpu else {})}),
        run_config=RunConfig(name=name, storage_path=str(storage), callbacks=list(callbacks),
                             failure_config=FailureConfig(max_failures=job.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=keep)),
    )  # fmt: skip


def fit(run, what: str, written: Path) -> dict:
    """``run.fit()``, its error unwrapped from Ray's (`ray_error`); then ``written`` (a metrics file), read."""
    try:
        run.fit()
    except Exception as e:
        raise ray_error(e, f"running the Ray Train run of {what}", written.parent) from None
    if not written.is_file():
        raise RunError(f"Ray Train run of {what} ended without writing {written}")
    return json.loads(written.read_text())


def ray_error(exc: BaseException, doing: str, where: Path | None = None) -> BertVisionError:
    """The error inside Ray's wrappers of ``exc`` (a worker's or trial's RayTaskError, Tune's and
    Ray Train's errors) in one line: the library's own as it is, an OSError naming its path (else
    ``where``, the job's folder), else the innermost error's type and first line (Ray's messages
    hold tracebacks, colour codes and actor ids)."""
    stack, seen, found = [(exc, 0)], set(), []
    while stack:
        c, depth = stack.pop()
        if id(c) in seen:
            continue
        seen.add(id(c))
        if not isinstance(c, RayError):  # a RayTaskError is an instance of the error it wraps too
            if isinstance(c, BertVisionError):
                return c
            found.append((depth, c))
        stack += [(x, depth + 1) for x in (getattr(c, "cause", None), c.__cause__, c.__context__,
                                           *getattr(c, "worker_failures", {}).values(), getattr(c, "error", None))
                  if isinstance(x, BaseException)]  # fmt: skip
    found.sort(key=lambda f: -f[0])  # the innermost first
    inner = next((c for _, c in found if isinstance(c, OSError)), found[0][1] if found else exc)
    if isinstance(inner, OSError):
        return os_error(inner, doing, where)
    lines = re.sub(r"\x1b\[[0-9;]*m", "", str(inner)).strip().splitlines()
    return RunError(f"{type(inner).__name__} while {doing}" + (f": {lines[0]}" if lines else ""))


class _TrialErrors(logging.Handler):
    """Tune's "Trial task failed for trial <name>" records: each failure kept and told in one line
    (`ray_error`), not as Tune's traceback of Ray's wrappers."""

    def __init__(self, what: str, where: Path):
        super().__init__(logging.ERROR)
        self.what, self.where, self.errors = what, where, []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info and record.exc_info[1] is not None:
            trial = record.getMessage().rsplit(" ", 1)[-1]
            self.errors.append(ray_error(record.exc_info[1], f"running {self.what} trial {trial}", self.where))
            warn(str(self.errors[-1]))  # on the console of a run too


def tune_fit(tuner, what: str, where: Path, every: bool = False):
    """``tuner.fit()`` writing under ``where``, each failed trial told in one line; the first
    failure raised where ``every`` trial must finish, where none did, or where fit itself failed
    (a full disk leaves Tune's records of the failures unreadable: its error comes after theirs)."""
    log = logging.getLogger("ray.tune.execution.tune_controller")
    failed, propagate = _TrialErrors(what, where), log.propagate
    log.addHandler(failed)
    log.propagate = False
    try:
        results = tuner.fit()
    except Exception as e:
        raise (failed.errors[0] if failed.errors else ray_error(e, f"running the {what}", where)) from None
    finally:
        log.removeHandler(failed)
        log.propagate = propagate
    errors = [r.error for r in results if r.error]
    if errors and (every or len(errors) == len(results)):
        raise failed.errors[0] if failed.errors else ray_error(errors[0], f"running the {what}", where)
    return results


def report(api, metrics: dict, state=None) -> None:
    """``api.report(metrics)`` (`ray.train`, or `ray.tune` in a trial), with ``state()`` (the
    training state: tensors and plain values) saved as its checkpoint when ``state`` is given."""
    if state is None:
        return api.report(metrics)
    with tempfile.TemporaryDirectory() as d:
        torch.save(state(), Path(d) / STATE)
        api.report(metrics, checkpoint=api.Checkpoint.from_directory(d))


def resumed(api) -> tuple[dict | None, str | None]:
    """The state `report` saved in the run's last checkpoint, and where; (None, None) at first."""
    if (checkpoint := api.get_checkpoint()) is None:
        return None, None
    with checkpoint.as_directory() as d:
        return torch.load(Path(d) / STATE, weights_only=True), checkpoint.path


def parser(config, job, doc: str = "", prog: str = "job", **options) -> argparse.ArgumentParser:
    """A job's command line: ``config``'s options (its `bertvision` command's), --out, ``job``'s."""
    p = argparse.ArgumentParser(prog=f"python -m {prog}", description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p, config, **options)
    p.add_argument("--out", required=True, help="output folder: an absolute path, on shared storage for a cluster")
    add_arguments(p, job)
    return p


def main(argv, config, job, run, printer=None, doc: str = "", prog: str = "job", **options) -> int:
    """Parse a job's command line, check its paths (`job_paths`), ``run(cfg, out, job)``, print the
    result; an error prints one line and returns its exit status (1: the input, 3: running)."""
    args = parser(config, job, doc, prog, **options).parse_args(argv)
    try:
        cfg, job_cfg = from_arguments(config, args), from_arguments(job, args)
        result = run(cfg, job_paths(cfg, args.out, job_cfg), job_cfg)
    except BertVisionError as e:
        print(f"bertvision: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # as `bertvision.cli.main` says it
        print(f"bertvision: error: {os_error(e, f'running {prog}', args.out)}", file=sys.stderr)
        return EXIT_RUN
    if printer is not None:
        printer(result, cfg, args.out)
    return 0
