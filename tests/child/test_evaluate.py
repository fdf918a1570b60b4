from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from puzzle.child.evaluate import evaluate, unigram_baseline
from puzzle.data import encode_corpus, load_tokenizer, read_corpus
from puzzle.errors import DataError
from puzzle.model import load_pretrained
from puzzle.train import train_parent
from tests.train import tiny


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("eval") / "parent"
    train_parent(tiny.preset(steps=10), out, tiny.CORPUS, cache_dir=out.parent / "cache")
    return out


def test_evaluate_matches_transformers_loss_per_window(parent: Path) -> None:
    import transformers

    tokens = encode_corpus(read_corpus(tiny.CORPUS / "decoder.py"), load_tokenizer(parent))[:301]
    result = evaluate(load_pretrained(parent), tokens, seq_len=32, batch_size=3)
    assert result.tokens == len(tokens) - 1  # every token but the first predicted once
    # Reference: transformers' own shifted LM loss, window by window (stride 32, the last window shorter).
    hf = transformers.AutoModelForCausalLM.from_pretrained(parent, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens) - 1, 32):
            window = torch.tensor(tokens[start : start + 33], dtype=torch.long)[None]
            n = window.shape[1] - 1
            total += float(hf(window, labels=window).loss) * n
            count += n
    assert count == result.tokens
    assert result.loss == pytest.approx(total / count, abs=1e-5)
    assert result.perplexity == pytest.approx(math.exp(result.loss))


def test_longer_context_is_not_worse_and_counts_match(parent: Path) -> None:
    model = load_pretrained(parent)
    tokens = encode_corpus(read_corpus(tiny.CORPUS / "encoder.py"), load_tokenizer(parent))[:600]
    short, long = evaluate(model, tokens, seq_len=4), evaluate(model, tokens, seq_len=32)
    assert short.tokens == long.tokens == len(tokens) - 1
    assert long.loss < short.loss  # a trained model uses its context


def test_unigram_baseline_matches_brute_force() -> None:
    train = np.array([0, 1, 1, 2, 2, 2, 5], dtype=np.int32)
    held = np.array([2, 1, 3, 2], dtype=np.int32)
    vocab = 6
    counts = {t: int((train == t).sum()) for t in range(vocab)}
    expected = -sum(math.log((counts[t] + 1) / (len(train) + vocab)) for t in held[1:]) / 3
    result = unigram_baseline(train, held, vocab)
    assert result.tokens == 3
    assert result.loss == pytest.approx(expected)
    assert result.perplexity == pytest.approx(math.exp(expected))


def test_evaluation_input_errors(parent: Path) -> None:
    model = load_pretrained(parent)
    with pytest.raises(DataError, match="at least 2"):
        evaluate(model, np.array([5], dtype=np.int32), 8)
    with pytest.raises(DataError, match="does not belong to this model"):
        evaluate(model, np.array([1, 2, 10_000], dtype=np.int32), 8)


def test_sequence_scores_sum_to_the_evaluation_and_round_trip(parent: Path) -> None:
    from puzzle.child.evaluate import SequenceScores, score_sequences

    model = load_pretrained(parent)
    tokens = encode_corpus(read_corpus(tiny.CORPUS / "decoder.py"), load_tokenizer(parent))[:301]
    scores = score_sequences(model, tokens, seq_len=32, parent=model, batch_size=3)
    assert list(scores.tokens) == [32] * 9 + [12]  # nine full rows and the shorter last one
    assert scores.result().loss == pytest.approx(evaluate(model, tokens, seq_len=32).loss, rel=1e-6)
    assert scores.kl_mean == pytest.approx(0.0, abs=1e-6) and scores.top1_agreement == 1.0
    summary = scores.summary()
    low, high = summary["perplexity_ci"]
    assert low < summary["perplexity"] < high and summary["sequences"] == 10
    again = SequenceScores.from_dict(scores.to_dict())
    assert np.array_equal(again.nll, scores.nll) and np.array_equal(again.agree, scores.agree)


def test_compare_calls_a_tie_for_the_same_model_and_a_win_over_a_random_one(parent: Path) -> None:
    from puzzle.child.evaluate import compare, score_sequences
    from puzzle.model import CausalLM

    model = load_pretrained(parent)
    tokens = encode_corpus(read_corpus(tiny.CORPUS / "encoder.py"), load_tokenizer(parent))[:513]
    torch.manual_seed(1)
    untrained = CausalLM(model.arch)
    trained = score_sequences(model, tokens, 32, parent=model)
    random = score_sequences(untrained, tokens, 32, parent=model)
    same = compare(trained, score_sequences(model, tokens, 32, parent=model))
    assert same.verdict == "tie" and same.diff.low == same.diff.high == 0.0
    ours = compare(trained, random)
    assert ours.verdict == "win" and ours.ratio.high < 1.0
    assert compare(random, trained, "kl").verdict == "loss"
    assert random.top1_agreement is not None and random.top1_agreement < 1.0
    with pytest.raises(DataError, match="same rows"):
        compare(trained, score_sequences(model, tokens[:200], 32))


def test_eval_token_count_is_whole_rows_within_the_split(parent: Path) -> None:
    from puzzle.child.evaluate import eval_token_count

    model = load_pretrained(parent)
    tokens = encode_corpus(read_corpus(tiny.CORPUS), load_tokenizer(parent))
    n = eval_token_count(model, tokens, 32, rel=0.5, pilot_sequences=8)
    assert n < len(tokens) and (n - 1) % 32 == 0  # a loose target needs only part of the split, in whole rows
    assert eval_token_count(model, tokens, 32, rel=0.05, pilot_sequences=8) > n  # a tighter one needs more
    assert eval_token_count(model, tokens[:200], 32, rel=1e-4, pilot_sequences=8) == 200  # the whole split
