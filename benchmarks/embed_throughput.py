"""Embedding throughput, end to end into the store: naive loop, library loop, Ray Data job.

    python benchmarks/embed_throughput.py [--task rte] [--split train] [--repeats 2] [--json FILE]

All three write (or, for the naive loop, produce) every layer's CLS state of the same examples
with the bundled encoder, on the same machine, in one run, at equal cores (the Ray job runs on an
in-process Ray over this machine's cores, its actors sharing them):

naive:   fp32, every batch padded to max_length (128), batch 32, no sorting, no store
library: `bertvision.embed.embed` (length-sorted batches, dynamic padding, SDPA) into the store
ray:     `ray_jobs.embed` (Ray Data: CPU tokenise tasks, an ActorPoolStrategy of extractors
         writing the store's shards), started and timed the way a user starts it
         (`bertvision embed --ray`, a fresh process: Ray start-up and actor start-up included)

Runs alternate (naive, library, ray, naive, ...) and the best of --repeats counts for each.
Goals (docs/BENCHMARKS.md): library >= 3x naive; the Ray job >= 80% of the library loop.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from bertvision.embed import EmbedConfig, embed
from bertvision.encoders import tokenize
from bertvision.extract import HiddenStateExtractor
from bertvision.tasks import get_task

sys.path.insert(0, str(Path(__file__).parent))
from extract_throughput import best_of, naive_loop  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="rte")
    p.add_argument("--split", default="train")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--loops", nargs="+", choices=("naive", "library", "ray"), default=["naive", "library", "ray"],
                   help="which loops to run (default: all three)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    split = get_task(args.task).load(args.split)
    n = len(split)
    ex = HiddenStateExtractor(None, split.task.text_fields)
    enc = tokenize(ex.tokenizer, split.texts[0], split.texts[1] if len(split.texts) > 1 else None, max_length=128)
    tokens = int(sum(len(x) for x in enc["input_ids"]))
    tmp = Path(tempfile.mkdtemp(prefix="embed-bench-"))
    cli = str(Path(sys.executable).parent / "bertvision")

    def library():
        shutil.rmtree(tmp / "lib", ignore_errors=True)
        embed(EmbedConfig(task=args.task, splits=(args.split,)), tmp / "lib")

    def ray_job():
        shutil.rmtree(tmp / "ray", ignore_errors=True)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        subprocess.run([cli, "embed", "--ray", "--task", args.task, "--splits", args.split, "--out", str(tmp / "ray")],
                       check=True, capture_output=True, env=env)  # fmt: skip

    loops = {"naive": lambda: naive_loop(ex, split.texts, 128), "library": library, "ray": ray_job}
    loops = {k: v for k, v in loops.items() if k in args.loops}
    best, _ = best_of(loops, args.repeats)
    ray_run = {}
    if "ray" in loops:
        ray_run = json.loads((tmp / "ray" / args.split / "_manifest.json").read_text())["extra"]["last_run"]
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                      f"{torch.get_num_threads()} torch threads", "torch": torch.__version__,
           "task": args.task, "split": args.split, "examples": n, "mean_tokens": round(tokens / n, 1),
           "loops": {}, "ray_job_inside": {k: ray_run[k] for k in ("seconds", "rows_per_second", "actors", "actor_seconds") if k in ray_run}}  # fmt: skip
    for name, seconds in best.items():
        res["loops"][name] = {"seconds": round(seconds, 2), "seq_per_s": round(n / seconds, 1),
                              "tokens_per_s": round(tokens / seconds, 1),
                              **({"speedup_vs_naive": round(best["naive"] / seconds, 2)} if "naive" in best else {})}  # fmt: skip
    if "ray" in best and "library" in best:
        res["ray_vs_library"] = round(best["library"] / best["ray"], 3)
    shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
