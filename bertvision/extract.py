"""Hidden states of every layer (embedding output included) for a batch of examples.

`HiddenStateExtractor` is a callable class so Ray Data can map it over a dataset later
(``ds.map_batches(HiddenStateExtractor, fn_constructor_kwargs=...)``): ``__init__`` loads the
encoder once, ``__call__(batch)`` turns a dict of columns into a dict of arrays. The same class
runs in a plain loop here (`extract_split`), so nothing needs Ray.

Token selections:
- ``cls``: the first position of every layer -> (L, H) per example.
- ``mean``: the mean over real (unpadded) tokens of every layer -> (L, H) per example.
- ``tokens``: every real token of every layer -> (T, L, H) per window, T varying (no padding
  is kept). Input rows are already tokenised SQuAD windows (`bertvision.spans.make_windows`);
  when the checkpoint is a question-answering model its own start/end logits come along, so
  ensembles can include the fine-tuned encoder. With ``sentence_tokens`` the rows are sentence
  examples instead (text, or tokenised upstream): every real token of the sentence (or pair)
  -> (T, L, H), with each token's sentence (0 or 1, ``segments``) and, from a sequence
  checkpoint, its task head's outputs per example as for ``cls``/``mean``.

Likewise for ``cls`` and ``mean``: when the checkpoint is a sequence classification (or
regression) model from 'bertvision finetune', its own task head's outputs come along, (N, C)
float32 per batch. For BERT the head (the pooler on the last layer's CLS state, then the
classifier) is applied to the last hidden state already computed; other architectures get one
more forward pass of the whole model on the same batch.

Why it is fast: inference mode; examples sorted by length and cut into batches that are padded
only to their own longest example (GLUE sentences average about half of 128 tokens); SDPA
attention; bf16 autocast on CUDA; float16 output, the store's dtype.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np

from bertvision.errors import ConfigError

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
    """Turns a batch of examples into every layer's hidden states for one checkpoint.

    Args:
      checkpoint: a fine-tuning checkpoint folder, an encoder folder, a Hub id, or None for the
        bundled all-MiniLM-L6-v2.
      text_fields: the batch columns holding the text(s), in tokenizer order (1 or 2).
      selection: one of `SELECTIONS`.
      max_length: tokens per example after truncation.
      batch_size: examples per forward pass (after sorting by length).
      device: "cpu", "cuda", ...; None picks CUDA when available.
      autocast: run in bf16 autocast on CUDA (ignored on CPU, where bf16 is slow without AMX).
      quantize: ``"int8"``: dynamic int8 quantisation of the Linear layers, CPU only. Opt-in:
        about 3x faster on a 2-core AVX2 machine, at a measured accuracy cost (docs/RESULTS.md).
      task_head: ``cls``/``mean`` (and sentence tokens): also give a sequence checkpoint's own
        head outputs (``encoder_logits``) when it has one; off where the store should not hold them.
      sentence_tokens: ``tokens`` of sentence examples (a sentence task) rather than span windows.
    """

    def __init__(
        self,
        checkpoint: str | None,
        text_fields: Sequence[str],
        *,
        selection: str = "cls",
        max_length: int = 128,
        batch_size: int = 16,
        device: str | None = None,
        autocast: bool = True,
        quantize: str | None = None,
        task_head: bool = True,
        sentence_tokens: bool = False,
    ):
        if selection not in SELECTIONS:
            raise ConfigError(f"--selection must be one of {SELECTIONS}, not {selection!r}")
        if not 1 <= len(text_fields) <= 2:
            raise ConfigError("text_fields must name 1 or 2 columns")
        if batch_size <= 0 or max_length < 8:
            raise ConfigError("batch_size must be positive and max_length at least 8")
        from bertvision.encoders import load_encoder
        from bertvision.runtime import pick_device, quiet_transformers

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
        if sentence_tokens and selection != "tokens":
            raise ConfigError("sentence_tokens goes with selection 'tokens'")
        self.sentence_tokens = sentence_tokens
        windows = selection == "tokens" and not sentence_tokens
        self.qa_head = _qa_head(self.info.location, self.device) if windows else None
        self.task_head = _task_head(self.info.location, self.device) if task_head and not windows else None

    @property
    def output_shape(self) -> tuple[int, int]:
        """(L, H): hidden states per example (embedding output + each layer) and their width."""
        return self.info.num_hidden_states, self.info.hidden_size

    @property
    def has_encoder_logits(self) -> bool:
        """True when the checkpoint carries its task head: a question-answering head
        (``tokens``) or a sequence classification / regression head (``cls``, ``mean``)."""
        return self.qa_head is not None or self.task_head is not None

    @property
    def encoder_outputs(self) -> int | None:
        """C, the sequence head's outputs per example (``cls``/``mean`` with a task head), else None."""
        return None if self.task_head is None else self.task_head.outputs

    def __call__(self, batch: Mapping[str, Sequence]) -> dict:
        """``{"id", text fields..., ["label"]}`` -> ``{"id", "hidden" (N, L, H) float16, ["label"]}``,
        plus ``encoder_logits`` (N, C) float32 when the checkpoint has a sequence task head.

        For ``tokens``: ``{"id", "example_id", "input_ids", ["token_type_ids"], "offsets",
        ["label"]}`` (tokenised windows) -> the same minus the token ids, plus ``hidden`` (a list
        of (T_i, L, H) float16) and, for a question-answering checkpoint, ``encoder_logits`` (a
        list of (T_i, 2) float32).
        """
        if self.sentence_tokens:
            return self._call_sentence_tokens(batch)
        if self.selection == "tokens":
            return self._call_tokens(batch)
        if "input_ids" in batch:  # tokenised upstream (a Ray Data CPU task: `tokenize_batch`)
            encoded = {k: [list(x) for x in batch[k]] for k in ("input_ids", "token_type_ids") if k in batch}
            encoded["attention_mask"] = [[1] * len(x) for x in encoded["input_ids"]]
        else:
            encoded = tokenize_batch(batch, self.tokenizer, self.text_fields, self.max_length)
        hidden, logits = self.encode_with_logits(encoded)
        out = {"id": np.asarray(batch["id"]).astype(str), "hidden": hidden}
        if logits is not None:
            out["encoder_logits"] = logits
        if "label" in batch:
            out["label"] = np.asarray(batch["label"])
        return out

    def encode(self, encoded: Mapping[str, list[list[int]]]) -> np.ndarray:
        """Hidden states (N, L, H) float16 for already tokenised examples, in input order."""
        return self.encode_with_logits(encoded)[0]

    def encode_with_logits(self, encoded: Mapping[str, list[list[int]]]) -> tuple[np.ndarray, np.ndarray | None]:
        """`encode`, and the checkpoint's sequence head outputs (N, C) float32 in input order
        when it has one (else None)."""
        import torch

        ids = encoded["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")  # longest first: a too-big batch fails early
        out = np.empty((len(ids), *self.output_shape), dtype=np.float16)
        head = self.task_head
        logits = np.empty((len(ids), head.outputs), dtype=np.float32) if head is not None else None
        select = _SELECT[self.selection]
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._pad(encoded, idx, int(lengths[idx[0]]))
                states = self.model(**batch, output_hidden_states=True).hidden_states  # L x (B, T, H)
                out[idx] = select(states, batch["attention_mask"]).to(torch.float16).cpu().numpy()
                if head is not None:
                    logits[idx] = head(states[-1], batch)
                self.tokens_seen += int(lengths[idx].sum())
        return out, logits

    def _call_tokens(self, batch: Mapping[str, Sequence]) -> dict:
        encoded = {k: [list(x) for x in batch[k]] for k in ("input_ids", "token_type_ids") if k in batch}
        encoded["attention_mask"] = [[1] * len(x) for x in encoded["input_ids"]]
        hidden, logits = self.encode_tokens(encoded)
        out = {"id": np.asarray(batch["id"]).astype(str), "example_id": np.asarray(batch["example_id"]).astype(str),
               "offsets": [np.asarray(o, dtype=np.int32).reshape(-1, 2) for o in batch["offsets"]],
               "hidden": hidden}  # fmt: skip
        if logits is not None:
            out["encoder_logits"] = logits
        if "label" in batch:
            out["label"] = np.asarray([np.asarray(x) for x in batch["label"]], dtype=np.int64).reshape(-1, 2)
        return out

    def _call_sentence_tokens(self, batch: Mapping[str, Sequence]) -> dict:
        """Sentence examples -> ``{"id", "hidden" (list of (T_i, L, H)), "segments" (list of
        (T_i,) int8), ["label"], ["encoder_logits" (N, C)]}``."""
        if "input_ids" in batch:  # tokenised upstream (a Ray Data CPU task), with segments
            encoded = {k: [list(x) for x in batch[k]] for k in ("input_ids", "token_type_ids", "segments") if k in batch}
            encoded["attention_mask"] = [[1] * len(x) for x in encoded["input_ids"]]
        else:
            encoded = tokenize_batch(batch, self.tokenizer, self.text_fields, self.max_length, segments=True)
        hidden, logits = self.encode_tokens(encoded)
        out = {"id": np.asarray(batch["id"]).astype(str), "hidden": hidden,
               "segments": [np.asarray(x, dtype=np.int8) for x in encoded["segments"]]}  # fmt: skip
        if logits is not None:
            out["encoder_logits"] = logits
        if "label" in batch:
            out["label"] = np.asarray(batch["label"])
        return out

    def encode_tokens(self, encoded: Mapping[str, list[list[int]]]) -> tuple[list[np.ndarray], list[np.ndarray] | None]:
        """Every real token's hidden states, (T_i, L, H) float16 per input, in input order; and
        the QA head's (T_i, 2) float32 start/end logits when the checkpoint has one (else None),
        or for sentence tokens the sequence head's outputs, (N, C) float32."""
        import torch

        ids = encoded["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")
        hidden: list = [None] * len(ids)
        logits: list | None = [None] * len(ids) if self.qa_head is not None else None
        head = self.task_head
        task = np.empty((len(ids), head.outputs), dtype=np.float32) if head is not None else None
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._pad(encoded, idx, int(lengths[idx[0]]))
                states = self.model(**batch, output_hidden_states=True).hidden_states  # L x (B, T, H)
                stacked = torch.stack(states, dim=2).to(torch.float16).cpu().numpy()  # (B, T, L, H)
                if logits is not None:
                    qa = self.qa_head(states[-1].float()).cpu().numpy()  # (B, T, 2)
                if task is not None:
                    task[idx] = head(states[-1], batch)
                for row, i in enumerate(idx):
                    hidden[i] = stacked[row, : lengths[i]]
                    if logits is not None:
                        logits[i] = qa[row, : lengths[i]]
                self.tokens_seen += int(lengths[idx].sum())
        return hidden, (task if task is not None else logits)

    def _pad(self, encoded, idx, width: int) -> dict:
        """Right-pad the examples at ``idx`` to ``width`` tokens (their longest), as tensors."""
        import torch

        pad_id = self.tokenizer.pad_token_id or 0
        batch = {}
        for key in ("input_ids", "attention_mask", "token_type_ids"):
            if key not in encoded:
                continue
            fill = pad_id if key == "input_ids" else 0
            arr = np.full((len(idx), width), fill, dtype=np.int64)
            for row, i in enumerate(idx):
                seq = encoded[key][i]
                arr[row, : len(seq)] = seq
            batch[key] = torch.from_numpy(arr).to(self.device)
        return batch


