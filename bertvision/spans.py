"""SQuAD windows: question + context chunks with a document stride, and their way back to text.

A context longer than ``max_length`` tokens is cut into overlapping windows (``doc_stride``
tokens of overlap), each ``[CLS] question [SEP] context chunk [SEP]``. Every context token keeps
its character offsets into the context, so a span of tokens maps back to a span of text; the
question and special tokens map to nothing. For training, a window's target is the gold answer's
first and last token when the whole answer lies inside the window, else the CLS position (0),
which stands for "no answer" (unanswerable questions always point there).

This is the featurisation shared by fine-tuning for question answering, token-level extraction
and the span head; post-processing (`best_span`) turns start/end logits back into text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bertvision.errors import ConfigError

NO_ANSWER = 0
"""Token index of the CLS position: the target of questions without an answer in the window."""


@dataclass(frozen=True)
class Windows:
    """Tokenised windows, column by column (one entry per window)."""

    example_ids: list[str]
    input_ids: list[list[int]]
    token_type_ids: list[list[int]]
    offsets: list[list[tuple[int, int] | None]]
    """Per token: (start, end) character offsets into the context, or None outside it."""
    start_positions: np.ndarray
    end_positions: np.ndarray

    def __len__(self) -> int:
        return len(self.example_ids)

    def context_tokens(self, w: int) -> np.ndarray:
        """Token indices of window ``w`` that belong to the context."""
        return np.array([i for i, o in enumerate(self.offsets[w]) if o is not None], dtype=np.int64)


def make_windows(
    tokenizer,
    examples: Sequence,
    *,
    max_length: int = 384,
    doc_stride: int = 128,
    max_query_length: int = 64,
) -> Windows:
    """Cut SQuAD examples into windows; see the module docstring.

    Args:
      tokenizer: a fast (Rust) tokenizer, which gives character offsets.
      examples: `bertvision.tasks.squad.SquadExample`s (id, question, context, answers).
      max_length: tokens per window, question and special tokens included.
      doc_stride: tokens shared by consecutive windows of one context.
      max_query_length: questions are cut to this many tokens first.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("SQuAD windows need a fast tokenizer (character offsets)")
    if not 0 < doc_stride < max_length - max_query_length - 3:
        raise ConfigError(
            f"--doc-stride must be in (0, {max_length - max_query_length - 3}) for "
            f"--max-length {max_length} and --max-query-length {max_query_length}, not {doc_stride}"
        )
    questions = [_cut_question(tokenizer, ex.question, max_query_length) for ex in examples]
    enc = tokenizer(
        questions,
        [ex.context for ex in examples],
        truncation="only_second",
        max_length=max_length,
        stride=doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        return_token_type_ids=True,
    )
    owner = enc["overflow_to_sample_mapping"]
    ids, offsets, starts, ends = [], [], [], []
    for w in range(len(enc["input_ids"])):
        seq = enc.sequence_ids(w)
        offs = [tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], seq, strict=True)]
        ex = examples[owner[w]]
        start, end = _target(ex, offs)
        ids.append(ex.id)
        offsets.append(offs)
        starts.append(start)
        ends.append(end)
    return Windows(
        ids,
        [list(x) for x in enc["input_ids"]],
        [list(x) for x in enc["token_type_ids"]],
        offsets,
        np.asarray(starts, dtype=np.int64),
        np.asarray(ends, dtype=np.int64),
    )


def _cut_question(tokenizer, question: str, max_tokens: int) -> str:
    """The question, cut to ``max_tokens`` tokens (at a token boundary of the text)."""
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    if len(enc["input_ids"]) <= max_tokens:
        return question
    return question[: enc["offset_mapping"][max_tokens - 1][1]]


