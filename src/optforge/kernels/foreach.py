"""The multi-tensor eager backend: the rule run on cache-sized tiles of the whole list.

For elementwise rules. The group's tensors are cut into tiles of about ``TILE`` elements: a
large tensor is sliced (1-D views, written in place), small tensors are concatenated until a
tile is full (their results are copied back). Each op of the rule then runs once per tile:
one dispatch per op for many small tensors (what torch's ``_foreach_`` ops buy), and on large
tensors the rule's temporaries are tile-sized, so they stay in cache and never fault in fresh
pages (the plain loop allocates full-size temporaries for every op). Results equal the loop's
bit for bit: the same ops on the same elements in the same dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from optforge.kernels.rule import Rule, flat_view, loop, write

__all__ = ["TILE", "run_foreach"]

#: elements per tile: p, m, g and a rule's temporaries of one tile (~10 x 1 MiB in fp32)
#: stay in a server CPU's cache.
TILE = 1 << 18


def run_foreach(rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]) -> None:
    n_out = rule.n_out
    pending: list[list[Tensor]] = []  # 1-D views of small tensors awaiting a tile
    pending_numel = 0
    for tensors in zip(*lists):
        flat = flat_view(tensors)
        if flat is None:  # strided views: rare, run as they are
            loop(rule, [[t] for t in tensors], hyper)
            continue
        n = flat[0].numel()
        if n > TILE // 2:
            for start in range(0, n, TILE):
                tile = [t[start : start + TILE] for t in flat]
                write(tile[:n_out], rule(*tile, **hyper))
            continue
        pending.append(flat)
        pending_numel += n
        if pending_numel >= TILE:
            _packed(rule, pending, hyper)
            pending, pending_numel = [], 0
    if pending:
        _packed(rule, pending, hyper)


def _packed(rule: Rule, entries: list[list[Tensor]], hyper: Mapping[str, Any]) -> None:
    """The rule once over the concatenation of several small tensors, results copied back."""
    if len(entries) == 1:
        write(entries[0][: rule.n_out], rule(*entries[0], **hyper))
        return
    columns = list(zip(*entries))
    new = rule(*(torch.cat(col) for col in columns), **hyper)
    sizes = [e[0].numel() for e in entries]
    for outs, value in zip(columns[: rule.n_out], new):
        torch._foreach_copy_(list(outs), list(value.split(sizes)))
