"""Hidden states of every layer (embedding output included) for a batch of examples.

`HiddenStateExtractor` is a callable class, so Ray Data maps it over a dataset and a plain loop
runs it here: ``cls`` / ``mean`` give (L, H) per example, ``tokens`` every real token (T, L, H)
of SQuAD windows or sentence examples, and a checkpoint's own task head comes along. Fast by
batches of similar length padded to their own longest, SDPA, bf16 autocast on CUDA, float16 out."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path

import numpy as np

from bertvision.encoders import (
    length_batches,
    load_encoder,
    load_task_model,
    load_tokenizer,
    tokenize,
)
from bertvision.errors import ConfigError
from bertvision.runtime import pick_device, quiet_transformers

SELECTIONS = ("cls", "mean", "tokens")


def _select_cls(hidden_states, attention_mask):
    import torch

    return torch.stack([h[:, 0] for h in hidden_states], dim=1)  # (B, L, H)


def _select_mean(hidden_states, attention_mask):
    import torch

    mask = attention_mask.unsqueeze(-1).to(hidden_states[0].dtype)  # (B, T, 1)
    count = mask.sum(dim=1).clamp(min=1)  # (B, 1)
    return torch.stack([(h * mask).sum(dim=1) / count for h in hidden_states], dim=1)  # (B, L, H)


_SELECT = {"cls": _select_cls, "mean": _select_mean}


class HiddenStateExtractor:
    """Every layer's hidden states of a batch of examples under one checkpoint (a fine-tuning
    checkpoint, an encoder folder, a Hub id; None: the bundled encoder). ``text_fields``: the
    batch's text columns in tokenizer order; ``sentence_tokens``: ``tokens`` of sentence examples
    rather than span windows; ``autocast``: bf16 on CUDA only (slow on CPUs without AMX);
    ``quantize="int8"``: about 3x faster on a 2-core AVX2 CPU, at a measured accuracy cost
    (docs/RESULTS.md); ``task_head``: also a sequence checkpoint's own outputs. ``selection``
    may name several of cls and mean (predictions for heads of both): hidden is then a dict."""

    def __init__(self, checkpoint: str | None, text_fields: Sequence[str], *, selection: str | tuple = "cls",
                 max_length: int = 128, batch_size: int = 16, device: str | None = None, autocast: bool = True,
                 quantize: str | None = None, task_head: bool = True, sentence_tokens: bool = False):  # fmt: skip
        chosen = (selection,) if isinstance(selection, str) else tuple(selection)
        if not chosen or not set(chosen) <= set(SELECTIONS) or (len(chosen) > 1 and "tokens" in chosen):
            raise ConfigError(f"--selection must be one of {SELECTIONS}, not {selection!r}")
        if not 1 <= len(text_fields) <= 2:
            raise ConfigError("text_fields must name 1 or 2 columns")
        if batch_size <= 0 or max_length < 8:
            raise ConfigError("batch_size must be positive and max_length at least 8")
        self.selects = {s: _SELECT[s] for s in chosen if s in _SELECT}  # none: every token
        self.select = self.selects or None
        if sentence_tokens and self.select is not None:
            raise ConfigError("sentence_tokens goes with selection 'tokens'")
        quiet_transformers()
        self.device = pick_device(device)
        encoder = load_encoder(checkpoint, device=self.device)
        self.model, self.tokenizer, self.info = encoder.model, encoder.tokenizer, encoder.info
        if quantize is not None:
            self.model = _quantize(self.model, quantize, self.device)
        self.text_fields = tuple(text_fields)
        self.selection, self.max_length, self.batch_size = selection, max_length, batch_size
        self.autocast = autocast and self.device.type == "cuda"
        self.tokens_seen = 0
        self.sentence_tokens = sentence_tokens
        self.windows = self.select is None and not sentence_tokens
        self.qa_head = _qa_head(self.info.location, self.device) if self.windows else None
        self.task_head = _task_head(self.info.location, self.device) if task_head and not self.windows else None

    @property
    def output_shape(self) -> tuple[int, int]:
        """(L, H): the hidden states (embedding output + each layer) and their width."""
        return self.info.num_hidden_states, self.info.hidden_size

    @property
    def has_encoder_logits(self) -> bool:
        """Whether the checkpoint carries its task head (question answering, or a sequence head)."""
        return self.qa_head is not None or self.task_head is not None

    def __call__(self, batch: Mapping[str, Sequence]) -> dict:
        """``{"id", text fields (or tokenised: "input_ids"...), ["label"]}`` -> ``{"id", "hidden",
        ["label"], ["encoder_logits"]}``: hidden (N, L, H) float16, or a list of (T_i, L, H);
        encoder_logits (N, C) float32, or a list of (T_i, 2) from a question-answering head.
        Windows come tokenised and keep "example_id" and "offsets"; sentence tokens add
        "segments" (each token's sentence, 0 or 1)."""
        if "input_ids" in batch:
            keys = ("input_ids", "token_type_ids", "segments")
            encoded = {k: [list(x) for x in batch[k]] for k in keys if k in batch}
            encoded["attention_mask"] = [[1] * len(x) for x in encoded["input_ids"]]
        else:
            encoded = tokenize_batch(batch, self.tokenizer, self.text_fields, self.max_length,
                                     segments=self.sentence_tokens)  # fmt: skip
        hidden, logits = self._encode(encoded)
        out = {"id": np.asarray(batch["id"]).astype(str), "hidden": hidden}
        if self.windows:
            out["example_id"] = np.asarray(batch["example_id"]).astype(str)
            out["offsets"] = [np.asarray(o, dtype=np.int32).reshape(-1, 2) for o in batch["offsets"]]
        if self.sentence_tokens:
            out["segments"] = [np.asarray(x, dtype=np.int8) for x in encoded["segments"]]
        if logits is not None:
            out["encoder_logits"] = logits
        if "label" in batch and self.windows:
            out["label"] = np.asarray([np.asarray(x) for x in batch["label"]], dtype=np.int64).reshape(-1, 2)
        elif "label" in batch:
            out["label"] = np.asarray(batch["label"])
        return out

    def encode(self, encoded: Mapping[str, list[list[int]]]) -> np.ndarray:
        """Hidden states for already tokenised examples, in input order."""
        return self._encode(encoded)[0]

    def _encode(self, encoded: Mapping[str, list[list[int]]]) -> tuple:
        """`encode`, and the checkpoint's head outputs in input order (None without a head)."""
        import torch

        ids = encoded["input_ids"]
        n, lengths = len(ids), np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        hidden = [None] * n if self.select is None else {s: np.empty((n, *self.output_shape), np.float16) for s in self.selects}
        qa = [None] * n if self.qa_head is not None else None
        head = self.task_head
        task = np.empty((n, head.outputs), dtype=np.float32) if head is not None else None
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
            for idx in length_batches(lengths, self.batch_size):  # longest first: a too-big batch fails early
                batch = self._pad(encoded, idx, int(lengths[idx[0]]))
                states = self.model(**batch, output_hidden_states=True).hidden_states  # L x (B, T, H)
                for s, select in self.selects.items():
                    hidden[s][idx] = select(states, batch["attention_mask"]).to(torch.float16).cpu().numpy()
                if self.select is None:
                    stacked = torch.stack(states, dim=2).to(torch.float16).cpu().numpy()  # (B, T, L, H)
                    for row, i in enumerate(idx):
                        hidden[i] = stacked[row, : lengths[i]]
                if qa is not None:
                    starts_ends = self.qa_head(states[-1].float()).cpu().numpy()  # (B, T, 2)
                    for row, i in enumerate(idx):
                        qa[i] = starts_ends[row, : lengths[i]]
                if task is not None:
                    task[idx] = head(states[-1], batch)
                self.tokens_seen += int(lengths[idx].sum())
        if isinstance(hidden, dict) and isinstance(self.selection, str):
            hidden = hidden[self.selection]
        return hidden, (task if task is not None else qa)

    def _pad(self, encoded, idx, width: int) -> dict:
        """Right-pad the examples at ``idx`` to ``width`` tokens (their longest), as tensors."""
        import torch

        batch = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in encoded:
                continue
            fill = (self.tokenizer.pad_token_id or 0) if key == "input_ids" else 0
            arr = np.full((len(idx), width), fill, dtype=np.int64)
            for row, i in enumerate(idx):
                seq = encoded[key][i]
                arr[row, : len(seq)] = seq
            batch[key] = torch.from_numpy(arr).to(self.device)
        return batch


def _qa_weights(location: str):
    """(weight, bias) of the checkpoint's question-answering layer (``qa_outputs``), or None."""
    from safetensors import safe_open

    weights = Path(location) / "model.safetensors"
    if not weights.is_file():
        return None
    with safe_open(str(weights), framework="pt") as f:
        if {"qa_outputs.weight", "qa_outputs.bias"} <= set(f.keys()):
            return f.get_tensor("qa_outputs.weight"), f.get_tensor("qa_outputs.bias")
    return None


def has_qa_head(location: str) -> bool:
    return _qa_weights(location) is not None


def _qa_head(location: str, device):
    """`AutoModelForQuestionAnswering`'s one Linear (H -> 2), applied to the last hidden state the
    extractor computes anyway (no second pass); None when the checkpoint has none."""
    import torch

    if (found := _qa_weights(location)) is None:
        return None
    w, b = found
    layer = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w.float())
        layer.bias.copy_(b.float())
    return layer.to(device).eval()


