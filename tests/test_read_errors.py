"""Where a read error points: JSON offsets, bytes that are not UTF-8, repeated ids, and line
endings. Every file here is a small one written under tmp_path."""

import json
from pathlib import Path

import pytest

from bertvision.errors import DataError
from bertvision.tasks import get_task

RTE_HEADER = "index\tsentence1\tsentence2\tlabel\n"
RTE_ROWS = ["0\tP one.\tH one.\tentailment", "1\tP two.\tH two.\tnot_entailment"]
JSONL_CONFIG = json.dumps(
    {"name": "t", "kind": "regression", "text_fields": ["text"], "label_field": "y",
     "id_field": "id", "splits": {"train": "t.jsonl", "dev": "t.jsonl"}}
)  # fmt: skip
# Both declare dev: a task of train alone carves a test part, which these few rows cannot give.
CSV_CONFIG = """name = "reviews"
kind = "classification"
text_fields = ["title", "body"]
label_field = "stars"
id_field = "rid"
labels = ["1", "2"]
[splits]
train = "train.csv"
dev = "train.csv"
"""


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
    return path


def rte(root: Path, data: str | bytes, split: str = "train") -> Path:
    return write(root / "glue" / "RTE" / f"{split}.tsv", data)


def load_error(task: str, root: Path, split: str = "train") -> DataError:
    with pytest.raises(DataError) as err:
        get_task(task, root).load(split)
    return err.value


def squad_doc(*articles) -> dict:
    context = "The Eiffel Tower is in Paris."
    return {
        "version": "v2.0",
        "data": [
            {"title": title, "paragraphs": [{"context": context, "qas": [
                {"id": qid, "question": "Where?", "answers": [{"text": "Paris", "answer_start": 23}],
                 "is_impossible": False} for qid in qids]}]}
            for title, qids in articles
        ],
    }  # fmt: skip


def squad_file(root: Path, data: str | bytes) -> Path:
    return write(root / "squad2" / "dev-v2.0.json", data)


# ---------------------------------------------------------------------------------------------
# (a) JSON: the character offset, and line and column where the file has several lines


def test_truncated_one_line_squad_file_gives_the_offset(tmp_path):
    text = json.dumps(squad_doc(("T", ["q1", "q2"])))
    cut = text.index('"q2"') + 3  # inside the string "q2"
    path = squad_file(tmp_path, text[:cut])
    err = load_error("squad2", tmp_path, "dev")
    assert err.line is None  # one line: "line 1" says nothing
    assert str(err) == (
        f"{path}: malformed JSON: Unterminated string starting at character offset {cut - 3}; "
        f"the string is still open where the file ends, at character offset {cut} (truncated?)"
    )


def test_json_error_on_a_later_line_gives_line_column_and_offset(tmp_path):
    text = json.dumps(squad_doc(("T", ["q1"])), indent=1)
    lines = text.split("\n")
    lines[2] = lines[2] + ","  # `"data": [,` on line 3
    path = squad_file(tmp_path, "\n".join(lines))
    offset = len(lines[0]) + len(lines[1]) + 2 + len(lines[2]) - 1  # the comma
    err = load_error("squad2", tmp_path, "dev")
    assert err.line == 3
    assert str(err) == (
        f"{path}:3: malformed JSON: Expecting value at column {len(lines[2])} "
        f"(character offset {offset})"
    )


def test_jsonl_error_gives_the_file_line_and_the_offset_in_it(tmp_path):
    cfg = write(tmp_path / "t.json", JSONL_CONFIG)
    write(tmp_path / "t.jsonl", '{"id": 1, "text": "a", "y": 1}\n\n{"id": 2, "text": "b", "y": }\n')
    with pytest.raises(DataError) as err:
        get_task(str(cfg)).load("train")
    assert str(err.value) == (
        f"{tmp_path / 't.jsonl'}:3: malformed JSON: Expecting value at column 29 "
        "(character offset 28 in the line)"
    )
    write(tmp_path / "t.jsonl", '{"id": 1, "text": "a", "y": 1}\n{"id": 2, "text": "b')
    with pytest.raises(
        DataError,
        match=r"t.jsonl:2: malformed JSON: Unterminated string starting at column 19 \(character offset 18 in the line\); the string is still open where the line ends",
    ):
        get_task(str(cfg)).load("train")


