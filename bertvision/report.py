"""The experiment report of a pipeline run: one self-contained HTML page (figures embedded as PNG
data URIs, rendered with ``templates/report.html.j2``) from what the run's stages wrote, nothing
recomputed but the figures; and one stored example drawn as an image (`show_example`)."""

from __future__ import annotations

import base64
import io
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from bertvision.config import family
from bertvision.errors import DataError

PEERS_DIR = "peers"

# The original study's dev figures (../shared/REFERENCE.md: arXiv 2202.12210, one fine-tuning
# epoch, BERT-base; single runs, configuration and seed picked on the dev set that is reported).
ORIGINAL = {
    "squad2": {"BERT-base": {"exact": 69.41, "f1": 72.57}, "BERTVision-base": {"exact": 70.10, "f1": 73.42}},
    "sst2": {"BERT-base": {"accuracy": 92.66}, "BERTVision-base": {"accuracy": 92.70}},
    "mrpc": {"BERT-base": {"accuracy": 82.03}, "BERTVision-base": {"accuracy": 84.00}},
    "rte": {"BERT-base": {"accuracy": 63.90}, "BERTVision-base": {"accuracy": 72.60}},
    "qnli": {"BERT-base": {"accuracy": 90.18}, "BERTVision-base": {"accuracy": 90.26}},
    "qqp": {"BERT-base": {"accuracy": 89.62}, "BERTVision-base": {"accuracy": 88.60}},
    "cola": {"BERT-base": {"mcc": 53.37}, "BERTVision-base": {"mcc": 60.00}},
    "stsb": {"BERT-base": {"pearson": 87.36, "spearman": 86.85}, "BERTVision-base": {"pearson": 86.20, "spearman": 85.90}},
    "mnli": {"BERT-base": {"accuracy": 82.31}, "BERTVision-base": {"accuracy": 82.20}},
}  # fmt: skip
ORIGINAL["squad2-articles"] = ORIGINAL["squad2"]


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataError(path, f"not JSON ({e})") from None


# ---------------------------------------------------------------------------------------------
# What a run holds


def collect(run_dir: str | os.PathLike) -> dict:
    """Everything the report shows, from the files of the run folder ``run_dir``."""
    run = Path(run_dir)
    pipeline = _read(run / "pipeline.json")
    if pipeline is None:
        raise DataError(run, "no pipeline.json: not a run folder written by 'bertvision run'")
    stages = {p.stem: _read(p) for p in sorted((run / "stages").glob("*.json"))}
    spec, finished = pipeline["task"], {k: v for k, v in stages.items() if v and v.get("done")}
    fam = family(spec["kind"])
    return {"run": run, "pipeline": pipeline, "config": pipeline["config"], "spec": spec, "family": fam,
            "metrics": list(fam.metrics or spec["metrics"]), "stages": stages, "finished": finished,
            "evals": list(finished["majority"]["result"]["scores"]) if "majority" in finished else list(spec["eval_splits"]),
            "baseline": _read(run / "finetune" / "baseline.json"), "heads": _read(run / "heads" / "summary.json"),
            "heads_config": _read(run / "heads" / "config.json"), "ensemble": _read(run / "ensemble" / "ensemble.json"),
            "trials": _trials(run / "tune"), "peers": [_read(p) for p in sorted((run / PEERS_DIR).glob("*.json"))],
            "efficiency": [v["result"] for k, v in sorted(finished.items()) if k.startswith("efficiency-")]}  # fmt: skip


def _trials(folder: Path) -> list[dict]:
    from bertvision.search import leaderboard

    try:
        return leaderboard(folder) if folder.is_dir() else []
    except DataError:
        return []


def _wall(c: dict, *names: str) -> float | None:
    walls = [c["finished"][n].get("wall_seconds") for n in names if n in c["finished"]]
    return float(sum(walls)) if walls else None


def _store_stages(c: dict) -> list[str]:
    return [k for k in c["finished"] if k.startswith("store-")]


def _stored(c: dict, what: str) -> float:
    """The store stages' bytes or extraction seconds, summed over their splits."""
    return sum(s.get(what) or 0 for k in _store_stages(c) for s in c["finished"][k]["result"].values())


def encoder_parameters(checkpoint: Path) -> int | None:
    """Parameters in a checkpoint's model.safetensors (read from its header only)."""
    weights = checkpoint / "model.safetensors"
    if not weights.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(weights), framework="np") as f:
        return int(sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys()))


