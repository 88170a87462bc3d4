"""click_ctr: a DLRM-lite click-through-rate model on synthetic clicks with a planted structure.

Data (generated from fixed seeds, nothing downloaded): 8 categorical fields with Zipf-distributed
values (vocabularies from 1,000 down to 8, so embedding rows are updated very unevenly, as in
Criteo) and 4 Gaussian dense features. The click probability is a planted factorization
machine, ``sigmoid(b + sum_f w_f[x_f] + sum_{f<g} <v_f[x_f], v_g[x_g]> + u . tanh(dense))``,
and labels are Bernoulli draws from it, so the Bayes-optimal validation log-loss is known
(``bayes_logloss``). Metric: validation log-loss (binary cross-entropy, lower is better), like
AlgoPerf's Criteo 1TB DLRM workload.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optforge._seeding import generator_for
from optforge.bench.workload import RateDropout, Workload, chunks

__all__ = ["ClickCTR"]

VOCAB_SIZES: tuple[int, ...] = (1000, 600, 300, 200, 100, 50, 20, 8)
N_DENSE = 4
_N_TRAIN, _N_VAL = 200_000, 20_000
_DATA_SEED = 31337  # fixed: the planted model and the samples are part of the data
_ZIPF_EXPONENT = 1.1
_FM_RANK = 4


@functools.lru_cache(maxsize=4)  # one copy per process; never mutated
def _generate() -> dict[str, torch.Tensor]:
    gen = generator_for("cpu", _DATA_SEED)
    n = _N_TRAIN + _N_VAL
    cats = []
    first_order = torch.zeros(n)
    factors = []
    for vocab in VOCAB_SIZES:
        # Zipf over a randomly permuted vocabulary, so popularity is unrelated to the id
        probs = 1.0 / torch.arange(1, vocab + 1, dtype=torch.float64) ** _ZIPF_EXPONENT
        ranks = torch.multinomial(probs / probs.sum(), n, replacement=True, generator=gen)
        ids = torch.randperm(vocab, generator=gen)[ranks]
        cats.append(ids)
        w = torch.randn(vocab, generator=gen) * 0.4
        v = torch.randn(vocab, _FM_RANK, generator=gen) * 0.35
        first_order += w[ids]
        factors.append(v[ids])
    fac = torch.stack(factors, 1)  # (n, fields, rank)
    # sum_{f<g} <v_f, v_g> = (|sum_f v_f|^2 - sum_f |v_f|^2) / 2
    pairwise = 0.5 * (fac.sum(1).pow(2).sum(1) - fac.pow(2).sum((1, 2)))
    dense = torch.randn(n, N_DENSE, generator=gen)
    u = torch.randn(N_DENSE, generator=gen) * 0.5
    logit = first_order + pairwise + torch.tanh(dense) @ u
    logit = logit - logit.mean() - 1.4  # base rate near 0.2, as in display advertising logs
    p = torch.sigmoid(logit)
    y = torch.bernoulli(p, generator=gen)
    x_cat = torch.stack(cats, 1)  # (n, fields) int64
    return {
        "cat_train": x_cat[:_N_TRAIN], "dense_train": dense[:_N_TRAIN], "y_train": y[:_N_TRAIN],
        "cat_val": x_cat[_N_TRAIN:], "dense_val": dense[_N_TRAIN:], "y_val": y[_N_TRAIN:],
        "p_val": p[_N_TRAIN:],
    }


class _DLRMLite(nn.Module):
    """Embeddings + bottom MLP, pairwise dot interactions, top MLP (Naumov et al., 2019)."""

    def __init__(self, dim: int, embed_init_std: float, layernorm: bool) -> None:
        super().__init__()
        offsets = torch.tensor((0, *VOCAB_SIZES[:-1])).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        self.embed = nn.Embedding(sum(VOCAB_SIZES), dim)
        nn.init.normal_(self.embed.weight, std=embed_init_std)
        self.bottom = nn.Sequential(nn.Linear(N_DENSE, 32), nn.ReLU(), nn.Linear(32, dim))
        n_vec = len(VOCAB_SIZES) + 1
        self.register_buffer("triu", torch.triu_indices(n_vec, n_vec, 1), persistent=False)
        n_inter = n_vec * (n_vec - 1) // 2
        self.norm = nn.LayerNorm(n_inter + dim) if layernorm else nn.Identity()
        self.top = nn.Sequential(nn.Linear(n_inter + dim, 64), nn.ReLU(), nn.Linear(64, 1))
        self.drop = RateDropout()  # in the top MLP, as in AlgoPerf's DLRM

    def forward(self, cat: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        emb = self.embed(cat + self.offsets)  # (batch, fields, dim)
        d = self.bottom(dense)  # (batch, dim)
        vecs = torch.cat([emb, d[:, None]], 1)  # (batch, fields + 1, dim)
        inter = vecs @ vecs.transpose(1, 2)  # (batch, fields + 1, fields + 1)
        feats = torch.cat([inter[:, self.triu[0], self.triu[1]], d], 1)
        hidden = self.drop(self.top[1](self.top[0](self.norm(feats))))
        return self.top[2](hidden).squeeze(1)  # logits, (batch,)


class ClickCTR(Workload):
    """DLRM-lite on synthetic Zipfian click logs; validation log-loss.

    Args:
        dim: embedding width (16).
        embed_init_std: standard deviation of the embedding initialization (``1/sqrt(dim)``
            by default; the held-out ``embed_init`` variant uses a much larger scale, after
            AlgoPerf's ``criteo1tb_embed_init``).
        layernorm: LayerNorm before the top MLP (after ``criteo1tb_layernorm``).
        name, held_out, base: registry identity.
    """

    description = "DLRM-lite on synthetic Zipfian click data with a planted FM, val logloss"
    metric_name = "logloss"
    higher_is_better = False
    # Calibration (nadamw defaults, 1 thread): first <= 0.48 at steps 1300/1900/1300 for
    # seeds 0/1/2; about 0.4705 after 3,000 steps (Bayes log-loss 0.4074: rare ids are seen
    # too seldom to learn their planted weights). Times in the registry's module docstring.
    # Under the self-tuning ruleset (budgets x1.5, so a 1.5x longer cosine schedule) AdamW at
    # the same default point plateaus at 0.4825 (`optforge bench`, seed 0), though it reaches
    # 0.48 at step 1,400 with the base budget. The committed target is 0.485, which the
    # AdamW-family baselines reach under both rulesets.
    target = 0.485
    step_budget = 3000
    time_budget_s = 60.0
    eval_every_steps = 100
    default_batch_size = 1024
    eval_batch_size = 4096

    def __init__(self, dim: int = 16, embed_init_std: float | None = None,
                 layernorm: bool = False, *, name: str = "click_ctr", held_out: bool = False,
                 base: str | None = None) -> None:
        super().__init__()
        self.dim = dim
        self.embed_init_std = 1.0 / math.sqrt(dim) if embed_init_std is None else embed_init_std
        self.layernorm = layernorm
        self.name, self.held_out, self.base = name, held_out, base

    def _build_data(self) -> dict[str, torch.Tensor]:
        return _generate()

    @property
    def num_train_examples(self) -> int:
        return _N_TRAIN

    def bayes_logloss(self) -> float:
        """Validation log-loss of the planted click probabilities (no model can beat it)."""
        p, y = self.data["p_val"].double(), self.data["y_val"].double()
        return float(F.binary_cross_entropy(p, y))

    def _make_model(self) -> nn.Module:
        return _DLRMLite(self.dim, self.embed_init_std, self.layernorm)

    def _batch(self, indices: torch.Tensor) -> Any:
        d = self.data
        return d["cat_train"][indices], d["dense_train"][indices], d["y_train"][indices]

    def _loss(self, model: nn.Module, batch: Any, label_smoothing: float = 0.0) -> torch.Tensor:
        cat, dense, y = batch
        # AlgoPerf's Criteo loss smooths binary labels towards 0.5
        y = y * (1.0 - label_smoothing) + 0.5 * label_smoothing
        return F.binary_cross_entropy_with_logits(model(cat, dense), y)

    def _metric(self, model: nn.Module) -> float:
        d = self.data
        total = 0.0
        for s in chunks(len(d["y_val"]), self.eval_batch_size):
            logits = model(d["cat_val"][s], d["dense_val"][s])
            total += float(F.binary_cross_entropy_with_logits(logits, d["y_val"][s],
                                                              reduction="sum"))
        return total / len(d["y_val"])
