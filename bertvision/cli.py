"""The `bertvision` command line. Each command is a thin layer over a library function.

    bertvision tasks                      every task, with the split sizes found
    bertvision tasks show rte             a few examples and the label distribution
    bertvision encoder                    what an encoder reports (hidden states, width)
    bertvision squad-eval DATA PRED       the official SQuAD 2.0 scores of a predictions file
    bertvision finetune / embed / train / evaluate / store verify    the method, stage by stage
    bertvision tune / tune show DIR       a Ray Tune + HyperOpt search over heads; its leaderboard
    bertvision ensemble                   heads (a search's best trials) and the fine-tuned encoder combined
    bertvision run --task T               all of it, resumable, ending in RUN/report.html
    bertvision report RUN / show STORE    the report of a run; one stored example as an image

Errors print one line (``bertvision: error: FILE:LINE: problem``, no traceback). Exit status:
0 done, 1 the input is wrong (a data file, a store, a head, an option), 2 the command line is
malformed, 3 something failed while running (disk full, permissions, a folder held by another
process, training diverged), 130 interrupted.
"""

from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

from bertvision import __version__
from bertvision.errors import EXIT_INTERRUPTED, EXIT_RUN, BertVisionError, ConfigError, os_error


def _add_data_dir(p: argparse.ArgumentParser, owner=None) -> None:
    """--data-dir, explained as ``owner``'s field (default: fine-tuning's)."""
    from bertvision.config import FinetuneConfig, field_docs

    p.add_argument("--data-dir", metavar="DIR", default=None,
                   help=field_docs(owner or FinetuneConfig)["data_dir"].replace("%", "%%"))  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bertvision",
        description="Fine-tune a BERT-family encoder briefly, store every layer's hidden states "
        "once, and train small AdapterPooler heads on them.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run 'bertvision COMMAND --help' for a command's options.\n\n"
        "Exit status: 0 done; 1 the input is wrong (a data file, a store, a head, an option);\n"
        "2 the command line is malformed; 3 something failed while running (disk full,\n"
        "permissions, a folder held by another process, training diverged); 130 interrupted.\n"
        "Errors print one line naming the file (and line) or the option.",
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

    _add_method_commands(commands)

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