def _cell(scores: dict | None, metric: str, scale: float) -> dict:
    """{"mean", "std"} of one metric from {metric: {"mean", "std"}} (over runs) or {metric: value}."""
    v = (scores or {}).get(metric)
    if v is None:
        return {"mean": None, "std": None}
    return {"mean": v["mean"] * scale, "std": v.get("std", 0.0) * scale} if isinstance(v, dict) else {"mean": v * scale, "std": None}


def results_rows(c: dict) -> list[dict]:
    """The results table: a row per method, each eval split's metrics in percent and its cost."""
    scale, rows, run = 100.0 if c["family"].percent else 1.0, [], c["run"]

    def row(name, how, per_split, n, wall=None, device=None, stored=None, params=None, kind="ours", key=None):
        cells = {s: {m: _cell(per_split.get(s), m, scale) for m in c["metrics"]} for s in c["evals"]}
        rows.append({"name": name, "how": how, "cells": cells, "n": n, "wall": wall, "device": device,
                     "bytes": stored, "params": params, "kind": kind, "key": key or name})  # fmt: skip

    maj = c["finished"].get("majority", {}).get("result")
    if maj:
        row(FLOORS[c["spec"]["kind"]][0], maj["rule"], maj["scores"], "–", kind="floor", key="floor")
    b = c["baseline"]
    first = run / "finetune" / f"seed-{c['config']['seeds'][0]}"
    enc_params = encoder_parameters(first / "checkpoint-e1")
    ckpt_bytes = sum(p.stat().st_size for p in (first / "checkpoint-e1").glob("*")) if (first / "checkpoint-e1").is_dir() else None
    if b:
        ch = b["chosen"]
        how = (f"every weight trained, lr {ch['lr']:g}, {ch['epochs']:g} epoch(s)"
               + (" (chosen on validation)" if ch.get("validation_score") is not None else ""))  # fmt: skip
        row("Full fine-tuning", how, {s: b.get(s) for s in c["evals"]}, len(b["seeds"]), _wall(c, "finetune"),
            b.get("train_seconds"), ckpt_bytes, enc_params, key="full")  # fmt: skip
        if float(ch["epochs"]) > 1 and "1" in b.get("by_epoch", {}):
            row("Brief fine-tuning (1 epoch)", "the checkpoint the stores come from, scored on dev",
                {s: b["by_epoch"]["1"].get(s) for s in c["evals"]}, len(b["seeds"]), params=enc_params)  # fmt: skip
    h = c["heads"]
    if h:
        cfg = (c["heads_config"] or {}).get("train", {})
        head = cfg.get("head", {})
        store = (c["heads_config"] or {}).get("store", {}).get("selection", "?")
        how = (f"AdapterPooler on the {store} store of the 1-epoch checkpoint: adapter {head.get('adapter_size')}, "
               f"{'shared' if head.get('shared') else 'per-layer'}, {head.get('combine')}, lr {cfg.get('optim', {}).get('lr', 0):.2g} "
               f"(the search's best trial, retrained per seed)")  # fmt: skip
        device = float(_stored(c, "seconds")) + (c["finished"].get("tune", {}).get("result", {}).get("train_seconds") or 0) + h["train_seconds"]
        row("Best head", how, {s: h.get(s) for s in c["evals"]}, len(h["seeds"]), _wall(c, *_store_stages(c), "tune", "heads"),
            device, int(_stored(c, "bytes")), h["runs"][0]["parameters"] if h.get("runs") else None, key="head")  # fmt: skip
    if c["ensemble"]:
        ENSEMBLE_ROWS[c["family"].name](c, c["ensemble"], row)
    for p in c["peers"]:
        if p and p.get("task") == c["spec"]["name"]:
            row(p["name"], p["how"], p["scores"], p.get("n", "–"), p.get("wall_seconds"), p.get("device_seconds"),
                p.get("bytes"), p.get("parameters"), kind="peer")  # fmt: skip
    for name, figures in ORIGINAL.get(c["spec"]["name"], {}).items():
        per = {s: {m: v / scale for m, v in figures.items()} for s in c["evals"][:1]}
        row(f"Original study: {name}", "one dev-selected run (BERT-base, 110M parameters; not this encoder)", per, 1,
            kind="original")  # fmt: skip
    return rows


