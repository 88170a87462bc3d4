"""AGVM: the similarity math, μ's clamp and EMA, lr gating and restore, both batch-half modes
(single process and real gloo processes) against plain reimplementations, and exact resume."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.func import functional_call

from optforge.optim.agvm import AGVM, agvm_target_scale, cosine_distance
from tests._spawn import run_ranks
from tests.optim import _agvm_dist_worker as W

F64 = torch.float64


def vec_model(sizes=(2, 2, 2), dtype=F64):
    """One parameter vector per group, so the test sets each half's gradient directly."""
    return [torch.zeros(n, dtype=dtype, requires_grad=True) for n in sizes]


def sgd_groups(params, lr=0.1, **kw):
    return torch.optim.SGD([{"params": [p], "name": f"g{i}"} for i, p in enumerate(params)],
                           lr=lr, **kw)


def set_halves(opt, params, grads_a, grads_b):
    """Record the given per-parameter gradients as halves A and B."""
    opt.zero_grad()
    for h, grads in enumerate((grads_a, grads_b)):
        with opt.half(h):
            for p, g in zip(params, grads, strict=True):
                if g is not None:
                    p.grad = torch.as_tensor(g, dtype=p.dtype).clone()


# -- the math --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("b", "expected"), [
    ([3.0, -1.0, 2.0], 0.0),        # identical
    ([6.0, -2.0, 4.0], 0.0),        # same direction
    ([-3.0, 1.0, -2.0], 2.0),       # opposite
    ([1.0, 3.0, 0.0], 1.0),         # orthogonal
    ([0.0, 0.0, 0.0], 1.0),         # zero vector: cos = 0
])
def test_cosine_distance(b, expected):
    a = torch.tensor([3.0, -1.0, 2.0], dtype=F64)
    d = cosine_distance(a, torch.tensor(b, dtype=F64))
    assert d.dtype == F64
    torch.testing.assert_close(d, torch.tensor(expected, dtype=F64), rtol=1e-12, atol=1e-12)


def test_cosine_distance_general_angle():
    a, b = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.5, math.sqrt(3) / 2], dtype=F64)
    torch.testing.assert_close(cosine_distance(a, b), torch.tensor(0.5, dtype=F64),
                               rtol=1e-12, atol=1e-12)


def test_target_scale_clamps():
    d0 = torch.tensor(1.0, dtype=F64)
    d = torch.tensor([0.05, 10.0, 1.0, 0.5], dtype=F64)
    expected = torch.tensor([math.sqrt(10), math.sqrt(0.5), 1.0,
                             math.sqrt((1 + 1e-6) / (0.5 + 1e-6))], dtype=F64)
    torch.testing.assert_close(agvm_target_scale(d0, d), expected, rtol=1e-12, atol=0)


# -- μ through the wrapper -------------------------------------------------------------------------
def angle(deg):
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_one_agvm_step_updates_mu_by_ema():
    params = vec_model()
    opt = AGVM(sgd_groups(params), start_iter=0, update_interval=1)
    assert opt.is_agvm_step
    # D_0 = 1 − cos 90° = 1, D_1 = 1 − cos 60° = 0.5, D_2 = 1 − cos 0° = 0 (clamped to √10).
    set_halves(opt, params, [[1, 0], [1, 0], [2, 1]], [[0, 1], angle(60), [4, 2]])
    opt.step()
    d = torch.tensor([1.0, 1 - math.cos(math.radians(60)), 0.0], dtype=F64)
    torch.testing.assert_close(opt.last_distance, d, rtol=1e-12, atol=1e-12)
    target = [1.0, math.sqrt((1 + 1e-6) / (d[1].item() + 1e-6)), math.sqrt(10)]
    expected = torch.tensor([0.97 + 0.03 * t for t in target], dtype=F64)
    torch.testing.assert_close(opt.mu, expected, rtol=1e-12, atol=0)
    assert opt.mu.dtype == F64


