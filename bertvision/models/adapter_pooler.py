"""AdapterPooler: a small head on the hidden states of every encoder layer.

Input is the stack of hidden states (..., L, H): L = embedding output + one per encoder layer,
H = hidden size. The pipeline is

    adapter (Linear H -> A, then GELU or another activation; shared, or per layer)  (..., L, A)
    combine: "flatten" (concatenate the layers, as the original LayerWeightShare)   (..., L*A)
          or "scalar_mix" (softmax-weighted sum of layers times a scale gamma)      (..., A)
    residual: concatenate the last layer's H-vector (the skip of the best model)    (..., F+H)
    dropout, then Linear -> num_outputs                                             (..., C)

Leading dims are free, so the same head runs per example (B, L, H) or per token (B, T, L, H).

`SpanAdapterPooler` is the span head (SQuAD): the same pipeline per token and layer of a window,
with two outputs per token (start and end logits), padding positions masked out of both, and
the CLS position (token 0) standing for "no answer". Tokens never interact, so a token's logits
depend on its own hidden states only.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bertvision.config import HeadArchitecture
from bertvision.errors import ConfigError

TASK_KINDS = ("classification", "regression", "span")
ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}


@dataclass(frozen=True, kw_only=True)
class AdapterPoolerConfig(HeadArchitecture):
    """A head's whole config: its `HeadArchitecture` and the shapes of the store it reads."""

    num_hidden_states: int
    """L: hidden states per token (embedding output + one per encoder layer)."""
    hidden_size: int
    """H: width of each hidden state."""
    num_outputs: int
    """Number of labels (at least 2) for classification; exactly 1 for regression; 2 for spans
    (start and end logits per token)."""
    task_kind: str = "classification"
    """"classification" (logits, cross-entropy), "regression" (one value, MSE) or "span"
    (per-token start/end logits, cross-entropy over a window's tokens)."""
    token_states: bool = False
    """The input is every token of a sentence (or pair) from a token store, pooled by
    ``pooling`` (`TokenAdapterPooler`); false: one vector per layer (cls/mean stores)."""
    num_segments: int = 1
    """Token stores: 1 for single sentences, 2 for pairs (mean and attention pooling pool each
    sentence apart and concatenate, first sentence first)."""

    def __post_init__(self) -> None:
        for name in ("num_hidden_states", "hidden_size", "num_outputs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        super().__post_init__()
        if self.first_layer >= self.num_hidden_states:
            raise ConfigError(f"first_layer must be below num_hidden_states ({self.num_hidden_states}), "
                              f"got {self.first_layer}")  # fmt: skip
        if self.num_segments not in (1, 2) or isinstance(self.num_segments, bool):
            raise ConfigError(f"num_segments must be 1 or 2, got {self.num_segments!r}")
        if self.token_states and self.task_kind == "span":
            raise ConfigError("token_states is for sentence tasks; span heads read windows of tokens")
        if self.task_kind not in TASK_KINDS:
            raise ConfigError(f"task_kind must be one of {TASK_KINDS}, got {self.task_kind!r}")
        if self.task_kind == "regression" and self.num_outputs != 1:
            raise ConfigError(f"num_outputs must be 1 for regression, got {self.num_outputs}")
        if self.task_kind == "span" and self.num_outputs != 2:
            raise ConfigError(f"num_outputs must be 2 (start, end) for spans, got {self.num_outputs}")
        if self.task_kind == "classification" and self.num_outputs < 2:
            raise ConfigError(
                f"num_outputs must be at least 2 for classification, got {self.num_outputs}"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict; `from_dict` inverts it."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AdapterPoolerConfig:
        if not isinstance(data, dict):
            raise ConfigError(f"adapter pooler config must be a mapping, got {type(data).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown adapter pooler config keys {unknown}; known: {known}")
        missing = [f for f in ("num_hidden_states", "hidden_size", "num_outputs") if f not in data]
        if missing:
            raise ConfigError(f"adapter pooler config is missing {missing}")
        return cls(**data)


ORIGINAL_INIT_STD = 1e-3
"""The original's adapter initialisation: truncated normal of this std (cut at 2 std, as Keras'
TruncatedNormal), zero bias."""


class LayerAdapter(nn.Module):
    """(..., L, H) -> (..., L, A): Linear then the activation, shared by all layers or per layer."""

    def __init__(self, num_layers: int, hidden_size: int, adapter_size: int, shared: bool = True,
                 activation: str = "gelu", init: str = "torch"):  # fmt: skip
        super().__init__()
        self.shared = shared
        self.activation = ACTIVATIONS[activation]
        if shared:
            self.linear = nn.Linear(hidden_size, adapter_size)
        else:
            self.weight = nn.Parameter(torch.empty(num_layers, hidden_size, adapter_size))
            self.bias = nn.Parameter(torch.empty(num_layers, adapter_size))
            # nn.Linear's default init, per layer: U(-1/sqrt(H), 1/sqrt(H)) for weight and bias.
            bound = 1 / math.sqrt(hidden_size)
            nn.init.uniform_(self.weight, -bound, bound)
            nn.init.uniform_(self.bias, -bound, bound)
        if init == "original":
            weight, bias = (self.linear.weight, self.linear.bias) if shared else (self.weight, self.bias)
            std = ORIGINAL_INIT_STD
            nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)
            nn.init.zeros_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., L, H)
        if self.shared:
            y = self.linear(x)  # (..., L, A)
        else:
            y = torch.einsum("...lh,lha->...la", x, self.weight) + self.bias  # (..., L, A)
        return self.activation(y)  # (..., L, A)


