"""SQuAD windows: offsets round-trip, strides cover the context, no-answer targets, best spans."""

import numpy as np
import pytest

from bertvision.errors import ConfigError
from bertvision.metrics.squad_v2 import normalize_answer
from bertvision.spans.answers import best_span
from bertvision.spans.windows import NO_ANSWER, make_windows, span_text
from bertvision.tasks import get_task
from bertvision.tasks.squad import Answer, SquadExample


@pytest.fixture(scope="module")
def dev_sample(shared_data):
    examples = get_task("squad2", shared_data).load("dev").examples
    return examples[:400]


def test_gold_answers_round_trip_through_token_offsets(dev_sample, bundled_tokenizer):
    windows = make_windows(bundled_tokenizer, dev_sample, max_length=384, doc_stride=128)
    by_id = {ex.id: ex for ex in dev_sample}
    answered = set()
    for w in range(len(windows)):
        ex = by_id[windows.example_ids[w]]
        s, e = windows.start_positions[w], windows.end_positions[w]
        if (s, e) == (NO_ANSWER, NO_ANSWER):
            continue
        assert not ex.is_impossible and e >= s
        text = span_text(ex.context, windows.offsets[w], s, e)
        # The tokens cover the answer exactly, up to what normalisation ignores (case, punctuation).
        assert normalize_answer(text) == normalize_answer(ex.answers[0].text), (ex.id, text)
        answered.add(ex.id)
    # every answerable question is answerable in at least one of its windows
    assert answered == {ex.id for ex in dev_sample if not ex.is_impossible}
    assert all(windows.start_positions[w] == NO_ANSWER for w in range(len(windows))
               if by_id[windows.example_ids[w]].is_impossible)  # fmt: skip


def test_windows_cover_long_contexts_with_overlap(bundled_tokenizer):
    words = [f"w{i}" for i in range(600)]
    context = " ".join(words)
    answer_at = context.index("w550")
    ex = SquadExample("long", "T", context, "Where is w550?", (Answer("w550", answer_at),), False)
    windows = make_windows(bundled_tokenizer, [ex], max_length=128, doc_stride=32)
    assert len(windows) > 3 and all(len(ids) <= 128 for ids in windows.input_ids)
    covered = set()
    for w in range(len(windows)):
        spans = [o for o in windows.offsets[w] if o is not None]
        covered.update(range(spans[0][0], spans[-1][1]))
        if w:  # consecutive windows overlap
            prev = [o for o in windows.offsets[w - 1] if o is not None]
            assert spans[0][0] < prev[-1][1]
    assert covered >= set(range(len(context))) - {i for i, c in enumerate(context) if c == " "}
    hits = [w for w in range(len(windows)) if windows.start_positions[w] != NO_ANSWER]
    assert hits and all(span_text(context, windows.offsets[w], windows.start_positions[w],
                                  windows.end_positions[w]) == "w550" for w in hits)  # fmt: skip
    assert len(hits) < len(windows)  # windows without the answer point at CLS


def test_bad_stride(bundled_tokenizer):
    with pytest.raises(ConfigError, match="--doc-stride must be in"):
        make_windows(bundled_tokenizer, [], max_length=128, doc_stride=100)


def test_best_span_never_ends_before_it_starts():
    rng = np.random.default_rng(0)
    offsets = [None] + [(i, i + 1) for i in range(40)] + [None]
    for _ in range(200):
        s, e = rng.normal(size=42), rng.normal(size=42)
        i, j, score = best_span(s, e, offsets, max_answer_tokens=5)
        assert 1 <= i <= j < i + 5 and j <= 40
        assert score == pytest.approx(s[i] + e[j])
    # the highest end before the highest start: the best valid pair wins, not the argmaxes
    s, e = np.full(42, -10.0), np.full(42, -10.0)
    s[30], e[10], e[32] = 5.0, 9.0, 1.0  # (30, 10) would score 14 but ends before it starts
    assert best_span(s, e, offsets)[:2] == (30, 32)
    # padding and question tokens never win, however large their logits
    s[0] = e[0] = s[41] = e[41] = 100.0
    assert best_span(s, e, offsets)[:2] == (30, 32)
