"""Fira, FRUGAL, Natural GaLore, Q-GaLore and 8-bit GaLore against plain implementations of
their papers' updates (tests/lowrank/_reference.py and below), plus each method's invariants
from reference/lowrank.md."""

from __future__ import annotations

import math

import pytest
import torch

from optforge.lowrank import (
    FRUGAL,
    FiraAdamW,
    GaLoreAdamW,
    GaLoreAdamW8bit,
    NaturalGaLoreAdamW,
    ProjectedOptimizer,
    QGaLoreAdamW8bit,
)
from optforge.lowrank.projectors import MatrixView, make_basis, project, project_back
from optforge.lowrank.quantization import (
    dequantize_blockwise,
    dequantize_groupwise,
    dynamic_map,
    quantize_blockwise,
    quantize_groupwise,
)
from tests.lowrank._reference import PlainGaLore, back, lowrank_grads, proj, svd_basis

_grads = lowrank_grads


def _run(opt_cls, w0, grads, **kw):
    p = torch.nn.Parameter(w0.clone())
    opt = opt_cls([p], **kw)
    for g in grads:
        p.grad = g.clone()
        opt.step()
    return p.detach(), opt


# -- Fira ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "rank"), [((32, 8), 2), ((8, 32), 4), ((64, 64), 8)])
@pytest.mark.parametrize("residual", ["fira", "fira_orthogonal"])
def test_fira_matches_plain_reference(shape, rank, residual) -> None:
    w0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    side = "left" if shape[0] >= shape[1] else "right"  # reverse_std
    ref = PlainGaLore(w0.clone(), lr=1e-2, rank=rank, gap=3, scale=0.25, side=side,
                      residual=residual)  # fmt: skip
    grads = _grads(shape, 8)
    for g in grads:
        ref.step(g)
    ours, opt = _run(FiraAdamW, w0, grads, lr=1e-2, rank=rank, update_proj_gap=3,
                     residual=residual)  # fmt: skip
    # N is re-derived as u/c from the inner rule's bias-corrected u: a few ulps, which the
    # limiter's norm ratio amplifies to ~1e-9 relative after 8 steps.
    torch.testing.assert_close(ours, ref.w, rtol=1e-7, atol=1e-9)


def test_fira_residual_keeps_one_minus_alpha_of_the_subspace() -> None:
    g = _grads((32, 16), 1)[0]
    p = svd_basis(g, 4, "left")
    r = proj(g, p, "left")
    official = g - 0.25 * back(r, p, "left")
    ratio = proj(official, p, "left").norm() / r.norm()
    torch.testing.assert_close(ratio, torch.tensor(0.75, dtype=torch.float64), rtol=1e-6, atol=0)
    clean = g - back(r, p, "left")
    assert proj(clean, p, "left").norm() <= 1e-6 * g.norm()


def test_fira_limiter_bounds_growth_to_one_percent() -> None:
    # Growing gradients: the residual's norm doubles each step; after the limiter its
    # post-limit norm grows by exactly 1.01 per step.
    w0 = torch.zeros(16, 8, dtype=torch.float64)
    base = _grads((16, 8), 1)[0]
    p = torch.nn.Parameter(w0.clone())
    opt = FiraAdamW([p], lr=1e-3, rank=2, update_proj_gap=100)
    norms = []
    for k in range(5):
        p.grad = base * 2.0**k
        opt.step()
        norms.append(float(opt.state[p]["residual.norm"]))
    for a, b in zip(norms[1:], norms[2:]):
        assert math.isclose(b / a, 1.01, rel_tol=1e-6)


def test_fira_full_rank_alpha_one_is_galore() -> None:
    w0 = torch.randn(12, 6, dtype=torch.float64)
    grads = _grads((12, 6), 5)
    fira, _ = _run(FiraAdamW, w0, grads, lr=1e-2, rank=6, scale=1.0, update_proj_gap=2)
    galore, _ = _run(GaLoreAdamW, w0, grads, lr=1e-2, rank=6, update_proj_gap=2)
    torch.testing.assert_close(fira, galore, rtol=1e-6, atol=1e-9)


