"""Ray Data extraction job: a task's splits through an actor pool of the library's extractor.

    ray job submit --working-dir . -- python -m ray_jobs.embed --task rte \\
        --checkpoint /mnt/bertvision/runs/rte/ft/checkpoint-e1 --out /mnt/bertvision/runs/rte/store
    bertvision embed --ray --task rte ...            # the same job on an in-process Ray

The driver reads and checks every split and opens the stores (`bertvision.embed.prepare`:
manifests, the shard plan, resume); Ray Data then makes one row per shard still to write,
gathers and tokenises its examples in CPU tasks (`tokenize_batch`; SQuAD windows are tokenised
by the driver, since their number fixes the plan), and maps an actor pool (`ActorPoolStrategy`)
of `ShardExtractor` over those rows: each actor loads the checkpoint once
(one GPU per actor where the cluster has GPUs, CPU actors otherwise), extracts a shard and writes
it through `StoreWriter.attach` (atomic rename, exactly the store format of `bertvision embed`).
The driver finishes each store (checksums, manifest) when all its shards are on disk. A killed
job resubmitted with the same arguments writes only the missing shards.

On several nodes ``--out`` must be shared storage (NFS, or a mounted blob container): actors on
every node write shards into it. A submitted job runs in Ray's temporary copy of the uploaded
working directory, deleted when Ray cleans up, so a relative ``--out`` is refused
(`job_paths`) unless ``--storage-root DIR`` says what to resolve it against; relative inputs
(``--checkpoint``, ``--data-dir``) are read from that copy and must be in it. Started alone
(no ``--address``, no ``$RAY_ADDRESS``), the job starts its own local Ray in a fresh temporary
folder, never one already running on the machine, and shuts it down when done.
Everything here is a thin layer; the work is in `bertvision`.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ray

from bertvision.config import EmbedConfig, add_arguments, from_arguments
from bertvision.embed import finish_split, prepare, write_output
from bertvision.errors import BertVisionError, ConfigError
from ray_jobs.local import on_ray


@dataclass(frozen=True)
class RayJobConfig:
    """The job's own settings, beside the `EmbedConfig` it shares with 'bertvision embed': the
    actor pool, the cluster, and where a relative --out goes. ('bertvision embed --ray' reaches
    this class through the module of the `bertvision.runners` entry point: the library never
    imports ray_jobs.)"""

    actors: int | None = None
    """Actor pool size (default: one per GPU, or one per 2 CPUs)."""
    gpus_per_actor: float | None = None
    """GPUs per actor (default: 1 where the cluster has GPUs; 0 forces CPU actors)."""
    address: str | None = None
    """Ray address (default: $RAY_ADDRESS, the job's cluster, else a local Ray)."""
    storage_root: str | None = None
    """Absolute folder that a relative --out is resolved against, e.g. /mnt/bertvision/runs."""

    def __post_init__(self):
        if self.actors is not None and self.actors <= 0:
            raise ConfigError("--actors must be positive")
        if self.gpus_per_actor is not None and not self.gpus_per_actor >= 0:
            raise ConfigError("--gpus-per-actor must be 0 or more")


class ShardExtractor:
    """Ray actor: one `HiddenStateExtractor` for the actor's life; one store shard per row."""

    def __init__(self, extractor: dict, stores: dict, batch_size: int, threads: int | None):
        import torch

        from bertvision.extract import HiddenStateExtractor
        from bertvision.store import StoreSpec, StoreWriter

        if threads:
            torch.set_num_threads(threads)
        self.extractor = HiddenStateExtractor(**extractor, batch_size=batch_size)
        self.writers = {split: StoreWriter.attach(s["path"], StoreSpec.from_dict(s["spec"]), s["rows"])
                        for split, s in stores.items()}  # fmt: skip
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, table):
        import pyarrow as pa

        stats = []
        for row in table.to_pylist():  # one row = one whole shard (its columns as lists)
            t0, tokens0 = time.perf_counter(), self.extractor.tokens_seen
            split, shard = row.pop("split"), row.pop("shard")
            row = {k: v for k, v in row.items() if v is not None}  # e.g. no labels in a test split
            write_output(self.writers[split], shard, self.extractor(row))
            stats.append({"split": split, "shard": shard, "rows": len(row["id"]),
                          "tokens": self.extractor.tokens_seen - tokens0,
                          "seconds": time.perf_counter() - t0, "node": self.node})  # fmt: skip
        return pa.Table.from_pylist(stats)


