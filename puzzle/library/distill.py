"""Blockwise local distillation (BLD): each child block learns its parent block's output from the parent's input.

Loss (DESIGN.md §3), on the block's residual contribution ``o = block(h) - h`` (so a removed block scores 1)::

    NMSE = MSE(o_parent, o_child) / MSE(o_parent, 0)

with ``h`` the parent's own input activations to that layer (teacher forcing). A *unit* of training changes
some subblocks of one parent layer (``changes: {kind: spec}``) and keeps the others frozen at the parent:

* decoupled: one unit per non-parent option of one subblock kind (attention variants with the parent FFN
  frozen, FFN variants with the parent attention frozen), composed afterwards;
* coupled: one unit per (attention, FFN) pair.

Only the changed subblocks and their norms train. Parent activations are never stored: ``stream.py`` trains all
units of a layer together on activations the parent prefix computes batch by batch. This module holds what a
unit is (its init, key and stored subblocks); ``parent.py`` how tasks read the parent.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec
from puzzle.errors import ConfigError
from puzzle.files import key_digest
from puzzle.library.prune import DEFAULT_KV_METHOD, DEFAULT_LINEAR_METHOD, init_subblock

# subblock kind (space / BlockSpec field) -> module attribute of puzzle.model.Block
MODULE = {"mamba": "mamba", "attention": "attn", "ffn": "ffn"}
# bump when the init or training algorithm changes, so stored units are not reused across versions
BLD_VERSION = 5  # 5: streamed activations (one parent forward per batch for all units), the shared LR schedule
SPEC_TYPES = {"mamba": MambaSpec, "attention": AttentionSpec, "ffn": FFNSpec}


@dataclass(frozen=True)
class BLDConfig:
    """Distillation settings of one unit: token budget, learning rate, sequences per step, seed."""

    tokens: int = 65_536
    lr: float = 5e-4
    batch: int = 8
    seed: int = 0
    val_fraction: float = 0.125
    kv_method: str = DEFAULT_KV_METHOD
    linear_method: str = DEFAULT_LINEAR_METHOD

    def __post_init__(self) -> None:
        problems = []
        if self.tokens < 0:
            problems.append(f"tokens must be >= 0, got {self.tokens}")
        if not self.lr > 0:
            problems.append(f"lr must be positive, got {self.lr}")
        if self.batch <= 0:
            problems.append(f"batch must be positive, got {self.batch}")
        if not 0 < self.val_fraction < 1:
            problems.append(f"val_fraction must be in (0, 1), got {self.val_fraction}")
        if self.kv_method not in ("mean", "importance"):
            problems.append(f"kv_method must be mean or importance, got {self.kv_method!r}")
        if self.linear_method not in ("lstsq", "product"):
            problems.append(f"linear_method must be lstsq or product, got {self.linear_method!r}")
        if problems:
            raise ConfigError("distillation settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def normalized_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``MSE(target, pred) / MSE(target, 0)`` (1 for a zero prediction)."""
    return (pred - target).pow(2).mean() / target.pow(2).mean().clamp_min(1e-12)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's names, shapes, dtypes and values."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# --- blocks ----------------------------------------------------------------------------------------------


def block_context(arch: ArchSpec) -> Any:
    from puzzle.model import ModelContext

    return ModelContext(hidden_size=arch.hidden_size, norm_eps=arch.norm_eps, rope=arch.rope)


def build_block(arch: ArchSpec, spec: BlockSpec, state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    from puzzle.model import Block

    block = Block(spec, block_context(arch))
    if state is not None:
        block.load_state_dict(state, strict=True)
    return block


def subblock_state(block_state: dict[str, torch.Tensor], kind: str) -> dict[str, torch.Tensor]:
    """The tensors of one subblock of a block state, with its norm (``attn.*`` + ``attn_norm.*`` etc.)."""
    mod = MODULE[kind]
    return {k: v for k, v in block_state.items() if k.startswith((f"{mod}.", f"{mod}_norm."))}


@torch.no_grad()
def subblock_input(block: nn.Module, kind: str, h: torch.Tensor) -> torch.Tensor:
    """The normed activations that reach subblock ``kind`` when ``block`` runs on ``h``."""
    seen: list[torch.Tensor] = []
    handle = getattr(block, MODULE[kind]).register_forward_hook(lambda _m, inputs, _o: seen.append(inputs[0]))
    try:
        block(h)
    finally:
        handle.remove()
    return seen[0]


@torch.no_grad()
def init_child(
    arch: ArchSpec,
    parent_block: nn.Module,
    parent_spec: BlockSpec,
    changes: dict[str, Any],
    h_calib: torch.Tensor,
    cfg: BLDConfig,
) -> nn.Module:
    """The child block: parent subblocks where unchanged, pruned / fitted inits for ``changes``."""
    child_spec = BlockSpec(**{**{k: getattr(parent_spec, k) for k in MODULE}, **changes})
    parent_state = parent_block.state_dict()
    state = {k: v.clone() for k, v in parent_state.items() if k.split(".")[0] not in {MODULE[c] for c in changes}}
    state = {k: v for k, v in state.items() if not any(k.startswith(f"{MODULE[c]}_norm.") for c in changes)}
    for kind, spec in changes.items():
        if spec.kind == "no_op":
            continue
        mod = MODULE[kind]
        x = subblock_input(parent_block, kind, h_calib)
        sub = init_subblock(
            kind,
            getattr(parent_block, mod),
            getattr(parent_spec, kind),
            spec,
            x,
            kv_method=cfg.kv_method,  # type: ignore[arg-type]
            linear_method=cfg.linear_method,  # type: ignore[arg-type]
        )
        state.update({f"{mod}.{k}": v for k, v in sub.items()})
        norm = f"{mod}_norm.weight"
        state[norm] = parent_state[norm].clone() if norm in parent_state else torch.ones(arch.hidden_size)
    return build_block(arch, child_spec, state)


# --- units and their stored subblocks -------------------------------------------------------------------


def changes_from_dict(data: dict[str, Any]) -> dict[str, Any]:
    return {kind: SPEC_TYPES[kind].from_dict(spec) for kind, spec in data.items()}


def unit_key(layer: int, changes: dict[str, Any], cfg: BLDConfig, parent_digest: str, act_key: str) -> str:
    """Key of one BLD unit: what produced it (parent, data, layer, changed subblocks, settings)."""
    desc = {k: v.to_dict() for k, v in sorted(changes.items())}
    kinds = "+".join(sorted(changes))
    return f"bld/L{layer}/{kinds}/{key_digest(BLD_VERSION, parent_digest, act_key, layer, desc, cfg.to_dict())}"


def load_subblocks(work: str | Path, files: dict[str, str]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for digest in files.values():
        state.update(load_file(str(Path(work) / "subblocks" / f"{digest}.safetensors")))
    return state


def compose_state(
    parent_state: dict[str, torch.Tensor], parent_spec: BlockSpec, spec: BlockSpec, trained: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The state of block ``spec``: the parent's subblocks where kept, ``trained`` tensors where changed."""
    state: dict[str, torch.Tensor] = {}
    for kind, mod in MODULE.items():
        if getattr(spec, kind).is_no_op:
            continue
        source = parent_state if getattr(spec, kind) == getattr(parent_spec, kind) else trained
        part = {k: v for k, v in source.items() if k.startswith((f"{mod}.", f"{mod}_norm."))}
        if not part:
            raise KeyError(f"no weights for the {kind} subblock of {spec}")
        state.update(part)
    return state