def test_json_task_config_error_gives_line_and_column(tmp_path):
    cfg = write(tmp_path / "t.json", '{\n  "name": "t",\n  "kind" "regression"\n}\n')
    with pytest.raises(DataError) as err:
        get_task(str(cfg))
    assert str(err.value) == (
        f"{cfg}:3: malformed task config: not valid JSON: Expecting ':' delimiter at column 10 "
        "(character offset 26)"
    )


def test_truncated_manifest_gives_the_offset(tmp_path):
    from bertvision.store import MANIFEST_NAME, read_manifest

    write(tmp_path / MANIFEST_NAME, '{"format_version": 1, "status": ')
    with pytest.raises(DataError) as err:
        read_manifest(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / MANIFEST_NAME}: not valid JSON: Expecting value at character offset 32; "
        "the file ends there (truncated?)"
    )


@pytest.mark.parametrize(
    "module, loader", [("train", "load_head"), ("train", "read_head_config")]
)
def test_truncated_head_config_gives_the_offset(tmp_path, module, loader):
    import importlib

    load = getattr(importlib.import_module(f"bertvision.{module}"), loader)
    text = '{"adapter_pooler": {"hidden_size": 8'
    write(tmp_path / "head_config.json", text)
    with pytest.raises(DataError) as err:
        load(tmp_path)
    assert str(err.value) == (
        f"{tmp_path / 'head_config.json'}: malformed JSON: Expecting ',' delimiter at character "
        f"offset {len(text)}; the file ends there (truncated?)"
    )


def test_squad_eval_names_the_offset_in_predictions_and_na_prob_files(tmp_path, capsys):
    from bertvision.cli import main

    data = squad_file(tmp_path, json.dumps(squad_doc(("T", ["q1"]))))
    preds = write(tmp_path / "preds.json", '{"q1": "Par')
    good = write(tmp_path / "good.json", '{"q1": "Paris"}')
    probs = write(tmp_path / "na.json", '{"q1" 0.5}')
    assert main(["squad-eval", str(data), str(preds)]) == 1
    err = capsys.readouterr().err
    assert err == (
        f"bertvision: error: {preds}: not valid JSON: Unterminated string starting at character "
        "offset 7; the string is still open where the file ends, at character offset 11 (truncated?)\n"
    )
    assert main(["squad-eval", str(data), str(good), "--na-prob-file", str(probs)]) == 1
    assert capsys.readouterr().err == (
        f"bertvision: error: {probs}: not valid JSON: Expecting ':' delimiter at character offset 6\n"
    )


# ---------------------------------------------------------------------------------------------
# (b) Bytes that are not UTF-8: the line and the byte offset of the first one


def test_non_utf8_tsv_names_line_and_byte(tmp_path):
    body = "".join(f"{i}\tP{i}.\tH{i}.\tentailment\n" for i in range(2000))  # beyond one read
    bad = "2000\tcaf\xe9\tH.\tentailment\n".encode("latin-1")
    path = rte(tmp_path, RTE_HEADER.encode() + body.encode() + bad)
    offset = len(RTE_HEADER) + len(body) + len("2000\tcaf")
    err = load_error("rte", tmp_path)
    assert str(err) == (
        f"{path}:2002: not UTF-8 text (invalid continuation byte): byte 0xe9 at byte offset "
        f"{offset} (offset 8 in the line); save the file as UTF-8"
    )
    rte(tmp_path, b"\xffindex\tsentence1\tsentence2\tlabel\n")  # in the header
    assert load_error("rte", tmp_path).line == 1


