"""Configs (bertvision.config) and the one head-training function (train.fit_head)."""

import dataclasses

import pytest
import torch

from bertvision.config import (
    EmbedConfig,
    EnsembleConfig,
    FinetuneConfig,
    HeadArchitecture,
    HeadTrainConfig,
    Optimisation,
    Windowing,
    from_dict,
)
from bertvision.errors import ConfigError
from bertvision.heads import HeadData
from bertvision.kinds import KINDS
from bertvision.sentences.heads import selection_score
from bertvision.train import fit_head

SPEC = {"name": "toy", "kind": "classification", "labels": ["no", "yes"], "metrics": ["accuracy", "macro_f1"]}
MANIFEST = {"num_hidden_states": 3, "hidden_size": 8, "encoder": {"name": "tiny", "revision": "r"}}


class Untouchable:
    """A part that fails the test if anything reads it (dev and test are not fit_head's)."""

    def __getattr__(self, name):
        raise AssertionError(f"fit_head read an eval part ({name})")

    def __iter__(self):
        raise AssertionError("fit_head read an eval part")

    def __len__(self):
        raise AssertionError("fit_head read an eval part")


def _data(n: int = 96) -> HeadData:
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 2, (n,), generator=g)
    x = torch.randn(n, 3, 8, generator=g).half()
    x[:, -1, 0] += 2 * y.half()  # learnable from the last layer
    data = HeadData(SPEC, MANIFEST, (x[:64], y[:64]), 64)
    data.parts["validation"] = (x[64:], y[64:].numpy())
    data.parts["dev"] = Untouchable()
    data.parts["test"] = Untouchable()
    return data


def _cfg(**optim) -> HeadTrainConfig:
    return HeadTrainConfig(store="-", head=HeadArchitecture(adapter_size=4), optim=Optimisation(**{"epochs": 6, "batch_size": 16, **optim}),
                           seeds=(0,), device="cpu")  # fmt: skip


def test_fit_head_trains_on_train_selects_on_validation_and_never_reads_dev():
    reports = []
    fit = fit_head(_cfg(patience=10), _data(), KINDS["classification"], on_epoch=reports.append)
    assert [r["epoch"] for r in reports] == [h["epoch"] for h in fit.history] == list(range(1, 7))
    assert all(len(r["losses"]) == 4 for r in reports)  # 64 rows / 16 per step
    assert reports[-1]["step"] == 24
    scores = [selection_score({k: v for k, v in h.items() if k != "epoch"}) for h in fit.history]
    assert fit.best_epoch == 1 + scores.index(max(scores))  # the first best epoch
    assert fit.chosen == fit.history[fit.best_epoch - 1]
    assert all(torch.equal(v, fit.model.state_dict()[k]) for k, v in fit.state.items())
    assert fit.config.task_kind == "classification" and fit.config.adapter_size == 4


def test_fit_head_stops_early_and_is_seeded():
    a = fit_head(_cfg(patience=1, epochs=20), _data(), KINDS["classification"])
    assert len(a.history) == a.best_epoch + 1 < 20  # one epoch without improvement, then stop
    b = fit_head(_cfg(patience=1, epochs=20), _data(), KINDS["classification"])
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    c = fit_head(dataclasses.replace(_cfg(patience=1, epochs=20), seeds=(5,)), _data(), KINDS["classification"])
    assert not all(torch.equal(a.state[k], c.state[k]) for k in a.state)


def test_fit_head_wants_one_seed():
    with pytest.raises(ConfigError, match="one seed"):
        fit_head(dataclasses.replace(_cfg(), seeds=(0, 1)), _data(), KINDS["classification"])


def test_a_trial_changes_a_config_with_replace_and_it_is_checked():
    cfg = _cfg()
    trial = dataclasses.replace(cfg, optim=dataclasses.replace(cfg.optim, lr=3e-3),
                                head=dataclasses.replace(cfg.head, combine="scalar_mix"))  # fmt: skip
    assert trial.optim.lr == 3e-3 and trial.head.combine == "scalar_mix" and cfg.optim.lr == 1e-3
    with pytest.raises(ConfigError, match="--lr"):
        dataclasses.replace(cfg.optim, lr=float("nan"))
    with pytest.raises(ConfigError, match="dropout"):
        dataclasses.replace(cfg.head, dropout=1.0)
    with pytest.raises(ConfigError, match="combine"):
        HeadArchitecture(combine="sum")


def test_kind_defaults_are_filled_by_the_task_kind_and_given_values_kept():
    ft = FinetuneConfig(task="x")
    assert ft.max_length is None
    assert ft.resolved("classification").max_length == 128 == ft.resolved("regression").max_length
    assert ft.resolved("span").max_length == 384
    assert FinetuneConfig(task="x", max_length=200).resolved("span").max_length == 200
    heads = HeadTrainConfig(store="s").resolved("span")
    assert (heads.optim.batch_size, heads.optim.epochs, heads.optim.patience) == (32, 6, 2)
    heads = HeadTrainConfig(store="s", optim=Optimisation(epochs=3)).resolved("classification")
    assert (heads.optim.batch_size, heads.optim.epochs, heads.optim.patience) == (64, 3, 4)
    assert EmbedConfig(task="x").resolved("span").selection == "tokens"
    assert EmbedConfig(task="x").resolved("regression").selection == "cls"
    with pytest.raises(ConfigError, match="family"):
        ft.resolved("tokens")