def test_reference_group_keeps_mu_one_and_reference_by_name():
    params = vec_model()
    opt = AGVM(sgd_groups(params), reference="g1", start_iter=0, update_interval=1)
    assert opt.reference == 1
    set_halves(opt, params, [[1, 0], [1, 0], [1, 0]], [[0, 1], angle(60), [1, 0]])
    opt.step()
    d1 = 1 - math.cos(math.radians(60))
    target = [math.sqrt(max((d1 + 1e-6) / (1 + 1e-6), 0.5)), 1.0, math.sqrt(10)]
    expected = torch.tensor([0.97 + 0.03 * t for t in target], dtype=F64)
    torch.testing.assert_close(opt.mu, expected, rtol=1e-12, atol=0)
    assert opt.mu[1].item() == 1.0


def test_reference_name_errors():
    params = vec_model()
    with pytest.raises(ValueError, match=r"reference='backbone': no param groups .*'g0', 'g1'"):
        AGVM(sgd_groups(params), reference="backbone")
    sgd = torch.optim.SGD([{"params": [p], "name": "same"} for p in params], lr=0.1)
    with pytest.raises(ValueError, match=r"reference='same': 3 param groups have that 'name'"):
        AGVM(sgd, reference="same")
    with pytest.raises(ValueError, match=r"reference must be in \[0, 3\) \(got 3\)"):
        AGVM(sgd_groups(params), reference=3)


def test_non_finite_distance_leaves_mu_unchanged():
    params = vec_model()
    opt = AGVM(sgd_groups(params), start_iter=0, update_interval=1)
    set_halves(opt, params, [[1, 0], [float("nan"), 0], [1, 0]], [[0, 1], [1, 0], [1, 1]])
    opt.step()
    assert opt.mu[1].item() == 1.0  # NaN D: unchanged
    assert opt.mu[2].item() != 1.0  # finite D: updated
    before = opt.mu.clone()
    # NaN in the reference group: no group can be compared, all keep μ.
    set_halves(opt, params, [[float("inf"), 0], [1, 0], [1, 0]], [[0, 1], [0, 1], [1, 1]])
    opt.step()
    assert torch.equal(opt.mu, before)


def test_group_without_gradients_keeps_mu():
    params = vec_model()
    opt = AGVM(sgd_groups(params), start_iter=0, update_interval=1)
    set_halves(opt, params, [[1, 0], None, [1, 0]], [[0, 1], None, [1, 1]])
    opt.step()
    assert math.isnan(opt.last_distance[1].item())
    assert opt.mu[1].item() == 1.0 and opt.mu[2].item() != 1.0
    assert params[1].grad is None


def test_sparse_gradients_rejected():
    params = vec_model()
    opt = AGVM(sgd_groups(params), start_iter=10)
    params[0].grad = torch.ones(2, dtype=F64).to_sparse()
    with pytest.raises(RuntimeError, match="AGVM does not support sparse gradients"):
        opt.step()
    with pytest.raises(RuntimeError, match="sparse"), opt.half(0):
        pass


# -- lr gating and restore -------------------------------------------------------------------------
def record_inner_lrs(inner):
    seen = []
    inner.register_step_pre_hook(
        lambda o, args, kwargs: seen.append([g["lr"] for g in o.param_groups]))
    return seen


def load_mu(opt, mu, it=0):
    state = opt.state_dict()
    state["wrappers"][-1]["state"] = {"it": torch.tensor(it), "mu": torch.tensor(mu, dtype=F64)}
    opt.load_state_dict(state)


def test_lr_restored_bitwise():
    params = vec_model()
    sgd = sgd_groups(params, lr=0.1)
    opt = AGVM(sgd, start_iter=0, update_interval=1000)
    load_mu(opt, [3.0, 3.0, 1.7], it=1)  # 0.1·3/3 != 0.1 in floating point: dividing would fail
    assert 0.1 * 3.0 / 3.0 != 0.1
    seen = record_inner_lrs(sgd)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert seen == [[0.1 * 3.0, 0.1 * 3.0, 0.1 * 1.7]]
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1, 0.1]


def test_lr_restored_when_inner_step_raises():
    params = vec_model()
    sgd = sgd_groups(params, lr=0.1)
    opt = AGVM(sgd, start_iter=0, update_interval=1000)
    load_mu(opt, [1.0, 3.0, 3.0], it=1)

    def boom(o, args, kwargs):
        raise KeyError("inner failure")

    sgd.register_step_pre_hook(boom)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(KeyError, match="inner failure"):
        opt.step()
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1, 0.1]


