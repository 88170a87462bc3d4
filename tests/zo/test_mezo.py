"""MeZO and its variants against references written plainly here (reference/zo.md §1, §2, §6)."""

from __future__ import annotations

import math

import pytest
import torch

from optforge.registry import create_optimizer
from optforge.zo import MeZO, ZOAdam, draw

torch.set_default_dtype(torch.float32)


def _problem(dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.nn.Parameter(torch.randn(5, 3, generator=gen, dtype=dtype))
    b = torch.nn.Parameter(torch.randn(5, generator=gen, dtype=dtype))
    x = torch.randn(16, 3, generator=gen, dtype=dtype)
    y = torch.randn(16, 5, generator=gen, dtype=dtype)

    def closure():
        return torch.tanh(x @ w.T + b - y).square().mean()

    return [w, b], closure


def _reference_estimates(params, closure, *, eps, n, seed, step, dist="gaussian"):
    """MeZO's sequence written out (paper Algorithm 1, n-SPSA of Appendix B): the c_j and z_j."""
    zs = [[draw(p, dist, seed, step, j, i).to(p.dtype) for i, p in enumerate(params)]
          for j in range(n)]
    cs = []
    with torch.no_grad():
        for z in zs:
            for p, zi in zip(params, z):
                p.add_(zi, alpha=eps)
            plus = float(closure())
            for p, zi in zip(params, z):
                p.add_(zi, alpha=-2 * eps)
            minus = float(closure())
            for p, zi in zip(params, z):
                p.add_(zi, alpha=eps)
            cs.append((plus - minus) / (2 * eps))
    return cs, zs


@pytest.mark.parametrize("n", [1, 3])
def test_sgd_follows_the_papers_sequence(n) -> None:
    lr, eps, wd = 1e-2, 1e-3, 0.1
    ref, ref_closure = _problem()
    params, closure = _problem()
    opt = MeZO(params, lr=lr, eps=eps, weight_decay=wd, n_directions=n, seed=3)
    for step in range(4):
        cs, zs = _reference_estimates(ref, ref_closure, eps=eps, n=n, seed=3, step=step)
        with torch.no_grad():
            for i, p in enumerate(ref):  # θ ← θ − (η/n)Σ_j c_j z_j − ηλθ
                p.sub_(lr * (sum(c * z[i] for c, z in zip(cs, zs)) / n + wd * p))
        opt.step(closure)
        assert opt.last_record.coefficients == pytest.approx(cs, rel=1e-9)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kind", "torch_opt"), [
    ("momentum", lambda ps: torch.optim.SGD(ps, lr=1e-2, momentum=0.9, nesterov=True)),
    ("adam", lambda ps: torch.optim.Adam(ps, lr=1e-2, betas=(0.8, 0.95), weight_decay=0.0)),
])
def test_stateful_variants_equal_torch_optimizers_fed_the_estimate(kind, torch_opt) -> None:
    # ZO-Bench's way (stateful): p.grad = ĝ z, then a torch optimizer step.
    ref, ref_closure = _problem()
    params, closure = _problem()
    if kind == "momentum":
        opt = MeZO(params, lr=1e-2, momentum=0.9, nesterov=True, seed=1)
    else:
        opt = ZOAdam(params, lr=1e-2, betas=(0.8, 0.95), seed=1)
    base = torch_opt(ref)
    for step in range(5):
        (c,), (z,) = _reference_estimates(ref, ref_closure, eps=1e-3, n=1, seed=1, step=step)
        for p, zi in zip(ref, z):
            p.grad = c * zi
        base.step()
        opt.step(closure)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-10, atol=1e-12)


def test_sign_uses_the_sign_of_the_scalar() -> None:
    ref, ref_closure = _problem()
    params, closure = _problem()
    opt = MeZO(params, lr=1e-2, update="sign", seed=4)
    for step in range(3):
        (c,), (z,) = _reference_estimates(ref, ref_closure, eps=1e-3, n=1, seed=4, step=step)
        with torch.no_grad():
            for p, zi in zip(ref, z):
                p.sub_(1e-2 * math.copysign(1.0, c) * zi)
        opt.step(closure)
    for p, q in zip(params, ref):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)


