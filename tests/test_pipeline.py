"""The method end to end on a tiny random BERT and a toy task: finetune -> embed -> train ->
evaluate, through the library and through the command line, with the bad inputs it must refuse."""

import json
import subprocess

import numpy as np
import pytest
from safetensors.torch import load_file

from bertvision.config import FinetuneConfig, HeadTrainConfig, Optimisation
from bertvision.embed import EmbedConfig, embed
from bertvision.errors import ConfigError, DataError
from bertvision.finetune import finetune
from bertvision.store import verify
from bertvision.train import evaluate_head, train_heads
from tests.conftest import bertvision_cli, write_toy_task


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, tiny_bert_dir):
    """A tiny BERT fine-tuned on the toy task for one epoch, with a checkpoint after half."""
    root = tmp_path_factory.mktemp("pipeline")
    cfg = write_toy_task(root / "toy")
    out = root / "ft"
    result = finetune(
        FinetuneConfig(task=str(cfg), encoder=str(tiny_bert_dir), epochs=1, save_at=(0.5,), batch_size=8, lr=1e-3),
        out,
    )
    return root, cfg, out, result


def test_finetune_checkpoints(finetuned, tiny_bert_dir):
    root, cfg, out, result = finetuned
    assert set(result.checkpoints) == {"checkpoint-e0.5", "checkpoint-e1"}
    half = json.loads((out / "checkpoint-e0.5" / "bertvision.json").read_text())
    # 80 toy examples, 8 held out for validation -> 72 train -> 9 steps an epoch, 5 at 0.5 epochs
    assert (half["fraction"], half["step"]) == (0.5, 5)
    assert set(half["validation"]) == {"accuracy", "macro_f1"} and "dev" in half
    run = json.loads((out / "config.json").read_text())
    assert run["finetune"]["epochs"] == 1 and run["validation_examples"] == 8 and run["train_examples"] == 72
    assert run["encoder"]["num_hidden_states"] == 3
    weights = load_file(str(out / "checkpoint-e1" / "model.safetensors"))
    assert any(k.startswith("classifier") for k in weights)
    assert json.loads((out / "metrics.json").read_text()) == {
        k: json.loads((out / k / "bertvision.json").read_text()) for k in result.checkpoints
    }


def test_finetune_is_seeded(finetuned, tiny_bert_dir, tmp_path):
    """The same config gives bit-identical weights; another seed (all else equal) others."""
    root, cfg, out, _ = finetuned

    def weights(folder, seed):
        result = finetune(FinetuneConfig(task=str(cfg), encoder=str(tiny_bert_dir), epochs=0.5, batch_size=8, lr=1e-3,
                                         seed=seed, score_dev=False), tmp_path / folder)  # fmt: skip
        assert result.checkpoints["checkpoint-e0.5"]["step"] == 5
        return load_file(str(tmp_path / folder / "checkpoint-e0.5" / "model.safetensors"))

    a, b, other = weights("a", 0), weights("b", 0), weights("c", 1)
    assert set(a) == set(b) == set(other)
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    # the head's initialisation and the batch order come from the seed
    assert not np.array_equal(a["classifier.weight"].numpy(), other["classifier.weight"].numpy())


@pytest.mark.parametrize("epochs, save_at, pattern", [
    (0, (), r"--epochs must be in \(0, inf\)"),
    (-1, (), r"--epochs must be in \(0, inf\)"),
    (float("inf"), (), r"--epochs must be in \(0, inf\)"),
    (1, (0.0,), r"--save-at fractions must be in \(0, inf\)"),
    (1, (2.0,), r"--save-at 2.0 lies beyond --epochs 1"),
])  # fmt: skip
def test_bad_fractions(epochs, save_at, pattern):
    with pytest.raises(ConfigError, match=pattern):
        FinetuneConfig(task="rte", epochs=epochs, save_at=save_at)


