"""SQuAD 2.0 end to end on a tiny BERT: QA fine-tuning, token-level store, span heads, ensembles.

The data is synthetic (official JSON layout, written to tmp): 8 articles of word-list contexts,
some longer than one window, with answerable and unanswerable questions.
"""

import json
import random
import subprocess

import numpy as np
import pytest
import torch

from bertvision.errors import ConfigError, DataError
from bertvision.metrics.squad_v2 import normalize_answer
from tests.conftest import bertvision_cli

WORDS = ["river", "stone", "cloud", "paper", "green", "quiet", "table", "light", "north", "glass",
         "maple", "orbit", "pearl", "sugar", "tiger", "vivid", "wheat", "yacht", "zebra", "amber"]  # fmt: skip


def _squad_file(path, articles: int, seed: int) -> None:
    rng = random.Random(seed)
    data = []
    for a in range(articles):
        paragraphs = []
        for p in range(2):
            n = rng.choice([40, 90, 160])  # 160 words: more than one 128-token window
            words = [rng.choice(WORDS) + str(rng.randrange(50)) for _ in range(n)]
            context = " ".join(words)
            qas = []
            for q in range(3):
                k = rng.randrange(n - 3)
                start = len(" ".join(words[:k])) + (1 if k else 0)
                answer = " ".join(words[k : k + 2])
                assert context[start : start + len(answer)] == answer
                qas.append({"id": f"s{seed}a{a}p{p}q{q}", "question": f"What follows {words[k - 1] if k else 'nothing'}?",
                            "answers": [{"text": answer, "answer_start": start}], "is_impossible": False})  # fmt: skip
            qas.append({"id": f"s{seed}a{a}p{p}x", "question": "Where is the missing zebra999?", "answers": [],
                        "plausible_answers": [], "is_impossible": True})  # fmt: skip
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": f"Article {seed}-{a}", "paragraphs": paragraphs})
    path.write_text(json.dumps({"version": "v2.0", "data": data}))


@pytest.fixture(scope="module")
def squad_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("squad-data")
    (root / "squad2").mkdir()
    _squad_file(root / "squad2" / "train-v2.0.json", 10, 0)
    _squad_file(root / "squad2" / "dev-v2.0.json", 3, 1)
    (root / "glue").mkdir()  # a data folder in the glue_data layout
    return root


@pytest.fixture(scope="module")
def tiny_qa(tmp_path_factory, tiny_bert_dir, squad_dir):
    """A tiny BERT fine-tuned for spans (1 epoch, checkpoint at 0.5)."""
    from bertvision.config import FinetuneConfig, Windowing
    from bertvision.finetune import finetune

    out = tmp_path_factory.mktemp("qa") / "ft"
    cfg = FinetuneConfig(task="squad2", encoder=str(tiny_bert_dir), data_dir=str(squad_dir), epochs=1,
                         save_at=(0.5,), max_length=128, windowing=Windowing(doc_stride=48), batch_size=8,
                         lr=1e-3, validation_fraction=0.2)  # fmt: skip
    return finetune(cfg, out), cfg


@pytest.fixture(scope="module")
def token_store(tmp_path_factory, tiny_qa, squad_dir):
    from bertvision.config import EmbedConfig, Windowing
    from bertvision.embed import embed

    result, _ = tiny_qa
    out = tmp_path_factory.mktemp("emb") / "e1"
    cfg = EmbedConfig(task="squad2", checkpoint=str(result.out_dir / "checkpoint-e1"), data_dir=str(squad_dir),
                      selection="tokens", max_length=128, windowing=Windowing(doc_stride=48), shard_rows=16)  # fmt: skip
    manifests = embed(cfg, out)
    return out, manifests


def test_qa_finetune_writes_checkpoints_scored_with_a_validation_threshold(tiny_qa):
    result, _ = tiny_qa
    assert set(result.checkpoints) == {"checkpoint-e0.5", "checkpoint-e1"}
    for name, meta in result.checkpoints.items():
        folder = result.out_dir / name
        assert (folder / "model.safetensors").is_file()
        v, d = meta["validation"], meta["dev"]
        assert v["threshold"] == meta["threshold"] == d["threshold"]  # chosen on validation, reused on dev
        assert d["total"] == 3 * 2 * 4 and 0 <= d["exact"] <= d["f1"] <= 100
        assert d["HasAns_total"] + d["NoAns_total"] == d["total"]
        preds = json.loads((folder / "predictions-dev.json").read_text())
        assert len(preds) == d["total"]
    config = json.loads((result.out_dir / "config.json").read_text())
    # whole articles are held out: 2 of 10 articles, 8 questions each
    assert config["validation_examples"] == 16 and config["train_examples"] == 64


