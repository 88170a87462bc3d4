"""The multi-tensor eager backend: the rule run on packs of small tensors and tiles of large ones.

For elementwise rules. Small tensors (biases, norms) are concatenated into packs of up to
``PACK`` elements, and the rule runs once per pack: one dispatch per op for many tensors
(what torch's ``_foreach_`` ops buy). ``PACK`` is ATen's grain size, below which an op runs on
one thread, so a pack opens no OpenMP parallel region (on a busy machine each region waits for
every thread to be scheduled). Tensors larger than ``TILE`` are sliced into 1-D tiles written in
place, so the rule's temporaries stay tile-sized and cached instead of faulting in fresh
full-size pages for every op. Everything else runs as in the loop. Results equal the loop's
bit for bit: the same ops on the same elements in the same dtype.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from optforge.kernels.rule import Rule, flat_view, loop, write

__all__ = ["PACK", "TILE", "run_foreach"]

#: largest tensor sliced into tiles, and the tile size: p, m, g and a rule's temporaries of one
#: tile (~10 x 4 MiB in fp32) stay in a server CPU's last-level cache.
TILE = 1 << 20
#: small tensors are packed up to this many elements (ATen's serial grain size, 32768).
PACK = 1 << 15


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
        if n > PACK:
            for start in range(0, n, TILE):
                tile = [t[start : start + TILE] for t in flat] if n > TILE else flat
                write(tile[:n_out], rule(*tile, **hyper))
            continue
        if pending_numel + n > PACK:
            _packed(rule, pending, hyper)
            pending, pending_numel = [], 0
        pending.append(flat)
        pending_numel += n
        if pending_numel >= PACK:
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