def test_embed_train_evaluate(finetuned, tmp_path):
    root, cfg, out, _ = finetuned
    ckpt = out / "checkpoint-e0.5"
    manifests = embed(EmbedConfig(task=str(cfg), checkpoint=str(ckpt), shard_rows=32), tmp_path / "emb")
    assert set(manifests) == {"train", "dev"}
    m = manifests["train"]
    assert m["status"] == "complete" and m["rows"] == 80 and len(m["shards"]) == 3
    assert (m["num_hidden_states"], m["hidden_size"], m["selection"], m["dtype"]) == (3, 32, "cls", "float16")
    assert m["checkpoint"] == str(ckpt) and len(m["checkpoint_sha256"]) == 64
    base = json.loads((out / "config.json").read_text())["encoder"]  # the encoder fine-tuning began from
    assert m["encoder"] == {"name": base["name"], "revision": base["revision"]}
    assert list(m["extra"]["task_spec"]["labels"]) == ["0", "1"]
    assert verify(tmp_path / "emb" / "train")["rows"] == 80
    # A rerun finds every shard complete and writes nothing.
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "emb" / "train").glob("shard-*")}
    again = embed(EmbedConfig(task=str(cfg), checkpoint=str(ckpt), shard_rows=32), tmp_path / "emb")
    assert "last_run" in again["train"]["extra"]  # from the first run, not re-measured
    assert before == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "emb" / "train").glob("shard-*")}

    summary = train_heads(HeadTrainConfig(store=str(tmp_path / "emb"), seeds=(0, 1, 2), optim=Optimisation(epochs=5, batch_size=16)), tmp_path / "heads")
    assert summary["seeds"] == [0, 1, 2]
    for split in ("validation", "dev"):
        assert set(summary[split]) == {"accuracy", "macro_f1"}
        accs = [r[split]["accuracy"] for r in summary["runs"]]
        assert summary[split]["accuracy"]["mean"] == pytest.approx(np.mean(accs))
        assert summary[split]["accuracy"]["std"] == pytest.approx(np.std(accs, ddof=1))
    seed0 = tmp_path / "heads" / "seed-0"
    assert (seed0 / "head.safetensors").is_file() and (seed0 / "head_config.json").is_file()
    dev = evaluate_head(seed0, tmp_path / "emb" / "dev")
    assert dev["accuracy"] == pytest.approx(summary["runs"][0]["dev"]["accuracy"])
    # TensorBoard event files with the scalars we log
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(seed0 / "tb"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "validation/accuracy", "dev/accuracy"} <= tags
    assert len(events.Scalars("validation/accuracy")) == summary["runs"][0]["epochs_run"]


def test_store_mismatches_are_refused(finetuned, tmp_path, tiny_bert_dir):
    root, cfg, out, _ = finetuned
    embed(EmbedConfig(task=str(cfg), checkpoint=str(out / "checkpoint-e1"), splits=("train", "dev")), tmp_path / "e1")
    embed(EmbedConfig(task=str(cfg), checkpoint=str(out / "checkpoint-e0.5"), splits=("dev",)), tmp_path / "e05")
    train_heads(HeadTrainConfig(store=str(tmp_path / "e1"), seeds=(0,), optim=Optimisation(epochs=1)), tmp_path / "heads")
    head = tmp_path / "heads" / "seed-0"
    with pytest.raises(ConfigError, match="made from checkpoint .*checkpoint-e0.5.*trained on .*checkpoint-e1"):
        evaluate_head(head, tmp_path / "e05" / "dev")
    embed(EmbedConfig(task=str(cfg), splits=("dev",)), tmp_path / "bundled")  # another encoder: (7, 384)
    with pytest.raises(ConfigError, match="does not fit"):
        evaluate_head(head, tmp_path / "bundled" / "dev")
    # a store with a different spec in the same folder
    with pytest.raises(ConfigError, match="max_length"):
        embed(EmbedConfig(task=str(cfg), checkpoint=str(out / "checkpoint-e1"), splits=("dev",), max_length=64), tmp_path / "e1")
    with pytest.raises(DataError, match="no 'train' split"):
        train_heads(HeadTrainConfig(store=str(tmp_path / "e05")), tmp_path / "h2")


def run_cli(*args):
    return subprocess.run([*bertvision_cli(), *args], capture_output=True, text=True, timeout=300)


