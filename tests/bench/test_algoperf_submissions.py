"""AlgoPerf submission files run unmodified: the compatibility module, the workload adapter, the
calls with AlgoPerf's signatures, and the CLI on every CPU workload."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from optforge.bench.algoperf.compat.algoperf import spec as compat_spec
from optforge.bench.algoperf.loader import load_submission
from optforge.bench.algoperf.submission import AlgoPerfSubmission
from optforge.bench.algoperf.workload import AlgoPerfWorkload, max_batch_size
from optforge.bench.cli import bench_main
from optforge.bench.trial import TrialSpec, run_trial
from optforge.bench.workloads import get_workload, list_workloads

HERE = Path(__file__).parent / "algoperf_submissions"
EXTERNAL = str(HERE / "external_adamw" / "submission.py")
SELF = str(HERE / "self_tuning" / "submission.py")
ECHO = str(HERE / "echo_ema" / "submission.py")
REAL_ALGOPERF = importlib.util.find_spec("algoperf") is not None
needs_compat = pytest.mark.skipif(REAL_ALGOPERF, reason="the real algoperf is installed")

ALGOPERF_NAMES = {
    "digits_cnn": "imagenet_resnet", "digits_cnn_tanh": "imagenet_resnet_tanh",
    "stdlib_lm": "wmt", "stdlib_lm_post_ln": "wmt_post_ln",
    "click_ctr": "criteo1tb", "click_ctr_embed_init": "criteo1tb_embed_init",
    "illcond_regression": "fastmri", "illcond_regression_kappa1e4": "fastmri_kappa1e4",
}


@needs_compat
def test_compat_algoperf_answers_only_while_a_file_loads() -> None:
    loaded = load_submission(EXTERNAL)
    assert "algoperf" not in sys.modules and "algoperf.spec" not in sys.modules
    with pytest.raises(ModuleNotFoundError):
        import algoperf  # noqa: F401
    module_globals = loaded.functions["update_params"].__globals__
    assert module_globals["spec"] is compat_spec is loaded.spec
    assert module_globals["USE_PYTORCH_DDP"] is False


@pytest.mark.parametrize("name", list_workloads(include_held_out=True))
def test_each_cpu_workload_presents_as_its_algoperf_workload(name: str) -> None:
    w = get_workload(name)
    a = AlgoPerfWorkload(w)
    assert a.name == ALGOPERF_NAMES[name]
    assert isinstance(a, compat_spec.Workload)
    assert a.step_hint == w.step_budget and a.max_allowed_runtime_sec == w.time_budget_s
    assert a.validation_target_value == w.target and a.eval_period_time_sec > 0
    with pytest.raises(ValueError, match="init_model_fn"):
        a.param_shapes  # noqa: B018 - AlgoPerf raises before the model exists
    model, state = a.init_model_fn(np.array([3, 4], dtype=np.int32))
    assert state is None and isinstance(model, torch.nn.Module)
    names = dict(model.named_parameters())
    assert set(a.param_shapes) == set(a.model_params_types) == set(names)
    assert all(a.param_shapes[k] == compat_spec.ShapeTuple(tuple(p.shape))
               for k, p in names.items())
    assert all(isinstance(t, compat_spec.ParameterType) for t in a.model_params_types.values())
    outputs = [k for k in names if a.is_output_params(k)]
    assert outputs and all(names[k].shape[0] in (1, 8, 10, 128) for k in outputs)


@pytest.mark.parametrize("name", list_workloads(include_held_out=False))
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_model_fn_and_loss_fn_give_the_workload_loss(name: str, smoothing: float) -> None:
    w = get_workload(name)
    a = AlgoPerfWorkload(w)
    model = w.init_model(0)
    raw = w.train_batch(0, 0, 8)
    batch = a.batch(raw)
    assert {"inputs", "targets"} <= set(batch)
    logits, _ = a.model_fn(model, batch, None, compat_spec.ForwardPassMode.TRAIN, None, True)
    out = a.loss_fn(batch["targets"], logits, batch.get("weights"), smoothing)
    torch.testing.assert_close(out["summed"] / out["n_valid_examples"],
                               w.loss(model, raw, smoothing))
    assert out["per_example"].shape[0] == 8
    logits_eval, _ = a.model_fn(model, batch, None, compat_spec.ForwardPassMode.EVAL, None,
                                False)
    assert not logits_eval.requires_grad and not model.training


SPY = '''
import collections
import copy
import inspect

import torch
from absl import logging

from algoperf import spec
from algoperf import random_utils as prng

CALLS = collections.defaultdict(list)
COMPLETE_AT = {complete_at}


def get_batch_size(workload_name):
    CALLS["get_batch_size"].append(workload_name)
    if workload_name == "imagenet_resnet_tanh":
        raise ValueError(workload_name)
    return 1 << 20 if workload_name == "criteo1tb" else 16


def init_optimizer_state(workload, model_params, model_state, hyperparameters, rng):
    CALLS["init"].append((workload.name, type(model_params).__name__, model_state,
                          hyperparameters, rng.dtype.name, rng.shape))
    prng.split(prng.fold_in(rng, 1), 2)
    return {{"opt": torch.optim.SGD(model_params.parameters(), lr=hyperparameters.learning_rate)}}


def data_selection(workload, input_queue, optimizer_state, current_param_container,
                   model_state, hyperparameters, global_step, rng):
    batch = next(input_queue)
    CALLS["data"].append((global_step, sorted(batch), int(batch["targets"].shape[0])))
    return batch


def update_params(workload, current_param_container, current_params_types, model_state,
                  hyperparameters, batch, loss_type, optimizer_state, eval_results,
                  global_step, rng, train_state=None):
    frame = inspect.currentframe()
    CALLS["update"].append(dict(
        nargs=frame.f_code.co_argcount, step=global_step, lr=hyperparameters.learning_rate,
        smoothing=getattr(hyperparameters, "label_smoothing", 0.0), loss_type=loss_type,
        types=set(current_params_types.values()) <= set(spec.ParameterType),
        evals=[s for s, _ in eval_results], time=train_state["accumulated_submission_time"],
        rng=(rng.dtype.name, rng.shape)))
    with pytest_raises_typeerror():
        train_state["x"] = 1
    if global_step == COMPLETE_AT:
        raise spec.TrainingCompleteError()
    optimizer_state["opt"].zero_grad()
    logits, model_state = workload.model_fn(current_param_container, batch, model_state,
                                            spec.ForwardPassMode.TRAIN, rng, True)
    out = workload.loss_fn(batch["targets"], logits, batch.get("weights"),
                           hyperparameters.label_smoothing)
    (out["summed"] / out["n_valid_examples"]).backward()
    optimizer_state["opt"].step()
    return optimizer_state, current_param_container, model_state


def prepare_for_eval(workload, current_param_container, current_params_types, model_state,
                     hyperparameters, loss_type, optimizer_state, eval_results, global_step,
                     rng):
    CALLS["prepare"].append(global_step)
    zero = copy.deepcopy(current_param_container)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    return optimizer_state, zero, model_state  # evaluation must see this container


class pytest_raises_typeerror:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        assert kind is TypeError, "train_state must be read-only"
        return True
'''


def _spy(tmp_path: Path, complete_at: int = -1) -> str:
    path = tmp_path / f"spy{complete_at + 1}.py"
    path.write_text(SPY.format(complete_at=complete_at))
    return str(path)


def test_the_five_functions_are_called_as_algoperf_calls_them(tmp_path) -> None:
    ref = _spy(tmp_path)
    hp = {"learning_rate": 0.05, "label_smoothing": 0.1}
    rec = run_trial(TrialSpec("digits_cnn", ref, hp, seed=3, max_steps=6, eval_period_s=1e-9))
    assert rec["status"] == "ok", rec.get("traceback")
    calls = load_submission(ref).functions["update_params"].__globals__["CALLS"]
    assert calls["get_batch_size"][0] == "imagenet_resnet" and rec["batch_size"] == 16
    (init,) = calls["init"]
    assert init[0] == "imagenet_resnet" and init[2] is None and init[4:] == ("int32", (2,))
    assert tuple(init[3]) == (0.05, 0.1) and init[3]._fields == ("learning_rate",
                                                                 "label_smoothing")
    assert [d[0] for d in calls["data"]] == list(range(6))
    assert calls["data"][0][1:] == (["inputs", "targets"], 16)
    ups = calls["update"]
    assert [u["step"] for u in ups] == list(range(6)) and ups[0]["nargs"] == 12
    assert all(u["loss_type"] is compat_spec.LossType.SOFTMAX_CROSS_ENTROPY and u["types"]
               and u["smoothing"] == 0.1 and u["rng"] == ("int32", (2,)) for u in ups)
    # every step is evaluated here: eval_results hold the earlier steps (numbered from 1)
    assert [u["evals"] for u in ups[:3]] == [[], [1], [1, 2]]
    times = [u["time"] for u in ups]
    assert times[0] == 0.0 and times == sorted(times) and times[-1] > 0
    assert calls["prepare"] == [1, 2, 3, 4, 5, 6]
    # the evaluated model is the container prepare_for_eval returned (all zeros: one class)
    y_val = get_workload("digits_cnn").data["y_val"]
    assert {c["metric"] for c in rec["curve"]} == {int((y_val == 0).sum()) / len(y_val)}


def test_training_complete_error_ends_the_run_after_one_evaluation(tmp_path) -> None:
    rec = run_trial(TrialSpec("digits_cnn", _spy(tmp_path, complete_at=3),
                              {"learning_rate": 0.05, "label_smoothing": 0.0}, max_steps=50))
    assert rec["status"] == "ok" and rec["stop_reason"] == "complete"
    assert rec["steps"] == 4 and rec["curve"][-1]["step"] == 4


def test_batch_sizes_follow_algoperf_names_and_the_documented_cap(tmp_path) -> None:
    sub = AlgoPerfSubmission(_spy(tmp_path))
    # a variant the file does not know is asked again with the base name, as AlgoPerf does
    assert sub.asked_batch_size("digits_cnn_tanh") == 16
    calls = sub.loaded.functions["get_batch_size"].__globals__["CALLS"]["get_batch_size"]
    assert calls[-2:] == ["imagenet_resnet_tanh", "imagenet_resnet"]
    ctr = get_workload("click_ctr")
    assert max_batch_size(ctr) == 8 * ctr.default_batch_size
    assert sub.get_batch_size("click_ctr") == max_batch_size(ctr)
    notice = sub.batch_size_notice("click_ctr")
    assert "1,048,576 for criteo1tb" in notice and "using 8,192" in notice
    assert sub.batch_size_notice("digits_cnn") is None


def test_module_attribute_form(tmp_path, monkeypatch) -> None:
    (tmp_path / "my_algo.py").write_text(textwrap.dedent('''
        import types
        import importlib.util
        spec_ = importlib.util.spec_from_file_location("echo", {echo!r})
        mod = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(mod)
        SUBMISSION = types.SimpleNamespace(**{{
            k: getattr(mod, k) for k in ("init_optimizer_state", "update_params",
                                         "data_selection", "prepare_for_eval",
                                         "get_batch_size")}})
    ''').format(echo=ECHO))
    monkeypatch.syspath_prepend(str(tmp_path))
    rec = run_trial(TrialSpec("illcond_regression", "my_algo:SUBMISSION", {}, max_steps=4))
    assert rec["status"] == "ok", rec.get("traceback")


@pytest.mark.parametrize("make, match", [
    (lambda d: str(d / "missing.py"), "does not exist"),
    (lambda d: (d / "bad.py").write_text("def (:\n") and str(d / "bad.py"), "SyntaxError"),
    (lambda d: (d / "part.py").write_text("def get_batch_size(n):\n  return 8\n")
     and str(d / "part.py"), "does not define init_optimizer_state, update_params"),
    (lambda d: "no_such_module_xyz:attr", "cannot import 'no_such_module_xyz'"),
])
def test_bad_submission_file_exits_2_with_one_line(tmp_path, capsys, make, match) -> None:
    ref = make(tmp_path)
    rc = bench_main(["run", "--workloads", "digits_cnn", "--submissions", ref, "--ruleset",
                     "self", "--studies", "1", "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and match in err and len(err.strip().splitlines()) == 1, err


ALL = list_workloads(include_held_out=True)


@pytest.mark.parametrize("ruleset, files, workloads", [
    ("external", [EXTERNAL], ["click_ctr", "digits_cnn_tanh"]),
    ("self", [SELF, ECHO], ["click_ctr_embed_init", "stdlib_lm"]),
    pytest.param("external", [EXTERNAL], ALL, marks=pytest.mark.slow),
    pytest.param("self", [SELF, ECHO], ALL, marks=pytest.mark.slow),
])
def test_submission_files_run_through_the_cli(tmp_path, capsys, ruleset, files,
                                              workloads) -> None:
    """Both rulesets through ``optforge bench run``; the slow cases cover every CPU workload
    (base and held-out), the fast ones two of each ruleset."""
    out = tmp_path / "run"
    rc = bench_main(["run", "--workloads", ",".join(workloads), "--submissions", ",".join(files),
                     "--ruleset", ruleset, "--trials", "1", "--studies", "1", "--max-steps", "2",
                     "--out", str(out), "--no-progress", "--jobs", "2"])
    err = capsys.readouterr().err
    assert rc == 0, err
    recs = [json.loads(p.read_text()) for p in (out / "trials").glob("*.json")]
    assert len(recs) == len(workloads) * len(files)
    bad = [(r["trial_id"], r["error"]) for r in recs if r["status"] != "ok"]
    assert not bad, bad
    assert all(r["steps"] == 2 and r["curve"] for r in recs)
    by = {(r["submission"], r["workload"]): r for r in recs}
    if ruleset == "external":
        # the file's own tuning_search_space.json, workload-side names included
        assert all(set(r["hparams_used"]) >= {"dropout_rate", "label_smoothing"} for r in recs)
        assert by[EXTERNAL, "click_ctr"]["batch_size"] == 8192  # 262,144 asked, capped
        assert by[EXTERNAL, "digits_cnn_tanh"]["batch_size"] == 128  # via the base name
        notes = [line for line in err.splitlines() if "note:" in line]
        assert len(notes) == sum(w.startswith("click_ctr") for w in workloads)
        assert all("262,144 for criteo1tb" in n for n in notes)
    else:
        assert all(r["hparams_used"] == {} for r in recs)  # hyperparameters=None: own defaults
        assert by[ECHO, "click_ctr_embed_init"]["batch_size"] == 128  # .get default
        assert by[SELF, "stdlib_lm"]["batch_size"] == 32
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocol"]["name"] == "algoperf"
