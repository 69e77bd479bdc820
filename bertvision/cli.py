"""The `bertvision` command line: a table of commands (`commands`), each a thin layer over a library
function. A stage's options come from its config's fields and its Ray job's; ``--ray`` (always, for
tune and run) runs the job registered in the ``bertvision.runners`` entry points, so the library
never imports ``ray_jobs``; a printer (`bertvision.printing`) prints the result. Errors print one
line; the exit statuses are `bertvision.errors`' (see the parser's epilog)."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path

from bertvision import __version__
from bertvision.errors import EXIT_INTERRUPTED, EXIT_RUN, BertVisionError, ConfigError, os_error


@dataclass(frozen=True)
class Command:
    """One command: its help; its config and Ray job (a stage), its library function ``run``
    ("module:name") and ``printer``; or ``run`` a function of the parsed arguments."""

    help: str
    description: str
    run: str | Callable | None = None
    printer: Callable | None = None
    config: type | None = None
    job: type | None = None
    ray: str | None = None
    """--ray's help, where the Ray job is optional (a command with a job and no --ray always runs it)."""
    runner: str | None = None
    """The runner's entry-point name (default: the command's)."""
    out: str | None = None
    """--out's help; required unless ``default_out(cfg)`` gives one."""
    default_out: Callable | None = None
    args: tuple = ()
    """More options: (flags, argparse keyword arguments), or (a config, a field name) for a field's flag."""
    given: tuple[str, ...] = ()
    """A command that is no stage: the options handed to ``run`` (printed by ``printer(result, args)``)."""
    flags: dict = field(default_factory=dict)
    sub: dict = field(default_factory=dict)


