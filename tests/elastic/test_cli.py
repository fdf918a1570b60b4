"""End to end: `puzzle elastic train` writes one checkpoint for every budget; `puzzle elastic slice` writes a
normal child that loads with ``load_pretrained`` and computes what the elastic model computes at that budget, and
whose held-out perplexity is the one the build recorded for the budget."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from puzzle.child.evaluate import evaluate
from puzzle.child.export import read_manifest
from puzzle.cli import main
from puzzle.data import cached_tokens, load_tokenizer, read_corpus, split_corpus
from puzzle.elastic import ElasticConfig, config_arch, family, load_elastic, read_summary
from puzzle.elastic.model import n_params
from puzzle.library import BlockLibrary
from puzzle.model import load_pretrained
from puzzle.targets import loadable_by
from tests.library import make_corpus, make_parent, small_hybrid, small_llama

ARCHS = {"llama": lambda: small_llama(n_layers=3, n_kv_heads=2), "hybrid": lambda: small_hybrid("M-*M")}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"), n_files=40)


def _held_out(parent: Path, corpus: Path, fraction: float, on: dict) -> np.ndarray:
    """The held-out token stream the build's perplexities cover (``perplexity_on``), read the way parents split."""
    _, held = split_corpus(read_corpus(corpus), fraction)
    assert on["split"] == "held-out" and on["tokens"] == on["rows"] * on["seq_len"]
    return cached_tokens(held, load_tokenizer(parent), "held-out")[: on["tokens"] + 1]


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
    on = summary["perplexity_on"]
    assert on["rows"] == 16 and on["seq_len"] == 128  # the rows the nested slices were scored on
    held = _held_out(parent, corpus, 0.2, on)
    parent_ppl = evaluate(load_pretrained(parent), held, on["seq_len"]).perplexity
    assert summary["parent_perplexity"] == pytest.approx(parent_ppl, rel=1e-4)
    assert main(args) == 0  # the same command again: the finished folder is reused, not rebuilt
    captured = capsys.readouterr()
    assert json.loads(captured.out) == summary and "reusing the finished elastic model" in captured.err
    assert summary["target"] == summary["request"]["target"] == "vllm"  # the default, as pipeline jobs build
    elastic = load_elastic(out)
    parent_params = n_params(load_pretrained(parent))
    assert n_params(elastic.model) == parent_params  # one set of weights: deploying every budget costs one parent
    ids = torch.randint(0, elastic.arch.vocab_size, (2, 20), generator=torch.Generator().manual_seed(0))
    members = family(out)
    assert [m.budget for m in members] == [0.8, 0.6, 0.4]
    for budget, member in zip((0.8, 0.6, 0.4), members, strict=True):
        child_dir = tmp_path / f"child-{budget:g}"
        assert main(["elastic", "slice", "--model", str(out), "--budget", f"{budget:g}", "--out", str(child_dir)]) == 0
        assert "loadable by transformers, vllm" in capsys.readouterr().out
        child = load_pretrained(child_dir)
        sliced = config_arch(elastic.arch, elastic.config_for(budget))  # (a hybrid's export drops skipped layers)
        assert "vllm" in loadable_by(sliced) and "vllm" in loadable_by(child.arch)
        manifest = read_manifest(child_dir)
        assert manifest["target"] == "vllm" and manifest["loadable_by"] == loadable_by(sliced)
        assert manifest["layers"] == [c.name for c in elastic.config_for(budget).layers]
        assert (child_dir / "tokenizer.json").is_file()
        assert n_params(child) == member.params <= budget * parent_params
        chosen = summary["budgets"][f"{budget:g}"]
        assert member.config.to_list() == chosen["layers"] and member.cost == member.params  # cost: num_params
        assert (
            member.perplexity
            == chosen["perplexity"]
            == pytest.approx(evaluate(child, held, on["seq_len"]).perplexity, rel=1e-4)
        )
        if selection == "mip":
            assert member.objective == pytest.approx(chosen["objective"])
        else:
            assert member.cost_ratio == pytest.approx(chosen["cost_ratio"])
        with torch.no_grad():
            torch.testing.assert_close(child(ids), elastic(ids, budget=budget), rtol=0, atol=1e-5)


