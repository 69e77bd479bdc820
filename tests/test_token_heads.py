"""Sentence tasks on token states: the sentence token store (every real token of a sentence or
pair, with each token's sentence), its extraction, and the heads over it (the original GLUE
head's flatten, masked mean and attention pooling; layers mixed before the adapter; the
original's initialisation): shapes and parameter counts against the formulas, padding that
never changes a prediction, the order of a pair's sentences kept, and training end to end."""

import json
import subprocess

import numpy as np
import pytest
import torch

from bertvision import store as st
from bertvision.errors import ConfigError, DataError
from bertvision.models.adapter_pooler import AdapterPooler, AdapterPoolerConfig, TokenAdapterPooler
from tests.conftest import bertvision_cli, write_toy_task

L, H, A, C = 5, 12, 6, 3


def token_head(**kw) -> TokenAdapterPooler:
    torch.manual_seed(0)
    base = dict(num_hidden_states=L, hidden_size=H, num_outputs=C, adapter_size=A, dropout=0.0, token_states=True)
    return TokenAdapterPooler(AdapterPoolerConfig(**{**base, **kw})).eval()


# --- parameter counts against the formulas ----------------------------------------------------


def test_the_original_glue_head_has_the_original_parameter_count():
    """BERT-base inputs (13 states x 768), adapter 64, 128 positions, 2 labels: one shared
    Linear(768, 64) on every token and layer, then 128 x 13 x 64 features into Linear(., 2)."""
    config = AdapterPoolerConfig(num_hidden_states=13, hidden_size=768, num_outputs=2, adapter_size=64,
                                 residual=False, token_states=True, pooling="flatten", positions=128)  # fmt: skip
    model = TokenAdapterPooler(config)
    assert model.num_parameters() == (768 * 64 + 64) + (128 * 13 * 64 * 2 + 2) == 262_210
    assert model(torch.randn(2, 40, 13, 768), torch.ones(2, 40, dtype=torch.bool)).shape == (2, 2)


P = 9  # positions of the flatten head in the tests below


@pytest.mark.parametrize("pooling,shared,combine,residual,segments", [
    ("flatten", True, "flatten", False, 1), ("flatten", False, "flatten", True, 2),
    ("flatten", True, "scalar_mix", True, 1), ("mean", True, "flatten", True, 2),
    ("mean", True, "mix_first", False, 1), ("attention", True, "flatten", True, 2),
    ("attention", True, "scalar_mix", False, 1), ("attention", True, "mix_first", True, 2),
])  # fmt: skip
def test_token_head_parameter_counts(pooling, shared, combine, residual, segments):
    model = token_head(pooling=pooling, shared=shared, combine=combine, residual=residual, positions=P,
                       num_segments=segments)  # fmt: skip
    adapter = H * A + A if shared else L * (H * A + A)
    mix = L + 1 if combine in ("scalar_mix", "mix_first") else 0
    per_token = L * A if combine == "flatten" else A  # F: the combined features of one token
    width = per_token + (H if residual else 0)
    pooled = width * (P if pooling == "flatten" else segments)
    attention = per_token + 1 if pooling == "attention" else 0
    assert model.num_parameters() == adapter + mix + attention + pooled * C + C


def test_mix_first_mixes_the_layers_then_one_adapter():
    """The original's "Tenney" order on cls/mean states: softmax-weighted layers, then the
    adapter on the mixed H-vector (H*A + A), the scale, then the output layer."""
    torch.manual_seed(0)
    model = AdapterPooler(AdapterPoolerConfig(num_hidden_states=L, hidden_size=H, num_outputs=C, adapter_size=A,
                                              combine="mix_first", residual=False, dropout=0.0)).eval()  # fmt: skip
    assert model.num_parameters() == (H * A + A) + (L + 1) + (A * C + C)
    x = torch.randn(4, L, H)
    with torch.no_grad():
        model.mix.logits.copy_(torch.tensor([0.0, 0.0, 0.0, 0.0, 30.0]))  # all weight on the last layer
        expected = model.out(model.adapter.activation(model.adapter.linear(model.mix.gamma * x[:, -1])))
    torch.testing.assert_close(model(x), expected)
    with pytest.raises(ConfigError, match="mix_first"):
        AdapterPoolerConfig(num_hidden_states=L, hidden_size=H, num_outputs=C, combine="mix_first", shared=False)


