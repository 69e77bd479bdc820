"""GLUE readers: the real files in ../shared/data, and small hand-made folders for bad input."""

import time
from pathlib import Path

import numpy as np
import pytest

from bertvision.errors import ConfigError, DataError
from bertvision.tasks import get_task, resolve_data_dir, task_names

# Official GLUE split sizes (data rows), as SOURCES.md and the GLUE paper give them.
SIZES = {
    "cola": {"train": 8551, "dev": 1043, "test": 1063},
    "sst2": {"train": 67349, "dev": 872, "test": 1821},
    "mrpc": {"train": 3668, "dev": 408, "test": 1725},
    "stsb": {"train": 5749, "dev": 1500, "test": 1379},
    "rte": {"train": 2490, "dev": 277, "test": 3000},
    "wnli": {"train": 635, "dev": 71, "test": 146},
    "qnli": {"dev": 5463, "test": 5463},
}


def test_registry_has_the_nine_glue_tasks_and_squad():
    assert task_names()[:9] == [
        "cola",
        "sst2",
        "mrpc",
        "qqp",
        "stsb",
        "mnli",
        "qnli",
        "rte",
        "wnli",
    ]
    assert {"squad2", "squad2-articles"} <= set(task_names())
    assert get_task("SST-2", data_dir=None).name == "sst2"
    assert get_task("STS-B").spec.kind == "regression"
    assert get_task("mnli").spec.eval_splits == ("dev_matched", "dev_mismatched")
    with pytest.raises(ConfigError, match="unknown task 'glue-x'.*rte"):
        get_task("glue-x")


@pytest.mark.parametrize("name", sorted(SIZES))
def test_real_split_sizes(shared_data, name):
    task = get_task(name, shared_data)
    for split, n in SIZES[name].items():
        data = task.load(split)
        assert len(data) == n, (name, split)
        assert data.labelled == (split != "test")
        assert all(len(t) == n for t in data.texts)
        assert len(set(data.ids)) == n


def test_real_labels_match_known_distributions(shared_data):
    rte = get_task("rte", shared_data).load("train")
    assert rte.label_counts() == {"entailment": 1249, "not_entailment": 1241}
    assert rte.example(0)["label"] == "not_entailment"  # row 0 of train.tsv
    cola = get_task("cola", shared_data).load("dev")  # headerless file, label in column 2
    assert cola.label_counts() == {"unacceptable": 322, "acceptable": 721}
    assert cola.example(0)["sentence"] == "The sailors rode the breeze clear of the rocks."
    mrpc = get_task("mrpc", shared_data).load("train")  # starts with a byte-order mark
    assert mrpc.label_counts() == {"not_equivalent": 1194, "equivalent": 2474}
    stsb = get_task("stsb", shared_data).load("dev")
    assert stsb.labels.dtype == np.float32 and 0 <= stsb.labels.min() and stsb.labels.max() <= 5
    assert get_task("rte", shared_data).load("test").labels is None


def test_to_arrow_keeps_every_column(shared_data):
    table = get_task("rte", shared_data).load("dev").to_arrow()
    assert table.column_names == ["id", "sentence1", "sentence2", "label"]
    assert table.num_rows == 277


def test_missing_split_lists_where_it_looked(shared_data):
    task = get_task("qqp", shared_data)
    assert not task.exists("train")
    with pytest.raises(
        DataError, match=r"QQP.*train split not found; looked in .*glue/QQP/train.tsv"
    ):
        task.load("train")
    with pytest.raises(ConfigError, match="no split 'validation'"):
        task.load("validation")


def test_data_dir_precedence(tmp_path, monkeypatch):
    flag, env = tmp_path / "flag", tmp_path / "env"
    flag.mkdir()
    env.mkdir()
    monkeypatch.setenv("BERTVISION_DATA", str(env))
    assert resolve_data_dir(flag) == flag.resolve()
    assert resolve_data_dir(None) == env.resolve()
    monkeypatch.delenv("BERTVISION_DATA")
    assert resolve_data_dir(None) is None
    with pytest.raises(DataError, match="nope: data folder does not exist"):
        resolve_data_dir(tmp_path / "nope")


def test_hub_fallback_offline_says_how_to_use_local_files(no_data_env):
    task = get_task("rte")
    assert task.locate("train") == "hub:nyu-mll/glue/rte"
    start = time.monotonic()
    with pytest.raises(DataError) as err:
        task.load("train")
    assert time.monotonic() - start < 60
    msg = str(err.value)
    assert msg.startswith(
        "hub:nyu-mll/glue/rte: could not load split 'train' from the Hugging Face Hub"
    )
    assert "--data-dir" in msg and "BERTVISION_DATA" in msg


# ---------------------------------------------------------------------------------------------
# Bad input, on small hand-made files in the GLUE layout.

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"


def write_rte(root: Path, body: str, header: str = RTE_HEADER, split: str = "train") -> Path:
    path = root / "glue" / "RTE" / f"{split}.tsv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + body, encoding="utf-8")
    return path


def load_rte(root: Path, split: str = "train"):
    return get_task("rte", root).load(split)


def test_small_valid_file(tmp_path):
    write_rte(
        tmp_path, '0\tA "quoted" premise.\tA hypothesis.\tentailment\n1\tP.\tH.\tnot_entailment\n'
    )
    data = load_rte(tmp_path)
    assert data.texts[0][0] == 'A "quoted" premise.'  # GLUE quotes are text, not CSV quoting
    assert data.labels.tolist() == [0, 1]
    assert data.ids == ["0", "1"]


