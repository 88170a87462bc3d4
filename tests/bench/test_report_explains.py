"""Reports that explain: hyperparameters, winners, workloads, time cuts, figures, CSV, pandas."""

from __future__ import annotations

import csv
import json

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.figure import Figure  # noqa: E402

from optforge.bench.report import summarize, write_report  # noqa: E402
from optforge.bench.results import load_results  # noqa: E402

WORKLOADS = {
    "illcond": {"description": "ill-conditioned regression", "metric_name": "mse",
                "higher_is_better": False, "target": 0.04, "step_budget": 4000,
                "time_budget_s": 60.0, "eval_every_steps": 100, "held_out": False},
    "digits": {"description": "small CNN on digits", "metric_name": "accuracy",
               "higher_is_better": True, "target": 0.98, "step_budget": 3000,
               "time_budget_s": 45.0, "eval_every_steps": 25, "held_out": False},
}


def _rec(wl, sub, trial, lr, metrics, stop, steps_to_target=None):
    curve = [{"step": 100 * (i + 1), "train_time_s": float(i + 1), "metric": m,
              "train_loss": m} for i, m in enumerate(metrics)]
    reached = steps_to_target is not None
    return {"trial_id": f"{wl}--{sub}--s0-t{trial}", "workload": wl, "submission": sub,
            "study": 0, "trial": trial, "seed": 7, "hparams": {"learning_rate": lr},
            "hparams_used": {"learning_rate": lr, "weight_decay": 0.1}, "status": "ok",
            "stop_reason": stop, "reached_target": reached,
            "time_to_target_s": float(len(metrics)) if reached else None,
            "steps_to_target": steps_to_target, "steps": 100 * len(metrics),
            "train_time_s": float(len(metrics)), "eval_time_s": 0.1,
            "best_metric": min(metrics) if WORKLOADS[wl]["higher_is_better"] is False
            else max(metrics), "final_metric": metrics[-1], "metric_name": "m",
            "higher_is_better": WORKLOADS[wl]["higher_is_better"], "curve": curve}


@pytest.fixture
def run_dir(tmp_path):
    recs = [
        _rec("illcond", "adamw", 0, 1e-3, [0.35, 0.1, 0.039], "target", 300),
        _rec("illcond", "adamw", 1, 3e-2, [0.35, 0.2, 0.15], "step_budget"),
        _rec("illcond", "lion", 0, 3e-4, [0.35, 0.3, 0.25, 0.2, 0.038], "target", 500),
        _rec("illcond", "lion", 1, 1e-5, [0.35, 0.34], "time_budget"),
        _rec("digits", "adamw", 0, 1e-3, [0.5, 0.99], "target", 200),
        _rec("digits", "adamw", 1, 3e-2, [0.5, 0.6], "diverged"),
        _rec("digits", "lion", 0, 3e-4, [0.4, 0.9], "time_budget"),
        _rec("digits", "lion", 1, 1e-5, [0.3, 0.5], "step_budget"),
    ]
    (tmp_path / "trials").mkdir()
    for r in recs:
        (tmp_path / "trials" / f"{r['trial_id']}.json").write_text(json.dumps(r))
    (tmp_path / "run.json").write_text(json.dumps({
        "config": {"workloads": list(WORKLOADS), "submissions": ["adamw", "lion"],
                   "ruleset": "external", "num_trials": 2, "num_studies": 1, "seed": 0},
        "ruleset": {"name": "external", "num_trials": 2, "num_studies": 1, "budget_scale": 1.0},
        "workloads": WORKLOADS, "trial_ids": [r["trial_id"] for r in recs], "sessions": [],
    }))
    return tmp_path


def test_report_shows_hyperparameters_winners_workloads_and_time_cuts(run_dir):
    report = write_report(run_dir, figures=False).read_text()
    # every trial's configuration, in the all-trials table
    assert "| illcond--lion--s0-t1 | ok | time_budget † |" in report
    assert "learning_rate=1e-05, weight_decay=0.1" in report
    # each study's winner with its configuration
    winners = report.split("## Winning configurations")[1].split("##")[0]
    assert ("| illcond | adamw | 0 | 2 | illcond--adamw--s0-t0 | 3 | 300 | 0.039 | "
            "learning_rate=0.001, weight_decay=0.1 |") in winners
    assert "| digits | lion | 0 | 2 | digits--lion--s0-t0 | not reached |" in winners
    # what each workload is
    assert "| illcond | ill-conditioned regression | mse ≤ 0.04 | 4,000 | 60 |" in report
    # the trials cut by time are marked, with what it means
    assert "† 2 trial(s) were cut by their time budget" in report
    assert "500 (1/1) †" in report  # lion's illcond steps cell: a trial of it was cut


def test_curves_log_axis_and_end_markers(run_dir, monkeypatch):
    figures = {}
    real_savefig = Figure.savefig

    def capture(fig, path, **kw):
        figures[str(path).rsplit("/", 1)[-1]] = fig
        return real_savefig(fig, path, **kw)

    monkeypatch.setattr(Figure, "savefig", capture)
    write_report(run_dir)
    ill, dig = figures["curves_illcond.png"].axes, figures["curves_digits.png"].axes
    assert ill[0].get_yscale() == "log"  # 0.35 down to a 0.04 target
    assert dig[0].get_yscale() == "linear"  # an accuracy stays linear
    markers = {ln.get_marker() for ln in dig[0].get_lines()}
    assert {"*", "X", "v", "s"} <= markers  # target, diverged, time budget, step budget
    labels = [t.get_text() for t in dig[1].get_legend().get_texts()]
    assert "end: time budget spent" in labels and "end: diverged" in labels
    # the per-workload bar chart of ratios to the best
    assert (run_dir / "ratios.png").read_bytes()[:4] == b"\x89PNG"
    assert "![ratios to the best](ratios.png)" in (run_dir / "report.md").read_text()
    ratios = summarize(run_dir)["ratios_to_best"]["steps"]
    assert ratios["illcond"] == {"adamw": 1.0, "lion": pytest.approx(500 / 300)}
    assert ratios["digits"] == {"adamw": 1.0, "lion": None}


def test_csv_and_dataframe_of_trials(run_dir):
    write_report(run_dir, figures=False)
    with (run_dir / "trials.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 and rows[0]["trial_id"] == "illcond--adamw--s0-t0"
    assert rows[0]["hp.learning_rate"] == "0.001" and rows[0]["steps_to_target"] == "300"
    pd = pytest.importorskip("pandas")
    df = load_results(run_dir)
    assert isinstance(df, pd.DataFrame) and len(df) == 8
    assert df.groupby("submission")["steps_to_target"].min().to_dict() == {
        "adamw": 200.0, "lion": 500.0}
    assert df["hp.weight_decay"].eq(0.1).all()


def test_load_results_without_pandas_says_what_to_do(run_dir, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pandas(name, *a, **kw):
        if name == "pandas":
            raise ImportError("no pandas")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with pytest.raises(ImportError, match=r"load_results needs pandas .*trials.csv"):
        load_results(run_dir)
