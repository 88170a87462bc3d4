"""DeepZero (Chen et al., ICLR 2024): coordinate-wise estimation with ZO-GraSP sparsity.

Notation: θ the parameters, μ the coordinate step, e_k the k-th unit vector, M a mask of the
coordinates estimated this step (the others get a zero estimate; the model stays dense).

    CGE:   ĝ_k = (L(θ + μe_k) − L(θ))/μ   for k in M       (|M| + 1 forwards, deterministic)

* ``cge(closure, params, mu, masks)``: the estimator through any closure, one forward per
  active coordinate (the reference's loop).
* ``cge_sequential(layers, x, loss_fn, mu, masks)``: the same numbers, fast: **feature reuse**
  (a coordinate of layer k only re-runs layers k..end from the cached input of layer k) and
  **forward parallelization** (``torch.func.functional_call`` + ``vmap`` run a chunk of
  perturbed copies of one tensor as one batched tail forward).
* ``zo_grasp_keep_ratios``: ZO-GraSP pruning at initialization. g0 = RGE(θ), g1 = RGE(θ + μ·g0)
  with the same directions, Hg = (g1 − g0)/μ, score = −θ ⊙ Hg, global top-k; only the
  per-tensor keep ratios are kept.
* ``DeepZero``: the optimizer. Every ``mask_interval`` steps a random mask per tensor at its
  keep ratio is drawn (from a generator keyed by (seed, mask round, parameter index)); the
  sparse CGE estimate feeds SGD with momentum and coupled weight decay, as the reference does.

Defaults (``OPTML-Group/DeepZero`` ``tools/misc.py``): SGD lr 0.1, momentum 0.9, weight decay
5e-4, μ = 5e-3 (the maintainers suggest lr 1e-3 for CGE in issue #1).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from optforge._seeding import generator_for
from optforge._validation import check_in_range, check_int, check_non_negative, check_positive
from optforge.kernels import apply_rule_
from optforge.optim.base import StateSpec, ZerothOrderOptimizer
from optforge.optim.rules import direction_rule, sgd_momentum_direction
from optforge.zo.estimators import replay, spsa

__all__ = ["DeepZero", "cge", "cge_sequential", "random_mask", "zo_grasp_keep_ratios"]

_MOMENTUM = direction_rule(sgd_momentum_direction, 1, "deepzero_momentum")


def _loss(closure: Callable[[], Any]) -> float:
    loss = closure()
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise TypeError(f"the closure must return a scalar loss (got {tuple(loss.shape)})")
        return float(loss.detach().double())
    return float(loss)


def random_mask(like: Tensor, keep_ratio: float, *keys: int) -> Tensor:
    """A boolean mask with exactly ``round(keep_ratio·numel)`` True entries, keyed by ``keys``."""
    n = like.numel()
    k = round(keep_ratio * n)
    mask = torch.zeros(n, dtype=torch.bool)
    if k:
        perm = torch.randperm(n, generator=generator_for("cpu", *keys))
        mask[perm[:k]] = True
    return mask.reshape(like.shape).to(like.device)


def cge(
    closure: Callable[[], Any],
    params: Sequence[Tensor],
    mu: float = 5e-3,
    masks: Sequence[Tensor | None] | None = None,
) -> tuple[float, list[Tensor]]:
    """Coordinate-wise estimate through ``closure``: one forward per active coordinate.

    Returns ``(L(θ), estimates)``; each coordinate is restored exactly (its value is saved).
    """
    masks = masks if masks is not None else [None] * len(params)
    with torch.no_grad():
        base = _loss(closure)
        out = []
        for p, m in zip(params, masks):
            shape = p.shape
            g = torch.zeros(p.shape, dtype=torch.promote_types(p.dtype, torch.float32),
                            device=p.device)
            active = range(p.numel()) if m is None else m.reshape(-1).nonzero().flatten().tolist()
            if p.is_contiguous():  # a flat view: no index unravelling per coordinate
                p, g = p.view(-1), g.view(-1)
            for k in active:
                at = (k,) if p.dim() == 1 else tuple(
                    int(i) for i in torch.unravel_index(torch.tensor(k), p.shape))
                saved = p[at].clone()
                p[at] += mu
                g[at] = (_loss(closure) - base) / mu
                p[at] = saved
            out.append(g.view(shape))
    return base, out


def cge_sequential(
    layers: Sequence[nn.Module],
    x: Tensor,
    loss_fn: Callable[[Tensor], Tensor],
    mu: float = 5e-3,
    masks: Sequence[Tensor | None] | None = None,
    chunk: int = 256,
) -> tuple[float, list[Tensor]]:
    """``cge`` for a model that is a sequence of layers, with feature reuse and vmap.

    Args:
        layers: the model as a sequence (``nn.Sequential`` or a list of modules) run in order.
        x: the input batch; ``loss_fn(output) -> scalar`` (must work under ``torch.vmap``,
            as ``nn.functional.cross_entropy`` does).
        mu: the coordinate step.
        masks: one per parameter of ``layers`` (in ``parameters()`` order); None: all.
        chunk: perturbed copies per batched tail forward (memory: chunk × the tensor).

    Returns:
        ``(L(θ), estimates)`` in the order of the layers' parameters.
    """
    layers = list(layers)
    params = [p for layer in layers for p in layer.parameters()]
    masks = masks if masks is not None else [None] * len(params)
    if len(masks) != len(params):
        raise ValueError(f"masks has {len(masks)} entries, the layers have {len(params)} "
                         "parameters")
    with torch.no_grad():
        features = [x]
        for layer in layers:
            features.append(layer(features[-1]))
        base = float(loss_fn(features[-1]).double())
        out: list[Tensor] = []
        m_iter = iter(masks)
        for k, layer in enumerate(layers):
            tail = layers[k + 1:]
            for name, p in layer.named_parameters():
                mask = next(m_iter)
                g = torch.zeros_like(p, dtype=torch.promote_types(p.dtype, torch.float32))
                active = (torch.arange(p.numel(), device=p.device) if mask is None
                          else mask.reshape(-1).nonzero().flatten())

                def tail_loss(value: Tensor, layer: nn.Module = layer, name: str = name,
                              inp: Tensor = features[k], tail: list = tail) -> Tensor:
                    h = torch.func.functional_call(layer, {name: value}, (inp,))
                    for t in tail:
                        h = t(h)
                    return loss_fn(h)

                batched = torch.vmap(tail_loss)
                for start in range(0, active.numel(), chunk):
                    idx = active[start:start + chunk]
                    copies = p.detach().reshape(1, -1).repeat(idx.numel(), 1)
                    rows = torch.arange(idx.numel(), device=p.device)
                    copies[rows, idx] += mu
                    losses = batched(copies.reshape(idx.numel(), *p.shape))
                    g.view(-1)[idx] = ((losses.double() - base) / mu).to(g.dtype)
                out.append(g)
    return base, out


def zo_grasp_keep_ratios(
    closure: Callable[[], Any],
    params: Sequence[Tensor],
    sparsity: float,
    *,
    mu: float = 5e-3,
    q: int = 192,
    seed: int = 0,
) -> list[float]:
    """ZO-GraSP: per-tensor keep ratios from a global pruning of ``−θ ⊙ Hg`` (DeepZero §4).

    g0 and g1 are forward-difference RGE estimates with q Gaussian directions (the reference's
    q = 192, μ = 5e-3), g1 at θ + μ·g0 with the same directions. ``params`` are left as they
    were (to rounding). Returns the fraction of each tensor's coordinates kept.
    """
    check_in_range("sparsity", sparsity, 0.0, 1.0)
    params = list(params)
    g0 = replay(spsa(closure, params, eps=mu, n=q, formula="forward", seed=seed), params)
    with torch.no_grad():
        for p, g in zip(params, g0):
            p.add_(g.to(p.dtype), alpha=mu)
        g1 = replay(spsa(closure, params, eps=mu, n=q, formula="forward", seed=seed), params)
        for p, g in zip(params, g0):
            p.sub_(g.to(p.dtype), alpha=mu)
    scores = [(-(p.detach().float()) * (b - a) / mu).flatten() for p, a, b in zip(params, g0, g1)]
    flat = torch.cat(scores)
    keep = flat.numel() - round(sparsity * flat.numel())
    if keep == 0:
        return [0.0] * len(params)
    threshold = torch.topk(flat, keep).values[-1]
    return [float((s >= threshold).float().mean()) for s in scores]


class DeepZero(ZerothOrderOptimizer):
    """DeepZero: sparse coordinate-wise estimation feeding SGD with momentum.

    Args:
        params: parameters or groups; a group's ``keep_ratio`` (default 1.0: dense CGE) is the
            fraction of each tensor's coordinates estimated per step (from
            ``zo_grasp_keep_ratios``, one group per tensor).
        lr, momentum, weight_decay: SGD's (coupled decay, ĝ + λθ); defaults 0.1, 0.9, 5e-4.
        mu: the coordinate step μ (5e-3).
        mask_interval: steps between mask redraws (the reference redraws every 5 epochs).
        seed: base seed of the masks.

    ``step(closure)`` runs ``cge`` (one closure call per active coordinate + 1);
    ``step_sequential(layers, x, loss_fn)`` computes the same estimate with feature reuse and
    vmap for a model that is a sequence of layers.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(),
        ...                             torch.nn.Linear(4, 2))
        >>> x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
        >>> opt = DeepZero(model.parameters(), lr=0.1)
        >>> ce = torch.nn.functional.cross_entropy
        >>> loss = opt.step_sequential(model, x, lambda out: ce(out, y))

    Reference: Chen et al., "DeepZero: Scaling up Zeroth-Order Optimization for Deep Model
    Training", ICLR 2024.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 5e-4,
        mu: float = 5e-3,
        keep_ratio: float = 1.0,
        mask_interval: int = 1,
        seed: int = 0,
    ) -> None:
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, mu=mu,
                        keep_ratio=keep_ratio, mask_interval=mask_interval, seed=seed)
        super().__init__(params, defaults)

    def _check_group(self, group: dict[str, Any]) -> None:
        check_non_negative("lr", group["lr"])
        check_in_range("momentum", group["momentum"], 0.0, 1.0)
        check_non_negative("weight_decay", group["weight_decay"])
        check_positive("mu", group["mu"])
        check_in_range("keep_ratio", group["keep_ratio"], 0.0, 1.0, high_inclusive=True)
        check_int("mask_interval", group["mask_interval"], low=1)
        check_int("seed", group["seed"])
        first = getattr(self, "param_groups", None)
        if first and group["mu"] != first[0]["mu"]:
            raise ValueError(f"mu must be the same in every param group (got {group['mu']}, "
                             f"the first group has {first[0]['mu']})")

    def state_schema(self, param: Tensor, group: dict[str, Any]) -> dict[str, StateSpec]:
        return {"step": StateSpec(dtype=torch.int64, shape=(), device="cpu"),
                "momentum_buffer": StateSpec(dtype="at_least_fp32")}

    def _active(self) -> tuple[list[Tensor], list[dict[str, Any]], list[Tensor | None]]:
        params, groups, masks = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                if not p.requires_grad:
                    continue
                state = self.state[p]
                if not state:
                    self._init_state(p, state, group)
                step = int(state["step"])
                ratio = group["keep_ratio"]
                mask = None if ratio >= 1.0 else random_mask(
                    p, ratio, group["seed"], step // group["mask_interval"], self.param_index(p))
                params.append(p)
                groups.append(group)
                masks.append(mask)
        return params, groups, masks

    def _apply(self, params: list[Tensor], groups: list[dict[str, Any]],
               estimates: list[Tensor]) -> None:
        for p, group, g in zip(params, groups, estimates):
            state = self.state[p]
            grad = g + p.detach().to(g.dtype) * group["weight_decay"]
            hyper = {"lr": group["lr"], "weight_decay": 0.0, "maximize": False,
                     "momentum": group["momentum"], "dampening": 0.0, "nesterov": False}
            target = p if p.dtype == g.dtype else p.detach().to(g.dtype)
            apply_rule_(_MOMENTUM, [[target], [state["momentum_buffer"]], [grad]], hyper,
                        backend="loop")
            if target is not p:
                p.copy_(target)
            state["step"] += 1

    def _zo_step(self, closure: Callable[[], Any]) -> Tensor:
        params, groups, masks = self._active()
        if not params:
            return self.evaluate(closure)
        self.evaluate(closure)  # a clear error for a non-scalar closure before any forward
        base, estimates = cge(closure, params, groups[0]["mu"], masks)
        self._apply(params, groups, estimates)
        return torch.tensor(base, dtype=torch.float64)

    @torch.no_grad()
    def step_sequential(self, layers: Sequence[nn.Module], x: Tensor,
                        loss_fn: Callable[[Tensor], Tensor], chunk: int = 256) -> Tensor:
        """One step with ``cge_sequential`` (feature reuse + vmap); every parameter of
        ``layers`` must be one of this optimizer's, in the same order."""
        params, groups, masks = self._active()
        layer_params = [p for layer in layers for p in layer.parameters() if p.requires_grad]
        if len(layer_params) != len(params) or any(a is not b for a, b in
                                                   zip(layer_params, params)):
            raise ValueError("the layers' parameters must be this optimizer's, in order")
        base, estimates = cge_sequential(layers, x, loss_fn, groups[0]["mu"], masks, chunk)
        self._apply(params, groups, estimates)
        return torch.tensor(base, dtype=torch.float64)