def _add_method_commands(commands) -> None:
    """finetune, embed, train, ensemble, evaluate, store verify: the BERTVision method, stage by
    stage. The options of the first four are their configs' fields (`bertvision.config`): named
    after the field, explained by its docstring, defaulting to its default."""
    from bertvision.config import (
        EmbedConfig,
        EnsembleConfig,
        FinetuneConfig,
        HeadTrainConfig,
        SearchConfig,
        add_arguments,
    )

    ft = commands.add_parser(
        "finetune",
        help="fine-tune an encoder with a task head, for fractions of an epoch or several epochs",
        description="Fine-tune an encoder with a classification / regression head, or for span "
        "answers (SQuAD 2.0: windows with a document stride, start/end logits, CLS = no answer). A "
        "validation part is carved from train (seeded, stratified; whole articles for SQuAD, or the "
        "task's own validation split) and scores every checkpoint (and sets the no-answer threshold "
        "of span tasks); the dev/test split is scored once at the end. Checkpoints (safetensors + "
        "config) go to OUT/checkpoint-e<fraction>.",
    )
    add_arguments(ft, FinetuneConfig, required=("task",))
    ft.add_argument("--out", required=True, help="output folder")
    _add_ray_train_options(ft, "fine-tune through Ray Train (python -m ray_jobs.finetune) on an in-process Ray, "
                           "or on $RAY_ADDRESS's cluster: --workers workers (DDP, the global batch split between "
                           "them), a Ray Train checkpoint at every --save-at point, a dead worker replaced; same output")  # fmt: skip
    ft.set_defaults(func=cmd_finetune)

    em = commands.add_parser(
        "embed",
        help="store every layer's hidden states of a task's splits (Parquet + manifest)",
        description="Run a checkpoint over a task's splits and store the hidden states of every "
        "layer (embedding output included) as float16 Parquet shards with a manifest, one folder per "
        "split under OUT. Span tasks (SQuAD) are cut into windows and stored token by token without "
        "padding, with character offsets, targets and (from a span checkpoint) the encoder's own "
        "start/end logits. A rerun skips complete shards.",
    )
    add_arguments(em, EmbedConfig, required=("task",))
    em.add_argument("--out", required=True, help="store folder; each split goes to OUT/<split>")
    em.add_argument("--ray", action="store_true", help="run the Ray Data job (python -m ray_jobs.embed) on an in-process Ray, or on $RAY_ADDRESS's cluster: an actor pool of extractors, same store")
    em.add_argument("--actors", type=int, default=None, metavar="N", help="with --ray: actor pool size (default: one per GPU, or one per 2 CPUs)")
    em.set_defaults(func=cmd_embed)

    tr = commands.add_parser(
        "train",
        help="train AdapterPooler heads on a store, several seeds, mean and standard deviation",
        description="Train AdapterPooler heads on STORE/train. Selection (early stopping) uses a "
        "validation part carved from train with the same seed as fine-tuning; the dev split is "
        "scored once with the selected epoch. A token-level store (from 'embed' on a span task) "
        "trains span heads: start/end logits per token, padding masked, CLS = no answer; epochs are "
        "selected on validation F1 with the no-answer threshold chosen there (STORE/validation, or "
        "whole articles carved from train), then test/dev is scored once. Defaults marked 'for span "
        "tasks' apply to token-level stores. Writes TensorBoard events, weights (safetensors), "
        "configs and metrics per seed, and summary.json with mean and standard deviation.",
    )
    add_arguments(tr, HeadTrainConfig, required=("store",))
    tr.add_argument("--out", required=True, help="output folder")
    _add_ray_train_options(tr, "train through Ray Train (python -m ray_jobs.train) on an in-process Ray, or on "
                           "$RAY_ADDRESS's cluster: --workers workers per head (DDP), a checkpoint every epoch, a "
                           "dead worker replaced; same output")  # fmt: skip
    tr.set_defaults(func=cmd_train)

    tu = commands.add_parser(
        "tune",
        help="search head hyperparameters on stored states (Ray Tune, HyperOpt, ASHA); 'tune show' prints a leaderboard",
        description="Search AdapterPooler head hyperparameters on one or more stores of a task with Ray Tune: "
        "HyperOpt's TPE (the default head configuration first, then random points, then TPE), a limit on "
        "concurrent trials so that it learns from finished ones, and ASHA stopping on the per-epoch "
        "validation score. Trials select on the validation part carved from train; dev and test are never "
        "read. Runs on an in-process Ray, or on $RAY_ADDRESS's cluster. Writes one folder per trial (its "
        "config and validation history in trial.json, the best weights, TensorBoard events) and "
        "leaderboard.json under OUT. 'bertvision tune show OUT' prints the leaderboard again.",
    )
    add_arguments(tu, SearchConfig)
    tu.add_argument("--out", help="search folder")
    tu.add_argument("--workers-per-trial", type=int, default=1, metavar="N",
                    help="Ray Train workers per trial (default 1): above 1 each trial is a Ray Train run (DDP), "
                    "its --cpus-per-trial and --gpus-per-trial split between its workers")  # fmt: skip
    tu.add_argument("--resume", action="store_true", help="finish the search in OUT (after its driver was killed): "
                    "the same trials in all, finished trials kept")  # fmt: skip
    tu.set_defaults(func=cmd_tune)
    tu_sub = tu.add_subparsers(dest="tune_command", metavar="SUBCOMMAND")
    show = tu_sub.add_parser("show", help="print a search's leaderboard from its folder",
                             description="Print the trials of a search folder, best validation score first.")  # fmt: skip
    show.add_argument("path", help="a folder written by 'bertvision tune'")
    show.add_argument("--top", type=int, default=None, metavar="N", help="only the N best trials")
    show.set_defaults(func=cmd_tune_show)

    en = commands.add_parser(
        "ensemble",
        help="ensemble heads (a search's best trials) and the fine-tuned encoder",
        description="Combine heads (the best --top-k trials of a 'bertvision tune' search, or seed-<k> "
        "folders from 'bertvision train') and, with --encoder, the fine-tuned encoder's own logits stored "
        "beside the hidden states. Sentence tasks: members' probabilities (regression: predictions) are "
        "averaged with weights chosen on the validation part by greedy selection with replacement; every "
        "member, the uniform and the greedy ensemble are then scored once on the eval split, and the one "
        "better on validation is marked chosen (greedy on a tie). Span tasks: "
        "each member's start and end probabilities are combined by element-wise max or mean, with the "
        "no-answer threshold chosen on validation, and scored once on the eval split (official SQuAD 2.0 "
        "scorer). Writes OUT/ensemble.json (span tasks: and predictions per method).",
    )
    add_arguments(en, EnsembleConfig, flags={"methods": "--method"})
    en.add_argument("--out", required=True, help="output folder")
    en.set_defaults(func=cmd_ensemble)

    ev = commands.add_parser(
        "evaluate",
        help="score a trained head on a stored split",
        description="Score a head written by 'bertvision train' (a seed-<k> folder) on a store split. "
        "The store must come from the same encoder and checkpoint as the head's training store. Span "
        "heads are scored by the official SQuAD 2.0 scorer with the no-answer threshold chosen on "
        "validation at training (the questions' text is read from the task's data).",
    )
    ev.add_argument("--head", required=True, help="a seed-<k> folder written by 'bertvision train'")
    ev.add_argument("--store", required=True, help="a split folder of a store (e.g. STORE/dev)")
    _add_data_dir(ev, HeadTrainConfig)
    ev.set_defaults(func=cmd_evaluate)

    from bertvision.pipeline import PipelineConfig

    rn = commands.add_parser(
        "run",
        help="the method end to end for one task, resumable: fine-tuning baseline, stores, search, heads, ensemble, report",
        description="Run the method for one task on Ray (an in-process Ray, or $RAY_ADDRESS's cluster): the majority "
        "class; the full fine-tuning baseline (--lrs and 1..--max-epochs chosen on validation, then --seeds runs); "
        "every layer's states of the first seed's 1-epoch checkpoint (--selections); a HyperOpt search over "
        "AdapterPooler heads (--trials); the best configuration trained with every seed; the ensemble of the best "
        "--top-k trials and the encoder; with --fractions, fine-tuning and the best head on shares of the training "
        "data; then OUT/report.html. Every choice is made on the validation part carved from train; dev is scored "
        "once. A rerun skips finished stages and resumes an unfinished one; a changed option redoes the stages that "
        "depend on it, and says so. Prints the headline and where the report is.",
    )
    add_arguments(rn, PipelineConfig, required=("task",))
    rn.add_argument("--out", default=None, help="run folder (default: runs/<task>)")
    rn.add_argument("--embed-with", choices=("auto", "ray", "local"), default="auto",
                    help="extraction: the Ray Data job, this process's loop, or auto: Ray Data on a cluster of "
                    "several nodes or with GPUs, else the local loop (default: auto)")  # fmt: skip
    rn.set_defaults(func=cmd_run)

    rp = commands.add_parser(
        "report",
        help="write a run's report: one self-contained HTML page",
        description="Write RUN/report.html (or --out) from the files of a 'bertvision run' folder: the results table "
        "(majority class, full fine-tuning, the best head, the ensemble, peers, the original study's figures) with "
        "mean and spread over seeds and each result's cost, learning curves, the heads' layer weights, stored "
        "examples drawn as images, the search trials and the data-efficiency plot. Figures are embedded: the page "
        "needs no network.",
    )
    rp.add_argument("run_dir", metavar="RUN_DIR", help="a folder written by 'bertvision run'")
    rp.add_argument("--out", default=None, help="HTML file to write (default: RUN_DIR/report.html)")
    rp.set_defaults(func=cmd_report)

    sh = commands.add_parser(
        "show",
        help="draw one stored example's states as an image",
        description="Draw one example of a store as a PNG, as the report does: a cls or mean store's (layers x "
        "hidden) states as one image, a token store's (tokens x hidden) states one panel per layer.",
    )
    sh.add_argument("store", metavar="STORE", help="a store split folder (with _manifest.json), or a store of split folders")
    sh.add_argument("--id", required=True, dest="example_id", help="the example's id (e.g. dev-12)")
    sh.add_argument("--out", required=True, help="PNG file to write")
    sh.set_defaults(func=cmd_show)

    store = commands.add_parser("store", help="inspect embedding stores", description="Inspect embedding stores.")
    store_sub = store.add_subparsers(dest="store_command", metavar="SUBCOMMAND", required=True)
    ver = store_sub.add_parser(
        "verify",
        help="check a store's checksums, row counts and shapes",
        description="Check every shard of a store split: present, readable, sha256 as recorded, row "
        "counts and tensor shapes as the manifest says. A folder holding split folders is checked "
        "split by split.",
    )
    ver.add_argument("path", help="a store split folder (with _manifest.json), or a folder of them")
    ver.set_defaults(func=cmd_store_verify)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status says what happened (see `bertvision.errors`): 0 done,
    1 the input is wrong, 2 the command line is malformed, 3 something failed while running,
    130 interrupted."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BertVisionError as e:
        print(f"bertvision: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk, a permission, a vanished path: say which, no traceback
        print(f"bertvision: error: {os_error(e, f'running {args.command!r}')}", file=sys.stderr)
        return EXIT_RUN
    except KeyboardInterrupt:
        print("bertvision: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# ---------------------------------------------------------------------------------------------
# tasks


def cmd_tasks(args) -> int:
    from bertvision.tasks import DATA_ENV, UserTask, get_task, resolve_data_dir, task_names

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
            if data_dir is None and not isinstance(task, UserTask):  # Hub: sizes not fetched
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


EVAL_SPLITS = ("dev", "dev_matched", "dev_mismatched", "test")
SPAN_METRICS = ("exact", "f1", "HasAns_f1", "NoAns_f1")


def _headline(scores: dict) -> dict:
    """A split's scores as printed: SQuAD scores (they have HasAns_f1) cut to the headline ones."""
    return {m: round(scores[m], 2) for m in SPAN_METRICS if m in scores} if "HasAns_f1" in scores else scores


def cmd_finetune(args) -> int:
    from bertvision.config import FinetuneConfig, from_arguments

    cfg = from_arguments(FinetuneConfig, args)  # a bad option is refused before torch is imported
    from bertvision.finetune import finetune

    print_finetune_result(_ray_train("finetune", args, cfg, finetune))
    return 0


def print_finetune_result(result) -> None:
    """What 'bertvision finetune' prints: each checkpoint's headline scores and training time."""
    for name, meta in result.checkpoints.items():
        scores = {k: _headline(v) for k, v in meta.items() if k in ("validation", *EVAL_SPLITS)}
        print(f"{result.out_dir / name}: {json.dumps(scores)}  ({meta['train_seconds']:.0f} s training)")


def _ray_runner(name: str):
    """The Ray entrypoint registered as ``name`` in the ``bertvision.runners`` entry points
    (pyproject.toml: the project's ``ray_jobs``), loaded only when ``--ray`` asks for it."""
    from importlib.metadata import entry_points

    found = list(entry_points(group="bertvision.runners", name=name))
    if not found:
        raise ConfigError(f"--ray: no Ray runner {name!r} is installed (the project's ray_jobs package registers "
                          "it; reinstall with: pip install -e .)")  # fmt: skip
    return found[0].load()


def cmd_tune(args) -> int:
    from bertvision.config import SearchConfig, from_arguments

    if not args.out:
        raise ConfigError("tune: --out is required (or 'bertvision tune show DIR')")
    search = from_arguments(SearchConfig, args, stores=tuple(args.stores or ()))
    from bertvision.search import format_leaderboard

    run = _ray_runner("tune")  # the search runs on Ray, outside the library
    job = sys.modules[run.__module__].TuneJobConfig(resume=args.resume, workers_per_trial=args.workers_per_trial)
    print(format_leaderboard(run(search, str(Path(args.out).expanduser().absolute()), job), search.top_k))
    return 0


def cmd_tune_show(args) -> int:
    from bertvision.search import format_leaderboard, leaderboard

    print(format_leaderboard(leaderboard(args.path), args.top))
    return 0


def cmd_embed(args) -> int:
    from bertvision.config import EmbedConfig, from_arguments

    cfg = from_arguments(EmbedConfig, args)  # a bad option is refused before torch is imported
    from bertvision.embed import embed

    if args.ray:  # the job lives outside the library, which never imports Ray
        run = _ray_runner("embed")
        job = sys.modules[run.__module__].RayJobConfig(actors=args.actors)  # the runner's own job options
        # The job runs in this process and this folder, where a relative path means what it says;
        # the actors (on every node of a $RAY_ADDRESS cluster) get it absolute.
        run(cfg, str(Path(args.out).expanduser().absolute()), job)
        return 0
    if args.actors is not None:
        raise ConfigError("--actors sizes the Ray actor pool: it needs --ray")
    for split, m in embed(cfg, args.out).items():
        run = m["this_run"]  # None: the store was complete before this run; nothing was embedded
        speed = f", {run['rows_per_second']} rows/s" if run else " (already complete; nothing embedded)"
        shape = f"({m['num_hidden_states']}, {m['hidden_size']})"
        if m["selection"] == "tokens":
            rows = "examples" if m.get("token_layout") == "sentences" else "windows"
            what = f"{m['rows']} {rows} x tokens x {shape}"
        else:
            what = f"{m['rows']} rows x {shape}"
        print(f"{args.out}/{split}: {what}{speed}")
    return 0


RAY_TRAIN_OPTIONS = ("workers", "cpus_per_worker", "gpus_per_worker", "max_failures")


def _add_ray_train_options(p: argparse.ArgumentParser, ray_help: str) -> None:
    """--ray and the Ray Train job's options (ray_jobs/train.py's TrainJobConfig)."""
    p.add_argument("--ray", action="store_true", help=ray_help)
    p.add_argument("--workers", type=int, default=None, help="with --ray: Ray Train workers (default 1)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="with --ray: CPUs each worker asks for, and its torch threads (default 1)")  # fmt: skip
    p.add_argument("--gpus-per-worker", type=float, default=None,
                   help="with --ray: GPUs each worker asks for (NCCL when positive; default 0)")  # fmt: skip
    p.add_argument("--max-failures", type=int, default=None,
                   help="with --ray: restarts from the last checkpoint after a worker dies (default 2)")  # fmt: skip


def _ray_train(name: str, args, cfg, local):
    """``local(cfg, out)``, or with --ray the Ray Train runner ``name`` with the job's options."""
    given = {k: getattr(args, k) for k in RAY_TRAIN_OPTIONS if getattr(args, k) is not None}
    if args.ray:  # the job lives outside the library, which never imports Ray
        run = _ray_runner(name)
        job = sys.modules[run.__module__].TrainJobConfig(**given)
        return run(cfg, str(Path(args.out).expanduser().absolute()), job)
    if given:
        raise ConfigError(f"--{next(iter(given)).replace('_', '-')} sizes the Ray Train workers: it needs --ray")
    return local(cfg, args.out)


def cmd_train(args) -> int:
    from bertvision.config import HeadTrainConfig, from_arguments

    cfg = from_arguments(HeadTrainConfig, args)  # a bad option is refused before torch is imported
    from bertvision.train import train_heads

    print_train_summary(_ray_train("train", args, cfg, train_heads))
    return 0


def print_train_summary(summary: dict) -> None:
    """What 'bertvision train' prints: validation and eval scores over seeds, the head's size."""
    if summary["kind"] == "span":
        metrics, splits = (*SPAN_METRICS, "threshold"), ("validation", "test", "dev")
    else:
        metrics, splits = None, ("validation", *[k for k in summary if k.startswith("dev")])
    for split in splits:
        for metric, v in summary.get(split, {}).items():
            if metrics is None or metric in metrics:
                print(f"{split:>14} {metric}: {v['mean']:.4f} ± {v['std']:.4f} over {len(summary['seeds'])} seed(s)")
    print(f"head: {summary['runs'][0]['parameters']} parameters, {summary['epoch_seconds']:.2f} s per epoch")


def cmd_ensemble(args) -> int:
    from bertvision.config import EnsembleConfig, from_arguments

    cfg = from_arguments(EnsembleConfig, args)  # a bad option is refused before torch is imported
    from bertvision.ensemble import ensemble

    result = ensemble(cfg, args.out)
    if result["kind"] != "span":
        print(format_sentence_ensemble(result))
        return 0
    rows = [(f"member {k}", v) for k, v in result["members"].items()] + [(f"ensemble {k}", v) for k, v in result["ensembles"].items()]
    for label, r in rows:
        for split in [s for s in r if s not in ("validation", "threshold")]:
            m = r[split]
            print(f"{label}: {split} EM {m['exact']:.2f} F1 {m['f1']:.2f} HasAns F1 {m.get('HasAns_f1', float('nan')):.2f} "
                  f"NoAns F1 {m.get('NoAns_f1', float('nan')):.2f} (threshold {r['threshold']:.3f} from validation)")
    return 0


def format_sentence_ensemble(result: dict) -> str:
    """A sentence ensemble as a table: each member and ensemble, its greedy weight, its
    validation selection score and each eval split's metrics."""
    evals, metrics = result["evals"], result["metrics"]
    head = f"{'':<40} {'weight':>6} {'val score':>9}" + "".join(f" {f'{e} {m}':>16}" for e in evals for m in metrics)
    rows = [(f"member {k}", result["weights"][k], v) for k, v in result["members"].items()]
    rows += [(f"ensemble {k}{' (chosen)' if k == result['chosen'] else ''}", "", v) for k, v in result["ensembles"].items()]
    lines = [head]
    for label, weight, r in rows:
        label = label if len(label) <= 40 else "..." + label[-37:]
        lines.append(f"{label:<40} {weight!s:>6} {r['validation']['score']:>9.4f}"
                     + "".join(f" {r[e][m]:>16.4f}" for e in evals for m in metrics))  # fmt: skip
    lines.append(f"weights and the {result['chosen']} ensemble chosen on {result['validation_rows']} validation examples; "
                 f"{', '.join(evals) or 'no eval split'} scored once")  # fmt: skip
    return "\n".join(lines)


def cmd_run(args) -> int:
    from bertvision.config import from_arguments
    from bertvision.pipeline import PipelineConfig

    cfg = from_arguments(PipelineConfig, args)  # a bad option is refused before Ray starts
    out = args.out or str(Path("runs") / Path(cfg.task).stem)
    run = _ray_runner("pipeline")  # the pipeline's fine-tuning grid and search run on Ray
    job = sys.modules[run.__module__].PipelineJobConfig(embed_with=args.embed_with)
    summary = run(cfg, str(Path(out).expanduser().absolute()), job)
    from bertvision.report import headline

    print()
    print(textwrap.fill(headline(out), width=100))
    print(f"\nreport: {summary['report']}  (ran: {', '.join(summary['ran']) or 'nothing; every stage was finished'}; "
          f"{summary['wall_seconds']:.0f} s)")  # fmt: skip
    return 0


def cmd_report(args) -> int:
    from bertvision.report import headline, write_report

    path = write_report(args.run_dir, args.out)
    print(textwrap.fill(headline(args.run_dir), width=100))
    print(f"report: {path}")
    return 0


def cmd_show(args) -> int:
    from bertvision.report import show_example

    print(show_example(args.store, args.example_id, args.out))
    return 0


def cmd_evaluate(args) -> int:
    from bertvision.train import evaluate_head

    print(json.dumps(evaluate_head(args.head, args.store, args.data_dir), indent=2))
    return 0


def cmd_store_verify(args) -> int:
    from bertvision.store import split_folders, verify

    for folder in split_folders(args.path):
        report = verify(folder)
        print(f"{folder}: ok, {report['rows']} rows in {report['shards']} shard(s), "
              f"{report['bytes_per_row']:.0f} bytes per row")  # fmt: skip
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
