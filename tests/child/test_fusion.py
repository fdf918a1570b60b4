from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec
from puzzle.child.assess import kl_to_parent
from puzzle.child.fusion import dependency_scores, find_runs, fuse_groups, merge
from puzzle.child.fusion_plan import FusionConfig, fuse_child, select_fusions
from puzzle.child.gkd import GKDConfig
from puzzle.errors import ConfigError
from puzzle.library import Scenario
from puzzle.model import CausalLM, load_pretrained, save_pretrained
from puzzle.presets import tiny_hybrid
from tests.child import TEXT, VOCAB, ids, small_llama, tiny_parent_dir, tokenizer


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models: one thread is ~100x faster than two on this busy shared machine (no sync per op)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def text_tokens() -> np.ndarray:
    return np.asarray(tokenizer().encode(TEXT).ids, dtype=np.int32)


def child_arch(ffn: FFNSpec | None = None, narrow: FFNSpec | None = None) -> ArchSpec:
    """Layers: full, FFN-only, FFN-only (narrower), no-op, FFN-only, full: one run (1, 2, 4) across the no-op."""
    base = small_llama(6)
    ffn = ffn or FFNSpec(intermediate_size=128)
    narrow = narrow or replace(ffn, intermediate_size=64) if ffn.kind == "mlp" else ffn
    full = base.blocks[0]
    blocks = (full, BlockSpec(ffn=ffn), BlockSpec(ffn=narrow), BlockSpec(), BlockSpec(ffn=ffn), full)
    return replace(base, blocks=blocks)


def hybrid_child_arch() -> ArchSpec:
    """A Nemotron-H-like child: its second Mamba layer removed, so MLP layers 1, 3, 4 form one run."""
    arch = tiny_hybrid(
        VOCAB, hidden=64, pattern="M-M--*", n_heads=4, n_kv_heads=2, intermediate=96,
        mamba_heads=4, mamba_head_dim=16, mamba_groups=2, d_state=8, chunk_size=16,
    )  # fmt: skip
    return arch.with_block(2, BlockSpec())


def random_model(arch: ArchSpec, seed: int = 0) -> CausalLM:
    """Weights of unit-scale activations (so FFNs matter), non-unit norm gains (so folding them matters)."""
    torch.manual_seed(seed)
    model = CausalLM(arch)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
            elif p.dim() == 2:
                p.normal_(0.0, 1.0 / math.sqrt(p.shape[1]) if "embed" not in name else 1.0)
            elif name.endswith("bias"):
                p.normal_(0.0, 0.1)
    return model.eval()


def parallel_form(model: CausalLM, group: tuple[int, ...], x: torch.Tensor) -> torch.Tensor:
    return x + sum(model.blocks[i].ffn(model.blocks[i].ffn_norm(x)) for i in group)


def test_runs_are_maximal_ffn_only_stretches_of_one_kind_across_no_ops() -> None:
    assert find_runs(child_arch()) == [(1, 2, 4)]
    assert find_runs(small_llama(3)) == []
    relu = child_arch().with_block(2, BlockSpec(ffn=FFNSpec(intermediate_size=64, activation="relu2")))
    assert find_runs(relu) == []  # 1 | 2 | 4: each alone
    linear = child_arch(FFNSpec.linear())
    assert find_runs(linear) == [(1, 2, 4)]
    with_linear_attention = child_arch().with_block(2, BlockSpec(AttentionSpec.linear(), FFNSpec(intermediate_size=64)))
    assert find_runs(with_linear_attention) == []
    assert find_runs(child_arch().with_block(3, BlockSpec(ffn=FFNSpec(intermediate_size=32)))) == [(1, 2, 3, 4)]
    assert find_runs(hybrid_child_arch()) == [(1, 3, 4)]


@pytest.mark.parametrize(
    "ffn",
    [FFNSpec(intermediate_size=128), FFNSpec(intermediate_size=96, activation="relu2", bias=True), FFNSpec.linear()],
    ids=["swiglu", "relu2-bias", "linear"],
)
def test_fused_block_computes_exactly_the_parallel_form(ffn: FFNSpec) -> None:
    model = random_model(child_arch(ffn))
    fused = fuse_groups(model, [(1, 2, 4)])
    x = torch.randn(2, 16, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = parallel_form(model, (1, 2, 4), x)
        got = fused.blocks[1](x)
        # the whole model: blocks 2-4 pass through, so it is block 5 after the parallel form of block 0's output
        h = model.blocks[0](model.embed(ids()))
        reference = model.head(model.blocks[5](parallel_form(model, (1, 2, 4), h)))
        logits = fused(ids())
        sequential = model.blocks[4](model.blocks[2](model.blocks[1](x)))
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got, sequential, atol=1e-2)  # the parallel form is not the sequential one
    assert torch.allclose(logits, reference, atol=1e-5, rtol=1e-5)
    assert [fused.arch.blocks[i].is_no_op for i in range(6)] == [False, False, True, True, True, False]
    assert all(not list(fused.blocks[i].parameters()) for i in (2, 3, 4))
    assert torch.equal(fused.blocks[1].ffn_norm.weight, torch.ones(64))
    if ffn.kind == "mlp":
        assert fused.arch.blocks[1].ffn == replace(ffn, intermediate_size=ffn.intermediate_size * 2 + 64)
    else:
        assert fused.arch.blocks[1].ffn == FFNSpec.linear()


