"""The span head's padding mask, post-processing over windows, the no-answer threshold, ensembles."""

import numpy as np
import pytest
import torch

from bertvision.errors import ConfigError
from bertvision.models.adapter_pooler import AdapterPoolerConfig, SpanAdapterPooler, span_loss
from bertvision.spans.answers import (
    SpanPredictions,
    best_span,
    choose_threshold,
    postprocess,
    score,
)
from bertvision.spans.data import WindowSet, head_logits
from bertvision.spans.ensemble import combine, member_probs


def _head(**kw) -> SpanAdapterPooler:
    torch.manual_seed(0)
    cfg = AdapterPoolerConfig(num_hidden_states=3, hidden_size=8, num_outputs=2, adapter_size=4,
                              task_kind="span", **kw)  # fmt: skip
    return SpanAdapterPooler(cfg).eval()


@pytest.mark.parametrize("combine_", ["flatten", "scalar_mix"])
def test_padding_values_change_nothing(combine_):
    head = _head(combine=combine_)
    x = torch.randn(3, 10, 3, 8)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    for row, n in enumerate((10, 6, 2)):
        mask[row, :n] = True
    y = torch.where(mask[..., None, None], x, torch.randn_like(x) * 1e3)  # garbage in the padding
    a, b = head(x, mask), head(y, mask)
    torch.testing.assert_close(a, b)
    # padded positions can never win: their logits are the lowest float
    assert (a[~mask] == torch.finfo(a.dtype).min).all()
    # and the loss does not change either
    t = torch.tensor([[0, 0], [2, 4], [1, 1]])
    torch.testing.assert_close(span_loss(a, t), span_loss(b, t))


def test_a_windows_logits_do_not_depend_on_its_batch_partners():
    head = _head()
    hidden = [torch.randn(n, 3, 8).half() for n in (7, 3, 12, 5)]
    ws = WindowSet([str(i) for i in range(4)], ["q"] * 4, hidden, [np.zeros((len(h), 2), np.int32) for h in hidden],
                   None, None)  # fmt: skip
    s_big, e_big = head_logits(head, ws, batch_size=4)
    s_one, e_one = head_logits(head, ws, batch_size=1)
    for i in range(4):
        assert len(s_big[i]) == len(hidden[i])
        np.testing.assert_allclose(s_big[i], s_one[i], atol=1e-5)
        np.testing.assert_allclose(e_big[i], e_one[i], atol=1e-5)


def test_span_head_rejects_other_kinds_and_shapes():
    with pytest.raises(ConfigError, match="num_outputs must be 2"):
        AdapterPoolerConfig(num_hidden_states=3, hidden_size=8, num_outputs=3, task_kind="span")
    head = _head()
    with pytest.raises(ValueError, match=r"\(B, T, L, H\)"):
        head(torch.randn(2, 3, 8))
    with pytest.raises(ValueError, match="mask"):
        head(torch.randn(2, 5, 3, 8), torch.ones(2, 4, dtype=torch.bool))


def test_best_span_is_exact_within_the_band():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(3, 40))
        s, e = rng.normal(size=n), rng.normal(size=n)
        offsets = [None if rng.random() < 0.3 else (k, k + 1) for k in range(n)]
        offsets[0] = None
        i, j, sc = best_span(s, e, offsets, max_answer_tokens=6)
        brute = max(((s[a] + e[b], a, b) for a in range(n) for b in range(a, min(n, a + 6))
                     if offsets[a] is not None and offsets[b] is not None), default=None)  # fmt: skip
        if brute is None:
            assert sc == -np.inf
        else:
            assert (i, j) == brute[1:] and sc == pytest.approx(brute[0]) and j >= i


def test_postprocess_never_returns_end_before_start():
    """Even when the best end logit sits before the best start logit."""
    context = "alpha beta gamma delta"
    offsets = [None, None, (0, 5), (6, 10), (11, 16), (17, 22), None]
    s = np.array([0.0, 0, -5, -5, -5, 9, 0])  # start wants "delta"
    e = np.array([0.0, 0, 9, -5, -5, -5, 0])  # end wants "alpha"
    preds = postprocess(["q"], [offsets], [s], [e], {"q": context})
    assert preds.text["q"] in ("delta", "alpha")  # a one-token span, never "delta ... alpha"
    rng = np.random.default_rng(1)
    for _ in range(100):
        s, e = rng.normal(size=7) * 5, rng.normal(size=7) * 5
        text = postprocess(["q"], [offsets], [s], [e], {"q": context}).text["q"]
        assert text and text in context  # a contiguous piece, start before end