@pytest.mark.parametrize("cfg", [
    FinetuneConfig(task="rte", save_at=(0.1, 0.5), windowing=Windowing(doc_stride=64)),
    EmbedConfig(task="squad2", splits=("train", "dev"), selection="tokens"),
    HeadTrainConfig(store="s", head=HeadArchitecture(shared=False), optim=Optimisation(lr=0.01), seeds=(3, 4)),
    EnsembleConfig(store="s", heads=("a", "b"), methods=("max",)),
])  # fmt: skip
def test_configs_read_back_from_their_json_form(cfg):
    import json

    again = from_dict(type(cfg), json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert again == cfg
    with pytest.raises(ConfigError, match="unknown keys"):
        from_dict(type(cfg), {**dataclasses.asdict(cfg), "typo": 1})


def test_a_head_architecture_field_reaches_the_flag_the_model_and_the_saved_head(tmp_path):
    """The worked example of docs/ARCHITECTURE.md: HeadArchitecture.activation."""
    from bertvision.cli import build_parser
    from bertvision.config import from_arguments
    from bertvision.models.adapter_pooler import AdapterPooler, AdapterPoolerConfig
    from bertvision.train import load_head, save_head

    args = build_parser().parse_args(["train", "--store", "s", "--out", "o", "--activation", "tanh"])
    assert from_arguments(HeadTrainConfig, args).head.activation == "tanh"
    with pytest.raises(ConfigError, match="--activation must be one of gelu, relu, tanh"):
        HeadArchitecture(activation="swish")
    shape = {"num_hidden_states": 3, "hidden_size": 8, "num_outputs": 2}
    x = torch.randn(5, 3, 8)
    outs = {}
    for act in ("gelu", "tanh"):
        torch.manual_seed(0)
        outs[act] = AdapterPooler(AdapterPoolerConfig(**shape, activation=act)).eval()(x)
    assert not torch.allclose(outs["gelu"], outs["tanh"])
    # a head saved before the field existed (no "activation" in its config) loads as GELU
    torch.manual_seed(0)
    model = AdapterPooler(AdapterPoolerConfig(**shape)).eval()
    pooler = model.config.to_dict()
    del pooler["activation"]
    save_head(tmp_path, model.state_dict(), {"adapter_pooler": pooler, "task": SPEC})
    loaded, _ = load_head(tmp_path)
    assert loaded.config.activation == "gelu" and torch.equal(loaded(x), outs["gelu"])


@pytest.mark.parametrize("patience", [10, 1])
def test_fit_head_resumed_from_a_saved_state_ends_as_the_uninterrupted_run(tmp_path, patience):
    """What a search trial retried after its process died relies on: the state of epoch 2,
    saved with torch.save and read back with weights_only=True, continues bit for bit."""
    cfg = dataclasses.replace(_cfg(patience=patience, epochs=6), head=HeadArchitecture(adapter_size=4, dropout=0.3))
    whole = fit_head(cfg, _data(), KINDS["classification"])

    class Killed(Exception):
        pass

    def die_after_two(report):
        if report["epoch"] == 2:
            torch.save(report["state"](), tmp_path / "state.pt")
            raise Killed

    with pytest.raises(Killed):
        fit_head(cfg, _data(), KINDS["classification"], on_epoch=die_after_two)
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    resumed = fit_head(cfg, _data(), KINDS["classification"], resume=state)
    assert resumed.history == whole.history and resumed.best_epoch == whole.best_epoch
    assert all(torch.equal(resumed.state[k], whole.state[k]) for k in whole.state)


def test_a_training_subset_is_seeded_and_leaves_the_validation_part_as_carved(toy_task):
    from bertvision.config import FinetuneConfig
    from bertvision.sentences.tuning import SentenceTuning
    from bertvision.spans.tuning import SpanTuning
    from bertvision.tasks import get_task

    task = get_task(str(toy_task))

    def parts(**kw):
        p, _ = SentenceTuning(task, FinetuneConfig(task=str(toy_task), **kw), "cpu").read()
        return [str(i) for i in p["train"].ids], [str(i) for i in p["validation"].ids]

    (train, val), (sub, sub_val), (again, _) = parts(), parts(train_examples=30), parts(train_examples=30)
    assert len(train) == 72 and len(sub) == 30 and sub == again  # fixed by the seed
    assert set(sub) < set(train) and sub_val == val  # drawn from the training part; validation unchanged
    assert parts(train_examples=500)[0] == train  # more than there are: all of them
    assert parts(train_examples=30, validation_seed=1)[0] != sub
    with pytest.raises(ConfigError, match="--train-examples must be positive"):
        FinetuneConfig(task="rte", train_examples=0)
    with pytest.raises(ConfigError, match="only sentence tasks"):
        SpanTuning(None, FinetuneConfig(task="squad2", train_examples=10), "cpu").read()
