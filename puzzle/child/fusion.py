"""FFN Fusion (DESIGN.md §3): run the FFNs that attention removal leaves in a row as one wide FFN.

A layer whose attention (and Mamba mixer) is a no-op is just ``x + F(norm(x))``. A run of them computes

    y = x + F1(n1(x));  z = y + F2(n2(y))                      (sequential)
    z ≈ x + F1(n1(x)) + F2(n2(x))                              (parallel: F2 no longer sees F1's output)

and the parallel form is *one* FFN: every ``n_k(x) = g_k * rms(x)`` shares the normalisation ``rms(x) = x /
sqrt(mean(x²) + eps)`` (one model-wide eps), so each gain ``g_k`` folds into the columns of its FFN's input
projections (gate and up for SwiGLU, up for squared-ReLU, the matrix of a linear FFN) and the fused FFN is

    gate = [W_gate1 diag(g1); W_gate2 diag(g2)]   up = [W_up1 diag(g1); W_up2 diag(g2)]   down = [W_down1, W_down2]

(rows / columns concatenated, biases concatenated, down biases summed; linear FFNs: ``W1 diag(g1) + W2 diag(g2)``)
behind one RMSNorm of unit gain, in the first layer of the group; the other layers of the group become full
no-ops. This holds for both families: a Nemotron-H MLP layer's ``norm`` is the same RMSNorm (one gain of hidden
size, the model-wide eps, over the whole hidden vector; the grouped norm exists only inside the Mamba mixer).
The folding is exact in fp32; in bf16 / fp16 ``RMSNorm`` casts before multiplying by the gain, so a folded
model differs from the parallel form by that rounding. The fused width is the sum of the members' widths: on
the ``ffn_mult`` grid (multiples of 256) whenever the members are. The fused model computes the parallel form exactly (up to float rounding); how far that is from the
sequential model is what the *dependency score* of each adjacent pair predicts:

    score(a, b) = mean_tokens (1 - cos(F_b(n_b(h_b)), F_b(n_b(h_b - F_a(n_a(h_a))))))

with ``h_a``, ``h_b`` the inputs of layers a and b on held-out text; ``h_b - F_a(n_a(h_a)) = h_a`` because only
no-ops lie between them. A *run* is a maximal sequence of FFN-only layers of one fusable kind (same activation
and bias; MLP and linear FFNs never mix) with nothing but full no-ops between neighbours.

Choosing which pairs to fuse (greedy under a KL bound), healing and measuring: ``puzzle.child.fusion_plan``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from puzzle.arch import ArchSpec, BlockSpec, FFNSpec
from puzzle.data import pack
from puzzle.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch

    from puzzle.model import CausalLM

Group = tuple[int, ...]  # layers fused into one FFN (the first one hosts it), ascending


def fusion_class(spec: BlockSpec) -> tuple[Any, ...] | None:
    """What must agree for two layers to fuse, or None when ``spec`` is not an FFN-only layer."""
    ffn = spec.ffn
    if not (spec.attention.is_no_op and spec.mamba.is_no_op) or ffn.is_no_op:
        return None
    return ("linear",) if ffn.kind == "linear" else ("mlp", ffn.activation, ffn.bias)


def find_runs(arch: ArchSpec) -> list[Group]:
    """Maximal runs (two layers or more) of FFN-only layers of one fusable kind, full no-ops between them skipped."""
    runs: list[list[int]] = []
    current: list[int] = []
    kind: tuple[Any, ...] | None = None
    for i, block in enumerate(arch.blocks):
        if block.is_no_op:
            continue  # the identity: FFNs on either side of it are still consecutive
        cls = fusion_class(block)
        if cls is not None and cls == kind:
            current.append(i)
            continue
        runs.append(current)
        current, kind = ([i], cls) if cls is not None else ([], None)
    runs.append(current)
    return [tuple(r) for r in runs if len(r) >= 2]


def no_fusable_run_message(arch: ArchSpec) -> str:
    kinds = "".join("F" if fusion_class(b) else ("." if b.is_no_op else "x") for b in arch.blocks)
    return (
        f"no fusable run: fusion needs two or more layers in a row (no-op layers between them allowed) whose "
        f"attention and mixer are no-ops and whose FFNs are of one kind; layers here (F = FFN only, . = no-op, "
        f"x = other): {kinds}"
    )


@dataclass(frozen=True)
class PairScore:
    """The dependency of layer ``second``'s FFN on layer ``first``'s output (cosine distance, 0 = independent)."""

    first: int
    second: int
    score: float

    def to_dict(self) -> dict[str, Any]:
        return {"first": self.first, "second": self.second, "score": self.score}


def token_batches(tokens: np.ndarray, seq_len: int, batch_size: int) -> list[np.ndarray]:
    """Input rows (B, <= seq_len) of ``tokens``: full rows in batches, then the shorter last row alone."""
    rows = [r[:-1] for r in pack(tokens, seq_len, drop_last=False)]
    if not rows:
        raise DataError(f"the calibration text has {len(tokens)} token(s); at least 2 are needed")
    full = [r for r in rows if len(r) == seq_len]
    batches = [np.stack(full[i : i + batch_size]) for i in range(0, len(full), batch_size)]
    return batches + [r[None, :] for r in rows if len(r) < seq_len]


def dependency_scores(
    model: CausalLM, tokens: np.ndarray, seq_len: int, *, batch_size: int = 8, runs: Sequence[Group] | None = None
) -> list[PairScore]:
    """The score of every adjacent pair of every run, lowest (most independent, fused first) first."""
    import torch
    import torch.nn.functional as F

    runs = find_runs(model.arch) if runs is None else runs
    pairs = [(a, b) for run in runs for a, b in itertools.pairwise(run)]
    totals = dict.fromkeys(pairs, 0.0)
    count = 0
    model.eval()
    with torch.no_grad():
        for batch in token_batches(tokens, seq_len, batch_size):
            _, hidden = model(torch.from_numpy(batch.astype(np.int64)), return_hidden=True)
            for a, b in pairs:
                block: Any = model.blocks[b]
                with_first = block.ffn(block.ffn_norm(hidden[b]))  # (B, T, C)
                without = block.ffn(block.ffn_norm(hidden[a]))
                totals[(a, b)] += float((1 - F.cosine_similarity(with_first.float(), without.float(), dim=-1)).sum())
            count += batch.size
    scores = [PairScore(a, b, max(totals[(a, b)] / count, 0.0)) for a, b in pairs]
    return sorted(scores, key=lambda s: (s.score, s.first))


def fused_spec(specs: Sequence[FFNSpec]) -> FFNSpec:
    """The FFN of a fused group: the members' kind and activation, width = sum of widths."""
    first = specs[0]
    if first.kind == "linear":
        return first
    return FFNSpec(
        intermediate_size=sum(s.intermediate_size for s in specs), activation=first.activation, bias=first.bias
    )


