"""TrAct: closed form vs independent references, unchanged parts, layer fidelity, dtypes."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from torch import nn

import optforge.optim.tract as tract_module
from optforge.optim.tract import TrAct, tract_grad

torch.set_num_threads(1)


def _direct(dz: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """dZᵀ X (XᵀX/b + λI)⁻¹ written plainly (fp64)."""
    b, n = x.shape
    a = x.T @ x / b + lam * torch.eye(n, dtype=x.dtype)
    return torch.linalg.solve(a, (dz.T @ x).T).T


def _direct_kernel(dz: torch.Tensor, x: torch.Tensor, lam: float) -> torch.Tensor:
    """dZᵀ (XXᵀ/b + λI)⁻¹ X, the kernel form of the same quantity."""
    b = x.shape[0]
    k = x @ x.T / b + lam * torch.eye(b, dtype=x.dtype)
    return torch.linalg.solve(k, dz).T @ x


# --------------------------------------------------------------------------- the algebra


@pytest.mark.parametrize(("b", "n"), [(50, 10), (8, 30)], ids=["b>n", "b<n"])
def test_primal_equals_dual_equals_direct_fp64(b: int, n: int) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n, generator=g, dtype=torch.float64)
    dz = torch.randn(b, 5, generator=g, dtype=torch.float64)
    lam = 0.1
    expected = _direct(dz, x, lam)
    torch.testing.assert_close(_direct_kernel(dz, x, lam), expected, rtol=1e-10, atol=0)
    dw = dz.T @ x
    for form in ("primal", "dual", "auto"):
        got = tract_grad(dw, x, lam, form=form)
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12, msg=form)


def test_grouped_tract_grad_is_per_group() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 40, 6, generator=g, dtype=torch.float64)
    dz = torch.randn(3, 40, 2, generator=g, dtype=torch.float64)
    got = tract_grad(dz.mT @ x, x, 0.3)
    for j in range(3):
        torch.testing.assert_close(got[j], _direct(dz[j], x[j], 0.3), rtol=1e-10, atol=1e-12)


def test_large_lambda_limit_is_scaled_plain_gradient() -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(64, 12, generator=g, dtype=torch.float64)
    dz = torch.randn(64, 4, generator=g, dtype=torch.float64)
    plain = dz.T @ x

    def rel_err(lam: float) -> float:  # Frobenius: elementwise rtol fails on near-zero entries
        return ((lam * tract_grad(plain, x, lam) - plain).norm() / plain.norm()).item()

    assert rel_err(1e4) < 1e-3
    assert rel_err(1.0) > 0.1  # at λ = 1 the preconditioner matters


@pytest.mark.parametrize(("rows", "n"), [(40, 7), (5, 7)], ids=["primal", "dual"])
def test_linear_module_weight_grad_matches_direct(rows: int, n: int) -> None:
    torch.manual_seed(3)
    layer = nn.Linear(n, 3, dtype=torch.float64)
    wrapped = TrAct(copy.deepcopy(layer), lam=0.05)
    x = torch.randn(rows, 2, n, dtype=torch.float64)  # leading dims flatten into rows
    dz = torch.randn(rows, 2, 3, dtype=torch.float64)
    wrapped(x).backward(dz)
    expected = _direct(dz.reshape(-1, 3), x.reshape(-1, n), 0.05)
    torch.testing.assert_close(wrapped.weight.grad, expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- unchanged parts


def _linear_and_input() -> tuple[nn.Module, torch.Tensor]:
    return nn.Linear(6, 4), torch.randn(10, 6)


def _conv_and_input() -> tuple[nn.Module, torch.Tensor]:
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode="reflect")
    return conv, torch.randn(2, 4, 9, 9)


@pytest.mark.parametrize("make", [_linear_and_input, _conv_and_input], ids=["linear", "conv"])
def test_forward_input_grad_and_bias_grad_bitwise_unchanged(make) -> None:
    torch.manual_seed(4)
    layer, x = make()
    plain = copy.deepcopy(layer)
    wrapped = TrAct(layer)
    x_plain, x_tract = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_plain, out_tract = plain(x_plain), wrapped(x_tract)
    assert torch.equal(out_plain, out_tract)
    dz = torch.randn_like(out_plain)
    out_plain.backward(dz)
    out_tract.backward(dz)
    assert torch.equal(x_plain.grad, x_tract.grad)
    assert torch.equal(plain.bias.grad, wrapped.bias.grad)
    assert not torch.allclose(plain.weight.grad, wrapped.weight.grad)


# --------------------------------------------------------------------------- conv fidelity

_NP_PAD = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def _reference_patches(x: torch.Tensor, conv: nn.Conv2d, pads: tuple[int, ...]) -> torch.Tensor:
    """Patch rows (groups, N·Ho·Wo, n) by explicit loops over a numpy-padded input."""
    top, bottom, left, right = pads
    xp = np.pad(x.numpy(), ((0, 0), (0, 0), (top, bottom), (left, right)),
                mode=_NP_PAD[conv.padding_mode])
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    n_img, c_in, height, width = xp.shape
    h_out = (height - dh * (kh - 1) - 1) // sh + 1
    w_out = (width - dw * (kw - 1) - 1) // sw + 1
    cg = c_in // conv.groups
    rows = np.empty((conv.groups, n_img * h_out * w_out, cg * kh * kw))
    for g in range(conv.groups):
        r = 0
        for img in range(n_img):
            for i in range(h_out):
                for j in range(w_out):
                    patch = xp[img, g * cg:(g + 1) * cg,
                               i * sh:i * sh + dh * (kh - 1) + 1:dh,
                               j * sw:j * sw + dw * (kw - 1) + 1:dw]
                    rows[g, r] = patch.reshape(-1)
                    r += 1
    return torch.from_numpy(rows)


# (conv kwargs, input shape, padding as (top, bottom, left, right))
_CONV_CASES = {
    "plain": (dict(in_channels=3, out_channels=4, kernel_size=3, padding=1), (2, 3, 6, 6),
              (1, 1, 1, 1)),
    "dil2-groups2-reflect-stride2": (
        dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=2, dilation=2,
             groups=2, padding_mode="reflect"), (2, 4, 9, 9), (2, 2, 2, 2)),
    "replicate-rect": (
        dict(in_channels=2, out_channels=3, kernel_size=(3, 2), padding=(1, 2),
             padding_mode="replicate"), (2, 2, 5, 6), (1, 1, 2, 2)),
    "circular-stride": (
        dict(in_channels=2, out_channels=2, kernel_size=3, stride=(2, 1), padding=1,
             padding_mode="circular"), (3, 2, 6, 5), (1, 1, 1, 1)),
    # even kernel: torch pads 'same' asymmetrically, the extra row/column at the end
    "same-even-kernel": (
        dict(in_channels=2, out_channels=3, kernel_size=(4, 3), padding="same", dilation=(1, 2)),
        (2, 2, 7, 6), (1, 2, 2, 2)),
    "valid-groups-depthwise": (
        dict(in_channels=3, out_channels=6, kernel_size=2, groups=3), (4, 3, 5, 5),
        (0, 0, 0, 0)),
    "dual-patchify": (  # b = 4 rows < n = 200 features
        dict(in_channels=8, out_channels=4, kernel_size=5, stride=5), (1, 8, 10, 10),
        (0, 0, 0, 0)),
}


@pytest.mark.parametrize("case", list(_CONV_CASES), ids=list(_CONV_CASES))
@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel:UserWarning")
def test_conv_matches_unfold_free_reference_fp64(case: str) -> None:
    kwargs, shape, pads = _CONV_CASES[case]
    torch.manual_seed(5)
    conv = nn.Conv2d(**kwargs, dtype=torch.float64)
    plain = copy.deepcopy(conv)
    wrapped = TrAct(conv, lam=0.2)
    x = torch.randn(*shape, dtype=torch.float64)
    out = wrapped(x)
    assert torch.equal(out, plain(x))
    dz = torch.randn_like(out)
    out.backward(dz)

    rows = _reference_patches(x, plain, pads)
    groups, o = plain.groups, plain.out_channels
    w = plain.weight.detach().reshape(groups, o // groups, -1)
    dz_rows = dz.permute(0, 2, 3, 1).reshape(-1, groups, o // groups)
    # the reference patches reproduce the layer's output, so they are the layer's X
    recon = torch.einsum("gbn,gon->bgo", rows, w).reshape(-1, o) + plain.bias.detach()
    torch.testing.assert_close(recon, out.detach().permute(0, 2, 3, 1).reshape(-1, o))
    expected = torch.stack([_direct(dz_rows[:, g], rows[g], 0.2) for g in range(groups)])
    torch.testing.assert_close(
        wrapped.weight.grad, expected.reshape(plain.weight.shape), rtol=1e-8, atol=1e-10
    )


def test_conv_chunked_gram_equals_single_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(6)
    conv = nn.Conv2d(3, 4, 3, padding=1, dtype=torch.float64)
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    dz = torch.randn(5, 4, 6, 6, dtype=torch.float64)
    grads = []
    for limit in (2**25, 1):  # 1 element: one image per chunk, five chunks
        monkeypatch.setattr(tract_module, "_UNFOLD_CHUNK_ELEMENTS", limit)
        wrapped = TrAct(copy.deepcopy(conv))
        wrapped(x).backward(dz)
        grads.append(wrapped.weight.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-12)


def test_unbatched_conv_input() -> None:
    torch.manual_seed(7)
    conv = nn.Conv2d(2, 3, 3, padding=1, dtype=torch.float64)
    x = torch.randn(2, 5, 5, dtype=torch.float64)
    batched, unbatched = TrAct(copy.deepcopy(conv)), TrAct(copy.deepcopy(conv))
    batched(x.unsqueeze(0)).sum().backward()
    unbatched(x).sum().backward()
    torch.testing.assert_close(batched.weight.grad, unbatched.weight.grad, rtol=1e-12, atol=0)


def test_empty_batch_gives_zero_weight_grad() -> None:
    wrapped = TrAct(nn.Linear(4, 2))
    wrapped(torch.randn(0, 4)).sum().backward()
    assert torch.equal(wrapped.weight.grad, torch.zeros(2, 4))


# --------------------------------------------------------------------------- integration


def _mlp() -> nn.Sequential:
    torch.manual_seed(8)
    return nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))


def test_state_dict_keys_and_round_trip_unchanged() -> None:
    model = _mlp()
    before = model.state_dict()
    model[0] = TrAct(model[0])
    after = model.state_dict()
    assert list(after) == list(before)
    buffer = io.BytesIO()
    torch.save(after, buffer)
    buffer.seek(0)
    fresh = _mlp()
    fresh[0] = TrAct(fresh[0])
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert all(torch.equal(before[k], fresh.state_dict()[k]) for k in before)
    assert isinstance(model[0].layer, nn.Linear)
    assert model[0].layer.weight is model[0].weight
    assert "lam=0.1" in repr(model[0])


def test_optimizer_built_before_wrapping_applies_tract_gradient() -> None:
    model = _mlp().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model[0] = TrAct(model[0], lam=0.1)
    w0 = model[0].weight.detach().clone()
    x = torch.randn(32, 5, dtype=torch.float64)
    h = model[0](x)
    h.retain_grad()
    model[2](model[1](h)).pow(2).mean().backward()
    opt.step()
    expected = _direct(h.grad, x, 0.1)
    torch.testing.assert_close(w0 - model[0].weight.detach(), 0.1 * expected, rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("opt_cls", [torch.optim.SGD, torch.optim.Adam])
def test_training_reduces_loss(opt_cls) -> None:
    model = _mlp()
    model[0] = TrAct(model[0])
    g = torch.Generator().manual_seed(9)
    x = torch.randn(128, 5, generator=g)
    y = torch.sin(x[:, :1] * 2) + x[:, 1:2] * x[:, 2:3]
    opt = opt_cls(model.parameters(), lr=0.2 if opt_cls is torch.optim.SGD else 0.03)
    losses = []
    for _ in range(60):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_fits_badly_scaled_inputs_faster_than_plain_sgd() -> None:
    # Linear regression with input scales 0.1 ... 10: plain SGD's stable lr is set by the
    # largest scale and barely moves the small-scale weights; TrAct whitens the inputs.
    g = torch.Generator().manual_seed(10)
    scales = torch.logspace(-1, 1, 8)
    x = torch.randn(256, 8, generator=g) * scales
    y = x @ (torch.randn(8, 1, generator=g) / scales[:, None])

    def final_loss(wrap: bool, lr: float) -> float:
        torch.manual_seed(11)
        layer = nn.Linear(8, 1)
        model = TrAct(layer) if wrap else layer
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        for _ in range(100):
            opt.zero_grad()
            loss = (model(x) - y).pow(2).mean()
            loss.backward()
            opt.step()
        return loss.item()

    best_sgd = min(final_loss(False, lr) for lr in (0.003, 0.006, 0.009))  # 0.01 diverges
    assert final_loss(True, 0.5) < 0.01 * best_sgd


def test_no_grad_and_frozen_weight_skip_the_transform() -> None:
    wrapped = TrAct(nn.Linear(3, 2))
    x = torch.randn(4, 3)
    with torch.no_grad():
        assert torch.equal(wrapped(x), wrapped.layer(x))
    wrapped.weight.requires_grad_(False)
    wrapped(x).sum().backward()
    assert wrapped.weight.grad is None and wrapped.bias.grad is not None


def test_deepcopy_keeps_parameters_shared_with_layer() -> None:
    clone = copy.deepcopy(TrAct(nn.Conv2d(2, 2, 3)))
    assert clone.layer.weight is clone.weight and clone.layer.bias is clone.bias


# --------------------------------------------------------------------------- dtypes


def test_autocast_bf16_solves_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []
    solve_ex = torch.linalg.solve_ex

    def spy(a, b, **kwargs):
        seen.append((a.dtype, b.dtype))
        return solve_ex(a, b, **kwargs)

    monkeypatch.setattr(torch.linalg, "solve_ex", spy)
    torch.manual_seed(12)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    reference = TrAct(copy.deepcopy(conv))
    wrapped = TrAct(conv)
    x = torch.randn(2, 3, 8, 8)
    dz = torch.randn(2, 8, 8, 8)
    reference(x).backward(dz)
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = wrapped(x)
        assert out.dtype == torch.bfloat16
        out.float().backward(dz)  # backward inside the autocast region
    assert seen and all(d == (torch.float32, torch.float32) for d in seen)
    grad = wrapped.weight.grad
    assert grad.dtype == torch.float32 and torch.isfinite(grad).all()
    rel = (grad - reference.weight.grad).norm() / reference.weight.grad.norm()
    assert rel < 3e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_low_precision_parameters(dtype: torch.dtype, kind: str) -> None:
    torch.manual_seed(13)
    if kind == "linear":
        layer, x = nn.Linear(6, 4, dtype=torch.float64), torch.randn(40, 6, dtype=torch.float64)
    else:
        layer = nn.Conv2d(2, 4, 3, padding=1, dtype=torch.float64)
        x = torch.randn(2, 2, 5, 5, dtype=torch.float64)
    reference = TrAct(copy.deepcopy(layer))
    out = reference(x)
    dz = torch.randn_like(out)
    out.backward(dz)
    wrapped = TrAct(layer.to(dtype))
    wrapped(x.to(dtype)).backward(dz.to(dtype))
    grad = wrapped.weight.grad
    assert grad.dtype == dtype and torch.isfinite(grad).all()
    rel = (grad.double() - reference.weight.grad).norm() / reference.weight.grad.norm()
    assert rel < 5e-2


def test_low_precision_linear_chunked_upcast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tract_module, "_UNFOLD_CHUNK_ELEMENTS", 16)  # 2 rows per chunk
    torch.manual_seed(14)
    x = torch.randn(30, 8).bfloat16()
    dz = torch.randn(30, 3)
    wrapped = TrAct(nn.Linear(8, 3).bfloat16())
    wrapped(x).backward(dz.bfloat16())
    dw = (dz.bfloat16().T @ x).double()  # the bf16 standard gradient autograd produced
    expected = tract_grad(dw, x.double(), 0.1)
    rel = (wrapped.weight.grad.double() - expected).norm() / expected.norm()
    assert rel < 2e-2


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("lam", "exc", "match"), [
    (0.0, ValueError, r"lam must be > 0 \(got 0.0\)"),
    (-1, ValueError, r"lam must be > 0 \(got -1\)"),
    (float("nan"), ValueError, r"lam must be finite"),
    ("0.1", TypeError, r"lam must be a real number"),
])
def test_bad_lam(lam, exc, match) -> None:
    with pytest.raises(exc, match=match):
        TrAct(nn.Linear(2, 2), lam=lam)
    with pytest.raises(exc, match=match):
        tract_grad(torch.zeros(2, 2), torch.zeros(3, 2), lam)


def test_unsupported_layers() -> None:
    with pytest.raises(TypeError, match=r"nn.Linear or nn.Conv2d \(got Conv1d\)"):
        TrAct(nn.Conv1d(2, 2, 3))
    with pytest.raises(TypeError, match=r"already wrapped"):
        TrAct(TrAct(nn.Linear(2, 2)))

    class Scaled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match=r"Scaled, which overrides forward"):
        TrAct(Scaled(2, 2))
    with pytest.raises(ValueError, match=r"uninitialized"):
        TrAct(nn.LazyLinear(2))


def test_tract_grad_bad_shapes_and_form() -> None:
    with pytest.raises(ValueError, match=r"rows must be b x n"):
        tract_grad(torch.zeros(2, 3), torch.zeros(5, 4), 0.1)
    with pytest.raises(ValueError, match=r"form must be one of"):
        tract_grad(torch.zeros(2, 3), torch.zeros(5, 3), 0.1, form="inverse")


@pytest.mark.parametrize(("layer", "x", "size"), [
    (nn.Linear(30, 2), torch.randn(6, 30), 6),
    (nn.Linear(30, 2), torch.randn(60, 30), 30),
    (nn.Conv2d(8, 4, 5, stride=5), torch.randn(1, 8, 10, 10), 4),
], ids=["linear-dual", "linear-primal", "conv-dual"])
def test_solve_size_is_min_of_rows_and_features(
    monkeypatch: pytest.MonkeyPatch, layer: nn.Module, x: torch.Tensor, size: int
) -> None:
    sizes = []
    solve_ex = torch.linalg.solve_ex

    def spy(a, b, **kwargs):
        sizes.append(a.shape[-1])
        return solve_ex(a, b, **kwargs)

    monkeypatch.setattr(torch.linalg, "solve_ex", spy)
    TrAct(layer)(x).sum().backward()
    assert sizes == [size]