def _sentence_ensemble(c: dict, e: dict, row) -> None:
    chosen = e["ensembles"][e["chosen"]]
    used = ", ".join(f"{k if k == 'encoder' else Path(k).name} ×{w}" for k, w in e["weights"].items() if w)
    offered = f"the best {len([k for k in e['weights'] if k != 'encoder'])} trials" + (" and the encoder" if "encoder" in e["weights"] else "")
    rule = "greedy selection on validation" if e["chosen"] == "greedy" else "a uniform average (it beat greedy on validation)"
    row("Ensemble", f"{offered} offered; {rule} kept {used}", {s: chosen.get(s) for s in c["evals"]}, 1,
        _wall(c, *_store_stages(c), "tune", "ensemble"))  # fmt: skip


def _span_ensembles(c: dict, e: dict, row) -> None:
    for method, r in e["ensembles"].items():
        row(f"Ensemble ({method})", f"element-wise {method} of start/end probabilities, threshold on validation",
            {s: r.get(s) for s in c["evals"]}, 1, _wall(c, "ensemble"))  # fmt: skip


ENSEMBLE_ROWS = {"sentence": _sentence_ensemble, "span": _span_ensembles}
"""Task family -> the results table's rows of its ensemble."""
FLOORS = {"classification": ("Majority class", "the majority class"),
          "regression": ("Constant prediction", "a constant prediction"),
          "span": ("Always no answer", "always answering 'no answer'")}  # fmt: skip
"""Task kind -> the floor's row name and its name in the headline."""


def _selection(cells: dict) -> tuple[float | None, float]:
    """(mean over the metrics, mean spread) of a split's cells, the score heads select on (GLUE's);
    an undefined metric (a constant prediction's correlation) counts as 0, None if none is defined."""
    means = [c["mean"] for c in cells.values()]
    if all(m is None for m in means):
        return None, 0.0
    return float(np.mean([m or 0.0 for m in means])), float(np.mean([c["std"] or 0.0 for c in cells.values()]))


def split_words(spec: dict, split: str) -> str:
    """An eval split's name, with where it came from when it is a test part carved from train."""
    carved = spec.get("carved_test")
    if not carved or carved.get("split") != split:
        return split
    return f"{split} (the test part carved from {carved['from']}: {100 * carved['fraction']:g}%, seed {carved['seed']})"


def headline(run_dir: str | os.PathLike) -> str:
    """The run's result in words: the best head against full fine-tuning and the floor on the first
    eval split, and the verdict: no better than the floor on some metric, or above, within or below
    full fine-tuning."""
    c = collect(run_dir)
    title, metrics = c["spec"].get("title", c["spec"]["name"]), c["metrics"]
    if not c["evals"]:
        tune = c["finished"].get("tune", {}).get("result")
        return (f"{title}: this run has no held-out split to score on (validation only), so it states no result"
                + (f"; the best search trial scores {tune['score']:.3f} on the validation part it was chosen on."
                   if tune else "."))  # fmt: skip
    rows = {r["key"]: r for r in results_rows(c)}
    split = c["evals"][0]

    def fmt(r):
        cells = [r["cells"][split][m] for m in metrics]
        return " / ".join("undefined" if x["mean"] is None else f"{x['mean']:.1f}" + (
            f" ± {x['std']:.1f}" if x["std"] is not None and r["n"] != 1 else "") for x in cells)  # fmt: skip

    head, full, maj = rows.get("head"), rows.get("full"), rows.get("floor")
    if head is None:
        return f"{title}: no head results yet"
    floor_name = FLOORS[c["spec"]["kind"]][1]
    words = [f"{title}, {split_words(c['spec'], split)} {' / '.join(metrics)}: the best head scores {fmt(head)} "
             f"over {head['n']} seed(s)"]  # fmt: skip
    if full:
        ch = c["baseline"]["chosen"]
        words.append(f"full fine-tuning ({ch['epochs']:g} epoch(s) at lr {ch['lr']:g}) {fmt(full)} over {full['n']}")
    undefined = maj and all(maj["cells"][split][m]["mean"] is None for m in metrics)
    if maj:  # a constant prediction's correlation is undefined: it has none, and counts as 0
        words.append(f"{maj['how'].split(' (')[0]}: {floor_name} has no correlation" if undefined
                     else f"{maj['how'].split(' (')[0]}, {fmt(maj)}")  # fmt: skip
    text = "; ".join(words) + "."
    cells = head["cells"][split]
    if maj is None or any(cells[m]["mean"] is None for m in metrics):
        return text
    # the floor judged metric by metric: a head that does not beat it on one has not beaten it
    floor = {m: maj["cells"][split][m]["mean"] or 0.0 for m in metrics}
    above = {m: cells[m]["mean"] - (cells[m]["std"] or 0.0) > floor[m] for m in metrics}

    def versus(ms):
        return " and ".join(f"on {m} ({cells[m]['mean']:.1f} ± {cells[m]['std'] or 0.0:.1f} against {floor[m]:.1f})"
                            for m in ms)  # fmt: skip

    if not all(above.values()):
        text += f" The head is NO BETTER than {floor_name} {versus(m for m in metrics if not above[m])}"
        if any(above.values()):
            return text + (f", though above it {versus(m for m in metrics if above[m])}: a head that does not beat "
                           "the floor on every metric has not beaten it.")  # fmt: skip
        return text + ": with this encoder and this much data the stored states give the head nothing it can use."
    text += f" The head beats {floor_name} " + " and ".join(f"on {m} by {cells[m]['mean'] - floor[m]:.1f} points"
                                                             for m in metrics)  # fmt: skip
    h, h_std = _selection(cells)
    f, f_std = _selection(full["cells"][split]) if full else (None, 0.0)
    if f is not None:
        gap, spread = h - f, math.hypot(h_std, f_std)
        verdict = "within the spread of" if abs(gap) <= spread else "above" if gap > 0 else "below"
        both = f" on the mean of {' and '.join(metrics)}" if len(metrics) > 1 else ""
        text += f" and is {verdict} full fine-tuning{both} ({gap:+.1f} points; spread {spread:.1f})"
    return text + "."


