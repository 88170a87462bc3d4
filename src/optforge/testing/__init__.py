"""The conformance suite as a library: point it at any optimizer, as ``optuna.testing`` does.

``Spec`` describes an optimizer (factory, configs, bad inputs, ``Capabilities``);
``conformance_cases(specs)`` gives pytest parameters for every check that applies;
``run_checks(specs)`` runs them without pytest. ``optforge.testing.specs.SPECS`` holds optforge's
own optimizers. See the docs page "Adding an optimizer".
"""

from optforge.testing.conformance import CHECKS, Spec, check, conformance_cases, run_checks

__all__ = ["CHECKS", "Spec", "check", "conformance_cases", "run_checks"]
