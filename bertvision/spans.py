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


def best_span(
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    offsets: list[tuple[int, int] | None],
    *,
    max_answer_tokens: int = 30,
    top_k: int = 20,
) -> tuple[int, int, float]:
    """The best answer span of one window: (start, end, score) with end >= start.

    Only context tokens may start or end a span, spans are at most ``max_answer_tokens`` long,
    and the score is start_logit + end_logit. The candidates are the ``top_k`` starts and ends
    (the usual beam), which keeps this O(top_k^2) per window. Returns (0, 0, -inf) when no span
    qualifies; the no-answer score (CLS) is compared by the caller.
    """
    valid = np.array([o is not None for o in offsets])
    s = np.where(valid, start_logits, -np.inf)
    e = np.where(valid, end_logits, -np.inf)
    best = (NO_ANSWER, NO_ANSWER, -np.inf)
    for i in np.argsort(-s)[:top_k]:
        if not np.isfinite(s[i]):
            break
        for j in np.argsort(-e)[:top_k]:
            if not np.isfinite(e[j]):
                break
            if i <= j < i + max_answer_tokens and s[i] + e[j] > best[2]:
                best = (int(i), int(j), float(s[i] + e[j]))
    return best
