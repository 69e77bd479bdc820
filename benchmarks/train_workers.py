"""Head training and fine-tuning: the library loop against Ray Train with 1 and 2 workers, in one run.

    export BERTVISION_DATA=../shared/data
    # span heads on the SQuAD article-split token store (embedded first if missing)
    python benchmarks/train_workers.py heads --store runs/train-workers/squad-store --epochs 1 \\
        --out runs/train-workers/heads --json docs/bench/train_workers_heads.json
    # two workers against one, over 5 head seeds (a sentence store)
    python benchmarks/train_workers.py spread --store runs/tune-study/stsb/ft-mean --seeds 0 1 2 3 4 \\
        --out runs/train-workers/spread --json docs/bench/train_workers_spread.json
    # fine-tuning on RTE: library loop against Ray Train with 1 worker (3 rounds; then 1 thread)
    python benchmarks/train_workers.py finetune --task rte --epochs 1 --repeats 3 \\
        --out runs/train-workers/finetune --json docs/bench/train_workers_finetune.json

Every variant runs as users run it, a command in a fresh process (`bertvision train`,
`bertvision train --ray --workers N`, `bertvision finetune [--ray]`), one after another on an
otherwise quiet machine, with the same cores: the library loop with torch's default threads (all
cores), Ray Train with 1 worker of all cores, or 2 workers of half each. Throughput is counted
from what each run records: the training steps' seconds per epoch (`epoch_seconds`; fine-tuning:
`train_seconds`), so Ray's start-up and the per-epoch validation are left out and reported
apart, as each run's wall seconds. Memory: each process's peak resident set (`peak_rss_mb`, and
per Ray worker `peak_rss_mb_per_worker`) beside the store's size on disk.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "bertvision"]


def _run(args: list[str], log: Path, extra_env: dict | None = None) -> float:
    """Run a command (its output to ``log``); its wall seconds. A failure stops the benchmark."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a local Ray of its own
    env.update(extra_env or {})
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(args, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"failed ({proc.returncode}): {' '.join(args)}; see {log}")
    return wall


def _cores() -> int:
    return os.cpu_count() or 1


def variants(cores: int) -> dict[str, list[str]]:
    """name -> the extra options of that variant."""
    return {"library": [], "ray-1": ["--ray", "--workers", "1", "--cpus-per-worker", str(cores)],
            "ray-2": ["--ray", "--workers", "2", "--cpus-per-worker", str(cores / 2)]}  # fmt: skip


def ensure_squad_store(store: Path) -> None:
    """The SQuAD article split's token store of the bundled encoder (pretrained: the timing of a
    head epoch does not depend on the checkpoint), train / validation / test."""
    from bertvision import store as st

    if all(st.is_complete(store / s) for s in ("train", "validation", "test")):
        return
    _run([*CLI, "embed", "--task", "squad2-articles", "--selection", "tokens", "--splits", "train", "validation",
          "test", "--out", str(store)], store.parent / "embed.log")  # fmt: skip


def heads(args) -> dict:
    from bertvision import store as st

    store = Path(args.store)
    if args.embed_squad:
        ensure_squad_store(store)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name, extra in variants(_cores()).items():
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        wall = _run([*CLI, "train", "--store", str(store), "--seeds", "0", "--epochs", str(args.epochs), "--patience",
                     str(args.epochs), *args.train_args, *extra, "--out", str(folder)], out / f"{name}.log")  # fmt: skip
        m = json.loads((folder / "seed-0" / "metrics.json").read_text())
        rows[name] = {"wall_seconds": round(wall, 1), "epoch_seconds": m["epoch_seconds"], "metrics": m}
    train_rows = json.loads((out / "library" / "config.json").read_text())["train_rows"]
    for row in rows.values():
        row["rows_per_second"] = train_rows / row["epoch_seconds"]
    base = rows["library"]["rows_per_second"]
    for row in rows.values():
        row["throughput_vs_library"] = row["rows_per_second"] / base
    return {"store": str(store), "store_train_bytes": st.store_bytes(store / "train"), "train_rows": train_rows,
            "cores": _cores(), "epochs": args.epochs, "variants": rows}  # fmt: skip