def test_fusion_leaves_the_source_model_and_other_layers_unchanged() -> None:
    model = random_model(child_arch())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_groups(model, [(2, 4)])
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    for k in ("blocks.0.attn.q_proj.weight", "blocks.1.ffn.up_proj.weight", "embed_tokens.weight"):
        assert torch.equal(fused.state_dict()[k], before[k])
        assert fused.state_dict()[k].data_ptr() != model.state_dict()[k].data_ptr()  # cloned, not shared
    with pytest.raises(ConfigError, match="skips a layer"):
        fuse_groups(model, [(1, 4)])
    with pytest.raises(ConfigError, match="not two or more layers"):
        fuse_groups(model, [(0, 1)])


@pytest.mark.parametrize("make", [child_arch, hybrid_child_arch], ids=["llama", "hybrid"])
def test_fused_child_saves_and_reloads_with_identical_logits(tmp_path, make) -> None:
    model = random_model(make())
    (run,) = find_runs(model.arch)
    fused = fuse_groups(model, [run])
    save_pretrained(fused, tmp_path / "fused")
    again = load_pretrained(tmp_path / "fused")
    # the absorbed layers are full no-ops: the nemotron_h_puzzle export leaves such identity layers out
    kept = fused.arch.blocks
    if fused.arch.family == "nemotron_h":
        kept = tuple(b for b in kept if not all(getattr(b, k).is_no_op for k in ("attention", "ffn", "mamba")))
    assert again.arch.blocks == kept and again.arch.hidden_size == fused.arch.hidden_size
    with torch.no_grad():
        assert torch.equal(again(ids()), fused(ids()))


def test_an_ffn_with_zero_output_scores_zero_and_fuses_without_changing_anything(text_tokens) -> None:
    model = random_model(child_arch())
    with torch.no_grad():
        model.blocks[1].ffn.down_proj.weight.zero_()
    tokens = text_tokens[:200]
    scores = dependency_scores(model, tokens, 32)
    assert (scores[0].first, scores[0].second) == (1, 2)
    assert scores[0].score == pytest.approx(0.0, abs=1e-6)
    assert scores[1].score > 1e-3  # layer 4 does depend on layer 2 here
    with torch.no_grad():
        assert torch.allclose(fuse_groups(model, [(1, 2)])(ids()), model(ids()), atol=1e-5)


def test_greedy_fuses_in_score_order_within_the_kl_bound(text_tokens) -> None:
    model = random_model(child_arch())
    tokens = text_tokens[:300]
    scores = dependency_scores(model, tokens, 32)
    one = FusionConfig(max_kl=math.inf, max_fusions=1, seq_len=32)
    groups, trials = select_fusions(model, model, scores, tokens, one)
    best = scores[0]
    assert groups == [(best.first, best.second)] and len(trials) == 1 and trials[0].accepted
    direct = kl_to_parent(fuse_groups(model, groups), model, tokens, 32)
    assert trials[0].kl == pytest.approx(direct, rel=1e-6) and direct > 0
    # a bound just below that KL rejects the first pair; the second is tried on its own
    tight = FusionConfig(max_kl=direct * 0.999, seq_len=32)
    groups, trials = select_fusions(model, model, scores, tokens, tight)
    assert not trials[0].accepted and len(trials) == 2
    assert all(t.kl <= tight.max_kl for t in trials if t.accepted)
    everything = FusionConfig(max_kl=1e9, seq_len=32)
    groups, trials = select_fusions(model, model, scores, tokens, everything)
    assert groups == [(1, 2, 4)] and all(t.accepted for t in trials)


def test_merge_joins_the_groups_of_a_pair() -> None:
    runs = [(1, 2, 4, 7)]
    assert merge([], runs, 2, 4) == [(2, 4)]
    assert merge([(2, 4)], runs, 1, 2) == [(1, 2, 4)]
    assert merge([(1, 2)], runs, 4, 7) == [(1, 2), (4, 7)]
    assert merge([(1, 2), (4, 7)], runs, 2, 4) == [(1, 2, 4, 7)]


