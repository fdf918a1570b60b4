from __future__ import annotations

import torch

from puzzle.arch import AttentionSpec, FFNSpec
from puzzle.files import save_tensors
from puzzle.library.distill import BLDConfig, build_block, compose_state, load_subblocks, normalized_mse, unit_key
from puzzle.library.parent import ParentPrefix, load_parent_model, write_parent, write_parent_blocks
from puzzle.library.store import ResultStore
from puzzle.library.stream import bld_layer_task
from puzzle.model import CausalLM, load_pretrained, save_pretrained
from tests.library import small_hybrid, small_llama


def _parent(seed: int = 0) -> CausalLM:
    torch.manual_seed(seed)
    return CausalLM(small_llama(n_layers=2)).eval()


def _ids(n: int = 12, T: int = 32) -> torch.Tensor:
    return torch.randint(0, 128, (n, T), generator=torch.Generator().manual_seed(0))


def _units(layer: int, *changes: dict) -> list[tuple[str, dict]]:
    cfg = BLDConfig()
    return [(unit_key(layer, c, cfg, "test", "data"), {k: v.to_dict() for k, v in c.items()}) for c in changes]


def test_normalized_mse_is_one_for_zero_and_zero_for_exact() -> None:
    t = torch.randn(3, 5, 8)
    assert normalized_mse(torch.zeros_like(t), t).item() == 1.0
    assert normalized_mse(t, t).item() == 0.0


def test_parent_is_written_layer_by_layer_and_reassembles_exactly(tmp_path) -> None:
    from dataclasses import replace

    from puzzle.library.distill import state_digest

    for arch in (small_llama(n_layers=3), small_hybrid(), replace(small_llama(n_layers=2), tie_embeddings=True)):
        torch.manual_seed(0)
        model = CausalLM(arch).eval()
        hf = save_pretrained(model, tmp_path / f"hf-{arch.family}-{arch.tie_embeddings}")
        work = tmp_path / f"work-{arch.family}-{arch.tie_embeddings}"
        meta = write_parent(hf, work)
        ids = _ids(3, 16)
        with torch.no_grad():
            logits, hidden = load_pretrained(hf)(ids, return_hidden=True)
            assert torch.equal(load_parent_model(work)(ids), logits)
            for i in range(len(arch.blocks)):
                h_in, h_out = ParentPrefix(work, arch, i)(ids)
                assert torch.equal(h_in, hidden[i]) and torch.equal(h_out, hidden[i + 1])
        assert write_parent(hf, work) == meta  # complete: kept, not rewritten
        # the digest is the state dict's (what a child's assembly checks its parent against), however written
        assert meta["digest"] == state_digest(model.state_dict())
        assert write_parent_blocks(model, tmp_path / f"mem-{arch.family}-{arch.tie_embeddings}") == meta["digest"]


def test_one_parent_forward_per_step_feeds_every_unit_exactly_as_alone(tmp_path) -> None:
    model, ids = _parent(), _ids(n=40)
    work = tmp_path / "work"
    write_parent_blocks(model, work)
    save_tensors(tmp_path / "ids.safetensors", {"ids": ids})
    cfg = BLDConfig(tokens=2048, lr=3e-4, batch=4).to_dict()
    ffn, attn = {"ffn": FFNSpec(intermediate_size=64)}, {"attention": AttentionSpec.linear()}
    together = bld_layer_task(str(work), str(tmp_path / "ids.safetensors"), 1, _units(1, ffn, attn), cfg)
    records = [ResultStore(work / "results").get(k) for k, _ in _units(1, ffn, attn)]
    alone_work = tmp_path / "alone"
    write_parent_blocks(model, alone_work)
    alone = bld_layer_task(str(alone_work), str(tmp_path / "ids.safetensors"), 1, _units(1, ffn), cfg)
    record = ResultStore(alone_work / "results").get(_units(1, ffn)[0][0])
    # one stream of parent forwards served both units (a second unit adds at most its own retry pass)
    assert alone["prefix_forwards"] <= together["prefix_forwards"] < 2 * alone["prefix_forwards"]
    assert record["files"] == records[0]["files"]  # bit-identical trained weights
    assert record["nmse_final"] == records[0]["nmse_final"]
    # finished units are stored and skipped
    again = bld_layer_task(str(work), str(tmp_path / "ids.safetensors"), 1, _units(1, ffn, attn), cfg)
    assert again["prefix_forwards"] == 0


