"""Accuracy cost of the opt-in int8 extraction: heads on int8 stores against fp32 stores of the
same checkpoints, same head seeds, same validation carve.

    python benchmarks/int8_cost.py --out runs/study/rte [--fraction 1] [--seeds 0 1 2]

Needs the fine-tuning runs of `finetune_runs.py` and the fp32 stores and heads of `study.py`.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from bertvision.config import HeadTrainConfig
from bertvision.embed import EmbedConfig, embed
from bertvision.metrics import mean_std
from bertvision.train import train_heads

p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
p.add_argument("--out", required=True, help="study folder")
p.add_argument("--task", default="rte", help="task (default: rte)")
p.add_argument("--fraction", default="1", help="checkpoint fraction of the partial runs (default: 1)")
p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
args = p.parse_args()
root = Path(args.out)
fp32, int8, seconds = [], [], []
for seed in args.seeds:
    ckpt = root / f"ft-partial-seed{seed}" / f"checkpoint-e{args.fraction}"
    store = root / f"emb-e{args.fraction}-seed{seed}-int8"
    t0 = time.perf_counter()
    embed(EmbedConfig(task=args.task, checkpoint=str(ckpt), splits=("train", "dev"), quantize="int8"), store)
    seconds.append(time.perf_counter() - t0)
    summ = train_heads(HeadTrainConfig(store=str(store), seeds=(0, 1, 2)), root / f"heads-e{args.fraction}-seed{seed}-int8")
    ref = json.loads((root / f"heads-e{args.fraction}-seed{seed}" / "summary.json").read_text())
    metric = next(iter(summ["dev"]))
    int8 += [r["dev"][metric] for r in summ["runs"]]
    fp32 += [r["dev"][metric] for r in ref["runs"]]
diff = np.array(int8) - np.array(fp32)
print(json.dumps({"task": args.task, "metric": metric, "runs": len(diff),
                  "fp32_dev": list(mean_std(fp32).values()), "int8_dev": list(mean_std(int8).values()),
                  "paired_difference": list(mean_std(diff).values()),
                  "int8_embed_seconds_per_store": float(np.mean(seconds))}, indent=2))  # fmt: skip
