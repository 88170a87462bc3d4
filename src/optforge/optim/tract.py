"""TrAct: Training Activations (Petersen et al., NeurIPS 2024, "TrAct: Making First-layer
Pre-Activations Trainable").

Notation (per group of a grouped conv; a Linear layer is one group):

    X   b × n   input rows. Linear: the input flattened over its leading dims. Conv2d: the
                patches of the *padded* input, b = N·H_out·W_out, n = C_in/groups·kh·kw
    dZ  b × o   gradient of the loss w.r.t. the layer's pre-activations
    dW  o × n   the standard weight gradient dZᵀX (what autograd computes)
    λ           ridge weight ``lam``

    primal (b ≥ n):  dW_TrAct = dW (XᵀX/b + λI_n)⁻¹
    dual   (b < n):  dW_TrAct = (1/λ)[dW − (dW Xᵀ)(XXᵀ + bλI_b)⁻¹ X]     (Woodbury, same value)

Both equal dZᵀ X (XᵀX/b + λI)⁻¹ = dZᵀ (XXᵀ/b + λI)⁻¹ X: a gradient step on the activations
followed by the ridge least-squares fit of W to the stepped activations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from optforge._validation import check_positive

__all__ = ["TrAct", "tract_grad"]

# The conv Gram matrix XᵀX is accumulated over batch chunks whose unfolded patches hold at most
# this many elements (128 MiB in fp32), so the backward never materializes the full unfolded
# input (1.9 GB for ResNet-50's conv1 at batch 256 on ImageNet).
_UNFOLD_CHUNK_ELEMENTS = 2**25

_FORMS = ("auto", "primal", "dual")


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Solve in at least fp32: bf16/fp16 Gram matrices are too coarse to invert.
    return torch.promote_types(dtype, torch.float32)


def _primal(grad_weight: Tensor, gram: Tensor, b: int, lam: float) -> Tensor:
    """dW (G/b + λI)⁻¹ with G = XᵀX; ``grad_weight`` (..., o, n), ``gram`` (..., n, n)."""
    n = gram.shape[-1]
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    a = gram / b + lam * eye
    # solve_ex: no device sync; A is SPD with eigenvalues >= λ, so it is singular only when X
    # is non-finite, and then the gradient is non-finite as the plain one would be.
    return torch.linalg.solve_ex(a, grad_weight, left=False)[0]


def _dual(grad_weight: Tensor, rows: Tensor, lam: float) -> Tensor:
    """(1/λ)[dW − (dW Xᵀ)(XXᵀ + bλI)⁻¹ X]; ``grad_weight`` (..., o, n), ``rows`` (..., b, n)."""
    b = rows.shape[-2]
    eye = torch.eye(b, dtype=rows.dtype, device=rows.device)
    k = rows @ rows.mT + (b * lam) * eye
    s = torch.linalg.solve_ex(k, grad_weight @ rows.mT, left=False)[0]
    return (grad_weight - s @ rows) / lam


def tract_grad(grad_weight: Tensor, rows: Tensor, lam: float, *, form: str = "auto") -> Tensor:
    """TrAct weight gradient ``dW (XᵀX/b + λI)⁻¹`` from the standard one ``dW = dZᵀX``.

    The pure math behind :class:`TrAct`, for callers that already hold the input rows.

    Args:
        grad_weight: standard weight gradient, ``o x n`` (or ``g x o_g x n`` for g groups).
        rows: the layer's input rows X, ``b x n`` (or ``g x b x n``).
        lam: ridge weight λ > 0.
        form: ``"primal"`` (an n×n solve), ``"dual"`` (Woodbury, a b×b solve) or ``"auto"``
            (primal when b >= n). Both give the same value up to rounding.

    Returns:
        The TrAct gradient, same shape and dtype as ``grad_weight``; computed in at least fp32.
    """
    lam = check_positive("lam", lam)
    if form not in _FORMS:
        raise ValueError(f"form must be one of {_FORMS} (got {form!r})")
    if rows.shape[-1] != grad_weight.shape[-1] or rows.dim() != grad_weight.dim():
        raise ValueError(
            "rows must be b x n (or g x b x n) matching grad_weight o x n (or g x o_g x n) "
            f"(got rows {tuple(rows.shape)}, grad_weight {tuple(grad_weight.shape)})"
        )
    b, n = rows.shape[-2], rows.shape[-1]
    if b == 0:
        return grad_weight.clone()
    dtype = _compute_dtype(grad_weight.dtype)
    with torch.autocast(device_type=grad_weight.device.type, enabled=False):
        dw, x = grad_weight.to(dtype), rows.to(dtype)
        if form == "primal" or (form == "auto" and b >= n):
            out = _primal(dw, x.mT @ x, b, lam)
        else:
            out = _dual(dw, x, lam)
    return out.to(grad_weight.dtype)


@dataclass(frozen=True)
class _ConvGeometry:
    kernel_size: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pad: tuple[int, int, int, int]  # F.pad order: (left, right, top, bottom)
    pad_mode: str  # "zeros" or an F.pad mode
    groups: int

    def output_positions(self, height: int, width: int) -> int:
        left, right, top, bottom = self.pad
        positions = 1
        for size, pads, k, s, d in zip(
            (height, width),
            (top + bottom, left + right),
            self.kernel_size,
            self.stride,
            self.dilation,
            strict=True,
        ):
            positions *= max((size + pads - d * (k - 1) - 1) // s + 1, 0)
        return positions

    def patches(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """Patches of ``x`` (N, C, H, W) padded as the layer pads it: ``N x g x n x L``."""
        left, right, top, bottom = self.pad
        if self.pad_mode == "zeros" and left == right and top == bottom:
            patches = F.unfold(x, self.kernel_size, self.dilation, (top, left), self.stride)
        else:
            mode = "constant" if self.pad_mode == "zeros" else self.pad_mode
            patches = F.unfold(
                F.pad(x, self.pad, mode=mode), self.kernel_size, self.dilation, 0, self.stride
            )
        # features are channel-major (c, kh, kw), so each group's channels are contiguous
        n_img, features, positions = patches.shape
        return patches.to(dtype).reshape(n_img, self.groups, features // self.groups, positions)

    def gram(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """Σ over images of P Pᵀ (= XᵀX per group), ``g x n x n``, without transposing P."""
        p = self.patches(x, dtype)
        n_img, groups, n, positions = p.shape
        flat = p.reshape(n_img * groups, n, positions)
        return (flat @ flat.mT).view(n_img, groups, n, n).sum(0)

    def rows(self, x: Tensor, dtype: torch.dtype) -> Tensor:
        """X per group: ``g x (N·L) x n``."""
        p = self.patches(x, dtype)
        n_img, groups, n, positions = p.shape
        return p.permute(1, 0, 3, 2).reshape(groups, n_img * positions, n)


def _conv_tract_grad(grad_weight: Tensor, x: Tensor, geo: _ConvGeometry, lam: float) -> Tensor:
    if x.dim() == 3:  # unbatched (C, H, W)
        x = x.unsqueeze(0)
    out_channels = grad_weight.shape[0]
    n = grad_weight[0].numel()
    b = x.shape[0] * geo.output_positions(x.shape[-2], x.shape[-1])
    if b == 0:
        return grad_weight.clone()
    dtype = _compute_dtype(grad_weight.dtype)
    dw = grad_weight.to(dtype).reshape(geo.groups, out_channels // geo.groups, n)
    if b < n:
        out = _dual(dw, geo.rows(x, dtype), lam)
    else:
        per_image = n * geo.groups * (b // x.shape[0])  # unfolded elements of one image
        chunk = max(1, _UNFOLD_CHUNK_ELEMENTS // per_image)
        gram = None
        for start in range(0, x.shape[0], chunk):
            part = geo.gram(x[start : start + chunk], dtype)
            gram = part if gram is None else gram.add_(part)
        out = _primal(dw, gram, b, lam)
    return out.reshape(grad_weight.shape).to(grad_weight.dtype)


def _linear_tract_grad(grad_weight: Tensor, x: Tensor, lam: float) -> Tensor:
    n = grad_weight.shape[1]
    rows = x.reshape(-1, n)
    b = rows.shape[0]
    if b == 0:
        return grad_weight.clone()
    dtype = _compute_dtype(grad_weight.dtype)
    dw = grad_weight.to(dtype)
    if b < n:
        out = _dual(dw, rows.to(dtype), lam)
    elif rows.dtype == dtype:
        out = _primal(dw, rows.mT @ rows, b, lam)
    else:  # upcast in chunks rather than copying the whole low-precision input
        chunk = max(1, _UNFOLD_CHUNK_ELEMENTS // n)
        gram = torch.zeros(n, n, dtype=dtype, device=rows.device)
        for start in range(0, b, chunk):
            part = rows[start : start + chunk].to(dtype)
            gram.addmm_(part.mT, part)
        out = _primal(dw, gram, b, lam)
    return out.to(grad_weight.dtype)


class _TrActWeight(torch.autograd.Function):
    """Identity on the weight in forward; turns the standard weight gradient into TrAct's."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any, weight: Tensor, x: Tensor, geometry: _ConvGeometry | None, lam: float
    ) -> Tensor:
        ctx.save_for_backward(x)
        ctx.geometry, ctx.lam = geometry, lam
        return weight.view_as(weight)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_weight: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        # Under autocast the matmuls below would run in bf16/fp16; the solve needs fp32.
        with torch.autocast(device_type=grad_weight.device.type, enabled=False):
            if ctx.geometry is None:
                grad = _linear_tract_grad(grad_weight, x, ctx.lam)
            else:
                grad = _conv_tract_grad(grad_weight, x, ctx.geometry, ctx.lam)
        return grad, None, None, None