# ---------------------------------------------------------------------------------------------
# Figures


def _png(fig, uri: bool = True) -> str | bytes:
    """A figure (closed here) as PNG bytes, or as a data URI for the page."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii") if uri else buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(c: dict) -> str | None:
    """Validation score per epoch: the trials (grey, the best in colour), the best configuration's
    seeds, and beside them fine-tuning's per checkpoint (not a single point: `finetune_line`)."""
    runs, b = (c["heads"] or {}).get("runs", []), c["baseline"]
    drawn, grid = bool(c["trials"] or runs), (b or {}).get("grid")
    right = bool(b) and finetune_line(c) is None
    if not drawn and not right:
        return None
    fig, axes = _plt().subplots(1, 1 + right, figsize=(10 if right else 5.5, 3.6), squeeze=False)
    axes = axes[0]
    ax = axes[0]
    for i, t in enumerate(reversed(c["trials"])):
        best = i == len(c["trials"]) - 1
        ax.plot([h["epoch"] for h in t["history"]], [h["score"] for h in t["history"]], color="C3" if best else "0.7",
                lw=2 if best else 0.8, zorder=3 if best else 1, label="best trial" if best else None)  # fmt: skip
    for k, r in enumerate(runs):
        hist = r.get("validation_history", [])
        ax.plot([h["epoch"] for h in hist], [_score(h) for h in hist], color="C0", lw=1.2, ls="--",
                label="best configuration, each seed" if k == 0 else None)  # fmt: skip
    ax.set(xlabel="epoch", ylabel="validation selection score", title="Heads: search trials and seeds")
    if drawn:
        ax.legend(fontsize=8)
    if right and grid:
        ax = axes[1]
        for lr in sorted({g["lr"] for g in grid}):
            pts = sorted((g["epochs"], g["score"]) for g in grid if g["lr"] == lr)
            ax.plot(*zip(*pts, strict=True), marker="o", label=f"lr {lr:g}")
        ax.legend(fontsize=8)
        one = len({g["lr"] for g in grid}) == 1
        ax.set(title="Fine-tuning by epoch (validation, mean over seeds)" if one else "Fine-tuning grid (validation)",
               xlabel="epochs", ylabel="validation selection score")  # fmt: skip
    elif right:
        ax = axes[1]
        vals = [_score(r["validation"]) for r in b["runs"].values()]
        ax.bar([f"seed {s}" for s in b["runs"]], vals, color="C2")
        ax.set(title="Fine-tuning seeds (validation)", ylabel="validation selection score")
        ax.set_ylim(min(vals) - 0.05, max(vals) + 0.05)
    from matplotlib.ticker import MaxNLocator

    for ax in axes[: 2 if right and grid else 1]:  # epochs (not the seeds' bars)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return _png(fig)