def test_gating_window_and_interval():
    params = vec_model()
    sgd = sgd_groups(params, lr=0.5)
    opt = AGVM(sgd, start_iter=2, stop_iter=6, update_interval=3)
    load_mu(opt, [1.0, 2.0, 0.75])  # a stored μ makes lr scaling visible before any measurement
    seen = record_inner_lrs(sgd)
    agvm_steps, mus = [], []
    for it in range(9):
        agvm_steps.append(opt.is_agvm_step)
        if opt.is_agvm_step:
            set_halves(opt, params, [[1, 0], [1, 0], [1, 0]], [[0, 1], [1, 1], [1, -1]])
        else:  # a plain backward is enough outside AGVM steps
            opt.zero_grad()
            for p in params:
                p.grad = torch.ones_like(p)
        mu_before = opt.mu.clone()
        opt.step()
        mus.append(opt.mu.clone())
        if not agvm_steps[-1]:
            assert torch.equal(opt.mu, mu_before), f"μ changed at non-AGVM step {it}"
        scale = mu_before if not agvm_steps[-1] else opt.mu
        expected = ([0.5 * m for m in scale.tolist()] if 2 <= it <= 6 else [0.5, 0.5, 0.5])
        assert seen[-1] == expected, f"step {it}"
    assert agvm_steps == [False, False, False, True, False, False, True, False, False]
    assert not torch.equal(mus[3], mus[2]) and not torch.equal(mus[6], mus[5])
    assert opt.it == 9


def test_agvm_step_requires_both_halves():
    params = vec_model()
    opt = AGVM(sgd_groups(params), start_iter=0)
    for p in params:
        p.grad = torch.ones_like(p)
    with pytest.raises(RuntimeError, match="step 0 is an AGVM step: compute the gradients of both"):
        opt.step()
    opt.zero_grad()
    with opt.half(0):
        params[0].grad = torch.ones(2, dtype=F64)
    with pytest.raises(RuntimeError, match="only half 0 was recorded"):
        opt.step()
    with opt.half(1):
        params[0].grad = torch.ones(2, dtype=F64)
    params[1].grad = torch.ones(2, dtype=F64)
    with pytest.raises(RuntimeError, match="gradients were computed outside opt.half"):
        opt.step()
    with pytest.raises(ValueError, match=r"h must be 0 or 1 \(got 2\)"), opt.half(2):
        pass
    with (pytest.raises(RuntimeError, match=r"half\(1\) entered inside half\(0\)"),
          opt.half(0), opt.half(1)):
        pass


def test_half_accumulates_and_step_averages():
    params = vec_model((2,))
    opt = AGVM(sgd_groups(params, lr=1.0), start_iter=0)
    opt.zero_grad()
    x = torch.tensor([1.0, 2.0], dtype=F64)
    with opt.half(0):
        (params[0] * x).sum().backward()
        (params[0] * x).sum().backward()  # accumulates inside a half: gA = 2x
    assert params[0].grad is None  # the next half starts clean
    with opt.half(1):
        (params[0] * 3 * x).sum().backward()
    opt.step()
    torch.testing.assert_close(params[0].grad, 2.5 * x, rtol=0, atol=0)
    torch.testing.assert_close(params[0].detach(), -2.5 * x, rtol=0, atol=0)


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"update_interval": 0}, ValueError, r"update_interval must be >= 1 \(got 0\)"),
    ({"update_interval": 2.0}, TypeError, r"update_interval must be an int"),
    ({"start_iter": -1}, ValueError, r"start_iter must be >= 0 \(got -1\)"),
    ({"start_iter": 5, "stop_iter": 4}, ValueError,
     r"stop_iter must be >= start_iter \(5\) or None \(got 4\)"),
    ({"momentum": 1.0}, ValueError, r"momentum must be in \[0.0, 1.0\) \(got 1.0\)"),
    ({"momentum": -0.1}, ValueError, r"momentum must be in \[0.0, 1.0\)"),
    ({"eps": 0.0}, ValueError, r"eps must be > 0 \(got 0.0\)"),
    ({"reference": 1.5}, TypeError, r"reference must be a group index or name"),
    ({"use_adam": True}, ValueError, r"use_adam=True needs Adam-like param groups with 'betas'"),
])
def test_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        AGVM(sgd_groups(vec_model()), **kwargs)


