"""Global knowledge distillation (GKD): heal an assembled child against its parent (DESIGN.md §3).

Loss per batch, with ``h_i`` the output of block ``i`` (child and parent have the same number of layers: a
no-op layer passes its input through) and next-token distributions ``p`` (parent) and ``q`` (child)::

    L = cosine_weight * sum_i mean_tokens (1 - cos(h_child_i, h_parent_i))
      + kl_weight     * mean_tokens KL(p || q)
      + lm_weight     * mean_tokens CE(q, next token)         (off by default: it hurt in the paper)

Every child parameter trains (AdamW, linear warmup then cosine decay, gradient clipping); the parent is
frozen. The token budget fixes the number of steps (``ceil(tokens / (batch * seq_len))``), and batch ``s`` is a
pure function of (rows, seed, s), so a run resumed from its checkpoint (child weights, optimizer moments,
step, losses; written atomically every ``checkpoint_every`` steps and at the end) ends with the weights an
uninterrupted run gets. A checkpoint of a finished run is reused as is.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from puzzle.errors import CheckpointError, ConfigError, DataError
from puzzle.presets import warmup_cosine

if TYPE_CHECKING:
    import torch

    from puzzle.model import CausalLM
    from puzzle.train import StepInfo

CHECKPOINT = "gkd.pt"


@dataclass(frozen=True)
class GKDConfig:
    tokens: int = 262_144
    lr: float = 2e-4
    batch: int = 8
    seq_len: int = 128
    cosine_weight: float = 1.0
    kl_weight: float = 1.0
    lm_weight: float = 0.0
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50

    def __post_init__(self) -> None:
        problems = []
        for name in ("batch", "seq_len", "checkpoint_every"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) <= 0:
                problems.append(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if not isinstance(self.tokens, int) or self.tokens < 0:
            problems.append(f"tokens must be a non-negative integer, got {self.tokens!r}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        for name in ("cosine_weight", "kl_weight", "lm_weight"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if problems:
            raise ConfigError("GKD settings: " + "; ".join(problems))

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / (self.batch * self.seq_len))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GKDResult:
    steps: int
    tokens: int
    losses: tuple[float, ...]
    parts_last: dict[str, float]
    wall_s: float
    resumed_from: int | None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "losses": list(self.losses)}


def lr_at(step: int, cfg: GKDConfig) -> float:
    """Learning rate of GKD step ``step``: the shared ``warmup_cosine`` with ``warmup_fraction`` of the steps."""
    warmup = int(cfg.warmup_fraction * cfg.steps)
    return warmup_cosine(step, lr=cfg.lr, steps=cfg.steps, warmup=warmup, min_lr_ratio=cfg.min_lr_ratio)


def gkd_loss(
    child: CausalLM, parent: CausalLM, input_ids: torch.Tensor, targets: torch.Tensor | None, cfg: GKDConfig
) -> tuple[torch.Tensor, dict[str, float]]:
    """The GKD loss of one batch ``input_ids`` (B, T) and its parts (``cosine``, ``kl``, ``lm``)."""
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        p_logits, p_hidden = parent(input_ids, return_hidden=True)  # (B, T, V), L+1 x (B, T, C)
    q_logits, q_hidden = child(input_ids, return_hidden=True)
    cosine = sum(
        (1 - F.cosine_similarity(qh.float(), ph.float(), dim=-1)).mean()
        for qh, ph in zip(q_hidden[1:], p_hidden[1:], strict=True)
    )
    logq = F.log_softmax(q_logits.float(), dim=-1).flatten(0, 1)  # (B*T, V)
    logp = F.log_softmax(p_logits.float(), dim=-1).flatten(0, 1)
    kl = F.kl_div(logq, logp, log_target=True, reduction="batchmean")  # KL(p || q) per token
    loss = cfg.cosine_weight * cosine + cfg.kl_weight * kl
    parts = {"cosine": float(cosine.detach()), "kl": float(kl.detach())}
    if cfg.lm_weight > 0:
        if targets is None:
            raise ConfigError("GKD with lm_weight > 0 needs next-token targets")
        lm = F.cross_entropy(logq, targets.flatten())
        loss = loss + cfg.lm_weight * lm
        parts["lm"] = float(lm.detach())
    return loss, parts


def _checkpoint_key(child: CausalLM, cfg: GKDConfig, rows: np.ndarray) -> dict[str, Any]:
    import hashlib

    return {
        "arch": child.arch.to_dict(),
        "config": cfg.to_dict(),
        "rows": hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest(),
    }


@dataclass
class _Run:
    """Where a GKD run stands: losses so far, the last loss parts, and what it resumed from."""

    losses: list[float]
    parts: dict[str, float]
    start: int = 0
    resumed_from: int | None = None
    prior_s: float = 0.0


def _resume(file: Path, key: dict[str, Any], child: CausalLM, opt: Any) -> _Run | None:
    """The run saved in ``file`` loaded into ``child`` and ``opt`` (None when it was of other settings or data)."""
    import torch

    try:
        state = torch.load(file, weights_only=False)
    except Exception as exc:  # a damaged checkpoint is a user-visible problem, not a crash
        raise CheckpointError(f"{file}: cannot read the GKD checkpoint ({exc}); delete it to start over") from exc
    if state.get("key") != key:
        return None
    child.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    start = state["step"]
    return _Run(list(state["losses"]), state.get("parts", {}), start, start, state.get("wall_s", 0.0))


def _gkd_steps(
    child: CausalLM,
    parent: CausalLM,
    rows: np.ndarray,
    cfg: GKDConfig,
    opt: Any,
    run: _Run,
    checkpoint: Callable[[int], None],
    on_step: Callable[[StepInfo], None] | None,
) -> None:
    """Steps ``run.start .. cfg.steps``; ``checkpoint(done)`` every ``checkpoint_every`` steps and after the last."""
    import torch

    from puzzle.data import iter_batches
    from puzzle.train import StepInfo

    t0 = time.perf_counter()
    tokens_per_step = cfg.batch * cfg.seq_len
    batches = iter_batches(rows, min(cfg.batch, len(rows)), cfg.seed, run.start)
    for step in range(run.start, cfg.steps):
        batch = torch.from_numpy(next(batches).astype(np.int64))  # (B, T + 1)
        lr = lr_at(step, cfg)
        for group in opt.param_groups:
            group["lr"] = lr
        loss, run.parts = gkd_loss(child, parent, batch[:, :-1], batch[:, 1:], cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(child.parameters(), cfg.grad_clip)
        opt.step()
        run.losses.append(float(loss.detach()))
        done = step + 1
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            checkpoint(done)
        if on_step is not None:
            rate = (done - run.start) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
            on_step(StepInfo(step=done, total=cfg.steps, loss=run.losses[-1], lr=lr, tokens_per_s=rate))


def run_gkd(
    child: CausalLM,
    parent: CausalLM,
    rows: np.ndarray,
    cfg: GKDConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> GKDResult:
    """Distil ``parent`` into ``child`` (in place) on token ``rows`` (N, >= seq_len + 1); resumable."""
    from puzzle.train import adamw, save_checkpoint

    if rows.ndim != 2 or rows.shape[1] < cfg.seq_len + 1:
        raise DataError(f"GKD needs token rows of at least seq_len + 1 = {cfg.seq_len + 1} tokens, got {rows.shape}")
    if child.arch.n_layers != parent.arch.n_layers or child.arch.vocab_size != parent.arch.vocab_size:
        raise ConfigError("GKD: child and parent must have the same number of layers and vocabulary")
    rows = rows[:, : cfg.seq_len + 1]
    parent.eval()
    for p in parent.parameters():
        p.requires_grad_(False)
    for p in child.parameters():
        p.requires_grad_(True)
    opt = adamw(child, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    key = _checkpoint_key(child, cfg, rows)
    file = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    run = _Run(losses=[], parts={})
    if file is not None and file.is_file():
        run = _resume(file, key, child, opt) or run

    def checkpoint(step: int, wall: float) -> None:
        if file is not None:
            state = {"key": key, "model": child.state_dict(), "optimizer": opt.state_dict(), "step": step}
            save_checkpoint(file, state | {"losses": run.losses, "parts": run.parts, "wall_s": wall})

    t0 = time.perf_counter()
    child.train()
    try:
        _gkd_steps(
            child,
            parent,
            rows,
            cfg,
            opt,
            run,
            lambda step: checkpoint(step, run.prior_s + time.perf_counter() - t0),
            on_step,
        )
        if run.start == cfg.steps == 0:
            checkpoint(0, 0.0)
    finally:
        child.eval()
        for p in child.parameters():
            p.requires_grad_(False)
    losses, parts, prior_s, resumed_from = run.losses, run.parts, run.prior_s, run.resumed_from
    tokens_per_step = cfg.batch * cfg.seq_len
    return GKDResult(
        steps=cfg.steps,
        tokens=cfg.steps * tokens_per_step,
        losses=tuple(losses),
        parts_last=parts,
        wall_s=round(prior_s + time.perf_counter() - t0, 3),
        resumed_from=resumed_from,
        config=cfg.to_dict(),
    )