def test_conservative_keeps_the_best_of_three() -> None:
    lr = 0.5  # large enough that the candidates differ a lot
    for seed in range(4):
        ref, ref_closure = _problem(seed=seed)
        params, closure = _problem(seed=seed)
        opt = MeZO(params, lr=lr, update="conservative", seed=seed)
        (c,), (z,) = _reference_estimates(ref, ref_closure, eps=1e-3, n=1, seed=seed, step=0)
        start = [p.detach().clone() for p in ref]
        candidates = []
        for sign in (0.0, -1.0, 1.0):
            with torch.no_grad():
                for p, s, zi in zip(ref, start, z):
                    p.copy_(s + sign * lr * c * zi)
            candidates.append((float(ref_closure().detach()), [p.detach().clone() for p in ref]))
        best = min(candidates, key=lambda t: t[0])[1]
        opt.step(closure)
        for p, q in zip(params, best):
            torch.testing.assert_close(p.detach(), q, rtol=1e-10, atol=1e-12)


def test_the_global_rng_is_never_touched() -> None:
    for kwargs in ({}, {"dist": "sphere", "n_directions": 2}, {"update": "adam"},
                   {"dist": "rademacher", "formula": "forward"}):
        params, closure = _problem(torch.float32)
        opt = MeZO(params, lr=1e-3, **kwargs)
        state = torch.get_rng_state()
        for _ in range(3):
            opt.step(closure)
        assert torch.equal(torch.get_rng_state(), state), kwargs


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_no_half_precision_drift_after_2000_cycles(dtype) -> None:
    # lr = 0: 2,000 perturb/restore cycles and no update. fp32 masters make the restore exact;
    # in place (the reference code's way) the same run drifts (so this test can fail).
    gen = torch.Generator().manual_seed(0)
    init = (torch.randn(1000, generator=gen) * 0.02).to(dtype)
    results = {}
    for precision in ("auto", "inplace"):
        p = torch.nn.Parameter(init.clone())
        with pytest.warns(UserWarning, match="drift") if precision == "inplace" else _nothing():
            opt = MeZO([p], lr=0.0, eps=1e-3, precision=precision)
            opt.step(lambda p=p: p.float().square().sum())
        for _ in range(1999):
            opt.step(lambda p=p: p.float().square().sum())
        results[precision] = float((p.detach().float() - init.float()).norm() / init.float().norm())
    assert results["auto"] <= 1e-6
    assert results["inplace"] > 1e-3, results


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_bf16_master_update_moves_weights_that_bf16_would_round_away() -> None:
    # A step of size ηĝz ~ 1e-6 vanishes in bf16 (reference/zo.md §5); the master keeps it.
    p = torch.nn.Parameter(torch.ones(1000, dtype=torch.bfloat16))
    opt = MeZO([p], lr=1e-6, eps=1e-3)
    for _ in range(300):
        opt.step(lambda: p.float().sum())
    master = opt.state[p]["master"]
    assert master.dtype == torch.float32 and float((master - 1).abs().mean()) > 1e-4
    assert torch.equal(p, master.to(torch.bfloat16))


def test_float32_in_place_restore_is_within_1e6() -> None:
    params, closure = _problem(torch.float32)
    before = [p.detach().clone() for p in params]
    opt = MeZO(params, lr=0.0)
    for _ in range(50):
        opt.step(closure)
    for p, q in zip(params, before):
        assert float((p.detach() - q).norm() / q.norm()) < 1e-6


