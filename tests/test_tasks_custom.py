"""User-defined tasks: a config file naming CSV, TSV or JSON-lines files."""

import json
from pathlib import Path

import numpy as np
import pytest

from bertvision.errors import DataError
from bertvision.tasks import UserTask, get_task


def make_task(tmp_path: Path, files: dict[str, str], config: str, name="task.toml") -> Path:
    for rel, body in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(body, encoding="utf-8")
    cfg = tmp_path / name
    cfg.write_text(config, encoding="utf-8")
    return cfg


CSV_CONFIG = """
name = "reviews"
kind = "classification"
text_fields = ["title", "body"]
label_field = "stars"
id_field = "rid"
[splits]
train = "data/train.csv"
dev = "data/dev.csv"
test = "data/test.csv"
"""
TRAIN_CSV = (
    'rid,title,body,stars\nr1,Great,"Loved it, really",10\nr2,Bad,"Said ""meh""",2\nr3,Fine,OK,2\n'
)


def test_csv_classification_with_inferred_labels(tmp_path):
    cfg = make_task(
        tmp_path,
        {"data/train.csv": TRAIN_CSV, "data/dev.csv": "rid,title,body,stars\nd1,A,B,10\n",
         "data/test.csv": "rid,title,body\nt1,A,B\n"},
        CSV_CONFIG,
    )  # fmt: skip
    task = get_task(str(cfg))
    assert isinstance(task, UserTask)
    assert task.spec.labels == ("2", "10")  # numeric order, not text order
    assert task.spec.metrics == ("accuracy", "macro_f1")
    assert task.spec.eval_splits == ("dev",) and task.spec.unlabelled_splits == ("test",)
    train = task.load("train")
    assert train.ids == ["r1", "r2", "r3"]
    assert train.texts[1] == ["Loved it, really", 'Said "meh"', "OK"]  # CSV quoting honoured
    assert train.labels.tolist() == [1, 0, 0]
    assert task.load("test").labels is None


def test_tsv_and_jsonl_regression(tmp_path):
    lines = [{"id": 7, "text": "good", "score": 0.5}, {"id": 8, "text": "bad", "score": -1}]
    cfg = make_task(
        tmp_path,
        {"train.jsonl": "\n".join(json.dumps(x) for x in lines) + "\n\n", "dev.tsv": "text\tscore\nok\t0.25\n"},
        json.dumps({"name": "sentiment", "kind": "regression", "text_fields": ["text"], "label_field": "score",
                    "splits": {"train": "train.jsonl", "dev": "dev.tsv"}, "ignore_columns": ["id"]}),
        name="task.json",
    )  # fmt: skip
    task = get_task(str(cfg))
    assert task.spec.kind == "regression" and task.spec.metrics == ("pearson", "spearman")
    train = task.load("train")
    assert train.labels.dtype == np.float32 and train.labels.tolist() == [0.5, -1.0]
    assert train.ids == ["1", "2"]  # no id_field: numbered by line
    dev = task.load("dev")
    assert dev.texts == (["ok"],) and dev.labels.tolist() == [0.25]


@pytest.mark.parametrize(
    "train, config_extra, pattern",
    [
        ("rid,title,stars\nr1,a,2\n", "", r"train.csv:1: missing column\(s\) \['body'\]"),
        ("rid,title,body,stars,url\nr1,a,b,2,u\n", "", r"train.csv:1: unexpected column\(s\) \['url'\]"),
        ("rid,title,body,stars\nr1,a,b,3\n", 'labels = ["2", "10"]\n', r"train.csv:2: unknown label '3'; expected one of '2', '10'"),
        ("rid,title,body,stars\nr1,a,,2\n", 'labels = ["2", "10"]\n', r"train.csv:2: empty text in field 'body'"),
        ("rid,title,body,stars\nr1,a,b,2,extra\n", 'labels = ["2", "10"]\n', r"train.csv:2: malformed row: expected 4 fields, found 5"),
        ("rid,title,body,stars\nr1,a,b,2\n", 'labels = ["2", "10"]\ncolour = "red"\n', r"task.toml: unknown field\(s\) \['colour'\]"),
        ("rid,title,body,stars\nr1,a,b,2\n", "", r"fewer than 2 distinct labels"),
    ],
    ids=["missing-column", "unexpected-column", "unknown-label", "empty-text", "malformed-row",
         "unknown-config-field", "one-label"],
)  # fmt: skip
def test_bad_user_data(tmp_path, train, config_extra, pattern):
    cfg = make_task(tmp_path, {"data/train.csv": train}, config_extra + CSV_CONFIG)
    with pytest.raises(DataError, match=pattern):
        get_task(str(cfg)).load("train")


def test_ignored_columns_are_allowed(tmp_path):
    cfg = make_task(
        tmp_path,
        {"data/train.csv": "rid,title,body,stars,url\nr1,a,b,2,u\nr2,c,d,10,v\n"},
        'ignore_columns = ["url"]\n' + CSV_CONFIG,
    )
    assert len(get_task(str(cfg)).load("train")) == 2


