"""Q-GaLore's INT8 weights (``Int8Linear``, ``quantize_linear_weights``): the layer, its
checkpoint, and the optimizer's stochastic-rounding update of the codes against a plain
implementation written here."""

from __future__ import annotations

import io

import pytest
import torch

from optforge._seeding import generator_for
from optforge.lowrank import (
    GaLoreAdamW,
    Int8Linear,
    PerLayerStep,
    QGaLoreAdamW8bit,
    galore_param_groups,
    quantize_linear_weights,
)
from tests.lowrank._reference import PlainGaLore, lowrank_grads


def _layer(shape=(64, 32), dtype=torch.float32, bias=False, seed=0) -> Int8Linear:
    torch.manual_seed(seed)
    linear = torch.nn.Linear(shape[1], shape[0], bias=bias, dtype=dtype)
    return Int8Linear.from_linear(linear)


def _plain_stochastic_round(w: torch.Tensor, gen: torch.Generator, group: int = 256):
    """Per group of ``group`` row-major values: s = (max − min)/255, c = ⌊(w − min)/s⌋ +
    Bernoulli(frac), w = c·s + min (fp32, as the stored codes)."""
    x = w.reshape(-1, group).float()
    lo, hi = x.amin(1, keepdim=True), x.amax(1, keepdim=True)
    s = (hi - lo) / 255
    y = (x - lo) / s
    u = torch.rand(y.shape, generator=gen)
    c = torch.floor(y) + (u < y - torch.floor(y)).float()
    return (c.clamp(0, 255) * s + lo).reshape(w.shape)


def test_int8_update_matches_plain_galore_plus_stochastic_rounding() -> None:
    # Float inner Adam and basis (isolates the weight storage), decay before the step as the
    # Q-GaLore class; fp64 arithmetic so the plain and optforge runs round the same values.
    layer = _layer(dtype=torch.float64)
    grads = lowrank_grads((64, 32), 6)
    ref = PlainGaLore(layer.dequantized(torch.float64), lr=1e-2, rank=4, gap=2, side="left",
                      eps=1e-8, wd=0.1, decay_first=True)  # fmt: skip
    opt = QGaLoreAdamW8bit([layer.weight], lr=1e-2, rank=4, update_proj_gap=2, proj_bits=None,
                           inner="adam", adaptive_gap=False, weight_decay=0.1)  # fmt: skip
    for k, g in enumerate(grads):
        ref.step(g)
        ref.w = _plain_stochastic_round(ref.w, generator_for("cpu", 0, k, 0, 1)).double()
        layer.weight.grad = g.clone()
        opt.step()
        torch.testing.assert_close(layer.dequantized(torch.float64), ref.w, rtol=0, atol=1e-7)
    assert layer.weight_codes.dtype == torch.uint8


def test_int8_storage_follows_the_in_dtype_grid_path_bit_for_bit() -> None:
    # Full Q-GaLore (INT4 basis, 8-bit moments, adaptive gap): codes in an Int8Linear and an
    # ordinary parameter kept on the 8-bit grid hold the same weights at every step.
    layer = _layer()
    plain = torch.nn.Parameter(layer.dequantized().clone())
    kw = dict(lr=1e-2, rank=4, update_proj_gap=2, min_8bit_size=16)
    a, b = QGaLoreAdamW8bit([layer.weight], **kw), QGaLoreAdamW8bit([plain], **kw)
    for g in lowrank_grads((64, 32), 6, dtype=torch.float32):
        layer.weight.grad, plain.grad = g.clone(), g.clone()
        a.step()
        b.step()
        assert torch.equal(layer.dequantized(), plain.detach())


def test_forward_and_backward_equal_a_linear_with_the_dequantized_weight() -> None:
    layer = _layer(bias=True)
    ref = torch.nn.Linear(32, 64)
    with torch.no_grad():
        ref.weight.copy_(layer.dequantized())
        layer.bias.normal_()
        ref.bias.copy_(layer.bias)
    x = torch.randn(3, 5, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    layer(x).square().sum().backward()
    ref(x2).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)
    torch.testing.assert_close(layer.weight.grad, ref.weight.grad)
    torch.testing.assert_close(layer.bias.grad, ref.bias.grad)


