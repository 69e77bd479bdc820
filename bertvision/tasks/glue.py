"""The nine GLUE tasks, read from the ``glue_data`` folder layout (``glue/<Task>/<split>.tsv``,
what ``download_glue_data.py`` makes) or from the Hub. Test files carry no labels; files are
tab-separated with no quoting (the texts hold stray quote characters). Label ids follow the Hub's
``glue`` dataset, so models trained on local files and on Hub data agree on what label 0 means.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertvision.errors import DataError
from bertvision.tasks.base import SentenceSplit, Task, TaskSpec, check_text, require_file
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
    """A GLUE task's folder and its files' layouts (each split's file is ``<split>.tsv``)."""

    folder: str
    labelled: _Layout
    test: _Layout
    label_values: tuple[str, ...] | None
    """The raw label values in the files, in label-id order (None: a regression score)."""
    train_header: tuple[str, ...] | None = None
    """MNLI's train file has fewer annotator columns than its dev files."""


def _task(name, title, folder, labels, label_values, metrics, labelled, test, text_fields, kind="classification",
          splits=("train", "dev", "test"), train_header=None):  # fmt: skip
    """(name, (spec, format)); the Hub config is the name, dev splits are scored, tests unlabelled."""
    spec = TaskSpec(name=name, title=title, kind=kind, text_fields=text_fields, labels=labels, metrics=metrics,
                    splits=splits, eval_splits=tuple(s for s in splits if s.startswith("dev")),
                    unlabelled_splits=tuple(s for s in splits if s.startswith("test")))  # fmt: skip
    return name, (spec, GlueFormat(folder, labelled, test, label_values, train_header))


def _pair_layout(header, text, label, id_col="index"):
    return _Layout(tuple(header), Columns(tuple(text), label, id_col))


_PAIR = ("sentence1", "sentence2")
_NLI = ("entailment", "not_entailment")
_MNLI_LABELS = ("entailment", "neutral", "contradiction")
_MNLI_PREFIX = (
    "index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
    "sentence1_parse", "sentence2_parse", "sentence1", "sentence2",
)  # fmt: skip

GLUE: dict[str, tuple[TaskSpec, GlueFormat]] = dict([
    _task(
        "cola", "CoLA (Corpus of Linguistic Acceptability)", "CoLA",
        ("unacceptable", "acceptable"), ("0", "1"), ("mcc",),
        _Layout(("source", "label", "original_label", "sentence"), Columns(("sentence",), "label"), has_header=False),
        _pair_layout(("index", "sentence"), ("sentence",), None),
        ("sentence",),
    ),
    _task(
        "sst2", "SST-2 (Stanford Sentiment Treebank, binary)", "SST-2",
        ("negative", "positive"), ("0", "1"), ("accuracy",),
        _pair_layout(("sentence", "label"), ("sentence",), "label", None),
        _pair_layout(("index", "sentence"), ("sentence",), None),
        ("sentence",),
    ),
    _task(
        "mrpc", "MRPC (Microsoft Research Paraphrase Corpus)", "MRPC",
        ("not_equivalent", "equivalent"), ("0", "1"), ("f1", "accuracy"),
        _pair_layout(("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String"), ("#1 String", "#2 String"), "Quality", None),
        _pair_layout(("index", "#1 ID", "#2 ID", "#1 String", "#2 String"), ("#1 String", "#2 String"), None),
        _PAIR,
    ),
    _task(
        "qqp", "QQP (Quora Question Pairs)", "QQP",
        ("not_duplicate", "duplicate"), ("0", "1"), ("accuracy", "f1"),
        _pair_layout(("id", "qid1", "qid2", "question1", "question2", "is_duplicate"), ("question1", "question2"), "is_duplicate", "id"),
        _pair_layout(("id", "question1", "question2"), ("question1", "question2"), None, "id"),
        ("question1", "question2"),
    ),
    _task(
        "stsb", "STS-B (Semantic Textual Similarity Benchmark)", "STS-B",
        None, None, ("pearson", "spearman"),
        _pair_layout(("index", "genre", "filename", "year", "old_index", "source1", "source2", *_PAIR, "score"), _PAIR, "score"),
        _pair_layout(("index", "genre", "filename", "year", "old_index", "source1", "source2", *_PAIR), _PAIR, None),
        _PAIR, kind="regression",
    ),
    _task(
        "mnli", "MNLI (Multi-Genre NLI; matched and mismatched)", "MNLI",
        _MNLI_LABELS, _MNLI_LABELS, ("accuracy",),
        _pair_layout((*_MNLI_PREFIX, *(f"label{i}" for i in range(1, 6)), "gold_label"), _PAIR, "gold_label"),
        _pair_layout(_MNLI_PREFIX, _PAIR, None),
        ("premise", "hypothesis"),
        splits=("train", "dev_matched", "dev_mismatched", "test_matched", "test_mismatched"),
        train_header=(*_MNLI_PREFIX, "label1", "gold_label"),
    ),
    _task(
        "qnli", "QNLI (Question-answering NLI)", "QNLI",
        _NLI, _NLI, ("accuracy",),
        _pair_layout(("index", "question", "sentence", "label"), ("question", "sentence"), "label"),
        _pair_layout(("index", "question", "sentence"), ("question", "sentence"), None),
        ("question", "sentence"),
    ),
    _task(
        "rte", "RTE (Recognizing Textual Entailment)", "RTE",
        _NLI, _NLI, ("accuracy",),
        _pair_layout(("index", *_PAIR, "label"), _PAIR, "label"),
        _pair_layout(("index", *_PAIR), _PAIR, None),
        _PAIR,
    ),
    _task(
        "wnli", "WNLI (Winograd NLI)", "WNLI",
        ("not_entailment", "entailment"), ("0", "1"), ("accuracy",),
        _pair_layout(("index", *_PAIR, "label"), _PAIR, "label"),
        _pair_layout(("index", *_PAIR), _PAIR, None),
        _PAIR,
    ),
])  # fmt: skip

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
            return [f"hub:{HUB_DATASET}/{self.name}"]
        return [str(self.data_dir / root / self.format.folder / f"{split}.tsv") for root in _GLUE_ROOTS]

    def _load(self, split: str) -> SentenceSplit:
        if self.data_dir is None:
            return self._load_hub(split)
        path = Path(self.locate(split))
        require_file(path, f"{self.spec.title} {split} split", self.candidates(split))
        labelled = split not in self.spec.unlabelled_splits
        layout = self.format.labelled if labelled else self.format.test
        expected = layout.header
        if labelled and split == "train" and self.format.train_header:
            expected = self.format.train_header
        header, rows = read_rows(path, "glue-tsv", None if layout.has_header else expected)
        if tuple(header) != tuple(expected):
            check_header(path, header, layout.columns, allowed=expected)
            raise DataError(path, f"unexpected header {header}; a GLUE {self.format.folder} file has {list(expected)}",
                            line=1)  # fmt: skip
        values = self.format.label_values
        label_map = {v: i for i, v in enumerate(values)} if values else None
        return build_split(self.spec, split, path, rows, layout.columns, label_map)

    def _load_hub(self, split: str) -> SentenceSplit:
        hub_split = split.replace("dev", "validation")
        ds = load_hub_dataset(HUB_DATASET, self.name, hub_split)
        source = f"hub:{HUB_DATASET}/{self.name}[{hub_split}]"
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
