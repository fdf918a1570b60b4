"""Multi-budget distillation: one set of shared weights trained so every budget's submodel matches the parent.

Each step takes one batch of text, runs the frozen full parent (the teacher, a copy taken before training) once,
and ``budgets_per_step`` submodels of the elastic student, drawn from the budgets with replacement::

    L = mean over the drawn budgets b of  mean_tokens KL(p_parent || q_b)

Two-stage curriculum (Nemotron Elastic): the first ``stage1_fraction`` of the steps draw budgets uniformly; the
rest draw them weighted towards the harder (smaller) budgets, ``w_b ∝ budget ** -hard_power``. The full model
is one of the budgets (``include_full``), so the shared weights keep serving it. Draws are a pure function of
(seed, step) and batch ``s`` of (rows, seed, s), so a run resumed from its checkpoint (weights, optimizer, step,
losses, written atomically every ``checkpoint_every`` steps and at the end) ends where an uninterrupted one does.
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from puzzle.elastic.model import ElasticLM
from puzzle.elastic.space import ElasticConfig, budget_key

if TYPE_CHECKING:
    from puzzle.elastic.router import CostModel, Router
from puzzle.errors import CheckpointError, ConfigError, DataError
from puzzle.files import atomic_path
from puzzle.train import StepInfo

CHECKPOINT = "elastic_kd.pt"


@dataclass(frozen=True)
class ElasticTrainConfig:
    tokens: int = 131_072  # text tokens through the teacher (each is seen by budgets_per_step submodels)
    lr: float = 3e-4
    batch: int = 8
    seq_len: int = 128
    budgets_per_step: int = 0  # 0: as many as there are budgets
    stage1_fraction: float = 0.5
    hard_power: float = 2.0
    include_full: bool = True
    warmup_fraction: float = 0.05
    min_lr_ratio: float = 0.1
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
        if not isinstance(self.budgets_per_step, int) or self.budgets_per_step < 0:
            problems.append(f"budgets_per_step must be an integer >= 0, got {self.budgets_per_step!r}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if not 0 <= self.stage1_fraction <= 1:
            problems.append(f"stage1_fraction must be in [0, 1], got {self.stage1_fraction}")
        if self.hard_power < 0:
            problems.append(f"hard_power must be >= 0, got {self.hard_power}")
        if not 0 <= self.warmup_fraction < 1:
            problems.append(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction}")
        if problems:
            raise ConfigError("elastic training: " + "; ".join(problems))

    @property
    def steps(self) -> int:
        return math.ceil(self.tokens / (self.batch * self.seq_len))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RouterTraining:
    """Train a router jointly: each drawn budget's submodel is sampled from it (Gumbel-softmax, temperature
    annealed linearly from ``tau_start`` to ``tau_end``) and its loss adds the cost penalty."""

    router: Router
    cost: CostModel
    lr: float = 1e-2
    tau_start: float = 1.0
    tau_end: float = 0.2
    cost_weight: float = 20.0  # on (cost / parent - budget)^2 above the budget
    under_weight: float = 5.0  # ... and below it: a budget left unused is quality left on the table

    def tau(self, step: int, steps: int) -> float:
        return self.tau_start + (self.tau_end - self.tau_start) * step / max(steps - 1, 1)


@dataclass(frozen=True)
class ElasticTrainResult:
    steps: int
    tokens: int  # text tokens (teacher forward passes)
    student_tokens: int  # tokens summed over every submodel trained on them
    losses: tuple[float, ...]
    draws: dict[str, int]  # budget -> how many times it was trained
    wall_s: float
    resumed_from: int | None
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "losses": list(self.losses)}


def budget_weights(budgets: Sequence[float], step: int, cfg: ElasticTrainConfig) -> np.ndarray:
    """Sampling weights of ``budgets`` at ``step``: uniform in stage 1, ``∝ budget ** -hard_power`` in stage 2."""
    b = np.asarray(budgets, dtype=np.float64)
    w = np.ones_like(b) if step < cfg.stage1_fraction * cfg.steps else b ** (-cfg.hard_power)
    return w / w.sum()


def draw_budgets(budgets: Sequence[float], step: int, cfg: ElasticTrainConfig) -> list[int]:
    """Indices of the budgets trained at ``step`` (a pure function of seed and step)."""
    k = cfg.budgets_per_step or len(budgets)
    rng = np.random.default_rng([cfg.seed, step])
    return [int(i) for i in rng.choice(len(budgets), size=k, p=budget_weights(budgets, step, cfg))]


def lr_at(step: int, cfg: ElasticTrainConfig) -> float:
    warmup = int(cfg.warmup_fraction * cfg.steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = min((step - warmup) / max(cfg.steps - warmup, 1), 1.0)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def _kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor) -> torch.Tensor:
    logp = F.log_softmax(teacher_logits.float(), dim=-1).flatten(0, 1)  # (B*T, V)
    logq = F.log_softmax(student_logits.float(), dim=-1).flatten(0, 1)
    return F.kl_div(logq, logp, log_target=True, reduction="batchmean")  # KL(p || q) per token


def _routed_loss(
    elastic: ElasticLM,
    router: RouterTraining,
    j: int,
    budget: float,
    ids: torch.Tensor,
    teacher_logits: torch.Tensor,
    step: int,
    cfg: ElasticTrainConfig,
) -> torch.Tensor:
    """KL of a router-sampled submodel for budget ``j`` plus the penalty for missing the budget's cost (heavier
    above it than below: ``extract`` repairs an overshoot, nothing repairs a wasted budget)."""
    from puzzle.elastic.router import masked_forward

    picks = router.router.sample(j, router.tau(step, cfg.steps))
    student = masked_forward(elastic, router.router.options, picks, ids)
    gap = router.cost.ratio(picks) - budget
    weight = router.cost_weight if float(gap.detach()) > 0 else router.under_weight
    return _kl(teacher_logits, student) + weight * gap.square().to(student.dtype)


def _key(elastic: ElasticLM, targets: dict[str, ElasticConfig], cfg: ElasticTrainConfig, rows: np.ndarray) -> dict:
    return {
        "arch": elastic.arch.to_dict(),
        "budgets": {k: c.to_list() for k, c in targets.items()},
        "config": cfg.to_dict(),
        "rows": hashlib.sha256(np.ascontiguousarray(rows).tobytes()).hexdigest(),
    }


def train_elastic(
    elastic: ElasticLM,
    rows: np.ndarray,
    cfg: ElasticTrainConfig,
    *,
    budgets: Sequence[float] = (),
    router: RouterTraining | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> ElasticTrainResult:
    """Train the shared weights of ``elastic`` (in place) on token ``rows`` (N, >= seq_len + 1); resumable.

    Without ``router`` each budget runs its fixed configuration (``elastic.budgets``); with one, ``budgets``
    (plus 1 with ``include_full``, in the order of the router's budget inputs: full first, then largest first)
    are trained with configurations sampled from the router, which trains too. The loop, checkpointing and
    progress are one unit (as in ``puzzle.child.gkd.run_gkd``), hence its length.
    """
    from puzzle.data import iter_batches

    if rows.ndim != 2 or rows.shape[1] < cfg.seq_len + 1:
        raise DataError(
            f"elastic training needs rows of at least seq_len + 1 = {cfg.seq_len + 1} tokens, got {rows.shape}"
        )
    rows = rows[:, : cfg.seq_len + 1]
    full = ElasticConfig.full(elastic.arch)
    if router is None:
        targets = {budget_key(b): c for b, c in sorted(elastic.budgets.items(), reverse=True)}
    else:
        targets = {budget_key(b): full for b in sorted(budgets, reverse=True)}
    if cfg.include_full:
        targets = {"1": full} | targets
    if not targets:
        raise ConfigError("elastic training needs at least one budget")
    names, configs = list(targets), list(targets.values())
    fractions = [float(n) for n in names]
    if router is not None and router.router.n_budgets != len(names):
        raise ConfigError(f"the router takes {router.router.n_budgets} budgets; training has {len(names)}")
    teacher = copy.deepcopy(elastic.model).eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    params = list(elastic.model.parameters())
    for p in params:
        p.requires_grad_(True)
    groups: list[dict[str, Any]] = [{"params": params, "kind": "weights"}]
    if router is not None:
        groups.append({"params": list(router.router.parameters()), "kind": "router", "lr": router.lr})
    opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.95), weight_decay=0.0)
    key = _key(elastic, targets, cfg, rows) | ({"router": router.cost.key} if router is not None else {})
    file = Path(checkpoint_dir) / CHECKPOINT if checkpoint_dir is not None else None
    start, losses, draws, resumed_from, prior_s = 0, [], dict.fromkeys(names, 0), None, 0.0
    if file is not None and file.is_file():
        try:
            state = torch.load(file, weights_only=False)
        except Exception as exc:  # a damaged checkpoint is the user's to delete, not a crash
            raise CheckpointError(
                f"{file}: cannot read the elastic checkpoint ({exc}); delete it to start over"
            ) from exc
        if state.get("key") == key:
            elastic.model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            start, losses, draws = state["step"], list(state["losses"]), dict(state["draws"])
            resumed_from, prior_s = start, state.get("wall_s", 0.0)
            teacher.load_state_dict(state["teacher"])
            if router is not None:
                router.router.load_state_dict(state["router"])

    def checkpoint(step: int, wall: float) -> None:
        if file is None:
            return
        state: dict[str, Any] = {"key": key, "model": elastic.model.state_dict(), "teacher": teacher.state_dict()}
        if router is not None:
            state["router"] = router.router.state_dict()
        state |= {"optimizer": opt.state_dict(), "step": step, "losses": losses, "draws": draws, "wall_s": wall}
        file.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(file) as tmp:
            torch.save(state, tmp)

    t0 = time.perf_counter()
    rng_state = torch.get_rng_state()  # the per-step seeding below must not change the caller's random stream
    elastic.train()
    tokens_per_step = cfg.batch * cfg.seq_len
    batches = iter_batches(rows, min(cfg.batch, len(rows)), cfg.seed, start)
    try:
        for step in range(start, cfg.steps):
            ids = torch.from_numpy(next(batches).astype(np.int64))[:, :-1]  # (B, T)
            lr = lr_at(step, cfg)
            for group in opt.param_groups:
                if group["kind"] == "weights":
                    group["lr"] = lr
            torch.manual_seed(cfg.seed * 1_000_003 + step)  # Gumbel noise: a pure function of (seed, step)
            with torch.no_grad():
                teacher_logits = teacher(ids)  # (B, T, V)
            chosen = draw_budgets(fractions, step, cfg)
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for j in chosen:  # one backward per submodel: memory of one submodel's activations at a time
                if router is None:
                    loss = _kl(teacher_logits, elastic(ids, config=configs[j])) / len(chosen)
                else:
                    loss = _routed_loss(elastic, router, j, fractions[j], ids, teacher_logits, step, cfg) / len(chosen)
                loss.backward()
                total += float(loss.detach())
                draws[names[j]] += 1
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                if router is not None:
                    torch.nn.utils.clip_grad_norm_(router.router.parameters(), cfg.grad_clip)
            opt.step()
            losses.append(total)
            done = step + 1
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                checkpoint(done, prior_s + time.perf_counter() - t0)
            if on_step is not None:
                rate = (done - start) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
                on_step(StepInfo(step=done, total=cfg.steps, loss=total, lr=lr, tokens_per_s=rate))
    finally:
        torch.set_rng_state(rng_state)
        elastic.eval()
        for p in params:
            p.requires_grad_(False)
        if router is not None:
            router.router.eval()
    k = cfg.budgets_per_step or len(names)
    return ElasticTrainResult(
        steps=cfg.steps,
        tokens=cfg.steps * tokens_per_step,
        student_tokens=cfg.steps * tokens_per_step * k,
        losses=tuple(losses),
        draws=draws,
        wall_s=round(prior_s + time.perf_counter() - t0, 3),
        resumed_from=resumed_from,
        config=cfg.to_dict(),
    )