def has_qa_head(location: str) -> bool:
    """True when the checkpoint folder's safetensors hold a question-answering output layer."""
    from safetensors import safe_open

    weights = Path(location) / "model.safetensors"
    if not weights.is_file():
        return False
    with safe_open(str(weights), framework="pt") as f:
        return {"qa_outputs.weight", "qa_outputs.bias"} <= set(f.keys())


def _qa_head(location: str, device):
    """The checkpoint's question-answering output layer (H -> 2), or None if it has none.

    `AutoModelForQuestionAnswering` puts one Linear (``qa_outputs``) on the last hidden state;
    applying that layer to the last state the extractor computes anyway gives exactly the
    fine-tuned model's start/end logits, without a second forward pass.
    """
    import torch
    from safetensors import safe_open

    if not has_qa_head(location):
        return None
    with safe_open(str(Path(location) / "model.safetensors"), framework="pt") as f:
        w, b = f.get_tensor("qa_outputs.weight"), f.get_tensor("qa_outputs.bias")
    layer = torch.nn.Linear(w.shape[1], w.shape[0])
    with torch.no_grad():
        layer.weight.copy_(w.float())
        layer.bias.copy_(b.float())
    return layer.to(device).eval()


SEQUENCE_HEADS = ("ForSequenceClassification",)