def finetune_line(c: dict) -> str | None:
    """Fine-tuning's validation score in words when its grid holds one point (no plot to draw)."""
    grid = (c["baseline"] or {}).get("grid") or []
    if len(grid) != 1:
        return None
    g, n = grid[0], len(grid[0].get("seed_scores") or ())
    return (f"Fine-tuning ran one setting, lr {g['lr']:g} for {g['epochs']:g} epoch(s): validation selection score "
            f"{g['score']:.4f}" + (f" (mean over {n} seeds)." if n > 1 else "."))  # fmt: skip


def _score(scores: dict) -> float:
    """The selection score of a metrics dict (sentence: mean of metrics; span: F1)."""
    if "score" in scores:
        return scores["score"]
    if "f1" in scores and "exact" in scores:
        return scores["f1"]
    vals = [v for k, v in scores.items() if k not in ("epoch", "loss", "threshold") and isinstance(v, (int, float))]
    return float(np.mean(vals)) if vals else float("nan")


def layer_weights(folder: Path) -> np.ndarray | None:
    """A head's weight on each hidden state (NaN where it reads none): a scalar mix's softmax weights,
    else each layer's share of the output layer's weight norm (None where it mixes positions)."""
    from safetensors.numpy import load_file

    meta = _read(folder / "head_config.json")
    weights_file = folder / "head.safetensors"
    if meta is None or not weights_file.is_file():
        return None
    cfg = meta["adapter_pooler"]
    state = load_file(str(weights_file))
    total, first = cfg["num_hidden_states"], cfg.get("first_layer", 0)
    out = np.full(total, np.nan)
    if "mix.logits" in state:
        z = state["mix.logits"].astype(np.float64)
        out[first:] = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        return out
    w = state.get("out.weight")
    if w is None or (cfg.get("token_states") and cfg.get("pooling") == "flatten"):
        return None
    layers, a = total - first, cfg["adapter_size"]
    norms = np.array([np.linalg.norm(w[:, i * a:(i + 1) * a]) for i in range(layers)])
    out[first:] = norms / norms.sum()
    return out


def layer_heatmap(c: dict) -> str | None:
    """The learned layer weights of the best trials and the seeds' heads, as a heat map."""
    heads = [(f"trial {Path(t['trial']).name[-5:]} ({t['params'].get('combine')})", Path(t["trial"]))
             for t in c["trials"][: c["config"]["top_k"]]]  # fmt: skip
    heads += [(f"best config, seed {s}", c["run"] / "heads" / f"seed-{s}") for s in (c["heads"] or {}).get("seeds", [])]
    drawn = [(label, w) for label, folder in heads if (w := layer_weights(folder)) is not None]
    if not drawn:
        return None
    labels, rows = zip(*drawn, strict=True)
    m = np.vstack(rows)
    fig, ax = _plt().subplots(figsize=(1.2 + 0.7 * m.shape[1], 0.8 + 0.32 * len(rows)))
    im = ax.imshow(np.ma.masked_invalid(m), cmap="viridis", aspect="auto", vmin=0)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_xticks(range(m.shape[1]), ["emb"] + [str(i) for i in range(1, m.shape[1])])
    ax.set_xlabel("hidden state (emb = embedding output, then each layer)")
    for (i, j), v in np.ndenumerate(m):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="w" if v < m[np.isfinite(m)].max() * 0.6 else "k")
    fig.colorbar(im, ax=ax, label="share of the head's weight")
    fig.tight_layout()
    return _png(fig)


NUMERIC = ("lr", "adapter_size", "dropout", "weight_decay", "batch_size", "first_layer")


