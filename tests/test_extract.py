"""Extraction against the reference: transformers' own hidden_states, on a tiny random BERT."""

import numpy as np
import pytest
import torch

from bertvision.errors import ConfigError
from bertvision.extract import HiddenStateExtractor, iter_split_batches

TEXTS_A = [
    "A short one.",
    "This sentence is a good deal longer than the first one, with many more tokens in it.",
    "Medium length sentence here.",
    "x",
    "Another example, of middling size, for the batch.",
]
TEXTS_B = ["Paired.", "Second text of the pair.", "Yes.", "A longer second segment for this pair.", "No."]


def reference(folder, texts_a, texts_b):
    """transformers' hidden_states for each example alone (no padding at all), float32."""
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    tok = AutoTokenizer.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for a, b in zip(texts_a, texts_b, strict=True):
            enc = tok(a, b, truncation=True, max_length=128, return_tensors="pt")
            out.append(torch.stack(model(**enc, output_hidden_states=True).hidden_states, 0)[:, 0])  # (L, T, H)
    return out


@pytest.mark.parametrize("batch_size", [1, 2, 64])
def test_parity_with_transformers_hidden_states(tiny_bert_dir, batch_size):
    ref = reference(tiny_bert_dir, TEXTS_A, TEXTS_B)
    for selection in ("cls", "mean"):
        ex = HiddenStateExtractor(str(tiny_bert_dir), ("a", "b"), selection=selection, batch_size=batch_size)
        out = ex({"id": list("abcde"), "a": TEXTS_A, "b": TEXTS_B})
        assert out["hidden"].dtype == np.float16 and out["hidden"].shape == (5, 3, 32)
        assert list(out["id"]) == list("abcde")  # input order, though batches run longest first
        for i, states in enumerate(ref):  # states: (L, T, H)
            want = states[:, 0] if selection == "cls" else states.mean(dim=1)
            for k in range(3):  # layer k == hidden_states[k] (k = 0 is the embedding output)
                torch.testing.assert_close(
                    torch.from_numpy(out["hidden"][i, k]).float(), want[k], atol=2e-3, rtol=2e-3
                )


@pytest.mark.parametrize("batch_size", [1, 3])
def test_tokens_parity_every_real_token_no_padding(tiny_bert_dir, batch_size):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_bert_dir)
    enc = tok(TEXTS_A, TEXTS_B, truncation=True, max_length=128)
    ref = reference(tiny_bert_dir, TEXTS_A, TEXTS_B)
    ex = HiddenStateExtractor(str(tiny_bert_dir), ("question", "context"), selection="tokens", batch_size=batch_size)
    assert not ex.has_encoder_logits  # a bare encoder has no QA head
    batch = {"id": [f"w{i}" for i in range(5)], "example_id": list("abcde"), "input_ids": enc["input_ids"],
             "token_type_ids": enc["token_type_ids"], "offsets": [np.zeros((len(x), 2)) for x in enc["input_ids"]],
             "label": [(0, 0)] * 5}  # fmt: skip
    out = ex(batch)
    assert "encoder_logits" not in out and out["label"].shape == (5, 2)
    for i, h in enumerate(out["hidden"]):
        assert h.dtype == np.float16 and h.shape == (len(enc["input_ids"][i]), 3, 32)  # (T_i, L, H): no padding
        np.testing.assert_allclose(h.astype(np.float32), ref[i].permute(1, 0, 2).numpy(), atol=2e-3, rtol=2e-3)


def test_single_sentences_labels_pass_through_and_bundled_shape(tiny_bert_dir):
    ex = HiddenStateExtractor(str(tiny_bert_dir), ("text",))
    out = ex({"id": np.array(["1", "2"]), "text": np.array(["one", "two words"]), "label": np.array([0, 1])})
    assert out["label"].tolist() == [0, 1]
    assert ex.output_shape == (3, 32) and ex.tokens_seen > 0


def test_padding_does_not_change_the_result(tiny_bert_dir):
    """A short example gives the same states alone as in a batch with a long one."""
    ex = HiddenStateExtractor(str(tiny_bert_dir), ("a",), selection="mean", batch_size=8)
    alone = ex({"id": ["s"], "a": ["tiny"]})["hidden"][0]
    padded = ex({"id": ["s", "l"], "a": ["tiny", " ".join(["word"] * 60)]})["hidden"][0]
    np.testing.assert_allclose(alone.astype(np.float32), padded.astype(np.float32), atol=2e-3)


def test_int8_quantisation_stays_close(tiny_bert_dir):
    base = HiddenStateExtractor(str(tiny_bert_dir), ("a", "b"))({"id": list("abcde"), "a": TEXTS_A, "b": TEXTS_B})
    quant = HiddenStateExtractor(str(tiny_bert_dir), ("a", "b"), quantize="int8")
    out = quant({"id": list("abcde"), "a": TEXTS_A, "b": TEXTS_B})
    a, b = base["hidden"].astype(np.float32), out["hidden"].astype(np.float32)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.95
    assert not np.array_equal(a[:, 1:], b[:, 1:])  # it really ran quantised layers


def test_bad_options(tiny_bert_dir):
    with pytest.raises(ConfigError, match="--selection must be one of"):
        HiddenStateExtractor(str(tiny_bert_dir), ("a",), selection="tokens-ish")
    with pytest.raises(ConfigError, match="1 or 2"):
        HiddenStateExtractor(str(tiny_bert_dir), ("a", "b", "c"))
    with pytest.raises(ConfigError, match="--quantize must be 'int8'"):
        HiddenStateExtractor(str(tiny_bert_dir), ("a",), quantize="int4")


def test_iter_split_batches(shared_data):
    from bertvision.tasks import get_task

    split = get_task("rte", shared_data).load("dev")
    batches = list(iter_split_batches(split, 100, 50, 277))
    assert [len(b["id"]) for b in batches] == [100, 100, 27]
    assert batches[0]["id"][0] == split.ids[50] and batches[-1]["sentence2"][-1] == split.texts[1][-1]
    assert batches[0]["label"].tolist() == split.labels[50:150].tolist()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_autocast_parity(tiny_bert_dir):
    ref = reference(tiny_bert_dir, TEXTS_A, TEXTS_B)
    out = HiddenStateExtractor(str(tiny_bert_dir), ("a", "b"), device="cuda")({"id": list("abcde"), "a": TEXTS_A, "b": TEXTS_B})
    for i, states in enumerate(ref):
        torch.testing.assert_close(torch.from_numpy(out["hidden"][i]).float(), states[:, 0], atol=5e-2, rtol=5e-2)
