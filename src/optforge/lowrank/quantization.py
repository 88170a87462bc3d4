"""Quantization in plain torch (CPU and CUDA): bitsandbytes' blockwise 8-bit dynamic code for
optimizer moments, and asymmetric group quantization with optional stochastic rounding (Q-GaLore's
INT4 projectors and INT8 weights).

Notation: x a tensor flattened to 1-D, B the block (group) size, b the bit width.

* Blockwise dynamic (Dettmers et al., 2022, "8-bit Optimizers via Block-wise Quantization"):
  per block, ``a = max|x|``; code ``c = argmin_j |x/a − q_j|`` over the 256-value dynamic map
  ``q`` (``dynamic_map``, the same construction as ``bitsandbytes.functional.create_dynamic_map``);
  ``dequant = q_c·a``. Codes are ``uint8``, ``a`` is fp32 per block.
* Asymmetric group (Q-GaLore, Zhang et al., 2024): per group, ``s = (max − min)/(2^b − 1)``,
  ``z = min``; ``c = round((x − z)/s)``, or with stochastic rounding ``⌊y⌋ + Bernoulli(frac(y))``
  for ``y = (x − z)/s``; ``dequant = c·s + z``. Codes are ``uint8`` (one per value, unpacked,
  as the official code). The zero point is the group's minimum in fp32, not the official
  integer ``round(−min/s)``: with an integer zero point the extreme values fall up to half a
  step outside [0, 2^b − 1] and are clamped, which biases stochastic rounding there; with
  ``z = min`` every code is in range and E[dequant] = x exactly.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

__all__ = [
    "dequantize_blockwise",
    "dequantize_groupwise",
    "dynamic_map",
    "quantize_blockwise",
    "quantize_groupwise",
]


@functools.lru_cache(maxsize=8)
def _dynamic_map_cpu(signed: bool) -> Tensor:
    max_exponent_bits, total_bits = 7, 8
    data: list[float] = []
    non_sign_bits = total_bits - 1
    additional_items = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for i in range(max_exponent_bits):
        extra = 0 if signed else 1
        items = int(2 ** (i + non_sign_bits - max_exponent_bits + extra) + 1)
        bounds = torch.linspace(0.1, 1, items, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
        if signed:
            data += (-(10 ** (-(max_exponent_bits - 1) + i)) * means).tolist()
    assert additional_items == 0  # 7 exponent bits of 8: no linear-only region
    data += [0.0, 1.0]
    data += [0.0] * (256 - len(data))
    data.sort()
    return torch.tensor(data, dtype=torch.float32)


def dynamic_map(signed: bool, device: torch.device | str = "cpu") -> Tensor:
    """The 256-entry dynamic quantization map, sorted (bitsandbytes' ``create_dynamic_map``)."""
    return _dynamic_map_cpu(signed).to(device)


def _blocks(x: Tensor, blocksize: int) -> Tensor:
    flat = x.reshape(-1).float()
    pad = (-flat.numel()) % blocksize
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    return flat.view(-1, blocksize)


def quantize_blockwise(x: Tensor, code: Tensor, blocksize: int = 256) -> tuple[Tensor, Tensor]:
    """``(codes uint8 of x's numel, absmax fp32 per block)``: nearest entry of ``code``."""
    blocks = _blocks(x, blocksize)
    absmax = blocks.abs().amax(dim=1)
    normed = blocks / absmax.clamp_min(torch.finfo(torch.float32).tiny).unsqueeze(1)
    mids = (code[1:] + code[:-1]) / 2
    codes = torch.searchsorted(mids, normed.contiguous(), right=False)
    codes = codes.reshape(-1)[: x.numel()].to(torch.uint8)
    return codes, absmax


def dequantize_blockwise(
    codes: Tensor, absmax: Tensor, code: Tensor, shape: torch.Size | tuple[int, ...],
    blocksize: int = 256,
) -> Tensor:
    """fp32 values of ``codes`` (from ``quantize_blockwise``) in ``shape``."""
    values = code[codes.reshape(-1).long()]
    n = values.numel()
    pad = (-n) % blocksize
    if pad:
        values = torch.cat([values, values.new_zeros(pad)])
    values = values.view(-1, blocksize) * absmax.unsqueeze(1)
    return values.reshape(-1)[:n].reshape(shape)


def quantize_groupwise(
    x: Tensor,
    bits: int,
    group_size: int = 256,
    *,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(codes uint8, scale fp32 per group, zero fp32 per group)``; stochastic rounding when
    ``generator`` is given, round-to-nearest otherwise."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in [1, 8] (got {bits})")
    levels = 2**bits - 1
    groups = _blocks(x, group_size)
    n = x.numel()
    if n % group_size:  # padding must not widen the last group's range
        last = x.reshape(-1)[(n // group_size) * group_size :].float()
        groups[-1, last.numel() :] = last[0]
    lo, hi = groups.amin(dim=1), groups.amax(dim=1)
    scale = ((hi - lo) / levels).clamp_min(1e-12)
    scaled = (groups - lo.unsqueeze(1)) / scale.unsqueeze(1)  # in [0, levels]
    if generator is None:
        rounded = torch.round(scaled)
    else:
        floor = torch.floor(scaled)
        u = torch.rand(scaled.shape, generator=generator, device=scaled.device)
        rounded = floor + (u < (scaled - floor)).float()
    codes = rounded.clamp_(0, levels)
    return codes.reshape(-1)[:n].to(torch.uint8), scale, lo


def dequantize_groupwise(
    codes: Tensor, scale: Tensor, zero: Tensor, shape: torch.Size | tuple[int, ...],
    group_size: int = 256,
) -> Tensor:
    """fp32 values of ``codes`` (from ``quantize_groupwise``) in ``shape``."""
    n = codes.numel()
    flat = codes.reshape(-1).float()
    pad = (-n) % group_size
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    values = flat.view(-1, group_size) * scale.unsqueeze(1) + zero.unsqueeze(1)
    return values.reshape(-1)[:n].reshape(shape)