def _check_layer(layer: object) -> None:
    for cls in (nn.Linear, nn.Conv2d):
        if isinstance(layer, cls):
            # A subclass with its own forward would not be reproduced by the functional call.
            if type(layer).forward is not cls.forward:
                raise TypeError(
                    f"layer must be an nn.Linear or nn.Conv2d with the stock forward (got "
                    f"{type(layer).__name__}, which overrides forward)"
                )
            weight = layer.weight
            if isinstance(weight, nn.parameter.UninitializedParameter):
                raise ValueError(
                    f"layer weight is uninitialized ({type(layer).__name__}); run one forward "
                    "pass to materialize it before wrapping"
                )
            if weight.is_complex():
                raise TypeError(f"layer weight must be real (got dtype {weight.dtype})")
            return
    if isinstance(layer, TrAct):
        raise TypeError("layer is already wrapped in TrAct")
    raise TypeError(f"layer must be an nn.Linear or nn.Conv2d (got {type(layer).__name__})")


class TrAct(nn.Module):
    """TrAct (Petersen et al., NeurIPS 2024): a closed-form weight gradient for the first layer.

    Wraps the first ``nn.Linear`` or ``nn.Conv2d`` of a model. The forward output, the input
    gradient and the bias gradient are unchanged; the weight gradient becomes
    ``dZᵀ X (XᵀX/b + λI)⁻¹``, the ridge fit of W to activations moved one gradient step, so the
    first layer learns at the rate of the activations instead of at a rate set by the scale and
    correlation of the raw inputs. Works with any optimizer. No state; the backward solves an
    n×n system (b×b when the batch has fewer rows b than patch features n). Statistics are the
    local batch's: under DDP each rank preconditions its own gradient before the all-reduce.

    The wrapper registers the layer's own ``weight``/``bias`` Parameters, so state-dict keys
    (``stem.weight``) and optimizers built before wrapping keep working. Hooks registered on the
    wrapped layer do not run (its forward is not called).

    Args:
        layer: an ``nn.Linear`` or ``nn.Conv2d`` (any stride, padding incl. ``'same'``,
            dilation, groups, padding_mode).
        lam: ridge weight λ > 0 (official default 0.1, Felix-Petersen/tract ``src/tract.py``).
            λ → ∞ gives the plain gradient scaled by 1/λ.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
        >>> model[0] = TrAct(model[0], lam=0.1)
        >>> model(torch.randn(2, 3, 8, 8)).sum().backward()
    """

    def __init__(self, layer: nn.Linear | nn.Conv2d, lam: float = 0.1) -> None:
        super().__init__()
        _check_layer(layer)
        self.lam = check_positive("lam", lam)
        # Not a submodule: the parameters below are registered here, under the same names.
        object.__setattr__(self, "_layer", layer)
        self.weight = layer.weight
        self.register_parameter("bias", layer.bias)
        self._geometry: _ConvGeometry | None = None
        if isinstance(layer, nn.Conv2d):
            self._geometry = _ConvGeometry(
                kernel_size=tuple(layer.kernel_size),  # type: ignore[arg-type]
                stride=tuple(layer.stride),  # type: ignore[arg-type]
                dilation=tuple(layer.dilation),  # type: ignore[arg-type]
                pad=tuple(layer._reversed_padding_repeated_twice),  # type: ignore[arg-type]
                pad_mode=layer.padding_mode,
                groups=layer.groups,
            )

    @property
    def layer(self) -> nn.Linear | nn.Conv2d:
        """The wrapped layer, holding this module's current ``weight`` and ``bias``."""
        layer = self._layer
        # Parameters may have been replaced on the wrapper (load_state_dict(assign=True), .to()
        # with overwrite_module_params_on_conversion); hand back a layer that sees them.
        if layer.weight is not self.weight:
            layer.weight = self.weight
        if layer.bias is not self.bias:
            layer.bias = self.bias
        return layer

    def forward(self, x: Tensor) -> Tensor:
        weight = self.weight
        if torch.is_grad_enabled() and weight.requires_grad:
            weight = _TrActWeight.apply(weight, x.detach(), self._geometry, self.lam)
        if self._geometry is None:
            return F.linear(x, weight, self.bias)
        return self._layer._conv_forward(x, weight, self.bias)

    def extra_repr(self) -> str:
        return f"{self._layer!r}, lam={self.lam}"