_COLUMNS: dict = {}


def _shard_rows(table, splits: dict, tokenizer: str | None, text_fields: list[str] | None, max_length: int,
                segments: bool = False):  # fmt: skip
    """Ray Data CPU task: (split, shard) rows -> one row per shard holding its examples, tokenised."""
    import pyarrow as pa

    from bertvision.extract import tokenize_batch

    out = []
    for row in table.to_pylist():
        plan = splits[row["split"]]
        key = plan["columns"].hex()
        if key not in _COLUMNS:  # each worker process fetches a split's columns once
            _COLUMNS[key] = ray.get(plan["columns"])
        cols = _COLUMNS[key]
        lo = row["shard"] * plan["shard_rows"]
        hi = min(lo + plan["shard_rows"], plan["rows"])
        batch = {k: list(v[lo:hi]) for k, v in cols.items()}
        if text_fields:  # sentence tasks: tokenise here, not in the (GPU) actor
            enc = tokenize_batch(batch, tokenizer, text_fields, max_length, segments=segments)
            for f in text_fields:
                del batch[f]
            batch.update({k: enc[k] for k in ("input_ids", "token_type_ids", "segments") if k in enc})
        else:  # span windows come tokenised; numpy offsets become nested lists for Arrow
            batch["offsets"] = [np.asarray(o).tolist() for o in batch["offsets"]]
        if "label" in batch:
            batch["label"] = [x.item() if hasattr(x, "item") else x for x in batch["label"]]
        out.append({"split": row["split"], "shard": row["shard"], "label": None, **batch})
    return pa.Table.from_pylist(out)