def has_task_head(location: str) -> bool:
    """True when the checkpoint folder is a sequence classification / regression model, as
    'bertvision finetune' writes for sentence tasks (architecture and classifier weights)."""
    from safetensors import safe_open

    folder = Path(location)
    weights, config = folder / "model.safetensors", folder / "config.json"
    if not (weights.is_file() and config.is_file()):
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        return False
    with safe_open(str(weights), framework="pt") as f:
        return any(k.startswith("classifier.") for k in f.keys())


class _TaskHead:
    """A sequence checkpoint's own head outputs for a batch the extractor has just run. For BERT
    its pooler and classifier on the last hidden state, in float32 as the fine-tuned model
    computes them (no second pass); other architectures' heads differ, and run the whole model."""

    def __init__(self, model):
        import torch

        self.outputs = int(model.config.num_labels)
        bert = getattr(model, "bert", None)
        pooler, classifier = getattr(bert, "pooler", None), getattr(model, "classifier", None)
        if type(model).__name__ == "BertForSequenceClassification" and isinstance(pooler, torch.nn.Module) \
                and isinstance(classifier, torch.nn.Linear):  # fmt: skip
            self.pooler, self.classifier, self.model = pooler.eval(), classifier.eval(), None
        else:
            self.pooler = self.classifier = None
            self.model = model.eval()

    def __call__(self, last_state, batch: dict) -> np.ndarray:
        import torch

        with torch.autocast(last_state.device.type, enabled=False):
            if self.model is None:
                logits = self.classifier(self.pooler(last_state.float()))
            else:
                logits = self.model(**batch).logits
        return logits.float().cpu().numpy()


