"""Sizes are checked before they are trusted: a store manifest's against its shards' Parquet
footers, a head config's against its weights file's tensor shapes, before anything is allocated
from them (hardening, second pass, item 3). Each test fails on the code before the fix (what it
did then is said in the docstring)."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from bertvision import store as st
from bertvision.config import HeadTrainConfig, Optimisation
from bertvision.embed import EmbedConfig, embed
from bertvision.errors import EXIT_INPUT, DataError
from bertvision.train import HEAD_CONFIG, train_heads
from tests.conftest import bertvision_cli, write_toy_task
from tests.test_hardening import one_line_error


def run(tmp_path: Path, *args) -> tuple[subprocess.CompletedProcess, int]:
    """A command-line run and its own peak resident memory in bytes (from wait4)."""
    err = tmp_path / "stderr.txt"
    with err.open("w") as f:
        proc = subprocess.Popen(
            [*bertvision_cli(), *map(str, args)], stdout=subprocess.DEVNULL, stderr=f
        )
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return subprocess.CompletedProcess(args, proc.returncode, "", err.read_text()), usage.ru_maxrss * 1024  # fmt: skip


def edit_json(file: Path, change) -> None:
    data = json.loads(file.read_text())
    change(data)
    file.write_text(json.dumps(data))


@pytest.fixture(scope="module")
def store(tmp_path_factory, tiny_bert_dir) -> Path:
    """A store of the toy task from the tiny BERT: (3, 32) states, train 80 rows in 5 shards, dev 24."""
    root = tmp_path_factory.mktemp("sizes")
    out = root / "emb"
    embed(
        EmbedConfig(
            task=str(write_toy_task(root / "toy")), checkpoint=str(tiny_bert_dir), shard_rows=16
        ),
        out,
    )
    return out


@pytest.fixture(scope="module")
def head(store, tmp_path_factory) -> Path:
    """A head trained one epoch on `store` (adapter_size 64): its seed-0 folder."""
    out = tmp_path_factory.mktemp("sizes-head") / "heads"
    train_heads(HeadTrainConfig(store=str(store), seeds=(0,), optim=Optimisation(epochs=1)), out)
    return out / "seed-0"


def edited_head(head: Path, folder: Path, adapter_size: int) -> Path:
    shutil.copytree(head, folder)
    edit_json(
        folder / HEAD_CONFIG, lambda meta: meta["adapter_pooler"].update(adapter_size=adapter_size)
    )
    return folder


@pytest.fixture(scope="module")
def baseline(store, head, tmp_path_factory) -> int:
    """The peak resident memory in bytes of `evaluate` refusing a head config edited to a size
    close to the weights' (adapter_size 65 for 64): what refusing costs when nothing is big."""
    tmp = tmp_path_factory.mktemp("baseline")
    proc, peak = run(
        tmp, "evaluate", "--head", edited_head(head, tmp / "seed-0", 65), "--store", store / "dev"
    )
    assert proc.returncode == EXIT_INPUT, proc.stderr[-3000:]
    return peak


@pytest.mark.parametrize("hidden_size", [10**6, 10**9])
def test_train_checks_the_manifest_sizes_against_the_shards(store, tmp_path, hidden_size):
    """Before: `train` on a manifest edited to num_hidden_states 1000 and this hidden_size
    allocated the whole split at those sizes first: a numpy MemoryError traceback."""
    bad = tmp_path / "emb"
    shutil.copytree(store, bad)

    def grow(m):
        m["num_hidden_states"], m["hidden_size"] = 1000, hidden_size

    edit_json(bad / "train" / st.MANIFEST_NAME, grow)
    proc, _ = run(tmp_path, "train", "--store", bad, "--out", tmp_path / "heads")
    line = one_line_error(proc, EXIT_INPUT)
    assert str(bad / "train" / "shard-00000.parquet") in line
    assert (
        f"(L, H) = (3, 32) per row, but the manifest has num_hidden_states, hidden_size = (1000, {hidden_size})"
        in line
    )
    assert not (tmp_path / "heads").exists()


@pytest.mark.parametrize("adapter_size", [10**6, 10**9])
def test_evaluate_checks_the_head_config_sizes_against_the_weights(
    store, head, baseline, tmp_path, adapter_size
):
    """Before: `evaluate` on a head config edited to this adapter_size built the head at that
    size first: 10**9, a torch allocation traceback; 10**6, a head of 39 M weights (150 MB more
    memory than the baseline) before loading noticed, in a message of several lines."""
    bad = edited_head(head, tmp_path / "seed-0", adapter_size)
    proc, peak = run(tmp_path, "evaluate", "--head", bad, "--store", store / "dev")
    line = one_line_error(proc, EXIT_INPUT)
    assert f"{bad / HEAD_CONFIG}: does not fit head.safetensors" in line
    assert (
        f"adapter.linear.weight ({adapter_size}, 32) by the config, (64, 32) in the weights" in line
    )
    assert peak < baseline + 64 * 2**20, (peak, baseline)  # nothing was built at the config's size


def _vectors_store(path: Path, **spec) -> Path:
    """A 50-row store of (3, 8) states in 4 shards (`tests.test_store`), with encoder logits of
    width 3 where asked."""
    from tests.test_store import make_data, make_spec

    spec = make_spec(**spec)
    ids, hidden, labels = make_data(label_kind=spec.label_kind)
    writer = st.StoreWriter(path, spec, len(ids))
    logits = np.zeros((len(ids), 3), np.float32) if spec.encoder_logits else None
    for k in writer.pending_shards():
        a, b = writer.shard_range(k)
        writer.write_shard(
            k,
            ids[a:b],
            hidden[a:b],
            labels[a:b],
            encoder_logits=None if logits is None else logits[a:b],
        )
    writer.finish()
    return path


def _windows_store(path: Path) -> Path:
    from tests.test_store_tokens import build

    build(path)
    return path


def _rows(m):  # one shard said to hold 10**12 rows: the manifest's plan still adds up
    m["rows"] = m["shard_rows"] = 10**12
    m["shards"] = [{**m["shards"][0], "rows": 10**12}]


@pytest.mark.parametrize(
    "make, change, problem",
    [
        (_vectors_store, _rows, "expected 1000000000000 rows, found 16"),
        (lambda p: _vectors_store(p, encoder_logits=True, encoder_outputs=3),
         lambda m: m.update(encoder_outputs=10**9), "'encoder_logits' holds (C) = (3,) per row, but the manifest has "
                                                    "encoder_outputs = (1000000000,)"),
        (_windows_store, lambda m: m.update(hidden_size=10**9),
         "'hidden' holds (L, H) = (3, 4) per token, but the manifest has num_hidden_states, hidden_size = (3, 1000000000)"),
    ],
    ids=["rows", "encoder_outputs", "token-store-hidden_size"],
)  # fmt: skip
def test_load_split_checks_every_size_before_allocating(tmp_path, make, change, problem):
    """Before: load_split allocated rows (or tokens) x the manifest's value shape first: a numpy
    MemoryError."""
    folder = make(tmp_path / "store")
    edit_json(folder / st.MANIFEST_NAME, change)
    with pytest.raises(DataError, match=re.escape(f"{folder / st.shard_file(0)}: {problem}")):
        st.load_split(folder)
