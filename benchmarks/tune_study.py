"""The search study of one GLUE task with the bundled encoder (docs/RESULTS.md, "Searches"):
the tuned full fine-tuning baseline, stores of the pretrained and the 1-epoch fine-tuned
encoder, a head search on each, the best configuration retrained with 5 seeds, the default
head with 5 seeds, and ensembles of each search's best trials (with the encoder's own head).

    BERTVISION_DATA=../shared/data .venv/bin/python benchmarks/tune_study.py --task stsb \\
        --out runs/tune-study/stsb [--grid-train-examples 2000] [--train-examples N]

Stages, each timed (wall seconds) and skipped when its output is already there (rerun the same
command to finish an interrupted study):

    baseline/        python -m ray_jobs.baseline: lr in --lrs x 1..3 epochs chosen on
                     validation (on --grid-train-examples if given), then 5 seeds; the
                     seeds' 1-epoch checkpoints are the brief fine-tuning
    pre-cls, pre-mean, ft-cls, ft-mean/
                     stores (train, dev) of the pretrained encoder and of baseline/seed-0's
                     1-epoch checkpoint (which also stores the encoder's logits)
    tune-pre, tune-ft/   bertvision tune over the two stores of each encoder (the store, cls
                     or mean, is one of the choices), --trials trials
    best5-pre, best5-ft/ the best trial's configuration retrained with seeds 0-4
    default5-pre, default5-ft/  the default head (on the cls store) with seeds 0-4
    ens-pre, ens-ft/     bertvision ensemble --from-tune --top-k 5 (ft: with --encoder)
    ft1-S ... ft4-S/, across-ft/
                     stores of seeds 1-4's 1-epoch checkpoints (S: cls or mean, the store
                     of tune-ft's best trial), and that trial's configuration on each (one
                     head seed), so that the heads' spread includes fine-tuning's
                     (``--no-across`` skips this stage)
    study.json       every figure and time

``--table DIR [DIR ...]`` prints the markdown tables of finished studies (docs/RESULTS.md);
``--summary DIR [DIR ...]`` prints the summary table, one row per study.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

from bertvision.config import (
    EmbedConfig,
    EnsembleConfig,
    FinetuneConfig,
    HeadTrainConfig,
    SearchConfig,
)
from bertvision.embed import embed
from bertvision.ensemble import ensemble
from bertvision.io import atomic_write_json
from bertvision.metrics import mean_std
from bertvision.search import leaderboard, trial_config
from bertvision.train import train_heads

SEEDS = (0, 1, 2, 3, 4)


def timed(times: dict, name: str, done: Path, fn):
    """Run ``fn`` unless ``done`` exists; record its wall seconds (kept from an earlier run)."""
    if done.exists():
        print(f"[{name}] done already ({done})", flush=True)
        return
    print(f"[{name}] ...", flush=True)
    t0 = time.perf_counter()
    fn()
    times[name] = round(time.perf_counter() - t0, 1)
    print(f"[{name}] {times[name]} s", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", nargs="+", metavar="DIR", help="print the tables of these study folders and stop")
    p.add_argument("--summary", nargs="+", metavar="DIR", help="print one summary row per study folder and stop")
    p.add_argument("--task")
    p.add_argument("--out")
    p.add_argument("--lrs", type=float, nargs="+", default=[5e-5, 1e-4, 2e-4])
    p.add_argument("--grid-train-examples", type=int, default=None)
    p.add_argument("--train-examples", type=int, default=None, help="the baseline seeds' training subset")
    p.add_argument("--trials", type=int, default=48)
    p.add_argument("--no-across", action="store_true",
                   help="skip the across-ft stage (study.json then has no across-ft figures); run again without it later")  # fmt: skip
    p.add_argument("--data-dir", default=None)
    args = p.parse_args()
    if args.table:
        for folder in args.table:
            print(table(Path(folder)) + "\n")
        return
    if args.summary:
        print(SUMMARY_HEAD)
        for folder in args.summary:
            print(summary_row(Path(folder)))
        return
    if not (args.task and args.out):
        p.error("--task and --out are required (or --table DIR ...)")
    out = Path(args.out).absolute()
    out.mkdir(parents=True, exist_ok=True)
    times_path = out / "times.json"
    times = json.loads(times_path.read_text()) if times_path.exists() else {}

    def save_times():
        atomic_write_json(times_path, times)

    import ray

    from ray_jobs import baseline
    from ray_jobs.common import init_ray

    # one local Ray for every stage; 5 logical CPUs so that the 5 fine-tuning seeds (one torch
    # thread each) run at once rather than 4 and then 1 alone on a 2-core machine
    local_dir = init_ray(None, num_cpus=len(SEEDS))

    base = FinetuneConfig(task=args.task, data_dir=args.data_dir, train_examples=args.train_examples)
    grid = baseline.BaselineGrid(lrs=tuple(args.lrs), max_epochs=3, seeds=SEEDS,
                                 grid_train_examples=args.grid_train_examples)  # fmt: skip
    timed(times, "baseline", out / "baseline" / "baseline.json", lambda: baseline.run(base, str(out / "baseline"), grid))
    save_times()
    ckpt = out / "baseline" / "seed-0" / "checkpoint-e1"
    for enc, where in (("pre", None), ("ft", str(ckpt))):
        for sel in ("cls", "mean"):
            cfg = EmbedConfig(task=args.task, checkpoint=where, splits=("train", "dev"), selection=sel, data_dir=args.data_dir)
            timed(times, f"embed-{enc}-{sel}", out / f"{enc}-{sel}" / "train" / "_manifest.json",
                  lambda cfg=cfg, enc=enc, sel=sel: embed(cfg, out / f"{enc}-{sel}"))  # fmt: skip
            save_times()
    from ray_jobs import tune

    for enc in ("pre", "ft"):
        search = SearchConfig(stores=(str(out / f"{enc}-cls"), str(out / f"{enc}-mean")), trials=args.trials)
        folder = out / f"tune-{enc}"
        timed(times, f"tune-{enc}", folder / "leaderboard.json", lambda search=search, folder=folder: tune.run(search, str(folder)))
        save_times()
        best = leaderboard(folder)[0]
        cfg = replace(trial_config(search, best["params"]), seeds=SEEDS)
        timed(times, f"best5-{enc}", out / f"best5-{enc}" / "summary.json", lambda cfg=cfg, enc=enc: train_heads(cfg, out / f"best5-{enc}"))
        cfg = HeadTrainConfig(store=str(out / f"{enc}-cls"), seeds=SEEDS)
        timed(times, f"default5-{enc}", out / f"default5-{enc}" / "summary.json",
              lambda cfg=cfg, enc=enc: train_heads(cfg, out / f"default5-{enc}"))  # fmt: skip
        ens = EnsembleConfig(from_tune=str(folder), top_k=5, encoder=enc == "ft")
        timed(times, f"ens-{enc}", out / f"ens-{enc}" / "ensemble.json", lambda ens=ens, enc=enc: ensemble(ens, out / f"ens-{enc}"))
        save_times()

    # The searched configuration on every fine-tuning seed's 1-epoch checkpoint (one head seed
    # each), so that the heads' spread includes fine-tuning's; seed 0's is best5-ft's seed 0.
    search = SearchConfig(stores=(str(out / "ft-cls"), str(out / "ft-mean")), trials=args.trials)
    best = leaderboard(out / "tune-ft")[0]["params"]
    sel = Path(best["store"]).name.split("-")[-1]
    for k in () if args.no_across else SEEDS[1:]:
        store = out / f"ft{k}-{sel}"
        cfg = EmbedConfig(task=args.task, checkpoint=str(out / "baseline" / f"seed-{k}" / "checkpoint-e1"),
                          splits=("train", "dev"), selection=sel, data_dir=args.data_dir)  # fmt: skip
        timed(times, f"embed-ft{k}-{sel}", store / "train" / "_manifest.json", lambda cfg=cfg, store=store: embed(cfg, store))
        head = replace(trial_config(search, {**best, "store": str(store)}), seeds=(0,))
        timed(times, f"across-ft{k}", out / "across-ft" / f"ft{k}" / "summary.json",
              lambda head=head, k=k: train_heads(head, out / "across-ft" / f"ft{k}"))  # fmt: skip
        save_times()

    ray.shutdown()
    import shutil

    if local_dir:
        shutil.rmtree(local_dir, ignore_errors=True)

    def read(*parts):
        return json.loads(out.joinpath(*parts).read_text())

    study = {"task": args.task, "times": times, "baseline": read("baseline", "baseline.json")}
    for enc in ("pre", "ft"):
        board = leaderboard(out / f"tune-{enc}")
        study[f"tune-{enc}"] = {
            "trials": len(board), "best": {k: board[0][k] for k in ("params", "score", "best_epoch")},
            "default_rank": 1 + next((i for i, r in enumerate(board) if r["trial"].endswith(_first_trial(board))), -1),
            "epochs_run": sum(r["epochs_run"] for r in board),
        }  # fmt: skip
        for name in (f"best5-{enc}", f"default5-{enc}"):
            s = read(name, "summary.json")
            study[name] = {k: s[k] for k in ("validation", "dev")}
        e = read(f"ens-{enc}", "ensemble.json")
        study[f"ens-{enc}"] = {"chosen": e["chosen"], "weights": e["weights"],
                               **{m: {k: v for k, v in e["ensembles"][m].items() if k != "rounds"} for m in ("uniform", "greedy")},
                               "encoder": e["members"].get("encoder")}  # fmt: skip
    if all((out / "across-ft" / f"ft{k}" / "summary.json").is_file() for k in SEEDS[1:]):
        heads = [read("best5-ft", "summary.json")["runs"][0]["dev"]] + [read("across-ft", f"ft{k}", "summary.json")["runs"][0]["dev"]
                                                                       for k in SEEDS[1:]]  # fmt: skip
        encoders = [next(m for m in read("baseline", f"seed-{k}", "metrics.json").values() if m["fraction"] == 1.0)["dev"]
                    for k in SEEDS]  # fmt: skip
        study["across-ft"] = {"heads": heads, "encoders": encoders}
    atomic_write_json(out / "study.json", study)
    print(json.dumps(study, indent=1))


def _pm(stat: dict, scale: float = 100) -> str:
    return f"{stat['mean'] * scale:.1f} ± {stat['std'] * scale:.1f}"


def _params(p: dict) -> str:
    store = Path(p["store"]).name.split("-")[-1]
    return (f"{store} states, A {p['adapter_size']}, {'shared' if p['shared'] else 'per-layer'}, {p['combine']}, "
            f"{'residual, ' if p['residual'] else ''}layers {p['first_layer']}+, dropout {p['dropout']:.2f}, "
            f"lr {p['lr']:.2g}, wd {p['weight_decay']:.1g}, batch {p['batch_size']}")  # fmt: skip


def table(folder: Path) -> str:
    """One task's markdown table: dev mean ± std (in %) over 5 seeds, or one ensemble run, with
    each row's validation score and the wall seconds of the stages that made it."""
    import numpy as np

    from bertvision.metrics import compute_metrics
    from bertvision.store import load_split, read_manifest

    study = json.loads((folder / "study.json").read_text())
    times, b = study["times"], study["baseline"]
    spec = read_manifest(folder / "pre-cls" / "train")["extra"]["task_spec"]
    metrics = list(spec["metrics"])
    rows = []
    if spec["kind"] == "classification":  # the most frequent training label, everywhere
        train, dev = load_split(folder / "pre-cls" / "train").labels, load_split(folder / "pre-cls" / "dev").labels
        guess = np.full(len(dev), np.bincount(train).argmax())
        m = compute_metrics(metrics, guess, dev)
        rows.append(("majority class of train", [f"{m[k] * 100:.1f}" for k in metrics], "–", "–"))
    sel = f"lr {b['chosen']['lr']:g}, {b['chosen']['epochs']:g} epoch(s)"
    note = _subsets(b) or "grid on all of train"
    e1 = b["by_epoch"].get("1")
    wall_ft = f"{_span(folder / 'baseline' / 'grid', '*'):.0f} grid + {_span(folder / 'baseline', 'seed-*'):.0f} seeds"
    rows.append((f"**full fine-tuning, tuned** ({sel}; {note}), 5 seeds",
                 [_pm(b["dev"][k]) for k in metrics], _val(b["by_epoch"][f"{b['chosen']['epochs']:g}"]["validation"]),
                 wall_ft))  # fmt: skip
    if e1 is not None and f"{b['chosen']['epochs']:g}" != "1":
        rows.append(("fine-tuning 1 epoch (same lr; encoder alone), 5 seeds", [_pm(e1["dev"][k]) for k in metrics],
                     _val(e1["validation"]), "(a checkpoint of the runs above)"))  # fmt: skip
    for enc, label in (("pre", "pretrained encoder"), ("ft", "1-epoch encoder (seed 0)")):
        if f"tune-{enc}" not in study:
            continue
        t = study[f"tune-{enc}"]
        embed_s = times.get(f"embed-{enc}-cls", float("nan")) + times.get(f"embed-{enc}-mean", float("nan"))
        for name, what in ((f"default5-{enc}", "default head (cls states)"),
                           (f"best5-{enc}", f"best of {t['trials']} trials ({_params(t['best']['params'])})")):  # fmt: skip
            r = study[name]
            rows.append((f"{label} + {what}, 5 seeds", [_pm(r["dev"][k]) for k in metrics],
                         _val(r["validation"]), f"{times.get(name, float('nan')):.0f}"))  # fmt: skip
        e = study[f"ens-{enc}"]
        chosen = e[e["chosen"]]
        members = ", ".join(f"{k.split('/')[-1][:14]} x{w}" for k, w in e["weights"].items() if w) if e["chosen"] == "greedy" else "equal weights"
        rows.append((f"{label} + ensemble of the top 5 trials{' and the encoder' if enc == 'ft' else ''} ({e['chosen']}: {members}), one run",
                     [f"{chosen['dev'][k] * 100:.1f}" for k in metrics], f"{chosen['validation']['score'] * 100:.1f}",
                     f"{times.get(f'ens-{enc}', float('nan')):.0f}"))  # fmt: skip
        rows.append((f"({label}: stores {embed_s:.0f} s, search {times.get(f'tune-{enc}', float('nan')):.0f} s, "
                     f"{t['trials']} trials, {t['epochs_run']} epochs; the default head ranked {t['default_rank']})",
                     ["" for _ in metrics], "", ""))  # fmt: skip
        if enc == "ft" and "across-ft" in study:
            a = study["across-ft"]
            heads = {k: mean_std([h[k] for h in a["heads"]]) for k in metrics}
            diff = {k: mean_std([h[k] - x[k] for h, x in zip(a["heads"], a["encoders"], strict=True)]) for k in metrics}
            rows.append(("1-epoch encoders of all 5 fine-tuning seeds + the best configuration above, one head seed each",
                         [f"{_pm(heads[k])} (vs its encoder {'+' if diff[k]['mean'] >= 0 else ''}{_pm(diff[k])})" for k in metrics],
                         "", f"{sum(times.get(f'embed-ft{k}-' + n, 0) for k in SEEDS[1:] for n in ('cls', 'mean')) + sum(times.get(f'across-ft{k}', 0) for k in SEEDS[1:]):.0f} (seeds 1-4)"))  # fmt: skip
        if enc == "ft" and e.get("encoder"):
            enc_dev = e["encoder"]["dev"]
            rows.append(("1-epoch encoder (seed 0) alone, its stored logits", [f"{enc_dev[k] * 100:.1f}" for k in metrics],
                         f"{e['encoder']['validation']['score'] * 100:.1f}", "–"))  # fmt: skip
    head = "| configuration | " + " | ".join(f"dev {k}" for k in metrics) + " | validation score | wall s |"
    lines = [f"#### {NAMES.get(spec['name'], spec['name'])}", "", head, "|" + "---|" * (len(metrics) + 3)]
    lines += ["| " + " | ".join([r[0], *r[1], r[2], r[3]]) + " |" for r in rows]
    return "\n".join(lines)


