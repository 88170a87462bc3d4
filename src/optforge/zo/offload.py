"""ZO2-style offload (Wang et al., 2025): MeZO with the blocks of a model streamed one at a time.

Parameters live in host memory (``offload_device``) and visit the accelerator (``device``) one
block at a time. While a block is resident both perturbed passes run through it: the batch
travels doubled, rows ``[:B]`` carry the ``θ + εz`` stream and rows ``[B:]`` the ``θ − εz``
stream, so each block crosses the bus once up and once down per step. The update of step t is
known only after the loss, so it is applied when the block is next uploaded (step t + 1, just
before its perturbation) or by ``flush()``: ZO2's delayed update.

Unlike ZO2's reference code (a hand-written ``inner_zo_forward`` per model family), the schedule
is driven by forward hooks on the blocks you name, so any model whose trainable parameters sit
in a sequence of blocks works unchanged: a decoder stack, an ``nn.Sequential``, a list of
modules. Per parameter the arithmetic is exactly ``MeZO``'s (update t−1, +εz, −2εz, +εz, with
the same keyed directions), so on one device the trajectory equals plain MeZO's bit for bit.

Assumptions, checked where possible: every trainable parameter of the optimizer belongs to
exactly one block; each block runs once per forward; tensors whose first dimension is 2B are
batch tensors (split between the streams), any other tensor argument is shared by both (e.g.
rotary tables of shape (1, ...)); code between blocks treats rows independently (eval mode).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from optforge.zo.mezo import MeZO

__all__ = ["ZO2Offload"]


def _double(x: Any) -> Any:
    if isinstance(x, Tensor):
        return torch.cat([x, x])
    if isinstance(x, (tuple, list)):
        return type(x)(_double(v) for v in x)
    if isinstance(x, dict):
        return {k: _double(v) for k, v in x.items()}
    return x


def _half(x: Any, size: int, which: int) -> Any:
    """Stream ``which`` (0: +, 1: −) of a doubled structure; other values pass unchanged."""
    if isinstance(x, Tensor):
        if x.dim() and x.shape[0] == 2 * size:
            # A copy, not a view: a view at a storage offset changes the SIMD alignment of the
            # block's reductions, and the streams would drift from plain MeZO's by an ulp.
            return (x[:size] if which == 0 else x[size:]).clone()
        return x
    if isinstance(x, (tuple, list)):
        return type(x)(_half(v, size, which) for v in x)
    if isinstance(x, dict):
        return type(x)({k: _half(v, size, which) for k, v in x.items()})
    return x


def _join(a: Any, b: Any, size: int) -> Any:
    if isinstance(a, Tensor):
        if a.dim() and a.shape[0] == size:
            return torch.cat([a, b])
        return a
    if isinstance(a, (tuple, list)):
        return type(a)(_join(x, y, size) for x, y in zip(a, b))
    if isinstance(a, dict):
        out = type(a)(a)
        for k in a:
            out[k] = _join(a[k], b[k], size)
        return out
    return a


class ZO2Offload:
    """Run ``MeZO`` steps with blocks streamed between ``offload_device`` and ``device``.

    Args:
        optimizer: a ``MeZO`` (any ``update`` but ``"conservative"``; one direction, central
            differences, Gaussian or Rademacher directions).
        blocks: the modules that hold every trainable parameter, in any order.
        device: where a block computes (default: where its parameters are).
        offload_device: where blocks rest between visits (default ``"cpu"``).

    Example:
        >>> model = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(4)])
        >>> opt = MeZO(model.parameters(), lr=1e-3)
        >>> engine = ZO2Offload(opt, list(model))
        >>> x, y = torch.randn(4, 8), torch.randn(4, 8)
        >>> loss = engine.step(model, x, lambda out: torch.nn.functional.mse_loss(out, y))
        >>> engine.flush()  # apply the pending update before evaluating or saving

    Reference: Wang et al., "ZO2: Scalable Zeroth-Order Fine-Tuning for Extremely Large
    Language Models with Limited GPU Memory", COLM 2025.
    """

    def __init__(
        self,
        optimizer: MeZO,
        blocks: Sequence[nn.Module],
        *,
        device: torch.device | str | None = None,
        offload_device: torch.device | str = "cpu",
    ) -> None:
        if not isinstance(optimizer, MeZO):
            raise TypeError(f"optimizer must be a MeZO (got {type(optimizer).__name__})")
        group = optimizer.param_groups[0]
        if group["n_directions"] != 1 or group["formula"] != "central":
            raise ValueError("ZO2Offload runs one central-difference direction per step "
                             f"(got n_directions={group['n_directions']}, "
                             f"formula={group['formula']!r})")
        if group["dist"] == "sphere" or group["update"] == "conservative":
            raise ValueError("ZO2Offload does not support dist='sphere' (a norm over every "
                             "block) or update='conservative' (extra passes over the model)")
        self.optimizer = optimizer
        self.blocks = list(blocks)
        self.device = None if device is None else torch.device(device)
        self.offload_device = torch.device(offload_device)
        owner: dict[Tensor, int] = {}
        for b, block in enumerate(self.blocks):
            for p in block.parameters():
                if p in owner:
                    raise ValueError(f"a parameter belongs to blocks {owner[p]} and {b}; blocks "
                                     "must not overlap")
                owner[p] = b
        entries = optimizer._entries()
        missing = [i for p, _, i in entries if p not in owner]
        if missing:
            raise ValueError(f"parameters {missing} of the optimizer are in no block; pass every "
                             "module that holds trainable parameters (embeddings, head too)")
        self._entries = {b: [e for e in entries if owner[e[0]] == b]
                         for b in range(len(self.blocks))}
        self._pending: tuple[int, list[float], list[float]] | None = None
        self._applied: dict[int, int] = {}
        self._dual: tuple[int, int] | None = None  # (batch size B, step) while stepping
        self._ran: set[int] = set()
        self._handles = []
        for b, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_pre_hook(
                self._pre_hook(b), with_kwargs=True))
            self._handles.append(block.register_forward_hook(self._post_hook(b),
                                                             with_kwargs=True))
        for b in range(len(self.blocks)):
            self._offload(b)

    # -- residency ------------------------------------------------------------------------------
    def _move(self, b: int, device: torch.device) -> None:
        state = self.optimizer.state
        for p, _, _ in self._entries[b]:
            if p.device != device:
                p.data = p.data.to(device, non_blocking=True)
            for key, value in state[p].items():
                if key != "step" and isinstance(value, Tensor) and value.device != device:
                    state[p][key] = value.to(device, non_blocking=True)
        for buffer in self.blocks[b].buffers():
            if buffer.device != device:
                buffer.data = buffer.data.to(device, non_blocking=True)

    def _upload(self, b: int) -> None:
        device = self.device
        if device is None:
            return
        self._move(b, device)

    def _offload(self, b: int) -> None:
        if self.device is not None:
            self._move(b, self.offload_device)

    def _apply_pending(self, b: int) -> None:
        if self._pending is None or self._applied.get(b) == self._pending[0]:
            return
        step, coefficients, scales = self._pending
        for p, g, i in self._entries[b]:
            self.optimizer._update(p, g, i, step, coefficients, scales)
        self._applied[b] = step

    # -- hooks ----------------------------------------------------------------------------------
    def _pre_hook(self, b: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> Any:
            self._upload(b)
            with torch.no_grad():
                self._apply_pending(b)
                if self._dual is None:
                    return None
                if b in self._ran:
                    raise RuntimeError(f"block {b} ran twice in one forward; ZO2Offload needs "
                                       "each block to run once per step")
                self._ran.add(b)
                size, step = self._dual
                for p, g, i in self._entries[b]:
                    self.optimizer._move(p, g, i, step, 0, 1.0, 0.0, 1.0)
            self._stash = (args, kwargs)
            return _half(args, size, 0), _half(kwargs, size, 0)

        return hook

    def _post_hook(self, b: int) -> Callable[..., Any]:
        def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
            if self._dual is None:
                self._offload(b)
                return None
            size, step = self._dual
            full_args, full_kwargs = self._stash
            with torch.no_grad():
                for p, g, i in self._entries[b]:
                    self.optimizer._move(p, g, i, step, 0, 1.0, 1.0, -1.0)
                minus = module.forward(*_half(full_args, size, 1), **_half(full_kwargs, size, 1))
                for p, g, i in self._entries[b]:
                    self.optimizer._move(p, g, i, step, 0, 1.0, -1.0, 0.0)
            self._offload(b)
            return _join(output, minus, size)

        return hook

    # -- the step -------------------------------------------------------------------------------
    def step(self, forward: Callable[[Any], Any], inputs: Any,
             loss_fn: Callable[[Any], Tensor]) -> Tensor:
        """One MeZO step: ``forward(doubled inputs)`` once, ``loss_fn`` on each stream's output.

        Args:
            forward: runs the model, e.g. the model itself or ``lambda ids: model(ids).logits``.
            inputs: a tensor or a tuple/list/dict of tensors with the batch first (size B).
            loss_fn: maps one stream's output (batch B) to a scalar loss.

        Returns:
            the mean of ℓ+ and ℓ− (float64), as ``MeZO.step``.
        """
        opt = self.optimizer
        entries = opt._entries()
        step = int(opt.state[entries[0][0]]["step"])
        first = inputs if isinstance(inputs, Tensor) else next(
            v for v in (inputs.values() if isinstance(inputs, dict) else inputs)
            if isinstance(v, Tensor))
        size = first.shape[0]
        self._dual, self._ran = (size, step), set()
        try:
            with torch.no_grad():
                out = forward(_double(inputs))
        finally:
            self._dual = None
        if len(self._ran) != len(self.blocks):
            idle = sorted(set(range(len(self.blocks))) - self._ran)
            raise RuntimeError(f"blocks {idle} did not run in the forward; their parameters "
                               "were not perturbed")
        with torch.no_grad():
            plus = opt.evaluate(lambda: loss_fn(_half(out, size, 0)))
            minus = opt.evaluate(lambda: loss_fn(_half(out, size, 1)))
        plus_f, minus_f = opt._reduce([float(plus), float(minus)])
        group = opt.param_groups[0]
        sign = -1.0 if group["maximize"] else 1.0
        coefficient = sign * (plus_f - minus_f) / (2 * group["eps"])
        if torch.isfinite(torch.tensor([plus_f, minus_f])).all():
            self._pending = (step, [coefficient], [1.0])
        else:
            self._pending = None
        for p, _, _ in entries:
            opt.state[p]["step"] += 1
        return torch.tensor((plus_f + minus_f) / 2, dtype=torch.float64)

    def flush(self) -> None:
        """Apply the pending update to every block (before evaluating, saving or stopping)."""
        with torch.no_grad():
            for b in range(len(self.blocks)):
                self._upload(b)
                self._apply_pending(b)
                self._offload(b)

    def remove(self) -> None:
        """Flush and remove the hooks: the model is an ordinary module again."""
        self.flush()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
