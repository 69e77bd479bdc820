"""Hidden states of every layer (embedding output included) for a batch of examples.

`HiddenStateExtractor` is a callable class so Ray Data can map it over a dataset later
(``ds.map_batches(HiddenStateExtractor, fn_constructor_kwargs=...)``): ``__init__`` loads the
encoder once, ``__call__(batch)`` turns a dict of columns into a dict of arrays. The same class
runs in a plain loop here (`extract_split`), so nothing needs Ray.

Token selections:
- ``cls``: the first position of every layer -> (L, H) per example.
- ``mean``: the mean over real (unpadded) tokens of every layer -> (L, H) per example.
(Token-level selection for spans comes with SQuAD; `SELECTIONS` is where it plugs in.)

Why it is fast: inference mode; examples sorted by length and cut into batches that are padded
only to their own longest example (GLUE sentences average about half of 128 tokens); SDPA
attention; bf16 autocast on CUDA; float16 output, the store's dtype.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from bertvision.errors import ConfigError

SELECTIONS = ("cls", "mean")


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
    ):
        if selection not in SELECTIONS:
            raise ConfigError(f"--selection must be one of {SELECTIONS}, not {selection!r}")
        if not 1 <= len(text_fields) <= 2:
            raise ConfigError("text_fields must name 1 or 2 columns")
        if batch_size <= 0 or max_length < 8:
            raise ConfigError("batch_size must be positive and max_length at least 8")
        from bertvision.encoders import load_encoder
        from bertvision.finetune import pick_device, quiet_transformers

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

    @property
    def output_shape(self) -> tuple[int, int]:
        """(L, H): hidden states per example (embedding output + each layer) and their width."""
        return self.info.num_hidden_states, self.info.hidden_size

    def __call__(self, batch: Mapping[str, Sequence]) -> dict[str, np.ndarray]:
        """``{"id", text fields..., ["label"]}`` -> ``{"id", "hidden" (N, L, H) float16, ["label"]}``."""
        from bertvision.encoders import tokenize

        texts = [list(map(str, batch[f])) for f in self.text_fields]
        encoded = tokenize(self.tokenizer, texts[0], texts[1] if len(texts) > 1 else None, max_length=self.max_length)
        hidden = self.encode(encoded)
        out = {"id": np.asarray(batch["id"]).astype(str), "hidden": hidden}
        if "label" in batch:
            out["label"] = np.asarray(batch["label"])
        return out

    def encode(self, encoded: Mapping[str, list[list[int]]]) -> np.ndarray:
        """Hidden states (N, L, H) float16 for already tokenised examples, in input order."""
        import torch

        ids = encoded["input_ids"]
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(-lengths, kind="stable")  # longest first: a too-big batch fails early
        out = np.empty((len(ids), *self.output_shape), dtype=np.float16)
        select = _SELECT[self.selection]
        with torch.inference_mode(), torch.autocast("cuda", torch.bfloat16, enabled=self.autocast):
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                batch = self._pad(encoded, idx, int(lengths[idx[0]]))
                states = self.model(**batch, output_hidden_states=True).hidden_states  # L x (B, T, H)
                out[idx] = select(states, batch["attention_mask"]).to(torch.float16).cpu().numpy()
                self.tokens_seen += int(lengths[idx].sum())
        return out

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
