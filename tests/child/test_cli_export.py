from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from puzzle.child.assemble import assemble
from puzzle.child.export import read_manifest
from puzzle.library import BlockLibrary
from puzzle.model import load_pretrained
from tests.child import ids, tiny_library, tiny_parent_dir

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "puzzle", *args], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env
    )


@pytest.fixture(scope="module")
def lib_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli")
    tiny_library(root / "library", tiny_parent_dir(root / "parent"))
    return root / "library"


def test_export_a_saved_solution(lib_dir, tmp_path) -> None:
    solution = {"layers": ["kv1", "ffn50", "noop"], "metric": "kl_div", "objective": 0.1, "solver": "test"}
    (tmp_path / "solution.json").write_text(json.dumps(solution))
    out = tmp_path / "child"
    result = run_cli(
        "export",
        "--library",
        str(lib_dir),
        "--solution",
        str(tmp_path / "solution.json"),
        "--out",
        str(out),
        "--measure",
    )
    assert result.returncode == 0, result.stderr
    assert "layer   2  noop" in result.stdout
    library = BlockLibrary.load(lib_dir)
    expected = assemble(library, lib_dir, solution["layers"])
    with torch.no_grad():
        assert torch.equal(load_pretrained(out)(ids()), expected(ids()))
    manifest = read_manifest(out)
    assert manifest["library_digest"] == library.digest()
    assert manifest["parent_digest"] == library.parent["digest"]
    assert manifest["layers"] == solution["layers"] and manifest["solver"] == "test"
    parent_runtime = sum(layer.parent.scenario_costs["cpu"]["runtime_ms"] for layer in library.layers) + 0.05
    assert manifest["predicted_costs"]["runtime_ms@cpu"] < parent_runtime
    assert (out / "tokenizer.json").is_file()
    assert manifest["measured_costs"]["runtime_ms@cpu"] > 0 and "runtime_error_pct@cpu" in manifest["measured_costs"]

    again = run_cli(
        "export", "--library", str(lib_dir), "--solution", str(tmp_path / "solution.json"), "--out", str(out)
    )
    assert again.returncode == 2
    assert len(again.stderr.strip().splitlines()) == 1 and "--force" in again.stderr


def test_bad_arguments_are_one_line_errors(lib_dir, tmp_path) -> None:
    bad = run_cli("export", "--library", str(lib_dir), "--max", "runtime_ms", "--out", str(tmp_path / "x"))
    assert bad.returncode == 2 and "KEY=VALUE" in bad.stderr and "Traceback" not in bad.stderr
    (tmp_path / "s.json").write_text('{"layers": ["parent", "bogus", "parent"]}')
    bad = run_cli(
        "export", "--library", str(lib_dir), "--solution", str(tmp_path / "s.json"), "--out", str(tmp_path / "y")
    )
    assert bad.returncode == 2 and "no variant named 'bogus'" in bad.stderr
    assert not (tmp_path / "y").exists()


def test_export_solves_under_max_bounds(lib_dir, tmp_path) -> None:
    from puzzle.child.assess import predicted_cost
    from puzzle.search import solve

    out = tmp_path / "child"
    result = run_cli("export", "--library", str(lib_dir), "--max", "runtime_ms=70%", "--out", str(out))
    assert result.returncode == 0, result.stderr
    library = BlockLibrary.load(lib_dir)
    expected = solve(library, "kl_div", ["runtime_ms<=70%"])
    manifest = read_manifest(out)
    assert manifest["layers"] == list(expected.layers)
    assert manifest["constraints"] == ["runtime_ms<=70%"] and manifest["solver"] == expected.solver
    parent = predicted_cost(library, ["parent"] * 3, "runtime_ms", "cpu")
    assert manifest["predicted_costs"]["runtime_ms@cpu"] <= 0.7 * parent + 1e-9
    infeasible = run_cli("export", "--library", str(lib_dir), "--max", "runtime_ms=0.1%", "--out", str(tmp_path / "z"))
    assert infeasible.returncode == 2 and "runtime_ms" in infeasible.stderr and not (tmp_path / "z").exists()
