"""What every task has in common: a `TaskSpec` (frozen, JSON-able: it goes into every manifest
and checkpoint), a `Task` that finds and reads each split, and a loaded `SentenceSplit` (GLUE,
users' files; SQuAD loads into `squad.SquadSplit`)."""

from __future__ import annotations

import itertools
import math
import os
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bertvision.errors import ConfigError, DataError


@dataclass(frozen=True)
class TaskKind:
    """What a task kind fixes about its data, so that no stage compares kind names."""

    label_dtype: Any
    """The labels' numpy dtype (None: span answers, no label column)."""
    named_labels: bool = False
    """Labels are class names (at least two; ids in the data); otherwise scores or spans."""
    problem_type: str | None = None
    """transformers' ``problem_type`` of a sequence head fine-tuned on it."""
    windows: bool = False
    """Questions over contexts, cut into windows of tokens (SQuAD); otherwise 1 or 2 texts."""


KINDS = {
    "classification": TaskKind(np.int64, named_labels=True, problem_type="single_label_classification"),
    "regression": TaskKind(np.float32, problem_type="regression"),
    "span": TaskKind(None, windows=True),
}  # fmt: skip

#: Environment variable naming the local data folder (the `glue/` + `squad2/` layout).
DATA_ENV = "BERTVISION_DATA"


@dataclass(frozen=True)
class TaskSpec:
    """The static description of a task. Serialisable with `to_dict()`."""

    name: str
    """Registry name, lower case (``rte``, ``sst2``, ``squad2``, or a user task's own)."""
    title: str
    """Human-readable name."""
    kind: str
    """``classification``, ``regression`` or ``span`` (extractive question answering)."""
    text_fields: tuple[str, ...]
    """Names of the text inputs, in the order they are fed to the tokenizer (1 or 2)."""
    labels: tuple[str, ...] | None
    """Label names in id order (classification only)."""
    metrics: tuple[str, ...]
    """Metric names; the first is the one model selection uses."""
    splits: tuple[str, ...]
    """Every split the task defines, labelled or not."""
    eval_splits: tuple[str, ...]
    """Labelled held-out splits reported at the end (GLUE: ``dev``; MNLI: both dev sets)."""
    unlabelled_splits: tuple[str, ...] = ()
    """Splits that carry no labels (GLUE test sets)."""
    carved_test: dict | None = None
    """A labelled test part carved from a split, for tasks without a labelled dev split:
    ``{"split": "heldout", "from": "train", "fraction": 0.1, "seed": 0}``; loading ``from`` gives
    the rest (`Task.load`), so every stage that reads it reads only the rest."""

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"task {self.name!r}: kind must be one of {tuple(KINDS)}, not {self.kind!r}")
        if not 1 <= len(self.text_fields) <= 2 and not self.traits.windows:
            raise ConfigError(f"task {self.name!r}: text_fields must name 1 or 2 fields")
        if self.traits.named_labels and (not self.labels or len(self.labels) < 2):
            raise ConfigError(f"task {self.name!r}: a classification task needs >= 2 labels")
        if not self.traits.named_labels and self.labels:
            raise ConfigError(f"task {self.name!r}: only classification tasks have labels")
        if len(set(self.labels or ())) != len(self.labels or ()):
            raise ConfigError(f"task {self.name!r}: labels must be unique")
        carve = self.carved_test
        if carve is not None and not ({carve["split"], carve["from"]} <= set(self.splits) and 0 < carve["fraction"] < 1):
            raise ConfigError(f"task {self.name!r}: carved_test must name two of its splits and a fraction in (0, 1)")
        for group in ("eval_splits", "unlabelled_splits"):
            unknown = set(getattr(self, group)) - set(self.splits)
            if unknown:
                raise ConfigError(
                    f"task {self.name!r}: {group} names unknown splits {sorted(unknown)}"
                )

    @property
    def traits(self) -> TaskKind:
        """What the task's kind fixes (`KINDS`)."""
        return KINDS[self.kind]

    @property
    def num_outputs(self) -> int:
        """Width of a head's output: the number of labels, or 1 for regression."""
        return len(self.labels) if self.labels else 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class SentenceSplit:
    """One split of a sentence-level task, held in memory column by column.

    ``texts[j][i]`` is text field ``j`` of example ``i``; ``labels`` holds label ids (int64)
    for classification, scores (float32) for regression, or is None for unlabelled splits.
    """

    task: TaskSpec
    split: str
    source: str
    ids: list[str]
    texts: tuple[list[str], ...]
    labels: np.ndarray | None

    def __post_init__(self):
        n = len(self.ids)
        if any(len(t) != n for t in self.texts) or (
            self.labels is not None and len(self.labels) != n
        ):
            raise ValueError(f"{self.source}: columns of unequal length")

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def labelled(self) -> bool:
        return self.labels is not None

    def example(self, i: int) -> dict[str, Any]:
        """Example ``i`` as a dict: id, each text field, and the label (name or score)."""
        row: dict[str, Any] = {"id": self.ids[i]}
        row.update({f: t[i] for f, t in zip(self.task.text_fields, self.texts, strict=True)})
        if self.labels is not None:
            label = self.labels[i]
            row["label"] = self.task.labels[label] if self.task.labels else float(label)
        return row

    def label_counts(self) -> dict[str, int]:
        """Examples per label name, in label-id order (classification only)."""
        if self.labels is None or not self.task.labels:
            return {}
        counts = Counter(self.labels.tolist())
        return {name: counts.get(i, 0) for i, name in enumerate(self.task.labels)}

    def subset(self, indices, split: str) -> SentenceSplit:
        """The examples at ``indices`` (in that order), as a split called ``split``."""
        idx = np.asarray(indices, dtype=np.int64)
        labels = None if self.labels is None else self.labels[idx]
        texts = tuple([t[i] for i in idx] for t in self.texts)
        return SentenceSplit(self.task, split, self.source, [self.ids[i] for i in idx], texts, labels)

    def to_arrow(self):
        """A pyarrow Table with columns id, the text fields, and label (if labelled)."""
        import pyarrow as pa

        cols = {"id": pa.array(self.ids, pa.string())}
        cols.update({f: pa.array(t, pa.string()) for f, t in zip(self.task.text_fields, self.texts, strict=True)})
        if self.labels is not None:
            cols["label"] = pa.array(self.labels)
        return pa.table(cols)