@pytest.mark.parametrize(
    "header, body, pattern",
    [
        ("index\tsentence1\tsentence2\n", "0\ta\tb\n", r"train.tsv:1: missing column\(s\) \['label'\]"),
        ("index\tsentence1\tsentence2\tlabel\textra\n", "0\ta\tb\tentailment\tx\n", r"train.tsv:1: unexpected column\(s\) \['extra'\]"),
        (RTE_HEADER, "0\ta\tb\tentailment\n1\ta\tb\n", r"train.tsv:3: malformed row: expected 4 fields, found 3"),
        (RTE_HEADER, "0\ta\tb\tentailment\n1\ta\tb\tmaybe\n", r"train.tsv:3: unknown label 'maybe'; expected one of 'entailment', 'not_entailment'"),
        (RTE_HEADER, "0\ta\t \tentailment\n", r"train.tsv:2: empty text in field 'sentence2'"),
        (RTE_HEADER, "", r"train.tsv: no examples"),
        ("", "", r"train.tsv: file is empty"),
        (RTE_HEADER, "0\ta\tb\tentailment\n0\tc\td\tentailment\n", r"example id '0' occurs more than once"),
        ("index\tsentence2\tsentence1\tlabel\n", "0\ta\tb\tentailment\n", r"train.tsv:1: unexpected header"),
    ],
    ids=["missing-column", "extra-column", "malformed-row", "unknown-label", "empty-text",
         "header-only", "empty-file", "duplicate-id", "swapped-columns"],
)  # fmt: skip
def test_bad_rte_file(tmp_path, header, body, pattern):
    path = write_rte(tmp_path, body, header)
    with pytest.raises(DataError, match=pattern) as err:
        load_rte(tmp_path)
    assert err.value.source == str(path)


def test_bad_score_and_headerless_cola(tmp_path):
    sts = tmp_path / "glue" / "STS-B" / "dev.tsv"
    sts.parent.mkdir(parents=True)
    header = (
        "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    )
    sts.write_text(header + "0\tg\tf\ty\t0\ts\ts\ta\tb\t4.2\n1\tg\tf\ty\t1\ts\ts\ta\tb\thigh\n")
    with pytest.raises(DataError, match=r"dev.tsv:3: score 'high' is not a number"):
        get_task("stsb", tmp_path).load("dev")
    cola = tmp_path / "glue" / "CoLA" / "train.tsv"
    cola.parent.mkdir(parents=True)
    cola.write_text("gj04\t1\t\tGood sentence.\ngj04\t0\t*\tBad sentence the.\ngj04\t2\t\tOdd.\n")
    with pytest.raises(DataError, match=r"train.tsv:3: unknown label '2'"):
        get_task("cola", tmp_path).load("train")


def test_bom_header_is_read(tmp_path):
    path = tmp_path / "glue" / "MRPC" / "dev.tsv"
    path.parent.mkdir(parents=True)
    path.write_text(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tA.\tB.\n", encoding="utf-8"
    )
    data = get_task("mrpc", tmp_path).load("dev")
    assert data.label_counts() == {"not_equivalent": 0, "equivalent": 1}
    assert data.example(0) == {
        "id": "2",
        "sentence1": "A.",
        "sentence2": "B.",
        "label": "equivalent",
    }


def test_glue_data_folder_layout_is_found(tmp_path):
    path = tmp_path / "glue_data" / "RTE" / "dev.tsv"
    path.parent.mkdir(parents=True)
    path.write_text(RTE_HEADER + "0\ta\tb\tentailment\n")
    assert len(get_task("rte", tmp_path).load("dev")) == 1
    assert get_task("rte", tmp_path).locate("dev") == str(path)


def test_non_utf8_file(tmp_path):
    path = write_rte(tmp_path, "")
    path.write_bytes(RTE_HEADER.encode() + b"0\tcaf\xe9\tb\tentailment\n")
    with pytest.raises(
        DataError,
        match=r"train.tsv:2: not UTF-8 text \(invalid continuation byte\): byte 0xe9 at byte offset 37 \(offset 5 in the line\)",
    ):
        load_rte(tmp_path)


def test_carve_validation_is_seeded_stratified_and_disjoint(shared_data):
    from bertvision.tasks.base import carve_validation

    train = get_task("rte", shared_data).load("train")
    tr, va = carve_validation(train.labels, len(train), 0.1, seed=0)
    assert (len(tr), len(va)) == (2241, 249)
    assert not set(tr) & set(va) and len(set(tr) | set(va)) == 2490
    assert abs(train.labels[va].mean() - train.labels.mean()) < 0.01  # stratified
    again = carve_validation(train.labels, len(train), 0.1, seed=0)
    assert np.array_equal(again[1], va)
    assert not np.array_equal(carve_validation(train.labels, len(train), 0.1, seed=1)[1], va)
    with pytest.raises(ConfigError, match=r"validation fraction must be in \(0, 1\)"):
        carve_validation(train.labels, len(train), 1.0, seed=0)
    regression = get_task("stsb", shared_data).load("train")  # scores: not stratified, still carved
    assert len(carve_validation(regression.labels, len(regression), 0.1, 0)[1]) == 575
