"""Stand-in for MLCommons ``algoperf`` (v0.6) while a submission file loads: ``spec``,
``pytorch_utils`` and ``random_utils`` with the names and behaviour PyTorch submissions use on
one CPU process (no DDP, no GPU). Written for optforge; see docs/harness.md."""
