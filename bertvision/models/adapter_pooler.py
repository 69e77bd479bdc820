"""AdapterPooler: a small head on the hidden states of every encoder layer, (..., L, H) -> (..., C):
an adapter (Linear H -> A and an activation, shared or per layer), the layers combined
("flatten", the original LayerWeightShare, or "scalar_mix"), the last layer's state concatenated
(the residual skip), dropout, Linear -> C; per example, or per token (`SpanAdapterPooler`,
`TokenAdapterPooler`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bertvision.config import HeadArchitecture
from bertvision.errors import ConfigError

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu, "tanh": torch.tanh}


@dataclass(frozen=True, kw_only=True)
class AdapterPoolerConfig(HeadArchitecture):
    """A head's whole config: its `HeadArchitecture` and the shapes of the store it reads."""

    num_hidden_states: int
    """L: hidden states per token (embedding output + one per encoder layer)."""
    hidden_size: int
    """H: width of each hidden state."""
    num_outputs: int
    """C: the labels (classification, at least 2), 1 (regression), or 2 per token (span)."""
    task_kind: str = "classification"
    """"classification", "regression" or "span" (`HEAD_TASKS`: its loss and outputs)."""
    token_states: bool = False
    """Every token of a sentence (or pair) is the input, pooled by ``pooling`` (`TokenAdapterPooler`)."""
    num_segments: int = 1
    """Token stores: 1 for single sentences, 2 for pairs (mean and attention pool each apart)."""

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
        task = head_task(self.task_kind)
        if self.token_states and task.windows:
            raise ConfigError("token_states is for sentence tasks; span heads read windows of tokens")
        low, high = task.outputs
        if not low <= self.num_outputs <= (high or self.num_outputs):
            raise ConfigError(f"num_outputs must be {task.wording}, got {self.num_outputs}")

    def to_dict(self) -> dict[str, Any]:
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


ORIGINAL_INIT_STD = 1e-3  # the original's adapter init: truncated normal (at 2 std, as Keras'), zero bias


class LayerAdapter(nn.Module):
    """(..., L, H) -> (..., L, A): Linear then the activation, shared by all layers or per layer."""

    def __init__(self, num_layers: int, hidden_size: int, adapter_size: int, shared: bool = True,
                 activation: str = "gelu", init: str = "torch"):  # fmt: skip
        super().__init__()
        self.shared, self.activation = shared, ACTIVATIONS[activation]
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
            nn.init.trunc_normal_(weight, std=ORIGINAL_INIT_STD, a=-2 * ORIGINAL_INIT_STD, b=2 * ORIGINAL_INIT_STD)
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
            raise ValueError(f"hidden states have shape {tuple(hidden.shape)}, expected (..., {c.num_hidden_states}, "
                             f"{c.hidden_size}) (num_hidden_states, hidden_size)")  # fmt: skip
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
    (0: first sentence, 1: second) -> (B, C). Each real token's F features are pooled by
    ``pooling``: flatten (the original GLUE head: the first ``positions`` tokens side by side,
    zero-padded), mean over each sentence's tokens, or attention (a learned score per token,
    softmax over each sentence's tokens); the residual skip pools the last layer alike. Padding
    never changes an output."""

    def __init__(self, config: AdapterPoolerConfig):
        if not config.token_states:
            raise ConfigError("TokenAdapterPooler needs token_states true (a token store)")
        super().__init__(config)  # its output layer already has the pooled width (`out_features`)
        self.attention = nn.Linear(self.features, 1) if config.pooling == "attention" else None

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
        mask = torch.ones((B, T), dtype=torch.bool, device=hidden.device) if mask is None else mask
        segments = torch.zeros((B, T), dtype=torch.long, device=hidden.device) if segments is None else segments
        for name, t in (("mask", mask), ("segments", segments)):
            if tuple(t.shape) != (B, T):
                raise ValueError(f"{name} {tuple(t.shape)} does not match tokens {(B, T)}")
        # Only the real tokens go through the adapter (a short sentence in a batch padded to a
        # long one costs its own length), then back in place; padding stays zero.
        keep = mask.bool()  # (B, T)
        real = keep.flatten().nonzero().squeeze(1)  # (N,) positions of the real tokens in B * T
        x = hidden.flatten(0, 1).index_select(0, real).to(self.out.weight.dtype)  # (N, L, H)
        z = self._placed(self.combined(x), real, keep.shape)  # (B, T, F), padding zero
        r = self._placed(x[:, -1, :], real, keep.shape) if c.residual else None  # (B, T, H)
        if c.pooling == "flatten":
            per_token = torch.cat([z] if r is None else [z, r], dim=-1)[:, : c.positions]  # (B, <= P, F [+ H])
            if per_token.shape[1] < c.positions:
                per_token = F.pad(per_token, (0, 0, 0, c.positions - per_token.shape[1]))  # zeros after
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
        """(N, D) values of the real tokens at flat positions ``real`` -> (B, T, D), zero padding
        (index_copy: its backward is an index_select; masked_scatter's is slow on CPU)."""
        out = values.new_zeros((shape[0] * shape[1], values.shape[-1]))  # (B * T, D)
        return out.index_copy(0, real, values).view(*shape, values.shape[-1])  # (B, T, D)


class SpanAdapterPooler(AdapterPooler):
    """The span head: (B, T, L, H) token states + (B, T) mask -> (B, T, 2) start/end logits, each
    token on its own; padding gets the lowest float, so it never wins a softmax."""

    def __init__(self, config: AdapterPoolerConfig):
        if not head_task(config.task_kind).windows:
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
    """Mean of the start and end cross-entropies over each window's tokens: logits (B, T, 2),
    targets (B, 2) token positions (0 = no answer)."""
    start = F.cross_entropy(logits[..., 0], targets[:, 0].long())
    end = F.cross_entropy(logits[..., 1], targets[:, 1].long())
    return (start + end) / 2


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """outputs (..., C) logits, targets (...) class ids (-100 is ignored)."""
    return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]), targets.reshape(-1).long())


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """outputs (..., 1), targets (...) or (..., 1) of any numeric dtype."""
    # Flatten both sides so (B, 1) vs (B,) cannot silently broadcast to (B, B).
    if outputs.numel() != targets.numel():
        raise ValueError(f"outputs {tuple(outputs.shape)} vs targets {tuple(targets.shape)}")
    return F.mse_loss(outputs.reshape(-1), targets.reshape(-1).to(outputs.dtype))


@dataclass(frozen=True)
class HeadTask:
    """What a task kind fixes about a head: its loss and how many outputs it has."""

    loss: Callable
    outputs: tuple[int, int | None]  # (fewest, most; None: no bound), and the rule in words
    wording: str
    windows: bool = False  # per-token outputs over windows of tokens (`SpanAdapterPooler`)


HEAD_TASKS = {  # task kind (`AdapterPoolerConfig.task_kind`) -> its `HeadTask`
    "classification": HeadTask(_cross_entropy, (2, None), "at least 2 for classification"),
    "regression": HeadTask(_mse, (1, 1), "1 for regression"),
    "span": HeadTask(span_loss, (2, 2), "2 (start, end) for spans", windows=True),
}  # fmt: skip


def head_task(kind: str) -> HeadTask:
    if kind not in HEAD_TASKS:
        raise ConfigError(f"task_kind must be one of {tuple(HEAD_TASKS)}, got {kind!r}")
    return HEAD_TASKS[kind]


def head_loss(kind: str, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The mean loss of a ``kind`` head over all leading dims."""
    return head_task(kind).loss(outputs, targets)
