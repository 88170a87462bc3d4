"""AlgoPerf compatibility: run AlgoPerf submission files unmodified, score by AlgoPerf's rules,
and read AlgoPerf's logs.

- ``compat``: the stand-in ``algoperf`` package (``spec``, ``pytorch_utils``,
  ``random_utils``) served while a submission file loads, when the real one is absent;
- ``loader``: loading a submission file (a path, or ``module:attribute``);
- ``workload``: a CPU workload presented as the AlgoPerf workload it stands in for;
- ``submission``: a loaded file as an optforge submission, called as AlgoPerf calls it;
- ``protocol``: the ``algoperf`` and ``optforge`` scoring protocols;
- ``logs``: AlgoPerf ``eval_measurements.csv`` logs imported as an optforge run.

See docs/harness.md, "AlgoPerf submissions, search spaces and logs".
"""
