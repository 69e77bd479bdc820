"""SQuAD 2.0: the official dev file, the article split, and bad files."""

import json

import pytest

from bertvision.errors import ConfigError, DataError
from bertvision.metrics.squad_v2 import squad_v2_scores
from bertvision.tasks import get_task
from bertvision.tasks.squad import Answer, SquadExample, article_split, read_squad_json


def test_official_dev_file(shared_data):
    dev = get_task("squad2", shared_data).load("dev")
    assert len(dev) == 11873
    assert dev.num_answerable == 5928
    assert len(dev.articles) == 35
    first = dev.examples[0]
    assert first.id == "56ddde6b9a695914005b9628"
    assert first.question == "In what country is Normandy located?"
    assert first.answers[0] == Answer("France", 159)
    assert first.context[159:165] == "France"
    impossible = [ex for ex in dev.examples if ex.is_impossible]
    assert all(not ex.answers for ex in impossible)
    assert sum(bool(ex.plausible_answers) for ex in impossible) == 5930  # 15 carry none
    # The gold answers feed the official scorer: gold in, 100 out.
    preds = {qid: (answers[0] if answers else "") for qid, answers in dev.gold().items()}
    assert squad_v2_scores(dev.gold(), preds)["exact"] == 100.0


def test_article_split_of_real_dev(shared_data):
    task = get_task("squad2-articles", shared_data)
    parts = {s: task.load(s) for s in ("train", "validation", "test")}
    assert sum(len(p) for p in parts.values()) == 11873
    titles = [set(p.articles) for p in parts.values()]
    assert not (titles[0] & titles[1] or titles[0] & titles[2] or titles[1] & titles[2])
    assert len(titles[0] | titles[1] | titles[2]) == 35
    shares = [len(p) / 11873 for p in parts.values()]
    assert shares[0] == pytest.approx(0.8, abs=0.05)  # whole articles, so only roughly 80/10/10
    assert all(s > 0.05 for s in shares[1:])
    ids = [ex.id for p in parts.values() for ex in p.examples]
    assert len(set(ids)) == 11873
    # Seeded: the same parts again; another seed gives other parts.
    examples = read_squad_json(shared_data / "squad2" / "dev-v2.0.json")
    again = article_split(examples)
    assert [ex.id for ex in again["test"]] == [ex.id for ex in parts["test"].examples]
    other = article_split(examples, seed=1)
    assert {ex.title for ex in other["test"]} != titles[2]


def _examples(n_articles: int, per_article: list[int] | None = None) -> list[SquadExample]:
    per_article = per_article or [1] * n_articles
    return [
        SquadExample(f"{a}-{q}", f"article {a}", "ctx", "q?", (), True)
        for a in range(n_articles)
        for q in range(per_article[a])
    ]


def test_article_split_never_leaves_a_part_empty():
    parts = article_split(_examples(3, [50, 1, 1]))  # one whole article to each part, whatever its size
    assert sorted(len(p) for p in parts.values()) == [1, 1, 50]
    assert sorted(len({ex.title for ex in p}) for p in parts.values()) == [1, 1, 1]
    for n in range(3, 12):
        parts = article_split(_examples(n), seed=n)
        assert all(parts[s] for s in parts), n
    with pytest.raises(ConfigError, match="at least 3 articles"):
        article_split(_examples(2))
    with pytest.raises(ConfigError, match="summing to 1"):
        article_split(_examples(5), fractions=(0.5, 0.5, 0.5))


# ---------------------------------------------------------------------------------------------
# Bad files


def _squad_doc(qas, context="The Eiffel Tower is in Paris."):
    return {
        "version": "v2.0",
        "data": [{"title": "T", "paragraphs": [{"context": context, "qas": qas}]}],
    }


def _qa(qid="q1", question="Where is it?", answers=None, impossible=False, **extra):
    answers = [{"text": "Paris", "answer_start": 23}] if answers is None else answers
    return {
        "id": qid,
        "question": question,
        "answers": answers,
        "is_impossible": impossible,
        **extra,
    }


def _write(tmp_path, doc) -> str:
    path = tmp_path / "squad2" / "dev-v2.0.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


def test_small_valid_file(tmp_path):
    plausible = [{"text": "Eiffel Tower", "answer_start": 4}]
    _write(tmp_path, _squad_doc([_qa(), _qa("q2", "Who?", [], True, plausible_answers=plausible)]))
    dev = get_task("squad2", tmp_path).load("dev")
    assert [ex.id for ex in dev.examples] == ["q1", "q2"]
    assert dev.examples[1].plausible_answers == (Answer("Eiffel Tower", 4),)
    assert dev.gold() == {"q1": ["Paris"], "q2": []}


@pytest.mark.parametrize(
    "doc, pattern",
    [
        (_squad_doc([_qa(answers=[{"text": "Paris", "answer_start": 20}])]),
         r"\[q1\]: answer 'Paris' does not match its context at offset 20 \(the context has 'in Pa' there\)"),
        (_squad_doc([_qa(answers=[{"text": "Paris", "answer_start": 99}])]), r"\[q1\]: answer 'Paris' does not match"),
        (_squad_doc([_qa(impossible=True)]), r"\[q1\]: question is marked is_impossible but has answers"),
        (_squad_doc([_qa(answers=[])]), r"\[q1\]: answerable question has no answers"),
        (_squad_doc([_qa(), _qa()]), r"\[q1\]: question id occurs more than once"),
        (_squad_doc([_qa(question="  ")]), r"\[q1\]: empty text in field 'question'"),
        (_squad_doc([{"id": "q9", "answers": []}]), r"\[q9\]: missing key 'question'"),
        (_squad_doc([_qa()], context=""), r"\[T paragraph 0\]: empty text in field 'context'"),
        ('{"version": "v2.0", "data": [\n{"title": "T",,}]}', r"dev-v2.0.json:2: malformed JSON"),
        ({"version": "v2.0"}, r"not a SQuAD file"),
        (_squad_doc([]), r"no questions in file"),
    ],
    ids=["offset-mismatch", "offset-out-of-range", "impossible-with-answers", "no-answers",
         "duplicate-id", "empty-question", "missing-key", "empty-context", "malformed-json",
         "no-data", "no-questions"],
)  # fmt: skip
def test_bad_squad_file(tmp_path, doc, pattern):
    path = _write(tmp_path, doc)
    with pytest.raises(DataError, match=pattern) as err:
        get_task("squad2", tmp_path).load("dev")
    assert err.value.source == path


def test_missing_train_file_says_where_it_looked(tmp_path):
    _write(tmp_path, _squad_doc([_qa()]))
    task = get_task("squad2", tmp_path)
    assert task.exists("dev") and not task.exists("train")
    with pytest.raises(
        DataError, match=r"SQuAD 2.0 train file not found; looked in .*squad2/train-v2.0.json"
    ):
        task.load("train")
