"""Ray Data extraction job: a task's splits through an actor pool of the library's extractor.

    ray job submit --working-dir . -- python -m ray_jobs.embed --task rte \\
        --checkpoint /mnt/bertvision/runs/rte/ft/checkpoint-e1 --out /mnt/bertvision/runs/rte/store
    bertvision embed --ray --task rte ...            # the same job on an in-process Ray

The driver opens the stores (`bertvision.embed.prepare`); Ray Data tokenises each shard's
examples in CPU tasks and an actor pool of `ShardExtractor` (a GPU each where there are GPUs)
writes the shards (`StoreWriter.attach`); the driver finishes the stores. A job resubmitted writes
only the missing shards. On several nodes ``--out`` must be shared storage (`outdir.job_paths`).
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import ray
import torch
from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

from bertvision.config import EmbedConfig, RayJobConfig
from bertvision.embed import finish_split, prepare, write_output
from bertvision.extract import HiddenStateExtractor, tokenize_batch
from bertvision.printing import print_embed
from bertvision.store import StoreSpec, StoreWriter
from ray_jobs import common


class ShardExtractor:
    """Ray actor: one `HiddenStateExtractor` for the actor's life; one store shard per row."""

    def __init__(self, extractor: dict, stores: dict, batch_size: int, threads: int | None):
        if threads:
            torch.set_num_threads(threads)
        self.extractor = HiddenStateExtractor(**extractor, batch_size=batch_size)
        self.writers = {split: StoreWriter.attach(s["path"], StoreSpec.from_dict(s["spec"]), s["rows"]) for split, s in stores.items()}
        self.node = ray.get_runtime_context().get_node_id()

    def __call__(self, table):
        stats = []
        for row in table.to_pylist():  # one row = one whole shard (its columns as lists)
            t0, tokens0, split, shard = time.perf_counter(), self.extractor.tokens_seen, row.pop("split"), row.pop("shard")
            row = {k: v for k, v in row.items() if v is not None}  # e.g. no labels in a test split
            write_output(self.writers[split], shard, self.extractor(row))
            stats.append({"split": split, "shard": shard, "rows": len(row["id"]), "tokens": self.extractor.tokens_seen - tokens0,
                          "seconds": time.perf_counter() - t0, "node": self.node})  # fmt: skip
        return pa.Table.from_pylist(stats)


_COLUMNS: dict = {}


def _shard_rows(table, splits: dict, tokenizer: str | None, text_fields: list[str] | None, max_length: int, segments: bool):
    """Ray Data CPU task: (split, shard) rows -> one row per shard holding its examples, tokenised."""
    out = []
    for row in table.to_pylist():
        plan = splits[row["split"]]
        key = plan["columns"].hex()
        if key not in _COLUMNS:  # each worker process fetches a split's columns once
            _COLUMNS[key] = ray.get(plan["columns"])
        lo = row["shard"] * plan["shard_rows"]
        batch = {k: list(v[lo:min(lo + plan["shard_rows"], plan["rows"])]) for k, v in _COLUMNS[key].items()}
        if text_fields:  # sentence tasks: tokenise here, not in the (GPU) actor
            enc = tokenize_batch(batch, tokenizer, text_fields, max_length, segments=segments)
            batch = {k: v for k, v in batch.items() if k not in text_fields} | {
                k: enc[k] for k in ("input_ids", "token_type_ids", "segments") if k in enc}  # fmt: skip
        else:  # span windows come tokenised; numpy offsets become nested lists for Arrow
            batch["offsets"] = [np.asarray(o).tolist() for o in batch["offsets"]]
        if "label" in batch:
            batch["label"] = [x.item() if hasattr(x, "item") else x for x in batch["label"]]
        out.append({"split": row["split"], "shard": row["shard"], "label": None, **batch})
    return pa.Table.from_pylist(out)