def _task_head(location: str, device) -> _TaskHead | None:
    """The checkpoint's sequence task head (`_TaskHead`), or None if it has none."""
    if not has_task_head(location):
        return None
    model = load_task_model(location, device, "sequence")
    head = _TaskHead(model)
    del model  # with BERT, only the pooler and classifier stay referenced
    return head


def _quantize(model, kind: str, device):
    import torch

    if kind != "int8":
        raise ConfigError(f"--quantize must be 'int8', not {kind!r}")
    if device.type != "cpu":
        raise ConfigError("--quantize int8 runs on the CPU only (dynamic quantisation has no CUDA kernels)")
    with warnings.catch_warnings():  # torch.ao.quantization announces its move to torchao
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def tokenize_batch(batch: Mapping[str, Sequence], tokenizer, text_fields: Sequence[str], max_length: int,
                   segments: bool = False) -> dict:  # fmt: skip
    """`tokenize` a batch's text fields; ``tokenizer`` may be the location to load one from
    (cached per process), so a Ray Data CPU task tokenises without an extractor."""
    if isinstance(tokenizer, str) or tokenizer is None:
        tokenizer = _cached_tokenizer(tokenizer)
    texts = [list(map(str, batch[f])) for f in text_fields]
    return tokenize(tokenizer, texts[0], texts[1] if len(texts) > 1 else None, max_length=max_length, segments=segments)


@cache
def _cached_tokenizer(location: str | None):
    return load_tokenizer(location)


def iter_split_batches(split, rows_per_batch: int, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Column batches ``{"id", text fields..., ["label"]}`` of rows [start, stop) of a split."""
    stop = len(split) if stop is None else stop
    for lo in range(start, stop, rows_per_batch):
        hi = min(lo + rows_per_batch, stop)
        batch = {"id": split.ids[lo:hi], **{f: t[lo:hi] for f, t in zip(split.task.text_fields, split.texts, strict=True)}}
        if split.labels is not None:
            batch["label"] = split.labels[lo:hi]
        yield batch
