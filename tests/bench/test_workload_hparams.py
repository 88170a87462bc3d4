"""AlgoPerf's workload-side hyperparameters (dropout, label smoothing) and search-space checks."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from optforge.bench.cli import bench_main
from optforge.bench.submission import get_submission
from optforge.bench.workloads import get_workload, list_workloads


@pytest.mark.parametrize("name", list_workloads(include_held_out=False))
def test_dropout_rate_reaches_the_model(name: str) -> None:
    w = get_workload(name)
    batch = w.train_batch(0, 0, 8)
    plain, zero = w.init_model(0), w.init_model(0, dropout_rate=0.0)
    dropped = w.init_model(0, dropout_rate=0.5, aux_dropout_rate=0.5)
    # the calibrated model is unchanged: same parameters, same loss, no dropout at rate 0
    for a, b in zip(plain.state_dict().values(), dropped.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert torch.equal(w.loss(plain, batch), w.loss(zero, batch))
    torch.manual_seed(0)
    assert not torch.equal(w.loss(plain, batch), w.loss(dropped, batch))
    dropped.eval()
    plain.eval()
    assert torch.equal(w.loss(plain, batch), w.loss(dropped, batch))  # eval: no dropout


def test_dropout_rate_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="dropout_rate must be in"):
        get_workload("digits_cnn").init_model(0, dropout_rate=1.0)


def test_label_smoothing_reaches_the_loss() -> None:
    w = get_workload("digits_cnn")
    model, batch = w.init_model(0), w.train_batch(0, 0, 16)
    x, y = batch
    logits = model(x)
    want = (0.9 * F.cross_entropy(logits, y)
            + 0.1 * (-F.log_softmax(logits, 1).mean(1)).mean())
    torch.testing.assert_close(w.loss(model, batch, 0.1), want)
    ctr = get_workload("click_ctr")
    m, b = ctr.init_model(0), ctr.train_batch(0, 0, 16)
    smoothed = F.binary_cross_entropy_with_logits(m(b[0], b[1]), b[2] * 0.8 + 0.1)
    torch.testing.assert_close(ctr.loss(m, b, 0.2), smoothed)
    reg = get_workload("illcond_regression")  # regression ignores it, as AlgoPerf's fastMRI
    m, b = reg.init_model(0), reg.train_batch(0, 0, 16)
    assert torch.equal(reg.loss(m, b, 0.3), reg.loss(m, b))


def test_workload_hparams_never_reach_the_optimizer() -> None:
    sub = get_submission("adamw")
    hp = {**sub.default_hparams, "label_smoothing": 0.1, "dropout_rate": 0.1,
          "aux_dropout_rate": 0.0}
    kwargs = sub.optimizer_kwargs(hp)
    assert not {"label_smoothing", "dropout_rate", "aux_dropout_rate"} & set(kwargs)
    w = get_workload("digits_cnn")
    model = w.init_model(0)
    state = sub.init_optimizer_state(w, model, hp, torch.Generator())
    sub.update_params(w, model, hp, w.train_batch(0, 0, 8), state, 0, torch.Generator())


def _run(tmp_path, space, capsys, *extra: str) -> tuple[int, str]:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    out = tmp_path / "out"
    rc = bench_main(["run", "--workloads", "digits_cnn", "--submissions", "adamw",
                     "--search-space", str(path), "--trials", "2", "--studies", "1",
                     "--max-steps", "3", "--out", str(out), "--no-progress", "--jobs", "1",
                     *extra])
    return rc, capsys.readouterr().err


def test_algoperf_space_with_workload_hparams_runs(tmp_path, capsys) -> None:
    space = {"learning_rate": {"min": 1e-3, "max": 1e-2, "scaling": "log"},
             "label_smoothing": {"feasible_points": [0.1, 0.2]},
             "dropout_rate": {"feasible_points": [0.0, 0.1]}}
    rc, err = _run(tmp_path, space, capsys)
    assert rc == 0, err
    recs = [json.loads(p.read_text()) for p in (tmp_path / "out" / "trials").glob("*.json")]
    assert len(recs) == 2 and all(r["status"] == "ok" for r in recs), recs
    assert {r["hparams_used"]["label_smoothing"] for r in recs} <= {0.1, 0.2}


@pytest.mark.parametrize("space, match", [
    ({"foo": {"min": 1, "max": 2, "scaling": "linear"}},
     "submission 'adamw' has no hyperparameter 'foo'"),
    ({"dropout_rate": {"feasible_points": ["a"]}}, "'dropout_rate' feasible point must be a"),
    ({"label_smoothing": {"feasible_points": [True]}}, "must be a finite number"),
    ({"dropout_rate": {"min": 0.0, "max": 1.5, "scaling": "linear"}},
     r"'dropout_rate'.max must be in \[0, 1\)"),
    ({"learning_rate": {"min": 0.0, "max": 0.1, "scaling": "linear"}},
     r"'learning_rate'.min must be in \(0, inf\)"),
    ({"eps": {"min": -1.0, "max": 1.0, "scaling": "linear"}}, "'eps'.min is refused by 'adamw'"),
    ([{"learning_rate": 0.01, "beta2": 1.0}], r"configuration 0: 'beta2' must be in \[0, 1\)"),
])
def test_bad_space_exits_2_before_any_trial(tmp_path, capsys, space, match) -> None:
    import re

    rc, err = _run(tmp_path, space, capsys)
    assert rc == 2
    assert len(err.strip().splitlines()) == 1 and re.search(match, err), err
    assert not list((tmp_path / "out").glob("trials/*.json"))