def spread(args) -> dict:
    """5 head seeds with 1 worker (= the library loop) and with 2 workers: mean and spread."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for name in ("library", "ray-2"):
        folder = out / name
        shutil.rmtree(folder, ignore_errors=True)
        wall = _run([*CLI, "train", "--store", args.store, "--seeds", *map(str, args.seeds), *args.train_args,
                     *variants(_cores())[name], "--out", str(folder)], out / f"{name}.log")  # fmt: skip
        summary = json.loads((folder / "summary.json").read_text())
        result[name] = {"wall_seconds": round(wall, 1), "dev": summary.get("dev"), "validation": summary["validation"],
                        "per_seed_dev": [r.get("dev") for r in summary["runs"]]}  # fmt: skip
    return {"store": args.store, "seeds": args.seeds, "variants": result}


def finetune(args) -> dict:
    """The library loop and 1 Ray Train worker with all cores, ``--repeats`` rounds, each round
    one run of each, one after the other (this machine's speed drifts: the ratio is taken within
    a round); then both once with one thread (the library through OMP_NUM_THREADS=1, the worker
    with --cpus-per-worker 1), which leaves a core to Ray's own processes and so separates the
    training loop's cost from theirs."""
    import statistics

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    pairs = {"library": ([], {}), "ray-1": (variants(_cores())["ray-1"], {})}
    threads = {"library-1-thread": ([], {"OMP_NUM_THREADS": "1"}),
               "ray-1-thread": (["--ray", "--workers", "1", "--cpus-per-worker", "1"], {})}  # fmt: skip
    schedule = [(f"{name}-r{r}", name, spec) for r in range(args.repeats) for name, spec in pairs.items()]
    schedule += [(name, name, spec) for name, spec in threads.items()]
    rows: dict[str, list[dict]] = {}
    for run_name, name, (extra, env) in schedule:
        folder = out / run_name
        shutil.rmtree(folder, ignore_errors=True)
        wall = _run([*CLI, "finetune", "--task", args.task, "--epochs", str(args.epochs), *args.finetune_args,
                     *extra, "--out", str(folder)], out / f"{run_name}.log", env)  # fmt: skip
        metrics = json.loads((folder / "metrics.json").read_text())
        last = metrics[max(metrics, key=lambda k: metrics[k]["step"])]
        config = json.loads((folder / "config.json").read_text())
        rows.setdefault(name, []).append(
            {"wall_seconds": round(wall, 1), "train_seconds": last["train_seconds"], "step": last["step"],
             "examples_per_second": config["train_examples"] * args.epochs / last["train_seconds"],
             "validation": last["validation"], "dev": last.get("dev")})  # fmt: skip
    ratios = {"ray-1": [r["examples_per_second"] / b["examples_per_second"] for r, b in zip(rows["ray-1"], rows["library"], strict=True)],
              "ray-1-thread": [rows["ray-1-thread"][0]["examples_per_second"]
                               / rows["library-1-thread"][0]["examples_per_second"]]}  # fmt: skip
    summary = {name: {"throughput_vs_library": r, "mean": statistics.mean(r),
                      "std": statistics.stdev(r) if len(r) > 1 else 0.0} for name, r in ratios.items()}  # fmt: skip
    return {"task": args.task, "epochs": args.epochs, "cores": _cores(), "repeats": args.repeats, "runs": rows,
            "ratios": summary}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="mode", required=True)
    h = sub.add_parser("heads", help="epoch time of span (or any) heads: library, Ray Train 1 and 2 workers")
    h.add_argument("--store", required=True)
    h.add_argument("--embed-squad", action="store_true", help="embed the SQuAD article split into --store if missing")
    h.add_argument("--epochs", type=int, default=1)
    s = sub.add_parser("spread", help="head seeds with 1 and with 2 workers")
    s.add_argument("--store", required=True)
    s.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    f = sub.add_parser("finetune", help="fine-tuning: library loop and Ray Train with 1 worker")
    f.add_argument("--task", default="rte")
    f.add_argument("--epochs", type=float, default=1.0)
    f.add_argument("--repeats", type=int, default=3, help="rounds of (library, 1 worker) with all cores")
    for q in (h, s, f):
        q.add_argument("--out", required=True)
        q.add_argument("--json", default=None, help="also write the result here")
    args, rest = p.parse_known_args()
    args.train_args = args.finetune_args = rest  # passed through to every variant's command
    result = {"heads": heads, "spread": spread, "finetune": finetune}[args.mode](args)
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
