"""Faults injected on purpose, as a careful user would: damaged stores, stale reruns, bad
options, full disks, busy folders. Each test names the item of the hardening issue it covers
and fails on the code before the fix (what it did then is said in the docstring)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bertvision import store as st
from bertvision.config import FinetuneConfig, HeadTrainConfig, Optimisation
from bertvision.embed import EmbedConfig, embed, prepare
from bertvision.errors import EXIT_INPUT, EXIT_RUN, ConfigError, DataError, RunError
from bertvision.finetune import finetune
from bertvision.train import train_heads
from tests.conftest import bertvision_cli, write_toy_task


def cli(*args, timeout=300, **kw):
    return subprocess.run([*bertvision_cli(), *map(str, args)], capture_output=True, text=True, timeout=timeout, **kw)


def one_line_error(proc, code: int) -> str:
    """The command failed with ``code`` and printed one error line, no traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("bertvision: error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy_task(tmp_path_factory.mktemp("hard") / "toy")


@pytest.fixture(scope="module")
def store(tmp_path_factory, toy, tiny_bert_dir) -> Path:
    """A clean store of the toy task from the tiny BERT (train 80 rows in 5 shards, dev 24)."""
    out = tmp_path_factory.mktemp("store") / "emb"
    embed(EmbedConfig(task=str(toy), checkpoint=str(tiny_bert_dir), shard_rows=16), out)
    return out


def copy_store(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def rewrite_shard(folder: Path, index: int, change) -> None:
    """Rewrite shard ``index`` with ``change(hidden)`` applied, and record its new sha256 in the
    manifest, so that only a value check (not the checksum) can notice."""
    file = folder / st.shard_file(index)
    table = pq.read_table(file)
    hidden = table.column("hidden").combine_chunks().to_numpy_ndarray().copy()
    change(hidden)
    column = pa.FixedShapeTensorArray.from_numpy_ndarray(hidden)
    table = table.set_column(table.column_names.index("hidden"), "hidden", column)
    data = st.encode_parquet(table)
    file.write_bytes(data.to_pybytes())
    manifest = json.loads((folder / "_manifest.json").read_text())
    import hashlib

    manifest["shards"][index]["sha256"] = hashlib.sha256(data.to_pybytes()).hexdigest()
    (folder / "_manifest.json").write_text(json.dumps(manifest))


# ------------------------------------------------------------------------------------------
# 1. Stages check what they read; non-finite losses stop training


def test_1_train_refuses_a_shard_with_a_flipped_byte(store, tmp_path):
    """Before: `train` exited 0 on a shard whose sha256 no longer matched its manifest."""
    bad = copy_store(store, tmp_path / "emb")
    shard = bad / "train" / "shard-00002.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the float16 tensor data: still readable Parquet
    shard.write_bytes(bytes(data))
    proc = cli("train", "--store", bad, "--out", tmp_path / "heads", "--seeds", "0", "--epochs", "1")
    line = one_line_error(proc, EXIT_INPUT)
    assert str(shard) in line and "sha256 checksum mismatch" in line
    assert not (tmp_path / "heads").exists()  # refused before anything was written


def test_1_stores_refuse_nan_in_one_example(store, tmp_path):
    """Before: with NaN in one example (checksum updated to match), `train` exited 0 and saved
    a head whose tensors were all NaN."""
    bad = copy_store(store, tmp_path / "emb")

    def poison(hidden):
        hidden[5, 1, 3] = np.nan

    rewrite_shard(bad / "train", 1, poison)
    proc = cli("train", "--store", bad, "--out", tmp_path / "heads", "--seeds", "0", "--epochs", "1")
    line = one_line_error(proc, EXIT_INPUT)
    ids = pq.read_table(bad / "train" / "shard-00001.parquet", columns=["id"]).column("id").to_pylist()
    assert "shard-00001.parquet" in line and f"[{ids[5]}]" in line and "NaN or inf" in line
    assert not list(tmp_path.glob("heads/**/head.safetensors"))
    # every reader checks: the streaming readers too
    with pytest.raises(DataError, match="NaN or inf"):
        list(st.iter_batches(bad / "train", 8))


def test_1_a_diverging_head_stops_with_a_clear_error(store, tmp_path, monkeypatch):
    """Before: a head whose loss went NaN trained on and was saved with NaN weights."""
    from bertvision.models import adapter_pooler

    real = adapter_pooler.AdapterPooler.loss
    calls = {"n": 0}

    def loss(self, out, y):  # the third step's loss is NaN, as a diverging run's would be
        calls["n"] += 1
        value = real(self, out, y)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(adapter_pooler.AdapterPooler, "loss", loss)
    with pytest.raises(RunError, match=r"head training \(seed 0, epoch 1\) diverged: the loss is nan at step 3"):
        train_heads(HeadTrainConfig(store=str(store), seeds=(0,), optim=Optimisation(epochs=2, batch_size=8)), tmp_path / "heads")
    assert not list((tmp_path / "heads").glob("*seed-0*"))  # no seed folder, not even a temporary one


@pytest.mark.parametrize("lr", ["inf", "nan", "-1", "0"])
def test_1_finetune_refuses_non_finite_learning_rates(toy, tmp_path, lr):
    """Before: `finetune --lr inf` exited 0 with every weight non-finite; `--lr nan` raised a
    traceback from AdamW."""
    proc = cli("finetune", "--task", toy, "--lr", lr, "--epochs", "0.1", "--out", tmp_path / "ft")
    assert "--lr must be a finite positive number" in one_line_error(proc, EXIT_INPUT)
    assert not (tmp_path / "ft").exists()
    with pytest.raises(ConfigError, match="--lr must be a finite positive number"):
        HeadTrainConfig(store="-", optim=Optimisation(lr=float(lr)))


def test_1_finetune_never_saves_non_finite_weights(toy, tiny_bert_dir, tmp_path):
    """A learning rate that is finite but absurd diverges: one clear error, no checkpoint."""
    with pytest.raises(RunError, match="diverged|not finite"):
        finetune(FinetuneConfig(task=str(toy), encoder=str(tiny_bert_dir), epochs=1, batch_size=8, lr=1e30,
                                score_dev=False), tmp_path / "ft")  # fmt: skip
    assert not list((tmp_path / "ft").glob("checkpoint-*"))


# ------------------------------------------------------------------------------------------
# 2. Reruns check the data, not only the settings


def test_2a_embed_refuses_to_resume_over_changed_data(tmp_path, tiny_bert_dir):
    """Before: a store killed after 2 of 5 shards, resumed after the train file was rewritten
    with the same row count, finished with shards 0-1 of the old data and 2-4 of the new."""
    from bertvision.embed import write_output
    from bertvision.extract import HiddenStateExtractor

    task = write_toy_task(tmp_path / "toy")
    out = tmp_path / "emb"
    with prepare(EmbedConfig(task=str(task), checkpoint=str(tiny_bert_dir), splits=("train",), shard_rows=16), out) as plan:
        extractor = HiddenStateExtractor(**plan.extractor, device="cpu")
        split = plan.splits[0]
        for k in (0, 1):  # then the process "dies": the store stays incomplete
            write_output(split.writer, k, extractor(split.batch(k)))
    train = task.parent / "train.csv"
    lines = train.read_text().splitlines()
    flipped = [lines[0]] + [",".join([*r.split(",")[:-1], str(1 - int(r.split(",")[-1]))]) for r in lines[1:]]
    train.write_text("\n".join(flipped) + "\n")  # same rows, labels flipped
    proc = cli("embed", "--task", task, "--checkpoint", tiny_bert_dir, "--splits", "train", "--out", out,
               "--shard-rows", "16")  # fmt: skip
    line = one_line_error(proc, EXIT_INPUT)
    assert f"{out / 'train'} holds an unfinished store of other data" in line and "source_sha256" in line
    assert sorted(p.name for p in (out / "train").glob("shard-*")) == ["shard-00000.parquet", "shard-00001.parquet"]


def test_2b_finetune_rerun_after_the_data_changed_is_refused(tmp_path, tiny_bert_dir):
    """Before: the rerun returned the old run's metrics in seconds, as if on the new data."""
    task = write_toy_task(tmp_path / "toy")
    args = ("finetune", "--task", task, "--encoder", tiny_bert_dir, "--epochs", "0.5", "--batch-size", "8",
            "--out", tmp_path / "ft")  # fmt: skip
    assert cli(*args).returncode == 0
    assert cli(*args).returncode == 0  # same data, same settings: reused
    train = task.parent / "train.csv"
    train.write_text(train.read_text().replace("river", "ocean"))
    line = one_line_error(cli(*args), EXIT_INPUT)
    assert "holds a finished run on other data: train changed since it ran" in line


def test_2c_train_rerun_on_a_replaced_store_is_refused(store, tmp_path, toy):
    """Before: `train` rerun after its store was replaced by another reused the old heads."""
    mine = copy_store(store, tmp_path / "emb")
    args = ("train", "--store", mine, "--out", tmp_path / "heads", "--seeds", "0", "--epochs", "1")
    assert cli(*args).returncode == 0
    import shutil

    shutil.rmtree(mine)
    embed(EmbedConfig(task=str(toy), shard_rows=16, splits=("train", "dev"), max_length=32), mine)  # another store there
    line = one_line_error(cli(*args), EXIT_INPUT)
    assert "holds a finished run on other data: dev, train changed" in line


# ------------------------------------------------------------------------------------------
# 3. A restarted or refused fine-tuning run leaves no checkpoint its config does not describe


def _killed_finetune(task, encoder, out: Path, lr: str) -> None:
    """A real `bertvision finetune`, SIGKILLed once its first checkpoint is on disk."""
    proc = subprocess.Popen([*bertvision_cli(), "finetune", "--task", str(task), "--encoder", str(encoder),
                             "--epochs", "40", "--save-at", "0.5", "--batch-size", "8", "--lr", lr, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 240
        while not (out / "checkpoint-e0.5").is_dir():
            assert proc.poll() is None and time.time() < deadline, "no first checkpoint"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (out / "metrics.json").exists()


def test_3_a_killed_finetune_rerun_with_other_settings(toy, tiny_bert_dir, tmp_path):
    """Before: the rerun started over with the new settings in config.json while the killed
    run's checkpoint-e0.5 stayed beside it, describing a run nobody made."""
    out = tmp_path / "ft"
    _killed_finetune(toy, tiny_bert_dir, out, "1e-3")
    old = (out / "checkpoint-e0.5" / "model.safetensors").read_bytes()
    # other settings: refused, and the folder is as the killed run left it
    proc = cli("finetune", "--task", toy, "--encoder", tiny_bert_dir, "--epochs", "1", "--save-at", "0.5",
               "--batch-size", "8", "--lr", "2e-3", "--out", out)  # fmt: skip
    assert "holds an unfinished (killed?) run with other settings (epochs, lr)" in one_line_error(proc, EXIT_INPUT)
    assert json.loads((out / "config.json").read_text())["finetune"]["lr"] == 1e-3
    assert (out / "checkpoint-e0.5" / "model.safetensors").read_bytes() == old
    # the same settings: the killed run's checkpoint is removed and the run starts over
    proc = cli("finetune", "--task", toy, "--encoder", tiny_bert_dir, "--epochs", "40", "--save-at", "0.5",
               "--batch-size", "8", "--lr", "1e-3", "--out", out)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    config = json.loads((out / "config.json").read_text())
    names = sorted(p.name for p in out.iterdir() if p.name.startswith("checkpoint"))
    assert names == ["checkpoint-e0.5", "checkpoint-e40"] and config["finetune"]["epochs"] == 40
    meta = json.loads((out / "checkpoint-e0.5" / "bertvision.json").read_text())
    assert meta == json.loads((out / "metrics.json").read_text())["checkpoint-e0.5"]  # of this run


# ------------------------------------------------------------------------------------------
# 4. Every split checked before the first step; no repeated seeds


def test_4_finetune_checks_the_dev_split_before_training(tmp_path, tiny_bert_dir):
    """Before: a bad dev line was reported after training, leaving a checkpoint behind."""
    task = write_toy_task(tmp_path / "toy")
    dev = task.parent / "dev.csv"
    rows = dev.read_text().splitlines()
    rows[3] = rows[3].rsplit(",", 1)[0] + ",maybe"
    dev.write_text("\n".join(rows) + "\n")
    proc = cli("finetune", "--task", task, "--encoder", tiny_bert_dir, "--epochs", "1", "--out", tmp_path / "ft")
    line = one_line_error(proc, EXIT_INPUT)
    assert f"{dev}:4" in line and "maybe" in line
    assert not (tmp_path / "ft").exists()


def test_4_repeated_seeds_are_refused(store, tmp_path):
    """Before: `train --seeds 0 0` reported '± 0.0000 over 2 seeds'."""
    proc = cli("train", "--store", store, "--out", tmp_path / "heads", "--seeds", "0", "0")
    assert "--seeds: seed 0 given more than once" in one_line_error(proc, EXIT_INPUT)
    assert not (tmp_path / "heads").exists()


# ------------------------------------------------------------------------------------------
# 5. OS errors and bad options: one line, the right exit status, nothing half-written


@pytest.fixture
def small_disk(tmp_path):
    """A real, tiny file system (tmpfs of 1.5 MiB) to fill up; needs root, as CI and this
    machine have."""
    mount = tmp_path / "disk"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", str(mount)], capture_output=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_5_a_full_disk_during_embed(small_disk, tmp_path):
    """Before: `OSError: [Errno 28] No space left on device` as a traceback."""
    task = write_toy_task(tmp_path / "toy", n_train=400, n_dev=8)  # 400 x 7 x 384 float16: ~2 MiB
    out = small_disk / "emb"
    proc = cli("embed", "--task", task, "--splits", "train", "--out", out, "--shard-rows", "40")
    line = one_line_error(proc, EXIT_RUN)
    assert "no space left on device" in line.lower() and str(out / "train") in line
    leftovers = [p.name for p in (out / "train").iterdir() if p.name.endswith(".tmp")]
    assert leftovers == []  # only whole shards, resumable; no temporary files
    assert json.loads((out / "train" / "_manifest.json").read_text())["status"] == "incomplete"


def test_5_a_full_disk_during_finetune(small_disk, tmp_path, tiny_bert_dir):
    """Before: a SafetensorError traceback, leaving checkpoint-e0.1.tmp/ behind."""
    task = write_toy_task(tmp_path / "toy")
    out = small_disk / "ft"  # the tiny BERT's weights (~4 MiB) do not fit in 1.5 MiB
    proc = cli("finetune", "--task", task, "--encoder", tiny_bert_dir, "--epochs", "0.1", "--out", out)
    line = one_line_error(proc, EXIT_RUN)
    assert str(out / "checkpoint-e0.1") in line
    assert not [p for p in out.iterdir() if "checkpoint" in p.name]  # nor a temporary one


@pytest.mark.parametrize("command", ["finetune", "embed", "train"])
def test_5_out_naming_a_file(command, store, toy, tmp_path):
    """Before: NotADirectoryError as a traceback."""
    target = tmp_path / "a-file"
    target.write_text("not a folder\n")
    args = {"finetune": ("--task", toy, "--epochs", "0.1"), "embed": ("--task", toy),
            "train": ("--store", store, "--seeds", "0")}[command]  # fmt: skip
    proc = cli(command, *args, "--out", target)
    assert f"--out {target} is a file, not a folder" in one_line_error(proc, EXIT_INPUT)
    assert target.read_text() == "not a folder\n"


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", ["finetune", "embed", "train"])
def test_5_device_cuda_without_cuda(command, store, toy, tmp_path):
    """Before: a traceback from torch ('Torch not compiled with CUDA enabled')."""
    args = {"finetune": ("--task", toy, "--epochs", "0.1"), "embed": ("--task", toy),
            "train": ("--store", store, "--seeds", "0")}[command]  # fmt: skip
    proc = cli(command, *args, "--out", tmp_path / "out", "--device", "cuda")
    assert "--device cuda: CUDA is not available here" in one_line_error(proc, EXIT_INPUT)
    assert not (tmp_path / "out").exists()


def test_5_exit_status_tells_input_from_running_failures(monkeypatch, capsys, tmp_path):
    """1 for input, 3 for a failure while running, each one line."""
    from bertvision import cli as cli_module

    def fail(exc):
        def run(args):
            raise exc

        return run

    for exc, code in ((DataError("x.tsv", "bad", line=3), 1), (RunError("busy"), 3),
                      (OSError(28, "No space left on device", str(tmp_path / "f")), 3)):  # fmt: skip
        monkeypatch.setattr(cli_module, "cmd_tasks", fail(exc))
        assert cli_module.main(["tasks"]) == code
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("bertvision: error:")
    assert "f: no space left on device" in err


# ------------------------------------------------------------------------------------------
# 6 (the embed part). A rerun on a complete store says so


def test_6_embed_rerun_on_a_complete_store_says_already_complete(store, toy, tiny_bert_dir):
    """Before: it printed the previous run's rows per second as if it had just run."""
    proc = cli("embed", "--task", toy, "--checkpoint", tiny_bert_dir, "--out", store, "--shard-rows", "16")
    assert proc.returncode == 0, proc.stderr
    assert "rows/s" not in proc.stdout and proc.stdout.count("(already complete; nothing embedded)") == 2


# ------------------------------------------------------------------------------------------
# 7. One process per output folder; a killed holder never blocks a rerun


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder`` (as a running embed would), until killed."""
    code = ("import sys, time; from bertvision.locks import hold\n"
            f"with hold({str(folder)!r}, 'embed store'):\n    print('held', flush=True); time.sleep(600)")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("command", ["embed", "finetune", "train"])
def test_7_a_busy_folder_is_refused_naming_its_holder(command, store, toy, tiny_bert_dir, tmp_path):
    """Before: no lock; both processes wrote, and one could delete the other's temporary files."""
    out = tmp_path / "out"
    folder = out / "train" if command == "embed" else out
    args = {"embed": ("embed", "--task", toy, "--checkpoint", tiny_bert_dir, "--out", out),
            "finetune": ("finetune", "--task", toy, "--encoder", tiny_bert_dir, "--epochs", "0.2", "--out", out),
            "train": ("train", "--store", store, "--seeds", "0", "--epochs", "1", "--out", out)}[command]  # fmt: skip
    holder = _holder(folder)
    try:
        line = one_line_error(cli(*args), EXIT_RUN)
        assert str(folder) in line and f"pid {holder.pid}" in line and "embed store" in line
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    proc = cli(*args)  # the stale lock of the killed holder does not block
    assert proc.returncode == 0, proc.stderr[-2000:]


# ------------------------------------------------------------------------------------------
# 12. Files respect the umask, so teammates on shared storage can read them


def test_12_artifacts_respect_the_umask(toy, tiny_bert_dir, tmp_path):
    """Before: manifests, shards, configs and metrics were 0600 (tempfile.mkstemp's mode)."""
    def run(*args):
        proc = subprocess.run([*bertvision_cli(), *map(str, args)], capture_output=True, text=True, timeout=300,
                              preexec_fn=lambda: os.umask(0o002))  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]

    run("finetune", "--task", toy, "--encoder", tiny_bert_dir, "--epochs", "0.5", "--batch-size", "8",
        "--out", tmp_path / "ft")  # fmt: skip
    run("embed", "--task", toy, "--checkpoint", tmp_path / "ft" / "checkpoint-e0.5", "--out", tmp_path / "emb")
    run("train", "--store", tmp_path / "emb", "--seeds", "0", "--epochs", "1", "--out", tmp_path / "heads")
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "toy" not in p.parts]
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in files}
    assert len(files) > 15 and set(modes.values()) == {"0o664"}, modes
    dirs = {oct(p.stat().st_mode & 0o777) for p in tmp_path.rglob("*") if p.is_dir() and "toy" not in p.parts}
    assert dirs == {"0o775"}, dirs


# ------------------------------------------------------------------------------------------
# Second pass. 6: errors from Ray's trials in one line; 9: smaller things


def last_line_error(proc, code: int) -> str:
    """The command failed with ``code`` and its last stderr line is one error line: no colour
    codes, actor ids or traceback (Ray's own logs above it may have them). A dead worker's log
    lines, "(pid=N) ...", relayed by Ray's log thread, can still land after it: passed over."""
    import re

    assert proc.returncode == code, (proc.returncode, proc.stderr[-3000:])
    worker = re.compile(r"^(\x1b\[[0-9;]*m)*\((\w+ )?pid=\d+")
    last = [x for x in proc.stderr.splitlines() if x.strip() and not worker.match(x)][-1]
    assert last.startswith("bertvision: error: "), proc.stderr[-3000:]
    assert "\x1b[" not in last and "Traceback" not in last and "actor_id" not in last, last
    return last


@pytest.mark.ray
def test_p2_6_a_full_disk_during_the_runs_fine_tuning(small_disk, tmp_path, tiny_bert_dir, shared_ray):
    """Before: the last line was the dead trial's progress bar, drawn again under an error line
    that held Ray's whole remote traceback (colour codes, actor id)."""
    task = write_toy_task(tmp_path / "toy")
    out = small_disk / "run"  # the tiny BERT's checkpoint (~4 MiB) does not fit in 1.5 MiB
    proc = cli("run", "--task", task, "--encoder", tiny_bert_dir, "--seeds", "0", "--trials", "1", "--out", out,
               env=shared_ray.cli_env)  # fmt: skip
    line = last_line_error(proc, EXIT_RUN)
    assert str(out / "finetune" / "seed-0" / "checkpoint-e1") in line and "No space left on device" in line


@pytest.mark.ray
def test_p2_6_a_full_disk_during_the_search(small_disk, store, shared_ray):
    """Before: exit status 1, an uncaught `EOFError` (Tune could not read back the trial errors it
    had failed to save) among a screen of tracebacks, the last line a trial's `OSError` naming no path."""
    import shutil

    (small_disk / "filler").write_bytes(b"\0" * (shutil.disk_usage(small_disk).free - (100 << 10)))
    out = small_disk / "tune"
    proc = cli("tune", "--stores", store, "--trials", "1", "--epochs", "2", "--out", out, env=shared_ray.cli_env)
    line = last_line_error(proc, EXIT_RUN)
    assert str(out) in line and "no space left on device while running search trial" in line


def test_p2_6_a_full_disk_keeps_the_first_error(small_disk, toy):
    """Writing the run's own record of the failure fills no disk that is full already: before,
    its OSError (naming pipeline.json) replaced the stage's error."""
    from bertvision.pipeline import PipelineConfig, Runners, run_pipeline

    def fill_and_fail(base, out, grid):
        with open(small_disk / "filler", "wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        raise RunError(f"{out}/seed-0: no space left on device while fine-tuning")

    runners = Runners(finetune_grid=fill_and_fail, tune=lambda *a: None)
    with pytest.raises(RunError, match="seed-0: no space left on device while fine-tuning"):
        run_pipeline(PipelineConfig(task=str(toy), seeds=(0,)), small_disk / "run", runners, log=lambda line: None)


@pytest.mark.parametrize("bad", ["empty text", "duplicate id"])
def test_p2_9a_bad_task_data_leaves_the_run_folder_untouched(tmp_path, bad, capsys):
    """Before: the run failed in one line but left OUT/pipeline.json (status "stopped"). (The
    command line in this process: it fails before any Ray.)"""
    from types import SimpleNamespace

    from bertvision.cli import main

    def cli(*args):
        code = main([*map(str, args)])
        return SimpleNamespace(returncode=code, stderr=capsys.readouterr().err)

    task = write_toy_task(tmp_path / "toy")
    rows = (tmp_path / "toy" / "train.csv").read_text().splitlines()
    rows[3] = "2, ,stone,0" if bad == "empty text" else "0" + rows[3][rows[3].index(","):]
    (tmp_path / "toy" / "train.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "kept").mkdir()
    for out in (tmp_path / "new", tmp_path / "kept"):
        line = one_line_error(cli("run", "--task", task, "--out", out), EXIT_INPUT)
        assert str(tmp_path / "toy" / "train.csv") + ":4" in line
    assert not (tmp_path / "new").exists() and list((tmp_path / "kept").iterdir()) == []


def test_p2_9b_train_refuses_a_first_layer_the_store_lacks(store, tmp_path):
    """Before: it failed in one line after writing X/config.json."""
    line = one_line_error(cli("train", "--store", store, "--first-layer", "99", "--out", tmp_path / "x"), EXIT_INPUT)
    assert not (tmp_path / "x").exists()
    assert f"--first-layer 99: {store} holds 3 hidden states, 0 to 2" in line


def test_p2_9c_a_train_split_too_small_for_both_parts_is_refused(tmp_path, tiny_bert_dir):
    """Before: 5 rows gave a validation part of one example: a scikit-learn traceback (one example
    cannot hold two labels), or without labels to stratify by (scores) a silent accuracy of 0 or 1."""
    from bertvision.tasks.base import carve_validation

    task = write_toy_task(tmp_path / "toy", n_train=5)
    out = tmp_path / "ft"
    line = one_line_error(cli("finetune", "--task", task, "--encoder", tiny_bert_dir, "--epochs", "1", "--out", out),
                          EXIT_INPUT)  # fmt: skip
    assert (f"{tmp_path / 'toy' / 'train.csv'}: 5 examples give a training part of 4 and a validation part of 1 "
            "(--validation-fraction 0.1); each part needs at least 4 examples (2 per label, at least 4): give at least "
            "35 examples, or another --validation-fraction") in line  # fmt: skip
    assert not out.exists()
    three = np.arange(60) % 3  # three labels: 6 in each part
    with pytest.raises(ConfigError, match="60 examples give a training part of 57 and a validation part of 3"):
        carve_validation(three, 60, 0.05, 0)
    assert len(carve_validation(three, 60, 0.1, 0)[1]) == 6
    with pytest.raises(ConfigError, match="5 examples give a training part of 4 and a validation part of 1"):
        carve_validation(None, 5, 0.1, 0)  # scores
    assert len(carve_validation(None, 40, 0.1, 0)[1]) == 4


def test_p2_9d_a_csv_field_of_a_megabyte_is_text(tmp_path):
    """Before: a 1 MB cell was "malformed row: field larger than field limit (131072)"."""
    from bertvision.tasks import get_task

    task = write_toy_task(tmp_path / "toy")
    train = tmp_path / "toy" / "train.csv"
    rows = train.read_text().splitlines()
    long = " ".join(["river"] * 200_000)  # 1.2 MB
    train.write_text("\n".join([*rows[:2], f'1,"{long}",stone,1', *rows[3:]]) + "\n")
    assert get_task(str(task)).load("train").texts[0][1] == long
    from bertvision.tasks.readers import FIELD_LIMIT  # over it: most likely an unclosed quote

    train.write_text("\n".join([*rows[:2], '1,"' + "x" * (FIELD_LIMIT + 1) + '",stone,1', *rows[3:]]) + "\n")
    with pytest.raises(DataError, match=rf"train.csv:3: malformed row: a field of more than {FIELD_LIMIT:,} characters, "
                                        "over the CSV reader's limit"):  # fmt: skip
        get_task(str(task)).load("train")