def test_bld_lowers_nmse_and_stores_composable_subblocks(tmp_path) -> None:
    model, ids = _parent(), _ids(n=64)
    work = tmp_path / "work"
    write_parent_blocks(model, work)
    save_tensors(tmp_path / "ids.safetensors", {"ids": ids})
    arch = model.arch
    cfg = BLDConfig(tokens=8192, lr=3e-4, batch=4).to_dict()
    small_ffn = FFNSpec(intermediate_size=64)
    units = _units(1, {"ffn": small_ffn}, {"attention": AttentionSpec.linear()})
    bld_layer_task(str(work), str(tmp_path / "ids.safetensors"), 1, units, cfg)
    ffn, attn = (ResultStore(work / "results").get(k) for k, _ in units)
    assert ffn["steps"] == 8192 // (4 * 32)
    assert ffn["train_loss_last"] < ffn["train_loss_first"]
    assert ffn["nmse_final"] < ffn["nmse_init"] < 1.0
    assert attn["nmse_final"] < attn["nmse_init"]
    # compose the two decoupled units into one block and load it strictly
    spec = arch.blocks[1].__class__(attention=AttentionSpec.linear(), ffn=small_ffn)
    trained = load_subblocks(work, {**ffn["files"], **attn["files"]})
    state = compose_state(model.blocks[1].state_dict(), arch.blocks[1], spec, trained)
    block = build_block(arch, spec, state)
    h_in, h_out = ParentPrefix(work, arch, 1)(ids[:4])
    with torch.no_grad():
        out = block(h_in)
    assert out.shape == h_out.shape


def test_prefix_read_per_batch_computes_what_the_resident_prefix_does(tmp_path) -> None:
    torch.manual_seed(0)
    model = CausalLM(small_llama(n_layers=4)).eval()
    work = tmp_path / "work"
    write_parent_blocks(model, work)
    ids = _ids(4, 16)
    resident = ParentPrefix(work, model.arch, 3)
    one_layer = sum(t.numel() * t.element_size() for t in model.blocks[0].state_dict().values())
    for budget, held in ((0, 0), (one_layer, 1), (2 * one_layer + 1, 2)):
        streamed = ParentPrefix(work, model.arch, 3, resident_bytes=budget)
        assert len(streamed.blocks) == held and list(streamed.streamed) == list(range(held, 3))
        for a, b in zip(streamed(ids), resident(ids), strict=True):
            assert torch.equal(a, b)
    # a BLD task with no resident layers trains bit-identical units
    save_tensors(tmp_path / "ids.safetensors", {"ids": _ids(n=24)})
    cfg = BLDConfig(tokens=1024, lr=3e-4, batch=4).to_dict()
    units = _units(3, {"ffn": FFNSpec(intermediate_size=64)})
    records = []
    for name, mb in (("held", None), ("read", 0.0)):
        w = tmp_path / name
        write_parent_blocks(model, w)
        bld_layer_task(str(w), str(tmp_path / "ids.safetensors"), 3, units, cfg, resident_mb=mb)
        records.append(ResultStore(w / "results").get(units[0][0]))
    assert records[0]["files"] == records[1]["files"] and records[0]["nmse_final"] == records[1]["nmse_final"]


def test_streamed_bld_matches_training_on_a_full_activation_cache(tmp_path) -> None:
    """The builder before streaming cached every row's layer activations once and trained on slices of that cache;
    streaming recomputes them per batch. Same rows, same init, same schedule: the same unit, within float noise."""
    from puzzle.library import stream

    model, ids = _parent(), _ids(n=40)
    work = tmp_path / "work"
    write_parent_blocks(model, work)
    cfg = BLDConfig(tokens=4096, lr=3e-4, batch=4)
    layer, changes = 1, {"ffn": FFNSpec(intermediate_size=64).to_dict()}
    prefix = ParentPrefix(work, model.arch, layer)
    train, val = stream._split(ids.shape[0], cfg.val_fraction)

    class Cached:  # every row's (input, output) computed once and held, as the old activation cache did
        def __init__(self) -> None:
            self.h, self.y = prefix(ids)

        def __call__(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.h[rows], self.y[rows]

    sources = {"streamed": stream._Stream(prefix, ids, "cpu", cfg.batch), "cached": Cached()}
    val_acts = sources["streamed"].chunks(torch.arange(val.start, val.stop))
    h_calib = prefix(ids[: stream.CALIB_ROWS])[0]
    steps = 4096 // (cfg.batch * ids.shape[1])
    results = {}
    for name, source in sources.items():
        unit = stream._make_unit("u", changes, model.arch, model.blocks[layer], layer, h_calib, cfg)
        before = stream._nmse(unit.child, val_acts)
        stream._train([unit], source, train.stop, steps, cfg.lr, cfg, stream.nullcontext())
        results[name] = (before, stream._nmse(unit.child, val_acts), unit.losses)
    (b_s, a_s, l_s), (b_c, a_c, l_c) = results["streamed"], results["cached"]
    assert b_s == b_c and a_s < 0.9 * b_s  # same init; training helped
    assert abs(a_s - a_c) <= 1e-3 * a_c  # the same trained unit, within float noise
    assert max(abs(x - y) for x, y in zip(l_s, l_c, strict=True)) <= 1e-3
