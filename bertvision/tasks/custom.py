"""Users' own tasks: CSV, TSV or JSON-lines files declared in a small TOML or JSON file (its
fields: `_FIELDS`; an example in README.md), whose path goes wherever a task name does.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from bertvision.errors import ConfigError, DataError, json_error
from bertvision.io import read_utf8
from bertvision.tasks.base import KINDS, SentenceSplit, Task, TaskSpec, require_file
from bertvision.tasks.readers import Columns, build_split, check_header, label_key, read_rows

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

_FIELDS = {
    "name", "title", "kind", "text_fields", "label_field", "labels", "id_field", "metrics",
    "splits", "eval_splits", "unlabelled_splits", "format", "ignore_columns", "test_fraction", "test_seed",
}  # fmt: skip
CARVED = "heldout"  # the split name of a test part carved from train
_EXT_FORMAT = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
DEFAULT_METRICS = {"classification": ("accuracy", "macro_f1"), "regression": ("pearson", "spearman")}


def is_task_config(name: str) -> bool:
    """Whether ``name`` refers to a task config file rather than a registered task."""
    return Path(name).suffix.lower() in (".toml", ".json") or "/" in name


def load_config(path: str | Path) -> dict:
    """The table of a TOML or JSON task config file; errors name the line (lines end at ``\\n``:
    ``\\r\\n`` and ``\\r\\r\\n`` are one ending; a lone ``\\r`` is JSON's white space, TOML's error)."""
    path = Path(path)
    require_file(path, "task config file")
    text = read_utf8(path)
    if path.suffix.lower() == ".json":
        try:
            cfg = json.loads(text)
        except json.JSONDecodeError as e:
            raise json_error(path, e, what="malformed task config: not valid JSON") from e
    else:
        try:
            cfg = tomllib.loads(re.sub(r"\r+\n", "\n", text))
        except tomllib.TOMLDecodeError as e:
            raise DataError(path, f"malformed task config: {e}") from e
    if not isinstance(cfg, dict):
        raise DataError(path, "a task config must be a table/object")
    return cfg


class UserTask(Task):
    """A task declared by a config file. Its label set is fixed when the task is built."""

    def __init__(self, config_path: str | Path):
        self.config_path = Path(config_path).resolve()
        cfg = load_config(self.config_path)
        self._cfg = cfg
        unknown = sorted(set(cfg) - _FIELDS)
        if unknown:
            self._fail(f"unknown field(s) {unknown}; known fields are {sorted(_FIELDS)}")
        kind = self._field("kind", str)
        if kind not in DEFAULT_METRICS:
            self._fail(f"kind must be 'classification' or 'regression', not {kind!r}")
        text = tuple(self._field("text_fields", list))
        splits = self._field("splits", dict)
        if not splits:
            self._fail("splits must name at least one file")
        self.paths = {s: self._path(s, p) for s, p in splits.items()}
        self.columns = Columns(text, self._field("label_field", str), cfg.get("id_field"))
        self.ignore = tuple(cfg.get("ignore_columns", ()))
        labels = None
        if KINDS[kind].named_labels:
            labels = cfg.get("labels")
            labels = tuple(str(x) for x in labels) if labels else self._infer_labels()
        evals = cfg.get("eval_splits") or [s for s in ("dev", "validation") if s in splits][:1]
        unlabelled = cfg.get("unlabelled_splits", [s for s in splits if s == "test"])
        carved = self._carve(splits, evals)
        try:
            self.spec = TaskSpec(
                name=self._field("name", str), title=cfg.get("title", f"{cfg['name']} (user task from {self.config_path.name})"),
                kind=kind, text_fields=text, labels=labels, metrics=tuple(cfg.get("metrics", DEFAULT_METRICS[kind])),
                splits=(*splits, *([CARVED] if carved else [])), eval_splits=(CARVED,) if carved else tuple(evals),
                unlabelled_splits=tuple(unlabelled), carved_test=carved,
            )  # fmt: skip
        except ConfigError as e:
            self._fail(str(e))

    def _carve(self, splits: dict, evals: list) -> dict | None:
        """`TaskSpec.carved_test` of a task with no labelled dev split: a test part of train
        (``test_fraction``, default 0.1; ``test_seed``, default 0), else None."""
        fraction, seed = self._cfg.get("test_fraction", 0.1), self._cfg.get("test_seed", 0)
        if evals or "train" not in splits:
            if {"test_fraction", "test_seed"} & set(self._cfg):
                self._fail(f"test_fraction and test_seed carve a test part from train when no dev split is given; "
                           f"this task has {', '.join(evals) or 'no train split'}")  # fmt: skip
            return None
        if CARVED in splits:
            self._fail(f"splits.{CARVED}: the name of the test part carved from train; call this split otherwise")
        if isinstance(fraction, bool) or not isinstance(fraction, float | int) or not 0 < fraction < 1:
            self._fail(f"test_fraction must be a number in (0, 1), not {fraction!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            self._fail(f"test_seed must be an integer, not {seed!r}")
        return {"split": CARVED, "from": "train", "fraction": float(fraction), "seed": seed}

    def _fail(self, problem: str):
        raise DataError(self.config_path, problem)

    def _field(self, key: str, kind: type):
        if key not in self._cfg:
            self._fail(f"missing field {key!r}")
        value = self._cfg[key]
        if not isinstance(value, kind):
            self._fail(f"field {key!r} must be a {kind.__name__}, not {type(value).__name__}")
        return value

    def _path(self, split: str, value) -> Path:
        if not isinstance(value, str):
            self._fail(f"splits.{split} must be a file path")
        path = Path(value)
        return path if path.is_absolute() else (self.config_path.parent / path)

    def _format(self, path: Path) -> str:
        fmt = self._cfg.get("format") or _EXT_FORMAT.get(path.suffix.lower())
        if fmt not in ("csv", "tsv", "jsonl"):
            self._fail(f"cannot tell the format of {path.name}; set format = 'csv', 'tsv' or 'jsonl'")
        return fmt

    def _infer_labels(self) -> tuple[str, ...]:
        """The sorted distinct label values of the train split (or the first split)."""
        split = "train" if "train" in self.paths else next(iter(self.paths))
        header, rows = self._rows(split)
        check_header(self.paths[split], header, self.columns, allowed=self.ignore)
        values = {label_key(row.get(self.columns.label)) for _, row in rows}
        if len(values) < 2:
            self._fail(f"{self.paths[split]} has fewer than 2 distinct labels; list them in 'labels'")
        return tuple(sorted(values, key=_numeric_first))

    def _rows(self, split: str):
        path = self.paths[split]
        require_file(path, f"split {split!r} of task config {self.config_path.name}")
        return read_rows(path, self._format(path))

    def candidates(self, split: str) -> list[str]:
        return [str(self.paths[split])]

    def _load(self, split: str) -> SentenceSplit:
        path = self.paths[split]
        header, rows = self._rows(split)
        columns = self.columns
        if split in self.spec.unlabelled_splits and columns.label not in header:
            columns = Columns(columns.text, None, columns.id)
        check_header(path, header, columns, allowed=(*self.ignore, self.columns.label))
        label_map = {v: i for i, v in enumerate(self.spec.labels)} if self.spec.labels else None
        return build_split(self.spec, split, path, rows, columns, label_map)


def _numeric_first(value: str):
    """Sort key: numeric labels in numeric order ("2" before "10"), then the rest by text."""
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)
