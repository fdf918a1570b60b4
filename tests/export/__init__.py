"""Tests of shipping a child (export). ``tiny_parent_dir`` is the one factory of small saved parents that the
assemble / GKD / evaluation tests share: a preset-factory architecture plus a real BPE tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from puzzle.arch import ArchSpec
from puzzle.data import Corpus, Document, train_bpe
from puzzle.presets import tiny_hybrid, tiny_llama

VOCAB = 320
TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n" * 20


def small_llama(n_layers: int = 3) -> ArchSpec:
    return tiny_llama(VOCAB, hidden=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, intermediate=128)


def small_hybrid() -> ArchSpec:
    return tiny_hybrid(
        VOCAB, hidden=64, pattern="M*-", n_heads=4, n_kv_heads=2, intermediate=128,
        mamba_heads=4, mamba_head_dim=16, mamba_groups=2, d_state=8, chunk_size=16,
    )  # fmt: skip


def tokenizer() -> Any:
    corpus = Corpus("test", (Document("a.py", TEXT), Document("b.py", TEXT.upper())))
    return train_bpe(corpus, vocab_size=VOCAB)


def tiny_parent_dir(directory: Path, arch: ArchSpec | None = None, seed: int = 0) -> Path:
    """A random-weight parent of ``arch`` (default ``small_llama()``) saved as a HF directory with a tokenizer."""
    from puzzle.model import CausalLM
    from puzzle.train import export_parent

    torch.manual_seed(seed)
    model = CausalLM(arch or small_llama()).eval()
    export_parent(model, tokenizer(), directory, model_max_length=64)
    return directory


def ids(batch: int = 2, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))
