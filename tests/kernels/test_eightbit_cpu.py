"""The CPU 8-bit kernel (kernels/eightbit_cpu.c): its one-lookup nearest code is exactly
``torch.bucketize`` over the midpoints, and AdamW8bit/Lion8bit on it are bit-identical to the
eager rule (``backend="loop"``), so checkpoints resume exactly across the two paths."""

from __future__ import annotations

import io

import pytest
import torch

from optforge.kernels import eightbit_cpu
from optforge.kernels.quant import BLOCK, dynamic_map, quantize_blockwise
from optforge.optim import AdamW8bit, Lion8bit

pytestmark = pytest.mark.skipif(
    not eightbit_cpu.available(), reason="no C compiler: the CPU 8-bit kernel cannot be built"
)


def _bits(u: torch.Tensor) -> torch.Tensor:
    return u.to(torch.int64).to(torch.int32).view(torch.float32)


def _values_to_check(signed: bool) -> torch.Tensor:
    """Every bucket's two ends, every midpoint and its fp32 neighbours, the special values,
    and a dense grid of fp32 bit patterns over [-1, 1]. Within one bucket the nearest code can
    change only at a midpoint (at most one per bucket: ``compact_table`` checks it), so
    agreeing at both ends and on both sides of every midpoint means agreeing everywhere."""
    _, mids = dynamic_map(signed)
    top = torch.arange(0x3F80 * 2 + 1, dtype=torch.int64) << 15  # 17-bit prefixes up to 1.0
    ends = torch.cat([top, top | 0x7FFF])
    grid = torch.arange(0, 0x3F800001, 997, dtype=torch.int64)  # ~1.07M patterns in [0, 1]
    positive = _bits(torch.cat([ends, grid])).clamp(max=1.0)
    inf = torch.tensor(float("inf"))
    near = torch.cat([mids, mids.nextafter(inf), mids.nextafter(-inf)])
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 2.0**-24, 2.0**-25, 1e-30, 5.9e-8, 6e-8])
    return torch.cat([positive, -positive, near, special, -special])


@pytest.mark.parametrize("signed", [True, False])
def test_one_lookup_nearest_code_equals_bucketize(signed: bool) -> None:
    y = _values_to_check(signed)
    # blocks of 255 values and a 1.0, so that the absmax is 1 and y is quantized as it is
    y = y[: y.numel() // (BLOCK - 1) * (BLOCK - 1)].view(-1, BLOCK - 1)
    x = torch.cat([y, torch.ones(y.shape[0], 1)], dim=1).view(-1)
    codes, absmax = eightbit_cpu.quantize(x, signed)
    _, mids = dynamic_map(signed)
    assert torch.equal(absmax, torch.ones_like(absmax))
    assert torch.equal(codes.long(), torch.bucketize(x, mids))


@pytest.mark.parametrize("n", [1, BLOCK - 1, BLOCK, BLOCK + 1, 4099, 100_003])
@pytest.mark.parametrize("signed", [True, False])
def test_quantize_equals_the_eager_quantizer(n: int, signed: bool) -> None:
    gen = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=gen) * torch.logspace(-9, 0, n).sqrt()
    x = x if signed else x * x
    x[: min(n, BLOCK)] = 0.0 if n > BLOCK else x[: min(n, BLOCK)]  # an all-zero block
    codes, absmax = eightbit_cpu.quantize(x, signed)
    ref_codes, ref_absmax = quantize_blockwise(x, signed)
    assert torch.equal(codes, ref_codes) and torch.equal(absmax, ref_absmax)