def test_nonfinite_losses_skip_the_step() -> None:
    p = torch.nn.Parameter(torch.ones(6, dtype=torch.bfloat16))
    opt = MeZO([p], lr=1e-2)
    calls = []

    def closure():
        calls.append(1)
        return torch.tensor(float("nan")) if len(calls) == 2 else p.float().sum()

    before = p.detach().clone()
    loss = opt.step(closure)
    assert math.isnan(float(loss)) and torch.equal(p, before)
    assert int(opt.state[p]["step"]) == 1
    opt.step(lambda: p.float().sum())
    assert not torch.equal(p, before)


def test_frozen_parameters_are_not_perturbed_and_no_grad_is_made() -> None:
    params, closure = _problem(torch.float32)
    params[1].requires_grad_(False)
    frozen = params[1].detach().clone()
    opt = MeZO(params, lr=1e-2)
    for _ in range(3):
        opt.step(closure)
    assert torch.equal(params[1], frozen) and not opt.state.get(params[1])
    assert all(p.grad is None for p in params)


def test_step_under_inference_mode_builds_no_graph() -> None:
    model = torch.nn.Linear(3, 2)
    x = torch.randn(4, 3)
    opt = MeZO(model.parameters(), lr=1e-2)

    def closure():
        out = model(x).square().mean()
        assert not out.requires_grad
        return out

    opt.step(closure)
    assert all(p.grad is None for p in model.parameters())


def test_converges_on_a_d100_quadratic() -> None:
    # Test 9: diagonal Hessian in [0.1, 1], η = 1/(d+2), 20·d steps: f/f0 < 1e-3.
    d = 100
    h = torch.linspace(0.1, 1.0, d, dtype=torch.float64)
    x = torch.nn.Parameter(torch.ones(d, dtype=torch.float64))
    opt = MeZO([x], lr=1 / (d + 2), eps=1e-3, seed=1)
    f0 = float(0.5 * (h * x * x).sum())
    for _ in range(20 * d):
        opt.step(lambda: 0.5 * (h * x * x).sum())
    assert float(0.5 * (h * x * x).sum()) / f0 < 1e-3


def test_a_non_differentiable_objective_improves() -> None:
    # 1 − accuracy of a linear classifier: no gradient exists, the estimate still descends.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 5, generator=gen)
    y = (x @ torch.tensor([1.0, -2.0, 0.5, 0.0, 1.0]) > 0).long()
    w = torch.nn.Parameter(torch.zeros(5, 2))
    w.data[:, 0] = torch.randn(5, generator=gen)

    def error():
        return 1 - (torch.argmax(x @ w, 1) == y).float().mean()

    first = float(error())
    opt = MeZO([w], lr=0.3, eps=0.1, n_directions=4, seed=2)
    for _ in range(150):
        opt.step(error)
    assert float(error()) < 0.5 * first


def test_a_tiny_mlp_loss_halves() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    x = torch.randn(128, 4)
    y = x @ torch.tensor([[1.0], [-1.0], [0.5], [2.0]])
    opt = create_optimizer("mezo", net, lr=5e-3, weight_decay=0.0, n_directions=4)

    def loss():
        return torch.nn.functional.mse_loss(net(x), y)

    first = float(loss())
    for _ in range(300):
        opt.step(loss)
    assert float(loss()) < 0.5 * first


def test_trajectory_log_replays_the_weights() -> None:
    # Test 5: (seed, step, c) per step and η reproduce the run from the initial weights.
    params, closure = _problem()
    init = [p.detach().clone() for p in params]
    opt = MeZO(params, lr=1e-2, n_directions=2, seed=9)
    log = []
    for _ in range(5):
        opt.step(closure)
        log.append(opt.last_record)
    from optforge.zo import replay

    replayed = [t.clone() for t in init]
    for rec in log:
        for t, g in zip(replayed, replay(rec, replayed)):
            t.sub_(1e-2 * g)
    for p, t in zip(params, replayed):
        torch.testing.assert_close(p.detach(), t, rtol=1e-9, atol=1e-12)