def test_postprocess_takes_the_best_window_and_the_smallest_null_score():
    ctx = "one two three four five six"
    w0 = [None, (0, 3), (4, 7), (8, 13), None]
    w1 = [None, (14, 18), (19, 23), (24, 27), None]
    s0, e0 = np.array([1.0, 2, 0, 0, 0]), np.array([1.0, 2, 0, 0, 0])  # best "one": 4, null 2
    s1, e1 = np.array([3.0, 0, 0, 5, 0]), np.array([0.0, 0, 0, 5, 0])  # best "six": 10, null 3
    preds = postprocess(["q", "q"], [w0, w1], [s0, s1], [e0, e1], {"q": ctx})
    assert preds.text == {"q": "six"}
    assert preds.null_diff["q"] == pytest.approx(2 - 10)
    with pytest.raises(ConfigError, match="not in the data"):
        postprocess(["other"], [w0], [s0], [e0], {"q": ctx})


def test_threshold_is_the_best_cut_on_validation():
    rng = np.random.default_rng(0)
    gold = {f"q{i}": (["right"] if i % 2 else []) for i in range(60)}
    text = {q: ("right" if rng.random() < 0.7 else "wrong") for q in gold}
    diff = {q: float(rng.normal() + (1.5 if not gold[q] else 0)) for q in gold}
    preds = SpanPredictions(text, diff)
    thr = choose_threshold(gold, preds)
    best = score(gold, preds, thr)["f1"]
    candidates = [min(diff.values()) - 1, *diff.values()]
    assert best == pytest.approx(max(score(gold, preds, c)["f1"] for c in candidates))
    # all unanswerable: the best is to abstain everywhere, which a threshold below all values gives
    gold_none = dict.fromkeys(gold, [])
    thr = choose_threshold(gold_none, preds)
    assert score(gold_none, preds, thr)["f1"] == 100.0


def test_ensemble_max_and_mean_of_probabilities():
    a = member_probs([np.array([0.0, 1.0, 2.0])], [np.array([2.0, 0.0, 0.0])])
    b = member_probs([np.array([2.0, 1.0, 0.0])], [np.array([0.0, 0.0, 2.0])])
    s_max, e_max = combine([a, b], "max")
    s_mean, _ = combine([a, b], "mean")
    np.testing.assert_allclose(np.exp(s_max[0]), np.maximum(a[0][0], b[0][0]))
    np.testing.assert_allclose(np.exp(e_max[0]), np.maximum(a[1][0], b[1][0]))
    np.testing.assert_allclose(np.exp(s_mean[0]), (a[0][0] + b[0][0]) / 2)
    assert np.exp(s_mean[0]).sum() == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="--method"):
        combine([a, b], "vote")


def test_windows_pickle_their_own_rows_not_their_shards_whole_storage():
    """A search hands the validation windows to its trials through Ray's object store (pickle).
    Each window is a view of its shard's tensor; pickled as such, every window carried the whole
    shard (a real SQuAD run ran out of memory). The pickle holds each row once and round-trips."""
    import pickle

    shard = torch.randn(2000, 3, 8).half()  # one shard: 2,000 token rows
    cuts = [0, 500, 1200, 2000]
    hidden = [shard[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
    ws = WindowSet(["a", "b", "c"], ["q1", "q2", "q3"], hidden, [np.zeros((b - a, 2), np.int32) for a, b in zip(cuts, cuts[1:], strict=False)],
                   np.zeros((3, 2), np.int64), None)  # fmt: skip
    blob = pickle.dumps(ws, protocol=5)
    assert len(blob) < 1.5 * shard.numel() * 2  # once, not once per window (3x)
    back = pickle.loads(blob)
    assert [h.shape for h in back.hidden] == [h.shape for h in hidden]
    assert all(torch.equal(x, y) for x, y in zip(back.hidden, hidden, strict=True))
    assert back.ids == ws.ids and back.example_ids == ws.example_ids
    empty = pickle.loads(pickle.dumps(WindowSet([], [], [], [], np.zeros((0, 2), np.int64), None)))
    assert empty.hidden == [] and len(empty) == 0