class Task:
    """A task bound to a data location. Subclasses implement `candidates` and `_load`."""

    spec: TaskSpec

    def candidates(self, split: str) -> list[str]:
        """Every place looked in for ``split`` (file paths, or ``hub:<dataset id>``)."""
        raise NotImplementedError

    def locate(self, split: str) -> str:
        """Where split ``split`` is read from: the first candidate that is a file, else the first
        (a carved test part: its split's)."""
        carve = self.spec.carved_test
        found = self.candidates(carve["from"] if carve and split == carve["split"] else split)
        return next((c for c in found if Path(c).is_file()), found[0])

    def exists(self, split: str) -> bool:
        loc = self.locate(split)
        return loc.startswith("hub:") or Path(loc).is_file()

    def load(self, split: str):
        """Read and validate split ``split``; bad data raises `DataError` naming file and line.
        A carved test part (`TaskSpec.carved_test`) and the rest of the split it comes from are
        the two parts of `carve_test`'s cut of that split."""
        self.check_split(split)
        carve = self.spec.carved_test
        if carve is None or split not in (carve["split"], carve["from"]):
            return self._load(split)
        whole = self._load(carve["from"])
        rest, test = carve_test(whole, carve)
        return whole.subset(test if split == carve["split"] else rest, split)

    def _load(self, split: str):
        raise NotImplementedError

    def check_split(self, split: str) -> None:
        if split not in self.spec.splits:
            raise ConfigError(
                f"task {self.spec.name!r} has no split {split!r}; it has {', '.join(self.spec.splits)}"
            )

    @property
    def name(self) -> str:
        return self.spec.name


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path | None:
    """The local data folder: ``data_dir`` if given, else ``$BERTVISION_DATA``, else None (Hub).

    A folder that is named but does not exist is an error, so a typo never silently falls back
    to the Hub.
    """
    origin = "--data-dir"
    if data_dir is None or str(data_dir) == "":
        data_dir, origin = os.environ.get(DATA_ENV) or None, DATA_ENV
    if data_dir is None:
        return None
    path = Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(path, f"data folder does not exist (from {origin})")
    return path.resolve()


def require_file(path: Path, what: str, looked: list[str] | None = None) -> None:
    """Raise a `DataError` naming ``path`` (and every place looked) if it is not a file."""
    if path.is_file():
        return
    where = f"; looked in {', '.join(looked)}" if looked and len(looked) > 1 else ""
    raise DataError(path, f"{what} not found{where}")


def check_text(
    text: str, source: str, field: str, *, line: int | None = None, key: str | None = None
) -> str:
    """Return ``text`` unchanged, or raise if it is empty or only white space."""
    if not text or not text.strip():
        raise DataError(source, f"empty text in field {field!r}", line=line, key=key)
    return text


def training_subset(train_rows: np.ndarray, n: int | None, seed: int) -> np.ndarray:
    """A fixed seeded subset of ``n`` of the training part's rows (sorted), drawn after
    `carve_validation`, which it leaves as it is; all of them when ``n`` is None or not smaller.
    Fine-tuning and heads draw it alike, so ``--train-examples N`` names the same examples in both."""
    if n is None or n >= len(train_rows):
        return train_rows
    return np.sort(np.random.default_rng(seed).choice(train_rows, size=n, replace=False))