def test_token_store_keeps_every_real_token_and_no_padding(token_store, tiny_qa, squad_dir, bundled_tokenizer):
    from bertvision import store as st
    from bertvision.spans.windows import make_windows
    from bertvision.tasks import get_task

    out, manifests = token_store
    assert set(manifests) == {"train", "dev"}
    train = st.load_split(out / "train")
    assert train.manifest["selection"] == "tokens" and train.manifest["encoder_logits"] is True
    task = get_task("squad2", squad_dir)
    windows = make_windows(bundled_tokenizer, task.load("train").examples, max_length=128, doc_stride=48)
    assert len(train) == len(windows) > 80  # long contexts make several windows
    lengths = np.diff(train.row_starts)
    np.testing.assert_array_equal(lengths, [len(x) for x in windows.input_ids])
    assert train.hidden.shape == (int(lengths.sum()), 3, 32)  # no padding stored
    assert lengths.max() <= 128 and lengths.min() < 128
    assert st.verify(out / "train")["tokens"] == int(lengths.sum())


def test_stored_offsets_map_gold_tokens_back_to_the_gold_text(token_store, squad_dir):
    from bertvision import store as st
    from bertvision.spans.windows import span_text
    from bertvision.tasks import get_task

    out, _ = token_store
    examples = {ex.id: ex for ex in get_task("squad2", squad_dir).load("dev").examples}
    dev = st.load_split(out / "dev")
    answered = set()
    for i in range(len(dev)):
        w = dev.window(i)
        s, e = (int(x) for x in w["label"])
        ex = examples[w["example_id"]]
        if (s, e) == (0, 0):
            continue
        offsets = [tuple(o) if o[0] >= 0 else None for o in w["offsets"].tolist()]
        assert normalize_answer(span_text(ex.context, offsets, s, e)) == normalize_answer(ex.answers[0].text)
        answered.add(ex.id)
    assert answered == {q for q, ex in examples.items() if not ex.is_impossible}


def test_stored_encoder_logits_are_the_fine_tuned_models_logits(token_store, tiny_qa, squad_dir):
    from bertvision import store as st
    from bertvision.spans.tuning import load_qa_model, window_logits
    from bertvision.spans.windows import make_windows
    from bertvision.tasks import get_task

    out, _ = token_store
    result, cfg = tiny_qa
    folder = result.out_dir / "checkpoint-e1"
    model = load_qa_model(str(folder), torch.device("cpu"))
    from bertvision.encoders import load_tokenizer

    tok = load_tokenizer(str(folder))
    windows = make_windows(tok, get_task("squad2", squad_dir).load("dev").examples, max_length=128, doc_stride=48)
    starts, ends = window_logits(model, tok, windows, "cpu", 7)
    dev = st.load_split(out / "dev")
    for i in range(len(dev)):
        logits = dev.window(i)["encoder_logits"]
        np.testing.assert_allclose(logits[:, 0], starts[i], atol=1e-4)
        np.testing.assert_allclose(logits[:, 1], ends[i], atol=1e-4)