def test_the_original_initialisation():
    torch.manual_seed(0)
    config = AdapterPoolerConfig(num_hidden_states=L, hidden_size=768, num_outputs=C, adapter_size=64, init="original")
    adapter = AdapterPooler(config).adapter.linear
    w, b = adapter.weight.detach(), adapter.bias.detach()
    assert w.abs().max() <= 2e-3 and (b == 0).all()
    assert 0.7e-3 < float(w.std()) < 1e-3  # a normal of std 1e-3 cut at 2 std has std 0.88e-3
    unshared = AdapterPooler(AdapterPoolerConfig(num_hidden_states=L, hidden_size=H, num_outputs=C, shared=False,
                                                 init="original"))  # fmt: skip
    assert unshared.adapter.weight.abs().max() <= 2e-3 and (unshared.adapter.bias == 0).all()
    default = AdapterPooler(AdapterPoolerConfig(num_hidden_states=L, hidden_size=768, num_outputs=C, adapter_size=64))
    assert float(default.adapter.linear.weight.detach().abs().max()) > 1e-2  # torch's uniform(+-1/sqrt(H))


# --- padding and the order of a pair -----------------------------------------------------------


@pytest.mark.parametrize("pooling", ["flatten", "mean", "attention"])
@pytest.mark.parametrize("combine", ["flatten", "scalar_mix", "mix_first"])
def test_padding_never_changes_a_prediction(pooling, combine):
    model = token_head(pooling=pooling, combine=combine, positions=P, num_segments=2)
    torch.manual_seed(1)
    lengths = [5, 2, 7]
    x = torch.randn(3, 7, L, H)
    mask = torch.arange(7)[None] < torch.tensor(lengths)[:, None]
    seg = (torch.arange(7)[None] >= torch.tensor([3, 1, 4])[:, None]).long()
    alone = torch.cat([model(x[i : i + 1, :n], mask[i : i + 1, :n], seg[i : i + 1, :n]) for i, n in enumerate(lengths)])
    # in one batch, padded to 7, and again to 12 with large values behind the mask
    wide = torch.cat([x, 1e4 * torch.randn(3, 5, L, H)], dim=1)
    wide[~torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], 1)] = 1e4
    wide_mask = torch.cat([mask, torch.zeros(3, 5, dtype=torch.bool)], 1)
    wide_seg = torch.cat([seg, torch.ones(3, 5, dtype=torch.long)], 1)
    torch.testing.assert_close(model(x, mask, seg), alone, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model(wide, wide_mask, wide_seg), alone, rtol=1e-5, atol=1e-5)


def test_flatten_reads_the_first_positions_only():
    model = token_head(pooling="flatten", positions=4)
    x = torch.randn(2, 6, L, H)
    cut = model(x[:, :4], torch.ones(2, 4, dtype=torch.bool))
    torch.testing.assert_close(model(x, torch.ones(2, 6, dtype=torch.bool)), cut)


