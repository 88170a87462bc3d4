"""GaLoreAdamW: galore-torch's trajectory, a plain fp64 reference, sides, memory, clock,
regressions (rank clamp, reverse_std on wide matrices, >2-D weights), SVD failure, bf16."""

from __future__ import annotations

import io
import warnings

import pytest
import torch

from optforge.lowrank import GaLoreAdamW, ProjectedOptimizer, galore_param_groups
from optforge.lowrank import projected as projected_module
from tests.lowrank._reference import PlainGaLore, lowrank_grads

SHAPES = [(64, 32), (32, 64), (48, 48)]


_grads = lowrank_grads


@pytest.mark.parametrize("shape", SHAPES)
def test_follows_galore_torch_trajectory_with_official_settings(shape) -> None:
    galore_torch = pytest.importorskip("galore_torch", reason="galore-torch not installed")
    torch.manual_seed(0)
    w0 = torch.randn(shape)
    ref, ours = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    group = {"rank": 8, "update_proj_gap": 3, "scale": 0.25, "proj_type": "std"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_opt = galore_torch.GaLoreAdamW([{"params": [ref], **group}], lr=1e-2, weight_decay=0.1)
    opt = GaLoreAdamW([ours], lr=1e-2, weight_decay=0.1, **group)
    for g in _grads(shape, 10, dtype=torch.float32):
        ref.grad, ours.grad = g.clone(), g.clone()
        ref_opt.step()
        opt.step()
    assert (ours - w0).abs().max() > 1e-3  # it moved
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("proj_type", ["std", "reverse_std"])
def test_matches_plain_fp64_reference(shape, proj_type) -> None:
    m, n = shape
    side = {"std": "right" if m >= n else "left", "reverse_std": "left" if m >= n else "right"}
    w0 = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ref = PlainGaLore(w0.clone(), lr=1e-2, rank=8, gap=3, scale=0.25, side=side[proj_type],
                      wd=0.1)  # fmt: skip
    p = torch.nn.Parameter(w0.clone())
    opt = GaLoreAdamW([p], lr=1e-2, rank=8, update_proj_gap=3, scale=0.25,
                      proj_type=proj_type, weight_decay=0.1)  # fmt: skip
    for g in _grads(shape, 10):
        ref.step(g)
        p.grad = g.clone()
        opt.step()
    torch.testing.assert_close(p.detach(), ref.w, rtol=1e-10, atol=1e-12)


def test_unprojected_group_is_hf_adamw() -> None:
    # rank=None: AdamW with ε on √v, bias correction in the step, decay after the step.
    w0 = torch.randn(5, 3, dtype=torch.float64)
    p = torch.nn.Parameter(w0.clone())
    opt = GaLoreAdamW([{"params": [p], "rank": None}], lr=0.1, weight_decay=0.5)
    w, m, v = w0.clone(), 0.0, 0.0
    for t, g in enumerate(_grads((5, 3), 4), start=1):
        p.grad = g
        opt.step()
        m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g * g
        w = w - 0.1 * (0.999**0 * (1 - 0.999**t) ** 0.5 / (1 - 0.9**t)) * m / (v.sqrt() + 1e-6)
        w = w - 0.1 * 0.5 * w
    torch.testing.assert_close(p.detach(), w, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(("proj_type", "moment", "basis"), [
    ("std", (64, 8), (8, 16)), ("reverse_std", (8, 16), (64, 8)),
])  # fmt: skip
def test_sides_state_shapes_and_bytes(proj_type, moment, basis) -> None:
    p = torch.nn.Parameter(torch.randn(64, 16))
    opt = GaLoreAdamW([p], rank=8, proj_type=proj_type)
    p.grad = torch.randn(64, 16)
    opt.step()
    st = opt.state[p]
    assert st["inner.exp_avg"].shape == moment and st["inner.exp_avg_sq"].shape == moment
    assert st["proj.P"].shape == basis and st["proj.P"].dtype == torch.float32
    floats = sum(t.numel() for k, t in st.items() if k.startswith(("inner.exp", "proj.")))
    big, small = (64, 16) if proj_type == "std" else (16, 64)
    assert floats == 2 * big * 8 + 8 * small  # reference 1.3's formula, each side
    assert all(isinstance(t, torch.Tensor) for t in st.values())


def test_refresh_clock(monkeypatch) -> None:
    calls = []
    real = projected_module.make_basis

    def counting(kind, g, view, gen):
        calls.append(int(opt.state[p]["step"]) - 1)
        return real(kind, g, view, gen)

    monkeypatch.setattr(projected_module, "make_basis", counting)
    p = torch.nn.Parameter(torch.randn(12, 6))
    opt = GaLoreAdamW([p], rank=2, update_proj_gap=4)
    for g in _grads((12, 6), 10, dtype=torch.float32):
        p.grad = g
        opt.step()
    assert calls == [0, 4, 8]


def test_rank_clamped_reverse_std_wide_and_3d_weight() -> None:
    p = torch.nn.Parameter(torch.randn(6, 4))
    opt = GaLoreAdamW([p], rank=128)
    p.grad = torch.randn(6, 4)
    opt.step()
    assert opt.state[p]["proj.P"].shape == (6, 4)  # rank min(128, 6, 4) = 4
    wide = torch.nn.Parameter(torch.randn(64, 256))  # galore-torch raises here (reference 1.4)
    opt = GaLoreAdamW([wide], rank=128, proj_type="reverse_std")
    wide.grad = torch.randn(64, 256)
    opt.step()
    assert opt.state[wide]["inner.exp_avg"].shape == (64, 64)  # r = min(128, 64, 256)
    conv = torch.nn.Parameter(torch.randn(8, 3, 3, 3))  # seen as 8×27
    opt = GaLoreAdamW([conv], rank=4, proj_type="std")
    before = conv.detach().clone()
    conv.grad = torch.randn(8, 3, 3, 3)
    opt.step()
    assert opt.state[conv]["proj.P"].shape == (8, 4) and not torch.equal(conv, before)


def test_svd_failure_keeps_previous_basis(monkeypatch) -> None:
    p = torch.nn.Parameter(torch.randn(10, 6))
    opt = GaLoreAdamW([p], rank=2, update_proj_gap=1)
    p.grad = torch.randn(10, 6)
    opt.step()
    basis = opt.state[p]["proj.P"].clone()

    def broken(*args, **kwargs):
        raise torch.linalg.LinAlgError("did not converge")

    monkeypatch.setattr(torch.linalg, "svd", broken)
    p.grad = torch.randn(10, 6)
    opt.step()
    assert torch.equal(opt.state[p]["proj.P"], basis) and torch.isfinite(p).all()
    fresh = torch.nn.Parameter(torch.randn(10, 6))  # first refresh: seeded random basis
    opt2 = GaLoreAdamW([fresh], rank=2)
    fresh.grad = torch.randn(10, 6)
    opt2.step()
    q = opt2.state[fresh]["proj.P"]
    torch.testing.assert_close(q.T @ q, torch.eye(2), rtol=0, atol=1e-5)


def test_bf16_params_keep_fp32_state_and_follow_fp32_run() -> None:
    w0 = torch.randn(32, 16, generator=torch.Generator().manual_seed(0)) * 0.02
    runs = {}
    for dtype in (torch.float32, torch.bfloat16):
        p = torch.nn.Parameter(w0.to(dtype, copy=True))
        opt = GaLoreAdamW([p], lr=1e-2, rank=4, update_proj_gap=2)
        for g in _grads((32, 16), 5, dtype=torch.float32):
            p.grad = g.to(dtype)
            opt.step()
        runs[dtype] = (p.detach().float() - w0.to(dtype).float()).flatten()
        assert all(opt.state[p][k].dtype == torch.float32 for k in ("proj.P", "inner.exp_avg"))
    cos = torch.nn.functional.cosine_similarity(runs[torch.float32], runs[torch.bfloat16], dim=0)
    assert cos > 0.99


def test_group_helper_and_resume_mid_subspace() -> None:
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(10, 8)
            self.attn = torch.nn.Linear(8, 8)
            self.mlp = torch.nn.Linear(8, 16)
            self.norm = torch.nn.LayerNorm(16)
            self.lm_head = torch.nn.Linear(16, 10)

    model = Block()
    groups = galore_param_groups(model, rank=2, update_proj_gap=3, scale=0.25)
    assert [len(g["params"]) for g in groups] == [2, 7]
    assert groups[0]["params"][0] is model.attn.weight and groups[1]["rank"] is None

    def run(opt, params, steps, seed):
        gen = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            for q in params:
                q.grad = torch.randn(q.shape, generator=gen)
            opt.step()

    torch.manual_seed(0)
    ref = Block()
    twin = Block()
    twin.load_state_dict(ref.state_dict())
    ref_opt = GaLoreAdamW(galore_param_groups(ref, rank=2, update_proj_gap=3), lr=1e-2)
    run(ref_opt, list(ref.parameters()), 4, 0)
    run(ref_opt, list(ref.parameters()), 3, 1)
    opt = GaLoreAdamW(galore_param_groups(twin, rank=2, update_proj_gap=3), lr=1e-2)
    run(opt, list(twin.parameters()), 4, 0)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    opt2 = GaLoreAdamW(galore_param_groups(twin, rank=2, update_proj_gap=3), lr=1e-2)
    opt2.load_state_dict(torch.load(buf, weights_only=True))
    run(opt2, list(twin.parameters()), 3, 1)
    for a, b in zip(ref.parameters(), twin.parameters()):
        assert torch.equal(a, b)


def test_group_helper_takes_hf_conv1d_and_refuses_to_project_nothing() -> None:
    class Conv1D(torch.nn.Module):  # Hugging Face's GPT-2 linear (in×out), matched by name
        def __init__(self, nf: int, nx: int) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(nx, nf))
            self.bias = torch.nn.Parameter(torch.zeros(nf))

    model = torch.nn.Module()
    model.attn, model.norm = Conv1D(12, 8), torch.nn.LayerNorm(12)
    groups = galore_param_groups(model, rank=2)
    assert [id(p) for p in groups[0]["params"]] == [id(model.attn.weight)]
    assert len(groups[1]["params"]) == 3
    # nothing matches: an error, not a "GaLore" optimizer that is plain AdamW
    with pytest.raises(ValueError, match=r"no trainable linear weight .* nothing to project"):
        galore_param_groups(torch.nn.Sequential(torch.nn.Linear(4, 4)), rank=2)
    with pytest.raises(ValueError, match=r"no trainable Linear weight"):
        galore_param_groups(model, rank=2, module_types=(torch.nn.Linear,))


def test_rotate_policy_carries_moments_into_the_new_basis() -> None:
    p = torch.nn.Parameter(torch.randn(16, 8, dtype=torch.float64))
    opt = ProjectedOptimizer([p], rank=8, update_proj_gap=2, on_switch="rotate")
    grads = _grads((16, 8), 3)
    for g in grads[:2]:
        p.grad = g
        opt.step()
    st = opt.state[p]
    old_p, old_m = st["proj.P"].clone(), st["inner.exp_avg"].clone()
    p.grad = grads[2]
    opt.step()
    # full rank: rotation is exact, M in the new basis = P_newᵀ P_old M_old, then the EMA
    new_p = st["proj.P"]
    expected = 0.9 * (new_p.T @ old_p @ old_m) + 0.1 * (new_p.T @ grads[2])
    torch.testing.assert_close(st["inner.exp_avg"], expected, rtol=1e-10, atol=1e-12)


def test_bad_input_messages() -> None:
    p = torch.nn.Parameter(torch.randn(4, 4))
    with pytest.raises(ValueError, match=r"rank must be >= 1 \(got 0\)"):
        GaLoreAdamW([p], rank=0)
    with pytest.raises(TypeError, match="complex"):
        GaLoreAdamW([torch.nn.Parameter(torch.randn(3, 3, dtype=torch.complex64))])
    with pytest.raises(ValueError, match="rank"):
        galore_param_groups(torch.nn.Linear(2, 2), rank=None)


def test_bf16_basis_opt_in_halves_basis_bytes_and_follows_fp32_basis() -> None:
    # proj_dtype="bfloat16": the basis costs 2 bytes a value (moments stay fp32), and the
    # run stays close to the fp32-basis run (the basis is rounded, the algorithm unchanged).
    w0 = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    runs = {}
    for proj_dtype in (None, "bfloat16"):
        p = torch.nn.Parameter(w0.clone())
        opt = GaLoreAdamW([p], lr=1e-2, rank=8, update_proj_gap=2, proj_dtype=proj_dtype)
        for g in _grads((64, 16), 6, dtype=torch.float32):
            p.grad = g
            opt.step()
        st = opt.state[p]
        assert st["inner.exp_avg"].dtype == torch.float32
        assert st["proj.P"].dtype == (torch.float32 if proj_dtype is None else torch.bfloat16)
        assert st["proj.P"].nbytes == 64 * 8 * (4 if proj_dtype is None else 2)
        runs[proj_dtype] = (p.detach() - w0).flatten()
    cos = torch.nn.functional.cosine_similarity(runs[None], runs["bfloat16"], dim=0)
    assert 0.999 < cos < 1.0  # close, and not silently the fp32 basis
    with pytest.raises(ValueError, match="proj_dtype and proj_bits"):
        GaLoreAdamW([torch.nn.Parameter(w0)], proj_dtype="bfloat16", proj_bits=8)


def test_inner_rule_backends_agree_and_checkpoints_without_them_load() -> None:
    """The inner Adam runs through ``kernels.apply_rule_`` on the group's backend: loop,
    foreach and auto (CPU: foreach) give the same bits, and a checkpoint saved before the
    optimizer took ``foreach``/``fused``/``backend`` loads with the defaults filled in."""
    runs = []
    for backend in ("loop", "foreach", "auto"):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Linear(20, 6))
        opt = GaLoreAdamW(model.parameters(), lr=1e-2, rank=3, update_proj_gap=2,
                          backend=backend)  # fmt: skip
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen)
            opt.step()
        runs.append((list(model.parameters()), opt))
    for params, opt in runs[1:]:
        for a, b in zip(params, runs[0][0]):
            assert torch.equal(a, b)
            for key, value in runs[0][1].state[b].items():
                assert torch.equal(opt.state[a][key], value), key
    params, opt = runs[0]
    saved = opt.state_dict()
    for group in saved["param_groups"]:
        for key in ("foreach", "fused", "backend"):
            del group[key]
    fresh = GaLoreAdamW(params, lr=1e-2, rank=3, update_proj_gap=2)
    fresh.load_state_dict(saved)
    assert fresh.param_groups[0]["backend"] is None
    with pytest.raises(ValueError, match="backend must be one of"):
        GaLoreAdamW(params, backend="cuda")


def test_eager_inner_rule_runs_per_parameter(monkeypatch) -> None:
    """On the eager paths (CPU ``auto``) each parameter's inner Adam is one call of its own, so
    no projected gradient waits for the others (peak memory as a per-parameter loop)."""
    calls = []
    real = projected_module.apply_rule_

    def spy(rule, lists, hyper, *, backend):
        calls.append((len(lists[0]), backend))
        real(rule, lists, hyper, backend=backend)

    monkeypatch.setattr(projected_module, "apply_rule_", spy)
    model = torch.nn.Sequential(torch.nn.Linear(12, 20), torch.nn.Linear(20, 6))
    opt = GaLoreAdamW(model.parameters(), lr=1e-2, rank=3)
    for p in model.parameters():
        p.grad = torch.randn(p.shape)
    opt.step()
    assert calls == [(1, "auto")] * 4
