from __future__ import annotations

import pytest
import torch

from puzzle.arch import AttentionSpec, BlockSpec, FFNSpec, MambaSpec
from puzzle.errors import PuzzleError
from puzzle.library import Scenario
from puzzle.library.cost import block_memory_mib, block_params, measure_block, measure_model, state_bytes, time_ms
from puzzle.library.distill import build_block
from puzzle.library.score import score_blocks
from puzzle.model import CausalLM
from tests.library import small_hybrid, small_llama


def test_replace_one_block_scores_parent_zero_and_skips_earlier_layers() -> None:
    torch.manual_seed(0)
    model = CausalLM(small_llama(n_layers=3)).eval()
    ids = torch.randint(0, 128, (4, 17))
    with torch.no_grad():
        _, hidden = model(ids[:, :-1], return_hidden=True)
    calls = [0, 0, 0]
    for i, block in enumerate(model.blocks):
        block.register_forward_hook(lambda *_a, i=i: calls.__setitem__(i, calls[i] + 1))
    arch, layer = model.arch, 1
    parent_copy = build_block(arch, arch.blocks[layer], model.blocks[layer].state_dict())
    no_op = build_block(arch, BlockSpec())
    smaller = build_block(arch, BlockSpec(arch.blocks[1].attention, FFNSpec(intermediate_size=64)))
    scores = score_blocks(
        model,
        layer,
        hidden[layer],
        ids[:, 1:],
        [("parent", parent_copy), ("no_op", no_op), ("small", smaller)],
        batch=2,
    )
    assert calls[0] == 0  # layers before the swapped one are never recomputed
    assert scores["parent"]["kl_div"] == 0.0
    assert scores["parent"]["cosine"] == pytest.approx(1.0)
    assert scores["no_op"]["kl_div"] > 0 and scores["small"]["kl_div"] > 0
    with torch.no_grad():  # the parent's LM loss equals a plain full forward's
        full = torch.nn.functional.cross_entropy(model(ids[:, :-1]).flatten(0, 1), ids[:, 1:].flatten())
    assert scores["parent"]["lm_loss"] == pytest.approx(full.item(), rel=1e-5)


def test_memory_follows_the_design_formulas() -> None:
    arch = small_llama()
    sc = Scenario("s", "decode", batch_size=3, seq_len=100, dtype="float32")
    block = arch.blocks[0]
    params = sum(p.numel() for p in build_block(arch, block).parameters())
    assert block_params(arch, block) == params
    kv = 2 * block.attention.n_kv_heads * block.attention.head_dim * 4 * 3 * 100
    assert block_memory_mib(arch, block, sc) * 2**20 == pytest.approx(params * 4 + kv)
    m = small_hybrid().blocks[0].mamba
    assert isinstance(m, MambaSpec)
    expected = 3 * (m.conv_channels * (m.conv_kernel - 1) + m.n_heads * m.head_dim * m.d_state) * 2
    assert state_bytes(BlockSpec(mamba=m), 3, 100, 2) == expected
    assert state_bytes(BlockSpec(AttentionSpec.linear(), FFNSpec.no_op()), 3, 100, 2) == 0


def test_latency_measurement_and_decode_with_cache() -> None:
    calls = []
    median, spread = time_ms(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 7 and median >= 0 and spread >= 0
    scenarios = (Scenario("p", "prefill", 2, 16, "cpu", "float32"), Scenario("d", "decode", 2, 16, "cpu", "float32"))
    for arch in (small_llama(), small_hybrid("M")):
        out = measure_block(arch, arch.blocks[0], scenarios, warmup=1, repeats=2)
        assert set(out) == {"p", "d"} and all(v["runtime_ms"] > 0 for v in out.values())
    model = CausalLM(small_hybrid("M*-"))
    whole = measure_model(model, scenarios, warmup=1, repeats=2)
    assert all(v["non_block_runtime_ms"] > 0 and v["runtime_ms"] > 0 for v in whole.values())


def test_blocks_are_timed_in_chains_with_the_scenarios_thread_count(monkeypatch: pytest.MonkeyPatch) -> None:
    import puzzle.library.cost
    import puzzle.library.distill

    threads, calls, built = [], [], []
    real_time, real_build = puzzle.library.cost.time_ms, puzzle.library.distill.build_block

    def time_spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        threads.append(torch.get_num_threads())
        return real_time(*args, **kwargs)

    def build_spy(*args, **kwargs):  # type: ignore[no-untyped-def]
        block = real_build(*args, **kwargs)
        built.append(block)
        block.register_forward_hook(lambda module, _in, _out: calls.append(id(module)))
        return block

    monkeypatch.setattr(puzzle.library.cost, "time_ms", time_spy)
    monkeypatch.setattr(puzzle.library.distill, "build_block", build_spy)
    arch = small_llama()
    scenario = Scenario("p", "prefill", 2, 16, "cpu", "float32", threads=1)
    before = torch.get_num_threads()
    out = measure_block(arch, arch.blocks[0], (scenario,), warmup=1, repeats=3, copies=4)
    assert threads == [1] and torch.get_num_threads() == before  # timed with 1 thread, count restored
    timed = {id(b) for b in built if next(b.parameters()).device.type != "meta"}  # not the parameter count's
    assert len(timed) == 4  # four independent copies
    assert sorted(calls) == sorted([i for i in timed for _ in range(1 + 3)])  # each ran once per (warm-up) call
    assert out["p"]["runtime_ms"] > 0 and out["p"]["memory_mib"] > 0


def test_scenario_threads_round_trip_and_validation() -> None:
    sc = Scenario("p", "prefill", 2, 16, "cpu", "float32", threads=2)
    assert Scenario.from_dict(sc.to_dict()) == sc
    assert Scenario.from_dict({k: v for k, v in sc.to_dict().items() if k != "threads"}).threads == 0
    with pytest.raises(PuzzleError, match="threads"):
        Scenario("p", threads=-1)


def test_timing_runs_from_a_cold_cache_with_a_steady_allocator() -> None:
    import platform
    from pathlib import Path

    from puzzle.library import cost

    sizes = [f.read_text().strip() for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size")]
    if sizes:  # the flush buffer is twice the largest cache sysfs lists
        assert cost._flush_buffer(torch.device("cpu")).numel() * 4 == 2 * cost._cache_bytes() >= 2 * 2**20
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert cost._steady_allocator() is True
    calls: list[int] = []
    median, spread = cost.time_ms(lambda: calls.append(1), torch.device("cpu"), warmup=2, repeats=5)
    assert len(calls) == 7 and median >= 0 and spread >= 0