class ScalarMix(nn.Module):
    """(..., L, D) -> (..., D): gamma * sum_l softmax(w)_l * x_l (ELMo / Tenney et al.)."""

    def __init__(self, num_layers: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(num_layers))  # zeros: start from a plain mean
        self.gamma = nn.Parameter(torch.ones(()))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)  # (L,), sums to 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (..., L, D)
        mixed = torch.einsum("...ld,l->...d", x, self.weights())  # (..., D)
        return self.gamma * mixed  # (..., D)


class AdapterPooler(nn.Module):
    """The head: (..., L, H) hidden states in any float dtype -> (..., num_outputs)."""

    def __init__(self, config: AdapterPoolerConfig):
        super().__init__()
        self.config = c = config
        L, H, A = c.num_hidden_states - c.first_layer, c.hidden_size, c.adapter_size  # layers read
        mix_first = c.combine == "mix_first"
        self.adapter = LayerAdapter(1 if mix_first else L, H, A, shared=c.shared, activation=c.activation,
                                    init=c.init)  # fmt: skip
        self.mix = ScalarMix(L) if c.combine in ("scalar_mix", "mix_first") else None
        self.features = A if self.mix is not None else L * A  # per example (or token), before the skip
        self.dropout = nn.Dropout(c.dropout)
        self.out = nn.Linear(self.out_features(), c.num_outputs)

    def out_features(self) -> int:
        """Width of the output layer's input: the combined features, plus the residual skip."""
        return self.features + (self.config.hidden_size if self.config.residual else 0)

    def combined(self, x: torch.Tensor) -> torch.Tensor:
        """(..., L, H) -> (..., F): the adapter and the layer combination, before the skip."""
        c = self.config
        x = x[..., c.first_layer :, :]  # (..., L', H), L' = L - first_layer
        if c.combine == "mix_first":
            return self.adapter(self.mix(x).unsqueeze(-2)).squeeze(-2)  # (..., H) -> (..., A)
        a = self.adapter(x)  # (..., L', A)
        return a.flatten(-2) if self.mix is None else self.mix(a)  # (..., L'*A) or (..., A)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:  # hidden: (..., L, H)
        c = self.config
        if tuple(hidden.shape[-2:]) != (c.num_hidden_states, c.hidden_size):
            raise ValueError(
                f"hidden states have shape {tuple(hidden.shape)}, expected (..., "
                f"{c.num_hidden_states}, {c.hidden_size}) (num_hidden_states, hidden_size)"
            )
        # Stored states are float16; compute in the module's dtype (float32 unless converted).
        x = hidden.to(self.out.weight.dtype)  # (..., L, H)
        z = self.combined(x)  # (..., F)
        if c.residual:
            z = torch.cat([z, x[..., -1, :]], dim=-1)  # (..., F + H)
        return self.out(self.dropout(z))  # (..., C); regression: (..., 1)

    def loss(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return head_loss(self.config.task_kind, outputs, targets)

    def num_parameters(self, trainable_only: bool = True) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


class TokenAdapterPooler(AdapterPooler):
    """The sentence head over token states: (B, T, L, H) tokens, (B, T) mask and (B, T) segments
    (0: first sentence, 1: second) -> (B, num_outputs).

    Every token goes through the adapter and the layer combination (F features per token),
    padding is zeroed, then ``pooling`` turns the tokens into one vector:

    - flatten (the original GLUE head): the first ``positions`` tokens' features side by side,
      zero-padded, (positions * F); with the residual skip also their last-layer states;
    - mean: the masked mean over each sentence's tokens, (S * F) for S sentences;
    - attention: a learned score per token (a Linear F -> 1), softmax over each sentence's real
      tokens, the weighted sum, (S * F); the skip uses the same weights on the last layer.

    Padded positions never change an output: they are zeroed before flatten and mean, and get
    no attention weight.
    """

    def __init__(self, config: AdapterPoolerConfig):
        if not config.token_states:
            raise ConfigError("TokenAdapterPooler needs token_states true (a token store)")
        super().__init__(config)  # its output layer already has the pooled width (`out_features`)
        c = config
        self.attention = nn.Linear(self.features, 1) if c.pooling == "attention" else None

    def out_features(self) -> int:
        c = self.config
        per = self.features + (c.hidden_size if c.residual else 0)
        return per * (c.positions if c.pooling == "flatten" else c.num_segments)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None,
                segments: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        c = self.config
        if hidden.dim() != 4 or tuple(hidden.shape[-2:]) != (c.num_hidden_states, c.hidden_size):
            raise ValueError(f"token head input must be (B, T, {c.num_hidden_states}, {c.hidden_size}), "
                             f"got {tuple(hidden.shape)}")  # fmt: skip
        B, T = hidden.shape[:2]
        if mask is None:
            mask = torch.ones((B, T), dtype=torch.bool, device=hidden.device)
        if segments is None:
            segments = torch.zeros((B, T), dtype=torch.long, device=hidden.device)
        for name, t in (("mask", mask), ("segments", segments)):
            if tuple(t.shape) != (B, T):
                raise ValueError(f"{name} {tuple(t.shape)} does not match tokens {(B, T)}")
        # Only the real tokens go through the adapter (a short sentence in a batch padded to a
        # long one costs its own length), then their features are put back in place; padding
        # stays zero.
        keep = mask.bool()  # (B, T)
        real = keep.flatten().nonzero().squeeze(1)  # (N,) positions of the real tokens in B * T
        x = hidden.flatten(0, 1).index_select(0, real).to(self.out.weight.dtype)  # (N, L, H)
        z = self._placed(self.combined(x), real, keep.shape)  # (B, T, F), padding zero
        r = self._placed(x[:, -1, :], real, keep.shape) if c.residual else None  # (B, T, H)
        if c.pooling == "flatten":
            pieces = [z] if r is None else [z, r]
            per_token = torch.cat(pieces, dim=-1)  # (B, T, F [+ H])
            P = c.positions
            per_token = per_token[:, :P]
            if per_token.shape[1] < P:
                per_token = F.pad(per_token, (0, 0, 0, P - per_token.shape[1]))  # zeros after
            features = per_token.flatten(1)  # (B, P * (F [+ H]))
        else:
            pooled = []
            for s in range(c.num_segments):
                w = (mask.bool() & (segments == s)).to(z.dtype)  # (B, T), this sentence's tokens
                if c.pooling == "attention":
                    score = self.attention(z).squeeze(-1).masked_fill(w == 0, float("-inf"))  # (B, T)
                    alpha = torch.softmax(score, dim=-1).nan_to_num(0.0)  # a sentence of no tokens: 0
                else:
                    alpha = w / w.sum(dim=-1, keepdim=True).clamp(min=1.0)  # (B, T)
                pooled.append(torch.einsum("bt,btf->bf", alpha, z))  # (B, F)
                if r is not None:
                    pooled.append(torch.einsum("bt,bth->bh", alpha, r))  # (B, H)
            features = torch.cat(pooled, dim=-1)  # (B, S * (F [+ H]))
        return self.out(self.dropout(features))  # (B, C)

    @staticmethod
    def _placed(values: torch.Tensor, real: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """(N, D) values of the real tokens at flat positions ``real`` -> (B, T, D), zeros at
        padding (index_copy: its backward is an index_select, where masked_scatter's is a slow
        masked_select on CPU)."""
        out = values.new_zeros((shape[0] * shape[1], values.shape[-1]))  # (B * T, D)
        return out.index_copy(0, real, values).view(*shape, values.shape[-1])  # (B, T, D)


class SpanAdapterPooler(AdapterPooler):
    """The span head: (B, T, L, H) token states + (B, T) mask -> (B, T, 2) start/end logits.

    Every token goes through the AdapterPooler pipeline (shared adapter per token and layer,
    layer combination, residual skip from the last layer's token output, projection to 2);
    positions where ``mask`` is False (padding) get the lowest float, so they never win a
    softmax and their values cannot matter.
    """

    def __init__(self, config: AdapterPoolerConfig):
        if config.task_kind != "span":
            raise ConfigError(f"SpanAdapterPooler needs task_kind 'span', got {config.task_kind!r}")
        super().__init__(config)

    def forward(self, hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if hidden.dim() != 4:
            raise ValueError(f"span head input must be (B, T, L, H), got {tuple(hidden.shape)}")
        logits = super().forward(hidden)  # (B, T, 2)
        if mask is None:
            return logits
        if tuple(mask.shape) != tuple(hidden.shape[:2]):
            raise ValueError(f"mask {tuple(mask.shape)} does not match tokens {tuple(hidden.shape[:2])}")
        return logits.masked_fill(~mask.bool().unsqueeze(-1), torch.finfo(logits.dtype).min)


def span_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean of the start and end cross-entropies over each window's tokens.

    logits: (B, T, 2) masked start/end logits; targets: (B, 2) token positions (0 = no answer).
    """
    start = F.cross_entropy(logits[..., 0], targets[:, 0].long())
    end = F.cross_entropy(logits[..., 1], targets[:, 1].long())
    return (start + end) / 2


def head_loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean loss over all leading dims. Classification: outputs (..., C) logits, targets (...)
    class ids (cross-entropy; -100 is ignored). Regression: outputs (..., 1), targets (...) or
    (..., 1), any numeric dtype (MSE)."""
    if kind == "classification":
        logits = outputs.reshape(-1, outputs.shape[-1])  # (N, C)
        return F.cross_entropy(logits, targets.reshape(-1).long())  # targets (N,)
    if kind == "regression":
        # Flatten both sides so (B, 1) vs (B,) cannot silently broadcast to (B, B).
        if outputs.numel() != targets.numel():
            raise ValueError(f"outputs {tuple(outputs.shape)} vs targets {tuple(targets.shape)}")
        return F.mse_loss(outputs.reshape(-1), targets.reshape(-1).to(outputs.dtype))  # (N,)
    if kind == "span":
        return span_loss(outputs, targets)
    raise ConfigError(f"task_kind must be one of {TASK_KINDS}, got {kind!r}")