def test_non_utf8_user_files_name_line_and_byte(tmp_path):
    cfg = write(tmp_path / "task.toml", CSV_CONFIG)
    write(tmp_path / "train.csv", b"rid,title,body,stars\nr1,a,b,1\nr2,a,\x80b,2\n")
    with pytest.raises(
        DataError,
        match=r"train.csv:3: not UTF-8 text \(invalid start byte\): byte 0x80 at byte offset 35 \(offset 5 in the line\)",
    ):
        get_task(str(cfg)).load("train")
    jcfg = write(tmp_path / "t.json", JSONL_CONFIG)
    write(
        tmp_path / "t.jsonl", b'{"id": 1, "text": "a", "y": 1}\n{"id": 2, "text": "\xc3", "y": 1}\n'
    )
    with pytest.raises(
        DataError,
        match=r"t.jsonl:2: not UTF-8 text \(invalid continuation byte\): byte 0xc3 at byte offset 50 \(offset 19 in the line\)",
    ):
        get_task(str(jcfg)).load("train")
    write(tmp_path / "bad.toml", b'name = "r"\ntitle = "caf\xe9"\n')
    with pytest.raises(
        DataError, match=r"bad.toml:2: not UTF-8 text .*byte offset 23 \(offset 12 in the line\)"
    ):
        get_task(str(tmp_path / "bad.toml"))


def test_non_utf8_json_files_name_line_and_byte(tmp_path):
    text = json.dumps(squad_doc(("T", ["q1"])), indent=1).replace("Where?", "Where\udce9?")
    path = squad_file(tmp_path, text.encode("utf-8", "surrogateescape"))
    line = text[: text.index("\udce9")].count("\n") + 1
    err = load_error("squad2", tmp_path, "dev")
    assert err.line == line and "not UTF-8 text (invalid continuation byte): byte 0xe9" in str(err)
    assert str(err).startswith(f"{path}:{line}: ")
    from bertvision.metrics.squad_v2 import evaluate_files

    data = write(tmp_path / "data.json", json.dumps(squad_doc(("T", ["q1"]))))
    preds = write(tmp_path / "preds.json", b'{\n"q1": "Paris\xe9"}')
    with pytest.raises(
        DataError,
        match=r"preds.json:2: not UTF-8 text \(invalid continuation byte\): byte 0xe9 at byte offset 14 \(offset 12 in the line\)",
    ):
        evaluate_files(data, preds)
    with pytest.raises(DataError, match=r"dev-v2.0.json:\d+: not UTF-8 text"):
        evaluate_files(path, preds)  # the data file too, read first


# ---------------------------------------------------------------------------------------------
# (c) A repeated id names both lines (or both places)


def test_duplicate_id_in_glue_tsv_names_both_lines(tmp_path):
    path = rte(
        tmp_path,
        RTE_HEADER
        + "\n".join([*RTE_ROWS, "2\tP.\tH.\tentailment", "0\tP.\tH.\tentailment"])
        + "\n",
    )
    err = load_error("rte", tmp_path)
    assert (
        str(err)
        == f"{path}:5: example id '0' occurs more than once in column 'index' (first on line 2)"
    )
    assert err.line == 5


def test_duplicate_id_in_user_files_names_both_lines(tmp_path):
    cfg = write(tmp_path / "task.toml", CSV_CONFIG)
    write(tmp_path / "train.csv", 'rid,title,body,stars\n7,a,"two\nlines",1\n8,a,b,2\n7,c,d,1\n')
    with pytest.raises(
        DataError,
        match=r"train.csv:5: example id '7' occurs more than once in column 'rid' \(first on line 2\)",
    ):
        get_task(str(cfg)).load("train")
    tsv_cfg = write(tmp_path / "tsv.toml", CSV_CONFIG.replace("train.csv", "train.tsv"))
    write(tmp_path / "train.tsv", "rid\ttitle\tbody\tstars\nx\ta\tb\t1\ny\ta\tb\t1\nx\ta\tb\t2\n")
    with pytest.raises(
        DataError,
        match=r"train.tsv:4: example id 'x' occurs more than once in column 'rid' \(first on line 2\)",
    ):
        get_task(str(tsv_cfg)).load("train")
    jcfg = write(tmp_path / "t.json", JSONL_CONFIG)
    write(
        tmp_path / "t.jsonl",
        '{"id": 7, "text": "a", "y": 1}\n{"id": 8, "text": "b", "y": 1}\n{"id": "7", "text": "c", "y": 1}\n',
    )
    with pytest.raises(
        DataError,
        match=r"t.jsonl:3: example id '7' occurs more than once in column 'id' \(first on line 1\)",
    ):
        get_task(str(jcfg)).load("train")


