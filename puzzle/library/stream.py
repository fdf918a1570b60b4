"""Streaming BLD: one parent forward per batch feeds every child block being trained for a layer.

A task trains all pending units of one parent layer ``i`` together (DESIGN.md §3, BLD). It loads only the
embedding and parent layers ``0..i`` (``parent.ParentPrefix``), then for every step draws a batch of token rows,
runs the prefix once (no gradient, in the parent's dtype) to get layer i's input ``h`` and output ``y``, and takes
one optimizer step of every unit on that batch:

    loss_u = NMSE(child_u(h) - h, y - h)        for every unit u of layer i, same (h, y)

Memory is the embedding, the earlier layers that fit ``resident_mb`` (the others are read per batch), layer i, the
children and one batch of activations, whatever the token budget and however deep layer i is; nothing is cached on
disk but the token ids. Every unit draws the same row sequence (one generator, the config's seed), so a unit trains
exactly as it would alone. A unit whose training did not lower its objective on a fixed probe of training rows is
retried at a tenth of the rate, and keeps its initialisation if that does not help either (``kept_init``).

Resume: each finished unit is stored under its own key (``distill.unit_key``) before the task returns, and a task
skips units already stored; an interrupted unit restarts from its initialisation.
"""

from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from puzzle.files import save_tensors
from puzzle.library.distill import (
    MODULE,
    BLDConfig,
    changes_from_dict,
    init_child,
    normalized_mse,
    state_digest,
    subblock_state,
)
from puzzle.library.parent import ParentPrefix, load_parent_arch
from puzzle.library.store import ResultStore
from puzzle.presets import warmup_cosine

PROBE_ROWS = 32  # fixed training rows on which "did training help its own objective?" is judged
CALIB_ROWS = 16  # rows whose activations initialise pruned / fitted children


@dataclass
class _Unit:
    key: str
    changes: dict[str, Any]
    child: nn.Module
    params: list[nn.Parameter]
    init: dict[str, torch.Tensor]
    nmse_init: float
    probe_before: float
    losses: list[float] = field(default_factory=list)
    kept_init: bool = False


def _split(n: int, val_fraction: float) -> tuple[slice, slice]:
    n_val = max(1, round(n * val_fraction)) if n > 1 else 0
    return slice(0, n - n_val), slice(n - n_val, n)


