"""Tests of the block-library builder. Tiny parents come from the preset factory (``puzzle.presets``)."""

from __future__ import annotations

from puzzle.arch import ArchSpec
from puzzle.presets import tiny_hybrid, tiny_llama


def small_llama(*, n_layers: int = 2, n_kv_heads: int = 4, intermediate: int = 256) -> ArchSpec:
    return tiny_llama(128, hidden=64, n_layers=n_layers, n_heads=4, n_kv_heads=n_kv_heads, intermediate=intermediate)


def small_hybrid(pattern: str = "M-*-") -> ArchSpec:
    return tiny_hybrid(
        128,
        hidden=64,
        pattern=pattern,
        n_heads=4,
        n_kv_heads=2,
        intermediate=256,
        mamba_heads=8,
        mamba_head_dim=16,
        mamba_groups=2,
        d_state=16,
        chunk_size=16,
    )


def make_corpus(directory, n_files: int = 24):  # type: ignore[no-untyped-def]
    """A small real-text corpus: ``n_files`` modules of the Python standard library copied into ``directory``."""
    import shutil
    from pathlib import Path

    from puzzle.data import default_corpus_path

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = sorted((default_corpus_path() / "json").glob("*.py")) + sorted(
        (default_corpus_path() / "email").glob("*.py")
    )
    for f in files[:n_files]:
        shutil.copy(f, directory / f.name.replace(".py", ".txt"))
    return directory


def make_parent(directory, corpus, arch_fn=small_llama, seed: int = 0):  # type: ignore[no-untyped-def]
    """A random-init tiny parent (HF directory with tokenizer) whose vocabulary is a BPE trained on ``corpus``."""
    import dataclasses
    from pathlib import Path

    import torch

    from puzzle.data import read_corpus, save_tokenizer, train_bpe
    from puzzle.model import CausalLM
    from puzzle.train import export_parent

    tokenizer = train_bpe(read_corpus(corpus), vocab_size=320)
    arch = dataclasses.replace(arch_fn(), vocab_size=tokenizer.get_vocab_size())
    torch.manual_seed(seed)
    tokenizer_dir = Path(directory).parent / f"{Path(directory).name}-tokenizer"
    save_tokenizer(tokenizer, tokenizer_dir, model_max_length=512)
    export_parent(CausalLM(arch), tokenizer_dir, Path(directory))
    return directory