def test_token_rows_batch_pads_each_row_to_the_longest():
    """A batch of stored rows: each row's tokens in order, then zeros; its mask and segments."""
    from bertvision.sentences.heads import TokenRows

    hidden = torch.randn(8, L, H).half()  # rows of 3, 1 and 4 tokens, back to back
    segments = torch.tensor([0, 0, 1, 0, 0, 1, 1, 1])
    rows = TokenRows(hidden, segments, starts=np.array([0, 3, 4]), lengths=np.array([3, 1, 4]))
    x, mask, seg = rows.batch([2, 0, 1])
    assert x.shape == (3, 4, L, H) and x.dtype == torch.float16
    assert torch.equal(x[0], hidden[4:8]) and torch.equal(x[1, :3], hidden[:3]) and torch.equal(x[2, 0], hidden[3])
    assert not x[1, 3:].any() and not x[2, 1:].any()
    assert mask.tolist() == [[True] * 4, [True, True, True, False], [True, False, False, False]]
    assert seg.tolist() == [[0, 1, 1, 1], [0, 0, 1, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_a_pairs_sentences_are_pooled_apart_and_in_order(pooling):
    """Swapping which tokens are the first sentence changes the output: the head reads the
    first sentence's pooled features, then the second's."""
    model = token_head(pooling=pooling, num_segments=2)
    x = torch.randn(1, 6, L, H)
    mask = torch.ones(1, 6, dtype=torch.bool)
    first = torch.tensor([[0, 0, 0, 1, 1, 1]])
    out = model(x, mask, first)
    swapped = model(torch.cat([x[:, 3:], x[:, :3]], 1), mask, first)  # the second sentence first
    assert not torch.allclose(out, swapped)
    # and with the features written out: pooled first sentence, then the second
    z = model.combined(x)[0]  # (T, F)
    if pooling == "mean":
        parts = [z[:3].mean(0), x[0, :3, -1].mean(0), z[3:].mean(0), x[0, 3:, -1].mean(0)]
        torch.testing.assert_close(out[0], model.out(torch.cat(parts)))
    one = token_head(pooling=pooling, num_segments=1)
    assert one.out.in_features * 2 == model.out.in_features


def test_token_head_input_checks():
    model = token_head()
    with pytest.raises(ValueError, match=r"\(B, T, 5, 12\)"):
        model(torch.randn(2, L, H))
    with pytest.raises(ValueError, match="mask"):
        model(torch.randn(2, 3, L, H), torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="token_states"):
        TokenAdapterPooler(AdapterPoolerConfig(num_hidden_states=L, hidden_size=H, num_outputs=C))
    with pytest.raises(ConfigError, match="num_segments"):
        AdapterPoolerConfig(num_hidden_states=L, hidden_size=H, num_outputs=C, token_states=True, num_segments=3)


# --- the sentence token store ------------------------------------------------------------------


def _spec(**kw) -> st.StoreSpec:
    base = dict(task="toy", split="train", encoder_name="e", encoder_revision="r", checkpoint="pretrained",
                num_hidden_states=3, hidden_size=4, selection="tokens", max_length=16, label_kind="classification",
                shard_rows=2, token_layout="sentences")  # fmt: skip
    return st.StoreSpec(**{**base, **kw})


def _rows(rng, lengths):
    hidden = [rng.standard_normal((n, 3, 4)).astype(np.float32) for n in lengths]
    segments = [np.array([0] * (n // 2) + [1] * (n - n // 2)) for n in lengths]
    return hidden, segments


def test_sentence_token_store_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    hidden, segments = _rows(rng, [5, 3, 7])
    writer = st.StoreWriter(tmp_path / "train", _spec(encoder_logits=True, encoder_outputs=2), 3)
    writer.write_shard(0, ["a", "b"], hidden[:2], np.array([1, 0]), segments=segments[:2],
                       encoder_logits=np.array([[0.5, -0.5], [1.0, 2.0]]))  # fmt: skip
    writer.write_shard(1, ["c"], hidden[2:], np.array([1]), segments=segments[2:], encoder_logits=np.zeros((1, 2)))
    manifest = writer.finish()
    assert manifest["token_layout"] == "sentences" and manifest["selection"] == "tokens"
    report = st.verify(tmp_path / "train")
    assert report["rows"] == 3 and report["tokens"] == 15
    split = st.load_split(tmp_path / "train")
    assert split.ids == ["a", "b", "c"] and split.offsets is None and split.labels.tolist() == [1, 0, 1]
    np.testing.assert_array_equal(split.lengths(), [5, 3, 7])
    row = split.window(2)
    np.testing.assert_array_equal(row["segments"], segments[2])
    np.testing.assert_array_equal(row["hidden"].numpy(), hidden[2].astype(np.float16))
    np.testing.assert_array_equal(split.encoder_logits[0], [0.5, -0.5])
    # streamed and shuffled: each row's tokens, segments and logits stay together
    seen = {}
    for shard in st.iter_token_shards(tmp_path / "train", shuffle=True, seed=3):
        for i, rid in enumerate(shard.ids):
            seen[rid] = shard.window(i)
    np.testing.assert_array_equal(seen["a"]["segments"], segments[0])
    np.testing.assert_array_equal(seen["b"]["encoder_logits"], [1.0, 2.0])
    # pyarrow alone reads the layout
    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "train" / "shard-00000.parquet")
    assert table.column_names == ["id", "hidden", "segments", "label", "encoder_logits"]
    assert table.column("segments").to_pylist()[1] == segments[1].tolist()


def test_sentence_token_store_refuses_bad_rows(tmp_path):
    rng = np.random.default_rng(0)
    hidden, segments = _rows(rng, [5, 3])
    writer = st.StoreWriter(tmp_path / "train", _spec(), 2)
    with pytest.raises(DataError, match=r"\[b\].*segments must be 0 or 1"):
        writer.write_shard(0, ["a", "b"], hidden, np.array([1, 0]), segments=[segments[0], np.array([0, 2, 1])])
    with pytest.raises(ValueError, match="segments shape expected"):
        writer.write_shard(0, ["a", "b"], hidden, np.array([1, 0]), segments=[segments[0], np.array([0, 1])])
    with pytest.raises(ValueError, match="segments needed"):
        writer.write_shard(0, ["a", "b"], hidden, np.array([1, 0]))
    with pytest.raises(ValueError, match="offsets not taken"):
        writer.write_shard(0, ["a", "b"], hidden, np.array([1, 0]), segments=segments,
                           offsets=[np.zeros((5, 2)), np.zeros((3, 2))])  # fmt: skip
    with pytest.raises(ValueError, match="labels shape"):
        writer.write_shard(0, ["a", "b"], hidden, np.array([[1, 0], [0, 0]]), segments=segments)
    assert not list((tmp_path / "train").glob("shard-*"))  # nothing written
    for bad, says in ((dict(label_kind="span"), "not 'span'"), (dict(selection="mean"), "needs selection 'tokens'"),
                      (dict(token_layout="pairs"), "token_layout")):  # fmt: skip
        with pytest.raises(ConfigError, match=says):
            _spec(**bad)


def test_a_shard_without_its_segments_is_refused(tmp_path):
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    hidden, segments = _rows(rng, [5, 3])
    writer = st.StoreWriter(tmp_path / "train", _spec(shard_rows=2), 2)
    writer.write_shard(0, ["a", "b"], hidden, np.array([1, 0]), segments=segments)
    writer.finish()
    file = tmp_path / "train" / "shard-00000.parquet"
    pq.write_table(pq.read_table(file).drop_columns(["segments"]), file)
    with pytest.raises(DataError, match=r"shard-00000.parquet.*no 'segments' column"):
        st.verify(tmp_path / "train")


# --- extraction and training ------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy_stores(tmp_path_factory, tiny_bert_dir):
    from bertvision.config import EmbedConfig
    from bertvision.embed import embed

    root = tmp_path_factory.mktemp("token-heads")
    task = write_toy_task(root / "task", n_train=96, n_dev=24)
    for selection in ("tokens", "mean"):
        embed(EmbedConfig(task=str(task), checkpoint=str(tiny_bert_dir), selection=selection, shard_rows=32),
              root / selection)  # fmt: skip
    return root, task


def test_extraction_keeps_every_token_and_the_pairs_order(toy_stores, bundled_tokenizer):
    root, _ = toy_stores
    tokens, mean = st.load_split(root / "tokens" / "train"), st.load_split(root / "mean" / "train")
    assert tokens.ids == mean.ids and tokens.manifest["token_layout"] == "sentences"
    for i in range(len(tokens)):
        row = tokens.window(i)
        seg = row["segments"]
        # CLS a... SEP (0) then b... SEP (1): the first sentence first, each token marked
        assert seg[0] == 0 and seg[-1] == 1 and (np.diff(seg) >= 0).all()
        # the token states average to the mean store's (float16 rounding apart)
        np.testing.assert_allclose(row["hidden"].float().mean(0).numpy(), mean.hidden[i].float().numpy(), atol=2e-3)


def test_segments_follow_the_tokenizer_for_single_sentences_and_pairs(bundled_tokenizer):
    from bertvision.encoders import tokenize

    one = tokenize(bundled_tokenizer, ["a small test"], max_length=16, segments=True)
    assert set(one["segments"][0]) == {0}
    two = tokenize(bundled_tokenizer, ["a small test"], ["and another one"], max_length=16, segments=True)
    assert two["segments"][0] == two["token_type_ids"][0]  # BERT's token types, derived without them


def test_train_and_evaluate_a_token_head_on_the_command_line(toy_stores, tmp_path, tiny_bert_dir):
    root, task = toy_stores
    emb = subprocess.run([*bertvision_cli(), "embed", "--task", str(task), "--checkpoint", str(tiny_bert_dir), "--splits",
                          "dev", "--selection", "tokens", "--out", str(tmp_path / "emb")], capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert emb.returncode == 0, emb.stderr[-2000:]
    assert "dev: 24 examples x tokens x (3, 32)" in emb.stdout
    st.verify(tmp_path / "emb" / "dev")
    out = tmp_path / "heads"
    proc = subprocess.run([*bertvision_cli(), "train", "--store", str(root / "tokens"), "--seeds", "0", "--epochs", "3",
                           "--pooling", "attention", "--out", str(out)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dev accuracy:" in proc.stdout
    config = json.loads((out / "seed-0" / "head_config.json").read_text())
    assert config["adapter_pooler"]["token_states"] is True and config["adapter_pooler"]["num_segments"] == 2
    assert config["adapter_pooler"]["pooling"] == "attention" and config["selection"] == "tokens"
    metrics = json.loads((out / "seed-0" / "metrics.json").read_text())
    assert len(metrics["validation_history"]) == 3
    ev = subprocess.run([*bertvision_cli(), "evaluate", "--head", str(out / "seed-0"), "--store",
                         str(root / "tokens" / "dev")], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ev.returncode == 0, ev.stderr[-2000:]
    assert json.loads(ev.stdout)["accuracy"] == pytest.approx(metrics["dev"]["accuracy"])


@pytest.mark.parametrize("pooling,combine", [("flatten", "flatten"), ("mean", "mix_first")])
def test_token_heads_train_load_and_evaluate(toy_stores, tmp_path, pooling, combine):
    from bertvision.config import HeadArchitecture, HeadTrainConfig, Optimisation
    from bertvision.train import evaluate_head, load_head, train_heads

    root, _ = toy_stores
    head = HeadArchitecture(pooling=pooling, combine=combine, positions=24, init="original")
    summary = train_heads(HeadTrainConfig(store=str(root / "tokens"), seeds=(0,), head=head,
                                          optim=Optimisation(epochs=2)), tmp_path / "heads")  # fmt: skip
    metrics = json.loads((tmp_path / "heads" / "seed-0" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["validation_history"]] == [1, 2] and "dev" in summary
    model, meta = load_head(tmp_path / "heads" / "seed-0")
    assert type(model).__name__ == "TokenAdapterPooler" and meta["adapter_pooler"]["positions"] == 24
    scores = evaluate_head(tmp_path / "heads" / "seed-0", root / "tokens" / "dev")
    assert scores["accuracy"] == pytest.approx(metrics["dev"]["accuracy"]) and scores["rows"] == 24
    with pytest.raises(ConfigError, match="not a sentence token store"):  # a token head on a mean store
        evaluate_head(tmp_path / "heads" / "seed-0", root / "mean" / "dev")


def test_the_token_kind_carves_the_same_validation_rows_as_the_mean_store(toy_stores):
    from bertvision.config import HeadTrainConfig
    from bertvision.kinds import store_kind

    root, _ = toy_stores
    cfg = HeadTrainConfig(store=str(root / "tokens")).resolved("sentence")
    datas = []
    for selection in ("tokens", "mean"):
        kind, _, spec = store_kind(root / selection)
        datas.append(kind.load(cfg, root / selection, spec, ["dev"]))
    tokens, mean = datas
    assert type(tokens.train).__name__ == "TokenRows" and tokens.train_rows == mean.train_rows
    np.testing.assert_array_equal(tokens.parts["validation"][1], mean.parts["validation"][1])
    np.testing.assert_array_equal(tokens.train.labels.numpy(), mean.train[1].numpy())


def test_heads_train_on_fine_tunings_subset_of_the_training_part(toy_stores):
    """--train-examples N: heads on every sentence store train on the N examples fine-tuning's
    --train-examples N trains on; the validation part stays as carved."""
    from bertvision.config import FinetuneConfig, HeadTrainConfig
    from bertvision.kinds import store_kind
    from bertvision.sentences.tuning import SentenceTuning
    from bertvision.tasks import get_task

    root, task = toy_stores
    parts, _ = SentenceTuning(get_task(str(task)), FinetuneConfig(task=str(task), train_examples=30), "cpu").read()
    split = st.load_split(root / "mean" / "train")
    rows = np.array([split.ids.index(i) for i in parts["train"].ids])  # fine-tuning's 30, in store rows
    assert len(rows) == 30
    for selection in ("mean", "tokens"):
        kind, _, spec = store_kind(root / selection)
        full = kind.load(HeadTrainConfig(store="x").resolved("sentence"), root / selection, spec, ["dev"])
        sub = kind.load(HeadTrainConfig(store="x", train_examples=30).resolved("sentence"), root / selection, spec, ["dev"])
        assert sub.train_rows == 30 and full.train_rows == 86
        labels = sub.train.labels if selection == "tokens" else sub.train[1]
        np.testing.assert_array_equal(labels.numpy(), split.labels.numpy()[rows])
        if selection == "mean":
            assert torch.equal(sub.train[0], split.hidden[rows])
        np.testing.assert_array_equal(sub.parts["validation"][1], full.parts["validation"][1])


def test_token_and_mean_heads_ensemble_on_their_own_stores(toy_stores, tmp_path):
    """Members on different stores of one task (as a search's trials over cls, mean and token
    stores are): each is predicted on its own store's validation carve, the same examples."""
    from dataclasses import asdict

    from bertvision.config import EnsembleConfig, HeadTrainConfig, Optimisation
    from bertvision.sentences.ensemble import sentence_ensemble
    from bertvision.train import train_heads

    root, _ = toy_stores
    trials = []
    for selection, pooling in (("tokens", "attention"), ("mean", "mean")):
        from bertvision.config import HeadArchitecture

        cfg = HeadTrainConfig(store=str(root / selection), seeds=(0,), head=HeadArchitecture(pooling=pooling),
                              optim=Optimisation(epochs=2))  # fmt: skip
        train_heads(cfg, tmp_path / selection)
        trials.append({"trial": str(tmp_path / selection / "seed-0"), "config": asdict(cfg), "params": {},
                       "kind": "classification"})  # fmt: skip
    result = sentence_ensemble(EnsembleConfig(from_tune=str(tmp_path)), trials, tmp_path / "ens")
    assert set(result["members"]) == {"tokens/seed-0", "mean/seed-0"}
    assert "dev" in result["ensembles"]["greedy"] and sum(result["weights"].values()) >= 1
    # a token head scored on a mean store is refused
    bad = [dict(trials[0], config={**trials[0]["config"], "store": str(root / "mean")}), trials[1]]
    with pytest.raises(ConfigError, match="a head on token states"):
        sentence_ensemble(EnsembleConfig(from_tune=str(tmp_path)), bad, tmp_path / "ens2")


def test_a_head_run_from_before_the_token_options_is_still_reused(toy_stores, tmp_path):
    """config.json of a run made before init / pooling / positions (or train_examples) existed
    lacks them; that code did what their defaults do, so the finished run is reused, not refused."""
    from bertvision.config import HeadTrainConfig, Optimisation
    from bertvision.train import train_heads

    root, _ = toy_stores
    cfg = HeadTrainConfig(store=str(root / "mean"), seeds=(0,), optim=Optimisation(epochs=1))
    train_heads(cfg, tmp_path / "heads")
    config_file = tmp_path / "heads" / "config.json"
    stored = json.loads(config_file.read_text())
    for name in ("init", "pooling", "positions"):
        del stored["train"]["head"][name]
    del stored["train"]["train_examples"]
    config_file.write_text(json.dumps(stored))
    head = (tmp_path / "heads" / "seed-0" / "head.safetensors").stat().st_mtime_ns
    train_heads(cfg, tmp_path / "heads")
    assert (tmp_path / "heads" / "seed-0" / "head.safetensors").stat().st_mtime_ns == head
    with pytest.raises(ConfigError, match="other settings"):  # an option that differs still does
        train_heads(HeadTrainConfig(store=str(root / "mean"), seeds=(0,), optim=Optimisation(epochs=1),
                                    head=cfg.head.__class__(init="original")), tmp_path / "heads")  # fmt: skip
    with pytest.raises(ConfigError, match="other settings"):  # and so does a training subset
        train_heads(HeadTrainConfig(store=str(root / "mean"), seeds=(0,), optim=Optimisation(epochs=1),
                                    train_examples=40), tmp_path / "heads")  # fmt: skip
