"""Sentence ensembles (bertvision.ensemble): a search's best trials and the fine-tuned encoder.

A tiny BERT is fine-tuned on the toy task and embedded twice (cls and mean states); trial
folders are written by `bertvision.search.run_trial` without Ray (one test goes through
`bertvision tune` and `bertvision ensemble --from-tune`). The tests check that the weights are
chosen on validation only, what ensemble.json holds, that the encoder member is the fine-tuned
model's own output, regression averaging, refusals, and that stores of a bare encoder hold no
encoder outputs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertvision.config import EmbedConfig, EnsembleConfig, FinetuneConfig, SearchConfig
from bertvision.embed import embed
from bertvision.ensemble import ensemble
from bertvision.errors import ConfigError
from bertvision.finetune import finetune
from bertvision.search import default_point, load_stores, run_trial
from bertvision.sentences.ensemble import combine_outputs, greedy_weights
from bertvision.sentences.heads import softmax_rows
from bertvision.store import load_split, read_manifest
from tests.conftest import bertvision_cli, write_toy_task


def _noop(metrics, state) -> None:
    pass


def _search(stores: tuple[Path, ...], out: Path, points: list[dict], epochs: int = 3) -> SearchConfig:
    """Trial folders as 'bertvision tune' writes them, one per point, without Ray."""
    search = SearchConfig(stores=tuple(map(str, stores)), epochs=epochs, patience=epochs)
    loaded = load_stores(search)
    for k, point in enumerate(points):
        run_trial(search, point, loaded, out / f"trial-{k}", _noop)
    return search


def _points(search: SearchConfig, family: str = "sentence") -> list[dict]:
    base = default_point(search, family)
    s0, s1 = search.stores[0], search.stores[-1]
    return [base, {**base, "store": s1, "adapter_size": 16, "lr": 3e-3},
            {**base, "store": s0, "combine": "scalar_mix", "lr": 5e-3}, {**base, "store": s1, "dropout": 0.3}]


@pytest.fixture(scope="module")
def toy(tmp_path_factory, tiny_bert_dir):
    """The toy task, a fine-tuned checkpoint, its cls and mean stores, and four trials."""
    root = tmp_path_factory.mktemp("ensemble")
    task = write_toy_task(root / "task", n_train=120, n_dev=40)
    finetune(FinetuneConfig(task=str(task), encoder=str(tiny_bert_dir), epochs=1, batch_size=8, lr=1e-3), root / "ft")
    ckpt = root / "ft" / "checkpoint-e1"
    stores = []
    for selection in ("cls", "mean"):
        embed(EmbedConfig(task=str(task), checkpoint=str(ckpt), selection=selection), root / selection)
        stores.append(root / selection)
    search = SearchConfig(stores=tuple(map(str, stores)), epochs=3, patience=3)
    _search(tuple(stores), root / "search", _points(search))
    return root, task, ckpt, tuple(stores)


def test_sentence_stores_carry_the_fine_tuned_models_own_logits(toy):
    from bertvision.encoders import encode_split, load_model, load_tokenizer, predict
    from bertvision.tasks import get_task

    root, task_cfg, ckpt, stores = toy
    task = get_task(str(task_cfg))
    model = load_model(str(ckpt), task.spec, "cpu")
    tokenizer = load_tokenizer(str(ckpt))
    for name in ("train", "dev"):
        split = task.load(name)
        expected = predict(model, tokenizer, encode_split(tokenizer, split, 128), "cpu", 16)
        for store in stores:
            manifest = read_manifest(store / name)
            assert manifest["encoder_logits"] is True and manifest["encoder_outputs"] == 2
            stored = load_split(store / name)
            assert stored.ids == list(split.ids) and stored.encoder_logits.shape == (len(split), 2)
            np.testing.assert_allclose(stored.encoder_logits, expected, atol=1e-5)
            schema = pq.read_schema(store / name / manifest["shards"][0]["file"])
            assert schema.field("encoder_logits").type == pa.list_(pa.float32(), 2)


def test_ensemble_of_the_best_trials_and_the_encoder(toy, tmp_path):
    root, task_cfg, ckpt, stores = toy
    result = ensemble(EnsembleConfig(from_tune=str(root / "search"), top_k=3, encoder=True), tmp_path / "ens")
    assert result == json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    from bertvision.search import leaderboard

    best = leaderboard(root / "search")[:3]
    names = [Path(t["trial"]).name for t in best] + ["encoder"]
    assert list(result["members"]) == names and list(result["weights"]) == names
    assert result["kind"] == "classification" and result["evals"] == ["dev"]
    for t, name in zip(best, names, strict=False):
        m = result["members"][name]
        assert m["folder"] == t["trial"] and m["params"] == t["params"] and m["store"] == t["config"]["store"]
        # the trial's own validation score comes back: its head, its store, its carve
        assert m["validation"]["score"] == pytest.approx(t["score"], abs=1e-9)
    assert {result["members"][n]["store"] for n in names[:3]} <= set(map(str, stores))
    assert result["members"]["encoder"]["folder"] is None
    greedy, uniform = result["ensembles"]["greedy"], result["ensembles"]["uniform"]
    assert greedy["weights"] == result["weights"] and sum(greedy["weights"].values()) >= 1
    assert set(uniform["weights"].values()) == {1}
    better = "greedy" if greedy["validation"]["score"] >= uniform["validation"]["score"] else "uniform"
    assert result["chosen"] == better  # the one reported is the better on validation
    assert len(greedy["rounds"]) == 2 * len(names)
    # the best prefix: never worse on validation than any member (the first round takes the best)
    assert greedy["validation"]["score"] >= max(result["members"][n]["validation"]["score"] for n in names)
    assert greedy["validation"]["score"] == pytest.approx(max(r["score"] for r in greedy["rounds"]))
    for r in [*result["members"].values(), greedy, uniform]:
        assert set(r["dev"]) == {"accuracy", "macro_f1", "score"}


def test_weights_are_chosen_on_validation_only(toy, tmp_path):
    """Flipping every dev label changes the dev scores, not the weights."""
    root, task_cfg, ckpt, stores = toy
    a = ensemble(EnsembleConfig(from_tune=str(root / "search"), top_k=4, encoder=True), tmp_path / "a")
    flipped = tmp_path / "flipped"
    for store in stores:
        shutil.copytree(store, flipped / store.name)
        _flip_dev_labels(flipped / store.name / "dev")
    search = tmp_path / "search"
    shutil.copytree(root / "search", search)
    for trial in search.glob("*/trial.json"):
        record = json.loads(trial.read_text())
        record["config"]["store"] = str(flipped / Path(record["config"]["store"]).name)
        trial.write_text(json.dumps(record))
    b = ensemble(EnsembleConfig(from_tune=str(search), top_k=4, encoder=True), tmp_path / "b")
    assert a["weights"] == b["weights"]
    assert a["ensembles"]["greedy"]["validation"] == b["ensembles"]["greedy"]["validation"]
    for key in ("greedy", "uniform"):
        assert b["ensembles"][key]["dev"]["accuracy"] == pytest.approx(1 - a["ensembles"][key]["dev"]["accuracy"])


def _flip_dev_labels(split: Path) -> None:
    """Rewrite a classification store's labels as 1 - label, with the manifest's checksums."""
    import hashlib

    from bertvision.store import encode_parquet

    manifest = json.loads((split / "_manifest.json").read_text())
    for entry in manifest["shards"]:
        table = pq.read_table(split / entry["file"])
        i = table.column_names.index("label")
        table = table.set_column(i, "label", pa.array(1 - table.column("label").to_numpy(), pa.int64()))
        data = encode_parquet(table).to_pybytes()
        (split / entry["file"]).write_bytes(data)
        entry["sha256"] = hashlib.sha256(data).hexdigest()
    (split / "_manifest.json").write_text(json.dumps(manifest))


def test_greedy_selection_with_replacement():
    labels = np.array([0, 1, 1, 0, 1, 0])
    good = np.eye(2)[labels] * 0.6 + 0.2  # right everywhere
    half = np.eye(2)[[0, 1, 0, 1, 1, 0]] * 0.6 + 0.2  # right on four of six
    from bertvision.metrics import compute_metrics

    def score(o):
        return compute_metrics(["accuracy"], o, labels)["accuracy"]

    counts, history = greedy_weights([half, good], score, 4)
    assert counts == [0, 1]  # the best prefix: the good member alone, found in round 1
    assert history[0] == {"round": 1, "added": 1, "score": 1.0} and len(history) == 4
    assert np.allclose(combine_outputs([half, good], [1, 3]), (half + 3 * good) / 4)
    assert np.allclose(softmax_rows(np.array([[0.0, 0.0], [1.0, 1.0]])), 0.5)


@pytest.fixture(scope="module")
def regression(tmp_path_factory, tiny_bert_dir):
    root = tmp_path_factory.mktemp("ensemble-regression")
    task = write_toy_task(root / "task", n_train=80, n_dev=24, kind="regression")
    finetune(FinetuneConfig(task=str(task), encoder=str(tiny_bert_dir), epochs=1, batch_size=8, lr=1e-3), root / "ft")
    embed(EmbedConfig(task=str(task), checkpoint=str(root / "ft" / "checkpoint-e1")), root / "cls")
    search = SearchConfig(stores=(str(root / "cls"),), epochs=2, patience=2)
    _search((root / "cls",), root / "search", _points(search)[:3], epochs=2)
    return root


def test_regression_averages_predictions(regression, tmp_path):
    root = regression
    result = ensemble(EnsembleConfig(from_tune=str(root / "search"), top_k=3, encoder=True), tmp_path / "ens")
    assert result["kind"] == "regression" and result["metrics"] == ["pearson", "spearman"]
    assert read_manifest(root / "cls" / "train")["encoder_outputs"] == 1
    # the uniform ensemble's dev score is the metric of the plain mean of the members' predictions
    from bertvision.kinds import KINDS
    from bertvision.metrics import compute_metrics
    from bertvision.sentences.heads import selection_score
    from bertvision.train import load_head

    dev = load_split(root / "cls" / "dev")
    outputs = []
    for name, m in result["members"].items():
        outputs.append(dev.encoder_logits if name == "encoder" else KINDS["regression"].outputs(load_head(m["folder"])[0], dev.hidden))
    mean = np.mean(np.asarray(outputs, np.float64), axis=0)  # the ensemble averages in float64
    expected = compute_metrics(["pearson", "spearman"], mean, dev.labels.numpy())
    uniform = result["ensembles"]["uniform"]["dev"]
    assert uniform["pearson"] == pytest.approx(expected["pearson"], abs=1e-6)
    assert uniform["score"] == pytest.approx(selection_score(expected), abs=1e-6)


@pytest.fixture(scope="module")
def bare(toy, tiny_bert_dir) -> Path:
    """A mean store of the toy task from the bare tiny BERT (no task head)."""
    root, task_cfg, _, _ = toy
    embed(EmbedConfig(task=str(task_cfg), checkpoint=str(tiny_bert_dir), selection="mean", shard_rows=32),
          root / "bare")  # fmt: skip
    return root / "bare"


def test_mismatched_members_are_refused(toy, regression, bare, tmp_path):
    root, task_cfg, ckpt, stores = toy
    # another task's trial among the members
    mixed = tmp_path / "mixed"
    shutil.copytree(root / "search" / "trial-0", mixed / "trial-0")
    shutil.copytree(regression / "search" / "trial-0", mixed / "trial-r")
    with pytest.raises(ConfigError, match="different kinds"):
        ensemble(EnsembleConfig(from_tune=str(mixed), top_k=2), tmp_path / "o1")
    # a store of the same task whose examples differ (fewer train examples: another carve)
    other = tmp_path / "other-task"
    cfg = write_toy_task(other, n_train=100, n_dev=40)
    embed(EmbedConfig(task=str(cfg), checkpoint=str(ckpt)), tmp_path / "other-cls")
    with pytest.raises(ConfigError, match=r"other examples .*validation"):
        ensemble(EnsembleConfig(from_tune=str(root / "search"), top_k=2, encoder=True,
                                store=str(tmp_path / "other-cls")), tmp_path / "o2")  # fmt: skip
    # a store of a bare encoder (the same examples) has no logits to be a member
    with pytest.raises(ConfigError, match="no encoder logits"):
        ensemble(EnsembleConfig(from_tune=str(root / "search"), top_k=2, encoder=True, store=str(bare)),
                 tmp_path / "o3")  # fmt: skip
    with pytest.raises(ConfigError, match="--store"):
        EnsembleConfig(heads=("a", "b"))
    with pytest.raises(ConfigError, match="at least two members"):
        EnsembleConfig(from_tune="x", top_k=1)
    assert not any((tmp_path / f"o{k}" / "ensemble.json").exists() for k in (1, 2, 3))



@pytest.mark.ray
def test_tune_then_ensemble_from_tune_on_the_command_line(toy, shared_ray, tmp_path):
    root, task_cfg, ckpt, stores = toy
    env = shared_ray.cli_env  # the search on the session's shared head
    cli = bertvision_cli()
    proc = subprocess.run([*cli, "tune", "--stores", *map(str, stores), "--trials", "4", "--initial-points", "2",
                           "--epochs", "3", "--out", str(tmp_path / "search")], capture_output=True, text=True,
                          env=env, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = subprocess.run([*cli, "ensemble", "--from-tune", str(tmp_path / "search"), "--top-k", "3", "--encoder",
                           "--out", str(tmp_path / "ens")], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((tmp_path / "ens" / "ensemble.json").read_text())
    assert len(result["members"]) == 4 and "encoder" in result["members"]
    assert "ensemble greedy" in proc.stdout and "dev accuracy" in proc.stdout and "member encoder" in proc.stdout
    proc = subprocess.run([*cli, "ensemble", "--heads", "x", "y", "--out", str(tmp_path / "bad")], capture_output=True,
                          text=True)  # fmt: skip
    assert proc.returncode == 1 and "--store" in proc.stderr


def test_a_store_of_a_bare_encoder_holds_no_encoder_outputs(bare):
    for split in ("train", "dev"):
        manifest = read_manifest(bare / split)
        assert manifest["encoder_logits"] is False and "encoder_outputs" not in manifest
        assert load_split(bare / split).encoder_logits is None