def test_span_heads_and_ensembles(token_store, squad_dir, tmp_path):
    from bertvision.config import EnsembleConfig, HeadArchitecture, HeadTrainConfig, Optimisation
    from bertvision.ensemble import ensemble
    from bertvision.train import train_heads

    out, _ = token_store
    cfg = HeadTrainConfig(store=str(out), head=HeadArchitecture(adapter_size=8), optim=Optimisation(epochs=2, batch_size=8),
                          seeds=(0, 1), data_dir=str(squad_dir), validation_fraction=0.2)  # fmt: skip
    summary = train_heads(cfg, tmp_path / "heads")
    assert summary["seeds"] == [0, 1] and summary["kind"] == "span"
    for run in summary["runs"]:
        assert run["dev"]["threshold"] == run["threshold"] == run["validation"]["threshold"]
        assert run["dev"]["total"] == 24 and 0 <= run["dev"]["f1"] <= 100
        assert 1 <= run["best_epoch"] <= 2
    seed_dir = tmp_path / "heads" / "seed-0"
    for name in ("head.safetensors", "head_config.json", "metrics.json", "predictions-dev.json"):
        assert (seed_dir / name).is_file()
    assert list((seed_dir / "tb").glob("events.out.tfevents.*"))
    # the saved head, scored again through the CLI, gives its training run's dev score
    proc = subprocess.run([*bertvision_cli(), "evaluate", "--head", str(seed_dir), "--store", str(out / "dev"),
                           "--data-dir", str(squad_dir)], capture_output=True, text=True)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["f1"] == pytest.approx(summary["runs"][0]["dev"]["f1"])
    # a second call with the same config reuses the finished run
    assert train_heads(cfg, tmp_path / "heads")["runs"][0]["dev"] == summary["runs"][0]["dev"]
    # one loader for every head kind: the module comes from the config's task kind
    from bertvision.models.adapter_pooler import SpanAdapterPooler
    from bertvision.train import evaluate_head, load_head

    model, meta = load_head(seed_dir)
    assert isinstance(model, SpanAdapterPooler) and meta["selection"] == "tokens"
    with pytest.raises(ConfigError, match="a span head, but a sentence head is needed here"):
        load_head(seed_dir, family="sentence")
    assert evaluate_head(seed_dir, out / "dev", str(squad_dir))["f1"] == pytest.approx(summary["runs"][0]["dev"]["f1"])

    heads = [tmp_path / "heads" / "seed-0", tmp_path / "heads" / "seed-1"]
    result = ensemble(EnsembleConfig(store=str(out), heads=tuple(map(str, heads)), encoder=True, data_dir=str(squad_dir),
                                     validation_fraction=0.2), tmp_path / "ens")  # fmt: skip
    assert set(result["members"]) == {str(h) for h in heads} | {"encoder"}
    # each member scored here equals its own training run's dev score (same threshold search)
    for h, run in zip(heads, summary["runs"], strict=True):
        assert result["members"][str(h)]["dev"]["f1"] == pytest.approx(run["dev"]["f1"])
    for method in ("max", "mean"):
        r = result["ensembles"][method]
        assert r["dev"]["total"] == 24 and r["validation"]["total"] == 16
        preds = json.loads((tmp_path / "ens" / f"predictions-{method}-dev.json").read_text())
        assert len(preds) == 24

    with pytest.raises(ConfigError, match="at least two members"):
        EnsembleConfig(store=str(out), heads=(str(heads[0]),), data_dir=str(squad_dir), validation_fraction=0.2)


def test_span_heads_refuse_a_store_of_other_questions(token_store, tmp_path):
    """The store's windows must belong to the task's questions (here: other data)."""
    from bertvision.config import HeadTrainConfig, Optimisation
    from bertvision.train import train_heads

    other = tmp_path / "other"
    (other / "squad2").mkdir(parents=True)
    (other / "glue").mkdir()
    _squad_file(other / "squad2" / "train-v2.0.json", 10, 7)
    _squad_file(other / "squad2" / "dev-v2.0.json", 3, 8)
    out, _ = token_store
    cfg = HeadTrainConfig(store=str(out), optim=Optimisation(epochs=1), data_dir=str(other), validation_fraction=0.2)
    with pytest.raises(DataError, match="do not match the task"):
        train_heads(cfg, tmp_path / "heads")


def test_span_heads_refuse_a_training_subset(token_store, tmp_path):
    """--train-examples draws sentence examples; span heads train on every window, and say so."""
    from bertvision.config import HeadTrainConfig
    from bertvision.train import train_heads

    out, _ = token_store
    with pytest.raises(ConfigError, match="--train-examples is for sentence stores"):
        train_heads(HeadTrainConfig(store=str(out), train_examples=5), tmp_path / "heads")
    assert not list((tmp_path / "heads").glob("seed-*"))


def test_embed_refuses_cls_or_mean_for_span_tasks(squad_dir, tmp_path):
    """(Sentence tasks take tokens too: a sentence token store, tests/test_token_heads.py.)"""
    from bertvision.config import EmbedConfig
    from bertvision.embed import embed

    for selection in ("cls", "mean"):
        with pytest.raises(ConfigError, match=f"cannot be embedded with --selection {selection}"):
            embed(EmbedConfig(task="squad2", data_dir=str(squad_dir), selection=selection), tmp_path / "x")
    assert not (tmp_path / "x").exists()
