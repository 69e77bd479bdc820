"""SQuAD 2.0: the official JSON files (``squad2/{train,dev}-v2.0.json``) read strictly, and
`article_split`, a seeded split of one file (only dev is public in many places) into train /
validation / test by article (Wikipedia page), so no paragraph or article lands in two parts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bertvision.errors import ConfigError, DataError, json_error
from bertvision.io import read_utf8
from bertvision.tasks.base import Task, TaskSpec, check_text, require_file

HUB_DATASET = "rajpurkar/squad_v2"
FILES = {"train": "train-v2.0.json", "dev": "dev-v2.0.json"}
ARTICLE_SPLITS = ("train", "validation", "test")
#: Question shares of the article split (train, validation, test), and its default seed.
ARTICLE_FRACTIONS = (0.8, 0.1, 0.1)
ARTICLE_SEED = 0

SQUAD2 = TaskSpec(name="squad2", title="SQuAD 2.0 (extractive QA with unanswerable questions)", kind="span",
                  text_fields=("question", "context"), labels=None, metrics=("squad_v2",), splits=("train", "dev"),
                  eval_splits=("dev",))  # fmt: skip
SQUAD2_ARTICLES = replace(
    SQUAD2, name="squad2-articles", splits=ARTICLE_SPLITS, eval_splits=("test",),
    title="SQuAD 2.0 dev, split by article into train / validation / test (seed 0, 80/10/10 of questions)",
)  # fmt: skip


@dataclass(frozen=True)
class Answer:
    text: str
    start: int
    """Character offset of the answer in its context."""


@dataclass(frozen=True)
class SquadExample:
    id: str
    title: str
    context: str
    question: str
    answers: tuple[Answer, ...]
    is_impossible: bool
    plausible_answers: tuple[Answer, ...] = ()


@dataclass(frozen=True, eq=False)
class SquadSplit:
    task: TaskSpec
    split: str
    source: str
    examples: list[SquadExample]

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def labelled(self) -> bool:
        return True

    @property
    def num_answerable(self) -> int:
        return sum(not ex.is_impossible for ex in self.examples)

    @property
    def articles(self) -> list[str]:
        return sorted({ex.title for ex in self.examples})

    def gold(self) -> dict[str, list[str]]:
        """Question id -> gold answer texts ([] if unanswerable), the scorer's input."""
        return {ex.id: [a.text for a in ex.answers] for ex in self.examples}

    def example(self, i: int) -> dict:
        ex = self.examples[i]
        return {"id": ex.id, "title": ex.title, "question": ex.question, "context": ex.context,
                "answers": [a.text for a in ex.answers], "is_impossible": ex.is_impossible}  # fmt: skip

    def label_counts(self) -> dict[str, int]:
        return {"answerable": self.num_answerable, "unanswerable": len(self) - self.num_answerable}


def read_squad_json(path: str | Path) -> list[SquadExample]:
    """Read a SQuAD (2.0 or 1.1) JSON file strictly, every answer checked against its context's
    text at its offset; a `DataError` names the file and the question id (or place)."""
    path = Path(path)
    require_file(path, "SQuAD JSON file")
    try:
        doc = json.loads(read_utf8(path))
    except json.JSONDecodeError as e:
        raise json_error(path, e, what="malformed JSON") from e
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(path, "not a SQuAD file: expected an object with a 'data' list")
    examples, seen = [], {}  # question id -> where it is first
    for a, article in enumerate(doc["data"]):
        title = _get(path, article, "title", str, f"data[{a}]")
        for p, para in enumerate(_get(path, article, "paragraphs", list, title)):
            where = f"{title} paragraph {p}"
            context = check_text(_get(path, para, "context", str, where), str(path), "context", key=where)
            for q, qa in enumerate(_get(path, para, "qas", list, where)):
                ex = _read_question(path, title, context, qa, where)
                place = f"data[{a}].paragraphs[{p}].qas[{q}] (article {title!r})"
                if ex.id in seen:
                    raise DataError(path, f"question id occurs more than once: at {place}, first at {seen[ex.id]}",
                                    key=ex.id)  # fmt: skip
                seen[ex.id] = place
                examples.append(ex)
    if not examples:
        raise DataError(path, "no questions in file")
    return examples


def _get(path, obj, key, kind, where):
    if not isinstance(obj, dict) or key not in obj:
        raise DataError(path, f"missing key {key!r}", key=where)
    value = obj[key]
    if not isinstance(value, kind):
        raise DataError(path, f"{key!r} must be a {kind.__name__}, not {type(value).__name__}", key=where)
    return value


