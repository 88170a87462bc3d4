"""The benchmark's workloads by name: four CPU-sized families, each with held-out variants.

=====================================  =====================  =========  ===================
workload                               metric                 target     held-out variants
=====================================  =====================  =========  ===================
``digits_cnn``                         accuracy (higher)      0.98       ``_tanh`` (0.985)
``stdlib_lm``                          cross-entropy (lower)  1.6        ``_post_ln`` (1.7)
``click_ctr``                          logloss (lower)        0.485      ``_embed_init`` (0.505)
``illcond_regression``                 MSE (lower)            0.04       ``_kappa1e4`` (0.05)
=====================================  =====================  =========  ===================

A held-out variant changes one architectural, initialization or data choice of its base
(AlgoPerf v0.5 §"held-out workloads"); it has its own target and budgets and names its base in
``Workload.base``.

Calibration. Targets were set so that the NAdamW baseline with its default hyperparameters
(AlgoPerf's baseline point, ``get_submission("nadamw").default_hparams``) reaches every target
with every seed tried, well inside the step budget; ``time_budget_s`` is about 3x the slowest
time seen, leaving room for a busy machine. Command (one thread per trial)::

    python -c "from optforge.bench import *
    for w in list_workloads():
        for s in (0, 1):
            r = run_trial(TrialSpec(w, 'nadamw', seed=s))
            print(w, s, r['steps_to_target'], r['time_to_target_s'])"

Measured on a 2-core x86-64 VM shared with three other jobs, torch 2.13.0 CPU, Python 3.11.7
(steps to target, seconds to target; per-step times varied 2-3x with the load). Seed 2 of
nadamw: digits_cnn 275 steps, digits_cnn_tanh 400, click_ctr 1300, illcond_regression 1700,
stdlib_lm 900 (from calibration curves with an unreachable target).

==============================  ======================  ======================  ==============
workload                        nadamw seed 0           nadamw seed 1           adamw seed 0
==============================  ======================  ======================  ==============
digits_cnn                      275 steps, 9.7 s        300, 15.3 s             375, 18.1 s
digits_cnn_tanh                 225, 8.7 s              500, 27.6 s             325, 19.2 s
click_ctr                       1300, 4.5 s             1600, 5.1 s             1400, 4.6 s
click_ctr_embed_init            1500, 5.3 s             2000, 6.3 s             1500, 5.0 s
illcond_regression              1500, 9.7 s             1500, 9.7 s             1600, 10.8 s
illcond_regression_kappa1e4     1600, 10.4 s            1500, 9.0 s             1400, 13.9 s
stdlib_lm                       900, 24.8 s             900, 25.5 s             1200, 46.4 s
stdlib_lm_post_ln               1000, 28.0 s            1100, 32.5 s            1100, 32.7 s
==============================  ======================  ======================  ==============

The click_ctr rows were measured against its first target, 0.48; it is now 0.485 (see
``click_ctr.py``), which every run above reaches no later.

click_ctr is the quickest (about 3.5 ms per step on an idle core); a wider embedding (32)
reached the same log-loss in fewer steps for one seed but overfit and missed it for another,
so the base model stays small.

Example:
    >>> list_workloads(include_held_out=False)
    ['click_ctr', 'digits_cnn', 'illcond_regression', 'stdlib_lm']
    >>> get_workload("digits_cnn").metric_name
    'accuracy'
"""

from __future__ import annotations

from collections.abc import Callable

from optforge.bench.workload import Workload
from optforge.bench.workloads.click_ctr import ClickCTR
from optforge.bench.workloads.digits import DigitsCNN
from optforge.bench.workloads.illcond import IllCondRegression
from optforge.bench.workloads.stdlib_lm import StdlibCharLM

__all__ = [
    "ClickCTR", "DigitsCNN", "IllCondRegression", "StdlibCharLM", "get_workload",
    "list_workloads", "register_workload",
]


def _variant(factory: Callable[..., Workload], name: str, base: str,
             settings: dict[str, float], **overrides: object) -> Callable[[], Workload]:
    """A held-out variant: ``factory(**overrides)`` with its own target and budgets."""

    def make() -> Workload:
        w = factory(name=name, held_out=True, base=base, **overrides)
        for key, value in settings.items():
            setattr(w, key, value)
        return w

    return make


# Held-out targets come from the same calibration as the base targets (module docstring).
_REGISTRY: dict[str, Callable[[], Workload]] = {
    "digits_cnn": DigitsCNN,
    # tanh reaches a higher accuracy: first >= 0.985 at steps 225/500/400 (seeds 0/1/2)
    "digits_cnn_tanh": _variant(DigitsCNN, "digits_cnn_tanh", "digits_cnn",
                                {"target": 0.985, "time_budget_s": 60.0}, act="tanh"),
    "stdlib_lm": StdlibCharLM,
    # post-LN is slower: first <= 1.7 at steps 1000/1100 (seeds 0/1), vs 1.6 at 900 for pre-LN
    "stdlib_lm_post_ln": _variant(StdlibCharLM, "stdlib_lm_post_ln", "stdlib_lm",
                                  {"target": 1.7, "time_budget_s": 120.0}, post_ln=True),
    "click_ctr": ClickCTR,
    # embedding std 1.0 instead of 1/sqrt(16): first <= 0.505 at steps 1500/2000 (seeds 0/1)
    "click_ctr_embed_init": _variant(ClickCTR, "click_ctr_embed_init", "click_ctr",
                                     {"target": 0.505, "time_budget_s": 60.0},
                                     embed_init_std=1.0),
    "illcond_regression": IllCondRegression,
    # kappa 1e4: first <= 0.05 at steps 1600/1500 (seeds 0/1); 0.041 after 2,500
    "illcond_regression_kappa1e4": _variant(IllCondRegression, "illcond_regression_kappa1e4",
                                            "illcond_regression",
                                            {"target": 0.05, "time_budget_s": 60.0},
                                            kappa=1e4),
}


def register_workload(name: str, factory: Callable[[], Workload], *,
                      overwrite: bool = False) -> None:
    """Make ``factory()`` available as ``get_workload(name)``.

    ``run_trial`` looks workloads up by name, so for process pools register at import time of
    a module that the workers import too.
    """
    if name in _REGISTRY and not overwrite:
        raise ValueError(f"a workload named {name!r} is already registered (pass overwrite=True)")
    _REGISTRY[name] = factory


def list_workloads(include_held_out: bool = True) -> list[str]:
    """Registered workload names, sorted; base workloads only unless ``include_held_out``."""
    names = sorted(_REGISTRY)
    if include_held_out:
        return names
    return [n for n in names if not _REGISTRY[n]().held_out]


def get_workload(name: str) -> Workload:
    """A fresh instance of the workload called ``name`` (data is built on first use).

    Raises:
        ValueError: for an unknown name; the message lists the known ones.
    """
    if name not in _REGISTRY:
        raise ValueError(
            f"unknown workload {name!r}; known workloads: {', '.join(sorted(_REGISTRY))}"
        )
    return _REGISTRY[name]()