@torch.no_grad()
def _nmse(block: nn.Module, acts: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    num = den = 0.0
    for x, y in acts:
        target = y - x
        num += (block(x) - x - target).pow(2).sum().item()
        den += target.pow(2).sum().item()
    return num / max(den, 1e-12)


class _Stream:
    """Layer i's (input, output) activations of token rows, computed by the parent prefix on demand."""

    def __init__(self, prefix: ParentPrefix, ids: torch.Tensor, device: str, batch: int) -> None:
        self.prefix, self.ids, self.device, self.batch = prefix, ids, device, batch
        self.forwards = 0  # prefix forwards run (one per training step and per evaluation batch)

    def __call__(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.forwards += 1
        return self.prefix(self.ids[rows].to(self.device))

    def chunks(self, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Activations of ``rows`` in batches (for the small validation and probe sets, kept for the task)."""
        return [self(rows[s : s + self.batch]) for s in range(0, len(rows), self.batch)]


def _autocast(device: str, dtype: str | None) -> Any:
    """bf16 / fp16 compute for the children on CUDA when the parent runs in it (fp32 master weights)."""
    if device.startswith("cuda") and dtype in ("bfloat16", "float16"):
        return torch.autocast("cuda", dtype=getattr(torch, dtype))
    return nullcontext()


def _train(units: list[_Unit], stream: _Stream, n_train: int, steps: int, lr: float, cfg: BLDConfig, amp: Any) -> None:
    """``steps`` AdamW steps of every unit, all on the same batch per step (one prefix forward per step)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opts = [torch.optim.AdamW(u.params, lr=lr, weight_decay=0.0) for u in units]
    warmup = max(1, steps // 10)
    schedule = [warmup_cosine(s, lr=1.0, steps=steps, warmup=warmup, min_lr_ratio=0.1) for s in range(steps + 1)]
    scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: schedule[min(s, steps)]) for o in opts]
    for u in units:
        u.losses = []
        u.child.train()
    for _ in range(steps):
        rows = torch.randint(0, n_train, (min(cfg.batch, n_train),), generator=gen)
        x, y = stream(rows)
        target = y - x
        for u, opt, sched in zip(units, opts, scheds, strict=True):
            with amp:
                out = u.child(x)
            loss = normalized_mse(out.float() - x, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            u.losses.append(loss.item())
    for u in units:
        u.child.eval()


def _make_unit(
    key: str, changes: dict[str, Any], arch: Any, parent_block: nn.Module, layer: int, h_calib: torch.Tensor, cfg: Any
) -> _Unit:
    spec_changes = changes_from_dict(changes)
    child = init_child(arch, parent_block, arch.blocks[layer], spec_changes, h_calib, cfg)
    trainable = [MODULE[k] for k, s in spec_changes.items() if s.kind != "no_op"]
    trainable += [f"{m}_norm" for m in trainable]
    params = [p for name, p in child.named_parameters() if name.split(".")[0] in trainable]
    for p in child.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    init = {k: v.clone() for k, v in child.state_dict().items()}
    return _Unit(key, changes, child, params, init, 0.0, 0.0)


def _record(u: _Unit, work: Path, layer: int, steps: int, tokens: int, nmse_final: float) -> dict[str, Any]:
    files = {}
    state = u.child.state_dict()
    for kind, spec in changes_from_dict(u.changes).items():
        if spec.kind == "no_op":
            continue
        sub = subblock_state(state, kind)
        digest = state_digest(sub)
        path = work / "subblocks" / f"{digest}.safetensors"
        if not path.exists():
            save_tensors(path, sub)
        files[kind] = digest
    head = u.losses[: max(1, len(u.losses) // 10)]
    tail = u.losses[-max(1, len(u.losses) // 10) :]
    return {
        "nmse_init": u.nmse_init,
        "nmse_final": nmse_final,
        "train_loss_first": sum(head) / len(head) if u.losses else u.nmse_init,
        "train_loss_last": sum(tail) / len(tail) if u.losses else u.nmse_init,
        "steps": steps,
        "tokens": tokens,
        "kept_init": u.kept_init,
        "layer": layer,
        "changes": u.changes,
        "files": files,
    }


def bld_layer_task(
    work: str,
    data_file: str,
    layer: int,
    units: list[tuple[str, dict[str, dict]]],
    cfg: dict[str, Any],
    device: str = "cpu",
    dtype: str | None = None,
    resident_mb: float | None = None,
) -> dict[str, Any]:
    """Train every pending unit ``(key, changes)`` of ``layer`` on one stream of parent activations (a worker task).

    ``data_file``: safetensors with ``ids`` (N, T), the distillation token rows. ``dtype``: the parent prefix's
    compute dtype (default: as stored); children train in fp32. ``resident_mb``: the earlier parent layers kept in
    memory (``None``: all); the rest are read per batch (``ParentPrefix``). Each finished unit is stored under its key in
    ``work/results``; returns ``{"layer", "units", "seconds", "tokens", "prefix_forwards"}``.
    """
    from safetensors.torch import load_file

    config = BLDConfig(**cfg)
    store = ResultStore(Path(work) / "results")
    todo = [(key, changes) for key, changes in units if key not in store]
    if not todo:
        return {"layer": layer, "units": [k for k, _ in units], "seconds": 0.0, "tokens": 0, "prefix_forwards": 0}
    # the training loop's time is reported apart from loading, init and evaluation (``train_seconds``)
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    arch = load_parent_arch(work)
    resident = None if resident_mb is None else int(resident_mb * 2**20)
    torch_dtype = getattr(torch, dtype) if dtype else None
    prefix = ParentPrefix(work, arch, layer, device=device, dtype=torch_dtype, resident_bytes=resident)
    ids = load_file(data_file)["ids"]
    train, val = _split(ids.shape[0], config.val_fraction)
    stream = _Stream(prefix, ids, device, config.batch)
    n_train = train.stop
    val_acts = stream.chunks(torch.arange(val.start, val.stop))
    probe_acts = stream.chunks(torch.arange(min(PROBE_ROWS, n_train)))
    h_calib = stream(torch.arange(min(CALIB_ROWS, n_train)))[0]
    parent_block = copy.deepcopy(prefix.last).float()  # the prefix keeps its dtype
    pending = [_make_unit(k, c, arch, parent_block, layer, h_calib, config) for k, c in todo]
    for u in pending:
        u.child.to(device)
        u.nmse_init = _nmse(u.child, val_acts)
        u.probe_before = _nmse(u.child, probe_acts)
    seq = ids.shape[1]
    steps = math.ceil(config.tokens / (config.batch * seq))
    retry = [u for u in pending if u.params]
    passes, train_start = 0, time.perf_counter()
    for lr in (config.lr, config.lr / 10) if steps else ():
        _train(retry, stream, n_train, steps, lr, config, _autocast(device, dtype))
        passes += 1
        failed = []
        for u in retry:
            u.kept_init = _nmse(u.child, probe_acts) >= u.probe_before
            if u.kept_init:
                u.child.load_state_dict(u.init)
                failed.append(u)
        retry = failed
        if not retry:
            break
    train_seconds = time.perf_counter() - train_start
    tokens = steps * min(config.batch, n_train) * seq
    for u in pending:
        u.child.cpu()
        steps_u = steps if u.params else 0
        record = _record(u, Path(work), layer, steps_u, tokens if u.params else 0, _nmse(u.child, _cpu(val_acts)))
        store.put(u.key, record)
    return {
        "layer": layer,
        "units": [k for k, _ in units],
        "seconds": time.perf_counter() - start,
        "train_seconds": train_seconds,
        "tokens": tokens * passes,
        "unit_tokens": tokens * passes * len(pending),
        "prefix_forwards": stream.forwards,
    }


def _cpu(acts: list[tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.cpu(), y.cpu()) for x, y in acts]