def test_directions_do_not_depend_on_other_tensors() -> None:
    # z of a tensor depends only on (seed, step, direction, its global index).
    params, closure = _problem()
    MeZO(params, lr=1e-2, seed=2).step(closure)
    params2, closure2 = _problem()
    opt = MeZO(params2, lr=1e-2, seed=2)
    opt.step(closure2)
    c = opt.last_record.coefficients[0]
    expected = [q0 - 1e-2 * c * draw(q0, "gaussian", 2, 0, 0, i)
                for i, q0 in enumerate(_problem()[0])]
    for p, e in zip(params2, expected):
        torch.testing.assert_close(p.detach(), e.detach(), rtol=1e-9, atol=1e-12)


def test_groups_share_the_perturbation_and_bad_input_is_refused() -> None:
    a, b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="eps defines the perturbation"):
        MeZO([{"params": [a]}, {"params": [b], "eps": 1e-2}])
    with pytest.raises(TypeError, match="complex"):
        MeZO([torch.nn.Parameter(torch.ones(2, dtype=torch.complex64))])
    with pytest.raises(ValueError, match="ZOAdam's update is 'adam'"):
        ZOAdam([a], update="sgd")
    with pytest.raises(ValueError, match="conservative' takes no weight_decay"):
        MeZO([a], update="conservative", weight_decay=0.1)
    opt = MeZO([a])
    with pytest.raises(TypeError, match="needs a closure"):
        opt.step()
    with pytest.raises(TypeError, match=r"scalar loss \(got \(3,\)\)"):
        opt.step(lambda: a * 2)


@pytest.mark.parametrize("dist", ["gaussian", "rademacher"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chunked_draws_equal_the_whole_draw(dist, dtype) -> None:
    # directions.chunks: pieces of a multiple of 16 elements from one generator, a tail shorter
    # than 16 merged into the last piece, reproduce the whole draw bit for bit (CPU sampler).
    from optforge.zo import chunks

    for numel in (5, 16, 17, 100, 1000, 1003, 4 * 1024 + 7):
        like = torch.empty(numel, dtype=dtype)
        whole = draw(like, dist, 3, 1, 0, 4)
        for chunk in (16, 32, 48, 1024):
            pieces = list(chunks(like, dist, 3, 1, 0, 4, chunk=chunk))
            assert all(z.numel() >= min(numel, 16) for _, z in pieces)
            assert torch.equal(torch.cat([z.reshape(-1) for _, z in pieces]), whole)
    with pytest.raises(ValueError, match="multiple of 16"):
        next(chunks(torch.empty(64), dist, 0, 0, 0, 0, chunk=20))


@pytest.mark.parametrize("update,dtype", [("sgd", torch.float32), ("sign", torch.float64),
                                          ("sgd", torch.bfloat16), ("adam", torch.float32)])
def test_chunked_trajectory_equals_unchunked_bit_for_bit(monkeypatch, update, dtype) -> None:
    # Perturb, restore and the in-place update apply z chunk by chunk; with pieces of 32
    # elements (a 5x37 tensor: 6 pieces, a 9-element tail merged) the run is bitwise the same.
    import optforge.zo.directions as directions

    def run(chunk):
        monkeypatch.setattr(directions, "CHUNK", chunk)
        gen = torch.Generator().manual_seed(1)
        w = torch.nn.Parameter(torch.randn(5, 37, generator=gen).to(dtype))
        x = torch.randn(8, 37, generator=gen).to(dtype)
        opt = MeZO([w], lr=1e-3, weight_decay=0.1, update=update, seed=4)
        for _ in range(4):
            opt.step(lambda: torch.tanh(x @ w.T).square().mean())
        return w.detach().clone(), opt.state_dict()["state"][0]

    (w_chunked, state_chunked), (w_whole, state_whole) = run(32), run(1 << 20)
    assert torch.equal(w_chunked, w_whole)
    for key, value in state_whole.items():
        assert torch.equal(state_chunked[key], value), key