NAMES = {"cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI",
         "qnli": "QNLI", "rte": "RTE", "wnli": "WNLI"}  # fmt: skip
SUMMARY_HEAD = (
    "| task | tuned full fine-tuning, 5 seeds | seed 0 at 1 epoch / at the chosen epochs "
    "| heads on seed 0's 1-epoch states: best trial's config, 5 head seeds "
    "| + ensemble of the top 5 (and the encoder) | heads on the pretrained encoder: best config, 5 seeds |\n"
    "|---|---|---|---|---|---|"
)


def summary_row(folder: Path) -> str:
    """One row of RESULTS' summary table: dev, in %, of the study's main rows (STS-B: Pearson
    only; otherwise every metric of the task, joined by ' / ')."""
    from bertvision.store import read_manifest

    study = json.loads((folder / "study.json").read_text())
    spec = read_manifest(folder / "pre-cls" / "train")["extra"]["task_spec"]
    b = study["baseline"]
    metrics = list(spec["metrics"])[:1] if spec["kind"] == "regression" else list(spec["metrics"])
    by_seed0 = json.loads((folder / "baseline" / "seed-0" / "metrics.json").read_text()).values()
    at = {round(v["fraction"], 6): v["dev"] for v in by_seed0}
    e1, ef = at[1.0], at[round(float(b["chosen"]["epochs"]), 6)]

    def join(f) -> str:
        return " / ".join(f(k) for k in metrics)

    ens_ft = study["ens-ft"][study["ens-ft"]["chosen"]]["dev"]
    ens_pre = study["ens-pre"][study["ens-pre"]["chosen"]]["dev"]
    shown = {"pearson": "Pearson", "mcc": "MCC", "f1": "F1"}
    name = f"{NAMES.get(spec['name'], spec['name'])} ({' / '.join(shown.get(k, k) for k in metrics)})"
    cells = [
        name,
        f"{join(lambda k: _pm(b['dev'][k]))} (lr {b['chosen']['lr']:g}, {b['chosen']['epochs']:g} ep{'; ' + _subsets(b) if _subsets(b) else ''})",
        f"{join(lambda k: f'{e1[k] * 100:.1f}')} → {join(lambda k: f'{ef[k] * 100:.1f}')}",
        join(lambda k: _pm(study["best5-ft"]["dev"][k])),
        join(lambda k: f"{ens_ft[k] * 100:.1f}"),
        f"{join(lambda k: _pm(study['best5-pre']['dev'][k]))} (ensemble {join(lambda k: f'{ens_pre[k] * 100:.1f}')})",
    ]
    return "| " + " | ".join(cells) + " |"


