"""Your own submission and workload by module:attr, the docs' examples run as scripts, --version."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from optforge.__main__ import main

ROOT = Path(__file__).resolve().parents[2]


def _doc_block(marker: str) -> str:
    """The Python code block that follows ``<!-- marker -->`` in docs/harness.md."""
    text = (ROOT / "docs" / "harness.md").read_text()
    after = text.split(f"<!-- {marker} -->", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_version(capsys):
    from optforge import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"optforge {__version__}\n"


def test_list_shows_budgets_descriptions_and_defaults(capsys):
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"digits_cnn +accuracy >= 0.98; 3,000 steps, 45 s; every 25 steps", out)
    assert "small CNN on sklearn load_digits" in out
    assert re.search(r"lion +learning_rate=0.0003, beta1=0.9, beta2=0.99, weight_decay=0.5", out)


def test_own_submission_and_workload_from_the_cli(tmp_path, monkeypatch, capsys):
    (tmp_path / "mybench.py").write_text(_doc_block("mybench-example"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    argv = ["bench", "run", "--workloads", "mybench:NoisyLinear", "--submissions",
            "mybench:SIGN_SGD,adamw", "--ruleset", "self", "--studies", "1", "--jobs", "2",
            "--max-steps", "100", "--no-progress", "--out", str(out)]
    assert main(argv) == 0  # in a spawn pool: each worker imports mybench itself
    records = {json.loads(p.read_text())["submission"]: json.loads(p.read_text())
               for p in (out / "trials").glob("*.json")}
    assert set(records) == {"my_signsgd", "adamw"}
    assert all(r["status"] == "ok" and r["workload"] == "noisy_linear"
               for r in records.values())
    assert records["my_signsgd"]["reached_target"] is True
    assert records["my_signsgd"]["hparams_used"] == {"learning_rate": 1e-2, "weight_decay": 0.0}
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["plugins"] == ["mybench:NoisyLinear", "mybench:SIGN_SGD"]
    assert info["config"]["workloads"] == ["noisy_linear"]
    report = (out / "report.md").read_text()
    assert "| noisy_linear | linear regression, 16 features" in report
    capsys.readouterr()
    assert main(argv) == 0  # resume
    assert "0 trial(s) run, 2 already recorded" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("flag", "value", "match"),
    [
        ("--submissions", "mybench:NoisyLinear", r"mybench:NoisyLinear is a workload, not a "
                                                 r"submission"),
        ("--submissions", "nosuchmodule:X", r"cannot import 'nosuchmodule'"),
        ("--workloads", "mybench:Nope", r"'mybench' has no attribute 'Nope'"),
        ("--workloads", "mybench:torch", r"must be a Submission or Workload"),
    ],
)
def test_bad_module_attr_exit_2(flag, value, match, tmp_path, monkeypatch, capsys):
    (tmp_path / "mybench.py").write_text(_doc_block("mybench-example"))
    monkeypatch.chdir(tmp_path)
    argv = {"--workloads": "click_ctr", "--submissions": "adamw", flag: value}
    rc = main(["bench", "run", "--workloads", argv["--workloads"], "--submissions",
               argv["--submissions"], "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and re.search(match, err), err


@pytest.mark.slow  # ~30-90 s; the guard test below covers the crash by default
def test_from_python_example_runs_as_a_script(tmp_path):
    pytest.importorskip("distributed")
    pytest.importorskip("pandas")
    (tmp_path / "run_bench.py").write_text(_doc_block("from-python-example"))
    p = subprocess.run([sys.executable, "run_bench.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.returncode == 0, p.stderr[-3000:]
    assert "click_ctr--adamw--s0-t0" in p.stdout  # the DataFrame printed
    for run in ("ext1", "ext1-dask"):
        recs = sorted((tmp_path / "runs" / run / "trials").glob("*.json"))
        assert len(recs) == 4
    assert (tmp_path / "runs" / "ext1" / "report.md").exists()


def test_script_without_main_guard_stops_with_a_clear_error(tmp_path):
    script = _doc_block("from-python-example").replace('if __name__ == "__main__":', "if True:")
    (tmp_path / "run_bench.py").write_text(script)
    p = subprocess.run([sys.executable, "run_bench.py"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert p.returncode != 0
    assert "if __name__ == \"__main__\":" in p.stderr
