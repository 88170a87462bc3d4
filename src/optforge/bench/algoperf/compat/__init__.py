"""Holds ``algoperf``, a stand-in for the parts of MLCommons' ``algoperf`` package that PyTorch
submission files import; :mod:`optforge.bench.algoperf.loader` serves it under the name
``algoperf`` while it loads a submission file, when the real package is not installed."""