def test_wraps_only_optimizers():
    with pytest.raises(TypeError, match="wraps a torch.optim.Optimizer"):
        AGVM([torch.zeros(1)])


# -- single process, end to end, against a plain reimplementation ----------------------------------
def three_group_model(dtype=F64):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 5), nn.Tanh(),
                         nn.Linear(5, 2)).to(dtype)


GROUP_LAYERS = (0, 2, 4)
GROUP_LRS = (0.1, 0.2, 0.05)


def make_agvm(model, **kwargs):
    sgd = torch.optim.SGD(
        [{"params": model[i].parameters(), "lr": lr} for i, lr in zip(GROUP_LAYERS, GROUP_LRS,
                                                                      strict=True)],
        lr=0.1, momentum=0.9)
    return AGVM(sgd, **kwargs)


def data(step, n=8, dtype=F64):
    gen = torch.Generator().manual_seed(step)
    return torch.randn(n, 4, generator=gen).to(dtype), torch.randn(n, 2, generator=gen).to(dtype)


def train_agvm(opt, model, steps, first=0):
    for step in range(first, first + steps):
        x, y = data(step)
        opt.zero_grad()
        for h in (0, 1):
            with opt.half(h):
                nn.functional.mse_loss(model(x[4 * h:4 * h + 4]), y[4 * h:4 * h + 4]).backward()
        opt.step()


def reference_agvm_sgd(model, steps, start, interval, momentum=0.97, sgd_momentum=0.9):
    """AGVM + SGD(momentum) written plainly: half gradients, D, μ, scaled lr, heavy ball."""
    names = [[f"{i}.weight", f"{i}.bias"] for i in GROUP_LAYERS]
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    bufs, mu = {}, [1.0] * len(names)
    for it in range(steps):
        x, y = data(it)
        halves = []
        for h in (0, 1):
            p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
            out = functional_call(model, p, (x[4 * h:4 * h + 4],))
            grads = torch.autograd.grad(nn.functional.mse_loss(out, y[4 * h:4 * h + 4]),
                                        list(p.values()))
            halves.append(dict(zip(p, grads, strict=True)))
        if it >= start and it % interval == 0:
            d = []
            for group in names:
                a = torch.cat([halves[0][k].reshape(-1) for k in group])
                b = torch.cat([halves[1][k].reshape(-1) for k in group])
                d.append(1 - (a @ b).item() / (a.norm() * b.norm()).item())
            for i in range(len(names)):
                target = math.sqrt(min(max((d[0] + 1e-6) / (d[i] + 1e-6), 0.5), 10.0))
                mu[i] = momentum * mu[i] + (1 - momentum) * target
        for i, group in enumerate(names):
            lr = GROUP_LRS[i] * (mu[i] if it >= start else 1.0)
            for k in group:
                g = (halves[0][k] + halves[1][k]) / 2
                bufs[k] = g if k not in bufs else sgd_momentum * bufs[k] + g
                params[k] = params[k] - lr * bufs[k]
    return params, mu


@pytest.mark.parametrize("interval", [1, 2])
def test_single_process_matches_plain_reimplementation(interval):
    steps = 6
    model = three_group_model()
    expected, expected_mu = reference_agvm_sgd(model, steps, start=0, interval=interval)
    opt = make_agvm(model, start_iter=0, update_interval=interval)
    train_agvm(opt, model, steps)
    torch.testing.assert_close(opt.mu, torch.tensor(expected_mu, dtype=F64), rtol=1e-10, atol=0)
    assert (opt.mu[1:] != 1).all()
    for k, v in model.named_parameters():
        torch.testing.assert_close(v.detach(), expected[k], rtol=1e-10, atol=1e-12)


