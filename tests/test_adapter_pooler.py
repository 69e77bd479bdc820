"""AdapterPooler: shapes, parameter counts, weight sharing, ScalarMix, the residual path,
float16 input, training sanity and config validation. All tiny and CPU-only."""

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from bertvision.errors import ConfigError
from bertvision.models.adapter_pooler import (
    AdapterPooler,
    AdapterPoolerConfig,
    LayerAdapter,
    ScalarMix,
    head_loss,
)

B, T, L, H, A, C = 4, 3, 5, 12, 6, 3


def make(**kw) -> AdapterPooler:
    torch.manual_seed(0)
    base = dict(num_hidden_states=L, hidden_size=H, num_outputs=C, adapter_size=A, dropout=0.0)
    return AdapterPooler(AdapterPoolerConfig(**{**base, **kw})).eval()


COMBOS = list(itertools.product([True, False], ["flatten", "scalar_mix"], [True, False]))


@pytest.mark.parametrize("shared,combine,residual", COMBOS)
def test_output_shapes(shared, combine, residual):
    kw = dict(shared=shared, combine=combine, residual=residual)
    x = torch.randn(B, L, H)
    assert make(**kw)(x).shape == (B, C)
    assert make(**kw)(torch.randn(B, T, L, H)).shape == (B, T, C)  # per-token use
    reg = make(num_outputs=1, task_kind="regression", **kw)
    assert reg(x).shape == (B, 1)
    assert reg(torch.randn(B, T, L, H)).shape == (B, T, 1)


def test_per_token_equals_per_example():
    model, x = make(), torch.randn(B, T, L, H)
    torch.testing.assert_close(model(x), model(x.reshape(B * T, L, H)).reshape(B, T, C))


def test_wrong_input_shape_is_rejected():
    with pytest.raises(ValueError, match="expected"):
        make()(torch.randn(B, L + 1, H))


SHARED_ADAPTER = H * A + A  # one Linear(H, A)
UNSHARED_ADAPTER = L * H * A + L * A  # weight (L, H, A) + bias (L, A)
MIX = L + 1  # ScalarMix logits (L,) + gamma


@pytest.mark.parametrize(
    "shared,combine,residual,expected",
    [
        (True, "flatten", True, SHARED_ADAPTER + (L * A + H) * C + C),
        (True, "flatten", False, SHARED_ADAPTER + L * A * C + C),
        (False, "flatten", True, UNSHARED_ADAPTER + (L * A + H) * C + C),
        (True, "scalar_mix", True, SHARED_ADAPTER + MIX + (A + H) * C + C),
        (False, "scalar_mix", False, UNSHARED_ADAPTER + MIX + A * C + C),
    ],
)
def test_parameter_count(shared, combine, residual, expected):
    model = make(shared=shared, combine=combine, residual=residual)
    assert model.num_parameters() == expected
    for p in model.adapter.parameters():
        p.requires_grad_(False)
    adapter = SHARED_ADAPTER if shared else UNSHARED_ADAPTER
    assert model.num_parameters() == expected - adapter
    assert model.num_parameters(trainable_only=False) == expected


def test_shared_adapter_uses_one_linear_for_every_layer():
    torch.manual_seed(0)
    adapter, x = LayerAdapter(L, H, A, shared=True), torch.randn(B, L, H)
    out = adapter(x)  # (B, L, A)
    for i in range(L):
        torch.testing.assert_close(out[:, i], F.gelu(adapter.linear(x[:, i])))
    perm = torch.randperm(L)
    torch.testing.assert_close(adapter(x[:, perm]), out[:, perm])  # permutation-equivariant


