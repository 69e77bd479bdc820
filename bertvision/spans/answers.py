"""From start/end scores per window back to answers: the best span of each question over its
windows, the no-answer threshold (chosen on a validation part only) and the official scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertvision.errors import ConfigError
from bertvision.spans.windows import NO_ANSWER, offsets_array


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, offsets, *,
              max_answer_tokens: int = 30) -> tuple[int, int, float]:  # fmt: skip
    """The best (start, end, start + end score) of one window's real tokens: context tokens only,
    end >= start, at most ``max_answer_tokens`` long; (0, 0, -inf) when none qualifies. An exact
    search over the band of allowed pairs, vectorised: about 0.1 ms a 384-token window."""
    if max_answer_tokens < 1:
        raise ConfigError(f"--max-answer-tokens must be positive, not {max_answer_tokens}")
    offs = offsets_array(offsets)
    valid = offs[:, 0] >= 0
    n = len(offs)
    s = np.where(valid, np.asarray(start_logits, dtype=np.float64)[:n], -np.inf)
    e = np.where(valid, np.asarray(end_logits, dtype=np.float64)[:n], -np.inf)
    if not valid.any():
        return NO_ANSWER, NO_ANSWER, -np.inf
    i = np.arange(n)
    band = (i[None, :] >= i[:, None]) & (i[None, :] < i[:, None] + max_answer_tokens)
    scores = np.where(band, s[:, None] + e[None, :], -np.inf)
    flat = int(np.argmax(scores))
    best = scores.flat[flat]
    if not np.isfinite(best):
        return NO_ANSWER, NO_ANSWER, -np.inf
    return flat // n, flat % n, float(best)


@dataclass
class SpanPredictions:
    """Per question: the best answer text over its windows and the no-answer score difference."""

    text: dict[str, str]
    """Question id -> the best non-null span's text ("" when no window has a context token)."""
    null_diff: dict[str, float]
    """Question id -> null score minus best span score; above the threshold means "no answer"."""

    def predictions(self, threshold: float) -> dict[str, str]:
        """Answers after the no-answer threshold: "" where null_diff > threshold."""
        return {q: ("" if self.null_diff[q] > threshold else t) for q, t in self.text.items()}


def postprocess(example_ids: Sequence[str], offsets: Sequence, start_logits: Sequence[np.ndarray],
                end_logits: Sequence[np.ndarray], contexts: dict[str, str], *,
                max_answer_tokens: int = 30) -> SpanPredictions:  # fmt: skip
    """One answer and one no-answer score per question: the best span over its windows, and the
    smallest CLS score over its windows (the window that most believes in an answer speaks, as in
    the reference implementations). Scores may be logits or log-probabilities (ensembles)."""
    best: dict[str, tuple[float, str]] = {}
    null: dict[str, float] = {}
    for w, qid in enumerate(example_ids):
        if qid not in contexts:
            raise ConfigError(f"window {w} belongs to question {qid!r}, which is not in the data")
        s, e = np.asarray(start_logits[w]), np.asarray(end_logits[w])
        offs = offsets_array(offsets[w])
        if len(s) != len(offs) or len(e) != len(offs):
            raise ValueError(f"window {w} ({qid}): {len(offs)} tokens but {len(s)}/{len(e)} scores")
        i, j, score = best_span(s, e, offs, max_answer_tokens=max_answer_tokens)
        if qid not in best or score > best[qid][0]:
            text = contexts[qid][offs[i, 0] : offs[j, 1]] if np.isfinite(score) else ""
            best[qid] = (score, text)
        null[qid] = min(null.get(qid, np.inf), float(s[NO_ANSWER] + e[NO_ANSWER]))
    missing = [q for q in contexts if q not in best]
    if missing:
        raise ConfigError(f"{len(missing)} questions have no window (e.g. {missing[0]!r})")
    text = {q: best[q][1] for q in contexts}
    diff = {q: (null[q] - best[q][0]) if np.isfinite(best[q][0]) else np.inf for q in contexts}
    return SpanPredictions(text, diff)


def choose_threshold(gold: dict[str, list[str]], preds: SpanPredictions) -> float:
    """The no-answer threshold with the best F1 on ``gold`` (a validation part, never test): every
    cut between sorted ``null_diff`` values (ties move together), "all no answer" included, which
    the official script's search cannot return."""
    from bertvision.metrics.squad_v2 import _raw_scores

    qids = list(gold)
    _, f1 = _raw_scores(gold, {q: preds.text[q] for q in qids})
    diffs = np.array([preds.null_diff[q] for q in qids], dtype=np.float64)
    # gain of answering a question instead of abstaining
    null_f1 = np.array([0.0 if gold[q] else 1.0 for q in qids])
    gain = np.array([f1[q] for q in qids]) - null_f1
    order = np.argsort(diffs, kind="stable")
    d, cum = diffs[order], np.cumsum(gain[order])
    last_of_tie = np.r_[d[1:] != d[:-1], True] & np.isfinite(d)
    best_total, best_thr = 0.0, (float(d[0]) - 1.0 if np.isfinite(d[0]) else -1e30)
    for k in np.flatnonzero(last_of_tie):
        if cum[k] > best_total + 1e-12:
            best_total, best_thr = float(cum[k]), float(d[k])
    return best_thr


def score(gold: dict[str, list[str]], preds: SpanPredictions, threshold: float) -> dict:
    """The official SQuAD 2.0 scores (EM, F1, HasAns, NoAns) at ``threshold``."""
    from bertvision.metrics.squad_v2 import squad_v2_scores

    return {**squad_v2_scores(gold, preds.predictions(threshold)), "threshold": float(threshold)}


def evaluate(split, windows, starts, ends, max_answer_tokens: int = 30, threshold: float | None = None):
    """(scores, SpanPredictions, threshold) of a `SquadSplit` from its windows' scores; the
    threshold is chosen here when None, which only a validation part may ask for."""
    contexts = {ex.id: ex.context for ex in split.examples}
    preds = postprocess(windows.example_ids, windows.offsets, starts, ends, contexts,
                        max_answer_tokens=max_answer_tokens)  # fmt: skip
    gold = split.gold()
    if threshold is None:
        threshold = choose_threshold(gold, preds)
    return score(gold, preds, threshold), preds, threshold