def test_float32_and_bfloat16_params():
    for dtype in (torch.float32, torch.bfloat16):
        model = three_group_model(dtype)
        opt = make_agvm(model, start_iter=0, update_interval=1)
        for step in range(2):
            x, y = data(step, dtype=dtype)
            opt.zero_grad()
            for h in (0, 1):
                with opt.half(h):
                    nn.functional.mse_loss(model(x[4 * h:4 * h + 4]),
                                           y[4 * h:4 * h + 4]).backward()
            opt.step()
        assert all(p.grad.dtype == dtype and p.dtype == dtype for p in model.parameters())
        assert torch.isfinite(opt.mu).all() and (opt.mu[1:] != 1).all()


def test_use_adam_normalizes_with_inner_second_moment():
    params = vec_model((3, 3))
    adam = torch.optim.Adam([{"params": [p]} for p in params], lr=0.01, betas=(0.9, 0.99),
                            eps=1e-8)
    opt = AGVM(adam, start_iter=0, update_interval=1, use_adam=True, eps=1e-8)
    gen = torch.Generator().manual_seed(3)
    for _ in range(3):
        ga = [torch.randn(3, generator=gen, dtype=F64) for _ in params]
        gb = [torch.randn(3, generator=gen, dtype=F64) * torch.tensor([1.0, 10.0, 0.1], dtype=F64)
              for _ in params]
        vs = [adam.state[p]["exp_avg_sq"].clone() if p in adam.state
              else torch.zeros(3, dtype=F64) for p in params]  # zeros before Adam's first step
        expected = []
        for a, b, v in zip(ga, gb, vs, strict=True):
            na = a / ((0.99 * v + 0.01 * a * a).sqrt() + 1e-8)
            nb = b / ((0.99 * v + 0.01 * b * b).sqrt() + 1e-8)
            expected.append(1 - (na @ nb) / (na.norm() * nb.norm()))
        set_halves(opt, params, ga, gb)
        opt.step()
        torch.testing.assert_close(opt.last_distance, torch.stack(expected), rtol=1e-12,
                                   atol=1e-12)


# -- checkpoints -----------------------------------------------------------------------------------
def test_exact_resume_weights_only():
    total, split = 7, 3
    kwargs = {"start_iter": 1, "update_interval": 2}
    model_full = three_group_model()
    opt_full = make_agvm(model_full, **kwargs)
    train_agvm(opt_full, model_full, total)

    model = three_group_model()
    opt = make_agvm(model, **kwargs)
    train_agvm(opt, model, split)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    checkpoint = torch.load(buffer, weights_only=True)

    resumed_model = three_group_model()
    with torch.no_grad():
        for p in resumed_model.parameters():
            p.add_(1.0)  # make sure the loaded values, not the init, are what continue
    resumed_model.load_state_dict(checkpoint["model"])
    resumed = make_agvm(resumed_model, **kwargs)
    resumed.load_state_dict(checkpoint["opt"])
    assert resumed.it == split and resumed.mu.dtype == F64
    assert torch.equal(resumed.mu, opt.mu)
    train_agvm(resumed, resumed_model, total - split, first=split)

    assert torch.equal(resumed.mu, opt_full.mu)
    for a, b in zip(resumed_model.parameters(), model_full.parameters(), strict=True):
        assert torch.equal(a, b)


nan = float("nan")


def test_load_rejects_wrong_mu_and_foreign_state():
    params = vec_model()
    opt = AGVM(sgd_groups(params))
    state = opt.state_dict()
    state["wrappers"][-1]["state"] = {"it": torch.tensor(0), "mu": torch.ones(2, dtype=F64)}
    with pytest.raises(ValueError, match=r"one entry per param group \(3\)"):
        opt.load_state_dict(state)
    state["wrappers"][-1]["state"] = {"it": torch.tensor(0), "mu": torch.tensor([1.0, nan, -3])}
    with pytest.raises(ValueError, match=r"\['wrappers'\]\[-1\] \(AGVM\): 'mu' must hold finite"):
        opt.load_state_dict(state)
    state["wrappers"][-1]["state"] = {"it": torch.tensor(-2), "mu": torch.ones(3, dtype=F64)}
    with pytest.raises(ValueError, match=r"it must be >= 0"):
        opt.load_state_dict(state)
    with pytest.raises(ValueError, match="has no 'wrappers' entry"):
        opt.load_state_dict(sgd_groups(params).state_dict())
    assert opt.it == 0 and torch.equal(opt.mu, torch.ones(3, dtype=F64))  # nothing half-loaded