def has_task_head(location: str) -> bool:
    """True when the checkpoint folder is a sequence classification / regression model (its
    config names a ``...ForSequenceClassification`` architecture and its safetensors hold the
    classifier), as 'bertvision finetune' writes for sentence tasks."""
    from safetensors import safe_open

    folder = Path(location)
    weights, config = folder / "model.safetensors", folder / "config.json"
    if not (weights.is_file() and config.is_file()):
        return False
    try:
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return False
    if not any(a.endswith(SEQUENCE_HEADS) for a in architectures):
        return False
    with safe_open(str(weights), framework="pt") as f:
        return any(k.startswith("classifier.") for k in f.keys())


class _TaskHead:
    """A sequence checkpoint's own head, giving its logits (or regression predictions) for a
    batch whose hidden states the extractor has just computed.

    For BERT (`BertForSequenceClassification`: ``bert.pooler``, dense + tanh on the last
    layer's CLS state, then ``classifier``; dropout is off in eval mode) the model's own pooler
    and classifier modules are applied to the last hidden state, in float32 as the fine-tuned
    model computes them, with no second pass. Any other architecture (RoBERTa's or
    DistilBERT's heads differ) runs the whole fine-tuned model on the same batch once more.
    """

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

    @property
    def reuses_states(self) -> bool:
        return self.model is None

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
    from bertvision.encoders import load_task_model

    model = load_task_model(location, device, "sequence")
    head = _TaskHead(model)
    del model  # with BERT, only the pooler and classifier stay referenced
    return head


