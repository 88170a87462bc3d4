"""INT8 weights for Q-GaLore: linear layers that store their weight as 8-bit codes.

Q-GaLore (Zhang et al., 2024, arXiv:2407.08296) keeps the projected layers' weights as INT8
codes with a scale and zero point per group of 256 and writes every update back by stochastic
rounding, so weights cost 1 byte per value plus 8 bytes per group instead of 2 or 4.

``quantize_linear_weights(model)`` (one line, before building the optimizer) swaps the chosen
``nn.Linear`` layers (and Hugging Face ``Conv1D``, GPT-2's linear) for ``Int8Linear``:

* ``weight_codes`` (uint8, out×in), ``weight_scale`` and ``weight_zero`` (fp32 per group of
  ``group_size`` consecutive values of the row-major weight): buffers, so they travel with
  ``state_dict`` and load with ``torch.load(weights_only=True)``; ``dequant = codes·scale +
  zero`` (``quantization.quantize_groupwise``'s format).
* ``weight``: the trainable handle, a float ``nn.Parameter`` of the weight's shape whose storage
  is one element (zero strides). Autograd gives it the full float gradient, so everything that
  works on ``(param, param.grad)`` pairs (``zero_grad``, clipping, hooks, ``PerLayerStep``,
  the optimizer's param groups) works unchanged; its values are never read and it is left out
  of ``state_dict``. Only the ``optforge.lowrank`` optimizers know how to update it: they read
  the weight from the codes, apply the step in fp32 and write new codes by stochastic rounding
  (``ProjectedOptimizer``); any other optimizer fails loudly on the in-place update of a
  zero-stride tensor.

Forward and backward dequantize the codes on the fly (the official ``QLinear`` does the same), so
no float copy of the weight outlives a call. Not supported: ``copy.deepcopy`` of the model (a
Parameter's deepcopy drops the link to its codes) and DDP (it broadcasts parameters at start).
Casting the model (``.half()``, ``.to(dtype)``) changes only the handle's dtype: codes, scales
and zero points keep theirs.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from optforge.lowrank.quantization import dequantize_groupwise, quantize_groupwise

__all__ = ["Int8Linear", "int8_owner", "is_float_linear", "quantize_linear_weights"]

_OWNER = "_optforge_int8_owner"


def int8_owner(param: Tensor) -> Int8Linear | None:
    """The ``Int8Linear`` whose codes ``param`` stands for, or None for an ordinary parameter."""
    ref = getattr(param, _OWNER, None)
    return None if ref is None else ref()


def is_float_linear(module: nn.Module) -> bool:
    """``nn.Linear`` or Hugging Face's ``Conv1D`` (GPT-2's linear, matched by class name so
    transformers stays optional): the layers ``quantize_linear_weights`` can swap."""
    return isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D"


def _handle(shape: tuple[int, int], dtype: torch.dtype, device: Any) -> Tensor:
    return torch.zeros((), dtype=dtype, device=device).expand(shape)


class _Int8LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, handle: Tensor, module: Int8Linear) -> Tensor:
        ctx.module = module
        ctx.save_for_backward(x)
        return x @ module.dequantized(x.dtype).t()

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        (x,) = ctx.saved_tensors
        module = ctx.module
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:  # dequantized again: no float weight kept across the call
            grad_x = grad_out @ module.dequantized(grad_out.dtype)
        if ctx.needs_input_grad[1]:
            grad_w = grad_out.reshape(-1, module.out_features).t() @ x.reshape(
                -1, module.in_features
            )
            grad_w = grad_w.to(module.weight.dtype)
        return grad_x, grad_w, None


class Int8Linear(nn.Module):
    """A linear layer whose weight is stored as ``bits``-bit codes per group (see the module
    docstring); ``bias`` stays a float parameter.

    Example:
        >>> layer = Int8Linear.from_linear(torch.nn.Linear(512, 256))
        >>> layer.weight_codes.dtype, layer.weight.shape
        (torch.uint8, torch.Size([256, 512]))
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        bits: int = 8,
        group_size: int = 256,
        dtype: torch.dtype = torch.float32,
        device: Any = None,
    ) -> None:
        super().__init__()
        if not 2 <= bits <= 8:
            raise ValueError(f"bits must be in [2, 8] (got {bits})")
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1 (got {group_size})")
        self.in_features, self.out_features = in_features, out_features
        self.bits, self.group_size = bits, group_size
        groups = math.ceil(in_features * out_features / group_size)
        shape = (out_features, in_features)
        self.register_buffer("weight_codes", torch.zeros(shape, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(groups, device=device))
        self.register_buffer("weight_zero", torch.zeros(groups, device=device))
        self.weight = nn.Parameter(_handle(shape, dtype, device))
        setattr(self.weight, _OWNER, weakref.ref(self))
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype, device=device)) if bias \
            else None  # fmt: skip

    @classmethod
    def from_linear(cls, linear: nn.Module, *, bits: int = 8, group_size: int = 256) -> Int8Linear:
        """Quantize an ``nn.Linear`` (or HF ``Conv1D``, whose weight is in×out) to the nearest
        codes."""
        weight = linear.weight.detach()
        if type(linear).__name__ == "Conv1D":
            weight = weight.t()
        out_f, in_f = weight.shape
        layer = cls(in_f, out_f, linear.bias is not None, bits=bits, group_size=group_size,
                    dtype=weight.dtype, device=weight.device)  # fmt: skip
        layer.set_weight(weight)
        if linear.bias is not None:
            layer.bias.data.copy_(linear.bias.detach())
        return layer

    @torch.no_grad()
    def set_weight(self, weight: Tensor, generator: torch.Generator | None = None) -> None:
        """Store ``weight`` as codes: stochastic rounding with ``generator``, else nearest."""
        if tuple(weight.shape) != tuple(self.weight_codes.shape):
            raise ValueError(f"weight of shape {tuple(weight.shape)} for a layer of weight "
                             f"shape {tuple(self.weight_codes.shape)}")  # fmt: skip
        codes, scale, zero = quantize_groupwise(weight, self.bits, self.group_size,
                                                generator=generator)  # fmt: skip
        self.weight_codes.copy_(codes.view(self.weight_codes.shape))
        self.weight_scale.copy_(scale)
        self.weight_zero.copy_(zero)

    def dequantized(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The weight's values, out×in, in ``dtype``."""
        w = dequantize_groupwise(self.weight_codes, self.weight_scale, self.weight_zero,
                                 self.weight_codes.shape, self.group_size)  # fmt: skip
        return w.to(dtype)

    def forward(self, x: Tensor) -> Tensor:
        y = _Int8LinearFn.apply(x, self.weight, self)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, bits={self.bits}, group_size={self.group_size}"
        )

    # The handle is not state: the codes are. Keep it out of state_dict and out of the keys
    # load_state_dict expects, and keep its storage one element when the module moves.
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        destination.pop(prefix + "weight", None)

    def _load_from_state_dict(
        self, state_dict: dict, prefix: str, local_metadata: dict, strict: bool,
        missing_keys: list, unexpected_keys: list, error_msgs: list,
    ) -> None:  # fmt: skip
        handle = self._parameters.pop("weight")
        try:
            super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                          missing_keys, unexpected_keys, error_msgs)  # fmt: skip
        finally:
            self._parameters["weight"] = handle

    def _apply(self, fn: Any, recurse: bool = True) -> Int8Linear:
        # The scale and zero point stay fp32 whatever dtype the model is cast to (a bf16 zero
        # point would shift every weight of its group); they only follow the device.
        handle = self._parameters.pop("weight")
        kept = {k: self._buffers.pop(k) for k in ("weight_scale", "weight_zero")}
        try:
            super()._apply(fn, recurse)
        finally:
            self._parameters["weight"] = handle
            one = fn(torch.zeros((), dtype=handle.dtype, device=handle.device))
            self._buffers.update({k: t.to(one.device) for k, t in kept.items()})
        handle.data = one.expand(handle.shape)
        if handle.grad is not None:
            handle.grad = fn(handle.grad)
        return self


