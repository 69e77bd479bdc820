"""Ray Data batch inference: a finished run's model over a large input, resumable.

    bertvision predict RUN --ray --input texts/ --out preds/          # an in-process Ray
    ray job submit --working-dir . -- python -m ray_jobs.predict --run /mnt/bertvision/runs/rte \\
        --input /mnt/data/texts --out /mnt/bertvision/preds/rte

The input (a Parquet, CSV, TSV or JSON-lines file, a folder of them read in name order, or
--split of the run's task) is cut into numbered pieces: each file's rows in runs of --piece-rows
from its row 0, a multiple of the run's chunk (its store's shard rows), so that a piece's rows are
batched as 'bertvision predict --input FILE' batches them: the output equals the local command's,
file by file (CPU, fp32). Text files and splits are first read and checked as the local command
reads them, into OUT/_input/ as Parquet; pieces read their row range of a Parquet file. An actor
pool of `RunModel` (a GPU each where there are GPUs) writes each piece as OUT/part-<k>.parquet
(under a temporary name, then renamed), with the job's settings in its metadata. A job
resubmitted writes only the missing parts, and refuses a folder of other settings;
OUT/_manifest.json, written last, lists the parts. On several nodes OUT must be shared storage.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import ray
import torch
from ray.data import ActorPoolStrategy, DataContext

from bertvision.config import PredictConfig, PredictJobConfig
from bertvision.errors import ConfigError, DataError
from bertvision.io import atomic_write_json
from bertvision.predict import IN_FORMATS, RunModel, load_model, read_parquet_rows
from bertvision.printing import print_predict
from ray_jobs import common
from ray_jobs.embed import pool_plan

MANIFEST = "_manifest.json"
STAGED = "_input"  # text inputs and splits as Parquet (names starting with _ or . are no dataset's parts)
KEY = b"bertvision.predict"  # a written file's Parquet metadata: the job's settings


class PiecePredictor:
    """Ray actor: the run's model for the actor's life; one output part per row (a piece)."""

    def __init__(
        self,
        run: str,
        model: str | None,
        seed: int | None,
        device: str,
        threads: int | None,
        settings: dict,
    ):
        if threads:
            torch.set_num_threads(threads)
        self.rm, self.settings = load_model(run, model, seed, device), settings
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, table):
        stats = []
        for piece in table.to_pylist():
            t0 = time.perf_counter()
            batch = read_parquet_rows(
                piece["read"], self.rm.text_fields, piece["start"], piece["stop"]
            )
            results = list(self.rm.stream([batch]))
            columns = {c: [x for r in results for x in r[c]] for c in self.rm.columns()}
            _write(Path(piece["path"]), [pa.table(columns)], self.settings)
            stats.append(
                {
                    "part": piece["part"],
                    "rows": len(columns["id"]),
                    "seconds": time.perf_counter() - t0,
                    "node": self.node,
                }
            )
        return pa.Table.from_pylist(stats)


def _write(path: Path, tables, settings: dict) -> None:
    """``tables`` (one schema) as the Parquet file ``path``, the settings in its metadata: written
    under a temporary name and renamed, so a part that exists is complete."""
    tmp, writer = path.with_name(f".{path.name}.tmp"), None
    try:
        for table in tables:
            if writer is None:
                writer = pq.ParquetWriter(
                    tmp, table.schema.with_metadata({KEY: json.dumps(settings)})
                )
            writer.write_table(table)
        writer.close()
        os.replace(tmp, path)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise


def _settings_of(path: Path) -> dict | None:
    """The settings a file of a job holds (None: unreadable, or none)."""
    try:
        meta = pq.read_schema(path).metadata or {}
        return json.loads(meta[KEY]) if KEY in meta else None
    except (OSError, pa.ArrowException, ValueError):
        return None


def _refuse_other(out: Path, settings: dict) -> None:
    """ConfigError where ``out`` holds the parts (or manifest) of a job of other settings."""
    records = [
        (p, _settings_of(p))
        for p in sorted(out.glob("part-*.parquet")) + sorted((out / STAGED).glob("*.parquet"))
    ]
    if (out / MANIFEST).is_file():
        try:
            records.append((out / MANIFEST, json.loads((out / MANIFEST).read_text())["settings"]))
        except (ValueError, KeyError, TypeError):
            records.append((out / MANIFEST, None))
    for path, old in records:
        if old != settings:
            what = "written by no prediction job" if not isinstance(old, dict) else "; ".join(
                f"{k}: {old.get(k)!r} -> {v!r}" for k, v in settings.items() if old.get(k) != v)  # fmt: skip
            raise ConfigError(f"--out {out} holds the predictions of another job ({path.name}: {what}); give another "
                              "--out, or delete it to start over")  # fmt: skip


def _inputs(cfg: PredictConfig) -> list[Path]:
    """The input files: ``cfg.input`` or the files of that folder (not _ or . names), in name order."""
    path = Path(cfg.input).expanduser().absolute()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if not p.name.startswith(("_", ".")))
        if not files:
            raise DataError(path, "no input files in the folder")
    elif path.exists():
        files = [path]
    else:
        raise DataError(path, "input file not found")
    for f in files:
        if f.suffix.lower() not in IN_FORMATS or not f.is_file():
            raise ConfigError(
                f"--input {f}: cannot tell its format; name it .csv, .tsv, .jsonl or .parquet"
            )
    return files


def _plan(
    rm: RunModel, cfg: PredictConfig, out: Path, files: list[Path], settings: dict
) -> list[dict]:
    """The pieces: each source's rows in runs of the piece size, read from the source itself
    (Parquet) or its staged copy (text, a split: written here once, checked as 'predict' checks)."""
    sources = []
    for i, f in enumerate(files or [None]):  # None: the split
        if f is not None and IN_FORMATS[f.suffix.lower()] == "parquet":
            try:
                meta = pq.ParquetFile(f)
            except Exception as e:  # pyarrow's ArrowInvalid and others: not a Parquet file
                raise DataError(f, f"not a readable Parquet file ({e})") from None
            missing = [c for c in rm.text_fields if c not in meta.schema_arrow.names]
            if missing:
                raise DataError(f, f"no column {', '.join(map(repr, missing))} (the task's text fields are "
                                f"{', '.join(rm.text_fields)})")  # fmt: skip
            if not meta.metadata.num_rows:
                raise DataError(f, "no rows to predict")
            sources.append((f, f, meta.metadata.num_rows))
            continue
        staged = out / STAGED / f"{i:05d}.parquet"
        if not staged.is_file():
            staged.parent.mkdir(exist_ok=True)
            try:
                _write(
                    staged,
                    (pa.table(b) for b in rm.batches(str(f) if f else None, cfg.split)),
                    settings,
                )
            except BaseException:
                with contextlib.suppress(OSError):  # a refused input leaves no empty folder
                    staged.parent.rmdir()
                raise
        sources.append(
            (f or f"split {cfg.split}", staged, pq.ParquetFile(staged).metadata.num_rows)
        )
    step = settings["piece_rows"]
    width = max(5, len(str(sum(-(-n // step) for *_, n in sources))))
    pieces = [{"source": str(source), "read": str(read), "start": a, "stop": min(a + step, n)}
              for source, read, n in sources for a in range(0, n, step)]  # fmt: skip
    for k, p in enumerate(pieces):
        p["part"] = f"part-{k:0{width}d}.parquet"
        p["path"] = str(out / p["part"])
    return pieces


def _fingerprint(cfg: PredictConfig, files: list[Path]) -> list | dict:
    if cfg.split is not None:
        return {"split": cfg.split}
    return [
        {"path": str(f), "bytes": (s := f.stat()).st_size, "mtime_ns": s.st_mtime_ns} for f in files
    ]


@common.holding("predictions")
def run(cfg: PredictConfig, out_dir: str, job: PredictJobConfig | None = None) -> dict:
    """The run's model over ``cfg``'s input into parts in ``out_dir`` (made absolute: every node's
    actors write there); returns the manifest, with ``this_run``."""
    job = job or PredictJobConfig()
    out = Path(out_dir).expanduser().absolute()
    rm = load_model(
        Path(cfg.run).expanduser().absolute(), cfg.model, cfg.seed, "cpu"
    )  # checked before any Ray
    if rm.FAMILY == "span":
        raise ConfigError(f"--ray: {rm.run} is a span run; its questions are predicted in one process "
                          "(bertvision predict without --ray)")  # fmt: skip
    files = _inputs(cfg) if cfg.input is not None else []
    step = -(-(job.piece_rows or rm.chunk) // rm.chunk) * rm.chunk
    settings = json.loads(json.dumps({
        "run": str(rm.run), "model": rm.model, "seed": cfg.seed, "members": [[m.name, m.weight] for m in rm.members],
        "columns": rm.columns(), "piece_rows": step, "input": _fingerprint(cfg, files)}))  # fmt: skip
    _refuse_other(out, settings)
    for tmp in [
        *out.glob(".part-*.tmp"),
        *(out / STAGED).glob(".*.tmp"),
    ]:  # a killed job's (the folder is held)
        tmp.unlink()
    pieces = _plan(rm, cfg, out, files, settings)
    pending = [
        p for p in pieces if not Path(p["path"]).is_file()
    ]  # a part that exists is complete, of these settings
    del rm
    (out / MANIFEST).unlink(missing_ok=True)  # a manifest says every part is there
    this_run = (
        common.on_ray(job.address, lambda: _run(cfg, job, pending, settings, out), record=out)
        if pending
        else None
    )
    manifest = {"status": "complete", "settings": settings, "rows": sum(p["stop"] - p["start"] for p in pieces),
                "pieces": [{k: p[k] for k in ("part", "source", "start", "stop")} for p in pieces], "this_run": this_run}  # fmt: skip
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def _run(
    cfg: PredictConfig, job: PredictJobConfig, pending: list[dict], settings: dict, out: Path
) -> dict:
    DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    pool = pool_plan(job.actors, job.gpus_per_actor, len(pending))
    device = cfg.device or pool["device"]
    print(f"actor pool: {pool['size']} {pool['device']} actor(s), {pool['num_gpus'] or 0} GPU and {pool['num_cpus']} CPU "
          f"each; {len(pending)} part(s) to write", flush=True)  # fmt: skip
    t0 = time.perf_counter()
    done = ray.data.from_items(pending, override_num_blocks=len(pending)).map_batches(
        PiecePredictor, compute=ActorPoolStrategy(size=pool["size"]), batch_format="pyarrow", batch_size=1,
        num_cpus=pool["num_cpus"], num_gpus=pool["num_gpus"] or None,
        fn_constructor_kwargs={"run": settings["run"], "model": settings["model"], "seed": cfg.seed, "device": device,
                               "threads": pool["threads"], "settings": settings})  # fmt: skip
    try:
        stats = list(done.iter_rows())  # one per part written
    except Exception as e:
        raise common.ray_error(e, "running the prediction job", out) from None
    seconds, rows = time.perf_counter() - t0, sum(int(s["rows"]) for s in stats)
    return {"parts": len(stats), "rows": rows, "seconds": round(seconds, 2), "rows_per_second": round(rows / seconds, 1),
            "device": device, "actors": pool["size"], "actor_seconds": round(sum(float(s["seconds"]) for s in stats), 2)}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    return common.main(
        argv, PredictConfig, PredictJobConfig, run, print_predict, __doc__, "ray_jobs.predict"
    )


if __name__ == "__main__":
    raise SystemExit(main())
