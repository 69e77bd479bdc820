"""What the commands print: each takes a library function's result (and the config and --out it
ran with), so `bertvision` and the Ray jobs (`ray_jobs/`) print alike."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from bertvision.config import FAMILY
from bertvision.tasks.custom import CARVED

EVAL_SPLITS = ("dev", "dev_matched", "dev_mismatched", "test", CARVED)
SPAN_METRICS = ("exact", "f1", "HasAns_f1", "NoAns_f1")
TRAIN_LINES = {"sentence": (None, ("validation", "dev", CARVED)), "span": ((*SPAN_METRICS, "threshold"), ("validation", "test", "dev"))}
"""Task family -> what 'bertvision train' prints: (metrics, None for every one; splits, by name prefix)."""
NOUNS = {"vectors": "rows", "windows": "windows x tokens", "sentences": "examples x tokens"}
"""A store's layout -> what its rows are, in 'bertvision embed''s lines."""


def _headline(scores: dict) -> dict:
    """A split's scores as printed: SQuAD scores (they have HasAns_f1) cut to the headline ones."""
    return {m: round(scores[m], 2) for m in SPAN_METRICS if m in scores} if "HasAns_f1" in scores else scores


def print_finetune_result(result, cfg=None, out=None) -> None:
    """Each checkpoint's headline scores and training time."""
    for name, meta in result.checkpoints.items():
        scores = {k: _headline(v) for k, v in meta.items() if k in ("validation", *EVAL_SPLITS)}
        print(f"{result.out_dir / name}: {json.dumps(scores)}  ({meta['train_seconds']:.0f} s training)")


def print_embed(manifests: dict, cfg, out: str) -> None:
    """Each split's store: rows and shape, and this run's speed (or that it was complete)."""
    from bertvision.store import layout_of

    for split, m in manifests.items():
        run = m["this_run"]  # None: the store was complete before this run; nothing was embedded
        speed = f", {run['rows_per_second']} rows/s" if run else " (already complete; nothing embedded)"
        print(f"{out}/{split}: {m['rows']} {NOUNS[layout_of(m).name]} x ({m['num_hidden_states']}, {m['hidden_size']}){speed}")


def print_predict(manifest: dict, cfg, out: str) -> None:
    """A prediction job's parts: rows, and this run's speed (or that every part was written before)."""
    run = manifest["this_run"]  # None: every part was written before this run
    speed = f", {run['rows']} predicted now at {run['rows_per_second']} rows/s" if run else " (already complete; nothing predicted)"  # fmt: skip
    print(f"{out}: {manifest['rows']} rows in {len(manifest['pieces'])} part(s) ({manifest['settings']['model']}){speed}")  # fmt: skip


def print_train_summary(summary: dict, cfg=None, out=None) -> None:
    """Validation and eval scores over seeds, the head's size."""
    metrics, prefixes = TRAIN_LINES[FAMILY[summary["kind"]]]
    for split in [s for p in prefixes for s in summary if s.startswith(p)]:
        for metric, v in summary[split].items():
            if metrics is None or metric in metrics:
                print(f"{split:>14} {metric}: {v['mean']:.4f} ± {v['std']:.4f} over {len(summary['seeds'])} seed(s)")
    print(f"head: {summary['runs'][0]['parameters']} parameters, {summary['epoch_seconds']:.2f} s per epoch")


def print_leaderboard(board: list[dict], cfg, out=None) -> None:
    print(format_leaderboard(board, cfg.top_k))


def format_leaderboard(board: list[dict], top: int | None = None) -> str:
    """The leaderboard as text: rank, validation score, epochs run, store, hyperparameters."""
    lines = [f"{'rank':>4} {'score':>8} {'epochs':>6}  store / hyperparameters"]
    for rank, row in enumerate(board[:top] if top else board, 1):
        p = row["params"]
        rest = ", ".join(f"{k}={f'{v:.3g}' if isinstance(v, float) else v}" for k, v in p.items() if k != "store")
        lines.append(f"{rank:>4} {row['score']:>8.4f} {len(row['history']):>6}  {p['store']}  {rest}")
    return "\n".join(lines)


