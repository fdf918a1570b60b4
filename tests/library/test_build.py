"""End-to-end library builds on a tiny random parent: in-process, and via the CLI killed mid-build and resumed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from puzzle.library import BlockLibrary, Scenario
from puzzle.library.build import BuildConfig, build_library, load_report
from puzzle.library.distill import BLDConfig, build_block
from puzzle.library.space import parse_space
from tests.library import make_corpus, make_parent, small_hybrid
from tests.progress import RecordingProgress

REPO = Path(__file__).resolve().parents[2]
SPACE = {"attention": {"kv_heads": [2]}, "ffn": {"fractions": [0.5], "multiple": 32}}
SCENARIOS = (
    Scenario("cpu-prefill", "prefill", 2, 32, "cpu", "float32"),
    Scenario("cpu-decode", "decode", 2, 32, "cpu", "float32"),
)


@pytest.fixture(scope="module")
def parent(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("parent")
    corpus = make_corpus(root / "corpus")
    return make_parent(root / "parent", corpus), corpus


def test_build_library_in_process(parent, tmp_path) -> None:
    parent_dir, corpus = parent
    config = BuildConfig(
        bld=BLDConfig(tokens=1024, batch=4),
        seq_len=32,
        distill_sequences=24,
        holdout_sequences=6,
        held_out_fraction=0.3,
        corpus=str(corpus),
        warmup=1,
        repeats=2,
        scenarios=SCENARIOS,
    )
    progress = RecordingProgress()
    library = build_library(parent_dir, tmp_path / "lib", space=parse_space(SPACE), config=config, progress=progress)
    assert progress.done == progress.totals
    assert progress.totals["distill"] == 2 * 4  # per layer: kv 2, linear attention, ffn 50 %, linear ffn
    loaded = BlockLibrary.load(tmp_path / "lib")
    assert loaded.digest() == library.digest()
    arch = None
    for layer in loaded.layers:
        assert len(layer.variants) == 4 * 4  # (parent, kv 2, linear, no-op) x (parent, 50 %, linear, no-op)
        assert layer.parent.metrics["kl_div"] == 0.0
        assert layer.parent.metrics["cosine"] == pytest.approx(1.0)
        assert all(v.metrics["kl_div"] > 0 for v in layer.variants if not v.is_parent)
        assert set(loaded.scenarios) == {"cpu-prefill", "cpu-decode"}
        for v in layer.variants:
            assert v.scenario_costs["cpu-prefill"]["runtime_ms"] > 0 or v.spec.is_no_op
            if v.spec.is_no_op:
                assert v.weights is None and v.costs["num_params"] == 0
                continue
            from puzzle.arch import ArchSpec

            arch = arch or ArchSpec.from_dict(loaded.parent["arch"])
            block = build_block(arch, v.spec, load_file(str(tmp_path / "lib" / v.weights)))  # strict load
            assert sum(p.numel() for p in block.parameters()) == v.costs["num_params"]
    report = load_report(tmp_path / "lib")
    assert len(report["units"]) == 8
    assert set(report["additivity"]) == {"cpu-prefill", "cpu-decode"}
    parent_kv = loaded.layers[0].parent.scenario_costs["cpu-decode"]["memory_mib"]
    smaller_kv = next(
        v
        for v in loaded.layers[0].variants
        if v.name.startswith("attention = 2 kv heads") and v.name.endswith("(parent * 100%)")
    )
    assert smaller_kv.scenario_costs["cpu-decode"]["memory_mib"] < parent_kv


def _cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-m", "puzzle", "library", "build", *args],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_cli_build_resumes_after_kill_9(parent, tmp_path) -> None:
    parent_dir, corpus = parent
    space = tmp_path / "space.yaml"
    space.write_text("attention: {kv_heads: [1]}\nffn: {fractions: [0.5], multiple: 32}\n")
    out = tmp_path / "lib"
    common = [
        "--parent",
        str(parent_dir),
        "--out",
        str(out),
        "--space",
        str(space),
        "--corpus",
        str(corpus),
        "--tokens",
        "3072",
        "--batch",
        "4",
        "--seq-len",
        "32",
        "--distill-sequences",
        "24",
        "--holdout-sequences",
        "6",
        "--held-out-fraction",
        "0.3",
        "--repeats",
        "2",
    ]
    results = out / "work" / "results"
    proc = _cli(*common, "--workers", "1")
    deadline = time.time() + 240
    while time.time() < deadline and len(list(results.glob("bld_*.json"))) < 3:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = {p: p.stat().st_mtime_ns for p in results.glob("bld_*.json")}
    assert 3 <= len(finished) < 2 * 4  # killed mid-distillation
    assert not (out / "library.json").exists()

    proc = _cli(*common, "--executor", "ray", "--workers", "2")
    stdout, stderr = proc.communicate(timeout=400)
    assert proc.returncode == 0, stderr
    assert "built 2 layers x 16 variants" in stdout
    for path, mtime in finished.items():  # finished units were skipped, not redone
        assert path.stat().st_mtime_ns == mtime
    assert len(list(results.glob("bld_*.json"))) == 2 * 4
    library = BlockLibrary.load(out)
    assert all(layer.parent.metrics["kl_div"] == 0.0 for layer in library.layers)


def test_build_hybrid_library_in_process(tmp_path) -> None:
    corpus = make_corpus(tmp_path / "corpus")
    parent_dir = make_parent(tmp_path / "parent", corpus, arch_fn=lambda: small_hybrid("M*-"))
    config = BuildConfig(
        bld=BLDConfig(tokens=512, batch=4),
        seq_len=32,
        distill_sequences=16,
        holdout_sequences=4,
        held_out_fraction=0.3,
        corpus=str(corpus),
        warmup=1,
        repeats=2,
        scenarios=SCENARIOS,
    )
    space = parse_space(
        {"mamba": {"head_fractions": [0.5]}, "attention": {"kv_heads": [1]}, "ffn": {"fractions": [0.5]}}
    )
    library = build_library(parent_dir, tmp_path / "lib", space=space, config=config)
    mamba, attention, mlp = library.layers
    assert [v.spec.mamba.n_heads for v in mamba.variants if not v.spec.is_no_op] == [8, 4]
    assert len(attention.variants) == 4 and len(mlp.variants) == 4  # parent, kv 1 / 50 %, linear, no-op
    assert all(layer.parent.metrics["kl_div"] == 0.0 for layer in library.layers)
    half = next(v for v in mamba.variants if not v.is_parent and not v.spec.is_no_op)
    assert half.costs["num_params"] < mamba.parent.costs["num_params"]
    assert half.scenario_costs["cpu-decode"]["memory_mib"] < mamba.parent.scenario_costs["cpu-decode"]["memory_mib"]