def pool_plan(actors: int | None, gpus_per_actor: float | None, shards: int, threads_per_actor: int = 2) -> dict:
    """Actor pool size and per-actor resources: one actor per GPU, or per ``threads_per_actor``
    cores (more only copies the model), never more than shards; 1 logical CPU each, leaving room
    for the tokenise tasks (actors holding every CPU starve them: a hang). An explicit
    --gpus-per-actor asks for GPU actors before a GPU node is up: their demand starts one."""
    resources = ray.cluster_resources()
    gpus = resources.get("GPU", 0)
    if gpus_per_actor or (gpus >= 1 and gpus_per_actor != 0):
        per = gpus_per_actor or 1
        size = min(actors or max(1, int(gpus // per)), shards)
        return {"size": size, "num_gpus": per, "num_cpus": 1, "device": "cuda", "threads": None}
    single = len([n for n in ray.nodes() if n.get("Alive")]) == 1
    cores = (os.cpu_count() or 1) if single else int(resources.get("CPU", 1))
    size = max(1, min(actors or cores // threads_per_actor, shards))
    threads = max(1, cores // size) if single else threads_per_actor
    return {"size": size, "num_gpus": 0, "num_cpus": 1, "device": "cpu", "threads": threads}


def run(cfg: EmbedConfig, out_dir: str, job: RayJobConfig | None = None) -> dict[str, dict]:
    """Embed the splits ``cfg`` names into ``out_dir`` (made absolute: every node's actors write
    there) on Ray; returns split -> manifest with ``this_run``, as `bertvision.embed.embed`."""
    job = job or RayJobConfig()
    with prepare(cfg, Path(out_dir).expanduser().absolute()) as plan:  # the store folders locked till the end
        return common.on_ray(job.address, lambda: _run(cfg, job, plan))


def _run(cfg: EmbedConfig, job: RayJobConfig, plan) -> dict[str, dict]:
    DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    pending, x = plan.pending(), plan.extractor
    pool = pool_plan(job.actors, job.gpus_per_actor, max(1, len(pending)))
    device = cfg.device or pool["device"]
    print(f"actor pool: {pool['size']} {pool['device']} actor(s), {pool['num_gpus'] or 0} GPU and {pool['num_cpus']} CPU "
          f"each; {len(pending)} shard(s) to write", flush=True)  # fmt: skip
    t0, stats = time.perf_counter(), []
    if pending:
        splits = {p.name: {"columns": ray.put(p.columns), "shard_rows": p.writer.spec.shard_rows, "rows": p.writer.total_rows} for p in plan.splits}
        # Two tokenise tasks in flight per actor keep the actors fed; more only start worker
        # processes (each importing transformers) that compete with the actors for CPU.
        done = ray.data.from_items([{"split": s, "shard": k} for s, k in pending], override_num_blocks=len(pending)).map_batches(
            _shard_rows, batch_format="pyarrow", batch_size=1, num_cpus=0.25, compute=TaskPoolStrategy(size=2 * pool["size"]),
            fn_kwargs={"splits": splits, "tokenizer": x["checkpoint"], "max_length": x["max_length"], "segments": x["sentence_tokens"],
                       # sentence examples hold their text to tokenise; span windows come tokenised
                       "text_fields": [f for f in x["text_fields"] if f in plan.splits[0].columns] or None},
        ).map_batches(
            ShardExtractor, compute=ActorPoolStrategy(size=pool["size"]), batch_format="pyarrow", batch_size=1,
            num_cpus=pool["num_cpus"], num_gpus=pool["num_gpus"] or None,
            fn_constructor_kwargs={"extractor": {**x, "device": device}, "batch_size": cfg.batch_size, "threads": pool["threads"],
                                   "stores": {p.name: {"path": str(p.writer.path), "spec": p.writer.spec.to_dict(), "rows": p.writer.total_rows} for p in plan.splits}},
        )  # fmt: skip
        stats = list(done.iter_rows())  # one per shard written
    seconds, manifests = time.perf_counter() - t0, {}
    rows, tokens = sum(int(r["rows"]) for r in stats), sum(int(r["tokens"]) for r in stats)
    for split in plan.splits:  # the job's wall time covers all splits (they share the pool): rates are the job's
        mine = [r for r in stats if r["split"] == split.name]
        run = {"rows": sum(int(r["rows"]) for r in mine), "seconds": round(seconds, 2), "job_rows": rows,
               "rows_per_second": round(rows / seconds, 1), "tokens_per_second": round(tokens / seconds, 1),
               "device": device, "runner": "ray", "actors": pool["size"],
               "shards_per_node": dict(Counter(str(r["node"]) for r in mine)),
               "actor_seconds": round(sum(float(r["seconds"]) for r in mine), 2)} if mine else None  # fmt: skip
        manifests[split.name] = {**finish_split(split, run), "this_run": run}
    return manifests


def main(argv: list[str] | None = None) -> int:
    return common.main(argv, EmbedConfig, RayJobConfig, run, print_embed, __doc__, "ray_jobs.embed")


if __name__ == "__main__":
    raise SystemExit(main())
