"""``optforge bench``: dispatch, one-line errors for bad input, and a tiny end-to-end run."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from optforge.__main__ import main


def _err_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_list(capsys):
    assert main(["bench", "list"]) == 0
    out = capsys.readouterr().out
    assert "digits_cnn" in out and "(held-out variant of digits_cnn)" in out
    assert "adamw" in out and "lion" in out


def test_python_dash_m_works():
    p = subprocess.run([sys.executable, "-m", "optforge", "bench", "list"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "submissions:" in p.stdout


def test_bare_bench_is_the_quick_suite(monkeypatch, tmp_path):
    import optforge.bench.cli as cli

    seen = {}
    monkeypatch.setattr(cli, "_run", lambda args, cfg: seen.update(args=args, cfg=cfg) or 0)
    monkeypatch.chdir(tmp_path)
    assert main(["bench"]) == 0
    cfg = seen["cfg"]
    from optforge.bench.workloads import list_workloads

    assert cfg.workloads == list_workloads(include_held_out=False)
    assert cfg.submissions == ["adamw", "lion"]
    assert (cfg.ruleset, cfg.num_studies, cfg.torch_threads) == ("self", 1, 1)
    assert seen["args"].out == "bench-out"
    assert main(["bench", "--out", "x", "--jobs", "1", "--max-steps", "5"]) == 0
    assert seen["args"].out == "x" and seen["cfg"].max_steps == 5


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "--workloads", "nope", "--submissions", "adamw"],
         r"unknown workload 'nope' \(known: .*click_ctr"),
        (["run", "--workloads", "click_ctr", "--submissions", "adamw,nope"],
         r"unknown submission 'nope' \(known: .*lion"),
        (["run", "--workloads", "click_ctr", "--submissions", "adamw", "--trials", "0"],
         r"--trials must be >= 1 \(got 0\)"),
        (["run", "--workloads", "click_ctr", "--submissions", "adamw", "--ruleset", "fast"],
         r"invalid choice: 'fast'"),
        (["report", "{tmp}/empty"], r"holds no benchmark run"),
        (["frobnicate"], r"unrecognized arguments: frobnicate"),
    ],
)
def test_bad_input_one_line_nonzero(argv, match, capsys, tmp_path):
    (tmp_path / "empty").mkdir()
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    if argv[0] == "run":
        argv += ["--out", str(tmp_path / "out")]
    assert main(["bench", *argv]) != 0
    line = _err_line(capsys)
    assert line.startswith("optforge")
    assert re.search(match, line), line


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ('{"learning_rate": {"min": 1e-4, "max": ', r"not valid JSON \(.* line 1, column"),
        ('{"learning_rate": {"min": 1e-4, "max": 1e-2, "scaling": "cubic"}}',
         r"'learning_rate'.scaling must be 'linear' or 'log' \(got 'cubic'\)"),
        ('[1, 2]', r"configuration 0 must be an object"),
    ],
)
def test_malformed_search_space_file(content, match, capsys, tmp_path):
    f = tmp_path / "space.json"
    f.write_text(content)
    rc = main(["bench", "run", "--workloads", "click_ctr", "--submissions", "adamw",
               "--search-space", str(f), "--out", str(tmp_path / "out")])
    assert rc != 0
    assert re.search(match, _err_line(capsys))


def test_unwritable_out(capsys, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    rc = main(["bench", "run", "--workloads", "click_ctr", "--submissions", "adamw",
               "--out", str(blocker / "out")])
    assert rc != 0
    assert "cannot write to output folder" in _err_line(capsys)


def test_end_to_end_tiny_run_and_resume(capsys, tmp_path):
    out = tmp_path / "out"
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"learning_rate": {"min": 1e-3, "max": 1e-2, "scaling": "log"}}))
    argv = ["bench", "run", "--workloads", "click_ctr", "--submissions", "adamw,lion",
            "--ruleset", "external", "--trials", "2", "--studies", "1", "--max-steps", "8",
            "--search-space", str(space), "--jobs", "1", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    stdout = capsys.readouterr().out
    assert "4 trial(s) run, 0 already recorded" in stdout
    assert "adamw" in stdout and "click_ctr" in stdout
    records = [json.loads(p.read_text()) for p in (out / "trials").glob("*.json")]
    assert len(records) == 4 and {r["status"] for r in records} == {"ok"}
    assert all(r["steps"] == 8 and r["torch_threads"] == 1 for r in records)
    assert all(1e-3 <= r["hparams"]["learning_rate"] <= 1e-2 for r in records)
    report = (out / "report.md").read_text()
    assert "## Time to target (s)" in report and "1 torch thread(s) per trial" in report
    assert "optforge bench run --workloads click_ctr" in report
    assert (out / "performance_profile.png").exists() and (out / "curves_click_ctr.png").exists()

    assert main(argv) == 0  # resume: everything is recorded already
    assert "0 trial(s) run, 4 already recorded" in capsys.readouterr().out
    assert main(["bench", "report", str(out)]) == 0
    assert "report:" in capsys.readouterr().out


def test_no_time_budget_reaches_every_trial_and_the_report(capsys, tmp_path):
    out = tmp_path / "out"
    argv = ["bench", "run", "--workloads", "click_ctr", "--submissions", "adamw", "--ruleset",
            "self", "--studies", "1", "--max-steps", "5", "--no-time-budget", "--jobs", "0",
            "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["config"]["time_budgets"] is False
    (rec,) = [json.loads(p.read_text()) for p in (out / "trials").glob("*.json")]
    assert rec["time_budget"] is False and rec["time_budget_s"] is None
    assert "time budgets off" in (out / "report.md").read_text()
    # a run with time budgets is another configuration
    assert main([a for a in argv if a != "--no-time-budget"]) == 2
    assert "different configuration (time_budgets)" in capsys.readouterr().err