# -- FRUGAL ----------------------------------------------------------------------------------
@pytest.mark.parametrize("projector", ["svd", "randomized_svd", "random", "columns"])
@pytest.mark.parametrize("proj_type", ["left", "right", "full"])
def test_frugal_split_identity(projector, proj_type) -> None:
    g = _grads((24, 10), 1, dtype=torch.float32)[0]
    view = MatrixView.of((24, 10), 3, proj_type)
    basis = make_basis(projector, g, view, lambda: torch.Generator().manual_seed(0))
    inside = project_back(project(g, basis, view.side), basis, view.side)
    free = g - inside
    torch.testing.assert_close(inside + free, g, rtol=1e-6, atol=1e-6)
    for b in basis.values():  # orthonormal basis
        gram = b.T @ b if b.shape[0] > b.shape[1] else b @ b.T
        torch.testing.assert_close(gram, torch.eye(3), rtol=0, atol=1e-5)


def test_frugal_svd_matches_plain_reference_with_resets() -> None:
    w0 = torch.randn(20, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = _grads((20, 12), 9)
    # density 0.25 of the reduced dim 20 (reverse_std: left): r = 5
    ref = PlainGaLore(w0.clone(), lr=1e-2, rank=5, gap=3, side="left", eps=1e-8, wd=0.01,
                      residual="sign_sgd", reset=True, decay_first=True)  # fmt: skip
    for g in grads:
        ref.step(g)
    ours, opt = _run(FRUGAL, w0, grads, lr=1e-2, update_proj_gap=3)
    assert opt.state[next(iter(opt.state))]["proj.P"].shape == (20, 5)
    torch.testing.assert_close(ours, ref.w, rtol=1e-10, atol=1e-12)


def test_frugal_reset_restarts_moments_and_bias_correction() -> None:
    w0 = torch.zeros(16, 8, dtype=torch.float64)
    grads = _grads((16, 8), 3)
    p = torch.nn.Parameter(w0.clone())
    opt = FRUGAL([p], lr=1e-2, update_proj_gap=2, weight_decay=0.0, residual="none",
                 density=1.0)  # fmt: skip
    for g in grads[:2]:
        p.grad = g
        opt.step()
    before = p.detach().clone()
    p.grad = grads[2]
    opt.step()
    st = opt.state[p]
    assert int(st["inner.step"]) == 1 and int(st["step"]) == 3
    # first step after a reset: Adam's |u| = |g|/(|g| + ε) ≈ 1 per coordinate of the subspace;
    # density 1 of 16 rows, clamped to rank 8: ‖Δθ‖ = ‖P u‖ = ‖u‖ = η·√(8·8) up to ε
    torch.testing.assert_close((p - before).norm(), torch.tensor(1e-2 * math.sqrt(64.0),
                               dtype=torch.float64), rtol=1e-4, atol=0)  # fmt: skip


# -- Natural GaLore --------------------------------------------------------------------------
def _woodbury(opt_cls=NaturalGaLoreAdamW):
    return opt_cls.__mro__[1]._natural


def test_woodbury_equals_direct_solve_and_one_vector_formula() -> None:
    q, s, delta = 64, 20, 1e-3
    gen = torch.Generator().manual_seed(0)
    hist = torch.randn(s, q, generator=gen, dtype=torch.float64)
    st = {"natural.history": torch.zeros(s, q, dtype=torch.float64),
          "natural.count": torch.tensor(0)}  # fmt: skip
    group = {"natural_damping": delta}
    for c in hist:
        out = ProjectedOptimizer._natural(None, st, c.reshape(8, 8), group)  # type: ignore[arg-type]
    h = hist.T
    direct = torch.linalg.solve(delta * torch.eye(q, dtype=torch.float64) + h @ h.T, hist[-1])
    assert (out.reshape(-1) - direct).norm() / direct.norm() <= 1e-8
    one = {"natural.history": torch.zeros(1, q, dtype=torch.float64),
           "natural.count": torch.tensor(0)}  # fmt: skip
    c = hist[0]
    out = ProjectedOptimizer._natural(None, one, c, group)  # type: ignore[arg-type]
    torch.testing.assert_close(out, c / (delta + c @ c), rtol=1e-10, atol=0)


def test_natural_galore_matches_plain_reference_and_memory_formula() -> None:
    m, n, r, s = 24, 16, 4, 3
    w0 = torch.randn(m, n, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = _grads((m, n), 7)
    ours, opt = _run(NaturalGaLoreAdamW, w0, grads, lr=1e-2, rank=r, update_proj_gap=3,
                     natural_history=s)  # fmt: skip
    w, hist, mom, var, u, vh = w0.clone(), [], 0.0, 0.0, None, None
    for k, g in enumerate(grads):
        if k % 3 == 0:
            uu, _, vv = torch.linalg.svd(g, full_matrices=False)
            u, vh = uu[:, :r], vv[:r]
        c = (u.T @ g @ vh.T).reshape(-1)
        hist = (hist + [c])[-s:]
        h = torch.stack(hist).T
        nat = torch.linalg.solve(1e-3 * torch.eye(r * r, dtype=torch.float64) + h @ h.T, c)
        mom, var = 0.9 * mom + 0.1 * nat, 0.999 * var + 0.001 * nat * nat
        t = k + 1
        step = math.sqrt(1 - 0.999**t) / (1 - 0.9**t) * mom / (var.sqrt() + 1e-6)
        w = w - 1e-2 * u @ step.reshape(r, r) @ vh
    torch.testing.assert_close(ours, w, rtol=1e-8, atol=1e-10)
    st = next(iter(opt.state.values()))
    floats = sum(t.numel() for k, t in st.items() if t.is_floating_point())
    assert floats == 2 * r * r + (m + n) * r + s * r * r


# -- quantization, 8-bit Adam, Q-GaLore ------------------------------------------------------
def test_blockwise_codes_agree_with_bitsandbytes() -> None:
    bnb_f = pytest.importorskip("bitsandbytes.functional", reason="bitsandbytes not installed")
    x = torch.randn(5000, generator=torch.Generator().manual_seed(0))
    for signed, values in ((True, x), (False, x.abs())):
        code = dynamic_map(signed)
        assert torch.equal(code, bnb_f.create_dynamic_map(signed=signed))
        ours, absmax = quantize_blockwise(values, code)
        theirs, qs = bnb_f.quantize_blockwise(values, code=code, blocksize=256)
        torch.testing.assert_close(absmax, qs.absmax)
        agree = (ours == theirs.reshape(-1)).float().mean()
        assert agree > 0.99  # bitsandbytes' CPU search is not always the nearest code...
        err = (dequantize_blockwise(ours, absmax, code, values.shape) - values).abs()
        err_bnb = (bnb_f.dequantize_blockwise(theirs, qs) - values).abs()
        assert (err <= err_bnb + 1e-7).all()  # ...ours is, never worse


def test_8bit_galore_follows_fp32_moments_within_quantization_error() -> None:
    w0 = torch.randn(256, 128, generator=torch.Generator().manual_seed(0))
    grads = _grads((256, 128), 10, dtype=torch.float32)
    q8, opt = _run(GaLoreAdamW8bit, w0, grads, lr=1e-2, rank=32, update_proj_gap=5,
                   weight_decay=0.0)  # fmt: skip
    f32, _ = _run(GaLoreAdamW, w0, grads, lr=1e-2, rank=32, update_proj_gap=5, eps=1e-8)
    st = next(iter(opt.state.values()))
    assert st["inner.exp_avg"].dtype == torch.uint8 and st["inner.exp_avg"].numel() == 32 * 128
    d8, d32 = (q8 - w0).flatten(), (f32 - w0).flatten()
    assert torch.nn.functional.cosine_similarity(d8, d32, dim=0) > 0.99
    assert (d8 - d32).norm() < 0.05 * d32.norm()


def test_8bit_galore_steps_fp64_parameters() -> None:
    # The dequantized moments used to pin the basis to fp32, so an fp64 matrix past min_8bit_size
    # failed in the projection (float != double).
    w0 = torch.randn(512, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    grads = _grads((512, 512), 4, dtype=torch.float64)
    q8, opt = _run(GaLoreAdamW8bit, w0, grads, lr=1e-2, rank=128, update_proj_gap=2)
    f64, _ = _run(GaLoreAdamW, w0, grads, lr=1e-2, rank=128, update_proj_gap=2)
    st = next(iter(opt.state.values()))
    assert st["inner.exp_avg"].dtype == torch.uint8 and q8.dtype == torch.float64
    d8, d64 = (q8 - w0).flatten(), (f64 - w0).flatten()
    assert torch.nn.functional.cosine_similarity(d8, d64, dim=0) > 0.99


def test_8bit_adam_against_bitsandbytes_on_a_full_matrix() -> None:
    bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes not installed")
    w0 = torch.randn(64, 64, generator=torch.Generator().manual_seed(0))
    grads = _grads((64, 64), 10, dtype=torch.float32)
    ours, _ = _run(GaLoreAdamW8bit, w0, [g for g in grads], rank=None, lr=1e-2, weight_decay=0.0)
    p = torch.nn.Parameter(w0.clone())
    theirs_opt = bnb.optim.AdamW8bit([p], lr=1e-2, betas=(0.9, 0.999), eps=1e-8,
                                     weight_decay=0.0)  # keywords only  # fmt: skip
    for g in grads:
        p.grad = g.clone()
        theirs_opt.step()
    d_ours, d_bnb = (ours - w0).flatten(), (p.detach() - w0).flatten()
    assert torch.nn.functional.cosine_similarity(d_ours, d_bnb, dim=0) > 0.99
    assert (d_ours - d_bnb).norm() < 0.05 * d_bnb.norm()


def test_stochastic_rounding_is_unbiased_and_codes_in_range() -> None:
    w = torch.randn(4096, generator=torch.Generator().manual_seed(0))
    n = 10_000  # reference 2.6: N = 10⁴ draws of every element, quantized in one call
    gen = torch.Generator().manual_seed(0)
    codes, s, z = quantize_groupwise(w.repeat(n), 8, 256, generator=gen)
    assert int(codes.max()) <= 255
    mean = dequantize_groupwise(codes, s, z, (n * 4096,), 256).view(n, 4096).mean(0)
    scale = s.view(n, 16)[0].repeat_interleave(256)
    assert ((mean - w).abs() <= 6 * scale / (2 * math.sqrt(n))).all()
    codes, s, z = quantize_groupwise(w, 4, 256)
    assert int(codes.max()) <= 15 and codes.dtype == torch.uint8


def test_qgalore_without_quantization_is_galore() -> None:
    w0 = torch.randn(32, 16, dtype=torch.float64)
    grads = _grads((32, 16), 6)
    q, _ = _run(QGaLoreAdamW8bit, w0, grads, lr=1e-2, rank=4, update_proj_gap=2, proj_bits=None,
                weight_bits=None, inner="adam", adaptive_gap=False, weight_decay=0.0,
                eps=1e-6)  # fmt: skip
    g, _ = _run(GaLoreAdamW, w0, grads, lr=1e-2, rank=4, update_proj_gap=2)
    torch.testing.assert_close(q, g, rtol=1e-6, atol=1e-9)


def test_qgalore_state_int4_basis_and_weights_on_the_8bit_grid() -> None:
    w0 = torch.randn(64, 32)
    p, opt = _run(QGaLoreAdamW8bit, w0, _grads((64, 32), 3, dtype=torch.float32), lr=1e-2,
                  rank=8)  # fmt: skip
    st = opt.state[next(iter(opt.state))]
    assert st["proj.P"].dtype == torch.uint8 and int(st["proj.P"].max()) <= 15
    groups = p.reshape(-1, 256)
    lo, hi = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
    steps = (groups - lo) / ((hi - lo) / 255)
    assert (steps - steps.round()).abs().max() < 1e-3  # every weight on its group's grid
    assert all(isinstance(v, torch.Tensor) for v in st.values())


def test_qgalore_adaptive_gap_follows_a_hand_computed_table(monkeypatch) -> None:
    # A gradient whose top direction never changes: |cos| = 1 at every refresh; FIFO of 2,
    # threshold 0.4, growth 2: refreshes at k = 0, 2, 4 (FIFO full: T = 4), 8 (T = 8), 16.
    from optforge.lowrank import projected as module

    calls = []
    real = module.make_basis

    def spy(kind, g, view, gen):
        calls.append(int(opt.state[p]["step"]) - 1)
        return real(kind, g, view, gen)

    monkeypatch.setattr(module, "make_basis", spy)
    g = _grads((16, 8), 1, dtype=torch.float32)[0]
    p = torch.nn.Parameter(torch.zeros(16, 8))
    opt = QGaLoreAdamW8bit([p], lr=1e-3, rank=2, update_proj_gap=2, queue_size=2)
    for _ in range(20):
        p.grad = g.clone()
        opt.step()
    assert calls == [0, 2, 4, 8, 16]
    assert int(opt.state[p]["switch.gap"]) == 16


@pytest.mark.parametrize("cls", [GaLoreAdamW, FiraAdamW, FRUGAL, NaturalGaLoreAdamW,
                                 QGaLoreAdamW8bit, GaLoreAdamW8bit])  # fmt: skip
def test_convergence_smoke_two_layer_mlp(cls) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 16, generator=gen)
    y = torch.tanh(x @ torch.randn(16, 1, generator=gen))
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.Tanh(), torch.nn.Linear(64, 1))
    opt = cls(model.parameters(), lr=1e-2, rank=8, update_proj_gap=20,
              **({"density": None} if cls is FRUGAL else {}))  # fmt: skip
    first = None
    for _ in range(150):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first
