"""Choose, heal and measure the FFN fusion of a child: ``fuse_child(model, ...) -> (fused_model, report)``.

1. the child's fusable runs and the dependency score of every adjacent pair on calibration tokens
   (``puzzle.child.fusion``);
2. greedy choice: pairs in order of score (most independent first), each joining the two groups it links;
   a join is kept when ``KL(reference || fused)`` on the calibration tokens stays within ``max_kl``, until
   ``max_fusions`` joins are kept. The reference is the parent when one is given, else the unfused child;
3. optional GKD (``puzzle.child.gkd``) of the fused child against the reference, on the KL term only: inside
   a fused group the hidden states differ from the unfused ones by construction (the absorbed layers pass
   through), so the per-layer cosine term would pull the fused FFN back towards the sequential form;
4. before and after, on evaluation tokens: perplexity and KL; latency of the whole model per scenario measured
   with the project's profiler (``measure_model``), and each fused block (its width is new) measured against
   the sum of the blocks it replaces (``measure_block``, chains of ``min(layers, 8)`` like the library build).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from puzzle.child.fusion import (
    Group,
    PairScore,
    dependency_scores,
    find_runs,
    fuse_groups,
    merge,
    no_fusable_run_message,
)
from puzzle.errors import ConfigError

if TYPE_CHECKING:
    from puzzle.arch import ArchSpec, BlockSpec
    from puzzle.child.gkd import GKDConfig
    from puzzle.library import Scenario
    from puzzle.model import CausalLM
    from puzzle.train import StepInfo


@dataclass(frozen=True)
class FusionConfig:
    """How far to fuse (``max_kl`` nats/token, ``max_fusions`` joins), how to score, and how to measure."""

    max_kl: float
    max_fusions: int | None = None
    seq_len: int = 128
    batch_size: int = 8
    gkd: GKDConfig | None = None
    device: str = "cpu"
    warmup: int = 3
    repeats: int = 10

    def __post_init__(self) -> None:
        problems = []
        if isinstance(self.max_kl, bool) or not isinstance(self.max_kl, int | float) or not self.max_kl >= 0:
            problems.append(f"max KL must be a number >= 0, got {self.max_kl!r}")
        elif math.isinf(self.max_kl) and self.max_fusions is None:
            problems.append("an infinite max KL needs a max number of fusions")
        if self.max_fusions is not None and (not isinstance(self.max_fusions, int) or self.max_fusions < 1):
            problems.append(f"max fusions must be a positive integer, got {self.max_fusions!r}")
        for name in ("seq_len", "batch_size", "repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{name.replace('_', ' ')} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            problems.append(f"warmup must be an integer >= 0, got {self.warmup!r}")
        if problems:
            raise ConfigError("fusion settings: " + "; ".join(problems))


@dataclass(frozen=True)
class Trial:
    """One greedy step: the pair tried, its score, the KL of the model with it fused, and whether it was kept."""

    first: int
    second: int
    score: float
    kl: float
    accepted: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FusionReport:
    """What ``fuse_child`` did: runs, scores, greedy trials, fused groups, quality and latency before / after."""

    reference: str  # "parent" or "child": what the KL bound is measured against
    max_kl: float
    start_kl: float  # KL of the unfused child to the reference on the calibration tokens (0 for the child)
    runs: tuple[Group, ...]
    scores: tuple[PairScore, ...]
    trials: tuple[Trial, ...]
    groups: tuple[Group, ...]
    quality: dict[str, dict[str, float]] = field(default_factory=dict)
    latency: dict[str, dict[str, float]] = field(default_factory=dict)
    fused_blocks: tuple[dict[str, Any], ...] = ()
    gkd: dict[str, Any] | None = None

    @property
    def layers_removed(self) -> int:
        return sum(len(g) - 1 for g in self.groups)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "max_kl": self.max_kl if math.isfinite(self.max_kl) else None,
            "start_kl": self.start_kl,
            "runs": [list(r) for r in self.runs],
            "scores": [s.to_dict() for s in self.scores],
            "trials": [t.to_dict() for t in self.trials],
            "fused_groups": [list(g) for g in self.groups],
            "layers_removed": self.layers_removed,
            "quality": self.quality,
            "latency": self.latency,
            "fused_blocks": list(self.fused_blocks),
            "gkd": self.gkd,
        }


def select_fusions(
    model: CausalLM,
    reference: CausalLM,
    scores: Sequence[PairScore],
    tokens: np.ndarray,
    config: FusionConfig,
    *,
    on_status: Callable[[str], None] | None = None,
) -> tuple[list[Group], list[Trial]]:
    """Greedy: join the pairs of ``scores`` in order while KL(reference || fused) <= ``max_kl``."""
    from puzzle.child.assess import kl_to_parent

    runs = find_runs(model.arch)
    groups: list[Group] = []
    trials: list[Trial] = []
    for pair in scores:
        if config.max_fusions is not None and sum(t.accepted for t in trials) >= config.max_fusions:
            break
        candidate = merge(groups, runs, pair.first, pair.second)
        fused = fuse_groups(model, candidate, share=True)
        kl = kl_to_parent(fused, reference, tokens, config.seq_len, batch_size=config.batch_size)
        accepted = kl <= config.max_kl
        trials.append(Trial(pair.first, pair.second, pair.score, kl, accepted))
        if accepted:
            groups = candidate
        if on_status is not None:
            verdict = "kept" if accepted else "rejected"
            on_status(f"layers {pair.first}+{pair.second} (score {pair.score:.4f}): KL {kl:.4f} -> {verdict}")
    return groups, trials


def quality(
    model: CausalLM, tokens: np.ndarray, config: FusionConfig, references: dict[str, CausalLM]
) -> dict[str, float]:
    """Held-out loss / perplexity of ``model`` and its KL to each of ``references`` (``kl_to_<name>``)."""
    from puzzle.child.assess import kl_to_parent
    from puzzle.child.evaluate import evaluate

    result = evaluate(model, tokens, config.seq_len, batch_size=config.batch_size)
    out = {"loss": result.loss, "perplexity": result.perplexity, "tokens": float(result.tokens)}
    for name, ref in references.items():
        out[f"kl_to_{name}"] = kl_to_parent(model, ref, tokens, config.seq_len, batch_size=config.batch_size)
    return out


def latency(
    before: CausalLM, after: CausalLM, scenarios: Sequence[Scenario], config: FusionConfig
) -> dict[str, dict[str, float]]:
    """Measured whole-model latency per scenario, before and after, and the speedup (before / after)."""
    from puzzle.library.cost import measure_model

    old, new = (
        measure_model(m, tuple(scenarios), device=config.device, warmup=config.warmup, repeats=config.repeats)
        for m in (before, after)
    )
    return {
        s.name: {
            "before_ms": old[s.name]["runtime_ms"],
            "before_spread_ms": old[s.name]["runtime_spread_ms"],
            "after_ms": new[s.name]["runtime_ms"],
            "after_spread_ms": new[s.name]["runtime_spread_ms"],
            "speedup": old[s.name]["runtime_ms"] / new[s.name]["runtime_ms"],
        }
        for s in scenarios
    }


def fused_block_latency(
    model: CausalLM, fused: CausalLM, groups: Sequence[Group], scenarios: Sequence[Scenario], config: FusionConfig
) -> list[dict[str, Any]]:
    """Per fused group: its width and, per scenario, the fused block's measured time vs its members' sum."""
    from puzzle.library.cost import measure_block

    copies = min(model.arch.n_layers, 8)

    def measure(arch: ArchSpec, spec: BlockSpec) -> dict[str, dict[str, float]]:
        return measure_block(
            arch, spec, tuple(scenarios), device=config.device, warmup=config.warmup, repeats=config.repeats,
            copies=copies,
        )  # fmt: skip

    out = []
    for group in groups:
        spec = fused.arch.blocks[group[0]]
        new = measure(fused.arch, spec)
        members = [measure(model.arch, model.arch.blocks[i]) for i in group]
        out.append(
            {
                "layers": list(group),
                "host": group[0],
                "width": spec.ffn.intermediate_size if spec.ffn.kind == "mlp" else None,
                "member_widths": [model.arch.blocks[i].ffn.intermediate_size or None for i in group],
                "runtime_ms": {s.name: new[s.name]["runtime_ms"] for s in scenarios},
                "members_runtime_ms": {s.name: sum(m[s.name]["runtime_ms"] for m in members) for s in scenarios},
            }
        )
    return out


def fuse_child(
    model: CausalLM,
    calib_tokens: np.ndarray,
    eval_tokens: np.ndarray,
    config: FusionConfig,
    *,
    parent: CausalLM | None = None,
    gkd_rows: np.ndarray | None = None,
    scenarios: Sequence[Scenario] | None = None,
    on_status: Callable[[str], None] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> tuple[CausalLM, FusionReport]:
    """Fuse ``model``'s most independent FFN pairs under ``config``; ``model`` itself is left unchanged.

    ``calib_tokens`` score the pairs and decide each join; ``eval_tokens`` (held-out) give the before / after
    quality; ``gkd_rows`` (N, >= seq_len + 1) feed the optional GKD; ``scenarios`` default to the profiler's
    ``default_scenarios(config.device)`` (an empty sequence skips latency).
    """
    from puzzle.child.assess import kl_to_parent
    from puzzle.library.cost import default_scenarios

    status = on_status or (lambda _msg: None)
    runs = find_runs(model.arch)
    if not runs:
        raise ConfigError(no_fusable_run_message(model.arch))
    if parent is not None and parent.arch.vocab_size != model.arch.vocab_size:
        raise ConfigError(
            f"the parent's vocabulary ({parent.arch.vocab_size}) differs from the child's ({model.arch.vocab_size})"
        )
    if config.gkd is not None and config.gkd.tokens > 0 and gkd_rows is None:
        raise ConfigError("GKD after fusion needs training token rows")
    reference = parent if parent is not None else model
    status(f"{len(runs)} fusable run(s): {', '.join('+'.join(map(str, r)) for r in runs)}; scoring adjacent pairs")
    scores = dependency_scores(model, calib_tokens, config.seq_len, batch_size=config.batch_size, runs=runs)
    start_kl = 0.0
    if parent is not None:
        start_kl = kl_to_parent(model, parent, calib_tokens, config.seq_len, batch_size=config.batch_size)
        status(f"the unfused child is at KL {start_kl:.4f} to the parent (bound {config.max_kl})")
    groups, trials = select_fusions(model, reference, scores, calib_tokens, config, on_status=status)
    fused = fuse_groups(model, groups)
    gkd = None
    if groups and config.gkd is not None and config.gkd.tokens > 0:
        from puzzle.child.gkd import run_gkd

        status(
            f"healing the fused child by GKD ({config.gkd.tokens} tokens, KL to the {'parent' if parent else 'child'})"
        )
        assert gkd_rows is not None
        gkd = run_gkd(fused, reference, gkd_rows, config.gkd, on_step=on_step).to_dict()
    status("evaluating before / after")
    refs = {"parent": parent} if parent is not None else {}
    before = quality(model, eval_tokens, config, refs)
    after = quality(fused, eval_tokens, config, {**refs, "unfused": model})
    scenarios = default_scenarios(config.device) if scenarios is None else tuple(scenarios)
    lat: dict[str, dict[str, float]] = {}
    blocks: list[dict[str, Any]] = []
    if scenarios and groups:  # nothing fused: the same model twice would only measure the noise
        status(f"measuring latency ({', '.join(s.name for s in scenarios)})")
        lat = latency(model, fused, scenarios, config)
        blocks = fused_block_latency(model, fused, groups, scenarios, config)
    report = FusionReport(
        reference="parent" if parent is not None else "child",
        start_kl=start_kl,
        max_kl=float(config.max_kl),
        runs=tuple(runs),
        scores=tuple(scores),
        trials=tuple(trials),
        groups=tuple(groups),
        quality={"before": before, "after": after},
        latency=lat,
        fused_blocks=tuple(blocks),
        gkd=gkd,
    )
    return fused, report


def fusion_tokens(text: str | None, tokenizer: Any, calib: int, held: int) -> tuple[np.ndarray, np.ndarray]:
    """(calibration / GKD tokens from the training split, evaluation tokens from the held-out split); a corpus
    too small to split by document is split by tokens (first 80 % / last 20 %)."""
    from puzzle.data import DEFAULT_HELD_OUT_FRACTION, cached_tokens, read_corpus, split_corpus
    from puzzle.errors import DataError

    corpus = read_corpus(text)
    train_docs, held_docs = split_corpus(corpus, DEFAULT_HELD_OUT_FRACTION)
    if train_docs.documents and held_docs.documents:
        train, evaluation = (
            cached_tokens(train_docs, tokenizer, "train"),
            cached_tokens(held_docs, tokenizer, "held_out"),
        )
    else:
        stream = cached_tokens(corpus, tokenizer, "all")
        cut = int(0.8 * len(stream))
        train, evaluation = stream[:cut], stream[cut:]
    if len(train) < 2 or len(evaluation) < 2:
        raise DataError(f"{corpus.source}: too little text to calibrate and evaluate a fusion; use a larger corpus")
    return train, evaluation[:held]