def commands() -> dict[str, Command]:
    """The command table (built on each call: the tests replace a `cmd_*` function before `main`)."""
    from bertvision import config as cf
    from bertvision import printing as pr

    data_dir = (cf.FinetuneConfig, "data_dir")
    n = {"type": int, "metavar": "N"}
    return {
        "tasks": Command(
            "list every task with the split sizes found",
            "List every registered task (the nine GLUE tasks, SQuAD 2.0 and its article split) and any user task "
            "configs given, with the number of examples in each split found locally, or 'not found' and where it "
            "looked.", cmd_tasks, args=(data_dir, (("--task-config",), {"metavar": "FILE", "action": "append",
            "default": [], "help": "also list the user task declared in FILE (.toml or .json); may be repeated"})),
            sub={"show": Command(
                "print a task's spec, a few examples and its label distribution",
                "Print a task's spec (kind, text fields, labels, metrics, splits), the first examples of one split "
                "and that split's label (or score) distribution.", "bertvision.tasks:get_task",
                lambda task, a: pr.print_task(task, a.split, a.num_examples), given=("task", "data_dir"), args=(
                    (("task",), {"help": "task name (see 'bertvision tasks') or a user task config file"}),
                    (("--split",), {"default": None, "help": "split to show (default: the task's first split found)"}),
                    (("-n", "--num-examples"), {**n, "default": 3, "help": "examples to print (default: 3)"}), data_dir))}),
        "encoder": Command(
            "show what an encoder reports: hidden states, hidden size, revision",
            "Load an encoder's config and tokenizer and print its facts: the number of hidden states (embedding "
            "output + every layer), hidden size, revision and location.", cmd_encoder, args=(
                (("name",), {"nargs": "?", "default": None, "help": "a Hugging Face encoder id or a local folder "
                             "(default: the bundled all-MiniLM-L6-v2, offline)"}),
                (("--revision",), {"default": None, "help": "Hub revision (branch, tag or commit) for a Hub id"}),
                (("--json",), {"action": "store_true", "help": "print the facts as JSON"}))),
        "finetune": Command(
            "fine-tune an encoder with a task head, for fractions of an epoch or several epochs",
            "Fine-tune an encoder with a classification / regression head, or for span answers (SQuAD 2.0: windows "
            "with a document stride, start/end logits, CLS = no answer). A validation part (seeded, stratified) "
            "scores every checkpoint (and sets the no-answer threshold of span tasks); the dev/test split is scored "
            "once at the end. Checkpoints (safetensors + config) go to OUT/checkpoint-e<fraction>.",
            "bertvision.finetune:finetune", pr.print_finetune_result, cf.FinetuneConfig, cf.TrainJobConfig,
            "fine-tune through Ray Train (python -m ray_jobs.finetune) on an in-process Ray, or on $RAY_ADDRESS's "
            "cluster: --workers workers (DDP, the global batch split between them), a Ray Train checkpoint at every "
            "--save-at point, a dead worker replaced; same output", out="output folder"),
        "embed": Command(
            "store every layer's hidden states of a task's splits (Parquet + manifest)",
            "Run a checkpoint over a task's splits and store the hidden states of every layer (embedding output "
            "included) as float16 Parquet shards with a manifest, one folder per split under OUT. Span tasks (SQuAD) "
            "are cut into windows and stored token by token without padding, with character offsets, targets and "
            "(from a span checkpoint) the encoder's own start/end logits. A rerun skips complete shards.",
            "bertvision.embed:embed", pr.print_embed, cf.EmbedConfig, cf.RayJobConfig,
            "run the Ray Data job (python -m ray_jobs.embed) on an in-process Ray, or on $RAY_ADDRESS's cluster: an "
            "actor pool of extractors, same store", out="store folder; each split goes to OUT/<split>"),
        "train": Command(
            "train AdapterPooler heads on a store, several seeds, mean and standard deviation",
            "Train AdapterPooler heads on STORE/train, selecting the epoch (early stopping) on the validation part; "
            "the dev split is scored once with the selected epoch. A token-level store (from 'embed' on a span task) "
            "trains span heads: start/end logits per token, padding masked, CLS = no answer; epochs are selected on "
            "validation F1 with the no-answer threshold chosen there. Defaults marked 'for span tasks' apply to "
            "token-level stores. Writes TensorBoard events, weights (safetensors), configs and metrics per seed, and "
            "summary.json with mean and standard deviation.",
            "bertvision.train:train_heads", pr.print_train_summary, cf.HeadTrainConfig, cf.TrainJobConfig,
            "train through Ray Train (python -m ray_jobs.train) on an in-process Ray, or on $RAY_ADDRESS's cluster: "
            "--workers workers per head (DDP), a checkpoint every epoch, a dead worker replaced; same output",
            out="output folder"),
        "tune": Command(
            "search head hyperparameters on stored states (Ray Tune, HyperOpt, ASHA); 'tune show' prints a leaderboard",
            "Search AdapterPooler head hyperparameters on one or more stores of a task with Ray Tune: HyperOpt's TPE "
            "and ASHA stopping on the per-epoch validation score. Trials select on the validation part carved from "
            "train; dev and test are never read. Writes one folder per trial (its config and validation history in "
            "trial.json, the best weights, TensorBoard events) and leaderboard.json under OUT. 'bertvision tune show "
            "OUT' prints the leaderboard again.", None, pr.print_leaderboard, cf.SearchConfig, cf.TuneJobConfig, out="search folder",
            default_out=_tune_needs_out, sub={"show": Command(
                "print a search's leaderboard from its folder",
                "Print the trials of a search folder, best validation score first.", "bertvision.search:leaderboard",
                lambda board, a: print(pr.format_leaderboard(board, a.top)), given=("path",), args=(
                    (("path",), {"help": "a folder written by 'bertvision tune'"}),
                    (("--top",), {**n, "default": None, "help": "only the N best trials"})))}),
        "ensemble": Command(
            "ensemble heads (a search's best trials) and the fine-tuned encoder",
            "Combine heads (--from-tune, --heads) and the fine-tuned encoder (--encoder). Sentence tasks: members' "
            "probabilities (regression: predictions) are averaged with weights chosen on the validation part by "
            "greedy selection with replacement; every member, the uniform and the greedy ensemble are then scored "
            "once on the eval split, and the one better on validation is marked chosen (greedy on a tie). Span tasks: "
            "members combined by --method, the no-answer threshold chosen on validation, scored once on the eval "
            "split (official SQuAD 2.0 scorer). Writes OUT/ensemble.json (span tasks: and predictions per method).",
            "bertvision.ensemble:ensemble", pr.print_ensemble, cf.EnsembleConfig, out="output folder", flags={"methods": "--method"}),
        "evaluate": Command(
            "score a trained head on a stored split",
            "Score a head written by 'bertvision train' (a seed-<k> folder) on a store split. The store must come "
            "from the same encoder and checkpoint as the head's training store. Span heads are scored by the "
            "official SQuAD 2.0 scorer with the no-answer threshold chosen on validation at training (the questions' "
            "text is read from the task's data).", "bertvision.train:evaluate_head",
            lambda scores, a: print(json.dumps(scores, indent=2)), given=("head", "store", "data_dir"), args=(
                (("--head",), {"required": True, "help": "a seed-<k> folder written by 'bertvision train'"}),
                (("--store",), {"required": True, "help": "a split folder of a store (e.g. STORE/dev)"}),
                (cf.HeadTrainConfig, "data_dir"))),
        "run": Command(
            "the method end to end for one task, resumable: fine-tuning baseline, stores, search, heads, ensemble, report",
            "Run the method for one task on Ray: the majority class; the full fine-tuning baseline (--lrs, "
            "--max-epochs, --seeds); every layer's states (--selections); a HyperOpt search over AdapterPooler heads "
            "(--trials); the best configuration trained with every seed; the ensemble (--top-k); the data-efficiency "
            "runs (--fractions); then OUT/report.html. Dev is scored once. A rerun skips finished stages and resumes "
            "an unfinished one; a changed option redoes the stages that depend on it, and says so. Prints a line as "
            "each stage starts and ends (its result and time) and its progress bar; Ray's own output goes to "
            "OUT/logs/<stage>.log (--verbose: on the console too). Then the headline and where the report is.",
            None, pr.print_run, cf.PipelineConfig, cf.PipelineJobConfig, runner="pipeline",
            out="run folder (default: runs/<task>)", default_out=lambda cfg: str(Path("runs") / Path(cfg.task).stem)),
        "report": Command(
            "write a run's report: one self-contained HTML page",
            "Write RUN/report.html (or --out) from the files of a 'bertvision run' folder: the results table "
            "(majority class, full fine-tuning, the best head, the ensemble, peers, the original study's figures) "
            "with mean and spread over seeds and each result's cost, learning curves, the heads' layer weights, "
            "stored examples drawn as images, the search trials and the data-efficiency plot. Figures are embedded: "
            "the page needs no network.", "bertvision.report:write_report", pr.print_report, given=("run_dir", "out"), args=(
                (("run_dir",), {"metavar": "RUN_DIR", "help": "a folder written by 'bertvision run'"}),
                (("--out",), {"default": None, "help": "HTML file to write (default: RUN_DIR/report.html)"}))),
        "show": Command(
            "draw one stored example's states as an image",
            "Draw one example of a store as a PNG, as the report does: a cls or mean store's (layers x hidden) "
            "states as one image, a token store's (tokens x hidden) states one panel per layer.",
            "bertvision.report:show_example", lambda path, a: print(path), given=("store", "example_id", "out"), args=(
                (("store",), {"metavar": "STORE", "help": "a store split folder (with _manifest.json), or a store of "
                              "split folders"}),
                (("--id",), {"required": True, "dest": "example_id", "help": "the example's id (e.g. dev-12)"}),
                (("--out",), {"required": True, "help": "PNG file to write"}))),
        "store": Command("inspect embedding stores", "Inspect embedding stores.", sub={"verify": Command(
            "check a store's checksums, row counts and shapes",
            "Check every shard of a store split: present, readable, sha256 as recorded, row counts and tensor shapes "
            "as the manifest says. A folder holding split folders is checked split by split.", cmd_store_verify,
            args=((("path",), {"help": "a store split folder (with _manifest.json), or a folder of them"}),))}),
        "predict": Command(
            "apply a finished run's model to new texts (a file, or a task's split)",
            "Apply what a finished 'bertvision run' chose to new texts in one streaming pass (tokenise, the run's "
            "checkpoint with every hidden state, the heads; nothing stored): --model ensemble (the default where the "
            "run made one), head (the best configuration's seeds averaged; --seed K for one) or encoder (the "
            "fine-tuned checkpoint's own head). Input: CSV, TSV, JSON lines or Parquet with the task's text fields "
            "(and an optional id column), or --split NAME of the run's task. Output by --out's extension (.csv, "
            ".jsonl, .parquet): id, the predicted label and each class's probability (prob_<label>), or the score. "
            "--format glue --split test writes the GLUE leaderboard file (e.g. RTE.tsv) into the folder --out. Span "
            "tasks (SQuAD 2.0; rows id, question, context): head is the seed with the best validation F1, the ensemble "
            "the method with the better one; --out NAME.json writes {id: answer} for 'bertvision squad-eval' and "
            "NAME.na_prob.json (its --na-prob-file), other formats id, answer ('' for none), no_answer_probability. "
            "With --ray, --input may be a folder of such files and --out is a folder of Parquet parts.",
            cmd_predict, job=cf.PredictJobConfig, ray="run the Ray Data job (python -m ray_jobs.predict) on an "
            "in-process Ray, or on $RAY_ADDRESS's cluster: an actor pool of the run's model writing --out/part-<k>.parquet "
            "and --out/_manifest.json; a resubmitted job writes only the missing parts; the rows equal the local "
            "command's", args=(
                (("run",), {"metavar": "RUN", "help": "a folder written by 'bertvision run'"}),
                (("--input",), {"default": None, "metavar": "FILE", "help": "rows to predict (.csv, .tsv, .jsonl, "
                                ".parquet)"}),
                (("--split",), {"default": None, "help": "or a split of the run's task (e.g. test)"}),
                (("--out",), {"required": True, "help": "output file (.csv, .jsonl, .parquet; span tasks also .json); "
                              "with --format glue or --ray a folder"}),
                (("--model",), {"default": None, "choices": ("ensemble", "head", "encoder"), "help": "what to apply "
                                "(default: ensemble where the run made one, else head)"}),
                (("--seed",), {"type": int, "default": None, "help": "with --model head: that seed's head alone"}),
                (("--format",), {"default": None, "choices": ("glue",), "help": "glue: the GLUE leaderboard file"}),
                (("--device",), {"default": None, "help": "cpu, cuda, cuda:N (default: cuda when available)"}))),
        "squad-eval": Command(
            "score SQuAD 2.0 predictions with the official v2 evaluation",
            "Score a predictions file (JSON: question id -> answer text, '' for no answer) against a SQuAD 2.0 data "
            "file, as the official evaluate-v2.0 script does: exact match and F1 with answer normalisation, HasAns / "
            "NoAns breakdown, and with --na-prob-file the best no-answer threshold. Unlike the official script, a "
            "missing prediction is an error.", cmd_squad_eval, args=(
                (("data_file",), {"help": "SQuAD 2.0 data file (e.g. dev-v2.0.json)"}),
                (("pred_file",), {"help": "predictions JSON: {question id: answer text}"}),
                (("--na-prob-file",), {"default": None, "help": "JSON {question id: probability of no answer}"}),
                (("--na-prob-thresh",), {"type": float, "default": 1.0, "help": "predict no answer where the no-answer "
                                         "probability exceeds this (default: 1.0)"}),
                (("--out-file",), {"default": None, "help": "also write the scores to this JSON file"}))),
    }  # fmt: skip


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
    _add_commands(parser, commands(), "command", "COMMAND", required=True)
    return parser


