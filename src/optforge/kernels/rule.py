"""The ``Rule`` every backend runs, and the loop that is every backend's reference."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

__all__ = ["Rule", "loop", "unscaled", "write"]


@dataclass(frozen=True, eq=False)
class Rule:
    """A pure per-tensor update: ``fn(*written, *read, **hyper) -> new values of the written``.

    Args:
        fn: the math. Tensors written come first (parameter, state), tensors only read last
            (gradient). Hyperparameters are Python scalars (eager) or 0-d tensors (compiled):
            the same code serves both. The fast backends run it on each tensor flattened to
            1-D (and ``elementwise`` rules on concatenations and slices of tensors), so its
            result must not depend on the tensor's shape (norms over the whole tensor are fine).
        n_out: how many leading tensors the rule returns new values for.
        elementwise: output element i depends only on input elements i (no norms, no
            reductions); such a rule may run on a concatenation of tensors, or on slices of one.
        exact: the compiled backend gives the loop's bits on fp32 tensors (only ops that round
            the same in eager ATen and inductor's C++: +, -, ×, ÷, sign, ``exact_sqrt``; no
            reductions). Shown by tests; lets ``auto`` switch to compiled graphs mid-run on
            CPU without changing a result.
        base, grad_list: set by ``unscaled`` only: the rule this one wraps, and the position
            of the gradient among its tensors.
    """

    fn: Callable[..., tuple[Tensor, ...]]
    n_out: int
    elementwise: bool = True
    name: str = field(default="")
    exact: bool = False
    base: Rule | None = None
    grad_list: int = -1

    def __post_init__(self) -> None:
        if not self.name:
            object.__setattr__(self, "name", self.fn.__name__)

    def __call__(self, *tensors: Tensor, **hyper: Any) -> tuple[Tensor, ...]:
        return self.fn(*tensors, **hyper)

    def __repr__(self) -> str:
        return f"Rule({self.name})"


_UNSCALED: dict[tuple[Rule, int], Rule] = {}


def unscaled(rule: Rule, grad_list: int) -> Rule:
    """``rule`` reading its gradient (tensor ``grad_list``) times the hyperparameter
    ``inv_grad_scale``: the unscale of a ``torch.amp.GradScaler`` step done where the rule
    reads the gradient (inside the compiled graph, the tile of foreach), not as a pass of its
    own. ``grad * inv_grad_scale`` in the gradient's dtype is what ``GradScaler.unscale_``
    computes, so the result equals unscaling first. One wrapper per (rule, position), so
    compiled graphs are cached as for the rule itself."""
    key = (rule, grad_list)
    wrapped = _UNSCALED.get(key)
    if wrapped is None:

        def fn(*tensors: Tensor, inv_grad_scale: Any, **hyper: Any) -> tuple[Tensor, ...]:
            grad = tensors[grad_list] * inv_grad_scale
            return rule.fn(*tensors[:grad_list], grad, *tensors[grad_list + 1 :], **hyper)

        fn.__name__ = f"{rule.name}_unscaled"
        wrapped = _UNSCALED[key] = Rule(
            fn, rule.n_out, rule.elementwise, fn.__name__, rule.exact, base=rule,
            grad_list=grad_list,
        )
    return wrapped


def write(outs: Sequence[Tensor], values: Sequence[Tensor]) -> None:
    for out, value in zip(outs, values):
        out.copy_(value)


def loop(rule: Rule, lists: Sequence[Sequence[Tensor]], hyper: Mapping[str, Any]) -> None:
    """The reference: the rule called eagerly on each tensor as it is (shape and strides kept)."""
    for tensors in zip(*lists):
        write(tensors[: rule.n_out], rule(*tensors, **hyper))


def flat_view(tensors: Sequence[Tensor]) -> list[Tensor] | None:
    """1-D views of tensors that share one dense layout (contiguous, channels_last, ...), or None.

    A dense tensor's elements fill ``numel`` consecutive storage slots whatever its strides,
    so tensors with equal strides line up element for element in their 1-D views.
    """
    first = tensors[0]
    if first.is_contiguous():
        if all(t.is_contiguous() for t in tensors):
            return [t.view(-1) for t in tensors]
        return None
    stride = first.stride()
    if not _dense(first) or any(t.stride() != stride or t.shape != first.shape for t in tensors):
        return None
    n = first.numel()
    return [t.as_strided((n,), (1,)) for t in tensors]


def _dense(t: Tensor) -> bool:
    """Non-overlapping and dense: the strides are a permutation of contiguous strides."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda x: x[1]):
        if size == 1:
            continue
        if stride != expected:
            return False
        expected *= size
    return True
