"""optforge.optim.SGD against torch.optim.SGD: every flag combination over many steps, the
first-step buffer, momentum switched on mid-run, torch's checkpoints, no state without
momentum; and its backends against each other.

Tolerance against torch in fp32: torch computes ``a + α·b`` (``add_(g, alpha=−lr)``,
``buf.mul_(μ).add_(g, alpha=1−τ)``, Nesterov's ``g.add(buf, alpha=μ)``) with one rounding (ATen's
CPU kernel is a fused multiply-add), the rule with two (``a − b·lr``). Each step differs by
about an ulp and the differences add up as a random walk: measured ≤ 7.2e-7 of max|θ| after 500
steps over the 16 combinations below; test_matches_torch asserts 2e-6. In fp64 the same
comparison is 1e-13 tight, which shows the semantics (coupled L2, b₁ = g, dampening from the
second step, Nesterov) are torch's, not merely close.
"""

from __future__ import annotations

import io
import itertools

import pytest
import torch

from optforge.optim import SGD

SHAPES = ((7, 5), (13,), (1,), (300,))
COMBOS = [
    dict(momentum=m, dampening=d, weight_decay=w, nesterov=n, maximize=x)
    for m, d, w, n, x in itertools.product((0.0, 0.9), (0.0, 0.3), (0.0, 0.05), (False, True),
                                           (False, True))  # fmt: skip
    if not (n and (m == 0 or d != 0)) and not (m == 0 and d != 0)
]


def _params(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen, dtype=dtype)) for s in SHAPES]


def _steps(opt, params, n: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen, dtype=p.dtype)
        opt.step()


def _rel(ours, theirs) -> float:
    return max(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(ours, theirs))


@pytest.mark.parametrize("kw", COMBOS, ids=lambda kw: ",".join(k for k, v in kw.items() if v))
def test_matches_torch(kw) -> None:
    for dtype, steps, bound in ((torch.float32, 500, 2e-6), (torch.float64, 100, 1e-13)):
        ours, theirs = _params(dtype), _params(dtype)
        opt, ref = SGD(ours, lr=0.01, **kw), torch.optim.SGD(theirs, lr=0.01, **kw)
        _steps(opt, ours, steps, seed=1)
        _steps(ref, theirs, steps, seed=1)
        assert _rel(ours, theirs) <= bound, dtype
        assert opt.state_dict()["state"].keys() == ref.state_dict()["state"].keys()
        if kw["momentum"]:
            bufs = [opt.state[p]["momentum_buffer"] for p in ours]
            assert _rel(bufs, [ref.state[p]["momentum_buffer"] for p in theirs]) <= bound * 10


def test_first_step_buffer_is_the_gradient_and_grads_are_not_modified() -> None:
    p = torch.nn.Parameter(torch.randn(5))
    opt = SGD([p], lr=0.1, momentum=0.9, dampening=0.5, weight_decay=0.1)
    p.grad = torch.randn(5)
    grad, before = p.grad.clone(), p.detach().clone()
    opt.step()
    torch.testing.assert_close(opt.state[p]["momentum_buffer"], grad + 0.1 * before)
    assert torch.equal(p.grad, grad)  # the L2 term went into a new tensor
    p.grad = torch.zeros(5)
    buf = opt.state[p]["momentum_buffer"].clone()
    opt.step()  # second step: b = μ·b + (1 − τ)·(0 + λθ)
    torch.testing.assert_close(
        opt.state[p]["momentum_buffer"], 0.9 * buf + 0.5 * (0.1 * (before - 0.1 * buf))
    )


def test_plain_sgd_keeps_no_state_and_momentum_can_start_mid_run() -> None:
    ours, theirs = _params(torch.float64), _params(torch.float64)
    opt, ref = SGD(ours, lr=0.05), torch.optim.SGD(theirs, lr=0.05)
    _steps(opt, ours, 3, seed=2)
    _steps(ref, theirs, 3, seed=2)
    assert opt.state_dict()["state"] == {} == ref.state_dict()["state"]
    for o in (opt, ref):  # e.g. a momentum schedule that starts at 0
        o.param_groups[0]["momentum"] = 0.9
    _steps(opt, ours, 3, seed=3)
    _steps(ref, theirs, 3, seed=3)
    assert _rel(ours, theirs) <= 1e-13


def test_loads_a_torch_sgd_checkpoint_and_continues_as_torch() -> None:
    kw = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-3)
    theirs = _params(torch.float64)
    ref = torch.optim.SGD(theirs, **kw)
    _steps(ref, theirs, 4, seed=4)
    buffer = io.BytesIO()
    torch.save(ref.state_dict(), buffer)
    buffer.seek(0)
    ours = [torch.nn.Parameter(p.detach().clone()) for p in theirs]
    opt = SGD(ours, **kw)
    opt.load_state_dict(torch.load(buffer, weights_only=True))
    _steps(opt, ours, 4, seed=5)
    _steps(ref, theirs, 4, seed=5)
    assert _rel(ours, theirs) <= 1e-13


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backends_agree_bit_for_bit(dtype) -> None:
    """loop, foreach and auto (CPU: foreach; no kernel registered) give the same bits."""
    kw = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01)
    runs = []
    for backend in ("loop", "foreach", "auto"):
        params = _params(dtype)
        opt = SGD(params, backend=backend, **kw)
        _steps(opt, params, 5, seed=6)
        runs.append((params, [opt.state[p]["momentum_buffer"] for p in params]))
    for params, bufs in runs[1:]:
        for a, b in zip(params + bufs, runs[0][0] + runs[0][1]):
            assert a.dtype == dtype and torch.equal(a, b)


def test_torch_messages() -> None:
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=r"Invalid learning rate: -0.1; lr must be >= 0"):
        SGD(p, lr=-0.1)
    with pytest.raises(ValueError, match="Invalid momentum value: -0.5"):
        SGD(p, momentum=-0.5)
    with pytest.raises(ValueError, match="Invalid weight_decay value: -1"):
        SGD(p, weight_decay=-1)
    with pytest.raises(ValueError, match="Nesterov momentum requires a momentum and zero"):
        SGD(p, momentum=0.9, dampening=0.1, nesterov=True)
    with pytest.raises(TypeError, match="lr must be a real number"):
        SGD(p, lr=torch.tensor(0.1))  # torch's Tensor lr: not supported
