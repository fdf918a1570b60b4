"""The one factory of tiny parent presets and corpora for the training / eval / demo tests."""

from __future__ import annotations

from functools import partial
from pathlib import Path

from puzzle.data import default_corpus_path
from puzzle.presets import Preset, TrainConfig, tiny_hybrid, tiny_llama

# Real text nobody here wrote, small enough for seconds of training: the stdlib's json package (~50 kB).
CORPUS: Path = default_corpus_path() / "json"
VOCAB = 320

_ARCHS = {
    "llama": partial(tiny_llama, hidden=32, n_layers=2, n_heads=4, n_kv_heads=2, intermediate=64, max_positions=64),
    "hybrid": partial(
        tiny_hybrid,
        hidden=32,
        pattern="M*-M",
        n_heads=4,
        n_kv_heads=2,
        intermediate=64,
        mamba_heads=4,
        mamba_head_dim=16,
        mamba_groups=2,
        d_state=16,
        chunk_size=8,
        max_positions=64,
    ),
}


def preset(kind: str = "llama", **train: object) -> Preset:
    """A tiny ``llama`` or ``hybrid`` parent; keyword arguments override its ``TrainConfig``."""
    defaults: dict[str, object] = {
        "steps": 8,
        "batch_size": 4,
        "seq_len": 32,
        "lr": 3e-3,
        "warmup_steps": 2,
        "checkpoint_every": 4,
    }
    config = TrainConfig(**(defaults | train))  # type: ignore[arg-type]
    return Preset(
        name=f"test-{kind}", description="tiny test parent", make_arch=_ARCHS[kind], vocab_size=VOCAB, train=config
    )
