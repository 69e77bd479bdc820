"""The `bertvision` command line, run as users run it: the installed console script."""

import argparse
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from bertvision.cli import build_parser
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
                   '[splits]\ntrain = "train.csv"\n')  # fmt: skip
    out = run("tasks", "--data-dir", str(shared_data), "--task-config", str(cfg)).stdout
    assert "(from --data-dir)" in out
    assert _row(out, "mine").endswith("train 2")


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
    [[], ["tasks"], ["tasks", "show"], ["encoder"], ["squad-eval"], ["finetune"], ["embed"], ["train"],
     ["evaluate"], ["ensemble"], ["store"], ["store", "verify"]],
)  # fmt: skip
def test_help_runs_at_every_level(args):
    out = run(*args, "--help").stdout
    assert out.startswith("usage: bertvision")
