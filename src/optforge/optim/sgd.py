"""SGD with heavy-ball momentum as an optforge rule (``sgd_momentum_direction`` +
``apply_update``): the rule the Triton SGD kernel is registered for.

    b ← μ·b + (1 − τ)·g ;  u = b  (Nesterov: g + μ·b) ;  θ ← θ·(1 − ηλ) − η·u

Weight decay is decoupled (SGDW); torch's SGD adds λθ to the gradient instead.
"""

from __future__ import annotations

from optforge.optim.rules import direction_rule, sgd_momentum_direction

__all__ = ["sgd_momentum_rule"]

#: ``(param, momentum_buffer, grad)``; hyper: lr, weight_decay, maximize, momentum, dampening,
#: nesterov.
sgd_momentum_rule = direction_rule(sgd_momentum_direction, n_state=1, name="sgd_momentum")
