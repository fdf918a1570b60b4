from __future__ import annotations

import json
import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from puzzle.child.export import read_manifest
from puzzle.child.gkd import GKDConfig
from puzzle.library.build import BuildConfig
from puzzle.library.distill import BLDConfig
from puzzle.model import load_pretrained
from puzzle.pipeline.demo import DemoConfig, format_table, run_demo
from puzzle.presets import Preset, TrainConfig, tiny_llama
from tests.progress import RecordingProgress


def _corpus(root: Path) -> Path:
    """A small real corpus: a few packages of the Python standard library."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for package in ("json", "email", "logging", "urllib", "http", "importlib"):
        shutil.copytree(stdlib / package, root / package, ignore=shutil.ignore_patterns("__pycache__", "test*"))
    return root


def _config(corpus: Path) -> DemoConfig:
    preset = Preset(
        name="test-tiny",
        description="3-layer test parent",
        make_arch=lambda v: tiny_llama(v, hidden=64, n_layers=3, n_heads=4, n_kv_heads=2, intermediate=128),
        vocab_size=512,
        train=TrainConfig(steps=30, batch_size=8, seq_len=64, lr=3e-3, warmup_steps=5, held_out_fraction=0.2),
    )
    build = BuildConfig(
        bld=BLDConfig(tokens=2048, batch=4), seq_len=64, distill_sequences=16, holdout_sequences=8, repeats=3, warmup=1
    )
    return DemoConfig(
        preset=preset,
        corpus=str(corpus),
        build=build,
        gkd=GKDConfig(tokens=4 * 4 * 64, batch=4, seq_len=64, lr=1e-3),
        eval_sequences=4,
        eval_seq_len=64,
        executor="local",
        latency_repeats=3,
    )


@pytest.mark.slow
def test_demo_runs_every_stage_then_reuses_them(tmp_path) -> None:
    cfg = _config(_corpus(tmp_path / "corpus"))
    out = tmp_path / "demo"
    progress = RecordingProgress()
    result = run_demo(out, cfg, progress=progress)

    assert "train parent" in progress.totals and any(s.startswith("gkd ") for s in progress.totals)
    report = json.loads((out / "report.json").read_text())
    rows = report["rows"]
    for row in rows:
        assert {"budget", "method", "perplexity", "kl", "measured_latency_ms", "predicted_latency_ms"} <= set(row)
    methods = {(r["budget"], r["method"]) for r in rows}
    for budget in cfg.budgets:
        for m in ("puzzle", "puzzle+gkd"):
            assert (budget, m) in methods
    parent_row = next(r for r in rows if r["method"] == "parent")
    for r in rows:
        if r["method"] != "parent" and r["predicted_latency_ms"] is not None:
            assert r["predicted_latency_ms"] <= r["budget"] * parent_row["predicted_latency_ms"] * (1 + 1e-9)
            assert r["perplexity"] > 1 and r["kl"] >= 0
    # GKD is kept only where it lowers validation KL; otherwise the +gkd child is the assembled one
    by_key = {(r["budget"], r["method"]): r for r in rows}
    gkd_records = [
        json.loads(f.read_text())["value"] for f in (out / "results").iterdir() if f.name.startswith("child_")
    ]
    gkd_records = [r["gkd"] for r in gkd_records if "gkd" in r]
    assert gkd_records and all(isinstance(g["kept"], bool) for g in gkd_records)
    for g in gkd_records:
        assert g["kept"] == (g["validation_kl_after"] < g["validation_kl_before"])
    for (budget, method), row in by_key.items():
        if method.endswith("+gkd") and row["perplexity"] is not None:
            raw = by_key[(budget, method.removesuffix("+gkd"))]
            assert row["kl"] <= raw["kl"] * 1.5 + 1e-3  # never far worse than the child it started from
    html = (out / "frontier.html").read_text()
    assert '<script src="http' not in html and len(html) > 1_000_000  # plotly.js inlined, no CDN
    for budget, path in result.exports.items():
        manifest = read_manifest(path)
        row = next(r for r in rows if r["method"] == "puzzle+gkd" and f"{r['budget']:g}" == budget)
        assert manifest["layers"] == row["layers"]
        assert manifest["measured_costs"][f"runtime_ms@{result.scenario}"] == row["measured_latency_ms"]
        child = load_pretrained(path)
        from puzzle.library import BlockLibrary

        library = BlockLibrary.load(out / "library")
        specs = [layer.variant(n).spec for layer, n in zip(library.layers, row["layers"], strict=True)]
        assert list(child.arch.blocks) == specs
    assert len(result.exports) == len(cfg.budgets)
    assert "puzzle+gkd" in format_table(result.rows)
    # every row carries intervals and per-sequence scores on the same sequences; the reference row is there
    reference = next(r for r in result.rows if r.method == "parent+tokens")
    puzzle_row = next(r for r in result.rows if r.method == "puzzle+gkd")
    for r in (reference, puzzle_row):
        assert r.perplexity_ci is not None and r.perplexity_ci[0] <= r.perplexity <= r.perplexity_ci[1]
        assert 0.0 <= r.top1_agreement <= 1.0
    assert puzzle_row.comparison(reference).verdict in ("win", "tie", "loss")

    again = RecordingProgress()
    second = run_demo(out, cfg, progress=again)
    assert "train parent" not in again.totals and not any(s.startswith("gkd ") and again.done[s] for s in again.totals)
    assert [r.perplexity for r in second.rows] == [r.perplexity for r in result.rows]
    # the exported child is the GKD-healed one: its perplexity row matches a fresh evaluation of the export
    from puzzle.child.evaluate import evaluate
    from puzzle.data import cached_tokens, load_tokenizer, read_corpus, split_corpus

    path = result.exports[f"{cfg.budgets[1]:g}"]
    tok = load_tokenizer(out / "parent")
    _, held = split_corpus(read_corpus(cfg.corpus), 0.2)
    from puzzle.pipeline.demo import evaluation_tokens

    tokens, _ = evaluation_tokens(load_pretrained(out / "parent"), cached_tokens(held, tok, "held_out"), cfg)
    row = next(r for r in result.rows if r.method == "puzzle+gkd" and r.budget == cfg.budgets[1])
    torch.manual_seed(0)
    assert evaluate(load_pretrained(path), tokens, cfg.eval_seq_len).perplexity == pytest.approx(
        row.perplexity, rel=1e-5
    )