def test_bad_jsonl_and_config(tmp_path):
    base = '{"name": "t", "kind": "regression", "text_fields": ["text"], "label_field": "y", "splits": {"train": "t.jsonl"}}'
    cfg = make_task(
        tmp_path, {"t.jsonl": '{"text": "a", "y": 1}\n{"text": "b", "y": \n'}, base, name="t.json"
    )
    with pytest.raises(DataError, match=r"t.jsonl:2: malformed JSON"):
        get_task(str(cfg)).load("train")
    (tmp_path / "t.jsonl").write_text('{"text": "a", "y": 1}\n{"y": 2}\n')
    with pytest.raises(DataError, match=r"t.jsonl:2: missing field 'text'"):
        get_task(str(cfg)).load("train")
    (tmp_path / "t.jsonl").write_text('{"text": 5, "y": 1}\n')
    with pytest.raises(DataError, match=r"t.jsonl:1: field 'text' must be text, not int"):
        get_task(str(cfg)).load("train")
    (tmp_path / "bad.toml").write_text('name = "x"\nkind = "ranking"\n')
    with pytest.raises(DataError, match=r"bad.toml: kind must be 'classification' or 'regression'"):
        get_task(str(tmp_path / "bad.toml"))
    (tmp_path / "broken.toml").write_text("name = \n")
    with pytest.raises(DataError, match=r"broken.toml: malformed task config"):
        get_task(str(tmp_path / "broken.toml"))
    with pytest.raises(DataError, match=r"missing.toml: task config file not found"):
        get_task(str(tmp_path / "missing.toml"))
    missing_split = make_task(tmp_path, {}, base.replace("t.jsonl", "nope.jsonl"), name="m.json")
    with pytest.raises(
        DataError, match=r"nope.jsonl: split 'train' of task config m.json not found"
    ):
        get_task(str(missing_split)).load("train")


def _one_file(tmp_path: Path, rows: list[tuple[str, str]], extra: str = "") -> Path:
    body = "id,text,label\n" + "".join(f"{i},{t},{y}\n" for i, (t, y) in enumerate(rows))
    config = ('name = "one"\nkind = "classification"\ntext_fields = ["text"]\nlabel_field = "label"\n'
              f'id_field = "id"\n{extra}[splits]\ntrain = "all.csv"\n')  # fmt: skip
    return make_task(tmp_path, {"all.csv": body}, config)


def test_a_one_file_task_carves_a_seeded_stratified_test_part_before_validation(tmp_path, capsys):
    """Before: a task with a train file only had no eval split (the run's report then crashed on it)."""
    from bertvision.cli import main

    rows = [(f"word {i}", "pos" if i % 4 == 0 else "neg") for i in range(200)]
    task = UserTask(_one_file(tmp_path, rows))
    spec = task.spec
    assert spec.eval_splits == ("heldout",) and spec.splits == ("train", "heldout")
    assert spec.carved_test == {"split": "heldout", "from": "train", "fraction": 0.1, "seed": 0}
    train, test = task.load("train"), task.load("heldout")
    assert (len(train), len(test)) == (180, 20) and not set(train.ids) & set(test.ids)
    assert test.label_counts() == {"neg": 15, "pos": 5}  # stratified: the file's 3:1
    assert task.load("heldout").ids == test.ids  # seeded
    other = UserTask(_one_file(tmp_path / "b", rows, "test_fraction = 0.25\ntest_seed = 3\n"))
    assert len(other.load("heldout")) == 50 and other.load("heldout").ids != test.ids
    assert main(["tasks", "show", str(tmp_path / "task.toml"), "-n", "0"]) == 0
    assert ("parts:       200 examples in all.csv: training 162, validation 18 (carved by each run: "
            "--validation-fraction 0.1, --validation-seed 0), test 20 (split 'heldout', carved first: "
            "test_fraction 0.1, test_seed 0)") in capsys.readouterr().out  # fmt: skip


def test_a_one_file_task_too_small_for_its_parts_is_refused_saying_what_each_needs(tmp_path):
    from bertvision.errors import ConfigError

    small = UserTask(_one_file(tmp_path / "s", [(f"w {i}", "ab"[i % 2]) for i in range(30)]))
    with pytest.raises(ConfigError, match=r"30 examples give a training and validation part of 27 and a test part of 3 "
                       r"\(test_fraction 0.1\); the test part needs at least 4 examples \(2 per label, at least 4\), "
                       r"the training and validation part 8: give at least 35 examples"):  # fmt: skip
        small.load("train")
    rare = UserTask(_one_file(tmp_path / "r", [(f"w {i}", "a") for i in range(60)] + [("x", "b"), ("y", "b")]))
    with pytest.raises(ConfigError, match="label 'b' \\(2 examples\\) would have none in the test part"):
        rare.load("heldout")
    with pytest.raises(DataError, match="test_fraction must be a number in \\(0, 1\\), not 1.5"):
        UserTask(_one_file(tmp_path / "f", [("x", "a"), ("y", "b")], "test_fraction = 1.5\n"))