def _subsets(b: dict) -> str:
    """The baseline's training subsets, as the tables name them ("" when it used all of train)."""
    grid_n, seeds_n = b.get("grid_train_examples"), b.get("train_examples")
    if grid_n and grid_n == seeds_n:
        return f"grid and seeds on {grid_n:,} training examples"
    parts = []
    if grid_n:
        parts.append(f"grid on {grid_n:,} training examples")
    if seeds_n:
        parts.append(f"seeds on {seeds_n:,} training examples")
    return "; ".join(parts)


def _span(folder: Path, runs: str) -> float:
    """Wall seconds of a set of fine-tuning runs: the first config.json written (a run's start)
    to the last metrics.json (a run's end). Kept runs of an interrupted study count as run."""
    starts = [f.stat().st_mtime for f in folder.glob(f"{runs}/config.json")]
    ends = [f.stat().st_mtime for f in folder.glob(f"{runs}/metrics.json")]
    return max(ends) - min(starts)


def _val(validation: dict) -> str:
    """The mean selection score over seeds (the score is the mean of the task's metrics, so the
    mean of the metrics' means), in %."""
    return f"{100 * sum(v['mean'] for v in validation.values()) / len(validation):.1f}"


def _first_trial(board: list[dict]) -> str:
    """The trial that ran first (the default head configuration): the earliest start."""
    first = min(board, key=lambda r: r["timing"]["entered"])
    return first["trial"]


if __name__ == "__main__":
    main()