def test_storage_is_one_byte_per_weight_and_the_handle_one_element() -> None:
    layer = _layer((256, 512))
    assert layer.weight.shape == (256, 512) and layer.weight.numel() == 256 * 512
    assert layer.weight.untyped_storage().nbytes() == 4
    assert layer.weight_codes.untyped_storage().nbytes() == 256 * 512
    assert layer.weight_scale.numel() == layer.weight_zero.numel() == 256 * 512 // 256
    before = layer.dequantized()
    layer = layer.to(torch.float64)
    assert layer.weight.dtype == torch.float64 and layer.weight.untyped_storage().nbytes() == 8
    layer = layer.half()  # a cast moves the handle's dtype, never the codes, scales or zeros
    assert layer.weight.dtype == torch.float16 and layer.weight_codes.dtype == torch.uint8
    assert layer.weight_scale.dtype == layer.weight_zero.dtype == torch.float32
    assert torch.equal(layer.dequantized(), before)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 8), torch.nn.Tanh(),
        torch.nn.Linear(8, 2),
    )  # fmt: skip


def _train(model, opt, steps, seed=0):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, y = torch.randn(8, 16, generator=gen), torch.randn(8, 2, generator=gen)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        opt.zero_grad()


def test_checkpoint_round_trip_resumes_bit_identically() -> None:
    def build():
        model = quantize_linear_weights(_model(), target_modules=("0", "2"))
        return model, QGaLoreAdamW8bit(model.parameters(), lr=1e-2, rank=4, update_proj_gap=3,
                                       min_8bit_size=16)  # fmt: skip

    full, opt = build()
    assert isinstance(full[0], Int8Linear) and isinstance(full[4], torch.nn.Linear)
    _train(full, opt, 4)
    buf = io.BytesIO()
    torch.save({"model": full.state_dict(), "opt": opt.state_dict()}, buf)
    assert not any(k.endswith(".weight") and "4" not in k for k in full.state_dict())
    _train(full, opt, 4, seed=1)

    resumed, opt2 = build()
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    _train(resumed, opt2, 4, seed=1)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert full[0].weight_codes.dtype == torch.uint8


def test_per_layer_steps_update_int8_weights_like_whole_model_steps() -> None:
    whole = quantize_linear_weights(_model(), target_modules=())
    per = quantize_linear_weights(_model(), target_modules=())

    def factory(ps):
        return GaLoreAdamW(ps, lr=1e-2, rank=4, update_proj_gap=2)

    opts = [factory([p]) for p in whole.parameters()]
    PerLayerStep(per.parameters(), factory)
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        x, y = torch.randn(8, 16, generator=gen), torch.randn(8, 2, generator=gen)
        torch.nn.functional.mse_loss(per(x), y).backward()
        torch.nn.functional.mse_loss(whole(x), y).backward()
        for o in opts:
            o.step()
            o.zero_grad()
    for a, b in zip(whole.state_dict().values(), per.state_dict().values()):
        assert torch.equal(a, b)


def test_galore_param_groups_projects_the_layers_quantize_linear_weights_swapped() -> None:
    # docs/lowrank/qgalore.md's recipe: quantize_linear_weights(model), then
    # galore_param_groups(model). The swapped layers are Int8Linear, not nn.Linear; they used to
    # land in the plain group, so "Q-GaLore" ran as full-rank 8-bit Adam, projecting nothing.
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.attn, self.mlp = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)
            self.lm_head = torch.nn.Linear(16, 4)

        def forward(self, x):
            return self.lm_head(self.mlp(torch.tanh(self.attn(x))))

    model = quantize_linear_weights(Block())
    groups = galore_param_groups(model, rank=4)
    assert [id(p) for p in groups[0]["params"]] == [id(model.attn.weight), id(model.mlp.weight)]
    opt = QGaLoreAdamW8bit(groups, lr=1e-2)
    model(torch.randn(8, 16)).pow(2).mean().backward()
    opt.step()
    assert opt.state[model.attn.weight]["inner.exp_avg"].shape == (4, 16)  # rank-4 moments
    assert opt.state[model.lm_head.weight]["inner.exp_avg"].shape == (4, 16)  # full, unprojected


def test_bad_input_and_foreign_optimizers_fail_loudly() -> None:
    with pytest.raises(ValueError, match="no linear layer"):
        quantize_linear_weights(_model(), target_modules=("attn",))
    with pytest.raises(ValueError, match="bits"):
        Int8Linear(4, 4, bits=9)
    layer = _layer()
    with pytest.raises(ValueError, match="shape"):
        layer.set_weight(torch.zeros(3, 3))
    layer.weight.grad = torch.ones(64, 32)
    with pytest.raises(RuntimeError):  # an in-place update of the zero-stride handle
        torch.optim.SGD([layer.weight], lr=0.1).step()
