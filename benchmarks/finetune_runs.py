"""Fine-tuning runs of a study (see docs/RESULTS.md): run before `study.py`.

    python benchmarks/finetune_runs.py --task rte --out runs/study/rte [--seeds 0 1 2]

Per seed: full fine-tuning (3 epochs; the baseline) and partial fine-tuning (a 1-epoch schedule
with a checkpoint after 0.3 epochs). A run whose metrics.json exists is skipped (resume).
"""

import argparse
import json
import time
from pathlib import Path

from bertvision.config import FinetuneConfig
from bertvision.finetune import finetune

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--out", required=True, help="study folder")
p.add_argument("--task", default="rte", help="task name (default: rte)")
p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
args = p.parse_args()

for seed in args.seeds:
    for name, epochs, save_at in (("full", 3.0, ()), ("partial", 1.0, (0.3,))):
        out = Path(args.out) / f"ft-{name}-seed{seed}"
        if (out / "metrics.json").is_file():
            print(f"skip {out} (done)")
            continue
        t0 = time.perf_counter()
        res = finetune(FinetuneConfig(task=args.task, epochs=epochs, save_at=save_at, seed=seed), out)
        wall = time.perf_counter() - t0
        (out / "wall_seconds.json").write_text(json.dumps({"wall_seconds": wall}))
        print(out, f"{wall:.0f}s", json.dumps({k: v.get("dev") for k, v in res.checkpoints.items()}))