def test_unshared_adapter_uses_one_matrix_per_layer():
    torch.manual_seed(0)
    adapter, x = LayerAdapter(L, H, A, shared=False), torch.randn(B, L, H)
    out = adapter(x)
    for i in range(L):
        expected = F.gelu(x[:, i] @ adapter.weight[i] + adapter.bias[i])
        torch.testing.assert_close(out[:, i], expected)
    same = torch.randn(B, 1, H).expand(B, L, H)  # the same vector in every layer
    out = adapter(same)
    assert not torch.allclose(out[:, 0], out[:, 1])  # different weights, different outputs
    # Initialised like nn.Linear: |w| <= 1/sqrt(H), and not all layers alike.
    assert adapter.weight.abs().max() <= H**-0.5
    assert not torch.allclose(adapter.weight[0], adapter.weight[1])


def test_scalar_mix_is_a_scaled_softmax_average():
    mix = ScalarMix(3)
    torch.testing.assert_close(mix.weights(), torch.full((3,), 1 / 3))  # starts as a mean
    with torch.no_grad():
        mix.logits.copy_(torch.tensor([0.0, 1.0, 2.0]))
        mix.gamma.fill_(2.0)
    w = mix.weights()
    torch.testing.assert_close(w.sum(), torch.tensor(1.0))
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (1, 3, 2)
    e = torch.exp(torch.tensor([0.0, 1.0, 2.0]))
    p = e / e.sum()
    expected = 2.0 * torch.tensor([[p[0] + p[2], p[1] + p[2]]])
    torch.testing.assert_close(mix(x), expected)


def _zero_adapter(model):
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.zero_()  # adapter output is gelu(0) = 0 for every input


@pytest.mark.parametrize("combine", ["flatten", "scalar_mix"])
def test_residual_feeds_the_last_layer(combine):
    model, x = make(combine=combine, residual=True), torch.randn(B, L, H)
    _zero_adapter(model)
    changed_last, changed_first = x.clone(), x.clone()
    changed_last[:, -1] += 1.0
    changed_first[:, 0] += 1.0
    base = model(x)
    assert not torch.allclose(model(changed_last), base)  # the skip carries the last layer
    torch.testing.assert_close(model(changed_first), base)  # and only the last layer


@pytest.mark.parametrize("combine", ["flatten", "scalar_mix"])
def test_without_residual_only_the_adapter_sees_the_input(combine):
    model, x = make(combine=combine, residual=False), torch.randn(B, L, H)
    changed_last = x.clone()
    changed_last[:, -1] += 1.0
    assert not torch.allclose(model(changed_last), model(x))  # seen through the adapter
    _zero_adapter(model)
    # With the adapter silenced no path is left: the output is the projection's bias.
    out = model(torch.randn(B, L, H) * 10)
    torch.testing.assert_close(out, model.out.bias.expand(B, C))


@pytest.mark.parametrize("combine", ["flatten", "scalar_mix"])
def test_float16_input(combine):
    model, x32 = make(combine=combine, shared=False), torch.randn(B, T, L, H)
    x16 = x32.half()
    out16 = model(x16)
    assert out16.dtype == torch.float32
    torch.testing.assert_close(out16, model(x16.float()))  # cast inside forward
    torch.testing.assert_close(out16, model(x32), atol=1e-2, rtol=1e-2)
    model.double()
    assert model(x16).dtype == torch.float64  # follows the module's dtype


def _train(model, x, y, steps, lr=1e-2):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = model.loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


@pytest.mark.parametrize(
    "shared,combine", [(True, "flatten"), (False, "flatten"), (True, "scalar_mix")]
)
def test_training_separates_a_synthetic_problem(shared, combine):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(256, L, H, generator=g)
    w = torch.randn(H, generator=g)
    # The label lives in an inner layer and residual is off: only the adapter path can learn it.
    y = (x[:, 1] @ w > 0).long()
    model = make(shared=shared, combine=combine, residual=False, num_outputs=2, dropout=0.1)
    model, losses = _train(model, x, y, steps=300)
    with torch.no_grad():
        acc = (model(x).argmax(-1) == y).float().mean().item()
    assert acc > 0.95, acc
    assert losses[-1] < losses[0]


def test_regression_loss_decreases():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(256, L, H, generator=g)
    y = x[:, 2] @ torch.randn(H, generator=g)  # (N,) targets
    model = make(num_outputs=1, task_kind="regression", residual=False)
    model, losses = _train(model, x, y, steps=200)
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


