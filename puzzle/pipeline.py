"""The end-to-end demo: for now, train (or reuse) the tiny-llama parent on the default corpus and evaluate it.

``run_demo`` is the small orchestration the ``puzzle demo`` command calls; later stages (block library,
search, export) join it here. Its outputs live under one directory: ``<out>/parent`` (the HF parent) and
``<out>/demo.json`` (the figures).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from puzzle.data import atomic_write_text, cached_tokens, load_tokenizer, read_corpus, split_corpus
from puzzle.evaluate import EvalResult, evaluate, unigram_baseline
from puzzle.presets import get_preset
from puzzle.train import StepInfo, TrainResult, train_parent

DEMO_PRESET = "tiny-llama"


@dataclass(frozen=True)
class DemoResult:
    parent_dir: str
    train: TrainResult
    seq_len: int
    held_out: EvalResult
    unigram: EvalResult

    def to_dict(self) -> dict[str, Any]:
        train = self.train.to_dict()
        train.pop("losses")
        return {
            "parent_dir": self.parent_dir,
            "train": train,
            "seq_len": self.seq_len,
            "held_out": self.held_out.to_dict(),
            "unigram": self.unigram.to_dict(),
        }


def run_demo(
    out_dir: str | os.PathLike[str],
    *,
    steps: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_eval_batch: Callable[[int, int], None] | None = None,
) -> DemoResult:
    from puzzle.model import load_pretrained

    status = on_status or (lambda _msg: None)
    out = Path(out_dir)
    preset = get_preset(DEMO_PRESET)
    parent_dir = out / "parent"
    trained = train_parent(
        preset, parent_dir, None, steps=steps, cache_dir=cache_dir, on_step=on_step, on_status=status
    )
    if trained.reused:
        status(f"reusing the parent already trained in {parent_dir}")

    status("evaluating on the held-out split")
    model = load_pretrained(parent_dir)
    tokenizer = load_tokenizer(parent_dir)
    train_docs, held_docs = split_corpus(read_corpus(None), preset.train.held_out_fraction)
    train_tokens = cached_tokens(train_docs, tokenizer, "train", cache_dir)
    held_tokens = cached_tokens(held_docs, tokenizer, "held_out", cache_dir)
    seq_len = preset.train.seq_len
    held_out = evaluate(model, held_tokens, seq_len, on_batch=on_eval_batch)
    unigram = unigram_baseline(train_tokens, held_tokens, tokenizer.get_vocab_size())

    result = DemoResult(str(parent_dir), trained, seq_len, held_out, unigram)
    atomic_write_text(out / "demo.json", json.dumps(result.to_dict(), indent=2) + "\n")
    return result
