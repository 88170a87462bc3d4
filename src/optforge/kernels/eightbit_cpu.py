"""The CPU fast path of the 8-bit optimizers: one fused C loop per list of tensors.

``eightbit_cpu.c`` runs dequantize → update → requantize per 256-element block with the new
moments in a stack buffer, over every block of a list in one OpenMP loop: 16.06 B of memory
traffic per fp32 parameter against fused AdamW's 28, where the eager rule writes ~20 fp32
temporaries per element. Its arithmetic is the eager rule's, operation for operation, without
contraction, so results are **bit-identical** to ``backend="loop"``: resuming a checkpoint on
either path, or switching between them, continues exactly (tests/kernels/test_eightbit_cpu.py).

Built on first use with the system C compiler (``cc``/``gcc``, the compiler inductor needs on
CPU too) in about a second, and cached under ``$XDG_CACHE_HOME/optforge`` (``~/.cache``) by a
hash of the source, the flags, the compiler and the CPU. Without a compiler, or with
``OPTFORGE_NATIVE_8BIT=0``, ``available()`` is False and the optimizers run the eager rule.

Serves CPU tensors that are contiguous, with fp32 or bf16 parameters and gradients; anything
else takes the eager rule (``run`` returns the indices it did not serve).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from optforge.kernels import cbuild
from optforge.kernels.quant import BLOCK, blocks, dynamic_map

__all__ = ["available", "compact_table", "quantize", "run"]

_SOURCE = Path(__file__).with_name("eightbit_cpu.c")
#: -ffp-contract=off: no fused multiply-add, so every operation rounds as torch's eager op does.
#: -fno-trapping-math and -fno-math-errno change no result; they let the selects and the
#: square root vectorize.
_FLAGS = ("-O3", "-march=native", "-fopenmp", "-ffp-contract=off", "-fno-math-errno",
          "-fno-trapping-math", "-shared", "-fPIC")
#: gcc's tuning for recent Intel cores emulates gathers with scalar loads; the table lookups
#: run 1.3x faster with the gather instructions (3.06 vs 4.0 ns per element, 1 thread, CPU
#: time) [measured]. Dropped when the compiler does not know the option (clang).
_GATHER = ("-mtune-ctrl=use_gather",)

#: shared with eightbit_cpu.c: row r of a sign's half holds exponent E_LO - 1 + r (row 0 also
#: every smaller one: no midpoint lies under 2**-24), ROW_ONE's first entry |y| >= 1; each half
#: is padded to 2**SIGN_SHIFT entries.
E_LO = 103
ROW_ONE = 25
SIGN_SHIFT = 13

_TABLES: dict[bool, tuple[Tensor, Tensor]] = {}
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}


def compact_table(signed: bool) -> Tensor:
    """int32 ``[2 signs][32 rows][256]``, one entry per bucket of fp32 values (sign, exponent
    row, top 8 mantissa bits): bits 0-7 the number of midpoints of the dynamic map below the
    bucket, bits 8-22 the low 15 bits of the midpoint inside the bucket, flipped (xor 0x7fff) in
    negative buckets, or 0x7fff if the bucket holds none: the kernel adds 1 to the count when
    the value's low bits, flipped alike, exceed them. Raises if a bucket would hold two
    midpoints (then no such table is exact)."""
    _, mids = dynamic_map(signed)
    rows = 1 << (SIGN_SHIFT - 8)
    sign = torch.arange(2).view(2, 1, 1)
    row = torch.arange(rows).view(1, -1, 1)
    mant = torch.arange(256).view(1, 1, -1)
    bits = ((row + E_LO - 1) << 23) | (mant << 15)  # the smallest magnitude in the bucket
    bits = torch.where(row == 0, torch.zeros_like(bits), bits)  # row 0 reaches down to 0
    # negative buckets: their lowest value is the largest magnitude (row 0: just under 2**-24)
    top = torch.where(row == 0, torch.full_like(bits, (E_LO << 23) - 1), bits | 0x7FFF)
    bits = torch.where(sign == 1, (1 << 31) | top, bits)
    lowest = bits.to(torch.int32).view(torch.float32)  # int64 -> int32 wraps the sign bit
    count = torch.bucketize(lowest, mids).to(torch.int32)
    count[0, ROW_ONE], count[1, ROW_ONE] = len(mids), 0  # y >= 1: all below; y <= -1: none
    count[:, ROW_ONE + 1 :] = 0  # padding, never indexed
    # the midpoints' own buckets
    u = mids.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    s, e, m8 = u >> 31, (u >> 23) & 0xFF, (u >> 15) & 0xFF
    if bool((e < E_LO).any() | (e > 126).any()):
        raise ValueError("a midpoint lies outside the table's exponent rows")
    flat = (s * rows + e - E_LO + 1) * 256 + m8
    if flat.unique().numel() != flat.numel():
        raise ValueError("two midpoints share a bucket: the one-compare table cannot be exact")
    mid = torch.full((2 * rows * 256,), 0x7FFF, dtype=torch.int64)  # no midpoint: never above
    mid[flat] = (u & 0x7FFF) ^ (s * 0x7FFF)
    return (count.view(-1) | (mid << 8).to(torch.int32)).view(2, rows, 256)


def _tables(signed: bool) -> tuple[Tensor, Tensor]:
    if signed not in _TABLES:
        code, _ = dynamic_map(signed)
        _TABLES[signed] = (code.contiguous(), compact_table(signed).contiguous())
    return _TABLES[signed]


def _declare(lib: Any) -> None:
    p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
    lib.adamw8bit.argtypes = [i64, *[p] * 8, c_int, c_int, c_int, *[p] * 5, c_int]
    lib.lion8bit.argtypes = [i64, *[p] * 6, c_int, c_int, c_int, *[p] * 3, c_int]
    lib.quantize8bit.argtypes = [i64, p, p, p, p, c_int]
    lib.adamw8bit.restype = lib.lion8bit.restype = lib.quantize8bit.restype = None


def _load() -> Any:
    """The compiled library, built on first use; None (and a warning once) if it cannot be."""
    return cbuild.load(
        _SOURCE, _FLAGS, switch="OPTFORGE_NATIVE_8BIT", optional=_GATHER, declare=_declare,
        fallback="the 8-bit optimizers run their eager rule on CPU (~10x slower)",
    )


def available() -> bool:
    """The kernel is built (or can be) and enabled."""
    return _load() is not None


def quantize(x: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """``quant.quantize_blockwise(x, signed)`` by the kernel's requantization (the same codes
    and absmax, bit for bit); ``x`` an fp32 CPU tensor."""
    lib = _load()
    if lib is None:
        raise RuntimeError("the CPU 8-bit kernel is not available (no C compiler?)")
    flat = x.detach().reshape(-1).float().contiguous()
    codes = torch.empty(flat.numel(), dtype=torch.uint8)
    absmax = torch.empty(blocks(flat.numel()), dtype=torch.float32)
    table = _tables(signed)[1]
    lib.quantize8bit(flat.numel(), flat.data_ptr(), codes.data_ptr(), absmax.data_ptr(),
                     table.data_ptr(), torch.get_num_threads())
    return codes.view(x.shape), absmax


def _serves(tensors: Sequence[Tensor], fp32_state: bool) -> bool:
    p, g = tensors[0], tensors[-1]
    return (
        p.device.type == "cpu"
        and p.dtype in _DTYPES
        and g.dtype in _DTYPES
        and all(t.is_contiguous() for t in tensors)
        and p.numel() > 0
        and (not fp32_state or all(t.dtype == torch.float32 for t in tensors[1:-1]))
    )


def _adamw32(lib: Any) -> Any:
    """The library's ``adamw32`` with its argument types (set on first use)."""
    fn = lib.adamw32
    if fn.argtypes is None:
        p, i64, c_int = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        fn.argtypes = [i64, *[p] * 6, c_int, c_int, c_int, p, c_int]
        fn.restype = None
    return fn


