"""SQuAD 2.0 scoring on a hand-made example worked out by hand, and on the official dev file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bertvision.errors import DataError
from bertvision.metrics.squad_v2 import (
    compute_exact,
    compute_f1,
    evaluate_files,
    get_tokens,
    normalize_answer,
    read_gold,
    squad_v2_scores,
)
from tests.conftest import shared_data_dir

# Six questions; q1-q4 are answerable, q5 and q6 are not.
#
# id  gold answers                              prediction        na_prob  exact  f1
# q1  "the Eiffel Tower", "Eiffel Tower in ..."  "Eiffel Tower"    0.1      1      1
#     ("the" is dropped: both normalize to "eiffel tower")
# q2  "Marie Curie"                              "marie CURIE!"    0.2      1      1
#     (case and punctuation are dropped)
# q3  "apple pie with cream", "red apple pie"    "green apple pie" 0.5      0      2/3
#     vs "apple pie with cream": 2 common of 3 predicted, 4 gold -> P 2/3, R 1/2, F1 4/7
#     vs "red apple pie":        2 common of 3 predicted, 3 gold -> P 2/3, R 2/3, F1 2/3
#     the best over gold answers is 2/3
# q4  "1889"                                     ""                0.7      0      0
# q5  (none)                                     ""                0.9      1      1
# q6  (none)                                     "the Seine"       0.6      0      0
QUESTIONS = [
    ("q1", "Which tower?", ["the Eiffel Tower", "Eiffel Tower in Paris"]),
    ("q2", "Who?", ["Marie Curie"]),
    ("q3", "Which pie?", ["apple pie with cream", "red apple pie"]),
    ("q4", "When?", ["1889"]),
    ("q5", "Which river flows through Rome?", []),
    ("q6", "Which river flows through Berlin?", []),
]
PREDICTIONS = {
    "q1": "Eiffel Tower",
    "q2": "marie CURIE!",
    "q3": "green apple pie",
    "q4": "",
    "q5": "",
    "q6": "the Seine",
}
NA_PROBS = {"q1": 0.1, "q2": 0.2, "q3": 0.5, "q4": 0.7, "q5": 0.9, "q6": 0.6}
GOLD = {qid: answers for qid, _, answers in QUESTIONS}

# Without a threshold (na_prob_thresh = 1.0 and every na_prob <= 1):
#   exact  = (1 + 1 + 0 + 0 + 1 + 0) / 6       = 3/6   -> 50.0
#   f1     = (1 + 1 + 2/3 + 0 + 1 + 0) / 6     = 11/18 -> 61.11
#   HasAns = q1-q4: exact 2/4 -> 50.0, f1 (8/3)/4 = 2/3 -> 66.67
#   NoAns  = q5, q6: exact 1/2 -> 50.0, f1 1/2 -> 50.0
EXPECTED = {
    "exact": 50.0,
    "f1": 100 * 11 / 18,
    "total": 6,
    "HasAns_exact": 50.0,
    "HasAns_f1": 100 * 2 / 3,
    "HasAns_total": 4,
    "NoAns_exact": 50.0,
    "NoAns_f1": 50.0,
    "NoAns_total": 2,
}

# Best-threshold search (on the raw scores). It starts at 2 points (both unanswerable questions
# right when everything is "no answer") and lets questions answer in order of rising na_prob:
#   qid (na_prob)  exact diff -> running  |  f1 diff -> running
#   q1 (0.1)       +1  -> 3 (best, 0.1)   |  +1   -> 3 (best, 0.1)
#   q2 (0.2)       +1  -> 4 (best, 0.2)   |  +1   -> 4 (best, 0.2)
#   q3 (0.5)       +0  -> 4               |  +2/3 -> 14/3 (best, 0.5)
#   q6 (0.6)       -1  -> 3 (non-empty)   |  -1   -> 11/3
#   q4 (0.7)       +0  -> 3               |  +0   -> 11/3
#   q5 (0.9)       +0  -> 3 (empty)       |  +0   -> 11/3
# best_exact = 100 * 4/6 at 0.2; best_f1 = 100 * (14/3)/6 = 100 * 7/9 at 0.5.
EXPECTED_BEST = {
    "best_exact": 100 * 4 / 6,
    "best_exact_thresh": 0.2,
    "best_f1": 100 * 7 / 9,
    "best_f1_thresh": 0.5,
}

# With na_prob_thresh = 0.5, q4 (0.7), q6 (0.6) and q5 (0.9) count as "no answer":
#   q4 is answerable -> 0; q5 and q6 are not -> 1 each; q1-q3 keep their raw scores.
#   exact = (1 + 1 + 0 + 0 + 1 + 1) / 6 = 4/6; f1 = (1 + 1 + 2/3 + 0 + 1 + 1) / 6 = 7/9
#   HasAns unchanged (q4 was already 0); NoAns: both right -> 100.
#   The best-threshold search uses the raw scores, so it does not change.
EXPECTED_AT_HALF = {
    **EXPECTED,
    "exact": 100 * 4 / 6,
    "f1": 100 * 7 / 9,
    "NoAns_exact": 100.0,
    "NoAns_f1": 100.0,
    **EXPECTED_BEST,
}


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


def _squad_json(questions) -> dict:
    qas = [
        {
            "id": qid,
            "question": question,
            "answers": [{"text": text, "answer_start": 0} for text in answers],
            "is_impossible": not answers,
        }
        for qid, question, answers in questions
    ]
    paragraphs = [
        {"context": "A made-up context.", "qas": qas[:3]},
        {"context": "More.", "qas": qas[3:]},
    ]
    return {"version": "v2.0", "data": [{"title": "Made up", "paragraphs": paragraphs}]}


@pytest.fixture
def files(tmp_path):
    return (
        _write(tmp_path / "dev.json", _squad_json(QUESTIONS)),
        _write(tmp_path / "preds.json", PREDICTIONS),
        _write(tmp_path / "na_probs.json", NA_PROBS),
    )


def _approx(expected: dict):
    return {key: pytest.approx(value) for key, value in expected.items()}


def test_normalize_answer():
    assert normalize_answer("The Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("  an   Apple,  a pear ") == "apple pear"
    # Articles go only as whole words.
    assert normalize_answer("Theater anthem") == "theater anthem"
    # Punctuation is removed before articles, so "the." and "A-" vanish too.
    assert normalize_answer("the. A-") == ""
    assert normalize_answer("U.S.A.") == "usa"
    assert get_tokens("") == []
    assert get_tokens("The  Big, BAD wolf") == ["big", "bad", "wolf"]


def test_compute_exact_and_f1_edge_cases():
    assert compute_exact("the Eiffel Tower", "Eiffel tower.") == 1
    assert compute_exact("Eiffel Tower", "Tower") == 0
    assert compute_f1("", "") == 1.0
    assert compute_f1("", "the") == 1.0  # both normalize to no tokens
    assert compute_f1("", "Paris") == 0.0
    assert compute_f1("Paris", "") == 0.0
    assert compute_f1("Paris", "London") == 0.0
    # A repeated token counts as often as it appears in both: gold "no no yes" (3 tokens) and
    # pred "no" (1 token) share one "no": P 1, R 1/3, F1 = 2 * 1/3 / (4/3) = 1/2.
    assert compute_f1("no no yes", "no") == pytest.approx(0.5)


def test_scores_from_mappings():
    assert squad_v2_scores(GOLD, PREDICTIONS) == _approx(EXPECTED)
    assert list(squad_v2_scores(GOLD, PREDICTIONS)) == list(EXPECTED)


def test_scores_from_files(files):
    data, preds, _ = files
    assert read_gold(data) == GOLD
    assert evaluate_files(data, preds) == _approx(EXPECTED)


def test_best_threshold_search(files):
    result = evaluate_files(*files)
    assert result == _approx({**EXPECTED, **EXPECTED_BEST})
    assert list(result) == [*EXPECTED, *EXPECTED_BEST]


def test_no_answer_threshold_applied(files):
    assert evaluate_files(*files, na_prob_thresh=0.5) == _approx(EXPECTED_AT_HALF)


def test_threshold_is_strictly_greater():
    # At 0.6, q6 (na_prob exactly 0.6) keeps its raw 0; q4 (0.7) -> 0, q5 (0.9) -> 1 as before.
    # exact = (1 + 1 + 0 + 0 + 1 + 0) / 6 = 1/2; NoAns exact = 1/2.
    result = squad_v2_scores(GOLD, PREDICTIONS, NA_PROBS, na_prob_thresh=0.6)
    assert result["exact"] == pytest.approx(50.0)
    assert result["NoAns_exact"] == pytest.approx(50.0)


def test_only_one_kind_of_question():
    # All answerable: no NoAns_* keys; all unanswerable: no HasAns_* keys.
    answerable = {"q1": GOLD["q1"]}
    assert squad_v2_scores(answerable, {"q1": "Eiffel Tower"}) == _approx(
        {
            "exact": 100.0,
            "f1": 100.0,
            "total": 1,
            "HasAns_exact": 100.0,
            "HasAns_f1": 100.0,
            "HasAns_total": 1,
        }
    )
    result = squad_v2_scores({"q5": []}, {"q5": "Tiber"}, {"q5": 0.3})
    # Raw score 0; the search starts at 1 point (the "no answer" the model could have given),
    # and answering q5 only loses it, so the best stays 100% at threshold 0.0.
    assert result == _approx(
        {
            "exact": 0.0,
            "f1": 0.0,
            "total": 1,
            "NoAns_exact": 0.0,
            "NoAns_f1": 0.0,
            "NoAns_total": 1,
            "best_exact": 100.0,
            "best_exact_thresh": 0.0,
            "best_f1": 100.0,
            "best_f1_thresh": 0.0,
        }
    )


def test_answers_that_normalize_to_nothing_count_as_no_answer():
    # As in the official script: the question is "answerable" (it lists an answer), but its only
    # gold answer normalizes to "", so the empty prediction is the one that scores.
    result = squad_v2_scores({"q": ["The"]}, {"q": ""})
    assert result["HasAns_exact"] == 100.0 and result["HasAns_f1"] == 100.0
    assert "NoAns_total" not in result


def test_missing_and_extra_predictions():
    partial = {qid: PREDICTIONS[qid] for qid in ("q1", "q2", "q3")}
    with pytest.raises(
        ValueError, match=r"3 question\(s\) have no predictions \(e.g. q4, q5, q6\)"
    ):
        squad_v2_scores(GOLD, partial)
    with pytest.raises(ValueError, match=r"1 id\(s\) in predictions are not questions \(e.g. zz\)"):
        squad_v2_scores(GOLD, {**PREDICTIONS, "zz": "x"})
    with pytest.raises(ValueError, match="no-answer probabilities"):
        squad_v2_scores(GOLD, PREDICTIONS, {"q1": 0.5})


def test_missing_prediction_in_file_names_the_file(files, tmp_path):
    data, _, _ = files
    preds = _write(tmp_path / "few.json", {"q1": "Eiffel Tower"})
    with pytest.raises(DataError, match="few.json.*5 question") as info:
        evaluate_files(data, preds)
    assert info.value.source == str(preds)


def test_malformed_json_names_the_file(files, tmp_path):
    data, preds, _ = files
    broken = tmp_path / "broken.json"
    broken.write_text('{"q1": "Eiffel Tower",\n', encoding="utf-8")
    for args in ((broken, preds), (data, broken), (data, preds, broken)):
        with pytest.raises(DataError, match="broken.json:2: not valid JSON"):
            evaluate_files(*args)


def test_bad_files(files, tmp_path):
    data, preds, _ = files
    with pytest.raises(DataError, match="nowhere.json: file not found"):
        evaluate_files(tmp_path / "nowhere.json", preds)
    not_squad = _write(tmp_path / "not_squad.json", {"data": [{"title": "no paragraphs"}]})
    with pytest.raises(DataError, match="not_squad.json: not in SQuAD 2.0 format"):
        evaluate_files(not_squad, preds)
    as_list = _write(tmp_path / "list.json", ["Eiffel Tower"])
    with pytest.raises(DataError, match="list.json: expected a JSON object"):
        evaluate_files(data, as_list)
    bad_prob = _write(tmp_path / "bad_prob.json", {**NA_PROBS, "q3": "high"})
    with pytest.raises(DataError, match=r"bad_prob.json \[q3\]: value must be a number"):
        evaluate_files(data, preds, bad_prob)


OFFICIAL_DEV = (shared_data_dir() or Path("missing")) / "squad2" / "dev-v2.0.json"


@pytest.mark.skipif(not OFFICIAL_DEV.is_file(), reason=f"{OFFICIAL_DEV} is not present")
def test_official_dev_file(tmp_path):
    gold = read_gold(OFFICIAL_DEV)
    perfect = {qid: answers[0] if answers else "" for qid, answers in gold.items()}
    result = evaluate_files(OFFICIAL_DEV, _write(tmp_path / "perfect.json", perfect))
    assert result["exact"] == pytest.approx(100.0) and result["f1"] == pytest.approx(100.0)
    assert (result["total"], result["HasAns_total"], result["NoAns_total"]) == (11873, 5928, 5945)

    empty = dict.fromkeys(gold, "")
    result = squad_v2_scores(gold, empty)
    assert result["exact"] == pytest.approx(100 * 5945 / 11873)
    assert result["f1"] == pytest.approx(100 * 5945 / 11873)
