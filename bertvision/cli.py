"""The `bertvision` command line. Each command is a thin layer over a library function.

    bertvision tasks                      every task, with the split sizes found
    bertvision tasks show rte             a few examples and the label distribution
    bertvision encoder                    what an encoder reports (hidden states, width)
    bertvision squad-eval DATA PRED       the official SQuAD 2.0 scores of a predictions file

Errors a user can fix print one line (``bertvision: error: FILE:LINE: problem``) and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap

from bertvision import __version__
from bertvision.errors import BertVisionError

DATA_HELP = (
    "local data folder holding glue/<Task>/*.tsv (the glue_data layout) and squad2/*-v2.0.json; "
    "default: $BERTVISION_DATA, else the Hugging Face Hub"
)


def _add_data_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", metavar="DIR", default=None, help=DATA_HELP)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertvision",
        description="Fine-tune a BERT-family encoder briefly, store every layer's hidden states "
        "once, and train small AdapterPooler heads on them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'bertvision COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"bertvision {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    tasks = commands.add_parser(
        "tasks",
        help="list every task with the split sizes found",
        description="List every registered task (the nine GLUE tasks, SQuAD 2.0 and its article "
        "split) and any user task configs given, with the number of examples in each split found "
        "locally, or 'not found' and where it looked.",
    )
    _add_data_dir(tasks)
    tasks.add_argument(
        "--task-config", metavar="FILE", action="append", default=[],
        help="also list the user task declared in FILE (.toml or .json); may be repeated",
    )  # fmt: skip
    tasks.set_defaults(func=cmd_tasks)
    tasks_sub = tasks.add_subparsers(dest="tasks_command", metavar="SUBCOMMAND")
    show = tasks_sub.add_parser(
        "show",
        help="print a task's spec, a few examples and its label distribution",
        description="Print a task's spec (kind, text fields, labels, metrics, splits), the first "
        "examples of one split and that split's label (or score) distribution.",
    )
    show.add_argument("task", help="task name (see 'bertvision tasks') or a user task config file")
    show.add_argument(
        "--split", default=None, help="split to show (default: the task's first split found)"
    )
    show.add_argument(
        "-n",
        "--num-examples",
        type=int,
        default=3,
        metavar="N",
        help="examples to print (default: 3)",
    )
    _add_data_dir(show)
    show.set_defaults(func=cmd_tasks_show)

    enc = commands.add_parser(
        "encoder",
        help="show what an encoder reports: hidden states, hidden size, revision",
        description="Load an encoder's config and tokenizer and print its facts: the number of "
        "hidden states (embedding output + every layer), hidden size, revision and location.",
    )
    enc.add_argument(
        "name", nargs="?", default=None,
        help="a Hugging Face encoder id or a local folder (default: the bundled all-MiniLM-L6-v2, offline)",
    )  # fmt: skip
    enc.add_argument(
        "--revision", default=None, help="Hub revision (branch, tag or commit) for a Hub id"
    )
    enc.add_argument("--json", action="store_true", help="print the facts as JSON")
    enc.set_defaults(func=cmd_encoder)

    sq = commands.add_parser(
        "squad-eval",
        help="score SQuAD 2.0 predictions with the official v2 evaluation",
        description="Score a predictions file (JSON: question id -> answer text, '' for no answer) "
        "against a SQuAD 2.0 data file, as the official evaluate-v2.0 script does: exact match and "
        "F1 with answer normalisation, HasAns / NoAns breakdown, and with --na-prob-file the best "
        "no-answer threshold. Unlike the official script, a missing prediction is an error.",
    )
    sq.add_argument("data_file", help="SQuAD 2.0 data file (e.g. dev-v2.0.json)")
    sq.add_argument("pred_file", help="predictions JSON: {question id: answer text}")
    sq.add_argument(
        "--na-prob-file", default=None, help="JSON {question id: probability of no answer}"
    )
    sq.add_argument(
        "--na-prob-thresh", type=float, default=1.0,
        help="predict no answer where the no-answer probability exceeds this (default: 1.0)",
    )  # fmt: skip
    sq.add_argument("--out-file", default=None, help="also write the scores to this JSON file")
    sq.set_defaults(func=cmd_squad_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BertVisionError as e:
        print(f"bertvision: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("bertvision: interrupted", file=sys.stderr)
        return 130


# ---------------------------------------------------------------------------------------------
# tasks


def cmd_tasks(args) -> int:
    from bertvision.tasks import DATA_ENV, get_task, resolve_data_dir, task_names

    data_dir = resolve_data_dir(args.data_dir)
    if data_dir is None:
        print(
            f"No local data folder (--data-dir or {DATA_ENV}): tasks load from the Hugging Face "
            "Hub when used; split sizes are not fetched here.\n"
        )
    else:
        origin = "--data-dir" if args.data_dir else DATA_ENV
        print(f"Data folder: {data_dir} (from {origin})\n")
    names = task_names() + list(args.task_config)
    failed = False
    print(f"{'task':<17} {'kind':<15} splits (examples)")
    for name in names:
        task = get_task(name, data_dir)
        cells, notes = [], []
        for split in task.spec.splits:
            if data_dir is None and not hasattr(task, "paths"):
                cells.append(split)
                continue
            if not task.exists(split):
                cells.append(f"{split} not found")
                notes.append(f"{split}: looked in {', '.join(task.candidates(split))}")
                continue
            try:
                cells.append(f"{split} {_size(task.load(split))}")
            except BertVisionError as e:
                cells.append(f"{split} ERROR")
                notes.append(str(e))
                failed = True
        missing = [s for s in task.spec.splits if cells and f"{s} not found" in cells]
        if len(missing) == len(task.spec.splits) > 1:  # nothing at all: one line says where
            cells = ["not found"]
            notes = [
                f"looked for {', '.join(_names(task, s) for s in missing)} in {_folders(task, missing[0])}"
            ]
        print(f"{task.name:<17} {task.spec.kind:<15} " + " · ".join(cells))
        for note in notes:
            print(textwrap.indent(note, " " * 19))
    return 1 if failed else 0


def _names(task, split: str) -> str:
    from pathlib import Path

    return Path(task.candidates(split)[0]).name


def _folders(task, split: str) -> str:
    from pathlib import Path

    return ", ".join(str(Path(c).parent) + "/" for c in task.candidates(split))


def _size(split) -> str:
    if split.task.kind == "span":
        return f"{len(split)} ({split.num_answerable} answerable)"
    return str(len(split))


def cmd_tasks_show(args) -> int:
    from bertvision.tasks import get_task

    task = get_task(args.task, args.data_dir)
    spec = task.spec
    split_name = args.split or next((s for s in spec.splits if task.exists(s)), spec.splits[0])
    data = task.load(split_name)
    print(f"{spec.title}  [{spec.name}]")
    print(f"  kind:        {spec.kind}")
    print(f"  text fields: {', '.join(spec.text_fields)}")
    if spec.labels:
        print("  labels:      " + ", ".join(f"{i}={name}" for i, name in enumerate(spec.labels)))
    print(f"  metrics:     {', '.join(spec.metrics)} (selection on {spec.metrics[0]})")
    print(f"  splits:      {', '.join(spec.splits)}; reported: {', '.join(spec.eval_splits)}")
    print(f"\n{split_name}: {len(data)} examples from {data.source}\n")
    for i in range(min(args.num_examples, len(data))):
        for key, value in data.example(i).items():
            print(f"  {key:>13}: {_clip(value)}")
        print()
    _print_distribution(data)
    return 0


def _clip(value, width: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _print_distribution(data) -> None:
    import numpy as np

    if data.task.kind == "regression" and data.labels is not None:
        s = data.labels
        q = np.percentile(s, [0, 25, 50, 75, 100])
        print(f"score distribution: mean {s.mean():.3f}, std {s.std():.3f}, "
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
    if data.task.kind == "span":
        print(f"  articles         {len(data.articles):>7}")


# ---------------------------------------------------------------------------------------------
# encoder, squad-eval


def cmd_encoder(args) -> int:
    from bertvision.encoders import encoder_info, load_tokenizer

    info = encoder_info(args.name, revision=args.revision)
    tokenizer = load_tokenizer(args.name, revision=args.revision)
    facts = info.to_dict() | {
        "tokenizer": type(tokenizer).__name__,
        "tokenizer_vocab": len(tokenizer),
    }
    if args.json:
        print(json.dumps(facts, indent=2))
    else:
        for key, value in facts.items():
            print(f"{key:>24}: {value}")
    return 0


def cmd_squad_eval(args) -> int:
    from bertvision.metrics.squad_v2 import evaluate_files

    scores = evaluate_files(args.data_file, args.pred_file, args.na_prob_file, args.na_prob_thresh)
    text = json.dumps(scores, indent=2)
    if args.out_file:
        from bertvision.io import atomic_write_text

        atomic_write_text(args.out_file, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
