"""AGVM: Adaptive Gradient Variance Modulator (Xie et al., 2022, "Large-batch Optimization for
Dense Visual Predictions", NeurIPS 2022; official code Sense-X/AGVM).

Notation: module group i (one param group of the inner optimizer: backbone, neck, head, ...),
reference group 0 (``reference``), gA_i and gB_i the concatenated gradients of group i computed on
two halves A and B of the batch, μ_i the lr multiplier of group i, ``it`` the number of completed
steps.

    AGVM step  ⇔  start_iter ≤ it ≤ stop_iter  and  it mod update_interval == 0
    D_i  = 1 − cos(gA_i, gB_i)                                gradient-variance proxy
    μ̃_i  = √clamp((D_0 + 1e-6) / (D_i + 1e-6), 0.5, 10)
    μ_i  ← m·μ_i + (1 − m)·μ̃_i                                μ_i = 1 initially
    g    = (gA + gB) / 2                                      the gradient that is stepped
    while start_iter ≤ it ≤ stop_iter:  lr_i ← lr_i·μ_i for the inner step, then restored

Defaults are the official hook's (``agvm/optim/agvm_optimizer_hook.py``): interval 5, start 500,
never stop, EMA momentum 0.97; the clamp [0.5, 10] and the stabilizer 1e-6 are hard-coded there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer

from optforge._validation import check_count, check_in_range, check_int, check_positive
from optforge.optim.wrapper import OptimizerWrapper

__all__ = ["AGVM", "agvm_target_scale", "cosine_distance"]

#: Stabilizer and clamp range of the official hook (hard-coded there, not hyperparameters).
_STABILIZER = 1e-6
_CLAMP = (0.5, 10.0)


def cosine_distance(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """``D = 1 − cos(a, b)`` of two flat vectors, as a float64 0-d tensor.

    ``cos = a·b / max(‖a‖·‖b‖, eps)``, so ``cos = 0`` (``D = 1``) when either vector is zero or
    empty. D is 0 for identical directions, 1 for orthogonal ones and 2 for opposite ones; it is
    NaN when either vector holds a NaN or an inf.
    """
    if a.numel() == 0 or b.numel() == 0:
        return torch.ones((), dtype=torch.float64, device=a.device)
    dot = torch.dot(a, b).double()
    norms = torch.linalg.vector_norm(a).double() * torch.linalg.vector_norm(b).double()
    return 1.0 - dot / norms.clamp_min(eps)


def agvm_target_scale(d_reference: Tensor, d: Tensor) -> Tensor:
    """``μ̃ = √clamp((D_0 + 1e-6) / (D + 1e-6), 0.5, 10)`` (elementwise, float64)."""
    ratio = (d_reference.double() + _STABILIZER) / (d.double() + _STABILIZER)
    return ratio.clamp(*_CLAMP).sqrt()


class AGVM(OptimizerWrapper):
    """Rescales each param group's lr by AGVM's gradient-variance ratio, then steps ``optimizer``.

    Each param group of ``optimizer`` is one module group (backbone, neck, head, ...); group
    ``reference`` (the backbone in the paper) sets the scale the others are compared with. On
    AGVM steps the gradient of each half of the batch is needed:

    * **single process** (``torch.distributed`` not initialized, or ``process_group=False``):
      compute each half's backward inside ``with opt.half(h):`` (h = 0, 1); ``step()`` steps
      the average of the two halves. On other steps halves are optional: a plain backward is
      stepped as it is. ``opt.is_agvm_step`` says whether the next step needs them.
    * **distributed** (W ranks, W even): every rank runs a plain local backward, *without* DDP's
      all-reduce (no DDP, or its ``no_sync()``); ``step()`` averages the gradients itself. Ranks
      ``0..W/2−1`` of the group are half A, the others half B; an AGVM step costs one all-reduce
      of a ``(2, N)`` buffer (N = number of gradient elements), any other step one of N.

    Args:
        optimizer: any ``torch.optim.Optimizer``; its param groups are the module groups.
        reference: index of the reference group, or the value of its ``"name"`` key.
        update_interval: measure the variance every this many steps (official: 5).
        start_iter: first step (0-based count of completed steps) with AGVM (official: 500,
            after a 500-step warmup).
        stop_iter: last step with AGVM, inclusive; ``None`` never stops (official: -1).
        momentum: EMA coefficient m of μ (official: 0.97).
        use_adam: measure the similarity of Adam-normalized gradients ``g / (√(β2·v +
            (1−β2)·g²) + eps)`` with v the inner optimizer's ``exp_avg_sq`` (official: False).
        eps: clamp of ‖gA‖·‖gB‖ in the cosine and the ``use_adam`` denominator's ε (1e-8, as
            ``torch.cosine_similarity`` and Adam).
        process_group: ``None``: the default group when ``torch.distributed`` is initialized,
            else single-process; ``False``: single-process; or a ``ProcessGroup``.

    Non-finite gradients: a group whose D is NaN keeps its μ for that step (all groups do when
    the reference's D is NaN); the NaN gradient is still passed to the inner optimizer.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 1))
        >>> sgd = torch.optim.SGD([{"params": model[0].parameters(), "name": "backbone"},
        ...                        {"params": model[1].parameters(), "name": "head"}], lr=0.1)
        >>> opt = AGVM(sgd, reference="backbone", start_iter=0)
        >>> x, y = torch.randn(8, 4), torch.randn(8, 1)
        >>> opt.zero_grad()
        >>> for h, idx in enumerate((slice(0, 4), slice(4, 8))):
        ...     with opt.half(h):
        ...         torch.nn.functional.mse_loss(model(x[idx]), y[idx]).backward()
        >>> opt.step()
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        reference: int | str = 0,
        update_interval: int = 5,
        start_iter: int = 500,
        stop_iter: int | None = None,
        momentum: float = 0.97,
        use_adam: bool = False,
        eps: float = 1e-8,
        process_group: Any = None,
    ) -> None:
        self.update_interval = check_int("update_interval", update_interval, 1)
        self.start_iter = check_int("start_iter", start_iter, 0)
        if stop_iter is not None:
            check_int("stop_iter", stop_iter, 0)
            if stop_iter < start_iter:
                raise ValueError(
                    f"stop_iter must be >= start_iter ({start_iter}) or None (got {stop_iter})"
                )
        self.stop_iter = stop_iter
        self.momentum = check_in_range("momentum", momentum, 0.0, 1.0)
        self.eps = check_positive("eps", eps)
        if not isinstance(use_adam, bool):
            raise TypeError(f"use_adam must be a bool (got {type(use_adam).__name__})")
        self.use_adam = use_adam
        if process_group is True:
            raise TypeError("process_group must be None, False or a ProcessGroup (got True)")
        self.process_group = process_group
        super().__init__(optimizer)
        self.reference = self._resolve_reference(reference)
        if use_adam:
            for i, group in enumerate(self.param_groups):
                if "betas" not in group:
                    raise ValueError(
                        f"use_adam=True needs Adam-like param groups with 'betas'; group {i} "
                        f"of {type(optimizer).__name__} has none"
                    )
        self.it = 0
        self.mu = torch.ones(len(self.param_groups), dtype=torch.float64)
        #: D of every group at the last AGVM step (float64), for logging; None before the first.
        self.last_distance: Tensor | None = None
        self._halves: list[dict[Tensor, Tensor] | None] = [None, None]
        self._open_half: int | None = None
        if self._distributed():
            self._halves_of_world()  # fail early on an odd world size

    # -- configuration ------------------------------------------------------------------------
    def _resolve_reference(self, reference: int | str) -> int:
        n = len(self.param_groups)
        if isinstance(reference, str):
            matches = [i for i, g in enumerate(self.param_groups) if g.get("name") == reference]
            if len(matches) != 1:
                names = [g.get("name") for g in self.param_groups]
                what = "no" if not matches else f"{len(matches)}"
                raise ValueError(
                    f"reference={reference!r}: {what} param groups have that 'name' "
                    f"(group names: {names})"
                )
            return matches[0]
        if isinstance(reference, bool) or not isinstance(reference, int):
            raise TypeError(
                f"reference must be a group index or name (got {type(reference).__name__})"
            )
        if not 0 <= reference < n:
            raise ValueError(f"reference must be in [0, {n}) (got {reference})")
        return reference

    def _group(self) -> Any:
        """The process group to reduce over, or None in single-process mode."""
        if self.process_group is False:
            return None
        if self.process_group is not None:
            return self.process_group
        if dist.is_available() and dist.is_initialized():
            return dist.group.WORLD
        return None

    def _distributed(self) -> bool:
        return self._group() is not None

    def _halves_of_world(self) -> tuple[int, int]:
        """``(world size, 0 if this rank is in half A else 1)``."""
        group = self._group()
        world = dist.get_world_size(group)
        if world < 2 or world % 2:
            raise RuntimeError(
                f"AGVM in distributed mode needs an even world size >= 2 (got {world}); "
                "pass process_group=False to run single-process with opt.half()"
            )
        return world, int(dist.get_rank(group) >= world // 2)

    # -- public state -------------------------------------------------------------------------
    def _in_window(self, it: int) -> bool:
        return self.start_iter <= it and (self.stop_iter is None or it <= self.stop_iter)

    @property
    def is_agvm_step(self) -> bool:
        """Whether the next ``step()`` measures the gradient variance (and needs both halves)."""
        return self._in_window(self.it) and self.it % self.update_interval == 0

    @contextlib.contextmanager
    def half(self, h: int) -> Iterator[None]:
        """Single-process mode: gradients accumulated inside the block belong to half ``h``.

        On exit the gradients (including any present on entry, as with ordinary accumulation)
        are set aside (the tensors themselves, no copy) and ``.grad`` is reset to None, so the
        other half starts clean. Entering
        the same half again accumulates into it. ``zero_grad()`` discards recorded halves.
        """
        if h not in (0, 1):
            raise ValueError(f"h must be 0 or 1 (got {h!r})")
        if self._distributed():
            raise RuntimeError(
                "opt.half() is for single-process mode; in distributed mode each rank runs a "
                "plain backward and ranks 0..W/2-1 form half A"
            )
        if self._open_half is not None:
            raise RuntimeError(f"half({h}) entered inside half({self._open_half})")
        self._open_half = h
        try:
            yield
        finally:
            self._open_half = None
        grads = [p for p in self._params() if p.grad is not None]
        if any(p.grad.is_sparse for p in grads):
            raise RuntimeError("AGVM does not support sparse gradients")
        stash = self._halves[h]
        if stash is None:
            stash = self._halves[h] = {}
        for p in grads:
            if p in stash:
                stash[p].add_(p.grad)
            else:
                stash[p] = p.grad
            p.grad = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self._halves = [None, None]
        super().zero_grad(set_to_none=set_to_none)

    # -- the step ---------------------------------------------------------------------------
    def _params(self) -> Iterator[Tensor]:
        for group in self.param_groups:
            yield from group["params"]

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if len(self.mu) < len(self.param_groups):  # groups added after construction start at 1
            extra = torch.ones(len(self.param_groups) - len(self.mu), dtype=torch.float64)
            self.mu = torch.cat([self.mu, extra])
        if any(p.grad is not None and p.grad.is_sparse for p in self._params()):
            raise RuntimeError("AGVM does not support sparse gradients")
        with torch.no_grad():
            if self._distributed():
                distances = self._reduce_distributed()
            else:
                distances = self._combine_halves()
        if distances is not None:
            self._update_mu(distances)
        if not self._in_window(self.it):
            self._step_inner()
        else:
            saved = [group["lr"] for group in self.param_groups]
            try:
                for group, mu in zip(self.param_groups, self.mu.tolist(), strict=True):
                    group["lr"] = group["lr"] * mu
                self._step_inner()
            finally:
                # Restore the stored objects: lr·μ/μ is not always lr in floating point.
                for group, lr in zip(self.param_groups, saved, strict=True):
                    group["lr"] = lr
        if any(p.grad is not None for p in self._params()):
            self.it += 1  # a step without any gradient is no iteration (torch's contract)
        return loss

    def _update_mu(self, distances: Tensor) -> None:
        self.last_distance = distances
        target = agvm_target_scale(distances[self.reference], distances)
        ema = self.mu * self.momentum + target * (1 - self.momentum)
        self.mu = torch.where(torch.isfinite(ema), ema, self.mu)

    def _measure(
        self, members: list[list[Tensor]], grads_a: list[Tensor], grads_b: list[Tensor]
    ) -> Tensor:
        """D of every group (float64, CPU) from per-group flat gradients of the two halves."""
        distances = []
        for group, params, a, b in zip(self.param_groups, members, grads_a, grads_b, strict=True):
            if self.use_adam:
                a = self._adam_normalize(group, params, a)
                b = self._adam_normalize(group, params, b)
            # A group without gradients has nothing to compare: NaN keeps its μ (and, for the
            # reference, every group's μ) unchanged.
            distances.append(
                cosine_distance(a, b, self.eps)
                if a.numel()
                else torch.full((), math.nan, dtype=torch.float64, device=a.device)
            )
        return torch.stack(distances).cpu()

    def _adam_normalize(self, group: dict[str, Any], params: list[Tensor], flat: Tensor) -> Tensor:
        """``g / (√(β2·v + (1−β2)·g²) + eps)``, v the inner optimizer's ``exp_avg_sq`` or 0."""
        beta2 = group["betas"][1]
        v = [
            self.state[p]["exp_avg_sq"].reshape(-1).to(flat.dtype)
            if "exp_avg_sq" in self.state.get(p, {})
            else flat.new_zeros(p.numel())
            for p in params
        ]
        v = torch.cat(v) if v else flat.new_zeros(0)
        denom = (v * beta2).addcmul_(flat, flat, value=1 - beta2).sqrt_().add_(self.eps)
        return flat / denom

    def _combine_halves(self) -> Tensor | None:
        """Single-process: measure D on AGVM steps; set ``p.grad`` to the halves' average."""
        if self._open_half is not None:
            raise RuntimeError(f"step() called inside opt.half({self._open_half})")
        recorded = [h for h in (0, 1) if self._halves[h] is not None]
        if not recorded:
            if self.is_agvm_step:
                raise RuntimeError(
                    f"step {self.it} is an AGVM step: compute the gradients of both halves "
                    "inside `with opt.half(0):` and `with opt.half(1):` before step() "
                    "(opt.is_agvm_step tells when)"
                )
            return None
        if len(recorded) == 1:
            raise RuntimeError(
                f"only half {recorded[0]} was recorded; record both opt.half(0) and opt.half(1)"
            )
        if any(p.grad is not None for p in self._params()):
            raise RuntimeError(
                "gradients were computed outside opt.half() after halves were recorded; "
                "do every backward of this step inside opt.half(0) or opt.half(1)"
            )
        half_a, half_b = self._halves
        self._halves = [None, None]
        distances = None
        if self.is_agvm_step:
            members = [
                [p for p in g["params"] if p in half_a or p in half_b] for g in self.param_groups
            ]
            dtype = _reduce_dtype([*half_a.values(), *half_b.values()])
            flat = [[_flat_cat(half, ps, dtype) for ps in members] for half in (half_a, half_b)]
            distances = self._measure(members, *flat)
        for p in self._params():
            a, b = half_a.get(p), half_b.get(p)
            if a is not None and b is not None:
                p.grad = a.add_(b).mul_(0.5)
            elif a is not None or b is not None:  # the other half contributed zero
                p.grad = (a if b is None else b).mul_(0.5)
        return distances

    def _reduce_distributed(self) -> Tensor | None:
        """Distributed: average gradients over ranks in one all-reduce; D on AGVM steps."""
        group = self._group()
        world, my_half = self._halves_of_world()
        # In group order, each module group's gradients are one contiguous slice of the buffer.
        members = [[p for p in g["params"] if p.grad is not None] for g in self.param_groups]
        params = [p for ps in members for p in ps]
        dtype = _reduce_dtype([p.grad for p in params])
        device = params[0].grad.device if params else torch.device("cpu")
        sizes = [p.numel() for p in params]
        agvm = self.is_agvm_step
        # Row my_half holds this rank's gradients, the other row zeros: after the sum, row 0 is
        # the sum over half A and row 1 over half B, both halves in one collective.
        buf = torch.zeros((2 if agvm else 1, sum(sizes)), dtype=dtype, device=device)
        if params:
            row = buf[my_half if agvm else 0]
            torch.cat([p.grad.reshape(-1).to(dtype) for p in params], out=row)
        if buf.numel():  # ranks agree on which parameters have gradients, as under DDP
            dist.all_reduce(buf, group=group)
        distances = None
        if agvm:
            buf.div_(world // 2)  # per-half means gA, gB
            group_sizes = [sum(p.numel() for p in ps) for ps in members]
            distances = self._measure(
                members, list(buf[0].split(group_sizes)), list(buf[1].split(group_sizes))
            )
            full = buf[0].add_(buf[1]).mul_(0.5)
        else:
            full = buf[0].div_(world)
        for p, g in zip(params, full.split(sizes), strict=True):
            p.grad.copy_(g.view_as(p.grad))
        return distances

    # -- checkpoints --------------------------------------------------------------------------
    def _wrapper_state(self) -> dict[str, Any]:
        return {"it": torch.tensor(self.it, dtype=torch.int64), "mu": self.mu.clone()}

    def _parse_wrapper_state(self, state: dict[str, Any]) -> dict[str, Any]:
        mu = state["mu"]
        if not isinstance(mu, Tensor) or mu.dim() != 1 or len(mu) != len(self.param_groups):
            raise ValueError(
                f"'mu' must be a 1-d tensor with one entry per param group "
                f"({len(self.param_groups)}) (got {getattr(mu, 'shape', mu)!r})"
            )
        mu = mu.detach().to(device="cpu", dtype=torch.float64).clone()
        if not bool(((mu > 0) & torch.isfinite(mu)).all()):
            raise ValueError(f"'mu' must hold finite values > 0 (got {mu.tolist()})")
        return {"it": check_count("it", state["it"]), "mu": mu, "_halves": [None, None]}


def _reduce_dtype(grads: list[Tensor | None]) -> torch.dtype:
    """At least fp32: the cosine of bf16/fp16 gradients is measured (and summed) in fp32."""
    dtype = torch.float32
    for g in grads:
        if g is not None:
            dtype = torch.promote_types(dtype, g.dtype)
    return dtype


def _flat_cat(half: dict[Tensor, Tensor], params: list[Tensor], dtype: torch.dtype) -> Tensor:
    """One half's gradients of ``params`` as one flat vector (zeros where it has none)."""
    chunks = [
        half[p].reshape(-1).to(dtype)
        if p in half
        else torch.zeros(p.numel(), dtype=dtype, device=p.device)
        for p in params
    ]
    return torch.cat(chunks) if chunks else torch.zeros(0, dtype=dtype)
