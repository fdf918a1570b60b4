"""Stage 1 of a library build: the parent's blocks, and its activations on distillation and held-out text.

The corpus is split as ``puzzle.data`` splits it (distillation text from the training split, scoring text from
the held-out split); ``distill_sequences`` / ``holdout_sequences`` rows are taken evenly from each, and the
parent's input and output of every layer on them is cached on disk under a key of what produced it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from puzzle.errors import DataError
from puzzle.files import save_tensors
from puzzle.library.distill import activation_dir, cache_hidden_states, write_parent_blocks

if TYPE_CHECKING:
    from puzzle.library.build import BuildConfig


def _token_rows(config: BuildConfig, tokenizer: Any) -> tuple[torch.Tensor, torch.Tensor, dict]:
    from puzzle.data import cached_tokens, pack_tensor, read_corpus, split_corpus, tokenizer_hash

    corpus = read_corpus(config.corpus)
    train_docs, held_docs = split_corpus(corpus, config.held_out_fraction)
    if not held_docs.documents:
        raise DataError(
            f"the corpus has no held-out documents at held_out_fraction={config.held_out_fraction}; "
            "use a larger corpus or a larger fraction"
        )
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
    """Parent blocks + cached activations on distillation and held-out text; returns their locations."""
    from puzzle.data import load_tokenizer
    from puzzle.model import load_pretrained

    model = load_pretrained(parent_dir).float().eval()
    tokenizer = load_tokenizer(parent_dir)
    digest = write_parent_blocks(model, work)
    distill, holdout, data_key = _token_rows(config, tokenizer)
    act_root = work / "activations"
    distill_dir = activation_dir(act_root, digest, {**data_key, "split": "distill"})
    holdout_dir = activation_dir(act_root, digest, {**data_key, "split": "holdout"})
    cache_hidden_states(model, distill[:, :-1], distill_dir)
    if not (holdout_dir / "meta.json").exists():
        save_tensors(holdout_dir / "targets.safetensors", {"targets": holdout[:, 1:]})
    cache_hidden_states(model, holdout[:, :-1], holdout_dir)
    return {
        "arch": model.arch,
        "digest": digest,
        "distill_dir": str(distill_dir),
        "holdout_dir": str(holdout_dir),
        "data_key": data_key,
        "distill_tokens": int(distill[:, :-1].numel()),
        "holdout_tokens": int(holdout[:, 1:].numel()),
    }
