"""Held-out language-model quality: mean next-token loss and perplexity, and a unigram baseline.

The token stream is cut like training packs it (rows of ``seq_len + 1`` with stride ``seq_len``, the last
row shorter), so every token after the first is predicted exactly once, from at most ``seq_len`` tokens of
context within its row. The unigram baseline scores the very same target tokens with add-one smoothed
token frequencies of the training split: a model that does not beat it has learnt nothing about context.

``score_sequences`` keeps the sums per row (NLL, and against a parent KL and top-1 agreement), so that
``SequenceScores.summary`` gives bootstrap intervals over sequences and ``compare`` a paired interval of the
difference between two models on the same rows with a win / tie / loss verdict (``puzzle.child.stats``);
``eval_token_count`` picks how much held-out text makes the perplexity's 95 % interval +-1 % wide.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from puzzle.data import pack
from puzzle.errors import DataError

if TYPE_CHECKING:
    import torch

    from puzzle.child.stats import Interval, Verdict


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


@dataclass(frozen=True, eq=False)  # numpy fields: compare the arrays, not the objects
class SequenceScores:
    """Per-sequence sums over the packed held-out rows (one entry per row, in order): the predicted ``tokens``,
    their ``nll`` (nats), and against a parent their ``kl`` (``KL(p_parent || q_model)``, nats) and ``agree``
    (tokens whose most likely next token is the parent's). Two models scored on the same tokens have
    aligned arrays, which is what paired comparisons (``puzzle.child.stats``) need."""

    tokens: np.ndarray
    nll: np.ndarray
    kl: np.ndarray | None = None
    agree: np.ndarray | None = None

    @property
    def loss(self) -> float:
        return float(self.nll.sum() / self.tokens.sum())

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    @property
    def kl_mean(self) -> float | None:
        return None if self.kl is None else float(self.kl.sum() / self.tokens.sum())

    @property
    def top1_agreement(self) -> float | None:
        return None if self.agree is None else float(self.agree.sum() / self.tokens.sum())

    def result(self) -> EvalResult:
        return _result(float(self.nll.sum()), int(self.tokens.sum()))

    def summary(self, *, level: float = 0.95, resamples: int = 2000, seed: int = 0) -> dict[str, Any]:
        """Flat report fields: perplexity, KL and top-1 agreement with their bootstrap intervals (over sequences)."""
        from puzzle.child.stats import bootstrap_interval

        def ci(values: np.ndarray) -> Interval:
            return bootstrap_interval(values, self.tokens, level=level, resamples=resamples, seed=seed)

        out: dict[str, Any] = {"tokens": int(self.tokens.sum()), "sequences": len(self.tokens), "loss": self.loss}
        enough = len(self.tokens) >= 2
        ppl = ci(self.nll).map(math.exp) if enough else None
        out |= {"perplexity": self.perplexity, "perplexity_ci": None if ppl is None else [ppl.low, ppl.high]}
        for name, values in (("kl", self.kl), ("top1_agreement", self.agree)):
            if values is not None:
                interval = ci(values) if enough else None
                out |= {name: interval.estimate if interval else float(values.sum() / self.tokens.sum())}
                out |= {f"{name}_ci": None if interval is None else [interval.low, interval.high]}
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, per-sequence values included (a stored record can be compared later)."""

        def listed(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(v) for v in a]

        return {
            "tokens": [int(t) for t in self.tokens],
            "nll": listed(self.nll),
            "kl": listed(self.kl),
            "agree": listed(self.agree),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SequenceScores:
        def arr(key: str) -> np.ndarray | None:
            return None if data.get(key) is None else np.asarray(data[key], dtype=np.float64)

        tokens, nll = arr("tokens"), arr("nll")
        if tokens is None or nll is None:
            raise DataError("sequence scores need 'tokens' and 'nll'")
        return cls(tokens, nll, arr("kl"), arr("agree"))


def _batches(tokens: np.ndarray, seq_len: int, batch_size: int) -> list[np.ndarray]:
    """The held-out rows as training packs them (full rows batched, the shorter last row alone)."""
    rows = pack(tokens, seq_len, drop_last=False)
    if not rows:
        raise DataError(f"the evaluation text has {len(tokens)} token(s); at least 2 are needed")
    full = [r for r in rows if len(r) == seq_len + 1]
    batches = [np.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    return batches + [r[None, :] for r in rows if len(r) < seq_len + 1]


def score_sequences(
    model: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    *,
    parent: torch.nn.Module | None = None,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> SequenceScores:
    """Per-sequence NLL of ``model`` on ``tokens`` (1-D token ids), and with ``parent`` also its KL to the parent
    and top-1 agreement with it, in one pass over the rows."""
    import torch
    import torch.nn.functional as F

    from puzzle.train import logits_of

    batches = _batches(tokens, seq_len, batch_size)
    if tokens.max() >= _vocab_size(model):
        raise DataError(
            f"the text has token id {int(tokens.max())} but the model's vocabulary has {_vocab_size(model)} entries; "
            "the tokenizer does not belong to this model"
        )
    counts, nll, kl, agree = [], [], [], []
    models = [model] if parent is None else [model, parent]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():  # not inference_mode: its cached RoPE tables could not be trained through later
            for i, batch in enumerate(batches):
                ids = torch.from_numpy(batch.astype(np.int64))  # (B, T + 1)
                logq = F.log_softmax(logits_of(model(ids[:, :-1])).float(), dim=-1)  # (B, T, V)
                nll.append(-logq.gather(-1, ids[:, 1:, None])[..., 0].double().sum(1))  # (B,)
                counts += [ids.shape[1] - 1] * ids.shape[0]
                if parent is not None:
                    logp = F.log_softmax(logits_of(parent(ids[:, :-1])).float(), dim=-1)
                    kl.append((logp.exp() * (logp - logq)).sum(-1).double().sum(1))
                    agree.append((logp.argmax(-1) == logq.argmax(-1)).sum(1).double())
                if on_batch is not None:
                    on_batch(i + 1, len(batches))
    finally:
        for m, mode in zip(models, modes, strict=True):
            m.train(mode)
    cat = lambda parts: torch.cat(parts).numpy() if parts else None  # noqa: E731
    return SequenceScores(np.asarray(counts, dtype=np.float64), cat(nll), cat(kl), cat(agree))


def evaluate(
    model: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    *,
    batch_size: int = 8,
    on_batch: Callable[[int, int], None] | None = None,
) -> EvalResult:
    """Mean cross-entropy (nats / token) and perplexity of ``model`` on ``tokens`` (1-D token ids)."""
    return score_sequences(model, tokens, seq_len, batch_size=batch_size, on_batch=on_batch).result()


def eval_token_count(
    model: torch.nn.Module,
    tokens: np.ndarray,
    seq_len: int,
    *,
    rel: float = 0.01,
    pilot_sequences: int = 32,
    batch_size: int = 8,
) -> int:
    """How many of ``tokens`` to evaluate on so ``model``'s perplexity has a 95 % interval within ``+-rel``: a
    pilot on the first ``pilot_sequences`` rows estimates the per-sequence spread, the answer is whole rows
    (``n * seq_len + 1`` tokens) and at most all of ``tokens`` (the whole held-out split). Choose it once on
    the parent and evaluate every child on the same tokens, so their scores stay paired."""
    from puzzle.child.stats import sequences_for_precision

    available = max(1, (len(tokens) - 1) // seq_len)
    pilot = score_sequences(
        model, tokens[: min(pilot_sequences, available) * seq_len + 1], seq_len, batch_size=batch_size
    )
    if len(pilot.tokens) < 2:
        return len(tokens)
    n = sequences_for_precision(pilot.nll, pilot.tokens, rel=rel, available=available)
    return len(tokens) if n >= available else n * seq_len + 1


@dataclass(frozen=True)
class Comparison:
    """``ours`` against ``rival`` on the same rows: the paired interval of the per-token difference of
    ``measure`` (``ours - rival``, nats; lower is better for both ``nll`` and ``kl``) and its verdict."""

    measure: str
    diff: Interval
    verdict: Verdict

    @property
    def ratio(self) -> Interval:
        """For ``nll``: the interval of the perplexity ratio ``ppl(ours) / ppl(rival)``."""
        return self.diff.map(math.exp)

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "diff": self.diff.to_dict(), "verdict": self.verdict} | (
            {"ppl_ratio": self.ratio.to_dict()} if self.measure == "nll" else {}
        )


def compare(
    ours: SequenceScores,
    rival: SequenceScores,
    measure: str = "nll",
    *,
    level: float = 0.95,
    resamples: int = 2000,
    seed: int = 0,
) -> Comparison:
    """Paired bootstrap of ``ours - rival`` over the shared rows; ``"win"`` only when significant."""
    from puzzle.child.stats import paired_bootstrap, verdict

    if measure not in ("nll", "kl"):
        raise DataError(f"compare: measure must be 'nll' or 'kl', got {measure!r}")
    if not np.array_equal(ours.tokens, rival.tokens):
        raise DataError("compare: the two models were not scored on the same rows (token counts differ)")
    a, b = getattr(ours, measure), getattr(rival, measure)
    if a is None or b is None:
        raise DataError(f"compare: {measure} was not measured for both models (score them against the parent)")
    diff = paired_bootstrap(a, b, ours.tokens, level=level, resamples=resamples, seed=seed)
    return Comparison(measure, diff, verdict(diff))


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
