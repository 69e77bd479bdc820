"""`bertvision run` on several tasks, one after another, and their results as one table.

    python benchmarks/pipeline_results.py --runs runs/results --tasks rte mrpc cola stsb wnli
    python benchmarks/pipeline_results.py --runs runs/results --tasks sst2 -- --train-examples 10000
    python benchmarks/pipeline_results.py --runs runs/results --collect-only --json docs/bench/pipeline_results.json

Each task runs as ``bertvision run --task T --out RUNS/T`` plus the options after ``--`` and
the task's own entry in ``TASK_ARGS`` (a rerun reuses finished stages, so an interrupted batch
goes on where it stopped). Then every run folder under RUNS is read (`bertvision.report`) and
printed as a Markdown table: each method's dev scores (mean ± std over seeds), its wall time and
device time, and the headline in words; ``--json`` keeps the rows.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

# Options a task needs beyond the defaults: SST-2's train split (67k) is cut to 10,000 training
# examples, as in the search study (docs/RESULTS.md); the data-efficiency runs add --fractions.
FRACTIONS = ["--fractions", "0.1", "0.25", "0.5"]
TASK_ARGS = {
    "rte": FRACTIONS,
    "sst2": ["--train-examples", "10000", *FRACTIONS],
}


def run_task(task: str, runs: Path, extra: list[str]) -> float:
    cmd = [str(Path(sys.executable).parent / "bertvision"), "run", "--task", task, "--out", str(runs / Path(task).stem),
           *TASK_ARGS.get(task, []), *extra]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def table(runs: Path) -> tuple[str, list[dict]]:
    from bertvision.report import collect, headline, results_rows

    lines, rows = [], []
    for run in sorted(p.parent for p in runs.glob("*/pipeline.json")):
        c = collect(run)
        split = c["evals"][0]
        for r in results_rows(c):
            cells = r["cells"][split]
            score = " / ".join("–" if v["mean"] is None else f"{v['mean']:.1f}" + (f" ± {v['std']:.1f}" if v["std"] is not None and r["n"] != 1 else "")
                               for v in cells.values())  # fmt: skip
            rows.append({"task": c["spec"]["name"], "split": split, "metrics": c["metrics"], "method": r["name"],
                         "cells": cells, "n": r["n"], "wall_seconds": r["wall"], "device_seconds": r["device"],
                         "bytes": r["bytes"], "parameters": r["params"]})  # fmt: skip
            wall = "–" if r["wall"] is None else f"{r['wall']:.0f}"
            device = "–" if r["device"] is None else f"{r['device']:.0f}"
            lines.append(f"| {c['spec']['name']} | {r['name']} | {split} {' / '.join(c['metrics'])} | {score} | {r['n']} | {wall} | {device} |")
        rows.append({"task": c["spec"]["name"], "headline": headline(run)})
    head = "| task | method | metric | score (%) | runs | wall s | device s |\n|---|---|---|---|---|---|---|"
    return head + "\n" + "\n".join(lines), rows


def main() -> int:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", required=True, help="folder of run folders (one per task)")
    p.add_argument("--tasks", nargs="*", default=[], help="tasks (names or user task configs) to run first")
    p.add_argument("--collect-only", action="store_true", help="only read the runs already there")
    p.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = p.parse_args(argv)
    runs = Path(args.runs)
    if not args.collect_only:
        for task in args.tasks:
            print(f"{task}: {run_task(task, runs, extra):.0f} s", flush=True)
    text, rows = table(runs)
    print(text)
    for r in rows:
        if "headline" in r:
            print(f"\n{r['task']}: {r['headline']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
