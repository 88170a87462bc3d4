"""Functional hashing: evaluate each distinct *function* once, not each distinct genotype.

Evolutionary program search produces many children that compute their parent's function (a
mutation in dead code, ``add(g, m)`` vs ``add(m, g)``). A functional hash runs the candidate on
fixed probe inputs, rounds the outputs and digests them, so equivalent candidates share a key and
a cache answers for all but the first. AutoML-Zero (Real et al., ICML 2020; google-research
``automl_zero/fec_cache.cc``, ``fec_hashing.cc``) caches fitness by such a key in an LRU cache of
100,000 entries and re-evaluates a key after 100 hits; Unified Functional Hashing (Gillard et
al., 2023, arXiv 2302.05433) applies the idea across search spaces.

Pieces, each usable alone:

- :func:`fingerprint` / :class:`FunctionalHash`: outputs → rounded → 128-bit blake2b hex digest.
- :class:`ProgramProbe`: a :class:`~optforge.search.programs.Program` run on fixed seeded inputs.
- :class:`FitnessCache`: LRU, bounded, forget-after-N-hits, mean of repeated evaluations.
- :class:`FunctionalHashing`: wraps any :class:`SearchAlgorithm` whose results are floats. Hits
  are resolved *inside* ``ask()`` (told to the wrapped algorithm at once), so the caller only
  evaluates novel functions and ``run(FunctionalHashing(evo, ...), objective, budget)`` spends its
  budget on full evaluations only.

Rounding: outputs are rounded to ``significant_digits`` (default 6, the reference card's toy
measurement) significant decimal digits; ``-0.0`` becomes ``0``; NaN, ``+inf`` and ``-inf`` get
their own codes; the output shape and dtype are part of the key. Rounding costs misses (two
values either side of a rounding boundary), never wrong hits; wrong hits come from probes that do
not tell two functions apart, which audits measure.

Cost accounting: one probe (one call of the key function) costs ``probe_cost`` full evaluations,
declared by the user from what the two do (AutoML-Zero counts probe training steps against the
budget the same way): e.g. 16 probe points against a fitness on 256 points is ``16/256``.
:attr:`FunctionalHashing.telemetry` reports ``effective_evaluations = full_evaluations +
probe_cost · probes`` and the measured probe seconds.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from optforge._validation import check_in_range, check_int, check_non_negative
from optforge.search.base import (
    Candidate,
    SearchAlgorithm,
    check_finite_number,
    check_ids,
    check_state_kind,
    rng_from_state,
    rng_to_state,
)

__all__ = [
    "FitnessCache",
    "FunctionalHash",
    "FunctionalHashing",
    "ProgramProbe",
    "fingerprint",
    "round_significant",
    "binomial_interval",
]

_STATE_VERSION = 1
# Exponent codes for non-finite values (outside any float64 decimal exponent, |e| <= 324).
_NAN, _POS_INF, _NEG_INF = 1 << 20, (1 << 20) + 1, (1 << 20) + 2

#: AutoML-Zero re-seeds its probe RNG to this value before every probe (``fec_hashing.cc``).
AUTOML_ZERO_PROBE_SEED = 235732282


def round_significant(x: np.ndarray, significant_digits: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mantissa, exponent)`` int64 arrays with ``x ≈ mantissa · 10^(exponent − d + 1)``.

    ``mantissa`` has ``d = significant_digits`` digits (0 for zero); non-finite values get
    mantissa 0 and a reserved exponent code. Canonical: ``-0.0`` and ``0.0`` map alike.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    mantissa = np.zeros(x.shape, dtype=np.int64)
    exponent = np.zeros(x.shape, dtype=np.int64)
    exponent[np.isnan(x)] = _NAN
    exponent[x == np.inf] = _POS_INF
    exponent[x == -np.inf] = _NEG_INF
    nz = np.isfinite(x) & (x != 0)
    if nz.any():
        v = x[nz]
        e = np.floor(np.log10(np.abs(v))).astype(np.int64)
        shift = significant_digits - 1 - e
        # Two factors so that 10**shift never overflows (subnormals need shift up to ~330).
        half = shift // 2
        m = np.round(v * 10.0**half * 10.0 ** (shift - half))
        # log10 can be off by one at exact powers of ten, and rounding can carry (9.9999995e2).
        big = np.abs(m) >= 10.0**significant_digits
        m[big] = np.round(m[big] / 10.0)
        e[big] += 1
        small = np.abs(m) < 10.0 ** (significant_digits - 1)
        if small.any():
            m[small] = np.round(v[small] * 10.0 ** (shift[small] + 1))
            e[small] -= 1
        mantissa[nz] = m.astype(np.int64)
        exponent[nz] = e
    return mantissa, exponent


def fingerprint(outputs: Any, significant_digits: int = 6, digest_size: int = 16) -> str:
    """Hex digest of ``outputs`` (an array, tensor, number, or a sequence of them) rounded to
    ``significant_digits``; shapes and dtypes are part of the key.

    Example: ``fingerprint(np.array([1.0, 2.0000001])) == fingerprint(np.array([1.0, 2.0]))``.
    """
    check_int("significant_digits", significant_digits, low=1)
    if significant_digits > 15:
        raise ValueError(f"significant_digits must be <= 15 (got {significant_digits})")
    h = hashlib.blake2b(digest_size=check_int("digest_size", digest_size, low=8))
    parts = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    for part in parts:
        if isinstance(part, torch.Tensor):
            part = part.detach().to("cpu", torch.float64).numpy()
        arr = np.asarray(part)
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
            raise TypeError(f"outputs must be numeric arrays (got dtype {arr.dtype})")
        mantissa, exponent = round_significant(arr, significant_digits)
        h.update(f"{arr.shape}|{arr.dtype.str}|".encode())
        h.update(mantissa.tobytes())
        h.update(exponent.tobytes())
    return h.hexdigest()


class FunctionalHash:
    """Key a candidate by what it computes: ``fingerprint(probe(value))``.

    Args:
        probe: ``probe(value) -> outputs`` on fixed inputs (an array, tensor, or sequence of
            them). It must be deterministic: seed everything it draws, every call.
        significant_digits: rounding of the outputs (default 6, as the reference card's toy
            measurement; 0 of 494 audited hits were wrong there).
        digest_size: bytes of the blake2b digest (default 16: 128 bits, the card's ≥ 128 rule).
    """

    def __init__(
        self,
        probe: Callable[[Any], Any],
        *,
        significant_digits: int = 6,
        digest_size: int = 16,
    ) -> None:
        if not callable(probe):
            raise TypeError(f"probe must be callable (got {type(probe).__name__})")
        self.probe = probe
        self.significant_digits = check_int("significant_digits", significant_digits, low=1)
        self.digest_size = check_int("digest_size", digest_size, low=8)
        fingerprint(np.zeros(1), self.significant_digits, self.digest_size)  # validates ranges

    def __call__(self, value: Any) -> str:
        return fingerprint(self.probe(value), self.significant_digits, self.digest_size)


class ProgramProbe:
    """A :class:`~optforge.search.programs.Program` evaluated on fixed, seeded probe inputs.

    Probe point ``j`` of input ``x`` is ``s_j · z_xj`` with ``z ~ N(0, 1)`` independent per input;
    ``s_j = 1`` for the first half of the points and ``s_j = 10^U(−4, 3)``, shared by all inputs,
    for the second half. The shared scale keeps the inputs' ratios typical (a function such as
    ``sign(m + c·g)`` differs from ``sign(m + c'·g)`` only on a thin wedge of ``m/g``, which
    probes must hit), while the spread of magnitudes separates functions that agree near 1 but
    not at 1e-4 (``tanh(g)`` vs ``g``, the smoothing of ``div``).

    Piecewise-constant programs (``sign``) need many probes: two of them are told apart with
    probability about ``n_probes`` times the probability mass between their boundaries. In the
    update-rule demo (10% of hits audited), 32 probes let 24 of 116 audited hits through wrong,
    4096 probes 2 of 110, and 4096 probes with constants on a 0.01 grid
    (``ProgramSpace(const_decimals=2)``) none of 114 (and of 124 with another seed).

    With ``data`` (the fitness inputs), probe points are instead rows drawn from the data
    without replacement (all rows when ``n_probes >= len(data)``): only outputs on the fitness
    inputs decide a fitness, and probes drawn elsewhere can miss where the data lies (``max``/
    ``min`` programs that differ only there). On symbolic regression of ``tanh(xy) + 0.3(x -
    y)^2`` (``benchmarks/search_hashing_symbolic.py``, 5 seeds x 5,000 children, 512 data rows)
    256 probes from the data gave 0 and 14 wrong fitnesses in ~20,000 hits in two runs, the
    default 256 probes 3 and 2.

    Args:
        inputs: input names, as the programs' ``inputs``.
        n_probes: probe points per input, >= 2 (default 256; the card's toy used 16).
        seed: probe RNG seed (default AutoML-Zero's probe seed, 235732282).
        data: optional ``{input: (N,) array}``, the inputs the fitness evaluates programs on.
    """

    def __init__(
        self,
        inputs: Sequence[str] = ("g", "m", "v"),
        *,
        n_probes: int = 256,
        seed: int = AUTOML_ZERO_PROBE_SEED,
        data: dict[str, Any] | None = None,
    ) -> None:
        self.inputs = tuple(inputs)
        self.n_probes = check_int("n_probes", n_probes, low=2)
        self.seed = check_int("seed", seed, low=0)
        rng = np.random.default_rng(seed)
        if data is not None:
            self.values = _rows_of(data, self.inputs, n_probes, rng)
            self.n_probes = len(next(iter(self.values.values())))
            return
        n_unit = n_probes // 2
        scale = np.concatenate([np.ones(n_unit), 10.0 ** rng.uniform(-4.0, 3.0, n_probes - n_unit)])
        self.values = {name: scale * rng.standard_normal(n_probes) for name in self.inputs}

    def __call__(self, program: Any) -> np.ndarray:
        with np.errstate(all="ignore"):  # overflow to inf is a legitimate, hashed output
            return program(**self.values)


class FitnessCache:
    """Bounded LRU cache of fitness by key, with forget-after-N-hits (AutoML-Zero's FEC cache).

    Each entry keeps the mean of its full evaluations, their count, and the hits served since
    the last one. After ``forget_after`` hits, :meth:`lookup` answers ``"refresh"``: the caller
    evaluates again and :meth:`record` folds the new value into the mean — a guard against a
    lucky first evaluation of a noisy objective and against persistent collisions.

    Args:
        capacity: most entries, >= 1; the least recently used is evicted (default 100,000,
            AutoML-Zero's ``fec_cache_size`` demo value).
        forget_after: hits served before a re-evaluation, >= 1, or ``None`` never (default
            100, AutoML-Zero's ``forget_every``).
    """

    def __init__(self, capacity: int = 100_000, forget_after: int | None = 100) -> None:
        self.capacity = check_int("capacity", capacity, low=1)
        self.forget_after = (
            None if forget_after is None else check_int("forget_after", forget_after, low=1)
        )
        self._entries: OrderedDict[str, list] = OrderedDict()  # key -> [mean, count, hits]
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def peek(self, key: str) -> tuple[float, int, int] | None:
        """``(mean, count, hits)`` of an entry without counting a hit, or ``None``."""
        e = self._entries.get(key)
        return None if e is None else (e[0], e[1], e[2])

    def lookup(self, key: str) -> tuple[str, float | None]:
        """``("hit", mean)`` (counts a hit), ``("refresh", mean)`` after ``forget_after`` hits,
        or ``("miss", None)``."""
        e = self._entries.get(key)
        if e is None:
            return "miss", None
        self._entries.move_to_end(key)
        if self.forget_after is not None and e[2] >= self.forget_after:
            return "refresh", e[0]
        e[2] += 1
        return "hit", e[0]

    def record(self, key: str, value: float, *, replace: bool = False) -> None:
        """Fold a full evaluation into ``key``'s mean (creating the entry) and reset its hits;
        ``replace=True`` starts the mean afresh from ``value``."""
        value = check_finite_number("value", value)
        e = self._entries.get(key)
        if replace and e is not None:
            e[:] = [value, 1, 0]
            self._entries.move_to_end(key)
        elif e is None:
            self._entries[key] = [value, 1, 0]
            if len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
                self.evictions += 1
        else:
            e[1] += 1
            e[0] += (value - e[0]) / e[1]
            e[2] = 0
            self._entries.move_to_end(key)

    def state_dict(self) -> dict:
        return {
            "capacity": self.capacity,
            "forget_after": self.forget_after,
            "evictions": self.evictions,
            "keys": list(self._entries),
            "entries": [list(e) for e in self._entries.values()],  # LRU order, oldest first
        }

    def load_state_dict(self, state: dict) -> None:
        if state["capacity"] != self.capacity or state["forget_after"] != self.forget_after:
            raise ValueError(
                f"state has capacity={state['capacity']}, forget_after={state['forget_after']} "
                f"but this cache has capacity={self.capacity}, forget_after={self.forget_after}"
            )
        self._entries = OrderedDict(
            (str(k), [float(m), int(c), int(h)])
            for k, (m, c, h) in zip(state["keys"], state["entries"])
        )
        self.evictions = int(state["evictions"])


def _rows_of(
    data: dict[str, Any], inputs: tuple[str, ...], n: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    missing = [k for k in inputs if k not in data]
    if missing:
        raise ValueError(f"data must hold every input; missing {missing}")
    cols = {k: np.asarray(data[k], dtype=np.float64).reshape(-1) for k in inputs}
    sizes = {len(v) for v in cols.values()}
    if len(sizes) != 1 or 0 in sizes:
        raise ValueError(f"data's inputs must be non-empty and of one length (got {sizes})")
    (size,) = sizes
    rows = np.arange(size) if n >= size else np.sort(rng.choice(size, n, replace=False))
    return {k: v[rows].copy() for k, v in cols.items()}


def binomial_interval(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Clopper-Pearson (exact) interval for a binomial proportion ``k / n``.

    It covers the true proportion with probability at least ``confidence`` for every ``p`` and
    ``n`` (Wilson's interval drops to ~91% at p = 0.5%, n = 100: rare wrong hits are exactly that
    regime), and it is not empty at ``k = 0``: 0 wrong of 69 audited hits gives (0, 5.2%), honest
    about how little 69 audits can rule out.
    """
    from scipy.special import betaincinv  # lazily: only audits need it

    if n == 0:
        return 0.0, 1.0
    tail = (1.0 - confidence) / 2.0
    low = 0.0 if k == 0 else float(betaincinv(k, n - k + 1, tail))
    high = 1.0 if k == n else float(betaincinv(k + 1, n - k, 1.0 - tail))
    return low, high


class FunctionalHashing(SearchAlgorithm):
    """Wrap a search algorithm so that functionally equal candidates are evaluated once.

    For each candidate the wrapped algorithm proposes, ``ask()``:

    1. looks up ``structural_key(value)`` (if given; free, no probe) in a bounded map from
       structural keys to functional keys; on a miss computes ``key(value)`` (a probe, charged
       ``probe_cost``);
    2. if the functional key is being evaluated right now (a duplicate in flight), attaches the
       candidate to that evaluation: it is told the same result;
    3. on a cache hit tells the cached fitness to the wrapped algorithm at once;
    4. audits either kind of hit with probability ``audit_rate``: the hit is returned for a full
       evaluation of its own, whose result is compared with the value the hit would have been
       told (the cached fitness, or the result of the evaluation in flight once it is told); a
       mismatch beyond ``audit_rtol``/``audit_atol`` is a *wrong hit*. Both kinds are sampled
       alike, so ``wrong_hits / audited`` estimates the wrong share of all hits;
    5. on a miss, or a refresh after ``cache.forget_after`` hits, returns the candidate for a
       full evaluation; ``tell`` records its result in the cache: averaged with the key's
       earlier evaluations when it agrees with them within the audit tolerance (noise),
       replacing them when it does not (a collision: the mean of two functions helps no one).

    Ids are the wrapped algorithm's. ``ask()`` returns the misses of the wrapped algorithm's
    natural batch; ``ask(n)`` returns ``n`` candidates (fewer only when the wrapped algorithm
    cannot propose more before results are told). A run of hits longer than
    ``max_hits_per_ask`` (a converged population with forgetting disabled) ends by sending the
    next hit for evaluation, so ``ask`` always returns.

    Args:
        algorithm: any :class:`SearchAlgorithm` whose results are float fitnesses.
        key: ``key(value) -> str``, the functional key (a :class:`FunctionalHash`).
        probe_cost: cost of one ``key`` call in full evaluations, >= 0 (no default: declare it;
            e.g. probe points / fitness points).
        structural_key: ``structural_key(value) -> str``, a cheap key that implies functional
            equality (``Program.structural_hash``), tried first; ``None`` to always probe.
        cache: a :class:`FitnessCache` (default ``FitnessCache()``: 100,000 entries, forget
            after 100 hits).
        structural_capacity: most entries of the structural map, >= 1 (default 100,000).
        audit_rate: probability of auditing a hit, in [0, 1] (default 0.02; the card advises
            1–2%).
        audit_rtol, audit_atol: audit tolerance, ``|new − cached| <= atol + rtol·|cached|``
            (defaults 1e-6 and 1e-12: equal functions reach equal fitness up to rounding of
            reordered float operations).
        max_hits_per_ask: see above, >= 1 (default 100,000).
        seed: seeds the audit draws (default 0).

    Example::

        evo = RegularizedEvolution(space.init, space.mutate, to_state=Program.to_state,
                                   from_state=Program.from_state)
        search = FunctionalHashing(evo, FunctionalHash(ProgramProbe(space.inputs)),
                                   structural_key=Program.structural_hash, probe_cost=16 / 256)
        history = run(search, fitness, budget=500, executor="inline")  # 500 full evaluations
        search.telemetry  # hits, probes, audits, effective_evaluations, ...
    """

    def __init__(
        self,
        algorithm: SearchAlgorithm,
        key: Callable[[Any], str],
        *,
        probe_cost: float,
        structural_key: Callable[[Any], str] | None = None,
        cache: FitnessCache | None = None,
        structural_capacity: int = 100_000,
        audit_rate: float = 0.02,
        audit_rtol: float = 1e-6,
        audit_atol: float = 1e-12,
        max_hits_per_ask: int = 100_000,
        seed: int = 0,
    ) -> None:
        if not isinstance(algorithm, SearchAlgorithm):
            raise TypeError(f"algorithm must be a SearchAlgorithm (got {type(algorithm).__name__})")
        if not callable(key):
            raise TypeError(f"key must be callable key(value) -> str (got {type(key).__name__})")
        if structural_key is not None and not callable(structural_key):
            raise TypeError(
                f"structural_key must be callable or None (got {type(structural_key).__name__})"
            )
        if cache is not None and not isinstance(cache, FitnessCache):
            raise TypeError(f"cache must be a FitnessCache (got {type(cache).__name__})")
        self.algorithm = algorithm
        self.key = key
        self.structural_key = structural_key
        self.probe_cost = check_non_negative("probe_cost", probe_cost)
        self.cache = FitnessCache() if cache is None else cache
        self.structural_capacity = check_int("structural_capacity", structural_capacity, low=1)
        self.audit_rate = check_in_range("audit_rate", audit_rate, 0.0, 1.0, high_inclusive=True)
        self.audit_rtol = check_non_negative("audit_rtol", audit_rtol)
        self.audit_atol = check_non_negative("audit_atol", audit_atol)
        self.max_hits_per_ask = check_int("max_hits_per_ask", max_hits_per_ask, low=1)
        self.seed = check_int("seed", seed, low=0)
        self.maximize = bool(getattr(algorithm, "maximize", True))
        self._rng = np.random.default_rng(seed)
        self._structural: OrderedDict[str, str] = OrderedDict()
        # id -> [functional key, kind ("miss" | "refresh" | "audit"), cached value or None]
        self._issued: dict[int, list] = {}
        self._inflight: dict[str, int] = {}  # functional key -> issued id evaluating it
        self._attached: dict[int, list[int]] = {}  # issued id -> duplicate ids waiting on it
        # Audits of in-flight hits: issued id -> audit ids that compare with its result, and
        # audit id -> its own result while the evaluation it audits is still pending.
        self._audits_of: dict[int, list[int]] = {}
        self._audit_results: dict[int, float] = {}
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._probe_seconds = 0.0

    # -- ask/tell ------------------------------------------------------------------------------

    def ask(self, n: int | None = None) -> list[Candidate]:
        """Candidates that need a full evaluation; hits are told to the wrapped algorithm here.

        ``n=None``: the misses of one natural batch of the wrapped algorithm (the next batch if
        all were hits), so that, e.g., evolution's initial population is complete before its
        first tournament. ``n``: exactly ``n``, drawing one candidate at a time beyond the
        first batch (fewer only if the wrapped algorithm needs results first).
        """
        if n is not None:
            check_int("n", n, low=1)
        out: list[Candidate] = []
        hits_in_a_row = 0
        while not out if n is None else len(out) < n:
            try:
                batch = self.algorithm.ask(None if n is None else n - len(out))
            except RuntimeError:
                if out:  # the wrapped algorithm needs results first; hand over what we have
                    break
                raise
            for cand in batch:
                if self._resolve(cand, force=hits_in_a_row >= self.max_hits_per_ask):
                    hits_in_a_row += 1
                else:
                    hits_in_a_row = 0
                    out.append(cand)
        return out

    def _resolve(self, cand: Candidate, force: bool) -> bool:
        """Process one candidate; True if it was answered without a full evaluation."""
        c = self._counts
        c["candidates"] += 1
        fkey = None
        if self.structural_key is not None:
            skey = str(self.structural_key(cand.value))
            fkey = self._structural.get(skey)
            if fkey is not None:
                c["structural_hits"] += 1
                self._structural.move_to_end(skey)
        if fkey is None:
            start = time.perf_counter()
            fkey = str(self.key(cand.value))
            self._probe_seconds += time.perf_counter() - start
            c["probes"] += 1
            if self.structural_key is not None:
                self._structural[skey] = fkey
                if len(self._structural) > self.structural_capacity:
                    self._structural.popitem(last=False)
        if fkey in self._inflight:
            c["hits"] += 1
            c["inflight_hits"] += 1
            ref = self._inflight[fkey]
            if not force and self._audit_draw():
                # Evaluated on its own; compared with ref's result when both are told.
                c["audits"] += 1
                self._issued[cand.id] = [fkey, "audit", None]
                self._audits_of.setdefault(ref, []).append(cand.id)
                return False
            self._attached.setdefault(ref, []).append(cand.id)
            return True
        status, cached = self.cache.lookup(fkey)
        if status == "hit":
            c["hits"] += 1
            if force:  # a long run of hits: evaluate this one so that ask() returns
                c["forced"] += 1
                self._issue(cand.id, fkey, "refresh", cached)
                return False
            if self._audit_draw():
                c["audits"] += 1
                self._issue(cand.id, fkey, "audit", cached)
                return False
            self.algorithm.tell([cand.id], [cached])
            return True
        c["refreshes" if status == "refresh" else "misses"] += 1
        self._issue(cand.id, fkey, status, cached)
        return False

    def _audit_draw(self) -> bool:
        return self.audit_rate > 0 and self._rng.random() < self.audit_rate

    def _compare(self, value: float, answer: float) -> bool:
        """Count one audit: ``value`` (the audit's own result) against the hit's ``answer``."""
        wrong = abs(value - answer) > self.audit_atol + self.audit_rtol * abs(answer)
        self._counts["audited"] += 1
        self._counts["wrong_hits"] += wrong
        return wrong

    def _issue(self, id: int, fkey: str, kind: str, cached: float | None) -> None:
        self._issued[id] = [fkey, kind, cached]
        if kind != "audit":
            self._inflight[fkey] = id

    def check_result(self, result: Any) -> None:
        check_finite_number("fitness", result)

    def tell(self, ids: Sequence[int], results: Sequence[Any]) -> None:
        """Report float fitnesses of the candidates ``ask`` returned; duplicates attached to them
        are told the same value, and the cache records each."""
        ids = check_ids(ids, self._issued, results)
        values = [check_finite_number(f"results[{k}]", r) for k, r in enumerate(results)]
        all_ids, all_values = [], []
        for i, v in zip(ids, values):
            all_ids.append(i)
            all_values.append(v)
            for j in self._attached.get(i, ()):
                all_ids.append(j)
                all_values.append(v)
        self.algorithm.tell(all_ids, all_values)  # validates; raises before any change here
        for i, v in zip(ids, values):
            fkey, kind, cached = self._issued.pop(i)
            self._attached.pop(i, None)
            self._counts["full_evaluations"] += 1
            # In-flight hits audited against this evaluation: compare those already told, give
            # the others this result as the answer their hit would have got.
            for a in self._audits_of.pop(i, ()):
                if a in self._audit_results:
                    self._compare(self._audit_results.pop(a), v)
                else:
                    self._issued[a][2] = v
            if kind == "audit":
                if cached is not None:
                    mismatch = self._compare(v, cached)
                elif self._audit_pending(i):
                    self._audit_results[i] = v  # compared when the audited evaluation is told
                    continue
                else:
                    continue  # the evaluation it audited was discarded: nothing to compare
            else:
                mismatch = cached is not None and abs(v - cached) > (
                    self.audit_atol + self.audit_rtol * abs(cached)
                )
                if kind == "refresh":
                    self._counts["refresh_mismatches"] += mismatch
                del self._inflight[fkey]
            # Within tolerance: noise, averaged. Beyond: the key is shared by another function
            # (a collision); keep the fresh value rather than a mean of two functions.
            self.cache.record(fkey, v, replace=mismatch)

    def _audit_pending(self, audit_id: int) -> bool:
        return any(audit_id in audits for audits in self._audits_of.values())

    def discard(self, ids: Sequence[int]) -> None:
        """Forget failed evaluations, and the duplicates attached to them (the cache is
        unchanged: the next occurrence of the function is evaluated afresh)."""
        ids = check_ids(ids, self._issued)
        attached = [j for i in ids for j in self._attached.get(i, ())]
        self.algorithm.discard(list(ids) + attached)
        for i in ids:
            fkey, kind, _ = self._issued.pop(i)
            self._attached.pop(i, None)
            if kind != "audit":
                del self._inflight[fkey]
            # Audits of a discarded evaluation have no answer to compare with.
            for a in self._audits_of.pop(i, ()):
                self._audit_results.pop(a, None)
            for audits in self._audits_of.values():
                if i in audits:
                    audits.remove(i)
            self._counts["discarded"] += 1

    @property
    def pending(self) -> list[int]:
        """Ids returned by ``ask`` and not yet told or discarded (attached duplicates are not
        listed: they resolve with the evaluation they wait on)."""
        return sorted(self._issued)

    def objective_of(self, result: Any) -> float:
        return self.algorithm.objective_of(result)

    # -- telemetry -----------------------------------------------------------------------------

    @property
    def telemetry(self) -> dict[str, float]:
        """Counters and rates (a plain dict, a copy):

        - ``candidates``: proposals of the wrapped algorithm processed (children + initial);
        - ``hits``: candidates whose function was known: cache hits (audited or forced ones
          included) and ``inflight_hits`` (duplicates of a function being evaluated);
          ``hit_rate = hits / candidates``;
        - ``structural_hits``: candidates whose structural key was already known (no probe);
          ``structural_hit_rate`` is what a structural hash alone would have caught;
        - ``probes``: ``key`` calls; ``probe_seconds``: their measured wall time;
        - ``misses``, ``refreshes``, ``audits``, ``forced``: candidates ``ask`` returned, by
          reason; ``full_evaluations``: results told (discarded ones are not counted);
          ``effective_evaluations = full_evaluations + probe_cost · probes``;
        - ``audits`` (issued), ``audited`` (compared: the audit and, for an in-flight hit, the
          evaluation it duplicates were both told), ``wrong_hits``, ``wrong_hit_rate =
          wrong_hits / audited``, an unbiased estimate of the share of hits, cache and in-flight
          alike, answered with a wrong fitness (audits are a uniform draw of all hits), and its
          95% Clopper-Pearson interval ``wrong_hit_rate_low``, ``wrong_hit_rate_high``;
          ``refreshes`` and ``refresh_mismatches`` likewise for forget-after-N re-evaluations;
        - ``evaluations_saved = candidates − effective_evaluations`` (against no cache, where
          each candidate is one full evaluation); ``discarded``; ``cache_size``.
        """
        t: dict[str, float] = dict(self._counts)
        n = max(t["candidates"], 1)
        t["hit_rate"] = t["hits"] / n
        t["structural_hit_rate"] = t["structural_hits"] / n
        t["probe_cost"] = self.probe_cost
        t["probe_seconds"] = self._probe_seconds
        t["effective_evaluations"] = t["full_evaluations"] + self.probe_cost * t["probes"]
        t["evaluations_saved"] = t["candidates"] - t["effective_evaluations"]
        t["wrong_hit_rate"] = t["wrong_hits"] / t["audited"] if t["audited"] else 0.0
        low, high = binomial_interval(int(t["wrong_hits"]), int(t["audited"]))
        t["wrong_hit_rate_low"], t["wrong_hit_rate_high"] = low, high
        t["cache_size"] = len(self.cache)
        return t

    # -- state ---------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        """The wrapped algorithm's state, the cache, the structural map, in-flight bookkeeping,
        counters and the audit RNG (plain data)."""
        return {
            "saved_by": type(self).__name__,
            "version": _STATE_VERSION,
            "algorithm": self.algorithm.state_dict(),
            "cache": self.cache.state_dict(),
            "structural_keys": list(self._structural),
            "structural_values": list(self._structural.values()),
            "issued": [[i, *e] for i, e in sorted(self._issued.items())],
            "attached": [[i, list(js)] for i, js in sorted(self._attached.items())],
            "audits_of": [[i, list(js)] for i, js in sorted(self._audits_of.items())],
            "audit_results": [[i, v] for i, v in sorted(self._audit_results.items())],
            "counts": dict(self._counts),
            "probe_seconds": self._probe_seconds,
            "rng": rng_to_state(self._rng),
            "seed": self.seed,
        }

    def load_state_dict(self, state: dict) -> None:
        check_state_kind(state, type(self).__name__, _STATE_VERSION, ("algorithm", "cache"))
        self.algorithm.load_state_dict(state["algorithm"])
        self.cache.load_state_dict(state["cache"])
        self._structural = OrderedDict(
            zip(map(str, state["structural_keys"]), map(str, state["structural_values"]))
        )
        self._issued = {
            int(i): [str(k), str(kind), None if v is None else float(v)]
            for i, k, kind, v in state["issued"]
        }
        self._inflight = {e[0]: i for i, e in self._issued.items() if e[1] != "audit"}
        self._attached = {int(i): [int(j) for j in js] for i, js in state["attached"]}
        self._audits_of = {int(i): [int(j) for j in js] for i, js in state.get("audits_of", [])}
        self._audit_results = {int(i): float(v) for i, v in state.get("audit_results", [])}
        self._counts = {k: int(state["counts"][k]) for k in _COUNTERS}
        self._probe_seconds = float(state["probe_seconds"])
        self._rng = rng_from_state(state["rng"])
        self.seed = int(state["seed"])


_COUNTERS = (
    "candidates",
    "hits",
    "inflight_hits",
    "structural_hits",
    "probes",
    "misses",
    "full_evaluations",
    "audits",
    "audited",
    "wrong_hits",
    "refreshes",
    "refresh_mismatches",
    "forced",
    "discarded",
)