def trials_scatter(c: dict) -> str | None:
    """Each trial's best validation score against the main hyperparameters."""
    trials = c["trials"]
    if not trials:
        return None
    fig, axes = _plt().subplots(2, 3, figsize=(11, 6), sharey=True)
    stores = sorted({Path(t["params"]["store"]).name for t in trials})
    for ax, name in zip(axes.flat, NUMERIC, strict=True):
        for k, store in enumerate(stores):
            pts = [(t["params"][name], t["score"]) for t in trials if Path(t["params"]["store"]).name == store and name in t["params"]]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.scatter(x, y, s=22, alpha=0.8, color=f"C{k}", label=f"{store} store")
        best = trials[0]
        ax.scatter([best["params"][name]], [best["score"]], s=90, facecolors="none", edgecolors="k", label="best")
        if name in ("lr", "weight_decay", "adapter_size", "batch_size"):
            from matplotlib.ticker import NullFormatter

            ax.set_xscale("log", base=2 if name in ("adapter_size", "batch_size") else 10)
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel(name.replace("_", " "))
    axes[0, 0].set_ylabel("best validation score")
    axes[1, 0].set_ylabel("best validation score")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"{len(trials)} search trials (HyperOpt TPE; ASHA stopped the weak ones early)")
    fig.tight_layout()
    return _png(fig)