def _read_question(path, title, context, qa, where) -> SquadExample:
    qid = str(_get(path, qa, "id", str, where))
    question = check_text(_get(path, qa, "question", str, qid), str(path), "question", key=qid)
    answers = _answers(path, qid, context, _get(path, qa, "answers", list, qid))
    impossible = bool(qa.get("is_impossible", False))  # SQuAD 1.1 files lack the key
    if impossible and answers:
        raise DataError(path, "question is marked is_impossible but has answers", key=qid)
    if not impossible and not answers:
        raise DataError(path, "answerable question has no answers", key=qid)
    plausible = _answers(path, qid, context, qa.get("plausible_answers", []))
    return SquadExample(qid, title, context, question, answers, impossible, plausible)


def _answers(path, qid, context, items) -> tuple[Answer, ...]:
    out = []
    for item in items:
        text = _get(path, item, "text", str, qid)
        start = _get(path, item, "answer_start", int, qid)
        if not text.strip():
            raise DataError(path, "empty answer text", key=qid)
        found = context[start : start + len(text)] if start >= 0 else None
        if found != text:
            raise DataError(path, f"answer {text!r} does not match its context at offset {start} "
                                  f"(the context has {found!r} there)", key=qid)  # fmt: skip
        out.append(Answer(text, start))
    return tuple(out)


def article_split(examples: Sequence[SquadExample], fractions: Sequence[float] = ARTICLE_FRACTIONS,
                  seed: int = ARTICLE_SEED) -> dict[str, list[SquadExample]]:  # fmt: skip
    """Split questions into train / validation / test by article, seeded.

    Articles are shuffled with ``seed`` and dealt out in that order: each part takes articles
    until it holds its share of the questions (an article is never cut). Every part gets at
    least one article. Within a part, questions keep their file order.
    """
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ConfigError(f"article split fractions must be 3 positive numbers summing to 1, not {list(fractions)}")
    titles = list(dict.fromkeys(ex.title for ex in examples))
    if len(titles) < 3:
        raise ConfigError(f"an article split needs at least 3 articles; the data has {len(titles)}")
    sizes = Counter(ex.title for ex in examples)
    order = [titles[i] for i in np.random.default_rng(seed).permutation(len(titles))]
    bounds = np.cumsum(fractions) * len(examples)  # question count at which each part is full
    part_of, articles_in, done, part = {}, [0, 0, 0], 0, 0
    for k, title in enumerate(order):
        left = len(order) - k  # articles not yet dealt, this one included
        # Move on once this part is full, or when the articles left are only enough to give
        # each later part one; never leave a part empty.
        while part < 2 and articles_in[part] and (done >= bounds[part] or left <= 2 - part):
            part += 1
        part_of[title] = part
        articles_in[part] += 1
        done += sizes[title]
    return {name: [ex for ex in examples if part_of[ex.title] == i] for i, name in enumerate(ARTICLE_SPLITS)}


class SquadTask(Task):
    """SQuAD 2.0 from the official files (or the Hub), or the article split of one file."""

    def __init__(self, spec: TaskSpec, data_dir: Path | None, split_file: str = "dev"):
        self.spec, self.data_dir, self.split_file = spec, data_dir, split_file

    @property
    def is_article_split(self) -> bool:
        return self.spec.splits == ARTICLE_SPLITS

    def candidates(self, split: str) -> list[str]:
        file = FILES[self.split_file if self.is_article_split else split]
        if self.data_dir is None:
            return [f"hub:{HUB_DATASET}"]
        return [str(self.data_dir / d / file) for d in ("squad2", "squad", ".")]

    def _load(self, split: str) -> SquadSplit:
        source_split = self.split_file if self.is_article_split else split
        if self.data_dir is None:
            examples = _load_hub(source_split)
            source = f"hub:{HUB_DATASET}[{source_split}]"
        else:
            source = self.locate(split)
            require_file(Path(source), f"SQuAD 2.0 {source_split} file", self.candidates(split))
            examples = read_squad_json(source)
        if self.is_article_split:
            examples = article_split(examples)[split]
        return SquadSplit(self.spec, split, source, examples)


def _load_hub(split: str) -> list[SquadExample]:
    from bertvision.tasks.glue import load_hub_dataset

    ds = load_hub_dataset(HUB_DATASET, None, split.replace("dev", "validation"))
    out = []
    for row in ds:
        given = row["answers"]
        answers = tuple(Answer(t, s) for t, s in zip(given["text"], given["answer_start"], strict=True))
        out.append(SquadExample(row["id"], row["title"], row["context"], row["question"], answers, not answers))
    return out
