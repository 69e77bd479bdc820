r"""Reading delimited (TSV, CSV) and JSON-lines files into a `SentenceSplit`, strictly: every
problem is a `DataError` naming the file and the line (as a text editor numbers them); nothing is
skipped silently. A line ends at ``\n`` (with the ``\r`` of ``\r\n`` or ``\r\r\n``); a lone
``\r`` is an error in a TSV or CSV file (text inside a quoted CSV field), white space in JSON lines.
A row whose quoted field spans lines is reported at its first line.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertvision.errors import DataError, decode_error, json_error
from bertvision.tasks.base import SentenceSplit, TaskSpec, check_text

# GLUE's own TSV files contain stray quote characters that are part of the text, so they are
# read with no quoting at all; users' files follow the usual CSV quoting rules.
FORMATS = ("glue-tsv", "tsv", "csv", "jsonl")
# The csv module refuses a field over 128 KiB; a long document is text too. A field over this is
# most likely an unclosed quote swallowing the rest of the file.
FIELD_LIMIT = 1 << 24


@dataclass(frozen=True)
class Columns:
    """Which file columns feed which part of an example."""

    text: tuple[str, ...]
    """File columns holding the text fields, in the task's ``text_fields`` order."""
    label: str | None = None
    """File column holding the label or score; None for unlabelled splits."""
    id: str | None = None
    """File column holding an example id; None to number examples by line."""

    def required(self) -> list[str]:
        return [c for c in (self.id, *self.text, self.label) if c is not None]


def _open_text(path: Path):
    # utf-8-sig drops the byte-order mark that GLUE's MRPC files start with. newline="\n": lines
    # end at \n only (newline="" would also end one at each \r, so \r\r\n counted as two lines).
    # The csv module drops the \r of a line ending itself; JSON skips it as white space.
    try:
        return open(path, encoding="utf-8-sig", newline="\n")
    except OSError as e:
        raise DataError(path, f"cannot open: {e.strerror or e}") from e


def read_rows(
    path: Path, fmt: str, names: Sequence[str] | None = None
) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    """The header of ``path`` (``fmt``: one of `FORMATS`) and an iterator of (line number, row
    dict). ``names``: the columns of a delimited file without a header row (CoLA's train and
    dev); JSON lines take theirs from the first object."""
    if fmt == "jsonl":
        return _read_jsonl(path)
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}")
    f = _open_text(path)
    opts = {"delimiter": ",", "quoting": csv.QUOTE_MINIMAL} if fmt == "csv" else {"delimiter": "\t"}
    if fmt == "glue-tsv":
        opts["quoting"] = csv.QUOTE_NONE
    csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))
    reader = csv.reader(f, **opts)
    try:
        header = list(names) if names is not None else next(reader, None)
    except UnicodeDecodeError as e:
        f.close()
        raise decode_error(path, e) from e
    except csv.Error as e:
        f.close()
        raise _csv_error(path, e, reader, 1, "unreadable header") from e
    if header is None:
        f.close()
        raise DataError(path, "file is empty")
    header = [h.strip() for h in header]
    return header, _delimited_rows(path, f, reader, header)


def _delimited_rows(path, f, reader, header) -> Iterator[tuple[int, dict]]:
    width = len(header)
    with f:
        while True:
            start = reader.line_num + 1  # the row's first line (a quoted field may span lines)
            try:
                fields = next(reader)
            except StopIteration:
                return
            except UnicodeDecodeError as e:  # decoding runs ahead of the reader: find the line
                raise decode_error(path, e) from e
            except csv.Error as e:
                raise _csv_error(path, e, reader, start, "malformed row") from e
            if not fields:  # a blank line
                continue
            if len(fields) != width:
                raise DataError(
                    path,
                    f"malformed row: expected {width} fields, found {len(fields)}",
                    line=start,
                )
            yield start, dict(zip(header, fields, strict=True))


def _csv_error(path, exc: csv.Error, reader, start: int, what: str) -> DataError:
    if "new-line character" in str(exc):  # a \r that does not end a line, outside quotes
        return DataError(
            path,
            f"{what}: a carriage return (\\r) inside the line, outside quotes; lines must end "
            "with \\n or \\r\\n (a lone \\r, as in old Mac files, does not end a line)",
            line=reader.line_num or start,
        )
    if "field larger than field limit" in str(exc):
        return DataError(path, f"{what}: a field of more than {csv.field_size_limit():,} characters, over the CSV "
                               "reader's limit (an unclosed quote?)", line=start)  # fmt: skip
    return DataError(path, f"{what}: {exc}", line=start)