def format_sentence_ensemble(result: dict) -> str:
    """A sentence ensemble as a table: each member and ensemble, its greedy weight, its
    validation selection score and each eval split's metrics."""
    evals, metrics = result["evals"], result["metrics"]
    rows = [(f"member {k}", result["weights"][k], v) for k, v in result["members"].items()]
    rows += [(f"ensemble {k}{' (chosen)' if k == result['chosen'] else ''}", "", v) for k, v in result["ensembles"].items()]
    lines = [f"{'':<40} {'weight':>6} {'val score':>9}" + "".join(f" {f'{e} {m}':>16}" for e in evals for m in metrics)]
    for label, weight, r in rows:
        label = label if len(label) <= 40 else "..." + label[-37:]
        lines.append(f"{label:<40} {weight!s:>6} {r['validation']['score']:>9.4f}"
                     + "".join(f" {r[e][m]:>16.4f}" for e in evals for m in metrics))  # fmt: skip
    lines.append(f"weights and the {result['chosen']} ensemble chosen on {result['validation_rows']} validation examples; "
                 f"{', '.join(evals) or 'no eval split'} scored once")  # fmt: skip
    return "\n".join(lines)


def _span_ensemble(result: dict) -> str:
    """Each span member's and ensemble's eval scores, with the threshold chosen on validation."""
    rows = [(f"member {k}", v) for k, v in result["members"].items()] + [(f"ensemble {k}", v) for k, v in result["ensembles"].items()]
    return "\n".join(f"{label}: {split} EM {m['exact']:.2f} F1 {m['f1']:.2f} HasAns F1 {m.get('HasAns_f1', float('nan')):.2f} "
                     f"NoAns F1 {m.get('NoAns_f1', float('nan')):.2f} (threshold {r['threshold']:.3f} from validation)"
                     for label, r in rows for split, m in r.items() if split not in ("validation", "threshold"))  # fmt: skip


ENSEMBLES = {"sentence": format_sentence_ensemble, "span": _span_ensemble}


def print_ensemble(result: dict, cfg=None, out=None) -> None:
    text = ENSEMBLES[FAMILY[result["kind"]]](result)
    if text:
        print(text)


def print_baseline(summary: dict, cfg=None, out=None) -> None:
    """The learning rate and epochs chosen on validation, the eval splits over seeds."""
    c = summary["chosen"]
    if c["validation_score"] is None:
        print(f"one setting, nothing chosen: lr {c['lr']:g}, {c['epochs']:g} epoch(s)")
    else:
        print(f"chosen on validation: lr {c['lr']:g}, {c['epochs']:g} epoch(s) (score {c['validation_score']:.4f})")
    for split in summary.get("evals", ()):
        for name, v in summary[split].items():
            print(f"{split:>14} {name}: {v['mean']:.4f} ± {v['std']:.4f} over {len(summary['seeds'])} seed(s)")


def print_run(summary: dict, cfg=None, out=None) -> None:
    """The run's headline in words, where its report is, and what ran."""
    from bertvision.report import headline

    print("\n" + textwrap.fill(headline(Path(summary["report"]).parent), width=100))
    print(f"\nreport: {summary['report']}  (ran: {', '.join(summary['ran']) or 'nothing; every stage was finished'}; "
          f"{summary['wall_seconds']:.0f} s)")  # fmt: skip


def print_report(path, args) -> None:
    """'bertvision report': the run's headline and where its report is."""
    from bertvision.report import headline

    print(textwrap.fill(headline(args.run_dir), width=100))
    print(f"report: {path}")


