"""Independent L-BFGS-B runs whose function evaluations are batched into one call.

Polishing the acquisition from ``B`` starting points needs ``B`` separate L-BFGS-B runs (each
with its own curvature memory and stopping test), but one batched evaluation of the surrogate
costs about as much as a single one. scipy's L-BFGS-B (``scipy.optimize._lbfgsb.setulb``) is a
*reverse-communication* routine: each call advances the run until it needs ``f`` and ``g`` at a
new point, and returns. This module keeps ``B`` such runs side by side in one thread, collects
the points they wait on, evaluates them in one call and hands the results back; each run sees
only its own evaluations, so every run is bit for bit the run ``scipy.optimize.minimize`` makes
(tested). Optuna interleaves its runs with greenlets (``optuna/_gp/batched_lbfgsb.py``); an
earlier version of this module parked each run in an OS thread, and the thread hand-offs took
half the acquisition time (measured: 2.8 of 5.3 s in lock releases, Styblinski-Tang-8D,
N = 80, on the loaded 2-core VM) and started threads per suggestion.

``setulb`` is private to scipy; its signature is that of scipy >= 1.15 (the C port). With
another scipy the runs fall back to one ``scipy.optimize.minimize`` each (same results, the
evaluations unbatched).

Summing the ``B`` objectives into one L-BFGS-B problem (BoTorch's ``gen_candidates_scipy``)
is simpler, but then every start must converge before any stops, and the shared memory of 10
curvature pairs mixes ``B`` unrelated blocks: at ``B = 10``, ``d = 6`` that took ~5x more
evaluations (measured: ~210 vs ~40 per suggestion on Hartmann6 at N = 100).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy
from scipy.optimize import minimize

__all__ = ["batched_lbfgsb"]

try:  # the reverse-communication entry point of scipy >= 1.15
    from scipy.optimize import _lbfgsb

    _SCIPY = tuple(int(p) for p in scipy.__version__.split(".")[:2])
    _SETULB = _lbfgsb.setulb if _SCIPY >= (1, 15) else None
except (ImportError, AttributeError, ValueError):  # pragma: no cover - other scipy builds
    _SETULB = None

# scipy's task codes (scipy/optimize/__lbfgsb.c): 1 new iteration, 3 evaluate f and g at x,
# 4 converged, 5 stop requested; anything else ends the run.
_NEW_X, _FG, _STOP = 1, 3, 5
_M = 10  # curvature pairs (scipy's maxcor default)
_FACTR = 2.2204460492503131e-09 / np.finfo(float).eps  # scipy minimize's default ftol
_MAXLS = 20
_MAXFUN = 15000


class _Run:
    """The state of one L-BFGS-B run, as ``scipy.optimize._minimize_lbfgsb`` keeps it."""

    def __init__(self, x0: np.ndarray, low: np.ndarray, high: np.ndarray) -> None:
        n = len(x0)
        self.x = np.clip(np.array(x0, dtype=np.float64), low, high)
        self.f = np.array(0.0)
        self.g = np.zeros(n)
        self.wa = np.zeros(2 * _M * n + 5 * n + 11 * _M * _M + 8 * _M)
        self.iwa = np.zeros(3 * n, dtype=np.int32)
        self.task = np.zeros(2, dtype=np.int32)
        self.ln_task = np.zeros(2, dtype=np.int32)
        self.lsave = np.zeros(4, dtype=np.int32)
        self.isave = np.zeros(44, dtype=np.int32)
        self.dsave = np.zeros(29)
        self.nit = 0
        self.nfev = 0

    def advance(self, low, high, nbd, pgtol: float, maxiter: int) -> bool:
        """Run until the routine asks for ``f, g`` at ``self.x`` (True) or ends (False)."""
        while True:
            _SETULB(_M, self.x, low, high, nbd, self.f, self.g, _FACTR, pgtol, self.wa,
                    self.iwa, self.task, self.lsave, self.isave, self.dsave, _MAXLS,
                    self.ln_task)  # fmt: skip
            if self.task[0] == _FG:
                return True
            if self.task[0] != _NEW_X:
                return False
            self.nit += 1
            if self.nit >= maxiter or self.nfev > _MAXFUN:
                self.task[:] = (_STOP, 504)  # scipy's "STOP: TOTAL NO. OF ITERATIONS ..."


def batched_lbfgsb(
    fun_and_grad: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    x0: np.ndarray,
    bounds: list[tuple[float, float]],
    *,
    maxiter: int = 200,
    pgtol: float = 1e-5,
) -> tuple[np.ndarray, np.ndarray]:
    """Minimize from every row of ``x0`` independently, evaluating points in batches.

    Args:
        fun_and_grad: ``(X (m, k), runs (m,)) -> (f (m,), g (m, k))``: the values and gradients
            at the query points ``X`` of the runs ``runs`` (indices into ``x0``, increasing);
            row ``j`` must depend on ``X[j]`` and ``runs[j]`` only.
        x0: starting points ``(B, k)``.
        bounds: ``k`` finite pairs ``(low, high)``, shared by every run.
        maxiter, pgtol: per-run L-BFGS-B options (``minimize``'s ``maxiter`` and ``gtol``).

    Returns:
        ``(X, f)``: the final points ``(B, k)`` and values ``(B,)``.
    """
    x0 = np.atleast_2d(np.asarray(x0, dtype=np.float64))
    low, high = (np.ascontiguousarray(b, dtype=np.float64) for b in np.asarray(bounds).T)
    if _SETULB is None:  # pragma: no cover - scipy < 1.15
        return _sequential(fun_and_grad, x0, bounds, maxiter, pgtol)
    nbd = np.full(len(low), 2, dtype=np.int32)  # both bounds finite
    runs = [_Run(x, low, high) for x in x0]
    live = [i for i, r in enumerate(runs) if r.advance(low, high, nbd, pgtol, maxiter)]
    while live:
        values, grads = fun_and_grad(np.stack([runs[i].x.copy() for i in live]), np.array(live))
        still = []
        for k, i in enumerate(live):
            r = runs[i]
            r.f = np.array(float(values[k]))
            r.g = np.array(grads[k], dtype=np.float64)
            r.nfev += 1
            if r.advance(low, high, nbd, pgtol, maxiter):
                still.append(i)
        live = still
    return np.stack([r.x for r in runs]), np.array([float(r.f) for r in runs])


def _sequential(fun_and_grad, x0, bounds, maxiter, pgtol):  # pragma: no cover - old scipy
    X, f = x0.copy(), np.zeros(len(x0))
    for i in range(len(x0)):
        run = np.array([i])
        res = minimize(
            lambda x, run=run: tuple(a[0] for a in fun_and_grad(x[None], run)),
            x0[i],
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": maxiter, "gtol": pgtol},
        )
        X[i], f[i] = res.x, res.fun
    return X, f