def _add_commands(parser, commands: dict[str, Command], dest: str, metavar: str, required: bool = False) -> None:
    from bertvision.config import add_arguments

    subparsers = parser.add_subparsers(dest=dest, metavar=metavar, required=required)
    for name, cmd in commands.items():
        p = subparsers.add_parser(name, help=cmd.help, description=cmd.description)
        for item in cmd.args:
            if isinstance(item[0], type):  # a config field's flag, as its stage command has it
                add_arguments(p, item[0], only=(item[1],))
            else:
                p.add_argument(*item[0], **item[1])
        if cmd.config is not None:
            add_arguments(p, cmd.config, required=not cmd.sub, flags=cmd.flags)  # tune's --stores: not for 'tune show'
            p.add_argument("--out", required=cmd.default_out is None, default=None, help=cmd.out)
        if cmd.ray is not None:
            p.add_argument("--ray", action="store_true", help=cmd.ray)
        if cmd.job is not None:  # where --ray is optional, its options must be told apart from defaults
            add_arguments(p.add_argument_group(f"the Ray job ({'with --ray' if cmd.ray else 'always'})"), cmd.job,
                          unset=cmd.ray is not None)  # fmt: skip
        p.set_defaults(func=partial(_stage, name, cmd) if cmd.config is not None else partial(_call, cmd) if cmd.given else cmd.run)
        if cmd.sub:
            _add_commands(p, cmd.sub, f"{name}_command", "SUBCOMMAND", required=cmd.run is None and cmd.config is None)