def test_duplicate_squad_question_id_names_both_places(tmp_path):
    path = squad_file(tmp_path, json.dumps(squad_doc(("A", ["q1", "q2"]), ("B", ["q3", "q1"]))))
    err = load_error("squad2", tmp_path, "dev")
    assert err.key == "q1"
    assert str(err) == (
        f"{path} [q1]: question id occurs more than once: at data[1].paragraphs[0].qas[1] "
        "(article 'B'), first at data[0].paragraphs[0].qas[0] (article 'A')"
    )
    from bertvision.metrics.squad_v2 import read_gold

    with pytest.raises(DataError) as err:
        read_gold(path)
    assert str(err.value) == (
        f"{path} [q1]: question id appears twice: at data[1].paragraphs[0].qas[1], "
        "first at data[0].paragraphs[0].qas[0]"
    )


# ---------------------------------------------------------------------------------------------
# (d) Line endings: \r\n and \r\r\n end one line; a lone \r does not end a line


@pytest.mark.parametrize("eol", ["\r\r\n", "\r\n"])
def test_crlf_files_report_the_editors_line(tmp_path, eol):
    bad = "2\tP three.\tH three.\tmaybe"  # the 3rd data line, line 4 of the file
    path = rte(tmp_path, eol.join([RTE_HEADER.rstrip("\n"), *RTE_ROWS, bad, ""]))
    err = load_error("rte", tmp_path)
    assert str(err) == (
        f"{path}:4: unknown label 'maybe'; expected one of 'entailment', 'not_entailment'"
    )
    cola = write(
        tmp_path / "glue" / "CoLA" / "train.tsv",
        eol.join(["s\t1\t\tA.", "s\t0\t*\tB.", "s\t2\t\tC.", ""]),
    )
    assert load_error("cola", tmp_path).line == 3  # a file with no header
    assert load_error("cola", tmp_path).source == str(cola)


@pytest.mark.parametrize("eol", ["\r\r\n", "\r\n"])
def test_crlf_values_keep_no_carriage_return(tmp_path, eol):
    rte(tmp_path, eol.join([RTE_HEADER.rstrip("\n"), *RTE_ROWS, ""]))
    data = get_task("rte", tmp_path).load("train")
    assert data.ids == ["0", "1"]
    assert data.texts == (["P one.", "P two."], ["H one.", "H two."])
    assert data.labels.tolist() == [0, 1]
    # The last column is a text: no \r may stay on it.
    write(
        tmp_path / "glue" / "SST-2" / "test.tsv",
        eol.join(["index\tsentence", "0\tgood .", "1\tbad .", ""]),
    )
    assert get_task("sst2", tmp_path).load("test").texts == (["good .", "bad ."],)