def test_fuse_child_reports_quality_latency_and_heals_by_gkd(text_tokens) -> None:
    model = random_model(child_arch())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = text_tokens
    scenarios = (Scenario("pre", "prefill", 1, 8, "cpu", "float32"), Scenario("dec", "decode", 2, 8, "cpu", "float32"))
    gkd = GKDConfig(tokens=2 * 2 * 16, batch=2, seq_len=16, cosine_weight=0.0)
    config = FusionConfig(max_kl=1e9, max_fusions=1, seq_len=16, gkd=gkd, warmup=0, repeats=1)
    rows = np.stack([tokens[i : i + 17] for i in range(0, 170, 17)]).astype(np.int64)
    fused, report = fuse_child(model, tokens[:200], tokens[200:400], config, gkd_rows=rows, scenarios=scenarios)
    (group,) = report.groups
    assert report.reference == "child" and report.layers_removed == 1
    assert fused.arch.blocks[group[1]].is_no_op
    assert report.gkd is not None and report.gkd["steps"] == 2
    assert set(report.quality["after"]) == {"loss", "perplexity", "tokens", "kl_to_unfused"}
    assert report.quality["after"]["kl_to_unfused"] > 0
    assert set(report.latency) == {"pre", "dec"} and report.latency["pre"]["after_ms"] > 0
    (block,) = report.fused_blocks
    widths = [child_arch().blocks[i].ffn.intermediate_size for i in group]
    assert block["width"] == sum(widths) and block["member_widths"] == widths
    assert set(block["runtime_ms"]) == {"pre", "dec"}
    json.dumps(report.to_dict(), allow_nan=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # the unfused child is untouched (GKD trained the copy)


def test_against_a_parent_the_bound_counts_from_zero_and_a_too_tight_one_fuses_nothing(text_tokens) -> None:
    model = random_model(child_arch())
    parent = random_model(replace(child_arch(), blocks=(small_llama(6).blocks[0],) * 6), seed=1)
    calib = text_tokens[:200]
    start = kl_to_parent(model, parent, calib, 16)
    config = FusionConfig(max_kl=start * 0.99, seq_len=16)  # the unfused child is already beyond it
    fused, report = fuse_child(model, calib, text_tokens[200:300], config, parent=parent, scenarios=())
    assert report.reference == "parent" and report.start_kl == pytest.approx(start, rel=1e-6)
    assert report.groups == () and len(report.trials) == 2 and not any(t.accepted for t in report.trials)
    assert report.latency == {} and report.fused_blocks == ()
    assert report.quality["after"]["kl_to_parent"] == pytest.approx(report.quality["before"]["kl_to_parent"])
    with torch.no_grad():
        assert torch.equal(fused(ids()), model(ids()))


def test_fuse_child_refuses_a_child_without_a_run_and_bad_settings() -> None:
    model = random_model(small_llama(2))
    tokens = np.arange(100, dtype=np.int32)
    with pytest.raises(ConfigError, match="no fusable run"):
        fuse_child(model, tokens, tokens, FusionConfig(max_kl=0.1))
    with pytest.raises(ConfigError, match=r"max KL must be a number >= 0.*max fusions must be a positive"):
        FusionConfig(max_kl=-1.0, max_fusions=0)


# --- CLI ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def child_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuse")
    (root / "text.py").write_text(TEXT)
    tiny_parent_dir(root / "child", arch=child_arch())
    return root


def test_cli_fuse_writes_a_normal_child_with_its_manifest(child_dir, capsys) -> None:
    from puzzle.cli import main

    out = child_dir / "fused"
    argv = ["fuse", "--child", str(child_dir / "child"), "--out", str(out), "--max-kl", "100", "--max-fusions", "1"]
    argv += ["--text", str(child_dir / "text.py"), "--seq-len", "16", "--calib-tokens", "200", "--repeats", "1"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    manifest = json.loads((out / "puzzle_manifest.json").read_text())
    assert manifest["fusion"] == report
    (group,) = report["fused_groups"]
    assert len(group) == 2 and report["runs"] == [[1, 2, 4]]
    assert set(report["latency"]) == {"cpu-fp32-prefill-b4-s256", "cpu-fp32-decode-b16-s512"}
    assert report["fused_blocks"][0]["width"] > 0
    fused = load_pretrained(out)
    expected = fuse_groups(load_pretrained(child_dir / "child"), [tuple(group)])
    with torch.no_grad():
        assert torch.allclose(fused(ids()), expected(ids()), atol=1e-6)
    assert (out / "tokenizer.json").is_file()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--child", "/nonexistent/child"], "does not exist"),
        (["--max-kl", "-1"], "--max-kl must be a finite number >= 0"),
        (["--max-fusions", "0"], "--max-fusions must be >= 1"),
        (["--gkd-tokens", "-5"], "--gkd-tokens must be >= 0"),
        (["--child", "PARENT"], "no fusable run"),
    ],
)
def test_cli_fuse_bad_input_is_one_line_and_exit_2(child_dir, capsys, extra, message) -> None:
    from puzzle.cli import main

    if "PARENT" in extra:
        tiny_parent_dir(child_dir / "parent")
        extra = ["--child", str(child_dir / "parent")]
    argv = ["fuse", "--child", str(child_dir / "child"), "--out", str(child_dir / "bad"), "--max-kl", "1", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
