"""Tune's own cost: how much of a head search's time its trials spend in training steps, on one
Ray node and on two, in one run on the same store.

    BERTVISION_DATA=../shared/data python benchmarks/tune_cost.py [--store runs/demo/store]
        [--trials 24] [--max-concurrent 2] [--label before] [--json docs/bench/tune_cost.json]
        [-- extra options of python -m ray_jobs.tune]
    python benchmarks/tune_cost.py --summarise SEARCH [SEARCH ...] [--markdown]   # finished searches

The store is a real one of the bundled encoder (`make run` leaves runs/demo/store; without it
the script fine-tunes 0.3 epoch on RTE and embeds train and dev into a temporary folder). The
same search (``python -m ray_jobs.tune``, same seed, --trials, --max-concurrent, 1 CPU per
trial) runs twice:

- one node: the job's own local Ray (no RAY_ADDRESS);
- two nodes: a head (``ray start --head``) and a worker (``ray start --address``) on this
  machine, each with ``--max-concurrent / 2`` CPUs, token authentication, started and stopped by
  `tests/ray_cluster.py` (only what it started), the job attached with RAY_ADDRESS.

Per trial, trial.json's ``timing`` (`bertvision.search.run_trial`) gives the time from entering
the trial function to the first training step, the training steps' seconds and the trial's
wall seconds (entered to its last report); ``node`` gives the placement. Reported per search:

- ``to_first_step_s``: median (and max) from a trial's start to its first training step;
- ``train_share_in_trial``: sum of training seconds / sum of trial wall seconds;
- ``train_share_of_slots``: sum of training seconds / (search span x --max-concurrent): the
  search span runs from the first trial's start to the last trial's last report, so this also
  counts what happens outside the trial functions (Tune scheduling, HyperOpt, actor start,
  the with_parameters fetch, the last epoch's checkpoint);
- ``trials_per_hour`` over the search span, and the job's wall seconds (Ray start-up included);
- ``trials_per_node``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import ray_cluster as rc  # noqa: E402

BIN = Path(sys.executable).parent


def make_store(folder: Path) -> Path:
    """A store of the bundled encoder fine-tuned 0.3 epoch on RTE (train and dev)."""
    cli = str(BIN / "bertvision")
    subprocess.run([cli, "finetune", "--task", "rte", "--epochs", "0.3", "--out", str(folder / "ft")], check=True)
    store = folder / "store"
    subprocess.run([cli, "embed", "--task", "rte", "--checkpoint", str(folder / "ft" / "checkpoint-e0.3"),
                    "--splits", "train", "dev", "--out", str(store)], check=True)  # fmt: skip
    return store


def search(store: Path, out: Path, args, env: dict) -> dict:
    cmd = [sys.executable, "-m", "ray_jobs.tune", "--stores", str(store), "--trials", str(args.trials),
           "--max-concurrent", str(args.max_concurrent), "--cpus-per-trial", "1", "--out", str(out), *args.extra]  # fmt: skip
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
    wall = time.time() - t0
    if proc.returncode:
        raise SystemExit(f"search failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return summarise(out, args, wall, cmd)


def summarise(out: Path, args, job_wall: float, cmd: list[str]) -> dict:
    trials = [json.loads(p.read_text()) for p in sorted(out.glob("*/trial.json"))]
    timing = [t["timing"] for t in trials]
    start = min(t["entered"] for t in timing)
    end = max(t["entered"] + t["wall_seconds"] for t in timing)
    span = end - start
    train, wall = sum(t["train_seconds"] for t in timing), sum(t["wall_seconds"] for t in timing)
    first = [t["to_first_step_s"] for t in timing]
    nodes: dict[str, int] = {}
    for t in trials:
        nodes[t["node"]] = nodes.get(t["node"], 0) + 1
    return {
        "command": " ".join(cmd[1:]), "trials": len(trials), "epochs": sum(t["epochs"] for t in timing),
        "job_wall_s": round(job_wall, 2), "search_span_s": round(span, 2),
        "to_first_step_s": {"median": round(statistics.median(first), 3), "max": round(max(first), 3),
                            "over_1s": sorted(round(f, 3) for f in first if f > 1)},
        "train_seconds": round(train, 2), "trial_wall_seconds": round(wall, 2),
        "train_share_in_trial": round(train / wall, 3),
        "train_share_of_slots": round(train / (span * args.max_concurrent), 3),
        "outside_trials_share_of_slots": round(1 - wall / (span * args.max_concurrent), 3),
        "trials_per_hour": round(len(trials) / span * 3600, 1),
        "median_trial_wall_s": round(statistics.median(t["wall_seconds"] for t in timing), 3),
        "median_trial_train_s": round(statistics.median(t["train_seconds"] for t in timing), 3),
        "trials_per_node": dict(sorted(nodes.items(), key=lambda kv: -kv[1])),
    }  # fmt: skip


MARKDOWN_HEAD = (
    "| search | trials | epochs | span (s) | start to first step, median / max (s) | training / trial wall "
    "| training / slots | trials per hour | median trial wall (s) |\n|---|---|---|---|---|---|---|---|---|"
)


def markdown_row(folder: str, s: dict) -> str:
    """One search's figures as a row of MARKDOWN_HEAD's table, named by the last two folders."""
    name = " ".join(Path(folder).absolute().parts[-2:])
    first = s["to_first_step_s"]
    cells = [name, s["trials"], s["epochs"], f"{s['search_span_s']:.0f}", f"{first['median']:.3f} / {first['max']:.2f}",
             f"{s['train_share_in_trial']:.2f}", f"{s['train_share_of_slots']:.2f}", f"{s['trials_per_hour']:,.0f}",
             f"{s['median_trial_wall_s']:.2f}"]  # fmt: skip
    return "| " + " | ".join(str(c) for c in cells) + " |"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--store", default=str(REPO / "runs" / "demo" / "store"))
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--max-concurrent", type=int, default=2)
    p.add_argument("--label", default="run")
    p.add_argument("--json", default=None, help="write (or add this --label to) this JSON file")
    p.add_argument("--summarise", nargs="+", metavar="SEARCH", default=None,
                   help="only print these finished search folders' figures (e.g. benchmarks/tune_study.py's tune-ft)")
    p.add_argument("--markdown", action="store_true", help="with --summarise: docs/BENCHMARKS.md's table rows")
    p.add_argument("extra", nargs="*", help="after --: more options of python -m ray_jobs.tune")
    args = p.parse_args()
    if args.summarise:
        if args.markdown:
            print(MARKDOWN_HEAD)
        for folder in args.summarise:
            s = summarise(Path(folder), args, 0.0, ["", folder])
            print(markdown_row(folder, s) if args.markdown else json.dumps({k: v for k, v in s.items() if k != "job_wall_s"}))
        return
    tmp = Path(tempfile.mkdtemp(prefix="bvtc-", dir="/tmp"))
    nodes = []
    try:
        store = Path(args.store).absolute()
        if not (store / "train" / "_manifest.json").is_file():
            store = make_store(tmp)
        result = {"label": args.label, "date": datetime.date.today().isoformat(), "store": str(store),
                  "machine": f"{platform.node()}: {os.cpu_count()} CPUs, Python {platform.python_version()}",
                  "trials": args.trials, "max_concurrent": args.max_concurrent, "extra": args.extra}  # fmt: skip
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        result["one_node"] = search(store, tmp / "one" / "search", args, env)
        print(json.dumps(result["one_node"], indent=1), flush=True)

        token = rc.write_token(tmp / "token")
        cpus = max(1, args.max_concurrent // 2)
        head = rc.start_head(rc.short_dir(tmp, "h"), token, num_cpus=cpus, dashboard=False)
        nodes.append(head)
        nodes.append(rc.start_worker(head, rc.short_dir(tmp, "w"), token, num_cpus=cpus))
        result["two_nodes"] = search(store, tmp / "two" / "search", args, {**head.env, "RAY_ADDRESS": head.gcs})
        result["two_nodes"]["cpus_per_node"] = cpus
        print(json.dumps(result["two_nodes"], indent=1), flush=True)
    finally:
        for node in reversed(nodes):
            node.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        path = Path(args.json)
        runs = json.loads(path.read_text()) if path.is_file() else {}
        runs[args.label] = result
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