def quantize_linear_weights(
    model: nn.Module,
    *,
    target_modules: Sequence[str] = ("attn", "mlp"),
    exclude: Sequence[str] = ("lm_head", "embed"),
    bits: int = 8,
    group_size: int = 256,
) -> nn.Module:
    """Swap ``model``'s linear layers (``nn.Linear`` and HF ``Conv1D``) whose qualified name
    contains one of ``target_modules`` (case-insensitive; empty: every one) and none of
    ``exclude`` for ``Int8Linear`` (round-to-nearest codes), in place; returns ``model``.

    The defaults pick the layers ``galore_param_groups`` projects, as Q-GaLore quantizes the
    projected layers. Call it before building the optimizer.
    """
    chosen = []
    for name, module in model.named_modules():
        low = name.lower()
        if (is_float_linear(module)
                and (not target_modules or any(t.lower() in low for t in target_modules))
                and not any(e.lower() in low for e in exclude)):  # fmt: skip
            chosen.append(name)
    if not chosen:
        raise ValueError(
            f"no linear layer of the model matches target_modules={tuple(target_modules)} "
            f"minus exclude={tuple(exclude)}"
        )
    for name in chosen:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        old = getattr(parent, child)
        setattr(parent, child, Int8Linear.from_linear(old, bits=bits, group_size=group_size))
    return model