def _quantize(model, kind: str, device):
    import warnings

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
    """``input_ids`` (and ``token_type_ids``, ``attention_mask``; with ``segments`` each token's
    sentence) of a batch's text fields, unpadded.

    ``tokenizer`` is a tokenizer or the location to load one from (cached per process), so a
    Ray Data CPU task can tokenise without an extractor.
    """
    from bertvision.encoders import tokenize

    if isinstance(tokenizer, str) or tokenizer is None:
        tokenizer = _cached_tokenizer(tokenizer)
    texts = [list(map(str, batch[f])) for f in text_fields]
    return tokenize(tokenizer, texts[0], texts[1] if len(texts) > 1 else None, max_length=max_length, segments=segments)


_TOKENIZERS: dict = {}


def _cached_tokenizer(location: str | None):
    from bertvision.encoders import load_tokenizer

    if location not in _TOKENIZERS:
        _TOKENIZERS[location] = load_tokenizer(location)
    return _TOKENIZERS[location]


def iter_split_batches(split, rows_per_batch: int, start: int = 0, stop: int | None = None) -> Iterator[dict]:
    """Column batches ``{"id", text fields..., ["label"]}`` of rows [start, stop) of a split."""
    stop = len(split) if stop is None else stop
    for lo in range(start, stop, rows_per_batch):
        hi = min(lo + rows_per_batch, stop)
        batch = {"id": split.ids[lo:hi]}
        for field, texts in zip(split.task.text_fields, split.texts, strict=True):
            batch[field] = texts[lo:hi]
        if split.labels is not None:
            batch["label"] = split.labels[lo:hi]
        yield batch