def print_tasks(data_dir, origin: str, task_configs: list[str]) -> int:
    """'bertvision tasks': every task's split sizes found in ``data_dir`` (or where it looked);
    returns 1 where a split could not be read."""
    from bertvision.errors import BertVisionError
    from bertvision.tasks import DATA_ENV, UserTask, get_task, task_names

    if data_dir is None:
        print(f"No local data folder (--data-dir or {DATA_ENV}): tasks load from the Hugging Face "
              "Hub when used; split sizes are not fetched here.\n")  # fmt: skip
    else:
        print(f"Data folder: {data_dir} (from {origin})\n")
    failed = False
    print(f"{'task':<17} {'kind':<15} splits (examples)")
    for name in task_names() + list(task_configs):
        task = get_task(name, data_dir)
        cells, notes = [], []
        for split in task.spec.splits:
            if data_dir is None and not isinstance(task, UserTask):  # Hub: sizes not fetched
                cells.append(split)
            elif not task.exists(split):
                cells.append(f"{split} not found")
                notes.append(f"{split}: looked in {', '.join(task.candidates(split))}")
            else:
                try:
                    data = task.load(split)
                    answerable = getattr(data, "num_answerable", None)  # SQuAD's splits
                    cells.append(f"{split} {len(data)}" + ("" if answerable is None else f" ({answerable} answerable)"))
                except BertVisionError as e:
                    cells.append(f"{split} ERROR")
                    notes.append(str(e))
                    failed = True
        missing = [s for s in task.spec.splits if cells and f"{s} not found" in cells]
        if len(missing) == len(task.spec.splits) > 1:  # nothing at all: one line says where
            names = ", ".join(Path(task.candidates(s)[0]).name for s in missing)
            cells = ["not found"]
            notes = [f"looked for {names} in {', '.join(str(Path(c).parent) + '/' for c in task.candidates(missing[0]))}"]
        print(f"{task.name:<17} {task.spec.kind:<15} " + " · ".join(cells))
        for note in notes:
            print(textwrap.indent(note, " " * 19))
    return 1 if failed else 0


def carved_parts(task) -> str:
    """The three parts of a task whose test part is carved from train, with their sizes: the
    validation part as runs carve it by default (`carve_validation`)."""
    from bertvision.config import PipelineConfig
    from bertvision.tasks.base import carve_validation

    carve, rest = task.spec.carved_test, task.load(task.spec.carved_test["from"])
    test = task.load(carve["split"])
    fraction, seed = PipelineConfig.validation_fraction, PipelineConfig.validation_seed
    stratify = rest.labels if task.spec.labels else None
    training, validation = carve_validation(stratify, len(rest), fraction, seed, source=rest.source)
    return (f"{len(rest) + len(test)} examples in {Path(rest.source).name}: training {len(training)}, validation "
            f"{len(validation)} (carved by each run: --validation-fraction {fraction}, --validation-seed {seed}), "
            f"test {len(test)} (split {carve['split']!r}, carved first: test_fraction {carve['fraction']}, "
            f"test_seed {carve['seed']})")  # fmt: skip


def print_task(task, split: str | None, num_examples: int) -> None:
    """'bertvision tasks show': a task's spec, a split's first examples and label distribution."""
    import numpy as np

    spec = task.spec
    split = split or next((s for s in spec.splits if task.exists(s)), spec.splits[0])
    data = task.load(split)
    print(f"{spec.title}  [{spec.name}]")
    print(f"  kind:        {spec.kind}")
    print(f"  text fields: {', '.join(spec.text_fields)}")
    if spec.labels:
        print("  labels:      " + ", ".join(f"{i}={name}" for i, name in enumerate(spec.labels)))
    print(f"  metrics:     {', '.join(spec.metrics)} (selection on {spec.metrics[0]})")
    print(f"  splits:      {', '.join(spec.splits)}; reported: {', '.join(spec.eval_splits)}")
    if spec.carved_test:
        print("  parts:       " + carved_parts(task))
    print(f"\n{split}: {len(data)} examples from {data.source}\n")
    for i in range(min(num_examples, len(data))):
        for key, value in data.example(i).items():
            text = " ".join((value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).split())
            print(f"  {key:>13}: {text if len(text) <= 160 else text[:159] + '…'}")
        print()
    scores = None if spec.labels else getattr(data, "labels", None)  # a regression task's
    if scores is not None:
        q = np.percentile(scores, [0, 25, 50, 75, 100])
        print(f"score distribution: mean {scores.mean():.3f}, std {scores.std():.3f}, "
              f"min {q[0]:g} / q1 {q[1]:g} / median {q[2]:g} / q3 {q[3]:g} / max {q[4]:g}")  # fmt: skip
        return
    counts = data.label_counts()
    if not counts:
        print("no labels in this split")
        return
    total = sum(counts.values())
    print("label distribution:")
    for name, n in counts.items():
        print(f"  {name:<16} {n:>7}  {100 * n / total:5.1f}%")
    if hasattr(data, "articles"):  # SQuAD's splits
        print(f"  articles         {len(data.articles):>7}")
