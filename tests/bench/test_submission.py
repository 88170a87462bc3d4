"""Submissions: registry, search-space format, hyperparameter mapping, schedule, one step."""

from __future__ import annotations

import math

import pytest
import torch

from optforge.bench.submission import (
    RegistrySubmission,
    Submission,
    cosine_warmup_factor,
    get_submission,
    list_submissions,
    register_submission,
)
from optforge.bench.workloads import get_workload

BASELINES = ("adamw", "lamb", "lion", "nadamw", "sgd_momentum")



@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

def test_baselines_are_registered() -> None:
    assert set(BASELINES) <= set(list_submissions())
    assert list_submissions() == sorted(list_submissions())
    for name in BASELINES:
        sub = get_submission(name)
        assert isinstance(sub, RegistrySubmission) and sub.name == name
        assert not sub.self_tuning
        assert get_submission(name) is not sub  # fresh instances


def test_unknown_submission_lists_known_names() -> None:
    with pytest.raises(ValueError, match=r"unknown submission 'nadam_w' \(did you mean "
                                         r"'nadamw'\?\); known submissions: adamw, .*lion"):
        get_submission("nadam_w")


def test_register_submission_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match=r"'adamw' is already registered"):
        register_submission("adamw", lambda: get_submission("adamw"))


@pytest.mark.parametrize("name", BASELINES)
def test_search_space_uses_algoperf_format(name: str) -> None:
    sub = get_submission(name)
    assert "learning_rate" in sub.search_space
    for key, spec in sub.search_space.items():
        if "feasible_points" in spec:
            assert set(spec) == {"feasible_points"} and len(spec["feasible_points"]) >= 1
        else:
            assert set(spec) == {"min", "max", "scaling"}, key
            assert spec["scaling"] in ("linear", "log")
            assert spec["min"] < spec["max"]
            assert spec["min"] > 0 or spec["scaling"] == "linear"
    assert set(sub.default_hparams) == set(sub.search_space)


def test_hparams_map_to_optimizer_arguments() -> None:
    adam = get_submission("nadamw")
    kw = adam.optimizer_kwargs({"learning_rate": 1e-3, "one_minus_beta1": 0.1, "beta2": 0.99,
                                "weight_decay": 0.1, "warmup_factor": 0.1, "eps": 1e-6})
    assert kw == {"betas": (pytest.approx(0.9), 0.99), "eps": 1e-6}
    lion = get_submission("lion")
    assert lion.optimizer_kwargs({"beta1": 0.95, "beta2": 0.98}) == {"betas": (0.95, 0.98)}
    sgd = get_submission("sgd_momentum")
    assert sgd.optimizer_kwargs({"one_minus_beta1": 0.1}) == {
        "nesterov": True, "momentum": pytest.approx(0.9)}


def test_bad_hparams_raise_naming_the_argument() -> None:
    with pytest.raises(ValueError, match=r"beta2 is not a hyperparameter of 'sgd_momentum'"):
        get_submission("sgd_momentum").optimizer_kwargs({"beta2": 0.9})
    with pytest.raises(ValueError, match=r"'adamw' needs both beta1 .* and beta2"):
        get_submission("adamw").optimizer_kwargs({"one_minus_beta1": 0.1})
    with pytest.raises(ValueError, match=r"one_minus_beta1 must be in \[0.0, 1.0\] \(got 1.5\)"):
        get_submission("adamw").optimizer_kwargs({"one_minus_beta1": 1.5, "beta2": 0.9})
    w = get_workload("digits_cnn")
    model = w.init_model(0)
    sub = get_submission("adamw")
    with pytest.raises(ValueError, match=r"learning_rate must be > 0 \(got -1\)"):
        sub.init_optimizer_state(w, model, {**sub.default_hparams, "learning_rate": -1},
                                 torch.Generator())
    with pytest.raises(ValueError, match=r"warmup_factor must be in \[0.0, 1.0\) \(got 2\)"):
        sub.init_optimizer_state(w, model, {**sub.default_hparams, "warmup_factor": 2},
                                 torch.Generator())
    with pytest.raises(ValueError, match=r"momentum_style must be 'betas' or 'momentum'"):
        RegistrySubmission("x", "sgd", search_space={}, default_hparams={},
                           momentum_style="nesterov")


def test_cosine_warmup_factor() -> None:
    hint, warm = 100, 0.1
    assert cosine_warmup_factor(0, hint, warm) == pytest.approx(0.1)
    assert cosine_warmup_factor(9, hint, warm) == pytest.approx(1.0)
    assert cosine_warmup_factor(10, hint, warm) == pytest.approx(1.0)
    assert cosine_warmup_factor(55, hint, warm) == pytest.approx(0.5)
    assert cosine_warmup_factor(100, hint, warm) == pytest.approx(0.0, abs=1e-12)
    assert cosine_warmup_factor(150, hint, warm) == pytest.approx(0.0, abs=1e-12)  # no restart
    assert cosine_warmup_factor(0, hint, 0.0) == 1.0
    factors = [cosine_warmup_factor(s, hint, warm) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(factors, factors[1:], strict=False))


@pytest.mark.parametrize("name", BASELINES)
def test_each_baseline_trains_and_follows_its_schedule(name: str) -> None:
    w = get_workload("digits_cnn")
    sub = get_submission(name)
    hp = dict(sub.default_hparams)
    model = w.init_model(0)
    state = sub.init_optimizer_state(w, model, hp, torch.Generator())
    batch = w.train_batch(0, 0, 64)
    with torch.no_grad():
        before = float(w.loss(model, batch))
    for step in range(12):
        state = sub.update_params(w, model, hp, batch, state, step, torch.Generator())
        assert torch.isfinite(state["loss"])
    with torch.no_grad():
        assert float(w.loss(model, batch)) < before
    lr = state["optimizer"].param_groups[0]["lr"]
    expected = hp["learning_rate"] * cosine_warmup_factor(12, w.step_budget,
                                                          hp["warmup_factor"])
    assert lr == pytest.approx(expected)


def test_gradient_clipping_bounds_the_step() -> None:
    w = get_workload("illcond_regression")
    sub = get_submission("sgd_momentum")
    hp = {"learning_rate": 1.0, "one_minus_beta1": 0.5, "weight_decay": 0.0,
          "warmup_factor": 0.0, "grad_clip_norm": 1e-3}
    model = w.init_model(0)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    state = sub.init_optimizer_state(w, model, hp, torch.Generator())
    sub.update_params(w, model, hp, w.train_batch(0, 0, 32), state, 0, torch.Generator())
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    # first Nesterov step moves by (1 + momentum) * lr * grad, and |grad| <= 1e-3 after clipping
    assert 0 < float((after - before).norm()) <= 1.5e-3 * (1 + 1e-5)


def test_base_class_defaults() -> None:
    class Plain(Submission):
        name = "plain"

    w = get_workload("digits_cnn")
    sub = Plain()
    assert sub.get_batch_size("digits_cnn") == w.default_batch_size
    batch = sub.data_selection(w, {}, {}, 3, 7)
    x, y = batch
    ex, ey = w.train_batch(3, 7, w.default_batch_size)
    assert torch.equal(x, ex) and torch.equal(y, ey)
    state = {"k": 1}
    assert sub.prepare_for_eval(w, w.init_model(0), {}, state, 0) is state
    with pytest.raises(NotImplementedError):
        sub.init_optimizer_state(w, w.init_model(0), {}, torch.Generator())
    Plain.batch_sizes = {"digits_cnn": 5}
    assert Plain().get_batch_size("digits_cnn") == 5
    assert math.isfinite(w.target)