def main(argv: list[str] | None = None) -> int:
    """Run one command; the exit status says what happened (the epilog, `bertvision.errors`)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except BertVisionError as e:
        print(f"bertvision: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # a full disk, a permission, a vanished path: say which, no traceback
        print(f"bertvision: error: {os_error(e, f'running {args.command!r}', getattr(args, 'out', None))}", file=sys.stderr)
        return EXIT_RUN
    except KeyboardInterrupt:
        print("bertvision: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _stage(name: str, cmd: Command, args) -> int:
    """A stage's command: its config from the options (a bad one is refused before torch is
    imported), the library function or, with --ray (or always), the Ray job; then the printer."""
    from bertvision.config import from_arguments
    from bertvision.outdir import absolute_out

    cfg = from_arguments(cmd.config, args)
    out = args.out or cmd.default_out(cfg)
    if cmd.job is not None and (cmd.ray is None or args.ray):  # the job lives outside the library
        job = from_arguments(cmd.job, args)
        # The job runs in this process and this folder, where a relative path means what it says;
        # its workers and actors (on every node of a $RAY_ADDRESS cluster) get it absolute.
        result = _ray_runner(cmd.runner or name)(cfg, absolute_out(out, job), job)
    else:
        _without_ray(cmd.job, args)
        result = _function(cmd.run)(cfg, out)
    cmd.printer(result, cfg, out)
    return 0


def _without_ray(job: type | None, args) -> None:
    """ConfigError where an option of the Ray job ``job`` was given without --ray."""
    given = [f.name for f in fields(job) if f.name in vars(args)] if job else []
    if given:
        raise ConfigError(f"--{given[0].replace('_', '-')} is an option of the Ray job: it needs --ray")


def _call(cmd: Command, args) -> int:
    """A command that is no stage: its library function on the options it names, then its printer."""
    cmd.printer(_function(cmd.run)(*(getattr(args, name) for name in cmd.given)), args)
    return 0


def _function(path: str):
    """The library function "module:name", imported when a command runs (the tests replace some)."""
    module, name = path.split(":")
    return getattr(importlib.import_module(module), name)


def _tune_needs_out(cfg) -> str:
    raise ConfigError("tune: --out is required (or 'bertvision tune show DIR')")


def _ray_runner(name: str):
    """The ``bertvision.runners`` entry point ``name`` (one of ``ray_jobs``), loaded when asked for."""
    from importlib.metadata import entry_points

    found = list(entry_points(group="bertvision.runners", name=name))
    if not found:
        raise ConfigError(f"--ray: no Ray runner {name!r} is installed (the project's ray_jobs package registers "
                          "it; reinstall with: pip install -e .)")  # fmt: skip
    return found[0].load()


# ---------------------------------------------------------------------------------------------
# The commands that are no stage


def cmd_tasks(args) -> int:
    from bertvision.printing import print_tasks
    from bertvision.tasks import DATA_ENV, resolve_data_dir

    data_dir = resolve_data_dir(args.data_dir)
    return print_tasks(data_dir, "--data-dir" if args.data_dir else DATA_ENV, args.task_config)


def cmd_encoder(args) -> int:
    from bertvision.encoders import encoder_info, load_tokenizer

    tokenizer = load_tokenizer(args.name, revision=args.revision)
    facts = encoder_info(args.name, revision=args.revision).to_dict() | {
        "tokenizer": type(tokenizer).__name__, "tokenizer_vocab": len(tokenizer)}  # fmt: skip
    print(json.dumps(facts, indent=2) if args.json else "\n".join(f"{k:>24}: {v}" for k, v in facts.items()))
    return 0


def cmd_store_verify(args) -> int:
    from bertvision.store import split_folders, verify

    for folder in split_folders(args.path):
        report = verify(folder)
        print(f"{folder}: ok, {report['rows']} rows in {report['shards']} shard(s), "
              f"{report['bytes_per_row']:.0f} bytes per row")  # fmt: skip
    return 0


def cmd_predict(args) -> int:
    from bertvision.config import PredictConfig, PredictJobConfig, from_arguments
    from bertvision.predict import predict

    if args.ray:
        from bertvision.outdir import absolute_out
        from bertvision.printing import print_predict

        if args.format:
            raise ConfigError("--format glue writes one leaderboard file: not with --ray")
        cfg, job = from_arguments(PredictConfig, args), from_arguments(PredictJobConfig, args)
        print_predict(_ray_runner("predict")(cfg, absolute_out(args.out, job), job), cfg, args.out)
        return 0
    _without_ray(PredictJobConfig, args)
    result = predict(args.run, args.input, args.split, args.out, args.model, args.seed, args.format, args.device)
    print(f"{result['out']}: {result['rows']} rows ({result['model']}), {result['rows_per_second']} rows/s")
    return 0


def cmd_squad_eval(args) -> int:
    from bertvision.io import atomic_write_text
    from bertvision.metrics.squad_v2 import evaluate_files

    text = json.dumps(evaluate_files(args.data_file, args.pred_file, args.na_prob_file, args.na_prob_thresh), indent=2)
    if args.out_file:
        atomic_write_text(args.out_file, text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
