"""``ProjectedOptimizer``: the one loop behind every low-rank method of ``optforge.lowrank``.

Per projected matrix (a parameter with ≥ 2 dims in a group whose ``rank`` or ``density`` is
set), step k (counted per parameter from 0):

    G = grad seen as m×n (MatrixView)                  maximize: G ← −G
    if k mod T == 0: refresh the basis (projector), apply the switch policy to the moments,
                     adapt T (adaptive gap), quantize the basis (proj_bits)
    R = proj(G)                                        r×n, m×r or r×r
    X = R, or the natural gradient of R (Woodbury, bounded history) for Natural GaLore
    u = AdamDir(X)  (optim.adamw.adam_inner_rule with the bias corrections folded into the
                     step as HF AdamW does: u = (√(1−β2^t)/(1−β1^t))·M/(√V + ε); 8-bit moments
                     optional), run through ``kernels.apply_rule_`` over the group's parameters
                     at once (the Triton kernel on CUDA; see "The inner rule" below)
    U = α·back(u) + residual(G, R, u)                  see RESIDUALS
    W ← W − η·U ;  W ← W·(1 − η·λ)                     (decay first with decay_before_update)
    weight_bits: W ← stochastic rounding of W to its b-bit group grid (Q-GaLore)
    an Int8Linear's weight (lowrank.int8): W read from its codes, new codes by stochastic
                     rounding to the layer's own bits and groups (INT8 storage)

Parameters that are not projected (biases, norms, groups with ``rank=None``) take the same
inner rule on their full gradient: plain (8-bit) AdamW.

Residual rules (``residual=``), on ``E = G − back(R)`` (the part of G outside the subspace):

* ``"none"``: discarded (GaLore);
* ``"sgd"``, ``"sign_sgd"``: ``α·s·E`` or ``α·s·sign(E)`` with ``s = residual_scale`` (FRUGAL's
  state-free update);
* ``"fira"``: Fira's official rule on ``E_α = G − α·back(R)`` (contains (1−α) of the in-subspace
  gradient, as the official code does), scaled per row/column by φ = ‖N‖/‖R‖ along the
  full-size dimension (N = u without bias correction), then the norm-growth limiter
  (γ = 1.01: ‖S‖ may grow by at most 1% per step over the previous post-limit norm), added with
  the bias-corrected step size; ``"fira_orthogonal"``: the same on the clean ``E``.

Switch policy (``on_switch=``) when the basis changes: ``"keep"`` the moments (GaLore, Fira,
Q-GaLore), ``"reset"`` them and the bias-correction count (FRUGAL), or ``"rotate"`` them into
the new basis (M ← R_b M with R_b = P_newᵀ P_old; V ← (R_b ⊙ R_b) V, which keeps V ≥ 0).

A failed or non-finite basis (SVD non-convergence; a non-finite gradient with
``check_finite=False``) keeps the previous basis; at the first refresh it falls back to a seeded
random orthogonal basis.

The inner rule. A step runs in three passes over a group's parameters: each one's gradient
is projected (refreshing its basis when due), then one ``apply_rule_`` call per inner step count
runs the inner Adam on every projected gradient and its moments (``backend``: ``auto`` takes
the registered Triton kernel on CUDA, one launch per dtype; on the CPU the eager ``foreach``
path, bit-equal to the loop), then each parameter gets its residual and its update. The
projected gradients and updates wait between the passes; a pass closes once they hold
``INNER_CHUNK`` elements, which bounds that extra memory (u and X are r×n each, as a moment).
On the eager paths (``loop``, ``foreach``: the CPU's default) nothing waits: each parameter
takes the three passes alone, as one call per tensor costs them nothing.

Every piece of state is a tensor in ``optimizer.state``, with flat namespaced keys:
``step`` and ``inner.step`` (int64 counters on the CPU), ``proj.P``/``proj.Q`` (fp32, or
``uint8`` codes with ``.scale``/``.zero`` when quantized), ``inner.exp_avg``/``inner.exp_avg_sq``
(fp32 for 16-bit parameters; ``uint8`` codes with ``.absmax`` when 8-bit), ``residual.norm``,
``natural.history``/``natural.count``, ``switch.gap``/``switch.fifo``/``switch.fifo_count``/
``switch.top``. So ``state_dict()`` loads with ``weights_only=True`` and resumes bit-exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from optforge._seeding import generator_for
from optforge._validation import (
    check_betas,
    check_in_range,
    check_int,
    check_non_negative,
    check_positive,
)
from optforge.kernels import apply_rule_, resolve_backend
from optforge.lowrank.int8 import int8_owner
from optforge.lowrank.projectors import (
    BASES,
    PROJ_TYPES,
    MatrixView,
    add_back_,
    make_basis,
    project,
    project_back,
)
from optforge.lowrank.quantization import (
    dequantize_blockwise,
    dequantize_groupwise,
    dynamic_map,
    quantize_blockwise,
    quantize_groupwise,
)
from optforge.optim.adamw import adam_inner_rule
from optforge.optim.base import CHECK_FINITE_DOC, FirstOrderOptimizer, StateSpec

__all__ = [
    "INNER_CHUNK", "INNER_RULES", "ON_SWITCH", "PROJ_DTYPES", "RESIDUALS", "ProjectedOptimizer",
]  # fmt: skip

INNER_RULES = ("adam", "adam8bit")
RESIDUALS = ("none", "sgd", "sign_sgd", "fira", "fira_orthogonal")
ON_SWITCH = ("keep", "reset", "rotate")
PROJ_DTYPES = (None, "bfloat16", "float16")
#: Fira's limiter: the residual's norm may grow by at most this factor per step (official).
FIRA_GAMMA = 1.01
#: bitsandbytes' block size for 8-bit optimizer states.
BLOCK = 256
#: elements of inner updates waiting for one ``apply_rule_`` call (a pass over the group closes
#: there). Each waiting parameter holds its projected gradient X and update u (r×n each, as a
#: moment; full-size for an unprojected one), so a whole model's worth at once would add two
#: moments' worth of memory to the peak (7.5 GB for GaLore on LLaMA-7B at r = 1024: 939M
#: elements). 2**24 fp32 elements bound that to about 128 MiB, while each call (one Triton
#: launch) still moves 24 bytes per element, ~400 MB: ~85 µs at an H200's 4.8 TB/s against a
#: launch's few µs (estimated, not measured: no GPU in this session).
INNER_CHUNK = 1 << 24

_COUNTER = StateSpec(torch.int64, (), "cpu")
_FP32_SCALAR = StateSpec(torch.float32, ())


def _blocks(numel: int, size: int) -> int:
    return -(-numel // size)


@dataclass(eq=False)
class _Pending:
    """One parameter between the passes of a step (shapes: m×n matrix view, r×n projected)."""

    param: Tensor
    view: MatrixView | None
    k: int  # the parameter's step count before this step
    g: Tensor | None  # m×n gradient in the compute dtype (maximize: negated), for residuals
    low: Tensor | None  # R = proj(G)
    basis: dict[str, Tensor] | None
    x: Tensor  # the inner rule's input: R, its natural gradient, or the unprojected gradient
    c: float  # the bias correction folded into the step
    m: Tensor  # the moments as the inner rule reads and writes them (8-bit: dequantized)
    v: Tensor
    u: Tensor | None = None  # the inner update, written by the rule


class ProjectedOptimizer(FirstOrderOptimizer):
    __doc__ = f"""Projector + inner Adam + residual rule + switch policy (see the module docstring).

    The public methods (``GaLoreAdamW``, ``FiraAdamW``, ``FRUGAL``, ...) are this class with
    other defaults; every keyword below is also a param-group key.

    Args:
        params: parameters or param groups.
        lr, betas, eps, weight_decay, correct_bias: the inner AdamW's (HF style: ε added to
            √V, bias correction folded into the step size, decoupled decay).
        rank: r (clamped to min(r, m, n)); ``None`` with ``density=None``: no projection.
        density: FRUGAL's ρ: r = max(1, round(ρ·d)) for the reduced dimension d (instead of
            ``rank``).
        update_proj_gap: T, steps between basis refreshes.
        scale: α, multiplies the back-projected update.
        proj_type: ``"reverse_std"`` (default: moments on min(m, n), the least memory),
            ``"std"`` (GaLore's official side), ``"left"``, ``"right"``, ``"full"``.
        projector: ``"svd"``, ``"randomized_svd"``, ``"random"``, ``"columns"``.
        inner: ``"adam"`` or ``"adam8bit"`` (blockwise 8-bit moments for moment tensors of at
            least ``min_8bit_size`` elements, as bitsandbytes).
        residual, residual_scale: see the module docstring.
        on_switch: ``"keep"``, ``"reset"`` or ``"rotate"``.
        decay_before_update: decoupled decay before the step (FRUGAL, bitsandbytes) instead of
            after (GaLore, HF AdamW).
        natural_history, natural_damping: Natural GaLore's history length s (0: off) and δ.
        proj_bits, proj_group_size: quantize the basis to b bits per group (Q-GaLore: 4, 256).
        proj_dtype: ``None`` (default: the basis in fp32, fp64 for fp64 parameters) or
            ``"bfloat16"``/``"float16"``: store the basis in 2 bytes (opt-in, fewer state bytes;
            galore-torch stores it in the gradient's dtype). Projections still compute in the
            moments' dtype from the rounded basis.
        weight_bits, weight_group_size: stochastic rounding of projected weights to b bits.
        adaptive_gap, cos_threshold, gap_growth, queue_size: Q-GaLore's adaptive gap: at each
            refresh, |cos| between the new and previous first basis vectors enters a FIFO of
            ``queue_size``; when it is full and its mean ≥ ``cos_threshold``, T ← int(T·growth).
        seed: keys the random bases and stochastic rounding (with step and parameter index).
        maximize: ascend instead of descend.
        foreach, fused, backend: how the inner Adam runs over the group's projected states, as
            for ``optforge.optim.AdamW``: ``backend="auto"`` (default) takes the Triton kernel
            registered for ``adam_inner_rule`` on CUDA, the eager multi-tensor path (bit-equal
            to ``"loop"``) on the CPU; ``foreach=True`` is ``"foreach"``, ``fused=True``
            ``"compiled"``. Projections, residuals and the weight update are matrix products
            and run eagerly on every backend.
        {CHECK_FINITE_DOC}
    """

    rules = (adam_inner_rule,)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
        *,
        correct_bias: bool = True,
        rank: int | None = 128,
        density: float | None = None,
        update_proj_gap: int = 200,
        scale: float = 1.0,
        proj_type: str = "reverse_std",
        projector: str = "svd",
        inner: str = "adam",
        min_8bit_size: int = 4096,
        residual: str = "none",
        residual_scale: float = 1.0,
        on_switch: str = "keep",
        decay_before_update: bool = False,
        natural_history: int = 0,
        natural_damping: float = 1e-3,
        proj_bits: int | None = None,
        proj_group_size: int = 256,
        proj_dtype: str | None = None,
        weight_bits: int | None = None,
        weight_group_size: int = 256,
        adaptive_gap: bool = False,
        cos_threshold: float = 0.4,
        gap_growth: float = 2.0,
        queue_size: int = 5,
        seed: int = 0,
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        backend: str | None = None,
        check_finite: bool = True,
    ) -> None:
        defaults = dict(
            lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, correct_bias=correct_bias,
            rank=rank, density=density, update_proj_gap=update_proj_gap, scale=scale,
            proj_type=proj_type, projector=projector, inner=inner, min_8bit_size=min_8bit_size,
            residual=residual, residual_scale=residual_scale, on_switch=on_switch,
            decay_before_update=decay_before_update, natural_history=natural_history,
            natural_damping=natural_damping, proj_bits=proj_bits,
            proj_group_size=proj_group_size, proj_dtype=proj_dtype, weight_bits=weight_bits,
            weight_group_size=weight_group_size, adaptive_gap=adaptive_gap,
            cos_threshold=cos_threshold, gap_growth=gap_growth, queue_size=queue_size,
            seed=seed, maximize=maximize, foreach=foreach, fused=fused, backend=backend,
        )  # fmt: skip
        super().__init__(params, defaults, check_finite=check_finite)

    # -- checks ---------------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        params = param_group["params"]
        params = [params] if isinstance(params, Tensor) else list(params)
        for p in params:
            if isinstance(p, Tensor) and p.is_complex():
                raise TypeError(
                    f"{type(self).__name__} does not support complex parameters (a projected "
                    "gradient's SVD and Adam's moments are real); optimize torch.view_as_real "
                    "of the parameter instead"
                )
        super().add_param_group({**param_group, "params": params})

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_betas(group["betas"])
        check_non_negative("eps", group["eps"])
        check_non_negative("weight_decay", group["weight_decay"])
        for flag in ("correct_bias", "decay_before_update", "adaptive_gap"):
            if not isinstance(group[flag], bool):
                raise TypeError(f"{flag} must be True or False (got {group[flag]!r})")
        if group["rank"] is not None:
            check_int("rank", group["rank"], 1)
        if group["density"] is not None:
            check_in_range("density", group["density"], 0.0, 1.0, high_inclusive=True)
            if group["density"] == 0.0:
                raise ValueError("density must be > 0 (got 0.0); use rank=None for no projection")
        check_int("update_proj_gap", group["update_proj_gap"], 1)
        check_non_negative("scale", group["scale"])
        for key, allowed in (
            ("proj_type", PROJ_TYPES),
            ("projector", BASES),
            ("inner", INNER_RULES),
            ("residual", RESIDUALS),
            ("on_switch", ON_SWITCH),
            ("proj_dtype", PROJ_DTYPES),
        ):
            if group[key] not in allowed:
                raise ValueError(f"{key} must be one of {allowed} (got {group[key]!r})")
        if group["residual"].startswith("fira") and group["proj_type"] == "full":
            raise ValueError(
                "residual='fira' scales rows or columns of a one-sided projection; "
                "proj_type='full' has none (use std, reverse_std, left or right)"
            )
        check_int("min_8bit_size", group["min_8bit_size"], 1)
        check_non_negative("residual_scale", group["residual_scale"])
        check_int("natural_history", group["natural_history"], 0)
        check_positive("natural_damping", group["natural_damping"])
        for key in ("proj_bits", "weight_bits"):
            if group[key] is not None:
                check_int(key, group[key], 2)
                if group[key] > 8:
                    raise ValueError(f"{key} must be in [2, 8] or None (got {group[key]})")
        check_int("proj_group_size", group["proj_group_size"], 1)
        if group["proj_dtype"] is not None and group["proj_bits"] is not None:
            raise ValueError("proj_dtype and proj_bits both set: choose one basis storage")
        check_int("weight_group_size", group["weight_group_size"], 1)
        check_in_range("cos_threshold", group["cos_threshold"], -1.0, 1.0, high_inclusive=True)
        check_in_range("gap_growth", group["gap_growth"], 1.0, math.inf)
        check_int("queue_size", group["queue_size"], 1)
        check_int("seed", group["seed"], 0)

    # -- declared state -------------------------------------------------------------------------
    def matrix_view(self, param: Tensor, group: Mapping[str, Any]) -> MatrixView | None:
        """How ``param`` is projected in ``group`` (None: not projected)."""
        if param.dim() < 2 or (group["rank"] is None and group["density"] is None):
            return None
        rank = group["rank"] if group["rank"] is not None else 1
        view = MatrixView.of(tuple(param.shape), rank, group["proj_type"])
        if group["density"] is not None:
            r = max(1, round(group["density"] * view.reduced_dim()))
            view = MatrixView.of(tuple(param.shape), r, group["proj_type"])
        return view

    def state_schema(self, param: Tensor, group: Mapping[str, Any]) -> dict[str, StateSpec]:
        view = self.matrix_view(param, group)
        schema = {"step": _COUNTER, "inner.step": _COUNTER}
        low = tuple(param.shape) if view is None else view.low_shape()
        numel = math.prod(low)
        for key in ("inner.exp_avg", "inner.exp_avg_sq"):
            if group["inner"] == "adam8bit" and numel >= group["min_8bit_size"]:
                schema[key] = StateSpec(torch.uint8, (numel,))
                schema[f"{key}.absmax"] = StateSpec(torch.float32, (_blocks(numel, BLOCK),))
            else:
                schema[key] = StateSpec("at_least_fp32", low if view else None)
        if view is None:
            return schema
        for name, shape in view.basis_shapes().items():
            if group["proj_bits"] is None:
                dtype = group["proj_dtype"]
                dtype = "at_least_fp32" if dtype is None else getattr(torch, dtype)
                schema[f"proj.{name}"] = StateSpec(dtype, shape)
            else:
                size, groups = math.prod(shape), _blocks(math.prod(shape), group["proj_group_size"])
                schema[f"proj.{name}"] = StateSpec(torch.uint8, (size,))
                schema[f"proj.{name}.scale"] = StateSpec(torch.float32, (groups,))
                schema[f"proj.{name}.zero"] = StateSpec(torch.float32, (groups,))
        if group["residual"].startswith("fira"):
            schema["residual.norm"] = _FP32_SCALAR
        if group["natural_history"]:
            hist = (group["natural_history"], numel)
            schema["natural.history"] = StateSpec("at_least_fp32", hist)
            schema["natural.count"] = _COUNTER
        if group["adaptive_gap"]:
            schema["switch.gap"] = _COUNTER
            schema["switch.fifo"] = StateSpec(torch.float32, (group["queue_size"],))
            schema["switch.fifo_count"] = _COUNTER
            schema["switch.top"] = StateSpec(torch.float32, (view.reduced_dim(),))
        return schema

    def _init_state(self, param: Tensor, state: dict[str, Any], group: dict[str, Any]) -> None:
        super()._init_state(param, state, group)
        if "switch.gap" in state:
            state["switch.gap"].fill_(group["update_proj_gap"])

    # -- the step ------------------------------------------------------------------------------
    def _update_group(
        self, group: dict[str, Any], params: list[Tensor], grads: list[Tensor]
    ) -> None:
        pending: list[_Pending] = []
        held = 0
        backend = self._backend(group)
        for p, grad in zip(params, grads):
            item = self._project(p, grad, group)
            pending.append(item)
            held += item.x.numel() + (item.g.numel() if item.g is not None else 0)
            # The eager paths gain nothing from many tensors per call: there each parameter
            # is finished at once and its temporaries freed, as before the passes existed
            # (measured: +45 MiB of peak RSS when batched, on the 38M-parameter stack of
            # benchmarks/lowrank_memory.py). So gains nothing the CPU C loop ("native"), whose
            # call costs microseconds. A GPU kernel or compiled graphs take the whole chunk.
            chosen = resolve_backend(backend, adam_inner_rule, item.x.device, item.x.dtype)
            if held >= (0 if chosen in ("loop", "foreach", "native") else INNER_CHUNK):
                self._finish(pending, group)
                pending, held = [], 0
        if pending:
            self._finish(pending, group)

    def _finish(self, pending: list[_Pending], group: dict[str, Any]) -> None:
        self._run_inner(pending, group)
        for item in pending:
            self._step_param(item, group)

    def _project(self, p: Tensor, grad: Tensor, group: dict[str, Any]) -> _Pending:
        """First pass, per parameter: the step counted, the basis refreshed when due, the
        gradient projected (and made natural), the inner rule's inputs gathered."""
        st = self.state[p]
        view = self.matrix_view(p, group)
        compute = torch.promote_types(p.dtype, torch.float32)  # fp32 for 16-bit, fp64 kept
        g = grad.to(compute)
        if group["maximize"]:
            g = -g
        k = int(st["step"])
        st["step"] += 1
        low, basis = None, None
        if view is None:
            x = g
        else:
            g = g.reshape(view.m, view.n)
            gap = int(st["switch.gap"]) if group["adaptive_gap"] else group["update_proj_gap"]
            if k % gap == 0:
                self._refresh(p, st, g, view, group, k)
            basis = self._basis(st, view, group, compute)
            low = project(g, basis, view.side)
            x = self._natural(st, low, group) if group["natural_history"] else low
        st["inner.step"] += 1  # after the refresh: the "reset" policy restarts the count
        t = int(st["inner.step"])
        beta1, beta2 = group["betas"]
        c = math.sqrt(1 - beta2**t) / (1 - beta1**t) if group["correct_bias"] else 1.0
        m, v = self._moments(st, x.shape)
        # the full gradient waits only for a residual rule (unprojected: it is x)
        keep = view is not None and group["residual"] != "none"
        return _Pending(p, view, k, g if keep else None, low, basis, x, c, m, v)

    def _run_inner(self, pending: list[_Pending], group: dict[str, Any]) -> None:
        """Second pass: the inner Adam on every waiting parameter's ``x`` and moments, one
        ``apply_rule_`` call per bias correction (parameters whose inner step counts differ,
        after a FRUGAL reset or a late start, get one call each)."""
        beta1, beta2 = group["betas"]
        by_c: dict[float, list[_Pending]] = {}
        for item in pending:
            item.u = torch.empty(item.x.shape, dtype=item.x.dtype, device=item.x.device)
            by_c.setdefault(item.c, []).append(item)
        for c, items in by_c.items():
            lists = tuple([getattr(i, name) for i in items] for name in ("u", "m", "v", "x"))
            hyper = dict(beta1=beta1, beta2=beta2, eps=group["eps"],
                         bias_correction1=1.0 / c, bias_correction2=1.0)  # fmt: skip
            apply_rule_(adam_inner_rule, lists, hyper, backend=self._backend(group))
        for item in pending:
            self._store_moments(self.state[item.param], item.m, item.v)

    def _step_param(self, item: _Pending, group: dict[str, Any]) -> None:
        """Third pass, per parameter: the residual rule and the weight update."""
        p, view, k = item.param, item.view, item.k
        compute = torch.promote_types(p.dtype, torch.float32)
        lr, wd = group["lr"], group["weight_decay"]
        if view is None:
            u, basis, extra = None, None, item.u
        else:
            u, basis, extra = self._residual(item, group)
        owner = int8_owner(p)  # an Int8Linear's handle: the weight is its codes
        quantized = view is not None and group["weight_bits"] is not None
        if p.dtype == compute and not quantized and owner is None:
            # In place, the back-projection accumulated into W by one GEMM: no full-size
            # temporary (one allocation, write and read fewer per matrix and step). A
            # non-contiguous W (channels_last) goes through a contiguous copy, so the
            # arithmetic, and the result, is the same for every memory layout.
            w = p if p.is_contiguous() else p.contiguous()
            if group["decay_before_update"] and wd:
                w.mul_(1 - lr * wd)
            if u is not None:
                add_back_(w.view(view.m, view.n), u, basis, view.side, -lr * group["scale"])
            if extra is not None:
                w.add_(extra.view(w.shape), alpha=-lr)
            if not group["decay_before_update"] and wd:
                w.add_(w, alpha=-lr * wd)
            if w is not p:
                p.copy_(w)
            return
        update = extra if u is None else project_back(u * group["scale"], basis, view.side)
        if u is not None and extra is not None:
            update = update + extra
        update = update.reshape(p.shape)
        w = p.to(compute) if owner is None else owner.dequantized(compute)
        if group["decay_before_update"]:
            w = w * (1 - lr * wd) - update * lr
        else:
            w = w - update * lr
            if wd:
                w = w - w * (lr * wd)
        if owner is not None:  # INT8 storage: new codes by stochastic rounding (Q-GaLore)
            owner.set_weight(w, generator_for(p.device, group["seed"], k, self.param_index(p), 1))
            return
        if quantized:
            gen = generator_for(p.device, group["seed"], k, self.param_index(p), 1)
            codes, s, z = quantize_groupwise(
                w, group["weight_bits"], group["weight_group_size"], generator=gen
            )
            w = dequantize_groupwise(codes, s, z, w.shape, group["weight_group_size"])
        p.copy_(w)

    def _residual(
        self, item: _Pending, group: dict[str, Any]
    ) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
        """``(u, basis, extra)``: the update is ``α·back(u) + extra`` (extra: the residual
        rule's full-size part, None for ``"none"``)."""
        u, c, low, basis, g, view = item.u, item.c, item.low, item.basis, item.g, item.view
        assert view is not None and low is not None and basis is not None
        alpha = group["scale"]
        rule = group["residual"]
        if rule == "none":
            return u, basis, None
        assert g is not None
        if rule in ("sgd", "sign_sgd"):
            free = g - project_back(low, basis, view.side)
            free = torch.sign(free) if rule == "sign_sgd" else free
            return u, basis, free * (alpha * group["residual_scale"])
        # Fira: φ along the full-size dimension of the one-sided projection.
        back_low = project_back(low, basis, view.side)
        resid = g - back_low * alpha if rule == "fira" else g - back_low
        n_dir = u / c
        dim = 0 if view.side == "left" else 1
        phi = n_dir.norm(dim=dim, keepdim=True) / (low.norm(dim=dim, keepdim=True) + 1e-8)
        s = resid * phi
        s_norm = s.norm()
        st = self.state[item.param]
        prev = st["residual.norm"]
        if prev > 0:
            ratio = s_norm / (prev + 1e-8)
            s = s * (FIRA_GAMMA / torch.clamp(ratio, min=FIRA_GAMMA))
            s_norm = s.norm()
        st["residual.norm"].copy_(s_norm)
        return u, basis, s * c

    # -- pieces ---------------------------------------------------------------------------------
    def _moments(self, st: dict[str, Any], shape: torch.Size) -> tuple[Tensor, Tensor]:
        out = []
        for key, signed in (("inner.exp_avg", True), ("inner.exp_avg_sq", False)):
            t = st[key]
            if t.dtype == torch.uint8:
                code = dynamic_map(signed, t.device)
                out.append(dequantize_blockwise(t, st[f"{key}.absmax"], code, shape, BLOCK))
            else:
                out.append(t.reshape(shape))
        return out[0], out[1]

    def _store_moments(self, st: dict[str, Any], m: Tensor, v: Tensor) -> None:
        for key, value, signed in (
            ("inner.exp_avg", m, True),
            ("inner.exp_avg_sq", v, False),
        ):
            t = st[key]
            if t.dtype == torch.uint8:
                codes, absmax = quantize_blockwise(value, dynamic_map(signed, t.device), BLOCK)
                t.copy_(codes)
                st[f"{key}.absmax"].copy_(absmax)
            elif value.data_ptr() != t.data_ptr():  # not written in place by the rule
                t.copy_(value.reshape(t.shape))

    def _basis(
        self, st: dict[str, Any], view: MatrixView, group: dict[str, Any], compute: torch.dtype
    ) -> dict:
        # The basis meets the moments' dtype; 8-bit moments are dequantized to the gradient's
        # compute dtype (fp32, or fp64 for fp64 parameters).
        moment = st["inner.exp_avg"]
        dtype = compute if moment.dtype == torch.uint8 else moment.dtype
        basis = {}
        for name, shape in view.basis_shapes().items():
            t = st[f"proj.{name}"]
            if t.dtype == torch.uint8:
                t = dequantize_groupwise(
                    t, st[f"proj.{name}.scale"], st[f"proj.{name}.zero"], shape,
                    group["proj_group_size"],
                )  # fmt: skip
            basis[name] = t
        return {k: v.to(dtype) for k, v in basis.items()}

    def _refresh(
        self, p: Tensor, st: dict[str, Any], g: Tensor, view: MatrixView,
        group: dict[str, Any], k: int,
    ) -> None:
        index = self.param_index(p)

        def gen() -> torch.Generator:
            return generator_for(g.device, group["seed"], k, index)

        old = self._basis(st, view, group, g.dtype) if k > 0 else None
        try:
            new = make_basis(group["projector"], g, view, gen)
            ok = all(bool(torch.isfinite(b).all()) for b in new.values())
        except RuntimeError:  # torch.linalg.LinAlgError: the SVD did not converge
            ok = False
        if not ok:
            if old is not None:
                return
            new = make_basis("random", torch.zeros_like(g), view, gen)
        if group["adaptive_gap"]:
            self._adapt_gap(st, new, view, group, first=old is None)
        if old is not None:
            self._switch(st, old, new, view, group)
        for name, value in new.items():
            if group["proj_bits"] is None:
                st[f"proj.{name}"].copy_(value)
            else:
                bits, size = group["proj_bits"], group["proj_group_size"]
                codes, s, z = quantize_groupwise(value, bits, size)
                st[f"proj.{name}"].copy_(codes)
                st[f"proj.{name}.scale"].copy_(s)
                st[f"proj.{name}.zero"].copy_(z)

    def _adapt_gap(
        self, st: dict[str, Any], new: dict[str, Tensor], view: MatrixView,
        group: dict[str, Any], *, first: bool,
    ) -> None:
        top = new["P"][:, 0] if view.side != "right" else new["P"][0]
        if not first:
            prev = st["switch.top"]
            # A singular vector's sign is arbitrary: |cos| measures the subspace's drift.
            cos = (top @ prev).abs() / (top.norm() * prev.norm() + 1e-12)
            count, fifo = int(st["switch.fifo_count"]), st["switch.fifo"]
            size = fifo.numel()
            if count < size:
                fifo[count] = cos
            else:  # official: a FIFO that is never cleared
                fifo.copy_(torch.cat([fifo[1:], cos.reshape(1)]))
            st["switch.fifo_count"].fill_(min(count + 1, size))
            if count + 1 >= size and float(fifo.mean()) >= group["cos_threshold"]:
                st["switch.gap"].fill_(int(int(st["switch.gap"]) * group["gap_growth"]))
        st["switch.top"].copy_(top)

    def _switch(
        self, st: dict[str, Any], old: dict[str, Tensor], new: dict[str, Tensor],
        view: MatrixView, group: dict[str, Any],
    ) -> None:
        policy = group["on_switch"]
        if policy == "keep":
            return
        low = view.low_shape()
        if policy == "reset":
            m = v = torch.zeros(low, device=new["P"].device)
            st["inner.step"].zero_()
        else:
            m, v = self._moments(st, torch.Size(low))
            if view.side in ("left", "full"):
                rot = new["P"].t() @ old["P"]  # r×r
                m, v = rot @ m, (rot * rot) @ v
            if view.side in ("right", "full"):
                name = "P" if view.side == "right" else "Q"
                rot = new[name] @ old[name].t()
                m, v = m @ rot.t(), v @ (rot * rot).t()
        self._store_moments(st, m, v)

    def _natural(self, st: dict[str, Any], low: Tensor, group: dict[str, Any]) -> Tensor:
        """Natural GaLore: ``(δI + H Hᵀ)⁻¹ c`` by Woodbury over the last s projected gradients
        (the current one included)."""
        c = low.reshape(-1)
        hist, count = st["natural.history"], int(st["natural.count"])
        s = hist.shape[0]
        if count < s:
            hist[count] = c
            count += 1
            st["natural.count"].fill_(count)
        else:
            hist.copy_(torch.cat([hist[1:], c.reshape(1, -1)]))
        h = hist[:count].t()  # q×s'
        delta = group["natural_damping"]
        gram = torch.eye(count, device=c.device, dtype=c.dtype) + (h.t() @ h) / delta
        z = torch.linalg.solve(gram, h.t() @ c)
        return (c / delta - (h @ z) / delta**2).reshape(low.shape)