@pytest.mark.parametrize("signed", [True, False])
def test_quantize_non_finite_blocks_equal_the_eager_quantizer(signed: bool) -> None:
    """A block with an inf (absmax inf: y = x * 0) or a NaN of either sign (absmax NaN: y = x,
    values above 1 included) takes the kernel's per-block path; its codes must still be the
    eager quantizer's."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5 * BLOCK + 7, generator=gen) * 3.0
    x = x if signed else x.abs()
    x[3], x[BLOCK + 9] = float("inf"), -float("inf") if signed else float("inf")
    x[2 * BLOCK + 1] = float("nan")
    x[3 * BLOCK + 2] = -float("nan")  # the sign bit set
    x[4 * BLOCK : 5 * BLOCK] = 0.0  # and an all-zero block
    x[5 * BLOCK + 3] = float("nan")  # the partial block
    codes, absmax = eightbit_cpu.quantize(x, signed)
    ref_codes, ref_absmax = quantize_blockwise(x, signed)
    assert torch.equal(codes, ref_codes)
    assert torch.equal(absmax.nan_to_num(), ref_absmax.nan_to_num())
    assert torch.equal(absmax.isnan(), ref_absmax.isnan())


def _model(dtype: torch.dtype, seed: int = 0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    sizes = [1, BLOCK - 1, BLOCK, BLOCK + 1, 4099, 10_007]
    return [torch.nn.Parameter(torch.randn(n, generator=gen).to(dtype)) for n in sizes]


def _grads(params: list[torch.nn.Parameter], step: int) -> None:
    gen = torch.Generator().manual_seed(100 + step)
    for p in params:
        p.grad = (torch.randn(p.shape, generator=gen) * 1e-2).to(p.dtype)


def _run(cls, dtype, steps, backend=None, min_8bit_size_=1, **kw):
    params = _model(dtype)
    opt = cls(params, min_8bit_size=min_8bit_size_, backend=backend, **kw)
    for t in range(steps):
        _grads(params, t)
        opt.step()
    return params, opt


def _assert_same(a_params, a_opt, b_params, b_opt) -> None:
    for p, q in zip(a_params, b_params):
        assert torch.equal(p, q)
        sa, sb = a_opt.state[p], b_opt.state[q]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(
    ("cls", "kw"),
    [
        (AdamW8bit, {"weight_decay": 0.1}),
        (AdamW8bit, {"lr": 3e-2, "maximize": True}),
        (Lion8bit, {"weight_decay": 0.5, "lr": 1e-3}),
        (Lion8bit, {"maximize": True}),
    ],
)
def test_default_path_is_bit_identical_to_the_eager_rule(cls, kw, dtype) -> None:
    fast = _run(cls, dtype, 4, **kw)
    eager = _run(cls, dtype, 4, backend="loop", **kw)
    _assert_same(*fast, *eager)
    assert fast[1].state[fast[0][-1]]["exp_avg"].dtype == torch.uint8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kw", [{"weight_decay": 0.1}, {"lr": 3e-2, "maximize": True}])
def test_fp32_state_tensors_take_the_c_loop_bit_identically(dtype, kw, monkeypatch) -> None:
    """Tensors under min_8bit_size keep fp32 moments; under auto on CPU the C loop serves
    them too (``adamw32``), bit-identical to the eager rule."""
    served = []
    real_run = eightbit_cpu.run

    def spy(name, lists, hyper):
        rest = real_run(name, lists, hyper)
        served.append((name, len(lists[0]) - len(rest)))
        return rest

    monkeypatch.setattr(eightbit_cpu, "run", spy)
    fast = _run(AdamW8bit, dtype, 3, min_8bit_size_=300, **kw)
    eager = _run(AdamW8bit, dtype, 3, backend="loop", min_8bit_size_=300, **kw)
    _assert_same(*fast, *eager)
    assert ("adamw32", 4) in served and ("adamw8bit", 2) in served  # 1, 255, 256, 257 | rest
    assert fast[1].state[fast[0][0]]["exp_avg"].dtype == torch.float32


@pytest.mark.parametrize("threads", [1, 3])
def test_thread_counts_split_the_blocks_without_changing_results(threads: int) -> None:
    """AdamW's loop requantizes each block inside the next block's loop, per thread's run of
    blocks: other thread counts move where the runs (and the pairs) start and end."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        fast = _run(AdamW8bit, torch.float32, 2)
    finally:
        torch.set_num_threads(before)
    _assert_same(*fast, *_run(AdamW8bit, torch.float32, 2, backend="loop"))


@pytest.mark.parametrize("cls", [AdamW8bit, Lion8bit])
def test_resume_across_paths_is_exact(cls) -> None:
    """Two steps on the kernel, a checkpoint, two more on the eager rule: the same as four on
    the kernel without interruption."""
    ref = _run(cls, torch.float32, 4)
    params, opt = _run(cls, torch.float32, 2)
    buf = io.BytesIO()
    torch.save({"opt": opt.state_dict(), "params": [p.detach() for p in params]}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    params = [torch.nn.Parameter(t.clone()) for t in saved["params"]]
    opt = cls(params, min_8bit_size=1, backend="loop")
    opt.load_state_dict(saved["opt"])
    for t in range(2, 4):
        _grads(params, t)
        opt.step()
    _assert_same(*ref, params, opt)


def test_non_contiguous_and_unserved_dtypes_take_the_eager_rule() -> None:
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(64, 96, generator=gen)
    params = [
        torch.nn.Parameter(base.t()),  # non-contiguous
        torch.nn.Parameter(torch.randn(5000, generator=gen).half()),  # fp16: not served
        torch.nn.Parameter(torch.randn(5000, generator=gen)),
    ]
    twins = [torch.nn.Parameter(p.detach().clone()) for p in params]
    a = AdamW8bit(params, min_8bit_size=1)
    b = AdamW8bit(twins, min_8bit_size=1, backend="loop")
    for _ in range(2):
        for p, q in zip(params, twins):
            p.grad = torch.randn(p.shape, generator=gen).to(p.dtype) * 1e-2
            q.grad = p.grad.clone()
        a.step()
        b.step()
    _assert_same(params, a, twins, b)


def test_without_a_compiler_the_eager_rule_runs(monkeypatch) -> None:
    monkeypatch.setattr(eightbit_cpu, "_load", lambda: None)
    assert not eightbit_cpu.available()
    assert eightbit_cpu.run("adamw8bit", [[torch.zeros(1)]] * 6, {}) == [0]  # serves nothing
    fast = _run(AdamW8bit, torch.float32, 2)
    eager = _run(AdamW8bit, torch.float32, 2, backend="loop")
    _assert_same(*fast, *eager)


def test_non_finite_gradient_poisons_its_block_as_the_eager_rule_does() -> None:
    results = []
    for backend in (None, "loop"):
        params = _model(torch.float32)
        opt = AdamW8bit(params, min_8bit_size=1, backend=backend, check_finite=False)
        _grads(params, 0)
        params[-1].grad[300] = float("nan")
        params[-1].grad[5000] = float("inf")
        opt.step()
        results.append((params, opt))
    (pa, oa), (pb, ob) = results
    for p, q in zip(pa, pb):
        assert torch.equal(p.isnan(), q.isnan()) and torch.equal(p.nan_to_num(), q.nan_to_num())
        for k, v in oa.state[p].items():
            w = ob.state[q][k]
            assert torch.equal(v.isnan(), w.isnan()) if v.is_floating_point() else True
            assert torch.equal(v.nan_to_num(), w.nan_to_num()), k