def test_command_line_end_to_end(tmp_path, tiny_bert_dir):
    cfg = write_toy_task(tmp_path / "toy", kind="regression")
    proc = run_cli("finetune", "--task", str(cfg), "--encoder", str(tiny_bert_dir), "--epochs", "0.5",
                   "--batch-size", "8", "--out", str(tmp_path / "ft"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "checkpoint-e0.5" in proc.stdout and "pearson" in proc.stdout
    proc = run_cli("embed", "--task", str(cfg), "--checkpoint", str(tmp_path / "ft" / "checkpoint-e0.5"),
                   "--out", str(tmp_path / "emb"), "--selection", "mean")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "train: 80 rows x (3, 32)" in proc.stdout
    proc = run_cli("train", "--store", str(tmp_path / "emb"), "--out", str(tmp_path / "heads"), "--seeds", "0", "1",
                   "--epochs", "3", "--combine", "scalar_mix", "--no-shared")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "dev pearson:" in proc.stdout and "over 2 seed(s)" in proc.stdout
    head_cfg = json.loads((tmp_path / "heads" / "seed-1" / "head_config.json").read_text())
    assert head_cfg["adapter_pooler"]["combine"] == "scalar_mix" and head_cfg["adapter_pooler"]["shared"] is False
    proc = run_cli("evaluate", "--head", str(tmp_path / "heads" / "seed-1"), "--store", str(tmp_path / "emb" / "dev"))
    assert proc.returncode == 0 and json.loads(proc.stdout)["rows"] == 24
    proc = run_cli("store", "verify", str(tmp_path / "emb"))
    assert proc.returncode == 0 and proc.stdout.count(": ok,") == 2
    # A corrupt shard: verify exits 1 and names the shard; a fraction outside (0, inf) too.
    shard = tmp_path / "emb" / "dev" / "shard-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-100])
    proc = run_cli("store", "verify", str(tmp_path / "emb" / "dev"))
    assert proc.returncode == 1 and str(shard) in proc.stderr
    proc = run_cli("finetune", "--task", str(cfg), "--epochs", "0", "--out", str(tmp_path / "x"))
    assert proc.returncode == 1 and "--epochs must be in (0, inf)" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_finished_runs_are_reused_and_other_settings_refused(finetuned, tiny_bert_dir):
    root, cfg, out, result = finetuned
    same = FinetuneConfig(task=str(cfg), encoder=str(tiny_bert_dir), epochs=1, save_at=(0.5,), batch_size=8, lr=1e-3)
    before = (out / "checkpoint-e1" / "model.safetensors").stat().st_mtime_ns
    again = finetune(same, out)
    assert again.checkpoints == json.loads((out / "metrics.json").read_text())
    assert (out / "checkpoint-e1" / "model.safetensors").stat().st_mtime_ns == before
    with pytest.raises(ConfigError, match=r"finished run with other settings \(lr\)"):
        finetune(FinetuneConfig(task=str(cfg), encoder=str(tiny_bert_dir), epochs=1, save_at=(0.5,), batch_size=8), out)


def test_selection_score_is_the_glue_task_score():
    from bertvision.sentences.heads import selection_score

    # MRPC-like: all-positive has the best F1 but the worse mean of F1 and accuracy.
    all_positive, learned = {"f1": 0.81, "accuracy": 0.68}, {"f1": 0.80, "accuracy": 0.74}
    assert selection_score(learned) > selection_score(all_positive)
    assert selection_score({"pearson": float("nan"), "spearman": 0.5}) == float("-inf")
    assert selection_score({"accuracy": 0.6}) == pytest.approx(0.6)


def test_a_store_of_the_training_subset_holds_what_heads_read_and_trains_the_same_heads(finetuned, tmp_path):
    """embed --train-examples N keeps the validation part and fine-tuning's N training examples
    only; heads on it match heads on the whole store with --train-examples N, example for
    example, and a head asking for another carve is refused."""
    from bertvision.sentences.ensemble import load_parts_of

    _, cfg, out, _ = finetuned
    ckpt = str(out / "checkpoint-e1")
    embed(EmbedConfig(task=str(cfg), checkpoint=ckpt, splits=("train", "dev")), tmp_path / "full")
    embed(EmbedConfig(task=str(cfg), checkpoint=ckpt, splits=("train", "dev"), train_examples=30), tmp_path / "sub")
    full = json.loads((tmp_path / "full" / "train" / "_manifest.json").read_text())
    sub = json.loads((tmp_path / "sub" / "train" / "_manifest.json").read_text())
    assert full["rows"] == 80 and sub["rows"] == 30 + 8  # the 10% validation part and the 30
    assert sub["extra"]["subset"]["of_rows"] == 80 and len(sub["extra"]["subset"]["train"]) == 30
    assert sub["source_sha256"] != full["source_sha256"]
    heads = dict(optim=Optimisation(epochs=2), seeds=(0,))
    a = train_heads(HeadTrainConfig(store=str(tmp_path / "full"), train_examples=30, **heads), tmp_path / "ha")
    b = train_heads(HeadTrainConfig(store=str(tmp_path / "sub"), **heads), tmp_path / "hb")
    assert a["validation"] == b["validation"] and a["dev"] == b["dev"]
    for bad in ({"train_examples": 20}, {"validation_seed": 1}):
        with pytest.raises(ConfigError, match="holds only the validation part and 30 training examples"):
            train_heads(HeadTrainConfig(store=str(tmp_path / "sub"), **heads, **bad), tmp_path / "hc")
    # the ensemble's validation part is the heads' too
    ids_full = load_parts_of(tmp_path / "full", (0.1, 0))[3]["validation"].ids
    ids_sub = load_parts_of(tmp_path / "sub", (0.1, 0))[3]["validation"].ids
    assert ids_full == ids_sub and len(ids_sub) == 8