def _f32(x: float) -> float:
    """``x`` rounded to fp32, as torch rounds a Python scalar operand of an fp32 op."""
    return float(torch.tensor(float(x), dtype=torch.float32))


def _hyper(name: str, hyper: Mapping[str, Any]) -> Tensor:
    b1, b2 = float(hyper["beta1"]), float(hyper["beta2"])
    lr, wd = float(hyper["lr"]), float(hyper["weight_decay"])
    if name in ("adamw8bit", "adamw32"):
        bc1, bc2 = float(hyper["bias_correction1"]), float(hyper["bias_correction2"])
        c2 = bc2**0.5
        values = [b1, 1 - b1, b2, 1 - b2, float(hyper["eps"]) * c2, 1 - lr * wd, lr * c2 / bc1]
    else:
        values = [b1, 1 - b1, b2, 1 - b2, 1 - lr * wd, lr]
    values.append(float(hyper.get("inv_grad_scale", 1.0)))  # an unscaled rule's factor
    return torch.tensor([_f32(v) for v in values], dtype=torch.float32)


def run(rule_name: str, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]) -> list[int]:
    """Run ``adamw8bit``, ``lion8bit`` or ``adamw32`` (``optim.eightbit``'s rule names; the
    last, fp32 moments, serves the tensors under ``min_8bit_size``) on every entry of ``lists``
    it serves, one call per (parameter dtype, gradient dtype); return the indices of the
    entries left for the eager rule."""
    lib = _load()
    if lib is None:
        return list(range(len(lists[0])))
    groups: dict[tuple[torch.dtype, torch.dtype], list[int]] = {}
    rest = []
    # The eager rule rounds a bf16 gradient's unscaled value to bf16, the C loop keeps it in
    # fp32: equal for a power-of-two scale (GradScaler's, unless told otherwise) only.
    inv = float(hyper.get("inv_grad_scale", 1.0))
    exact_bf16 = math.frexp(inv)[0] == 0.5
    for i, tensors in enumerate(zip(*lists)):
        served = _serves(tensors, fp32_state=rule_name == "adamw32")
        if served and (exact_bf16 or tensors[-1].dtype != torch.bfloat16):
            groups.setdefault((tensors[0].dtype, tensors[-1].dtype), []).append(i)
        else:
            rest.append(i)
    if not groups:
        return rest
    h = _hyper(rule_name, hyper)
    maximize = int(bool(hyper["maximize"]))
    threads = torch.get_num_threads()
    for (pdt, gdt), idx in groups.items():
        numel = torch.tensor([lists[0][i].numel() for i in idx], dtype=torch.int64)
        first = torch.zeros(len(idx) + 1, dtype=torch.int64)
        first[1:] = torch.cumsum((numel + BLOCK - 1) // BLOCK, 0)
        if rule_name != "adamw32":
            assert all(lists[2][i].numel() == blocks(lists[0][i].numel()) for i in idx)
        addr = [
            torch.tensor([lst[i].data_ptr() for i in idx], dtype=torch.int64) for lst in lists
        ]
        pdtype, gdtype = _DTYPES[pdt], _DTYPES[gdt]
        code1, table1 = _tables(True)
        if rule_name == "adamw8bit":
            p, m, ma, v, va, g = addr
            code2, table2 = _tables(False)
            lib.adamw8bit(
                len(idx), numel.data_ptr(), first.data_ptr(),
                p.data_ptr(), g.data_ptr(), m.data_ptr(), ma.data_ptr(), v.data_ptr(),
                va.data_ptr(), pdtype, gdtype, maximize,
                code1.data_ptr(), table1.data_ptr(), code2.data_ptr(), table2.data_ptr(),
                h.data_ptr(), threads,
            )
        elif rule_name == "adamw32":
            p, m, v, g = addr
            _adamw32(lib)(
                len(idx), numel.data_ptr(), first.data_ptr(), p.data_ptr(), g.data_ptr(),
                m.data_ptr(), v.data_ptr(), pdtype, gdtype, maximize, h.data_ptr(), threads,
            )
        else:
            p, m, ma, g = addr
            lib.lion8bit(
                len(idx), numel.data_ptr(), first.data_ptr(),
                p.data_ptr(), g.data_ptr(), m.data_ptr(), ma.data_ptr(), pdtype, gdtype,
                maximize, code1.data_ptr(), table1.data_ptr(), h.data_ptr(), threads,
            )
    return rest