def test_added_param_group_starts_at_mu_one():
    params = vec_model()
    sgd = torch.optim.SGD([{"params": [params[0]]}, {"params": [params[1]]}], lr=0.1)
    opt = AGVM(sgd, start_iter=0, update_interval=1)
    opt.add_param_group({"params": [params[2]]})
    set_halves(opt, params, [[1, 0], [1, 0], [1, 0]], [[0, 1], [1, 1], [0, 1]])
    opt.step()
    assert len(opt.mu) == 3 and opt.mu[1].item() != 1.0


# -- distributed (gloo, real processes) ------------------------------------------------------------
def single_process_reference(world, use_adam, dtype):
    """Half A = shards of ranks 0..W/2−1, half B the others; also the plain full-batch gradient."""
    model = W.build_model(dtype)
    opt = W.build_optimizer(model, use_adam, process_group=False)
    n = world * W.SHARD // 2
    grads, plain_grads, mus = [], [], []
    for step in range(W.STEPS):
        x, y = W.batch(world, step, dtype)
        plain_grads.append(torch.autograd.grad(W.loss_fn(model, x, y), list(model.parameters())))
        opt.zero_grad()
        for h in (0, 1):
            with opt.half(h):
                W.loss_fn(model, x[h * n:(h + 1) * n], y[h * n:(h + 1) * n]).backward()
        opt.step()
        grads.append([p.grad.clone() for p in model.parameters()])
        mus.append(opt.mu.clone())
    return [p.detach() for p in model.parameters()], grads, plain_grads, mus


@pytest.mark.parametrize(("world", "use_adam", "dtype_name"), [
    (2, False, "float32"),
    (4, True, "float32"),
])
def test_distributed_matches_single_process(tmp_path, world, use_adam, dtype_name):
    results = run_ranks(W.worker, world, tmp_path, use_adam, dtype_name, deadline_s=90,
                        what="distributed AGVM workers")
    dtype = getattr(torch, dtype_name)
    params, grads, plain_grads, mus = single_process_reference(world, use_adam, dtype)
    assert (mus[-1][[0, 2]] != 1).all()  # μ of the non-reference groups really moved
    n_elements = sum(p.numel() for p in params)
    agvm_steps = [it for it in range(W.STEPS)
                  if it >= W.CONFIG["start_iter"] and it % W.CONFIG["update_interval"] == 0]
    assert agvm_steps == [2, 4]
    for rank, res in enumerate(results):
        assert "single-process mode" in res["half_error"]
        # One collective per step: (2, N) on AGVM steps, (1, N) otherwise.
        assert res["reduce_shapes"] == [(2 if it in agvm_steps else 1, n_elements)
                                        for it in range(W.STEPS)]
        for step in range(W.STEPS):
            torch.testing.assert_close(res["mus"][step], mus[step], rtol=1e-6, atol=0)
            for got, want, plain in zip(res["grads"][step], grads[step], plain_grads[step],
                                        strict=True):
                torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7,
                                           msg=lambda m, r=rank, s=step: f"rank {r} step {s}: {m}")
                torch.testing.assert_close(got, plain, rtol=1e-6, atol=1e-7)
        for got, want in zip(res["params"], params, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)
    for res in results[1:]:  # every rank holds the same μ and parameters, bit for bit
        assert torch.equal(res["mus"][-1], results[0]["mus"][-1])
        assert all(torch.equal(a, b) for a, b in zip(res["params"], results[0]["params"],
                                                     strict=True))


def test_distributed_world_size_checks_and_opt_out():
    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        params = vec_model()
        with pytest.raises(RuntimeError, match=r"even world size >= 2 \(got 1\)"):
            AGVM(sgd_groups(params))
        opt = AGVM(sgd_groups(params), process_group=False, start_iter=0)  # single-process
        set_halves(opt, params, [[1, 0]] * 3, [[0, 1]] * 3)
        opt.step()
        assert opt.it == 1
    finally:
        dist.destroy_process_group()
