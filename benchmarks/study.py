"""A study (docs/RESULTS.md): full fine-tuning against partial fine-tuning + AdapterPooler.

    python benchmarks/finetune_runs.py --out runs/study/rte      # fine-tuning runs first
    python benchmarks/study.py --out runs/study/rte              # embed, heads, table

For every fine-tuning seed: the encoder alone after 3 epochs (the baseline), after 0.3 and 1
epoch of a 1-epoch schedule, and AdapterPooler heads (several head seeds) on the embeddings of
those checkpoints; plus heads on the pretrained encoder (no fine-tuning). Selection uses the
validation part carved from train; dev is scored once per run. Stages already done are reused.
"""

import argparse
import json
import time
from pathlib import Path

from bertvision.config import HeadTrainConfig
from bertvision.embed import EmbedConfig, embed
from bertvision.metrics import mean_std as spread
from bertvision.train import train_heads


def embed_once(task, checkpoint, out: Path) -> float:
    manifests = embed(EmbedConfig(task=task, checkpoint=checkpoint, splits=("train", "dev")), out)
    return sum(m["extra"]["last_run"]["seconds"] for m in manifests.values())


def heads_once(store: Path, out: Path, head_seeds) -> dict:
    if (out / "summary.json").is_file():
        return json.loads((out / "summary.json").read_text())
    return train_heads(HeadTrainConfig(store=str(store), seeds=tuple(head_seeds)), out)


def mean_std(values):
    values = [v for v in values if v is not None]
    return (*spread(values).values(), len(values))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="study folder (holding the ft-* runs)")
    p.add_argument("--task", default="rte", help="task (default: rte)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="fine-tuning seeds")
    p.add_argument("--head-seeds", type=int, nargs="+", default=[0, 1, 2], help="head seeds per store")
    args = p.parse_args()
    root = Path(args.out)
    metric = None
    rows = {}  # configuration -> list of per-FT-seed records

    def add(name, **rec):
        rows.setdefault(name, []).append(rec)

    # ---- pretrained encoder (no fine-tuning) + heads
    t0 = time.perf_counter()
    embed_s = embed_once(args.task, None, root / "emb-pretrained")
    summ = heads_once(root / "emb-pretrained", root / "heads-pretrained", args.head_seeds)
    metric = next(iter(summ["dev"]))
    add("pretrained encoder + AdapterPooler", dev=summ["dev"][metric]["mean"], val=summ["validation"][metric]["mean"],
        dev_all={k: v["mean"] for k, v in summ["dev"].items()},
        head_runs=[r["dev"][metric] for r in summ["runs"]], ft_s=0.0, embed_s=embed_s, head_s=summ["train_seconds"])  # fmt: skip
    for seed in args.seeds:
        full = json.loads((root / f"ft-full-seed{seed}" / "metrics.json").read_text())["checkpoint-e3"]
        add("full fine-tuning, 3 epochs (encoder alone)", dev=full["dev"][metric], val=full["validation"][metric],
            dev_all=full["dev"],
            ft_s=full["train_seconds"])  # fmt: skip
        part_dir = root / f"ft-partial-seed{seed}"
        part = json.loads((part_dir / "metrics.json").read_text())
        for frac in ("0.3", "1"):
            meta = part[f"checkpoint-e{frac}"]
            add(f"fine-tuning {frac} epoch (encoder alone)", dev=meta["dev"][metric], val=meta["validation"][metric],
                dev_all=meta["dev"],
                ft_s=meta["train_seconds"])  # fmt: skip
            store = root / f"emb-e{frac}-seed{seed}"
            embed_s = embed_once(args.task, str(part_dir / f"checkpoint-e{frac}"), store)
            summ = heads_once(store, root / f"heads-e{frac}-seed{seed}", args.head_seeds)
            add(f"fine-tuning {frac} epoch + AdapterPooler", dev=summ["dev"][metric]["mean"],
                dev_all={k: v["mean"] for k, v in summ["dev"].items()},
                val=summ["validation"][metric]["mean"], head_runs=[r["dev"][metric] for r in summ["runs"]],
                ft_s=meta["train_seconds"], embed_s=embed_s, head_s=summ["train_seconds"])  # fmt: skip
    table = {}
    for name, recs in rows.items():
        dev = mean_std([r["dev"] for r in recs])
        runs = [x for r in recs for x in r.get("head_runs", [])]
        table[name] = {
            "dev": dev, "validation": mean_std([r["val"] for r in recs]),
            "dev_metrics": {m: mean_std([r["dev_all"][m] for r in recs]) for m in recs[0]["dev_all"]},
            "dev_all_head_runs": mean_std(runs) if runs else None,
            "finetune_seconds": mean_std([r["ft_s"] for r in recs])[0],
            "embed_seconds": mean_std([r.get("embed_s") for r in recs])[0] if "embed_s" in recs[0] else None,
            "head_seconds": mean_std([r.get("head_s") for r in recs])[0] if "head_s" in recs[0] else None,
        }  # fmt: skip
    (root / "study.json").write_text(json.dumps({"metric": metric, "table": table, "wall": time.perf_counter() - t0}, indent=2))
    print(f"| configuration | dev {metric} (mean ± std, n) | validation | fine-tune s | embed s | heads s |")
    print("|---|---|---|---|---|---|")
    for name, t in table.items():
        d, v = t["dev"], t["validation"]
        others = "".join(f"; {m} {x[0]*100:.1f} ± {x[1]*100:.1f}" for m, x in t["dev_metrics"].items() if m != metric)
        extra = others + f"; all head runs {t['dev_all_head_runs'][0]*100:.1f} ± {t['dev_all_head_runs'][1]*100:.1f} (n={t['dev_all_head_runs'][2]})" if t["dev_all_head_runs"] else others
        fmt = lambda x: "–" if x is None else f"{x:.0f}"  # noqa: E731
        print(f"| {name} | {d[0]*100:.1f} ± {d[1]*100:.1f} (n={d[2]}{extra}) | {v[0]*100:.1f} ± {v[1]*100:.1f} | "
              f"{fmt(t['finetune_seconds'])} | {fmt(t['embed_seconds'])} | {fmt(t['head_seconds'])} |")  # fmt: skip


if __name__ == "__main__":
    main()
