"""Prediction throughput of a finished run on one split: extraction, local predict, Ray Data job.

    python benchmarks/predict_throughput.py --run runs/rte --split dev [--repeats 2] [--json FILE]

All three read the same split of the run's task, on the same machine, in one run:

extraction: `bertvision.embed.embed` of the split with the run's checkpoint, selection and batch
            size into a temporary store (what a stored split costs; no head)
predict:    `bertvision.predict.predict` in this process (the run's model loaded, then the split
            streamed through tokenise, checkpoint, heads), to a Parquet file
ray:        `bertvision predict RUN --ray`, a fresh process as a user starts it (Ray and actor
            start-up included; its own rate inside the job is printed too)

Runs alternate (extraction, predict, ray, extraction, ...) and the best of --repeats counts for
each. Prints a markdown table row (rows/s) and the details as JSON.
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
from bertvision.predict import load_model, predict
from bertvision.store import read_manifest

sys.path.insert(0, str(Path(__file__).parent))
from extract_throughput import best_of  # noqa: E402


def main():
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--run", required=True, help="a folder written by 'bertvision run'")
    p.add_argument("--split", default="dev", help="a split of the run's task (default: dev)")
    p.add_argument("--model", default=None, choices=("ensemble", "head", "encoder"))
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args()
    rm = load_model(args.run, args.model)
    selection = (
        rm.extractor.selection
        if isinstance(rm.extractor.selection, str)
        else rm.extractor.selection[0]
    )
    store = read_manifest(Path(args.run) / "store" / selection / "train")
    tmp = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    cli = str(Path(sys.executable).parent / "bertvision")
    rows = {}

    def extraction():
        shutil.rmtree(tmp / "store", ignore_errors=True)
        cfg = EmbedConfig(task=rm.config["task"], data_dir=rm.config["data_dir"], checkpoint=store["checkpoint"],
                          splits=(args.split,), selection=selection, max_length=store["max_length"],
                          batch_size=rm.extractor.batch_size)  # fmt: skip
        rows["extraction"] = embed(cfg, tmp / "store")[args.split]["rows"]

    def local():
        rows["predict"] = predict(
            args.run, None, args.split, str(tmp / "local.parquet"), args.model
        )["rows"]

    def ray_job():
        shutil.rmtree(tmp / "ray", ignore_errors=True)
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
        subprocess.run([cli, "predict", args.run, "--ray", "--split", args.split, "--out", str(tmp / "ray"),
                        *(["--model", args.model] if args.model else [])], check=True, capture_output=True, env=env)  # fmt: skip
        rows["ray"] = json.loads((tmp / "ray" / "_manifest.json").read_text())["rows"]

    loops = {"extraction": extraction, "predict": local, "ray": ray_job}
    best, _ = best_of(loops, args.repeats)
    inside = json.loads((tmp / "ray" / "_manifest.json").read_text())["this_run"]
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
    res = {"machine": machine, "torch": torch.__version__, "run": args.run, "split": args.split, "model": rm.model,
           "rows": rows["predict"], "loops": {k: {"seconds": round(s, 2), "rows_per_s": round(rows[k] / s, 1)} for k, s in best.items()},
           "ray_job_inside": {k: inside[k] for k in ("seconds", "rows_per_second", "actors", "device")}}  # fmt: skip
    shutil.rmtree(tmp, ignore_errors=True)
    print(
        "| machine | run / split | rows | extraction rows/s | predict rows/s | Ray job rows/s (inside the job) |"
    )
    print("|---|---|---|---|---|---|")
    print(f"| {machine} | {args.run} / {args.split} ({rm.model}) | {rows['predict']} | {res['loops']['extraction']['rows_per_s']} "
          f"| {res['loops']['predict']['rows_per_s']} | {res['loops']['ray']['rows_per_s']} ({inside['rows_per_second']}) |")  # fmt: skip
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
