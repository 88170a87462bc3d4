"""GaLoreAdamW and QGaLoreAdamW8bit resumed by a Hugging Face ``Trainer`` and by Lightning
continue bit-identically (the integration tests' harness, with low-rank hyperparameters: rank
4 and a refresh every 3 steps, so the resumed part crosses a basis refresh; Q-GaLore with
8-bit moments on every tensor of >= 16 elements, INT4 bases, stochastic-rounded weights; and
again with the model's linear layers stored as INT8 codes by ``quantize_linear_weights``)."""

from __future__ import annotations

import pytest

LOWRANK = {
    "galore_adamw": {"lr": 1e-2, "rank": 4, "update_proj_gap": 3},
    "qgalore_adamw8bit": {"lr": 1e-2, "rank": 4, "update_proj_gap": 3, "min_8bit_size": 16},
}
#: GaLore in the default run, Q-GaLore (same machinery plus quantized state) marked slow
CASES = ["galore_adamw", pytest.param("qgalore_adamw8bit", marks=pytest.mark.slow)]


@pytest.mark.slow
def test_hf_trainer_resume_int8_weights(tmp_path, monkeypatch) -> None:
    # GPT-2's attention and MLP Conv1D layers become Int8Linear: the Trainer saves codes and
    # scales (safetensors), reloads them and the optimizer state, and continues bit-identically.
    hf = pytest.importorskip("tests.integration.test_hf_trainer_resume")
    from optforge.lowrank import Int8Linear, quantize_linear_weights

    build = hf._model
    monkeypatch.setattr(hf, "_model", lambda: quantize_linear_weights(build()))
    assert any(isinstance(m, Int8Linear) for m in hf._model().modules())
    monkeypatch.setitem(hf.HYPER, "qgalore_adamw8bit", LOWRANK["qgalore_adamw8bit"])
    hf.test_resume_from_checkpoint_is_bit_identical("qgalore_adamw8bit", tmp_path)


@pytest.mark.slow
def test_lightning_resume_int8_weights(tmp_path, monkeypatch) -> None:
    lit = pytest.importorskip("tests.integration.test_lightning_resume")
    from optforge.lowrank import quantize_linear_weights

    class Int8Module(lit._Module):
        def __init__(self, name: str) -> None:
            super().__init__(name)
            quantize_linear_weights(self.net, target_modules=())

    monkeypatch.setattr(lit, "_Module", Int8Module)
    monkeypatch.setitem(lit.HYPER, "qgalore_adamw8bit", LOWRANK["qgalore_adamw8bit"])
    lit.test_resume_from_epoch_checkpoint_is_bit_identical("qgalore_adamw8bit", tmp_path)


@pytest.mark.parametrize("name", CASES)
def test_hf_trainer_resume(name, tmp_path, monkeypatch) -> None:
    hf = pytest.importorskip("tests.integration.test_hf_trainer_resume")
    monkeypatch.setitem(hf.HYPER, name, LOWRANK[name])
    hf.test_resume_from_checkpoint_is_bit_identical(name, tmp_path)


@pytest.mark.parametrize("name", CASES)
def test_lightning_resume(name, tmp_path, monkeypatch) -> None:
    lit = pytest.importorskip("tests.integration.test_lightning_resume")
    monkeypatch.setitem(lit.HYPER, name, LOWRANK[name])
    lit.test_resume_from_epoch_checkpoint_is_bit_identical(name, tmp_path)