def fused_state(ffns: Sequence[Any], gains: Sequence[torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """The weights of one FFN computing ``sum_k ffn_k(g_k * n)``, its gains ``g_k`` folded in (fp32 maths)."""
    import torch

    def fold(weight: torch.Tensor, gain: torch.Tensor) -> torch.Tensor:  # (out, C) * (C,) -> (out, C)
        return weight.float() * gain.float()[None, :]

    dtype = next(ffns[0].parameters()).dtype
    out: dict[str, torch.Tensor] = {}
    if kind == "linear":
        out["linear_mlp.weight"] = torch.stack(
            [fold(f.linear_mlp.weight, g) for f, g in zip(ffns, gains, strict=True)]
        ).sum(0)
    else:
        inputs = ("gate_proj", "up_proj") if hasattr(ffns[0], "gate_proj") else ("up_proj",)
        for name in inputs:
            out[f"{name}.weight"] = torch.cat(
                [fold(getattr(f, name).weight, g) for f, g in zip(ffns, gains, strict=True)]
            )
            if getattr(ffns[0], name).bias is not None:
                out[f"{name}.bias"] = torch.cat([getattr(f, name).bias.float() for f in ffns])
        out["down_proj.weight"] = torch.cat([f.down_proj.weight.float() for f in ffns], dim=1)  # (C, sum I)
        if ffns[0].down_proj.bias is not None:
            out["down_proj.bias"] = torch.stack([f.down_proj.bias.float() for f in ffns]).sum(0)
    return {k: v.to(dtype) for k, v in out.items()}


def check_groups(arch: ArchSpec, groups: Sequence[Group]) -> None:
    """Raise ``ConfigError`` unless every group is two or more layers of one run, ascending, disjoint."""
    runs = find_runs(arch)
    seen: set[int] = set()
    for group in groups:
        run = next((r for r in runs if group and group[0] in r), None)
        if run is None or len(group) < 2 or not set(group) <= set(run) or list(group) != sorted(set(group)):
            raise ConfigError(f"fusion group {list(group)} is not two or more layers of one fusable run {runs}")
        start = run.index(group[0])
        if tuple(run[start : start + len(group)]) != tuple(group):
            raise ConfigError(f"fusion group {list(group)} skips a layer of its run {list(run)}")
        if seen & set(group):
            raise ConfigError(f"fusion group {list(group)} overlaps another group")
        seen |= set(group)


def fuse_groups(model: CausalLM, groups: Sequence[Group], *, share: bool = False) -> CausalLM:
    """A new model where each group's FFNs run as one wide FFN in its first layer, its other layers no-ops.

    Unfused tensors are cloned, or shared with ``model`` when ``share`` (cheap candidates to evaluate and
    discard: training the result would then change ``model``).
    """
    import torch

    from puzzle.model import CausalLM

    arch = model.arch
    check_groups(arch, groups)
    blocks = list(arch.blocks)
    state = {k: v if share else v.clone() for k, v in model.state_dict().items()}
    for group in groups:
        head = group[0]
        members: list[Any] = [model.blocks[i] for i in group]
        spec = fused_spec([arch.blocks[i].ffn for i in group])
        weights = fused_state([m.ffn for m in members], [m.ffn_norm.weight for m in members], spec.kind)
        for i in group:
            blocks[i] = BlockSpec()
            state = {k: v for k, v in state.items() if not k.startswith(f"blocks.{i}.")}
        blocks[head] = BlockSpec(ffn=spec)
        state |= {f"blocks.{head}.ffn.{k}": v for k, v in weights.items()}
        state[f"blocks.{head}.ffn_norm.weight"] = torch.ones_like(members[0].ffn_norm.weight)
    with torch.device("meta"):
        fused = CausalLM(replace(arch, blocks=tuple(blocks)))
    if arch.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    fused.load_state_dict(state, assign=True, strict=True)
    fused.tie_weights()
    if getattr(model, "hf_source", None) is not None:
        fused.hf_source = model.hf_source  # type: ignore[assignment]  # the tokenizer travels with the child
    return fused.train(model.training)


def merge(groups: Sequence[Group], runs: Sequence[Group], first: int, second: int) -> list[Group]:
    """``groups`` with the group holding ``first`` and the one holding ``second`` (adjacent in a run) joined.

    Layers of ``runs`` outside every group count as groups of one; the result lists groups of two or more.
    """
    of: dict[int, Group] = {i: (i,) for run in runs for i in run}
    for g in groups:
        of |= dict.fromkeys(g, g)
    joined = tuple(sorted(set(of[first]) | set(of[second])))
    rest = [g for g in dict.fromkeys(of.values()) if not set(g) & set(joined) and len(g) >= 2]
    return sorted([*rest, joined])
