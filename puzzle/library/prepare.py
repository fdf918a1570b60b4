"""Stage 1 of a library build: the parent's per-layer files, and the token rows of distillation and scoring.

The parent is written one layer at a time from its safetensors (``parent.write_parent``), never whole in memory.
The corpus is split as ``puzzle.data`` splits it (distillation text from the training split, scoring text from
the held-out split); ``distill_sequences`` / ``holdout_sequences`` rows are taken evenly from each and stored as
token ids under a key of what produced them. No activations are stored: the tasks compute them (``stream.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from puzzle.errors import DataError
from puzzle.files import key_digest, save_tensors

if TYPE_CHECKING:
    from puzzle.library.build import BuildConfig


def _token_rows(config: BuildConfig, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from puzzle.data import cached_tokens, pack_tensor, read_corpus, split_corpus, split_problem, tokenizer_hash

    corpus = read_corpus(config.corpus)
    train_docs, held_docs = split_corpus(corpus, config.held_out_fraction)
    if (problem := split_problem(train_docs, held_docs, config.held_out_fraction)) is not None:
        raise DataError(f"{problem}; use a larger corpus or a larger fraction")
    # the data module's token cache: shared with parent training (keyed by corpus and tokenizer)
    train = pack_tensor(cached_tokens(train_docs, tokenizer, "train"), config.seq_len)
    held = pack_tensor(cached_tokens(held_docs, tokenizer, "held_out"), config.seq_len)
    if len(train) < 2 or len(held) < 1:
        raise DataError(
            f"too little text: {len(train)} training and {len(held)} held-out sequences of {config.seq_len}"
        )
    distill = _evenly(train, config.distill_sequences)
    holdout = _evenly(held, config.holdout_sequences)
    key = {
        "corpus": corpus.fingerprint(),
        "tokenizer": tokenizer_hash(tokenizer),
        "seq_len": config.seq_len,
        "distill": len(distill),
        "holdout": len(holdout),
        "held_out_fraction": config.held_out_fraction,
    }
    return torch.from_numpy(distill), torch.from_numpy(holdout), key


def _evenly(rows: Any, n: int) -> Any:
    """``n`` rows spread evenly over ``rows`` (all of them when there are fewer)."""
    if len(rows) <= n:
        return rows
    idx = [round(i * (len(rows) - 1) / max(1, n - 1)) for i in range(n)]
    return rows[idx]


def prepare(parent_dir: str | Path, work: Path, config: BuildConfig) -> dict[str, Any]:
    """The parent's per-layer files and the token ids of distillation and held-out rows; returns their locations."""
    from puzzle.arch import ArchSpec
    from puzzle.data import load_tokenizer
    from puzzle.library.parent import write_parent

    meta = write_parent(parent_dir, work, dtype=getattr(torch, config.parent_dtype) if config.parent_dtype else None)
    tokenizer = load_tokenizer(parent_dir)
    distill, holdout, data_key = _token_rows(config, tokenizer)
    data = work / "data" / key_digest(data_key)
    distill_file, holdout_file = data / "distill.safetensors", data / "holdout.safetensors"
    if not distill_file.exists():
        save_tensors(distill_file, {"ids": distill[:, :-1]})
    if not holdout_file.exists():
        save_tensors(holdout_file, {"ids": holdout[:, :-1], "targets": holdout[:, 1:]})
    return {
        "arch": ArchSpec.from_dict(meta["arch"]),
        "digest": meta["digest"],
        "distill_file": str(distill_file),
        "holdout_file": str(holdout_file),
        "data_key": data_key,
        "distill_tokens": int(distill[:, :-1].numel()),
        "holdout_tokens": int(holdout[:, 1:].numel()),
    }
