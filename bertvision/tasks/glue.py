"""The nine GLUE tasks, read from the standard ``glue_data`` folder layout or from the Hub.

Local layout (what ``download_glue_data.py`` produces), under the data folder's ``glue/``:

    CoLA/{train,dev,test}.tsv          train/dev have NO header: source, label, original label, text
    SST-2/{train,dev,test}.tsv
    MRPC/{train,dev,test}.tsv          train/dev start with a UTF-8 byte-order mark
    QQP/{train,dev,test}.tsv
    STS-B/{train,dev,test}.tsv
    MNLI/{train,dev_matched,dev_mismatched,test_matched,test_mismatched}.tsv
    QNLI/ RTE/ WNLI/ {train,dev,test}.tsv

Test files carry no labels. Files are tab-separated with no quoting (the texts contain stray
quote characters). Label ids follow the Hugging Face ``glue`` dataset, so a model trained on
local files and one trained on Hub data agree on what label 0 means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertvision.errors import DataError
from bertvision.tasks.base import SentenceSplit, Task, TaskSpec, check_text
from bertvision.tasks.readers import Columns, build_split, check_header, read_rows

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class _Layout:
    """How one kind of file (labelled or test) of a GLUE task lies on disk."""

    header: tuple[str, ...]
    """The exact header row (or, for headerless files, the column names to use)."""
    columns: Columns
    has_header: bool = True


@dataclass(frozen=True)
class GlueFormat:
    folder: str
    hub_config: str
    labelled: _Layout
    test: _Layout
    label_values: tuple[str, ...] | None
    """The raw label values in the files, in label-id order (None: a regression score)."""
    files: dict
    """split name -> file name"""
    train_header: tuple[str, ...] | None = None
    """MNLI's train file has fewer annotator columns than its dev files."""


_PAIR = ("sentence1", "sentence2")
_STD_FILES = {"train": "train.tsv", "dev": "dev.tsv", "test": "test.tsv"}
_MNLI_FILES = {
    "train": "train.tsv",
    "dev_matched": "dev_matched.tsv",
    "dev_mismatched": "dev_mismatched.tsv",
    "test_matched": "test_matched.tsv",
    "test_mismatched": "test_mismatched.tsv",
}
_MNLI_PREFIX = (
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
)  # fmt: skip
_NLI = ("entailment", "not_entailment")


def _std(
    name,
    title,
    hub,
    folder,
    labels,
    label_values,
    metrics,
    labelled,
    test,
    text_fields,
    kind="classification",
):
    spec = TaskSpec(
        name=name,
        title=title,
        kind=kind,
        text_fields=text_fields,
        labels=labels,
        metrics=metrics,
        splits=("train", "dev", "test"),
        eval_splits=("dev",),
        unlabelled_splits=("test",),
    )
    return spec, GlueFormat(folder, hub, labelled, test, label_values, _STD_FILES)


def _pair_layout(header, text, label, id_col="index"):
    return _Layout(tuple(header), Columns(tuple(text), label, id_col))