@pytest.mark.parametrize("eol", ["\r\r\n", "\r\n"])
def test_crlf_user_files_report_the_editors_line(tmp_path, eol):
    cfg = write(tmp_path / "task.toml", CSV_CONFIG)
    rows = ["rid,title,body,stars", 'r1,a,"two' + eol + 'lines",1', "r2,a,b,2", "r3,a,b,3", ""]
    write(tmp_path / "train.csv", eol.join(rows))
    with pytest.raises(DataError, match=r"train.csv:5: unknown label '3'"):
        get_task(str(cfg)).load("train")
    write(tmp_path / "train.csv", eol.join([*rows[:3], "r3,a,b,1", ""]))
    data = get_task(str(cfg)).load("train")
    assert data.labels.tolist() == [0, 1, 0] and data.ids == ["r1", "r2", "r3"]
    assert data.texts[1] == ["two" + eol + "lines", "b", "b"]  # quoted: the text, as written
    jcfg = write(tmp_path / "t.json", JSONL_CONFIG)
    lines = [
        '{"id": 1, "text": "a", "y": 1}',
        '{"id": 2, "text": "b", "y": 1}',
        '{"id": 3, "text": "c", "y": "x"}',
    ]
    write(tmp_path / "t.jsonl", eol.join([*lines, ""]))
    with pytest.raises(DataError, match=r"t.jsonl:3: score 'x' is not a number"):
        get_task(str(jcfg)).load("train")


def test_crlf_config_and_json_files_report_the_editors_line(tmp_path):
    toml = write(
        tmp_path / "t.toml", 'name = "t"\r\r\nkind = "regression"\r\r\ntext_fields = \r\r\n'
    )
    with pytest.raises(
        DataError, match=r"t.toml: malformed task config: .*\(at line 3, column 15\)"
    ):
        get_task(str(toml))
    jcfg = write(tmp_path / "t.json", '{\r\r\n"name": "t",\r\r\n"kind" "regression"\r\r\n}')
    with pytest.raises(DataError, match=r"t.json:3: malformed task config: not valid JSON"):
        get_task(str(jcfg))
    text = json.dumps(squad_doc(("T", ["q1"])), indent=1).replace("\n", "\r\r\n")
    squad_file(tmp_path, text.replace('"answer_start": 23', '"answer_start": 2x', 1))
    line = text[: text.index('"answer_start"')].count("\n") + 1
    assert load_error("squad2", tmp_path, "dev").line == line


def test_a_lone_carriage_return_is_not_a_line_ending(tmp_path):
    # In a TSV (or outside quotes in a CSV) it is an error that names its line...
    path = rte(tmp_path, RTE_HEADER + RTE_ROWS[0] + "\n" + "1\tP\rtwo.\tH.\tentailment\n")
    err = load_error("rte", tmp_path)
    assert err.line == 3 and err.source == str(path)
    assert "a carriage return (\\r) inside the line, outside quotes" in str(err)
    old_mac = rte(tmp_path, "\r".join([RTE_HEADER.rstrip("\n"), *RTE_ROWS, ""]))
    err = load_error("rte", tmp_path)
    assert (err.source, err.line) == (str(old_mac), 1)
    cfg = write(tmp_path / "task.toml", CSV_CONFIG)
    write(tmp_path / "train.csv", "rid,title,body,stars\nr1,a,b\r,1\n")
    with pytest.raises(DataError, match=r"train.csv:2: malformed row: a carriage return"):
        get_task(str(cfg)).load("train")
    # ...inside a quoted CSV field it is text, and in JSON lines it is white space.
    write(tmp_path / "train.csv", 'rid,title,body,stars\nr1,a,"b\rc",1\nr2,a,b,2\n')
    assert get_task(str(cfg)).load("train").texts[1] == ["b\rc", "b"]
    jcfg = write(tmp_path / "t.json", JSONL_CONFIG)
    write(tmp_path / "t.jsonl", '{"id": 1,\r"text": "a", "y": 1}\n{"id": 2, "text": "b", "y": 2}\n')
    assert get_task(str(jcfg)).load("train").ids == ["1", "2"]


def test_a_data_error_survives_pickling_with_its_fields():
    """Ray hands a worker's exception to the driver pickled: it must arrive as the same error."""
    import pickle

    from bertvision.errors import DataError

    e = pickle.loads(pickle.dumps(DataError("train.tsv", "unknown label 'x'", line=3, key="q1")))
    assert isinstance(e, DataError) and str(e) == "train.tsv:3 [q1]: unknown label 'x'"
    assert (e.source, e.problem, e.line, e.key) == ("train.tsv", "unknown label 'x'", 3, "q1")
