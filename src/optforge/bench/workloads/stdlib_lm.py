"""stdlib_lm: a tiny character-level Transformer language model on Python's own source code.

Data: a fixed, sorted list of modules from the running interpreter's standard library
(``sysconfig.get_paths()["stdlib"]``, about 430 KB for CPython 3.11; nothing is downloaded).
Bytes are the tokens (vocabulary 128; the rare non-ASCII byte maps to 127). The last tenth of
every file is validation text, the rest training text. The text differs between Python
versions, and so does ``data_hash``: compare results only between runs with the same hash.
Metric: validation cross-entropy in nats per character (lower is better). Stresses attention and
Adam-family sensitivity, as AlgoPerf's WMT Transformer does at scale.
"""

from __future__ import annotations

import functools
import math
import os
import sysconfig
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from optforge.bench.workload import RateDropout, Workload, chunks

__all__ = ["STDLIB_FILES", "StdlibCharLM"]

#: Standard-library modules that make up the corpus (present in CPython 3.10 to 3.13), sorted.
STDLIB_FILES: tuple[str, ...] = (
    "argparse.py", "calendar.py", "contextlib.py", "dataclasses.py", "functools.py",
    "heapq.py", "json/decoder.py", "json/encoder.py", "pprint.py", "queue.py", "random.py",
    "shlex.py", "string.py", "textwrap.py", "tokenize.py",
)
_VOCAB = 128
_VAL_FRACTION = 0.1


@functools.lru_cache(maxsize=4)  # one copy per process; never mutated
def _read_corpus() -> tuple[torch.Tensor, torch.Tensor]:
    root = sysconfig.get_paths()["stdlib"]
    train, val = [], []
    found = 0
    for rel in STDLIB_FILES:
        path = os.path.join(root, *rel.split("/"))
        if not os.path.isfile(path):
            continue  # a future Python may move a module; the hash records what was used
        found += 1
        with open(path, "rb") as fh:
            raw = torch.frombuffer(bytearray(fh.read()), dtype=torch.uint8).to(torch.int64)
        raw = raw.clamp_max(_VOCAB - 1)
        cut = int(len(raw) * (1.0 - _VAL_FRACTION))
        train.append(raw[:cut])
        val.append(raw[cut:])
    if found < len(STDLIB_FILES) // 2:
        raise RuntimeError(
            f"stdlib_lm found only {found} of {len(STDLIB_FILES)} corpus files under {root!r}"
        )
    return torch.cat(train), torch.cat(val)


class _Block(nn.Module):
    def __init__(self, dim: int, heads: int, act: str, post_ln: bool) -> None:
        super().__init__()
        self.heads, self.post_ln = heads, post_ln
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)
        self.act = nn.GELU() if act == "gelu" else nn.ReLU()
        # residual dropout (AlgoPerf's dropout_rate) and attention dropout (aux_dropout_rate)
        self.drop, self.attn_drop = RateDropout(), RateDropout(aux=True)

    def _attn(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, time, dim)
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        p = self.attn_drop.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (b, h, t, hd)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))

    def _mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post_ln:  # original Transformer (Vaswani et al., 2017) placement
            x = self.ln1(x + self.drop(self._attn(x)))
            return self.ln2(x + self.drop(self._mlp(x)))
        x = x + self.drop(self._attn(self.ln1(x)))  # pre-LN (GPT-2)
        return x + self.drop(self._mlp(self.ln2(x)))


class _CharTransformer(nn.Module):
    def __init__(self, dim: int, layers: int, heads: int, context: int, act: str,
                 post_ln: bool) -> None:
        super().__init__()
        self.tok = nn.Embedding(_VOCAB, dim)
        self.pos = nn.Parameter(torch.randn(context, dim) * 0.02)
        nn.init.normal_(self.tok.weight, std=0.02)
        self.blocks = nn.ModuleList(_Block(dim, heads, act, post_ln) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim) if not post_ln else nn.Identity()
        self.head = nn.Linear(dim, _VOCAB)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # idx: (batch, time) -> logits
        x = self.tok(idx) + self.pos[: idx.shape[1]]
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class StdlibCharLM(Workload):
    """Character-level Transformer (pre-LN, GELU) on standard-library source; next-byte CE.

    Args:
        dim, layers, heads: model size (64, 2, 4 in the base workload).
        context: sequence length in characters (64).
        post_ln: LayerNorm after each residual sum instead of before the sublayer (a held-out
            variant, after AlgoPerf's ``wmt_post_ln``).
        name, held_out, base: registry identity.
    """

    description = "char-level Transformer LM on Python stdlib source, validation CE (nats/char)"
    metric_name = "cross_entropy"
    higher_is_better = False
    # Calibration (nadamw defaults, 1 thread): first <= 1.6 at step 900 for seeds 0, 1 and 2;
    # about 1.27 after 3,000 steps. Times in the registry's module docstring.
    target = 1.6
    step_budget = 3000
    time_budget_s = 120.0
    eval_every_steps = 100
    default_batch_size = 32
    eval_batch_size = 128

    def __init__(self, dim: int = 64, layers: int = 2, heads: int = 4, context: int = 64,
                 act: str = "gelu", post_ln: bool = False, *, name: str = "stdlib_lm",
                 held_out: bool = False, base: str | None = None) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim must be divisible by heads (got dim={dim}, heads={heads})")
        if act not in ("gelu", "relu"):
            raise ValueError(f"act must be 'gelu' or 'relu' (got {act!r})")
        self.dim, self.layers, self.heads, self.context = dim, layers, heads, context
        self.act, self.post_ln = act, post_ln
        self.name, self.held_out, self.base = name, held_out, base

    def _build_data(self) -> dict[str, torch.Tensor]:
        train, val = _read_corpus()
        return {"train_text": train, "val_text": val}

    @property
    def num_train_examples(self) -> int:
        # an example is a window start: every offset whose window (context + 1 bytes) fits
        return int(self.data["train_text"].shape[0]) - self.context

    def _make_model(self) -> nn.Module:
        return _CharTransformer(self.dim, self.layers, self.heads, self.context, self.act,
                                self.post_ln)

    def _windows(self, text: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return text[starts[:, None] + torch.arange(self.context + 1)]  # (batch, context + 1)

    def _batch(self, indices: torch.Tensor) -> Any:
        return self._windows(self.data["train_text"], indices)

    def _loss(self, model: nn.Module, batch: Any, label_smoothing: float = 0.0) -> torch.Tensor:
        logits = model(batch[:, :-1])
        return F.cross_entropy(logits.reshape(-1, _VOCAB), batch[:, 1:].reshape(-1),
                               label_smoothing=label_smoothing)

    def _metric(self, model: nn.Module) -> float:
        text = self.data["val_text"]
        n_windows = (len(text) - 1) // self.context  # non-overlapping, every char predicted once
        starts = torch.arange(n_windows) * self.context
        total, count = 0.0, 0
        for s in chunks(n_windows, self.eval_batch_size):
            batch = self._windows(text, starts[s])
            logits = model(batch[:, :-1])
            total += float(F.cross_entropy(logits.reshape(-1, _VOCAB),
                                           batch[:, 1:].reshape(-1), reduction="sum"))
            count += batch[:, 1:].numel()
        return total / count


def perplexity(cross_entropy: float) -> float:
    """exp(cross-entropy): the validation perplexity matching a ``cross_entropy`` metric."""
    return math.exp(cross_entropy)
