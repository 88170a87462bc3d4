"""A Lightning ``Trainer`` resumed with ``ckpt_path=`` continues bit-identically (issue 7).

A small MLP trains two epochs of 4 steps each on a fixed, non-shuffled dataloader with each
registered optimizer (``optforge.optim.create_optimizer(name, model, ...)``) and a per-step
LambdaLR schedule. ``ModelCheckpoint`` saves at the end of each epoch. A fresh Trainer with a
fresh module then resumes from the end-of-epoch-0 checkpoint: Lightning restores the optimizer
(its ``load_state_dict``) and scheduler states and, the data order being fixed, the second epoch
sees the same batches, so the final parameters must be ``torch.equal`` to the uninterrupted run's.
(Lightning does not replay a mid-epoch data position, hence the epoch-boundary checkpoint.)
torch's AdamW is the control.

Default run: lion, lamb, lars and the adamw control; every other registered optimizer is
``slow``.
"""

from __future__ import annotations

import warnings

import pytest
import torch

L = pytest.importorskip("lightning", reason="the Lightning resume test needs lightning")

import optforge.optim  # noqa: E402

HYPER: dict[str, dict] = {
    "lion": {"lr": 1e-3, "weight_decay": 0.1},
    "lamb": {"lr": 1e-2, "weight_decay": 0.01},
    "lars": {"lr": 0.5, "weight_decay": 1e-4, "trust_coefficient": 0.02},
    "adamw": {"lr": 1e-3, "weight_decay": 0.01},
    "adam": {"lr": 1e-3},
    "nadam": {"lr": 1e-3},
    "nadamw": {"lr": 1e-3, "weight_decay": 0.01},
    "sgd": {"lr": 0.05, "momentum": 0.9},
    "rmsprop": {"lr": 1e-3},
    "adagrad": {"lr": 1e-2},
}
FAST = ("lion", "lamb", "lars", "adamw")
STEPS_PER_EPOCH, EPOCHS, BATCH = 4, 2, 4


def _cases() -> list:
    names = optforge.optim.list_optimizers()
    missing = set(FAST) - set(names)
    assert not missing, f"registry lost {missing}"
    return [
        pytest.param(name, id=name, marks=() if name in FAST else pytest.mark.slow)
        for name in names
    ]


class _Module(L.LightningModule):
    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name
        self.net = torch.nn.Sequential(
            torch.nn.Linear(6, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
        )

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return torch.nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> dict:
        optimizer = optforge.optim.create_optimizer(self.name, self.net, **HYPER.get(self.name, {}))
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (1.0 + 0.1 * s))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def _loader() -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(7)
    x = torch.randn(STEPS_PER_EPOCH * BATCH, 6, generator=g)
    y = x[:, :1] * 2 - x[:, 1:2] + 0.1 * torch.randn(len(x), 1, generator=g)
    data = torch.utils.data.TensorDataset(x, y)
    return torch.utils.data.DataLoader(data, batch_size=BATCH, shuffle=False, num_workers=0)


def _fit(name: str, root, ckpt_path: str | None = None) -> _Module:
    L.seed_everything(0, workers=True)
    module = _Module(name)
    checkpoint = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=root, save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True
    )
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        callbacks=[checkpoint],
        enable_progress_bar=False,
        enable_model_summary=False,
        # No deterministic=True: it sets cudnn flags, which raises once torch.testing._internal
        # (imported by tests/optim/test_torch_contracts.py) has disabled global flag mutation.
        default_root_dir=root,
        num_sanity_val_steps=0,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(module, train_dataloaders=_loader(), ckpt_path=ckpt_path)
    assert trainer.global_step == STEPS_PER_EPOCH * EPOCHS
    return module


@pytest.mark.parametrize("name", _cases())
def test_resume_from_epoch_checkpoint_is_bit_identical(name: str, tmp_path) -> None:
    full = _fit(name, tmp_path / "full")
    ckpt = tmp_path / "full" / f"epoch=0-step={STEPS_PER_EPOCH}.ckpt"
    assert ckpt.is_file(), sorted(p.name for p in (tmp_path / "full").iterdir())
    expected = {k: v.detach().clone() for k, v in full.state_dict().items()}

    resumed = _fit(name, tmp_path / "resumed", ckpt_path=str(ckpt))
    got = resumed.state_dict()
    differ = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert not differ, (
        f"{name}: resuming from {ckpt.name} diverged from the uninterrupted run in "
        f"{len(differ)}/{len(expected)} tensors, e.g. {differ[:3]}"
    )