def efficiency_plot(c: dict) -> str | None:
    """Dev score against training examples: full fine-tuning and the best head, mean ± spread."""
    if not c["efficiency"] or not c["heads"] or not c["baseline"] or not c["evals"]:
        return None
    split, metric = c["evals"][0], c["metrics"][0]
    full_n = (c["heads_config"] or {}).get("train_rows")
    pts = [(e["examples"], e["finetune"].get(split, {}).get(metric), e["heads"].get(split, {}).get(metric))
           for e in c["efficiency"]]  # fmt: skip
    pts.append((full_n, c["baseline"].get(split, {}).get(metric), c["heads"].get(split, {}).get(metric)))
    pts.sort(key=lambda p: p[0])
    fig, ax = _plt().subplots(figsize=(6.5, 4))
    for k, (label, color) in enumerate((("full fine-tuning", "C2"), ("best head", "C0")), start=1):
        xs = [p[0] for p in pts if p[k]]
        ys = [100 * p[k]["mean"] for p in pts if p[k]]
        es = [100 * p[k]["std"] for p in pts if p[k]]
        ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, color=color, label=label)
    maj = c["finished"].get("majority", {}).get("result", {}).get("scores", {}).get(split, {}).get(metric)
    if maj is not None:
        ax.axhline(100 * maj, color="0.5", ls=":", label="majority class")
    ax.set_xscale("log")
    from matplotlib.ticker import NullLocator

    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticks([p[0] for p in pts], [f"{p[0]:,}\n{p[0] / full_n:.0%}" for p in pts])
    ax.set(xlabel="training examples (share of the training part)", ylabel=f"{split} {metric} (%)",
           title="Data efficiency (mean ± std over seeds)")  # fmt: skip
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def draw_states(hidden: np.ndarray, title: str, segments: np.ndarray | None = None, max_layers: int = 13,
                span: tuple[int, int] | None = None, standard: tuple[np.ndarray, np.ndarray] | None = None):  # fmt: skip
    """One example's stored states: (L, H) -> layers x hidden, each layer over its own 99th-percentile
    magnitude, and beside it (with ``standard``, the split's (mean, std) per layer and dimension)
    standardised per dimension; (T, L, H) -> a panel per layer, tokens x hidden, on one scale
    clipped at the 99th percentile (a few outlier dimensions would wash the rest out)."""
    plt = _plt()
    x = np.asarray(hidden, dtype=np.float32)
    if x.ndim == 2:  # (L, H): each layer scaled by its own magnitude (the last layers' are larger)
        scale = np.percentile(np.abs(x), 99, axis=1, keepdims=True)
        views = [(np.clip(x / np.where(scale > 0, scale, 1.0), -1, 1), 1, "raw: each layer over its own scale")]
        if standard is not None:  # each dimension's own scale dominates the raw view: what differs between examples
            mean, std = standard
            views.insert(0, (np.clip((x - mean) / np.where(std > 0, std, 1.0), -3, 3), 3,
                             "standardised per dimension over the split (z, clipped at ±3)"))  # fmt: skip
        fig, axes = plt.subplots(1, len(views), figsize=(7 * len(views) if standard is not None else 10,
                                                         1.3 + 0.28 * x.shape[0]), squeeze=False, layout="constrained")  # fmt: skip
        for k, (ax, (v, lim, label)) in enumerate(zip(axes[0], views, strict=True)):
            im = ax.imshow(v, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
            names = ["emb"] + [f"layer {i}" for i in range(1, x.shape[0])]
            ax.set_yticks(range(x.shape[0]), names if k == 0 else [""] * len(names), fontsize=8)
            ax.set_xlabel("hidden dimension")
            ax.set_title(label, fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.03)
        fig.suptitle(title, fontsize=10)
        return fig
    lim = float(np.percentile(np.abs(x), 99)) or 1.0
    layers = list(range(x.shape[1]))[:max_layers]
    cols = min(len(layers), 4)
    rows = math.ceil(len(layers) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 0.6 + 2.4 * rows), squeeze=False, layout="constrained")
    for k, (ax, layer) in enumerate(zip(axes.flat, layers, strict=False)):
        im = ax.imshow(x[:, layer, :], cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
        ax.set_title("embedding output" if layer == 0 else f"layer {layer}", fontsize=9)
        ax.set_xlabel("hidden", fontsize=8)
        if k % cols == 0:
            ax.set_ylabel("token", fontsize=8)
        if segments is not None and segments.any():
            ax.axhline(int(np.argmax(segments > 0)) - 0.5, color="k", lw=0.8)
        if span is not None and span[0] > 0:  # the gold answer's tokens (0: no answer in this window)
            ax.axhspan(span[0] - 0.5, span[1] + 0.5, facecolor="none", edgecolor="k", lw=1.2)
    for ax in list(axes.flat)[len(layers):]:
        ax.set_axis_off()
    note = " (line: where the second sentence starts)" if segments is not None and segments.any() else ""
    note += " (box: the answer's tokens)" if span is not None and span[0] > 0 else ""
    fig.suptitle(title + note, fontsize=10)
    fig.colorbar(im, ax=axes, fraction=0.02)
    return fig


SAMPLE_ROWS = 2000
"""The rows of a split that its per-dimension statistics (the standardised pictures) come from."""


def _split_sample(folder: Path, rows: int = SAMPLE_ROWS) -> tuple[list[dict], tuple[np.ndarray, np.ndarray]] | None:
    """The first ``rows`` examples of a vectors store's split and their (mean, std) per layer and
    dimension; None for a token store (or an empty one)."""
    from bertvision.store import iter_batches, layout_of, read_manifest

    batch = None if layout_of(read_manifest(folder)).per_token else next(iter_batches(folder, rows), None)
    if batch is None:
        return None
    ids, hidden, labels = batch[0], batch[1].float().numpy(), None if batch[2] is None else batch[2].numpy()
    examples = [{"id": i, "hidden": hidden[k], "label": None if labels is None else labels[k], "segments": None}
                for k, i in enumerate(ids)]  # fmt: skip
    return examples, (hidden.mean(0), hidden.std(0))


def _pick(spec: dict, examples: list[dict], n: int) -> list[dict]:
    """``n`` examples of different labels: the first of each class (in store order) then the next
    ones; for a regression, the lowest, middle and highest scores."""
    if spec["kind"] == "regression" and examples:
        order = sorted(examples, key=lambda e: float(e["label"]))
        return [order[round(q)] for q in np.linspace(0, len(order) - 1, min(n, len(order)))]
    seen: set[str] = set()
    picked = [e for e in examples if (name := _label_name(spec, e["label"])) not in seen and not seen.add(name)][:n]
    chosen = {e["id"] for e in picked}
    return picked + [e for e in examples if e["id"] not in chosen][: n - len(picked)]


def example_images(c: dict, n: int = 3) -> list[dict]:
    """A few examples of the best store's first eval split (train where there is none) drawn as
    images, of different labels, with their text."""
    from bertvision.store import first_ids, has_manifest, read_example

    sel, split = c["finished"].get("tune", {}).get("result", {}).get("selection"), (c["evals"] or ["train"])[0]
    folder = c["run"] / "store" / str(sel) / split
    if sel is None or not has_manifest(folder):
        return []
    texts, sample = _texts(c, split), _split_sample(folder)
    examples, standard = sample or ([read_example(folder, i) for i in first_ids(folder, 8 * n)], None)
    out = []
    for ex in _pick(c["spec"], examples, n):
        i, label = ex["id"], _label_name(c["spec"], ex["label"])
        fig = draw_states(ex["hidden"], f"{split} {i}: {sel} states, label {label}", ex["segments"], span=_span(ex),
                          standard=standard)  # fmt: skip
        out.append({"id": i, "label": label, "text": texts.get(i, texts.get(i.split("#")[0], "")), "image": _png(fig)})
    return out


def _span(ex: dict) -> tuple[int, int] | None:
    label = ex["label"]
    return None if label is None or np.asarray(label).ndim == 0 else tuple(int(v) for v in np.asarray(label))


def _label_name(spec: dict, label) -> str:
    """A stored label in words: a class name, a score, a span's tokens, or none."""
    if label is None:
        return "none"
    label = np.asarray(label)
    return f"span {label.tolist()}" if label.ndim else str(spec["labels"][int(label)]) if spec.get("labels") else f"{float(label):.2f}"


def _texts(c: dict, split: str) -> dict[str, str]:
    """id -> the example's text (pairs joined by ' || '), from the task's data; {} if unreadable."""
    try:
        from bertvision.tasks import get_task

        data = get_task(c["config"]["task"], c["config"]["data_dir"]).load(split)
    except Exception:  # the report still renders without the text
        return {}
    if hasattr(data, "examples"):  # SQuAD: the question (windows are "<question id>#<k>")
        return {ex.id: ex.question for ex in data.examples}
    if not hasattr(data, "texts"):
        return {}
    return {i: " || ".join(col[k] for col in data.texts) for k, i in enumerate(data.ids)}


# ---------------------------------------------------------------------------------------------
# The page


def _fmt_seconds(s: float | None) -> str:
    return "–" if s is None else f"{s:.0f} s" if s < 90 else f"{s / 60:.1f} min" if s < 5400 else f"{s / 3600:.1f} h"


def _fmt_bytes(b: int | None) -> str:
    if b is None:
        return "–"
    k = 0
    while b >= 1000 and k < 4:
        b, k = b / 1000, k + 1
    return f"{b:.0f} B" if k == 0 else f"{b:.1f} {('KB', 'MB', 'GB', 'TB')[k - 1]}"


def _fmt_count(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e3 else str(n)


def render(c: dict) -> str:
    """The report's HTML."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("bertvision", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]), undefined=jinja2.StrictUndefined)  # fmt: skip
    env.filters.update(seconds=_fmt_seconds, nbytes=_fmt_bytes, count=_fmt_count)
    stages = [{"name": k, "wall": v.get("wall_seconds"), "done": v.get("done"), "folder": v.get("folder")}
              for k, v in c["stages"].items() if v]  # fmt: skip
    stages.sort(key=lambda s: c["stages"][s["name"]].get("started", 0))
    return env.get_template("report.html.j2").render(
        title=c["spec"].get("title", c["spec"]["name"]), task=c["spec"], config=c["config"], evals=c["evals"],
        metrics=c["metrics"], rows=results_rows(c), headline=headline(c["run"]), stages=stages,
        eval_words=[split_words(c["spec"], s) for s in c["evals"]], curves=learning_curves(c),
        finetune_line=finetune_line(c), sample_rows=SAMPLE_ROWS, heatmap=layer_heatmap(c), scatter=trials_scatter(c),
        efficiency=efficiency_plot(c), examples=example_images(c), trials=c["trials"][:10],
        n_trials=len(c["trials"]), run_dir=str(c["run"]), pipeline=c["pipeline"],
        percent=c["family"].percent,
    )  # fmt: skip


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Render the report of ``run_dir`` into ``out`` (default: RUN/report.html); returns its path."""
    from bertvision.io import atomic_write_text

    return atomic_write_text(Path(out) if out is not None else Path(run_dir) / "report.html", render(collect(run_dir)))


def show_example(store: str | os.PathLike, example_id: str, out: str | os.PathLike) -> Path:
    """Draw one stored example (from a split folder, or the first split of a store holding it) into
    the PNG ``out``, as the report draws its examples."""
    from bertvision.io import atomic_write_bytes
    from bertvision.store import read_example, read_manifest, split_folders

    root = Path(store)
    folders = split_folders(root)
    for folder in folders:
        ex = read_example(folder, example_id)
        if ex is None:
            continue
        m = read_manifest(folder)
        label = _label_name(m.get("extra", {}).get("task_spec") or {}, ex["label"])
        sample = _split_sample(folder)
        fig = draw_states(ex["hidden"], f"{folder.name} {example_id}: {m['selection']} states of "
                          f"{Path(str(m.get('checkpoint') or 'pretrained')).name}, label {label}", ex["segments"],
                          span=_span(ex), standard=sample and sample[1])  # fmt: skip
        return atomic_write_bytes(out, _png(fig, uri=False))
    raise DataError(root, f"no example with id {example_id!r} in {', '.join(f.name for f in folders)}")
