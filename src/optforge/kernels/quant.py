"""Blockwise 8-bit quantization of optimizer state (Dettmers et al., 2022, "8-bit Optimizers via
Block-wise Quantization", arXiv 2110.02861), in the layout bitsandbytes 0.50 uses.

Notation: x a state tensor flattened to n elements, B = ``BLOCK`` = 256 elements per block,
nb = ⌈n/B⌉ blocks, Q the 256-entry code book (``dynamic_map``).

    a_k = max |x_i| over block k                       (fp32 absmax, shape nb)
    c_i = argmin_j |x_i · (1/a_k) − Q_j|               (uint8 code, the nearest entry)
    x̂_i = Q[c_i] · a_k                                 (dequantized)

The code book is the *dynamic* map: a decimal exponent 10^-6 .. 10^0 followed by a linear
fraction whose bit budget grows with the exponent, so small magnitudes keep relative precision.
The signed map (first moments) spans [−0.993, 1]; the unsigned one (second moments) [0, 1];
both contain 0 exactly, so an all-zero block round-trips to zeros whatever its codes.

The nearest code is the number of the 255 midpoints between codes that lie below x/a (a value
on a midpoint takes the lower code). ``torch.bucketize`` finds it by binary search at ~200 ns per
element on CPU [measured, 1 thread]: 50x an fp32 add. Instead the top 17 bits of the fp32 value
(sign, exponent, 8 mantissa bits) index a table of the count of midpoints below the bucket's
lowest value, and one comparison with the next midpoint finishes: exact because no bucket
(relative width 2⁻⁸) holds two midpoints (the closest codes are 0.7% apart, at 1.0 in the
unsigned map; ``test_quant.py`` checks the table against ``bucketize`` exhaustively). Two
gathers and a compare, which ``torch.compile`` fuses into the update's loop.

bitsandbytes' CPU quantizer does not always pick the nearest code (it maps some values below
1e-8 of the block's absmax to 1.6e-5 in the unsigned map), so codes from the two differ on
a few percent of elements; see docs/optim/eightbit.md for the measured gap.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "BLOCK",
    "blocks",
    "dequantize_blockwise",
    "dynamic_map",
    "nearest_code",
    "prepare",
    "quantize_blockwise",
]

#: elements per absmax block: bitsandbytes' since v0.44 (its CPU path hard-codes it).
BLOCK = 256

_MAPS: dict[tuple[bool, torch.device], tuple[Tensor, Tensor]] = {}
_TABLES: dict[tuple[bool, torch.device], tuple[Tensor, Tensor]] = {}
#: the fp32 bits below the 17 that index the lookup table.
_SHIFT = 15


def _dynamic_values(signed: bool) -> list[float]:
    """bitsandbytes' ``create_dynamic_map(signed, max_exponent_bits=7, total_bits=8)``."""
    data: list[float] = []
    for i in range(7):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        scale = 10 ** (-6 + i)  # scaled in fp32, as bitsandbytes does: the same 256 floats
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data += [0.0, 1.0]
    assert len(data) == 256
    return sorted(data)


def dynamic_map(signed: bool, device: torch.device | str = "cpu") -> tuple[Tensor, Tensor]:
    """The 256 codes (fp32, ascending) and the 255 midpoints between neighbours.

    Signed: 127 negative codes, 0 at index 127, 128 positive codes ending at 1.0. Unsigned: 0 at
    index 0, 255 positive codes ending at 1.0.
    """
    device = torch.device(device)
    key = (signed, device)
    if key not in _MAPS:
        code = torch.tensor(_dynamic_values(signed), dtype=torch.float32)
        mids = (code[:-1] + code[1:]) / 2
        _MAPS[key] = (code.to(device), mids.to(device))
    return _MAPS[key]


def _lookup(signed: bool, device: torch.device) -> tuple[Tensor, Tensor]:
    """(table, midpoints + inf): ``table[bits >> 15]`` = midpoints below the bucket's lowest
    value, int32, 2**17 entries (512 KiB); the first compare decides between it and the next."""
    key = (signed, device)
    if key not in _TABLES:
        _, mids = dynamic_map(signed)
        top = torch.arange(1 << 17, dtype=torch.int64)
        low_bits = torch.where(top >= 1 << 16, (top << _SHIFT) | ((1 << _SHIFT) - 1), top << _SHIFT)
        lowest = low_bits.to(torch.int32).view(torch.float32)  # most negative value per bucket
        table = torch.bucketize(lowest.nan_to_num(nan=0.0), mids).to(torch.int32)
        ext = torch.cat([mids, torch.tensor([float("inf")])])
        _TABLES[key] = (table.to(device), ext.to(device))
    return _TABLES[key]


