"""Import arrows (DESIGN.md): search depends on numpy, scipy and torch only."""

import subprocess
import sys


def test_search_does_not_import_the_training_optimizers() -> None:
    code = "import sys, optforge.search; print('optforge.optim' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_root_exposes_the_registry() -> None:
    import optforge

    assert "lion" in optforge.list_optimizers()
    assert optforge.create_optimizer.__module__ == "optforge.registry"
