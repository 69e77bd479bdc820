"""The `bertvision` command line, run as users run it: the installed console script."""

import argparse
import dataclasses
import json
import os
import re
import subprocess
import types
from pathlib import Path

import pytest

from bertvision.cli import build_parser, commands, main
from bertvision.config import (
    EmbedConfig,
    EnsembleConfig,
    FinetuneConfig,
    HeadArchitecture,
    HeadTrainConfig,
    Optimisation,
    PipelineConfig,
    PipelineJobConfig,
    RayJobConfig,
    SearchConfig,
    TrainJobConfig,
    TuneJobConfig,
    field_docs,
    from_arguments,
)
from tests.conftest import bertvision_cli


def run(*args, data=None, check=True):
    env = dict(os.environ)
    env.pop("BERTVISION_DATA", None)
    if data is not None:
        env["BERTVISION_DATA"] = str(data)
    proc = subprocess.run(
        [*bertvision_cli(), *args], capture_output=True, text=True, env=env, timeout=120
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def _row(out: str, task: str) -> str:
    return next(line for line in out.splitlines() if line.startswith(task + " "))


# The official sizes of the splits (GLUE's and SQuAD 2.0's published figures). Each is checked
# where its file lies in the data folder; a split whose file is absent must say "not found".
SPLIT_SIZES = {
    "rte": {"train": "2490", "dev": "277", "test": "3000"},
    "cola": {"train": "8551", "dev": "1043", "test": "1063"},
    "sst2": {"train": "67349", "dev": "872", "test": "1821"},
    "mrpc": {"train": "3668", "dev": "408", "test": "1725"},
    "stsb": {"train": "5749", "dev": "1500", "test": "1379"},
    "wnli": {"train": "635", "dev": "71", "test": "146"},
    "qnli": {"train": "104743", "dev": "5463", "test": "5463"},
    "qqp": {"train": "363846", "dev": "40430", "test": "390965"},
    "squad2": {"train": "130319 (86821 answerable)", "dev": "11873 (5928 answerable)"},
}


def test_tasks_lists_true_split_sizes(shared_data):
    from bertvision.tasks import get_task

    out = run("tasks", data=shared_data).stdout
    assert f"Data folder: {shared_data.resolve()} (from BERTVISION_DATA)" in out
    found = 0
    for name, sizes in SPLIT_SIZES.items():
        task, row = get_task(name, shared_data), _row(out, name)
        if not any(task.exists(split) for split in sizes):
            assert row.endswith(" not found"), row  # one cell, and where it looked below
            assert re.search(rf"looked for .* in .*{Path(task.candidates(next(iter(sizes)))[0]).parent.name}/", out)
            continue
        for split, size in sizes.items():
            cell = f"{split} {size}" if task.exists(split) else f"{split} not found"
            assert re.search(rf"(^| ){re.escape(cell)}( ·|$)", row), (cell, row)
            found += task.exists(split)
    assert found >= 3, "the shared data should hold some of these splits"


def test_tasks_with_flag_and_user_config(tmp_path, shared_data):
    (tmp_path / "train.csv").write_text("text,label\na,x\nb,y\n")
    cfg = tmp_path / "mine.toml"
    cfg.write_text('name = "mine"\nkind = "classification"\ntext_fields = ["text"]\nlabel_field = "label"\n'
                   '[splits]\ntrain = "train.csv"\ndev = "train.csv"\n')  # fmt: skip
    out = run("tasks", "--data-dir", str(shared_data), "--task-config", str(cfg)).stdout
    assert "(from --data-dir)" in out
    assert _row(out, "mine").endswith("train 2 · dev 2")


def test_tasks_without_data_folder_points_at_the_hub():
    out = run("tasks").stdout
    assert out.startswith("No local data folder (--data-dir or BERTVISION_DATA)")
    assert _row(out, "mnli").endswith(
        "train · dev_matched · dev_mismatched · test_matched · test_mismatched"
    )


def test_tasks_show(shared_data):
    out = run("tasks", "show", "rte", "-n", "2", data=shared_data).stdout
    assert "RTE (Recognizing Textual Entailment)  [rte]" in out
    assert "train: 2490 examples from" in out
    assert re.search(r"entailment\s+1249\s+50.2%", out) and re.search(
        r"not_entailment\s+1241\s+49.8%", out
    )
    assert out.count("sentence1:") == 2
    out = run("tasks", "show", "stsb", "--split", "dev", data=shared_data).stdout
    assert "dev: 1500 examples" in out and "score distribution: mean" in out
    out = run("tasks", "show", "squad2", data=shared_data).stdout
    assert "dev: 11873 examples" in out and re.search(r"answerable\s+5928", out)


def test_bad_input_exits_nonzero_naming_file_and_line(tmp_path):
    path = tmp_path / "glue" / "RTE" / "train.tsv"
    path.parent.mkdir(parents=True)
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tmaybe\n")
    proc = run("tasks", "show", "rte", "--data-dir", str(tmp_path), check=False)
    assert proc.returncode == 1
    assert (
        proc.stderr.strip()
        == f"bertvision: error: {path}:2: unknown label 'maybe'; expected one of 'entailment', 'not_entailment'"
    )
    proc = run("tasks", "--data-dir", str(tmp_path), check=False)
    assert proc.returncode == 1 and "train ERROR" in _row(proc.stdout, "rte")
    proc = run("tasks", "show", "nosuch", check=False)
    assert proc.returncode == 1 and "unknown task 'nosuch'" in proc.stderr


def test_squad_eval_command(tmp_path):
    data = {"version": "v2.0", "data": [{"title": "T", "paragraphs": [{"context": "Paris is big.", "qas": [
        {"id": "a", "question": "What?", "answers": [{"text": "Paris", "answer_start": 0}], "is_impossible": False},
        {"id": "b", "question": "Who?", "answers": [], "is_impossible": True}]}]}]}  # fmt: skip
    (tmp_path / "d.json").write_text(json.dumps(data))
    (tmp_path / "p.json").write_text(json.dumps({"a": "paris", "b": "big"}))
    out = tmp_path / "scores.json"
    proc = run(
        "squad-eval", str(tmp_path / "d.json"), str(tmp_path / "p.json"), "--out-file", str(out)
    )
    scores = json.loads(out.read_text())
    assert scores == json.loads(proc.stdout)
    assert (
        scores["exact"] == 50.0 and scores["HasAns_exact"] == 100.0 and scores["NoAns_exact"] == 0.0
    )
    (tmp_path / "p.json").write_text(json.dumps({"a": "paris"}))
    proc = run("squad-eval", str(tmp_path / "d.json"), str(tmp_path / "p.json"), check=False)
    assert proc.returncode == 1 and "p.json" in proc.stderr


def test_encoder_command():
    facts = json.loads(run("encoder", "--json").stdout)
    assert facts["name"] == "all-MiniLM-L6-v2"
    assert (facts["num_hidden_states"], facts["hidden_size"]) == (7, 384)


def _parsers(parser: argparse.ArgumentParser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def test_every_option_at_every_level_is_explained():
    parsers = list(_parsers(build_parser()))
    assert {p for p, _ in parsers} >= {
        (),
        ("tasks",),
        ("tasks", "show"),
        ("encoder",),
        ("squad-eval",),
    }
    for path, parser in parsers:
        assert parser.description or not path, path
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                assert all(a.help for a in action._choices_actions), path
            else:
                assert action.help and action.help != argparse.SUPPRESS, (path, action.dest)


@pytest.mark.parametrize(
    "args",
    [[], ["tasks"], ["tasks", "show"], ["encoder"], ["squad-eval"], ["finetune"], ["embed"], ["train"], ["tune"],
     ["tune", "show"], ["evaluate"], ["ensemble"], ["run"], ["report"], ["show"], ["store"], ["store", "verify"]],
)
def test_help_runs_at_every_level(args):
    """Each level's help is its own: its usage line and its description."""
    out = run(*args, "--help").stdout
    assert out.startswith(" ".join(["usage: bertvision", *args]) + " ")
    description = dict(_parsers(build_parser()))[tuple(args)].description
    assert "".join(description.split()) in "".join(out.split())  # as wrapped at any width


# ---------------------------------------------------------------------------------------------
# The stage commands' options are their configs' fields (bertvision.config), the --ray ones the
# Ray job's

STAGES = {name: cmd for name, cmd in commands().items() if cmd.config is not None}
RENAMED = {"methods": "--method"}


def _command(name: str) -> argparse.ArgumentParser:
    return dict(_parsers(build_parser()))[(name,)]


def _field_leaves(cls):
    """(owner class, field) of every field, nested configs flattened."""
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(f.default):
            yield from _field_leaves(type(f.default))
        else:
            yield cls, f


def test_the_stage_commands_are_the_table():
    assert {name: (cmd.config, cmd.job) for name, cmd in STAGES.items()} == {
        "finetune": (FinetuneConfig, TrainJobConfig), "embed": (EmbedConfig, RayJobConfig),
        "train": (HeadTrainConfig, TrainJobConfig), "tune": (SearchConfig, TuneJobConfig),
        "ensemble": (EnsembleConfig, None), "run": (PipelineConfig, PipelineJobConfig)}  # fmt: skip


@pytest.mark.parametrize("command", STAGES)
def test_every_config_field_is_a_flag_with_its_docstring(command):
    cmd = STAGES[command]
    parser = _command(command)
    actions = {s: a for a in parser._actions for s in a.option_strings}
    leaves = list(_field_leaves(cmd.config))
    if cmd.config is HeadTrainConfig:  # the nested configs are covered, field by field
        owners = {(owner, f.name) for owner, f in leaves}
        assert owners >= {(c, f.name) for c in (HeadArchitecture, Optimisation) for f in dataclasses.fields(c)}
    jobs = list(_field_leaves(cmd.job)) if cmd.job else []
    for owner, f in leaves + jobs:
        flag = RENAMED.get(f.name, "--" + f.name.replace("_", "-"))
        assert flag in actions, (command, flag)
        action = actions[flag]
        doc = field_docs(owner)[f.name].rstrip(".")
        assert doc and doc in action.help.replace("%%", "%"), (flag, action.help)
        assert action.dest.split("__")[-1] == f.name
        if f.type in ("bool", bool):
            assert "--no-" + flag[2:] in actions, flag
        by_kind = getattr(owner, "kind_defaults", {}).get(f.name)
        if by_kind:
            assert all(f"{v} for {k} tasks" in action.help for k, v in by_kind.items()), action.help
        elif f.default not in (None, dataclasses.MISSING):
            assert "(default: " in action.help, action.help
    # where --ray is optional, a job option left out is absent, so one given without --ray is seen
    assert ("--ray" in actions) == (cmd.ray is not None)
    for _, f in jobs:
        assert (actions["--" + f.name.replace("_", "-")].default is argparse.SUPPRESS) == (cmd.ray is not None)
    out = run(command, "--help").stdout
    assert all(RENAMED.get(f.name, "--" + f.name.replace("_", "-")) in out for _, f in leaves + jobs)
    assert ("--out OUT" in out) and (command not in ("tune", "run")) == ("[--out OUT]" not in out)


def _parse(*argv):
    return build_parser().parse_args(list(argv))


def test_parsed_defaults_are_the_configs_defaults():
    assert from_arguments(HeadTrainConfig, _parse("train", "--store", "S", "--out", "O")) == HeadTrainConfig(store="S")
    assert from_arguments(FinetuneConfig, _parse("finetune", "--task", "rte", "--out", "O")) == FinetuneConfig(task="rte")
    assert from_arguments(EmbedConfig, _parse("embed", "--task", "rte", "--out", "O")) == EmbedConfig(task="rte")
    args = _parse("ensemble", "--store", "S", "--heads", "a", "b", "--out", "O")
    assert from_arguments(EnsembleConfig, args) == EnsembleConfig(store="S", heads=("a", "b"))


def test_parsed_options_reach_the_configs():
    args = _parse("train", "--store", "S", "--out", "O", "--no-shared", "--no-residual", "--adapter-size", "8",
                  "--combine", "scalar_mix", "--dropout", "0", "--seeds", "3", "4", "--epochs", "2", "--lr", "0.01")  # fmt: skip
    assert from_arguments(HeadTrainConfig, args) == HeadTrainConfig(
        store="S", seeds=(3, 4), optim=Optimisation(epochs=2, lr=0.01),
        head=HeadArchitecture(adapter_size=8, shared=False, residual=False, combine="scalar_mix", dropout=0.0),
    )  # fmt: skip
    args = _parse("finetune", "--task", "squad2", "--out", "O", "--save-at", "0.25", "0.5", "--max-length", "256",
                  "--doc-stride", "64", "--no-score-dev")  # fmt: skip
    cfg = from_arguments(FinetuneConfig, args)
    assert (cfg.save_at, cfg.max_length, cfg.windowing.doc_stride, cfg.score_dev) == ((0.25, 0.5), 256, 64, False)
    args = _parse("ensemble", "--store", "S", "--encoder", "--heads", "h", "--method", "max", "--out", "O")
    assert from_arguments(EnsembleConfig, args) == EnsembleConfig(store="S", heads=("h",), encoder=True, methods=("max",))
    with pytest.raises(SystemExit):  # the old flag is gone
        _parse("train", "--store", "S", "--out", "O", "--unshared")


@pytest.mark.parametrize(
    "args, says",
    [(["train", "--store", "S", "--out", "O", "--dropout", "1.5"], "dropout"),
     (["train", "--store", "S", "--out", "O", "--lr", "nan"], "--lr"),
     (["train", "--store", "S", "--out", "O", "--seeds", "1", "1"], "--seeds"),
     (["finetune", "--task", "rte", "--out", "O", "--epochs", "0"], "--epochs"),
     (["finetune", "--task", "rte", "--out", "O", "--save-at", "2"], "--save-at"),
     (["embed", "--task", "rte", "--out", "O", "--max-length", "0"], "--max-length"),
     (["embed", "--task", "rte", "--out", "O", "--actors", "2"], "--ray"),
     (["ensemble", "--store", "S", "--out", "O"], "members")],
)
def test_a_bad_value_exits_1_with_one_line(tmp_path, args, says):
    proc = run(*args, check=False)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("bertvision: error: ") and says in lines[0], proc.stderr
    assert not (tmp_path / "O").exists()


def test_a_malformed_value_exits_2():
    proc = run("train", "--store", "S", "--out", "O", "--dropout", "abc", check=False)
    assert proc.returncode == 2 and "not a number: 'abc'" in proc.stderr


# The commands hand their config to the library function and print its result.


def test_train_prints_the_summary_of_either_kind(monkeypatch, capsys):
    import bertvision.train

    given = []

    def fake(kind):
        def train_heads(cfg, out_dir):
            given.append((cfg, out_dir))
            score = {"mean": 0.5, "std": 0.1}
            splits = {"validation": {"exact": score, "f1": score, "total": score}, "dev": {"f1": score, "threshold": score}}
            if kind != "span":
                splits = {"validation": {"accuracy": score}, "dev_matched": {"accuracy": score}, "test": {"accuracy": score}}
            return {"kind": kind, "seeds": [0, 1], "runs": [{"parameters": 123}], "epoch_seconds": 1.5, **splits}

        return train_heads

    monkeypatch.setattr(bertvision.train, "train_heads", fake("span"))
    assert main(["train", "--store", "S", "--out", "O", "--epochs", "3"]) == 0
    assert given == [(HeadTrainConfig(store="S", optim=Optimisation(epochs=3)), "O")]
    out = capsys.readouterr().out
    assert "validation exact: 0.5000 ± 0.1000 over 2 seed(s)" in out and "dev threshold:" in out
    assert "total" not in out and "head: 123 parameters, 1.50 s per epoch" in out
    monkeypatch.setattr(bertvision.train, "train_heads", fake("classification"))
    assert main(["train", "--store", "S", "--out", "O"]) == 0
    out = capsys.readouterr().out
    assert "validation accuracy" in out and "dev_matched accuracy" in out and "test" not in out


def test_finetune_and_evaluate_call_the_library(monkeypatch, capsys, tmp_path):
    import bertvision.finetune
    import bertvision.train

    squad = {"exact": 50.123, "f1": 60.0, "total": 10, "HasAns_f1": 1.0, "NoAns_f1": 2.0}
    result = types.SimpleNamespace(out_dir=tmp_path, checkpoints={
        "checkpoint-e0.5": {"validation": squad, "threshold": 0.2, "train_seconds": 3.0, "dev": squad},
        "checkpoint-e1": {"validation": {"accuracy": 0.75}, "train_seconds": 7.0}})  # fmt: skip
    seen = []
    monkeypatch.setattr(bertvision.finetune, "finetune", lambda cfg, out: seen.append((cfg, out)) or result)
    assert main(["finetune", "--task", "rte", "--out", "O", "--lr", "1e-4"]) == 0
    assert seen == [(FinetuneConfig(task="rte", lr=1e-4), "O")]
    out = capsys.readouterr().out.splitlines()
    head = {"exact": 50.12, "f1": 60.0, "HasAns_f1": 1.0, "NoAns_f1": 2.0}
    assert out[0] == f"{tmp_path / 'checkpoint-e0.5'}: {json.dumps({'validation': head, 'dev': head})}  (3 s training)"
    assert out[1].endswith('{"validation": {"accuracy": 0.75}}  (7 s training)')
    monkeypatch.setattr(bertvision.train, "evaluate_head", lambda *a: {"args": list(a)})
    assert main(["evaluate", "--head", "H", "--store", "S", "--data-dir", "D"]) == 0
    assert json.loads(capsys.readouterr().out) == {"args": ["H", "S", "D"]}


def test_embed_ray_hands_the_config_and_job_to_the_runner(monkeypatch, tmp_path, capsys):
    """The job config comes from the table, the runner from the `bertvision.runners` entry
    points; --out goes absolute (against --storage-root where given); the printer prints."""
    import bertvision.cli as cli

    calls = []
    results = {"embed": {}, "tune": [], "pipeline": {"report": str(tmp_path / "nowhere" / "report.html")}}

    def runner(name):
        def fake_run(cfg, out_dir, job):
            calls.append((name, cfg, out_dir, job))
            return results[name]

        return fake_run

    monkeypatch.setattr(cli, "_ray_runner", runner)
    monkeypatch.chdir(tmp_path)
    assert main(["embed", "--task", "rte", "--out", "store", "--ray", "--actors", "3", "--splits", "train"]) == 0
    assert calls == [("embed", EmbedConfig(task="rte", splits=("train",)), str(tmp_path / "store"), RayJobConfig(actors=3))]
    assert main(["embed", "--task", "rte", "--out", "s", "--ray", "--storage-root", "/mnt/runs", "--gpus-per-actor", "0"]) == 0
    assert calls[-1][2:] == ("/mnt/runs/s", RayJobConfig(gpus_per_actor=0.0, storage_root="/mnt/runs"))
    assert main(["tune", "--stores", "a", "--out", "t", "--checkpoint-every", "2", "--address", "ray://h:1"]) == 0
    assert calls[-1][0] == "tune" and calls[-1][3] == TuneJobConfig(address="ray://h:1", checkpoint_every=2)
    assert capsys.readouterr().out.splitlines() == [f"{'rank':>4} {'score':>8} {'epochs':>6}  store / hyperparameters"]
    # the run's printer reads the run folder for its headline: none here, one line and exit status 1
    assert main(["run", "--task", "rte", "--embed-with", "local"]) == 1
    assert calls[-1][0] == "pipeline" and calls[-1][2:] == (str(tmp_path / "runs" / "rte"), PipelineJobConfig(embed_with="local"))
    assert "no pipeline.json" in capsys.readouterr().err
    for argv in (["train", "--store", "S", "--out", "O", "--address", "x"], ["finetune", "--task", "rte", "--out", "O", "--workers", "2"]):
        assert main(argv) == 1  # a job's option, without --ray
        assert "needs --ray" in capsys.readouterr().err