def test_head_loss():
    logits, labels = torch.randn(B, T, C), torch.randint(0, C, (B, T))
    torch.testing.assert_close(
        head_loss("classification", logits, labels),
        F.cross_entropy(logits.reshape(-1, C), labels.reshape(-1)),
    )
    out, target = torch.randn(B, 1), torch.arange(B)  # integer targets are cast to float
    torch.testing.assert_close(
        head_loss("regression", out, target), ((out[:, 0] - target.float()) ** 2).mean()
    )
    with pytest.raises(ValueError):
        head_loss("regression", torch.randn(B, 1), torch.randn(B + 1))
    with pytest.raises(ConfigError, match="task_kind"):
        head_loss("ranking", out, target)


GOOD = dict(num_hidden_states=L, hidden_size=H, num_outputs=C)


@pytest.mark.parametrize(
    "bad,field",
    [
        (dict(adapter_size=0), "adapter_size"),
        (dict(num_outputs=0), "num_outputs"),
        (dict(hidden_size=-1), "hidden_size"),
        (dict(num_hidden_states=2.5), "num_hidden_states"),
        (dict(adapter_size=True), "adapter_size"),
        (dict(combine="mean"), "combine"),
        (dict(task_kind="ranking"), "task_kind"),
        (dict(dropout=1.5), "dropout"),
        (dict(dropout=-0.1), "dropout"),
        (dict(dropout="0.1"), "dropout"),
        (dict(shared="yes"), "shared"),
        (dict(residual=1), "residual"),
        (dict(num_outputs=1), "num_outputs"),  # classification needs 2 or more
        (dict(task_kind="regression", num_outputs=3), "num_outputs"),
        (dict(pooling="max"), "pooling"),
        (dict(positions=0), "positions"),
        (dict(init="xavier"), "init"),
        (dict(task_kind="span", num_outputs=2, token_states=True), "token_states"),
    ],
)
def test_config_validation(bad, field):
    with pytest.raises(ConfigError, match=field):
        AdapterPoolerConfig(**{**GOOD, **bad})


def test_config_round_trip():
    cfg = AdapterPoolerConfig(**GOOD, shared=False, combine="scalar_mix", dropout=0)
    assert cfg.dropout == 0.0 and isinstance(cfg.dropout, float)
    data = json.loads(json.dumps(cfg.to_dict()))
    assert AdapterPoolerConfig.from_dict(data) == cfg
    assert AdapterPoolerConfig.from_dict(GOOD) == AdapterPoolerConfig(**GOOD)  # defaults fill in


def test_config_from_dict_errors():
    with pytest.raises(ConfigError, match="unknown .*'adaptor_size'"):
        AdapterPoolerConfig.from_dict({**GOOD, "adaptor_size": 32})
    with pytest.raises(ConfigError, match="missing .*'hidden_size'"):
        AdapterPoolerConfig.from_dict({"num_hidden_states": L, "num_outputs": C})
    with pytest.raises(ConfigError, match="mapping"):
        AdapterPoolerConfig.from_dict([("num_hidden_states", L)])


@pytest.mark.parametrize("shared,combine,residual", COMBOS)
def test_first_layer_reads_only_the_later_layers(shared, combine, residual):
    """first_layer=k is the head of the L-k later layers (the residual stays the last layer)."""
    k = 2
    model = make(shared=shared, combine=combine, residual=residual, first_layer=k)
    smaller = make(shared=shared, combine=combine, residual=residual, num_hidden_states=L - k)
    smaller.load_state_dict(model.state_dict())  # the same parameters, one for one
    x = torch.randn(B, L, H)
    torch.testing.assert_close(model(x), smaller(x[:, k:]))
    x2 = x.clone()
    x2[:, :k] = torch.randn(B, k, H)  # the layers below first_layer do not matter
    torch.testing.assert_close(model(x2), model(x))
    with pytest.raises(ConfigError, match="first_layer must be below num_hidden_states"):
        make(first_layer=L)