_TASKS = [
    _std(
        "cola", "CoLA (Corpus of Linguistic Acceptability)", "cola", "CoLA",
        ("unacceptable", "acceptable"), ("0", "1"), ("mcc",),
        _Layout(("source", "label", "original_label", "sentence"), Columns(("sentence",), "label"), has_header=False),
        _pair_layout(("index", "sentence"), ("sentence",), None),
        ("sentence",),
    ),
    _std(
        "sst2", "SST-2 (Stanford Sentiment Treebank, binary)", "sst2", "SST-2",
        ("negative", "positive"), ("0", "1"), ("accuracy",),
        _pair_layout(("sentence", "label"), ("sentence",), "label", None),
        _pair_layout(("index", "sentence"), ("sentence",), None),
        ("sentence",),
    ),
    _std(
        "mrpc", "MRPC (Microsoft Research Paraphrase Corpus)", "mrpc", "MRPC",
        ("not_equivalent", "equivalent"), ("0", "1"), ("f1", "accuracy"),
        _pair_layout(("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), ("#1 String", "#2 String"), "Quality", None),
        _pair_layout(("index", "#1 ID", "#2 ID", "#1 String", "#2 String"), ("#1 String", "#2 String"), None),
        _PAIR,
    ),
    _std(
        "qqp", "QQP (Quora Question Pairs)", "qqp", "QQP",
        ("not_duplicate", "duplicate"), ("0", "1"), ("accuracy", "f1"),
        _pair_layout(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), ("question1", "question2"), "is_duplicate", "id"),
        _pair_layout(("id", "question1", "question2"), ("question1", "question2"), None, "id"),
        ("question1", "question2"),
    ),
    _std(
        "stsb", "STS-B (Semantic Textual Similarity Benchmark)", "stsb", "STS-B",
        None, None, ("pearson", "spearman"),
        _pair_layout(("index", "genre", "filename", "year", "old_index", "source1", "source2", *_PAIR, "score"), _PAIR, "score"),
        _pair_layout(("index", "genre", "filename", "year", "old_index", "source1", "source2", *_PAIR), _PAIR, None),
        _PAIR, kind="regression",
    ),
    _std(
        "qnli", "QNLI (Question-answering NLI)", "qnli", "QNLI",
        _NLI, _NLI, ("accuracy",),
        _pair_layout(("index", "question", "sentence", "label"), ("question", "sentence"), "label"),
        _pair_layout(("index", "question", "sentence"), ("question", "sentence"), None),
        ("question", "sentence"),
    ),
    _std(
        "rte", "RTE (Recognizing Textual Entailment)", "rte", "RTE",
        _NLI, _NLI, ("accuracy",),
        _pair_layout(("index", *_PAIR, "label"), _PAIR, "label"),
        _pair_layout(("index", *_PAIR), _PAIR, None),
        _PAIR,
    ),
    _std(
        "wnli", "WNLI (Winograd NLI)", "wnli", "WNLI",
        ("not_entailment", "entailment"), ("0", "1"), ("accuracy",),
        _pair_layout(("index", *_PAIR, "label"), _PAIR, "label"),
        _pair_layout(("index", *_PAIR), _PAIR, None),
        _PAIR,
    ),
]  # fmt: skip

_MNLI_LABELS = ("entailment", "neutral", "contradiction")
_MNLI_SPEC = TaskSpec(
    name="mnli",
    title="MNLI (Multi-Genre NLI; matched and mismatched)",
    kind="classification",
    text_fields=("premise", "hypothesis"),
    labels=_MNLI_LABELS,
    metrics=("accuracy",),
    splits=tuple(_MNLI_FILES),
    eval_splits=("dev_matched", "dev_mismatched"),
    unlabelled_splits=("test_matched", "test_mismatched"),
)
_MNLI_FORMAT = GlueFormat(
    "MNLI",
    "mnli",
    _pair_layout(
        (*_MNLI_PREFIX, *(f"label{i}" for i in range(1, 6)), "gold_label"), _PAIR, "gold_label"
    ),
    _pair_layout(_MNLI_PREFIX, _PAIR, None),
    _MNLI_LABELS,
    _MNLI_FILES,
    train_header=(*_MNLI_PREFIX, "label1", "gold_label"),
)

GLUE: dict[str, tuple[TaskSpec, GlueFormat]] = {spec.name: (spec, fmt) for spec, fmt in _TASKS}
GLUE["mnli"] = (_MNLI_SPEC, _MNLI_FORMAT)
GLUE = {k: GLUE[k] for k in ("cola", "sst2", "mrpc", "qqp", "stsb", "mnli", "qnli", "rte", "wnli")}

# The local folder may be the data folder itself holding glue/ (as ../shared/data does),
# or a glue_data/ folder, or the task folders directly.
_GLUE_ROOTS = ("glue", "glue_data", ".")


class GlueTask(Task):
    """A GLUE task, read from local TSV files when a data folder is set, else from the Hub."""

    def __init__(self, name: str, data_dir: Path | None):
        self.spec, self.format = GLUE[name]
        self.data_dir = data_dir

    def candidates(self, split: str) -> list[str]:
        if self.data_dir is None:
            return [f"hub:{HUB_DATASET}/{self.format.hub_config}"]
        file = self.format.files[split]
        return [str(self.data_dir / root / self.format.folder / file) for root in _GLUE_ROOTS]

    def locate(self, split: str) -> str:
        found = self.candidates(split)
        return next((c for c in found if Path(c).is_file()), found[0])

    def _load(self, split: str) -> SentenceSplit:
        if self.data_dir is None:
            return self._load_hub(split)
        path = Path(self.locate(split))
        if not path.is_file():
            raise DataError(
                path,
                f"{self.spec.title} {split} split not found; looked in {', '.join(self.candidates(split))}",
            )
        labelled = split not in self.spec.unlabelled_splits
        layout = self.format.labelled if labelled else self.format.test
        expected = layout.header
        if labelled and split == "train" and self.format.train_header:
            expected = self.format.train_header
        header, rows = read_rows(path, "glue-tsv", None if layout.has_header else expected)
        if tuple(header) != tuple(expected):
            check_header(path, header, layout.columns, allowed=expected)
            raise DataError(
                path,
                f"unexpected header {header}; a GLUE {self.format.folder} file has {list(expected)}",
                line=1,
            )
        label_map = None
        if self.format.label_values:
            label_map = {v: i for i, v in enumerate(self.format.label_values)}
        return build_split(self.spec, split, path, rows, layout.columns, label_map)

    def _load_hub(self, split: str) -> SentenceSplit:
        hub_split = split.replace("dev", "validation")
        ds = load_hub_dataset(HUB_DATASET, self.format.hub_config, hub_split)
        source = f"hub:{HUB_DATASET}/{self.format.hub_config}[{hub_split}]"
        # The Hub's column names are the specs' text field names.
        texts = tuple(list(ds[f]) for f in self.spec.text_fields)
        for field, column in zip(self.spec.text_fields, texts, strict=True):
            for i, t in enumerate(column):
                check_text(t, source, field, key=str(ds["idx"][i]))
        labels = None
        if split not in self.spec.unlabelled_splits:
            labels = np.asarray(ds["label"], dtype=self.spec.traits.label_dtype)
        return SentenceSplit(self.spec, split, source, [str(i) for i in ds["idx"]], texts, labels)


def load_hub_dataset(path: str, config: str | None, split: str):
    """``datasets.load_dataset`` with a message that says how to use local files instead."""
    import datasets

    try:
        return datasets.load_dataset(path, config, split=split)
    except Exception as e:  # the Hub raises many types (ConnectionError, OfflineModeIsEnabled, ...)
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(
            f"hub:{path}" + (f"/{config}" if config else ""),
            f"could not load split {split!r} from the Hugging Face Hub ({reason}). "
            "To read local files instead, pass --data-dir DIR or set BERTVISION_DATA=DIR, where DIR "
            "holds glue/<Task>/*.tsv (the glue_data layout) and squad2/*-v2.0.json",
        ) from e
