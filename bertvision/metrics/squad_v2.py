"""SQuAD 2.0 scoring, as the official evaluate-v2.0.py defines it: exact match and token F1
after `normalize_answer`, the best over a question's gold answers ("" for an unanswerable one),
and the best no-answer threshold. One deliberate difference: a missing prediction (or an id that
is not a question) is an error, not a 0 with a warning; it nearly always means another file's.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Mapping, Sequence
from os import PathLike

from bertvision.errors import DataError, decode_error, json_error

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower case, drop punctuation and the articles a/an/the, and collapse white space."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def get_tokens(s: str) -> list[str]:
    """The tokens of the normalized answer; [] for an empty one."""
    if not s:
        return []
    return normalize_answer(s).split()


def compute_exact(a_gold: str, a_pred: str) -> int:
    """1 if the normalized answers are equal, else 0."""
    return int(normalize_answer(a_gold) == normalize_answer(a_pred))


def compute_f1(a_gold: str, a_pred: str) -> float:
    """Token-overlap F1 of two answers; 1.0 when both are empty, 0.0 when only one is."""
    gold_toks, pred_toks = get_tokens(a_gold), get_tokens(a_pred)
    if not gold_toks or not pred_toks:
        return float(gold_toks == pred_toks)
    num_same = sum((Counter(gold_toks) & Counter(pred_toks)).values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def squad_v2_scores(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                    na_probs: Mapping[str, float] | None = None, na_prob_thresh: float = 1.0) -> dict:  # fmt: skip
    """The official script's scores (percentages) and totals, in its key order, of ``predictions``
    (question id -> answer text, "" for none) against ``gold`` (id -> answer texts, [] for none).
    ``na_probs``: id -> no-answer probability (None: 0.0 each, no threshold search); a prediction
    whose na_prob is above ``na_prob_thresh`` counts as "no answer". ValueError when ids differ."""
    if not gold:
        raise ValueError("no gold questions to score")
    problem = _id_mismatch(gold, predictions, "predictions")
    if not problem and na_probs is not None:
        problem = _id_mismatch(gold, na_probs, "no-answer probabilities")
    if problem:
        raise ValueError(problem)

    # As in the official script, "answerable" means the question lists any answer at all.
    has_ans = {qid: bool(answers) for qid, answers in gold.items()}
    exact_raw, f1_raw = _raw_scores(gold, predictions)
    probs = na_probs if na_probs is not None else dict.fromkeys(gold, 0.0)
    exact = _apply_threshold(exact_raw, probs, has_ans, na_prob_thresh)
    f1 = _apply_threshold(f1_raw, probs, has_ans, na_prob_thresh)

    result = _summary(exact, f1, list(gold))
    for prefix, wanted in (("HasAns", True), ("NoAns", False)):
        qids = [qid for qid in gold if has_ans[qid] == wanted]
        if qids:
            summary = _summary(exact, f1, qids)
            result.update({f"{prefix}_{key}": value for key, value in summary.items()})
    if na_probs is not None:
        # The search uses the raw scores: it asks which threshold would have been best.
        for name, raw in (("exact", exact_raw), ("f1", f1_raw)):
            best, thresh = _find_best_thresh(predictions, raw, na_probs, has_ans)
            result[f"best_{name}"] = best
            result[f"best_{name}_thresh"] = thresh
    return result


def evaluate_files(data_file: str | PathLike, pred_file: str | PathLike, na_prob_file: str | PathLike | None = None,
                   na_prob_thresh: float = 1.0) -> dict:  # fmt: skip
    """`squad_v2_scores` of a predictions file (a JSON object, question id -> answer text, and
    optionally one of no-answer probabilities) against an official SQuAD 2.0 data file; any
    problem with a file is a DataError naming it."""
    gold = read_gold(data_file)
    predictions = _read_id_map(pred_file, gold, str, "an answer text (string)", "predictions")
    na_probs = None
    if na_prob_file is not None:
        na_probs = _read_id_map(na_prob_file, gold, (int, float), "a number", "no-answer probabilities")
    return squad_v2_scores(gold, predictions, na_probs, na_prob_thresh)


def read_gold(data_file: str | PathLike) -> dict[str, list[str]]:
    """Question id -> gold answer texts of an official SQuAD 2.0 JSON file: like the official
    script (and unlike `tasks.squad.read_squad_json`), only ids and answer texts are read."""
    dataset = _load_json(data_file)
    if not isinstance(dataset, dict) or not isinstance(dataset.get("data"), list):
        raise DataError(data_file, 'expected a JSON object with a "data" list (SQuAD 2.0 format)')
    gold: dict[str, list[str]] = {}
    first: dict[str, str] = {}  # question id -> where it is first
    try:
        for a, article in enumerate(dataset["data"]):
            for p, paragraph in enumerate(article["paragraphs"]):
                for q, qa in enumerate(paragraph["qas"]):
                    qid = str(qa["id"])
                    place = f"data[{a}].paragraphs[{p}].qas[{q}]"
                    if qid in gold:
                        raise DataError(
                            data_file,
                            f"question id appears twice: at {place}, first at {first[qid]}",
                            key=qid,
                        )
                    first[qid] = place
                    gold[qid] = [str(answer["text"]) for answer in qa["answers"]]
    except (KeyError, TypeError) as err:
        # A missing key or a value of the wrong type somewhere in the nested structure.
        raise DataError(data_file, f"not in SQuAD 2.0 format ({type(err).__name__}: {err})") from err
    return gold


def _raw_scores(gold: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> tuple[dict, dict]:
    """Exact and F1 of every question, each the best over its gold answers."""
    exact, f1 = {}, {}
    for qid, answers in gold.items():
        # Answers that normalize to nothing do not count; with none left, only "" is right.
        golds = [text for text in answers if normalize_answer(text)] or [""]
        pred = predictions[qid]
        exact[qid] = max(compute_exact(text, pred) for text in golds)
        f1[qid] = max(compute_f1(text, pred) for text in golds)
    return exact, f1


def _apply_threshold(scores: Mapping[str, float], na_probs: Mapping[str, float], has_ans: Mapping[str, bool],
                     thresh: float) -> dict[str, float]:  # fmt: skip
    """Scores after treating predictions with na_prob > thresh as "no answer"."""
    return {qid: float(not has_ans[qid]) if na_probs[qid] > thresh else score for qid, score in scores.items()}


def _summary(exact: Mapping[str, float], f1: Mapping[str, float], qids: list[str]) -> dict:
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[qid] for qid in qids) / total,
        "f1": 100.0 * sum(f1[qid] for qid in qids) / total,
        "total": total,
    }


def _find_best_thresh(predictions: Mapping[str, str], scores: Mapping[str, float], na_probs: Mapping[str, float],
                      has_ans: Mapping[str, bool]) -> tuple[float, float]:  # fmt: skip
    """The best score over all thresholds, and the threshold that gives it.

    Start from "every prediction is no-answer" (one point per unanswerable question), then let
    the questions answer one by one in order of rising na_prob: an answerable one gains its
    score, an unanswerable one loses its point if the prediction is non-empty.
    """
    cur_score = best_score = sum(1 for qid in has_ans if not has_ans[qid])
    best_thresh = 0.0
    # The official script skips ids that are not questions; here the ids were checked to match.
    # sorted() is stable, so ties keep the order of na_probs, as in the official script.
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        cur_score += scores[qid] if has_ans[qid] else -1 if predictions[qid] else 0
        if cur_score > best_score:
            best_score, best_thresh = cur_score, float(na_probs[qid])
    return 100.0 * best_score / len(scores), best_thresh


def _id_mismatch(gold: Mapping[str, object], got: Mapping[str, object], what: str) -> str | None:
    """A message when the ids of `got` differ from the question ids of `gold`, else None."""
    missing = [qid for qid in gold if qid not in got]
    extra = [qid for qid in got if qid not in gold]
    problems = []
    if missing:
        problems.append(f"{len(missing)} question(s) have no {what} (e.g. {_some(missing)})")
    if extra:
        problems.append(f"{len(extra)} id(s) in {what} are not questions (e.g. {_some(extra)})")
    return "; ".join(problems) or None


def _some(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (", ..." if len(ids) > n else "")


def _load_json(path: str | PathLike):
    try:
        with open(path, "rb") as f:  # bytes: no newline translation, so offsets are the file's
            data = f.read()
    except FileNotFoundError as err:
        raise DataError(path, "file not found") from err
    except OSError as err:
        raise DataError(path, f"cannot read the file: {err}") from err
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise decode_error(path, err, data) from err
    except json.JSONDecodeError as err:
        raise json_error(path, err) from err


def _read_id_map(path: str | PathLike, gold: dict, kind: type | tuple[type, ...], described: str, what: str) -> dict:
    """A JSON object of question id -> value, every value of type `kind`, its ids those of `gold`."""
    data = _load_json(path)
    if not isinstance(data, dict):
        raise DataError(path, "expected a JSON object mapping question ids to values")
    for qid, value in data.items():
        # bool is an int in Python, but true/false is never a valid probability or answer.
        if isinstance(value, bool) or not isinstance(value, kind):
            raise DataError(path, f"value must be {described}, not {value!r}", key=qid)
    problem = _id_mismatch(gold, data, what)
    if problem:
        raise DataError(path, problem)
    return data
