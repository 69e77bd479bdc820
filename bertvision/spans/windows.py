"""SQuAD windows: ``[CLS] question [SEP] context chunk [SEP]``, overlapping by ``doc_stride``
tokens; each context token keeps its character offsets, so a span of tokens maps back to text."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import count

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


def make_windows(tokenizer, examples: Sequence, *, max_length: int = 384, doc_stride: int = 128,
                 max_query_length: int = 64) -> Windows:  # fmt: skip
    """Cut `SquadExample`s into windows of ``max_length`` tokens (a fast tokenizer gives the
    offsets); questions are first cut to ``max_query_length`` tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError("SQuAD windows need a fast tokenizer (character offsets)")
    if not 0 < doc_stride < max_length - max_query_length - 3:
        raise ConfigError(f"--doc-stride must be in (0, {max_length - max_query_length - 3}) for --max-length "
                          f"{max_length} and --max-query-length {max_query_length}, not {doc_stride}")  # fmt: skip
    questions = [_cut_question(tokenizer, ex.question, max_query_length) for ex in examples]
    enc = tokenizer(questions, [ex.context for ex in examples], truncation="only_second", max_length=max_length,
                    stride=doc_stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                    return_token_type_ids=True)  # fmt: skip
    owners = [examples[k] for k in enc["overflow_to_sample_mapping"]]
    offsets = [[tuple(o) if s == 1 else None for o, s in zip(enc["offset_mapping"][w], enc.sequence_ids(w), strict=True)]
               for w in range(len(owners))]  # fmt: skip
    targets = np.asarray([_target(ex, o) for ex, o in zip(owners, offsets, strict=True)], np.int64).reshape(-1, 2)
    return Windows([ex.id for ex in owners], [list(x) for x in enc["input_ids"]],
                   [list(x) for x in enc["token_type_ids"]], offsets, targets[:, 0], targets[:, 1])  # fmt: skip


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
    """Offsets (the `Windows` form, or an array) as int32 (T, 2), (-1, -1) outside the context."""
    if isinstance(offsets, np.ndarray):
        return offsets.astype(np.int32, copy=False).reshape(-1, 2)
    return np.array([o if o is not None else (-1, -1) for o in offsets], dtype=np.int32).reshape(-1, 2)


def window_ids(example_ids) -> list[str]:
    """``<question id>#<k>``: the k-th window of a question (k from 0), unique per store."""
    counters: dict[str, count] = defaultdict(count)
    return [f"{qid}#{next(counters[qid])}" for qid in example_ids]
