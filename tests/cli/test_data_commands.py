"""CLI: ``puzzle parent train``, ``puzzle eval`` and ``puzzle demo`` argument checks as a user runs them (subprocesses)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from puzzle.child.evaluate import evaluate
from puzzle.data import encode_corpus, load_tokenizer, read_corpus
from puzzle.model import load_pretrained
from puzzle.train import train_parent
from tests.train import tiny

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    env = os.environ | {"PYTHONPATH": str(ROOT), "PUZZLE_CACHE_DIR": str(cache)}
    return subprocess.run(
        [sys.executable, "-m", "puzzle", *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )


@pytest.fixture(scope="module")
def parent(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "parent"
    train_parent(tiny.preset(steps=6), out, tiny.CORPUS, cache_dir=out.parent / "cache")
    return out


def test_eval_json_equals_the_library_result(parent: Path, tmp_path: Path) -> None:
    text = tiny.CORPUS / "scanner.py"
    result = run_cli("eval", "--model", str(parent), "--text", str(text), "--json", cache=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"tokens", "loss", "perplexity"} and isinstance(data["tokens"], int)
    tokens = encode_corpus(read_corpus(text), load_tokenizer(parent))
    expected = evaluate(load_pretrained(parent), tokens, seq_len=32)  # model_max_length of the tiny preset
    assert data["tokens"] == expected.tokens == len(tokens) - 1
    assert data["loss"] == pytest.approx(expected.loss, abs=1e-6)
    assert data["perplexity"] == pytest.approx(expected.perplexity, rel=1e-6)

    short = run_cli("eval", "--model", str(parent), "--text", str(text), "--seq-len", "4", cache=tmp_path)
    assert short.returncode == 0, short.stderr
    assert short.stdout.startswith(f"tokens {expected.tokens}  loss ")
    assert float(short.stdout.split()[3]) > data["loss"]  # less context, higher loss


def test_eval_held_out_scores_only_the_held_out_files(parent: Path, tmp_path: Path) -> None:
    from puzzle.data import split_corpus

    corpus_dir = tmp_path / "corpus"
    corpus_dir.mkdir()
    source = (tiny.CORPUS / "decoder.py").read_text()
    for i in range(100):
        (corpus_dir / f"part_{i}.py").write_text(source[i * 100 : i * 100 + 300])
    _, held = split_corpus(read_corpus(corpus_dir))
    assert 0 < len(held.documents) < 20
    result = run_cli("eval", "--model", str(parent), "--text", str(corpus_dir), "--held-out", "--json", cache=tmp_path)
    assert result.returncode == 0, result.stderr
    expected = evaluate(load_pretrained(parent), encode_corpus(held, load_tokenizer(parent)), seq_len=32)
    assert json.loads(result.stdout)["tokens"] == expected.tokens
    assert json.loads(result.stdout)["loss"] == pytest.approx(expected.loss, abs=1e-6)


@pytest.mark.parametrize(
    ("which", "message"),
    [
        ("model", "model directory .* does not exist"),
        ("text", "corpus .* does not exist"),
        ("tokenizer", "no tokenizer at"),
        ("seq", "--seq-len must be a positive integer"),
    ],
)
def test_eval_errors_are_one_line_exit_2(which: str, message: str, parent: Path, tmp_path: Path) -> None:
    import re
    import shutil

    model, text, extra = str(parent), str(tiny.CORPUS / "scanner.py"), []
    if which == "model":
        model = str(tmp_path / "no-model")
    elif which == "text":
        text = str(tmp_path / "missing.txt")
    elif which == "tokenizer":
        model = str(tmp_path / "copy")
        shutil.copytree(parent, model)
        Path(model, "tokenizer.json").unlink()
    else:
        extra = ["--seq-len", "0"]
    result = run_cli("eval", "--model", model, "--text", text, *extra, cache=tmp_path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert re.search(message, result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_parent_train_cli_writes_a_parent_and_reuses_it(tmp_path: Path) -> None:
    out = tmp_path / "parent"
    args = (
        "parent",
        "train",
        "--preset",
        "tiny-llama",
        "--corpus",
        str(tiny.CORPUS),
        "--steps",
        "2",
        "--out",
        str(out),
    )
    first = run_cli(*args, "--json", cache=tmp_path / "cache")
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout)
    assert summary["steps"] == 2 and summary["preset"] == "tiny-llama" and not summary["reused"]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and config["num_hidden_layers"] == 8 and config["hidden_size"] == 256
    again = run_cli(*args, cache=tmp_path / "cache")
    assert again.returncode == 0, again.stderr
    assert "reused" in again.stdout
    bad = run_cli(
        "parent",
        "train",
        "--preset",
        "tiny-llama",
        "--corpus",
        str(tmp_path / "nope"),
        "--out",
        str(out),
        cache=tmp_path,
    )
    assert bad.returncode == 2 and "does not exist" in bad.stderr and "Traceback" not in bad.stderr


def test_demo_rejects_bad_sizes_on_one_line(tmp_path: Path) -> None:
    """The demo is now the whole pipeline (tests/pipeline runs it end to end on a small parent)."""
    bad = run_cli("demo", "--out", str(tmp_path / "demo"), "--gkd-tokens", "0", cache=tmp_path)
    assert bad.returncode == 2 and "--gkd-tokens must be a positive integer" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "demo").exists()