def test_target_and_ffn_multiple_reach_the_request_and_slice_checks_the_recorded_target(
    corpus: Path, tmp_path: Path, capsys
) -> None:
    parent = make_parent(tmp_path / "parent", corpus, ARCHS["llama"])
    out = tmp_path / "elastic"
    args = ["elastic", "train", "--parent", str(parent), "--budgets", "0.7", "--out", str(out), "--tokens", "0"]
    args += ["--corpus", str(corpus), "--held-out-fraction", "0.2", "--target", "any", "--ffn-multiple", "128"]
    assert main(args) == 0
    summary = read_summary(out)
    assert summary["request"]["target"] is None and summary["target"] is None
    assert summary["space"]["ffn_multiple"] == summary["request"]["space"]["ffn_multiple"] == 128
    grid = BlockLibrary.load(out / "library").notes["elastic_grid"]
    for layer in grid["layers"]:  # no target: partial attention stays; FFN widths (256 in the parent) on 128
        assert layer["attention"] == [2, 1, 0] and layer["ffn"] == [256, 128, 0]
    # a folder written before perplexities were recorded (schema 1) still reads; the same command measures them
    old = {k: v for k, v in summary.items() if k not in ("parent_perplexity", "perplexity_on")}
    old |= {
        "schema_version": 1,
        "budgets": {"0.7": {k: v for k, v in summary["budgets"]["0.7"].items() if k != "perplexity"}},
    }
    (out / "elastic.json").write_text(json.dumps(old))
    assert family(out)[0].perplexity is None
    capsys.readouterr()
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "measuring the held-out perplexities" in captured.err
    assert "budget 0.7: MIP num_params" in captured.out and "held-out perplexity" in captured.out
    upgraded = read_summary(out)
    assert upgraded["schema_version"] == 2 and upgraded["perplexity_on"] == summary["perplexity_on"]
    assert upgraded["parent_perplexity"] == pytest.approx(summary["parent_perplexity"], rel=1e-6)
    ppl = summary["budgets"]["0.7"]["perplexity"]
    assert upgraded["budgets"]["0.7"]["perplexity"] == family(out)[0].perplexity == pytest.approx(ppl, rel=1e-6)
    # a budget whose record names vllm but keeps half the KV groups (and so half the query heads) of layer 0
    layers = [{"attention": 1, "ffn": 128, "mamba": 0}, *summary["budgets"]["0.7"]["layers"][1:]]
    (out / "elastic.json").write_text(
        json.dumps(summary | {"target": "vllm", "budgets": {"0.7": {"budget": 0.7, "layers": layers}}})
    )
    capsys.readouterr()
    assert main(["elastic", "slice", "--model", str(out), "--budget", "0.7", "--out", str(tmp_path / "refused")]) == 2
    err = capsys.readouterr().err
    assert "the child cannot be loaded by vllm" in err and "layer 1: attention with 4 heads" in err
    assert not (tmp_path / "refused").exists()
    (out / "elastic.json").write_text(
        json.dumps(summary | {"budgets": {"0.7": {"budget": 0.7, "layers": layers}}})
    )  # recorded target any: written, and its manifest says who loads it
    assert main(["elastic", "slice", "--model", str(out), "--budget", "0.7", "--out", str(tmp_path / "child")]) == 0
    manifest = read_manifest(tmp_path / "child")
    child_arch = config_arch(load_elastic(out).arch, ElasticConfig.from_list(layers))
    assert "target" not in manifest and manifest["loadable_by"] == loadable_by(child_arch)
    assert manifest["loadable_by"] == []  # one global head count in nemotron-nas: no engine loads it
    assert "loadable by none" in capsys.readouterr().out


def test_user_mistakes_are_one_line_errors(corpus: Path, tmp_path: Path, capsys) -> None:
    assert (
        main(["elastic", "train", "--parent", str(tmp_path), "--budgets", "0.8,1.5", "--out", str(tmp_path / "o")]) == 2
    )
    assert "budget 1.5 must be a fraction" in capsys.readouterr().err
    assert main(["elastic", "slice", "--model", str(tmp_path), "--budget", "0.5", "--out", str(tmp_path / "c")]) == 2
    assert "not an elastic model folder" in capsys.readouterr().err
    args = ["elastic", "train", "--parent", str(tmp_path), "--budgets", "0.8", "--out", str(tmp_path / "o")]
    assert main([*args, "--target", "vlm"]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "--target 'vlm': choose one of transformers, vllm, sglang" in err and "or any" in err
    )
    assert main([*args, "--ffn-multiple", "0"]) == 2
    assert "ffn_multiple must be a positive integer" in capsys.readouterr().err