def _target(example, offsets: list[tuple[int, int] | None]) -> tuple[int, int]:
    """Token (start, end) of the first gold answer if it lies wholly in this window, else CLS."""
    if example.is_impossible or not example.answers:
        return NO_ANSWER, NO_ANSWER
    answer = example.answers[0]
    first, last = answer.start, answer.start + len(answer.text)  # characters [first, last)
    inside = [i for i, o in enumerate(offsets) if o is not None]
    if not inside or offsets[inside[0]][0] > first or offsets[inside[-1]][1] < last:
        return NO_ANSWER, NO_ANSWER
    start = next(i for i in inside if offsets[i][1] > first)
    end = next(i for i in reversed(inside) if offsets[i][0] < last)
    return start, end


def span_text(context: str, offsets: list[tuple[int, int] | None], start: int, end: int) -> str:
    """The context text covered by tokens ``start..end`` (inclusive)."""
    if start == NO_ANSWER or offsets[start] is None or offsets[end] is None or end < start:
        return ""
    return context[offsets[start][0] : offsets[end][1]]


def offsets_array(offsets) -> np.ndarray:
    """Offsets as an int32 array (T, 2), with (-1, -1) for tokens outside the context.

    Accepts the `Windows` form (a list of (start, end) tuples or None) or such an array.
    """
    if isinstance(offsets, np.ndarray):
        return offsets.astype(np.int32, copy=False).reshape(-1, 2)
    return np.array([o if o is not None else (-1, -1) for o in offsets], dtype=np.int32).reshape(-1, 2)


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets,
    *,
    max_answer_tokens: int = 30,
) -> tuple[int, int, float]:
    """The best answer span of one window: (start, end, score) with end >= start.

    Only context tokens may start or end a span, spans are at most ``max_answer_tokens`` long,
    and the score is start_logit + end_logit. The search is exact (every pair in the band
    start <= end < start + max_answer_tokens), vectorised: about 0.1 ms for a 384-token window.
    Returns (0, 0, -inf) when no span qualifies; the no-answer score (CLS) is the caller's.

    Args:
      start_logits, end_logits: (T,) scores of the window's real tokens (padding left out).
      offsets: per token, character offsets or None/(-1, -1) outside the context; see
        `offsets_array`.
    """
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


def postprocess(
    example_ids: Sequence[str],
    offsets: Sequence,
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    contexts: dict[str, str],
    *,
    max_answer_tokens: int = 30,
) -> SpanPredictions:
    """Windows' start/end scores -> one answer and one no-answer score per question.

    For each question: the best span (end >= start, at most ``max_answer_tokens``, context
    tokens only) over all its windows, and the null score, the smallest CLS score
    start[0] + end[0] over its windows (the window that most believes in an answer speaks, as
    in the reference implementations). ``null_diff`` = null - best span; a threshold chosen on a
    validation part turns it into "answer" or "no answer" (`choose_threshold`).

    Scores may be logits or log-probabilities (ensembles pass log of averaged probabilities).
    """
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
    """The no-answer threshold with the best F1 on ``gold`` (a validation part, never test).

    Questions whose ``null_diff`` exceeds the threshold get "no answer". Every cut between
    sorted ``null_diff`` values is tried (ties move together), including "all no answer"
    (a threshold below every value), which the official script's search cannot return.
    """
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

    out = squad_v2_scores(gold, preds.predictions(threshold))
    out["threshold"] = float(threshold)
    return out


def evaluate(split, windows, starts, ends, max_answer_tokens: int = 30, threshold: float | None = None):
    """Post-process and score one split: (scores, SpanPredictions, threshold).

    ``split`` gives the contexts and gold answers (a `SquadSplit`); ``windows`` anything with
    ``example_ids`` and ``offsets`` per window (`Windows`, a span head's window set). The
    threshold is chosen here when None: only ever on a validation part.
    """
    contexts = {ex.id: ex.context for ex in split.examples}
    preds = postprocess(windows.example_ids, windows.offsets, starts, ends, contexts,
                        max_answer_tokens=max_answer_tokens)  # fmt: skip
    gold = split.gold()
    if threshold is None:
        threshold = choose_threshold(gold, preds)
    return score(gold, preds, threshold), preds, threshold