def _read_jsonl(path: Path) -> tuple[list[str], Iterator[tuple[int, dict]]]:
    f = _open_text(path)

    def rows():
        with f:
            try:
                for lineno, line in enumerate(f, start=1):
                    if not line.strip():
                        continue
                    try:
                        obj = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise json_error(path, e, line=lineno, what="malformed JSON") from e
                    if not isinstance(obj, dict):
                        raise DataError(path, "each line must be a JSON object", line=lineno)
                    yield lineno, obj
            except UnicodeDecodeError as e:
                raise decode_error(path, e) from e

    found = rows()
    first = next(found, None)
    if first is None:
        raise DataError(path, "file is empty")
    return list(first[1].keys()), itertools.chain([first], found)


def check_header(
    path: Path, header: Sequence[str], columns: Columns, *, allowed: Sequence[str] | None = None
) -> None:
    """Raise if a required column is missing, or if a column is neither required nor allowed.

    ``allowed=None`` allows any extra column.
    """
    missing = [c for c in columns.required() if c not in header]
    if missing:
        raise DataError(path, f"missing column(s) {missing}; the file has {list(header)}", line=1)
    if allowed is not None:
        extra = [c for c in header if c not in columns.required() and c not in allowed]
        if extra:
            raise DataError(
                path, f"unexpected column(s) {extra}; expected {list(columns.required())}", line=1
            )
    if len(set(header)) != len(header):
        raise DataError(path, f"duplicate column names in {list(header)}", line=1)


def build_split(spec: TaskSpec, split: str, path: Path, rows: Iterator[tuple[int, dict]], columns: Columns,
                label_map: Mapping[str, int] | None = None) -> SentenceSplit:  # fmt: skip
    """Collect validated rows into a `SentenceSplit`; ``label_map``: raw label (as text) -> id."""
    ids: list[str] = []
    first_line: dict[str, int] = {}  # example id -> the line it is first on
    texts: tuple[list[str], ...] = tuple([] for _ in columns.text)
    labels: list = []
    for lineno, row in rows:
        if columns.id:
            key = str(_field(path, row, columns.id, lineno))
            if key in first_line:
                raise DataError(
                    path,
                    f"example id {key!r} occurs more than once in column {columns.id!r} "
                    f"(first on line {first_line[key]})",
                    line=lineno,
                )
            first_line[key] = lineno
        else:
            key = str(lineno)
        ids.append(key)
        for j, col in enumerate(columns.text):
            text = _field(path, row, col, lineno)
            if not isinstance(text, str):
                raise DataError(
                    path, f"field {col!r} must be text, not {type(text).__name__}", line=lineno
                )
            texts[j].append(check_text(text, str(path), col, line=lineno))
        if columns.label is not None:
            raw = _field(path, row, columns.label, lineno)
            labels.append(_parse_label(spec, path, lineno, raw, label_map))
    if not ids:
        raise DataError(path, "no examples (the file holds a header only)")
    label_array = None
    if columns.label is not None:
        label_array = np.asarray(labels, dtype=spec.traits.label_dtype)
    return SentenceSplit(spec, split, str(path), ids, texts, label_array)


def _field(path, row: dict, col: str, lineno: int):
    if col not in row:  # only JSON lines can lack a key: delimited rows are checked for width
        raise DataError(path, f"missing field {col!r}; the object has {list(row)}", line=lineno)
    return row[col]


def _parse_label(spec: TaskSpec, path, lineno: int, raw, label_map) -> int | float:
    if not spec.traits.named_labels:  # a score
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise DataError(path, f"score {raw!r} is not a number", line=lineno) from None
        if not math.isfinite(value):
            raise DataError(path, f"score {raw!r} is not finite", line=lineno)
        return value
    key = label_key(raw)
    if key not in label_map:
        known = ", ".join(repr(k) for k in label_map)
        raise DataError(path, f"unknown label {key!r}; expected one of {known}", line=lineno)
    return label_map[key]


def label_key(raw) -> str:
    """Labels compare as text, so JSON 1, "1" and CSV "1" are the same label."""
    if isinstance(raw, bool):
        return str(raw).lower()
    if isinstance(raw, float) and raw.is_integer():
        return str(int(raw))
    return str(raw).strip()
