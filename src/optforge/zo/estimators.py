"""Zeroth-order gradient estimators as plain functions, usable without any optimizer class.

Notation: θ = (θ_1..θ_K) the tensors, L the loss the closure returns, ε the perturbation scale,
z_j direction j (``optforge.zo.directions``), n the number of directions.

* ``spsa(closure, params, ...)``: the randomized estimate
  ``ĝ = (1/n) Σ_j c_j z_j`` with ``c_j = (L(θ+εz_j) − L(θ−εz_j))/(2ε)`` (central) or
  ``c_j = (L(θ+εz_j) − L(θ))/ε`` (forward, one-sided). It returns a ``ZORecord``: the keys of
  the directions and the scalars ``c_j``, never a direction. ``replay`` regenerates ĝ from it.
* ``forward_gradient(fn, params, ...)``: ``ĝ = (1/n) Σ_j (∇L·v_j) v_j`` with the directional
  derivative ``∇L·v_j`` from ``torch.func.jvp`` (one forward-mode pass, no backward).

Facts the tests check (reference/zo.md §6): with f_ε(x) = E_u f(x + εu), the central SPSA
estimate is unbiased for ∇f_ε (Stein), which equals ∇f on a quadratic; its second moment is
E‖ĝ‖² = ((d+2)+(n−1))/n·‖g‖² for Gaussian z and (d+n−1)/n·‖g‖² for Rademacher or sphere z.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from optforge.zo.directions import DISTRIBUTIONS, chunks, draw, flat, sphere_scale

__all__ = ["FORMULAS", "ZORecord", "forward_gradient", "perturb_", "replay", "spsa"]

FORMULAS = ("central", "forward")


@dataclass(frozen=True)
class ZORecord:
    """What an estimate needs to be replayed: direction keys and one scalar per direction.

    Attributes:
        seed, step: the keys of the directions (direction j uses ``(seed, step, j, index)``).
        indices: each tensor's index key, in the order of ``params``.
        dist: the direction distribution.
        scales: per-direction multiplier of the draw (``√d/‖u‖`` for ``"sphere"``, else 1).
        coefficients: ``c_j``, one per direction.
        losses: per direction, ``(L(θ+εz), L(θ−εz))`` (central), ``(L(θ), L(θ+εz))`` (forward)
            or ``(L(θ),)`` (forward gradient).
    """

    seed: int
    step: int
    indices: tuple[int, ...]
    dist: str
    scales: tuple[float, ...]
    coefficients: tuple[float, ...]
    losses: tuple[tuple[float, ...], ...]


def _check(dist: str, n: int, eps: float | None = None) -> None:
    if dist not in DISTRIBUTIONS:
        raise ValueError(f"dist must be one of {DISTRIBUTIONS} (got {dist!r})")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1 (got {n!r})")
    if eps is not None and not eps > 0:
        raise ValueError(f"eps must be > 0 (got {eps})")


def _scale(params: Sequence[Tensor], indices: Sequence[int], dist: str, seed: int, step: int,
           j: int) -> float:
    return sphere_scale(params, indices, seed, step, j) if dist == "sphere" else 1.0


def perturb_(
    params: Sequence[Tensor],
    alpha: float,
    *,
    seed: int,
    step: int,
    direction: int,
    dist: str = "gaussian",
    indices: Sequence[int] | None = None,
    scale: float = 1.0,
) -> None:
    """``θ_i ← θ_i + alpha·z_i`` in place (z regenerated from its keys, cast to θ_i's dtype)."""
    indices = range(len(params)) if indices is None else indices
    with torch.no_grad():
        for p, i in zip(params, indices):
            for s, z in chunks(p, dist, seed, step, direction, i, scale):
                flat(p, s).add_(z.to(p.dtype), alpha=alpha)


def _loss(closure: Callable[[], object]) -> float:
    loss = closure()
    if isinstance(loss, Tensor):
        if loss.numel() != 1:
            raise TypeError(f"the closure must return a scalar loss (got {tuple(loss.shape)})")
        return float(loss.detach().reshape(()).double())
    if isinstance(loss, (int, float)) and not isinstance(loss, bool):
        return float(loss)
    raise TypeError(f"the closure must return a scalar loss (got {type(loss).__name__})")


def spsa(
    closure: Callable[[], object],
    params: Sequence[Tensor],
    *,
    eps: float = 1e-3,
    n: int = 1,
    dist: str = "gaussian",
    formula: str = "central",
    seed: int = 0,
    step: int = 0,
    indices: Sequence[int] | None = None,
) -> ZORecord:
    """Evaluate ``closure`` at perturbed ``params`` and return the estimate's ``ZORecord``.

    The parameters are perturbed in place and put back (``+ε, −2ε, +ε``: exact in float64, to
    rounding error in float32; optimizers keep fp32 masters for half dtypes). ``closure``
    returns a scalar loss and needs no gradient (it runs under ``torch.no_grad``).

    Example:
        >>> x = torch.tensor([1.0, -2.0], dtype=torch.float64)
        >>> rec = spsa(lambda: (x**2).sum(), [x], eps=1e-3, n=4)
        >>> g = replay(rec, [x])[0]   # an unbiased estimate of 2x
    """
    _check(dist, n, eps)
    if formula not in FORMULAS:
        raise ValueError(f"formula must be one of {FORMULAS} (got {formula!r})")
    params = list(params)
    idx = tuple(range(len(params))) if indices is None else tuple(indices)
    keys = {"seed": seed, "step": step, "dist": dist, "indices": idx}
    scales, coefficients, losses = [], [], []
    with torch.no_grad():
        base = _loss(closure) if formula == "forward" else None
        for j in range(n):
            s = _scale(params, idx, dist, seed, step, j)
            perturb_(params, eps, direction=j, scale=s, **keys)
            plus = _loss(closure)
            if formula == "central":
                perturb_(params, -2 * eps, direction=j, scale=s, **keys)
                minus = _loss(closure)
                perturb_(params, eps, direction=j, scale=s, **keys)
                coefficients.append((plus - minus) / (2 * eps))
                losses.append((plus, minus))
            else:
                perturb_(params, -eps, direction=j, scale=s, **keys)
                coefficients.append((plus - base) / eps)
                losses.append((base, plus))
            scales.append(s)
    return ZORecord(seed, step, idx, dist, tuple(scales), tuple(coefficients), tuple(losses))


def replay(record: ZORecord, params: Sequence[Tensor]) -> list[Tensor]:
    """The estimate ``(1/n) Σ_j c_j z_j`` of each tensor, regenerated from ``record``.

    ``params`` only give shapes, dtypes and devices; the result is float32 (float64 for float64
    tensors).
    """
    n = len(record.coefficients)
    out = []
    for p, i in zip(params, record.indices):
        g = torch.zeros(p.shape, dtype=torch.float64 if p.dtype == torch.float64 else
                        torch.float32, device=p.device)
        for j, (c, s) in enumerate(zip(record.coefficients, record.scales)):
            g.add_(draw(p, record.dist, record.seed, record.step, j, i, s), alpha=c / n)
        out.append(g)
    return out


def forward_gradient(
    fn: Callable[..., Tensor],
    params: Sequence[Tensor],
    *,
    n: int = 1,
    dist: str = "gaussian",
    seed: int = 0,
    step: int = 0,
) -> tuple[Tensor, list[Tensor], ZORecord]:
    """Forward-gradient estimate ``(1/n) Σ_j (∇L·v_j) v_j`` by ``torch.func.jvp``.

    Args:
        fn: ``fn(*params) -> scalar loss``, a function of the tensors themselves (e.g. built
            with ``torch.func.functional_call``).
        params: the point θ.
        n, dist, seed, step: as in ``spsa``.

    Returns:
        ``(L(θ), estimates, record)``: the loss, one estimate per tensor, the replayable record.
    """
    _check(dist, n)
    params = [p.detach() for p in params]
    idx = tuple(range(len(params)))
    scales, coefficients = [], []
    loss = None
    for j in range(n):
        s = _scale(params, idx, dist, seed, step, j)
        tangents = tuple(draw(p, dist, seed, step, j, i, s).to(p.dtype) for p, i in
                         zip(params, idx))
        loss, derivative = torch.func.jvp(fn, tuple(params), tangents)
        if derivative.numel() != 1:
            raise TypeError(f"fn must return a scalar loss (got {tuple(derivative.shape)})")
        scales.append(s)
        coefficients.append(float(derivative.reshape(()).double()))
    assert loss is not None
    value = float(loss.reshape(()).double())
    record = ZORecord(seed, step, idx, dist, tuple(scales), tuple(coefficients),
                      tuple((value,) for _ in range(n)))
    return loss.detach(), replay(record, params), record