def pool_plan(actors: int | None, gpus_per_actor: float | None, shards: int, threads_per_actor: int = 2) -> dict:
    """Actor pool size and per-actor resources from the cluster (or the user's choice).

    GPU clusters: one actor per GPU. CPU only: one actor per ``threads_per_actor`` cores (torch
    threads split the cores; more actors than that only adds copies of the model), never more
    actors than shards to write. Actors ask for 1 logical CPU, leaving room for the read and
    tokenise tasks (an actor holding every CPU starves them and the job hangs).
    """
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    # An explicit --gpus-per-actor asks for GPU actors even when no GPU node is up yet: their
    # demand is what makes the autoscaler start one (clusters scale GPU workers from zero).
    if gpus_per_actor or (gpus >= 1 and gpus_per_actor != 0):
        per = gpus_per_actor or 1
        size = min(actors or max(1, int(gpus // per)), shards)
        return {"size": size, "num_gpus": per, "num_cpus": 1, "device": "cuda", "threads": None}
    single = _single_node()
    cores = (os.cpu_count() or 1) if single else int(resources.get("CPU", 1))
    size = max(1, min(actors or cores // threads_per_actor, shards))
    threads = max(1, cores // size) if single else threads_per_actor
    return {"size": size, "num_gpus": 0, "num_cpus": 1, "device": "cpu", "threads": threads}


def _single_node() -> bool:
    return len([n for n in ray.nodes() if n.get("Alive")]) == 1


def run(cfg: EmbedConfig, out_dir: str, job: RayJobConfig = RayJobConfig()) -> dict[str, dict]:
    """Embed the splits ``cfg`` names into ``out_dir`` on Ray; returns split -> manifest.

    ``cfg`` is resolved for the task's family by `prepare`, as in `bertvision.embed.embed`.
    ``out_dir`` is made absolute here, against this process's folder: the actors (on every node
    of a cluster) write into it. A submitted job checks its paths first (`job_paths`).
    """
    plan = prepare(cfg, Path(out_dir).expanduser().absolute())
    try:
        return on_ray(job.address, lambda: _run(cfg, job, plan))
    finally:
        plan.close()  # the store folders' locks


def _run(cfg: EmbedConfig, job: RayJobConfig, plan) -> dict[str, dict]:
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = sys.stderr.isatty()
    pool = pool_plan(job.actors, job.gpus_per_actor, max(1, len(plan.pending())))
    extractor = {**plan.extractor, "device": cfg.device or pool["device"]}
    print(f"actor pool: {pool['size']} {pool['device']} actor(s), {pool['num_gpus'] or 0} GPU and {pool['num_cpus']} CPU "
          f"each; {len(plan.pending())} shard(s) to write", flush=True)  # fmt: skip
    pending = plan.pending()
    t0, per_split = time.perf_counter(), {}
    if pending:
        sentence = plan.extractor["selection"] != "tokens" or plan.extractor["sentence_tokens"]  # text to tokenise
        splits = {p.name: {"columns": ray.put(p.columns), "shard_rows": p.writer.spec.shard_rows,
                           "rows": p.writer.total_rows} for p in plan.splits}  # fmt: skip
        stores = {p.name: {"path": str(p.writer.path), "spec": p.writer.spec.to_dict(), "rows": p.writer.total_rows}
                  for p in plan.splits}  # fmt: skip
        ds = ray.data.from_items([{"split": s, "shard": k} for s, k in pending], override_num_blocks=len(pending))
        # Two tokenise tasks in flight per actor keep the actors fed; more only start worker
        # processes (each importing transformers) that compete with the actors for CPU.
        ds = ds.map_batches(
            _shard_rows, batch_format="pyarrow", batch_size=1, num_cpus=0.25,
            compute=TaskPoolStrategy(size=2 * pool["size"]),
            fn_kwargs={"splits": splits, "tokenizer": plan.extractor["checkpoint"],
                       "text_fields": list(plan.extractor["text_fields"]) if sentence else None,
                       "max_length": plan.extractor["max_length"], "segments": plan.extractor["sentence_tokens"]},
        )  # fmt: skip
        done = ds.map_batches(
            ShardExtractor, compute=ActorPoolStrategy(size=pool["size"]), batch_format="pyarrow",
            batch_size=1, num_cpus=pool["num_cpus"], num_gpus=pool["num_gpus"] or None,
            fn_constructor_kwargs={"extractor": extractor, "stores": stores, "batch_size": cfg.batch_size,
                                   "threads": pool["threads"]},
        )  # fmt: skip
        for row in done.iter_rows():
            st = per_split.setdefault(row["split"], {"rows": 0, "tokens": 0, "nodes": {}, "actor_seconds": 0.0})
            st["rows"] += int(row["rows"])
            st["actor_seconds"] += float(row["seconds"])
            st["tokens"] += int(row["tokens"])
            st["nodes"][str(row["node"])] = st["nodes"].get(str(row["node"]), 0) + 1
    seconds = time.perf_counter() - t0
    manifests = {}
    for split in plan.splits:
        st = per_split.get(split.name)
        run_stats = None
        if st:  # the job's wall time covers all splits (they share the pool); rates are per job
            total_rows = sum(x["rows"] for x in per_split.values())
            total_tokens = sum(x["tokens"] for x in per_split.values())
            run_stats = {"rows": st["rows"], "seconds": round(seconds, 2), "job_rows": total_rows,
                         "rows_per_second": round(total_rows / seconds, 1),
                         "tokens_per_second": round(total_tokens / seconds, 1), "device": extractor["device"],
                         "runner": "ray", "actors": pool["size"], "shards_per_node": st["nodes"],
                         "actor_seconds": round(st["actor_seconds"], 2)}  # fmt: skip
        manifests[split.name] = finish_split(split, run_stats)
        print(f"{split.writer.path}: {manifests[split.name]['rows']} rows"
              + (f", job {run_stats['rows_per_second']} rows/s on {len(st['nodes'])} node(s)" if run_stats else
                 " (already complete)"), flush=True)  # fmt: skip
    return manifests


def build_parser() -> argparse.ArgumentParser:
    """The job's options: `EmbedConfig`'s (as 'bertvision embed'), --out, `RayJobConfig`'s."""
    p = argparse.ArgumentParser(
        prog="python -m ray_jobs.embed",
        description="Embed a task's splits with a Ray Data actor pool into the bertvision store "
        "format (one folder per split under OUT). Same options as 'bertvision embed', plus the pool "
        "and --storage-root. Submitted with 'ray job submit --working-dir .', the job runs in Ray's "
        "temporary copy of that folder: --out must be absolute (or relative to --storage-root), and "
        "relative inputs (--task file, --checkpoint folder, --data-dir) are read from that copy and "
        "must be among the uploaded files (files git ignores, such as runs/, are not uploaded). "
        "Errors print one line and exit 1 (input) or 3 (a failure while running).",
    )
    add_arguments(p, EmbedConfig, required=("task",))
    p.add_argument("--out", required=True, help="Store folder, an absolute path (shared storage on a cluster); each split goes to OUT/<split>. "
                   "A relative path is refused: a Ray job runs in a temporary copy of the working directory, deleted when Ray cleans up (see --storage-root).")  # fmt: skip
    add_arguments(p, RayJobConfig)
    return p


_TEMP_COPY = "a Ray job runs in a temporary copy of the working directory, deleted when Ray cleans up"


def _is_relative(path: str) -> bool:
    return not os.path.isabs(os.path.expanduser(path))


def job_paths(cfg: EmbedConfig, out_dir: str, job: RayJobConfig = RayJobConfig()) -> tuple[EmbedConfig, str]:
    """Check the job's paths before anything is read or written (ConfigError, exit status 1).

    The output must outlive the job: a relative ``--out`` would land in Ray's temporary copy of
    the working directory, so it is refused unless ``--storage-root`` (absolute) says what to
    resolve it against. Relative inputs are read from that copy, which holds only what was
    uploaded: one that is not there is refused rather than looked up (as a Hub id) or silently
    missed. Returns the config (its inputs are kept as given: they are read from the copy) and
    the absolute output folder.
    """
    root = job.storage_root
    if root is not None and _is_relative(root):
        raise ConfigError(f"--storage-root {root} is relative: {_TEMP_COPY}; give an absolute path on shared storage")
    if _is_relative(out_dir):
        if root is None:
            raise ConfigError(f"--out {out_dir} is relative: {_TEMP_COPY}; give an absolute path on shared storage, "
                              "or --storage-root DIR to resolve it against")  # fmt: skip
        out_dir = os.path.join(os.path.expanduser(root), out_dir)
    out_dir = os.path.normpath(os.path.expanduser(out_dir))
    checkpoint = cfg.checkpoint
    # A checkpoint string that can only be a path (not a Hub id 'name' or 'owner/name').
    path_like = bool(checkpoint) and (checkpoint.startswith(".") or checkpoint.count("/") > 1 or checkpoint.endswith("/"))
    for option, value, check in (("--checkpoint", checkpoint, path_like), ("--data-dir", cfg.data_dir, True)):
        if value and check and _is_relative(value) and not os.path.exists(value):
            raise ConfigError(f"{option} {value} is relative and not in the job's working directory ({os.getcwd()}): {_TEMP_COPY}, "
                              "holding only the uploaded files (not those git ignores, such as runs/); give an absolute path on shared storage")  # fmt: skip
    return cfg, out_dir


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(args)


def run_cli(args: argparse.Namespace) -> int:
    """Run the job on parsed options; returns the exit status (errors print one line)."""
    try:
        cfg, job = from_arguments(EmbedConfig, args), from_arguments(RayJobConfig, args)
        cfg, out_dir = job_paths(cfg, args.out, job)
        run(cfg, out_dir, job)
    except BertVisionError as e:
        print(f"bertvision: error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
