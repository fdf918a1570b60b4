from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from puzzle.arch import AttentionSpec, BlockSpec, FFNSpec
from puzzle.errors import ConfigError, LibraryError
from puzzle.library import BlockLibrary, Layer, Scenario, Variant, import_nvlabs
from tests.shared_data import shared_data_dir

REPO = Path(__file__).resolve().parents[2]
NVLABS = (shared_data_dir(REPO) or Path("/nonexistent")) / "nvlabs-puzzle-llama-3.3-70b"
needs_nvlabs = pytest.mark.skipif(not NVLABS.is_dir(), reason="shared NVlabs library not present")


def tiny_library(n_layers: int = 3) -> BlockLibrary:
    """Two scenarios, parent + attention-free + no-op variants per layer."""
    layers = []
    for i in range(n_layers):
        parent = BlockSpec(AttentionSpec(n_heads=4, n_kv_heads=2, head_dim=8), FFNSpec(intermediate_size=64))
        variants = (
            Variant(
                "parent",
                True,
                parent,
                {"kl_div": 0.0},
                {"num_params": 1000.0},
                {"pre": {"runtime_ms": 10.0, "memory_mib": 5.0}, "dec": {"runtime_ms": 1.0, "memory_mib": 7.0}},
            ),
            Variant(
                "no_attention",
                False,
                BlockSpec(ffn=FFNSpec(intermediate_size=64)),
                {"kl_div": 0.5 + i},
                {"num_params": 600.0},
                {"pre": {"runtime_ms": 6.0, "memory_mib": 3.0}, "dec": {"runtime_ms": 0.5, "memory_mib": 3.0}},
                weights="weights/abc.safetensors",
            ),
            Variant(
                "no_op",
                False,
                BlockSpec(),
                {"kl_div": 3.0 + i},
                {"num_params": 0.0},
                {"pre": {"runtime_ms": 0.0, "memory_mib": 0.0}, "dec": {"runtime_ms": 0.0, "memory_mib": 0.0}},
            ),
        )
        layers.append(Layer(i, variants))
    return BlockLibrary(
        layers=tuple(layers),
        scenarios={
            "pre": Scenario("pre", "prefill", 8, 128, "cpu", "fp32"),
            "dec": Scenario("dec", "decode", 8, 128, "cpu", "fp32"),
        },
        default_scenario="pre",
        family="llama",
        hidden_size=32,
        non_block_costs={"num_params": 500.0},
        non_block_scenario_costs={"pre": {"runtime_ms": 2.0}},
    )


def test_round_trip_and_digest(tmp_path: Path) -> None:
    lib = tiny_library()
    path = lib.save(tmp_path / "lib")
    assert path.name == "library.json"
    loaded = BlockLibrary.load(tmp_path / "lib")
    assert loaded == lib
    assert loaded.digest() == lib.digest()
    assert BlockLibrary.from_dict(json.loads(path.read_text())).to_dict() == lib.to_dict()
    assert not [p for p in (tmp_path / "lib").iterdir() if p.name != "library.json"], "no temp files left"
    changed = lib.to_dict()
    changed["layers"][1]["variants"][1]["metrics"]["kl_div"] += 1e-9
    assert BlockLibrary.from_dict(changed).digest() != lib.digest()


