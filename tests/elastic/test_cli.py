"""End to end: `puzzle elastic train` writes one checkpoint for every budget; `puzzle elastic slice` writes a
normal child that loads with ``load_pretrained`` and computes what the elastic model computes at that budget."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from puzzle.cli import main
from puzzle.elastic import load_elastic, read_summary
from puzzle.elastic.model import n_params
from puzzle.model import load_pretrained
from tests.library import make_corpus, make_parent, small_hybrid, small_llama

ARCHS = {"llama": lambda: small_llama(n_layers=3, n_kv_heads=2), "hybrid": lambda: small_hybrid("M-*M")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_files=40)


@pytest.mark.parametrize(("name", "selection"), [("llama", "mip"), ("hybrid", "mip"), ("hybrid", "router")])
def test_train_then_slice_every_budget(name: str, selection: str, corpus: Path, tmp_path: Path, capsys) -> None:
    parent = make_parent(tmp_path / "parent", corpus, ARCHS[name])
    out = tmp_path / "elastic"
    args = ["elastic", "train", "--parent", str(parent), "--budgets", "0.8,0.6,0.4", "--out", str(out)]
    args += ["--corpus", str(corpus), "--tokens", str(4 * 4 * 32), "--batch", "4", "--seq-len", "32", "--json"]
    args += ["--held-out-fraction", "0.2", "--selection", selection]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert set(summary["budgets"]) == {"0.8", "0.6", "0.4"} and summary["training"]["steps"] == 4
    assert read_summary(out)["budgets"] == summary["budgets"] and summary["selection"] == selection
    assert set(summary["mip"]) == set(summary["budgets"])  # the MIP's choice is kept for comparison either way
    assert main(args) == 0  # the same command again: the finished folder is reused, not rebuilt
    captured = capsys.readouterr()
    assert json.loads(captured.out) == summary and "reusing the finished elastic model" in captured.err
    elastic = load_elastic(out)
    parent_params = n_params(load_pretrained(parent))
    assert n_params(elastic.model) == parent_params  # one set of weights: deploying every budget costs one parent
    ids = torch.randint(0, elastic.arch.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    for budget in (0.8, 0.6, 0.4):
        child_dir = tmp_path / f"child-{budget:g}"
        assert main(["elastic", "slice", "--model", str(out), "--budget", f"{budget:g}", "--out", str(child_dir)]) == 0
        child = load_pretrained(child_dir)
        assert (child_dir / "tokenizer.json").is_file()
        assert n_params(child) <= budget * parent_params
        with torch.no_grad():
            torch.testing.assert_close(child(ids), elastic(ids, budget=budget), rtol=0, atol=1e-5)


def test_user_mistakes_are_one_line_errors(corpus: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(["elastic", "train", "--parent", str(tmp_path), "--budgets", "0.8,1.5", "--out", str(tmp_path / "o")]) == 2
    )
    assert "budget 1.5 must be a fraction" in capsys.readouterr().err
    assert main(["elastic", "slice", "--model", str(tmp_path), "--budget", "0.5", "--out", str(tmp_path / "c")]) == 2
    assert "not an elastic model folder" in capsys.readouterr().err
