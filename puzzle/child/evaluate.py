"""Held-out language-model quality: mean next-token loss and perplexity, and a unigram baseline.

The token stream is cut like training packs it (rows of ``seq_len + 1`` with stride ``seq_len``, the last
row shorter), so every token after the first is predicted exactly once, from at most ``seq_len`` tokens of
context within its row. The unigram baseline scores the very same target tokens with add-one smoothed
token frequencies of the training split: a model that does not beat it has learnt nothing about context.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from puzzle.data import pack
from puzzle.errors import DataError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class EvalResult:
    tokens: int
    loss: float
    perplexity: float

    def to_dict(self) -> dict[str, int | float]:
        return {"tokens": self.tokens, "loss": self.loss, "perplexity": self.perplexity}


def _result(total_nll: float, n: int) -> EvalResult:
    loss = total_nll / n
    return EvalResult(tokens=n, loss=loss, perplexity=math.exp(loss))


def evaluate(
    model: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    *,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Mean cross-entropy (nats / token) and perplexity of ``model`` on ``tokens`` (1-D token ids)."""
    import torch
    import torch.nn.functional as F

    from puzzle.train import logits_of

    rows = pack(tokens, seq_len, drop_last=False)
    if not rows:
        raise DataError(f"the evaluation text has {len(tokens)} token(s); at least 2 are needed")
    if tokens.max() >= _vocab_size(model):
        raise DataError(
            f"the text has token id {int(tokens.max())} but the model's vocabulary has {_vocab_size(model)} entries; "
            "the tokenizer does not belong to this model"
        )
    full = [r for r in rows if len(r) == seq_len + 1]
    batches = [np.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    batches += [r[None, :] for r in rows if len(r) < seq_len + 1]
    total, count = 0.0, 0
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():  # not inference_mode: its cached RoPE tables could not be trained through later
            for i, batch in enumerate(batches):
                ids = torch.from_numpy(batch.astype(np.int64))  # (B, T + 1)
                logits = logits_of(model(ids[:, :-1]))  # (B, T, V)
                nll = F.cross_entropy(
                    logits.reshape(-1, logits.size(-1)).float(), ids[:, 1:].reshape(-1), reduction="sum"
                )
                total += float(nll)
                count += ids[:, 1:].numel()
                if on_batch is not None:
                    on_batch(i + 1, len(batches))
    finally:
        model.train(was_training)
    return _result(total, count)


def unigram_baseline(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> EvalResult:
    """Add-one smoothed unigram model of ``train_tokens`` scored on ``eval_tokens[1:]`` (the same targets)."""
    if len(eval_tokens) < 2:
        raise DataError(f"the evaluation text has {len(eval_tokens)} token(s); at least 2 are needed")
    counts = np.bincount(train_tokens, minlength=vocab_size).astype(np.float64)
    log_p = np.log(counts + 1.0) - math.log(counts.sum() + vocab_size)
    targets = eval_tokens[1:]
    return _result(float(-log_p[targets].sum()), len(targets))


def _vocab_size(model: torch.nn.Module) -> int:
    arch = getattr(model, "arch", None)
    if arch is not None:
        return int(arch.vocab_size)
    return int(model.get_output_embeddings().weight.shape[0])  # a transformers model