def test_cost_keys_resolve_by_scenario() -> None:
    lib = tiny_library()
    assert lib.resolve_cost_key("num_params") == ("num_params", None)
    assert lib.resolve_cost_key("runtime_ms") == ("runtime_ms", "pre")
    assert lib.resolve_cost_key("runtime_ms", "dec") == ("runtime_ms", "dec")
    assert lib.resolve_cost_key("runtime_ms@dec", "pre") == ("runtime_ms", "dec")
    assert lib.non_block_cost("runtime_ms", "pre") == 2.0
    assert lib.non_block_cost("runtime_ms", "dec") == 0.0
    assert lib.scenarios["dec"].tokens_per_sequence == 1
    assert lib.scenarios["pre"].tokens_per_run == 8 * 128
    with pytest.raises(ConfigError, match="unknown cost 'latency'"):
        lib.resolve_cost_key("latency")
    with pytest.raises(ConfigError, match="unknown scenario 'gpu'"):
        lib.resolve_cost_key("runtime_ms@gpu")
    assert lib.layers[1].variant("no_op").flat_costs() == {
        "num_params": 0.0,
        "runtime_ms@pre": 0.0,
        "memory_mib@pre": 0.0,
        "runtime_ms@dec": 0.0,
        "memory_mib@dec": 0.0,
    }


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(schema_version=99), "schema_version 99 is not supported"),
        (lambda d: d["layers"][1]["variants"][0].update(is_parent=False), "layer 1: exactly one variant"),
        (lambda d: d["layers"][2]["variants"][1]["metrics"].pop("kl_div"), "layer 2 variant 'no_attention': metrics"),
        (
            lambda d: d["layers"][0]["variants"][2]["costs"].update(num_params=-1),
            "num_params: a cost cannot be negative",
        ),
        (lambda d: d["layers"][0]["variants"][2]["costs"].update(num_params="x"), "num_params: expected a number"),
        (lambda d: d["layers"][1]["variants"][2]["scenario_costs"].pop("dec"), "scenario 'dec' costs"),
        (lambda d: d["layers"][1]["variants"][2]["scenario_costs"].update(gpu={}), "unknown scenario 'gpu'"),
        (lambda d: d["layers"][1]["variants"].append(d["layers"][1]["variants"][2]), "'no_op' appears twice"),
        (lambda d: d.update(default_scenario="gpu"), "default_scenario 'gpu'"),
        (lambda d: d["scenarios"]["pre"].update(kind="train"), "kind must be one of prefill, decode"),
        (
            lambda d: d["layers"][0]["variants"][1].update(weights="/abs/w.safetensors"),
            "weights must be a path relative",
        ),
        (lambda d: d["layers"][0]["variants"][1].update(spec={"attention": {"kind": "gqa"}}), "bad spec"),
        (lambda d: d.update(extra=1), "unknown field"),
    ],
)
def test_validation_names_the_culprit(edit, message: str) -> None:
    data = tiny_library().to_dict()
    edit(data)
    with pytest.raises(LibraryError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BlockLibrary.from_dict(data)


def test_load_reports_missing_and_corrupt(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="no block library"):
        BlockLibrary.load(tmp_path)
    (tmp_path / "library.json").write_text("{not json")
    with pytest.raises(LibraryError, match="not valid JSON"):
        BlockLibrary.load(tmp_path)


@needs_nvlabs
def test_import_nvlabs() -> None:
    lib = import_nvlabs(NVLABS)
    assert lib.n_layers == 80 and all(len(layer.variants) == 16 for layer in lib.layers)
    assert lib.hidden_size == 8192 and lib.parent["n_heads"] == 64 and lib.parent["head_dim"] == 128
    scenario = lib.scenarios[lib.default_scenario]
    assert (scenario.batch_size, scenario.seq_len, scenario.dtype) == (256, 1200, "fp8")
    assert "H100" in scenario.device
    raw = json.loads((NVLABS / "block_library.json").read_text())
    parent_stats = json.loads((NVLABS / "parent_block_stats.json").read_text())["stats"]
    for layer in lib.layers:
        parent = layer.parent
        assert parent.spec.attention.n_kv_heads == 8 and parent.spec.ffn.intermediate_size == 28672
        assert parent.scenario_costs[scenario.name]["runtime_ms"] == parent_stats["runtime_ms"]
        for v in layer.variants:
            stats = raw[f"layer_{layer.index}"][v.name]["stats"]
            assert v.metrics == raw[f"layer_{layer.index}"][v.name]["metrics"]
            assert v.costs["num_params"] == stats["num_params"]
            att, ffn = v.spec.attention, v.spec.ffn
            assert (0 if att.is_no_op else att.n_kv_heads) == stats["num_kv_heads"]
            assert (0 if ffn.is_no_op else ffn.intermediate_size) == stats["ffn_intermediate_size"]
            if not att.is_no_op:
                # Llama attention parameters: q, o (h x h), k, v (h x kv*d) and the input norm.
                assert (
                    2 * 8192 * 8192 + 2 * 8192 * att.n_kv_heads * att.head_dim + 8192 == stats["attention_num_params"]
                )
    # Also accepts the JSON file itself.
    assert import_nvlabs(NVLABS / "block_library.json").digest() == lib.digest()


def test_import_nvlabs_rejects_bad_folder(tmp_path: Path) -> None:
    with pytest.raises(LibraryError, match="missing"):
        import_nvlabs(tmp_path)
    (tmp_path / "block_library.json").write_text(json.dumps({"layer_0": {"attention = banana": {"stats": {}}}}))
    (tmp_path / "measurement_info.json").write_text(json.dumps({"batch_size": 1, "sequence_length": 8}))
    (tmp_path / "parent_block_stats.json").write_text(json.dumps({"stats": {}}))
    with pytest.raises(LibraryError, match="hidden_size"):
        import_nvlabs(tmp_path)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "puzzle", *args], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )


@needs_nvlabs
def test_cli_import_and_show(tmp_path: Path) -> None:
    out = tmp_path / "lib70"
    result = _cli("library", "import", str(NVLABS), "--format", "nvlabs", "--out", str(out))
    assert result.returncode == 0, result.stderr
    shown = _cli("library", "show", str(out), "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert len(data["layers"]) == 80
    variant = data["layers"][0]["variants"][0]
    assert {"name", "is_parent", "metrics", "costs"} <= set(variant)
    assert data["digest"] == BlockLibrary.load(out).digest()
    text = _cli("library", "show", str(out))
    assert text.returncode == 0 and "80" in text.stdout


def test_cli_show_missing_is_one_line_exit_2(tmp_path: Path) -> None:
    result = _cli("library", "show", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "no block library" in result.stderr