MIN_PART, MIN_PER_LABEL = 4, 2
"""The fewest examples in each part of a carve (training, validation, test), and for classification
twice the number of labels: with fewer, a score is one of a few values (1 example: 0 or 1)."""


def carve_validation(
    labels: np.ndarray | None, n: int, fraction: float, seed: int, *, stratify: bool = True, source: str = "train"
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded indices (train part, validation part) of a train split of ``n`` examples.

    Stratified by label where ``labels`` are class ids, so a small task keeps its label balance
    in both parts. Every stage (fine-tuning, heads) calls this with the same seed and fraction,
    so they agree on which examples are held out. Indices come back sorted. A split too small
    for `MIN_PART` examples in each part is refused, naming ``source`` (its file or store).
    """
    return _carve(labels if stratify else None, n, fraction, seed, ("training", "validation"), "--validation-fraction",
                  source, vanish=False)  # fmt: skip


def carve_test(split: SentenceSplit, carve: dict) -> tuple[np.ndarray, np.ndarray]:
    """Seeded indices (rest, test part) of the split a test part is carved from (`TaskSpec.carved_test`),
    stratified for classification; the validation part is carved later from the rest, so the rest
    must hold enough for it too (`MIN_PART` twice, per label for classification)."""
    if split.labels is None:
        raise DataError(split.source, "carries no labels: a test part cannot be carved from it")
    return _carve(split.labels, len(split), carve["fraction"], carve["seed"], ("training and validation", "test"),
                  "test_fraction", split.source, rest_parts=2, names_of=split.task.labels)  # fmt: skip


def _carve(labels: np.ndarray | None, n: int, fraction: float, seed: int, names: tuple[str, str], option: str,
           source: str, *, rest_parts: int = 1, vanish: bool = True,
           names_of: tuple[str, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """(rest, part) indices, sorted: a seeded cut of ``fraction`` of ``n`` examples, stratified by
    class ids, refused (naming ``source`` and what each part needs) when a part would be too small
    or (``vanish``) a class would be missing from one."""
    if not 0 < fraction < 1:
        raise ConfigError(f"{option.lstrip('-').replace('-', ' ')} must be in (0, 1), not {fraction}")
    strat = labels if labels is not None and labels.dtype.kind in "iu" else None
    need = MIN_PART if strat is None else max(MIN_PART, MIN_PER_LABEL * len(np.unique(strat)))

    def parts(m: int) -> tuple[int, int]:
        return m - max(1, round(m * fraction)), max(1, round(m * fraction))

    def enough(m: int) -> bool:
        return parts(m)[0] >= rest_parts * need and parts(m)[1] >= need

    if not enough(n):
        least = next(m for m in itertools.count(2 * need) if enough(m))
        per = "" if strat is None else f" ({MIN_PER_LABEL} per label, at least {MIN_PART})"
        needs = (f"each part needs at least {need} examples{per}" if rest_parts == 1 else
                 f"the {names[1]} part needs at least {need} examples{per}, the {names[0]} part {rest_parts * need}")
        raise ConfigError(f"{source}: {n} examples give a {names[0]} part of {parts(n)[0]} and a {names[1]} part of "
                          f"{parts(n)[1]} ({option} {fraction}); {needs}: give at least {least} examples, or another "
                          f"{option}")  # fmt: skip
    from sklearn.model_selection import train_test_split

    counts = {} if strat is None else dict(zip(*np.unique(strat, return_counts=True), strict=True))
    label = (lambda i: repr(names_of[i]) if names_of else f"id {i}")  # noqa: E731
    if counts and min(counts.values()) < 2:
        if vanish:
            raise ConfigError(f"{source}: label {label(min(counts, key=counts.get))} has 1 example, so one part would "
                              "have none: each label needs at least 2 examples (one in each part)")  # fmt: skip
        strat = None  # a label with one example cannot be split both ways
    rest, part = train_test_split(np.arange(n), test_size=parts(n)[1], random_state=seed, stratify=strat)
    if vanish and counts:
        gone = sorted(set(counts) - set(labels[part].tolist()))
        if gone:
            per = math.ceil(1 / fraction)
            raise ConfigError(f"{source}: label {label(gone[0])} ({counts[gone[0]]} examples) would have none in the "
                              f"{names[1]} part ({option} {fraction}): a label needs about {per} examples for one of them "
                              f"to land in it; give more examples of it, or a larger {option}")  # fmt: skip
    return np.sort(rest), np.sort(part)

