"""bench/additivity.py draws children from shallow to deep cuts within the space; timings keep their fastest run."""

from __future__ import annotations

import math

import torch

from bench.additivity import draw_children, trained_like
from puzzle.library import Scenario
from puzzle.library.cost import measure_block, measure_model
from puzzle.library.space import default_space, expand
from puzzle.model import CausalLM
from puzzle.model.mamba2 import Mamba2
from tests.library import small_hybrid


def test_children_span_shallow_to_deep_cuts_inside_the_space() -> None:
    arch = small_hybrid("M*-M*-M*-")
    children = draw_children(arch, 12, seed=0)
    assert len(children) == 12 and children[0] == arch.blocks
    allowed = [set(layer.variants()) for layer in expand(default_space(arch.family), arch)]
    assert all(spec in allowed[i] for child in children for i, spec in enumerate(child))
    removed = [sum(b.is_no_op for b in child) for child in children]
    assert sum(removed[:4]) < sum(removed[-4:]) and max(removed) >= len(arch.blocks) // 2
    assert draw_children(arch, 12, seed=0) == children  # reproducible


def test_trained_like_step_sizes_and_fastest_runs() -> None:
    model = trained_like(CausalLM(small_hybrid("M*-")), dt_max=1.0, seed=0)
    for m in model.modules():
        if isinstance(m, Mamba2):
            dt = torch.nn.functional.softplus(m.dt_bias.detach())
            assert bool(((dt >= 1e-3 - 1e-6) & (dt <= 1.0 + 1e-6)).all()) and float(dt.max()) > 0.1
    sc = (Scenario("p", "prefill", 2, 16, "cpu", "float32"),)
    block = measure_block(model.arch, model.arch.blocks[0], sc, warmup=1, repeats=3, copies=2)["p"]
    whole = measure_model(model, sc, warmup=1, repeats=3)["p"]
    assert 0 < block["runtime_min_ms"] <= block["runtime_ms"]
    assert 0 < whole["runtime_min_ms"] <= whole["runtime_ms"]
    assert 0 < whole["non_block_runtime_min_ms"] <= whole["non_block_runtime_ms"]
    assert math.isfinite(whole["runtime_spread_ms"])