def prepare(device: torch.device | str) -> None:
    """Build the code books and lookup tables for ``device`` (before tracing a compiled step)."""
    device = torch.device(device)
    for signed in (True, False):
        dynamic_map(signed, device)
        _lookup(signed, device)


def nearest_code(y: Tensor, signed: bool) -> Tensor:
    """Index (int64) of the code nearest to each fp32 value of ``y`` in [−1, 1]."""
    table, mids = _lookup(signed, y.device)
    # Tensor operands and index_select: Python-int shifts and ``table[idx]`` run 5-25x slower in
    # eager mode on CPU (1 thread, 262K elements: 2.2 vs 1.0 ms, 5.2 vs 0.2 ms).
    bits = torch.bitwise_right_shift(y.reshape(-1).view(torch.int32), _const(_SHIFT, y.device))
    bucket = torch.bitwise_and(bits, _const((1 << 17) - 1, y.device))
    below = table.index_select(0, bucket)
    above = y.reshape(-1) > mids.index_select(0, below)
    return (below + above.to(torch.int32)).view(y.shape)


def _const(value: int, device: torch.device) -> Tensor:
    return torch.tensor(value, dtype=torch.int32, device=device)


def blocks(numel: int) -> int:
    """Number of absmax blocks of a tensor of ``numel`` elements."""
    return -(-numel // BLOCK)


def dequantize_blockwise(codes: Tensor, absmax: Tensor, code: Tensor) -> Tensor:
    """fp32 values of ``codes`` (any shape, uint8) with per-block ``absmax``; shape kept.

    Args:
        codes: n codes, blocks of ``BLOCK`` in flat (row-major) order.
        absmax: nb fp32 block scales.
        code: the 256-entry code book the codes index.
    """
    flat = code.index_select(0, codes.reshape(-1).int())  # int32 index: half the bytes of int64
    n = flat.numel()
    if n % BLOCK == 0:
        return (flat.view(-1, BLOCK) * absmax.view(-1, 1)).view(codes.shape)
    # Not pad-then-slice (see quantize_blockwise).
    return (flat * absmax.repeat_interleave(BLOCK)[:n]).view(codes.shape)


def quantize_blockwise(x: Tensor, signed: bool) -> tuple[Tensor, Tensor]:
    """Codes (uint8, ``x``'s shape) and fp32 absmax (nb,) of ``x`` in the signed or unsigned
    dynamic map. A block of zeros
    gets absmax 0 (and the code of 0). Non-finite values give a non-finite absmax: the whole
    block then dequantizes to NaN, never to plausible numbers.
    """
    flat = x.reshape(-1).float()
    n = flat.numel()
    whole = n // BLOCK * BLOCK
    # Whole blocks as rows, the partial one apart; never pad-then-slice: inductor (torch 2.13,
    # CPU) miscompiles a padded quantization fused with a dequantization's gather (garbage in
    # the partial block; tests/optim/test_eightbit.py's compiled test).
    parts = []
    if whole:
        parts.append(flat[:whole].view(-1, BLOCK).abs().amax(dim=1))
    if n > whole:
        parts.append(flat[whole:].abs().amax().view(1))
    absmax = torch.cat(parts) if len(parts) > 1 else parts[0]
    # One correctly rounded reciprocal per block, then a product per element (as bitsandbytes'
    # CPU quantizer): a division per element took a fifth of the fused C step's time.
    inv = torch.where(absmax > 0, absmax, torch.ones_like(absmax)).reciprocal()
    if whole == n:
        y = (flat.view(-1, BLOCK) * inv.view(-1, 1)).view(-1)
    else:
        y = flat * inv.repeat_interleave(BLOCK)[:n]
    return nearest_code(y, signed).to(torch.uint8).view(x.shape), absmax
