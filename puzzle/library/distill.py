"""Blockwise local distillation (BLD): each child block learns its parent block's output from the parent's input.

Loss (DESIGN.md §3), on the block's residual contribution ``o = block(h) - h`` (so a removed block scores 1)::

    NMSE = MSE(o_parent, o_child) / MSE(o_parent, 0)

with ``h`` the parent's own input activations to that layer (teacher forcing). A *unit* of training changes
some subblocks of one parent layer (``changes: {kind: spec}``) and keeps the others frozen at the parent:

* decoupled: one unit per non-parent option of one subblock kind (attention variants with the parent FFN
  frozen, FFN variants with the parent attention frozen), composed afterwards;
* coupled: one unit per (attention, FFN) pair.

Only the changed subblocks and their norms train. Parent activations of every layer are computed once by
``cache_hidden_states`` (one forward of each parent block) and stored on disk under a key of what produced
them (parent digest + data slice); every unit reads its layer's input and output from there.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec, MambaSpec
from puzzle.errors import ConfigError
from puzzle.files import key_digest, save_tensors, write_json
from puzzle.library.prune import DEFAULT_KV_METHOD, DEFAULT_LINEAR_METHOD, init_subblock
from puzzle.presets import warmup_cosine

# subblock kind (space / BlockSpec field) -> module attribute of puzzle.model.Block
MODULE = {"mamba": "mamba", "attention": "attn", "ffn": "ffn"}
# bump when the init or training algorithm changes, so stored units are not reused across versions
BLD_VERSION = 3  # 3: retry a near-perfect init at lr/10 before keeping it
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


# --- parent activations, computed once -----------------------------------------------------------------


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state dict's names, shapes, dtypes and values."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def activation_dir(root: str | Path, parent_digest: str, data_key: Any) -> Path:
    """Where the parent activations of one data slice live: keyed by what produced them."""
    return Path(root) / f"act-{key_digest(parent_digest, data_key)}"


@torch.no_grad()
def cache_hidden_states(model: nn.Module, input_ids: torch.Tensor, directory: str | Path, *, batch: int = 16) -> Path:
    """Write every block's input ``h{i}.safetensors`` (N, T, C) for i = 0..L (h{L} = last block's output).

    Each parent block runs once per batch of sequences; nothing is recomputed when ``directory`` is complete
    (its ``meta.json`` is written last).
    """
    directory = Path(directory)
    if (directory / "meta.json").exists():
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    model.eval()
    n_layers = len(model.blocks)
    chunks: list[list[torch.Tensor]] = [[] for _ in range(n_layers + 1)]
    for start in range(0, input_ids.shape[0], batch):
        h = model.embed(input_ids[start : start + batch])  # (b, T, C)
        chunks[0].append(h)
        for i, block in enumerate(model.blocks):
            h = block(h)
            chunks[i + 1].append(h)
    for i, parts in enumerate(chunks):
        save_tensors(directory / f"h{i}.safetensors", {"h": torch.cat(parts)})
    write_json(directory / "meta.json", {"n_layers": n_layers, "shape": list(input_ids.shape)})
    return directory


def load_hidden(directory: str | Path, index: int) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(Path(directory) / f"h{index}.safetensors"))["h"]


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


def _split(n: int, val_fraction: float) -> tuple[slice, slice]:
    n_val = max(1, round(n * val_fraction)) if n > 1 else 0
    return slice(0, n - n_val), slice(n - n_val, n)


def _fit(
    child: torch.nn.Module,
    params: list[torch.nn.Parameter],
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    steps: int,
    lr: float,
    cfg: BLDConfig,
) -> list[float]:
    """``steps`` AdamW steps (the shared warm-up then cosine decay to 10 %) on the NMSE of the block's residual output."""
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, lr=1.0, steps=steps, warmup=warmup, min_lr_ratio=0.1)
    )
    losses = []
    child.train()
    for _ in range(steps):
        idx = torch.randint(0, x_train.shape[0], (min(cfg.batch, x_train.shape[0]),), generator=gen)
        x, y = x_train[idx], y_train[idx]
        loss = normalized_mse(child(x) - x, y - x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    child.eval()
    return losses


@torch.no_grad()
def evaluate_nmse(block: nn.Module, h_in: torch.Tensor, h_out: torch.Tensor, *, batch: int = 16) -> float:
    num = den = 0.0
    for s in range(0, h_in.shape[0], batch):
        x, y = h_in[s : s + batch], h_out[s : s + batch]
        target = y - x
        num += (block(x) - x - target).pow(2).sum().item()
        den += target.pow(2).sum().item()
    return num / max(den, 1e-12)


def distill_block(
    child: nn.Module,
    trainable: list[str],
    h_in: torch.Tensor,
    h_out: torch.Tensor,
    cfg: BLDConfig,
) -> dict[str, Any]:
    """Train the ``trainable`` submodules of ``child`` so ``child(h) - h`` matches ``h_out - h_in`` (NMSE).

    ``h_in`` / ``h_out`` (N, T, C): parent block input and output. The last ``val_fraction`` of sequences
    is held out to report NMSE before and after. When training did not lower the NMSE on (a fixed part of)
    its own training data, the initial weights are kept (``kept_init``).
    """
    train, val = _split(h_in.shape[0], cfg.val_fraction)
    x_train, y_train = h_in[train], h_out[train]
    params = [p for name, p in child.named_parameters() if name.split(".")[0] in trainable]
    for p in child.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    before = evaluate_nmse(child, h_in[val], h_out[val])
    probe = slice(0, min(32, x_train.shape[0]))  # fixed training sequences: did training help its objective?
    train_before = evaluate_nmse(child, x_train[probe], y_train[probe])
    init_state = {k: v.clone() for k, v in child.state_dict().items()}
    seq = h_in.shape[1]
    steps = math.ceil(cfg.tokens / (cfg.batch * seq)) if params else 0
    losses: list[float] = []
    reverted = False
    # A near-perfect init (e.g. only dead channels pruned) can be perturbed by Adam's first steps at the
    # configured rate: then retry once at a tenth of it, and keep the init if that does not help either.
    for lr in (cfg.lr, cfg.lr / 10) if steps else ():
        losses = _fit(child, params, x_train, y_train, steps, lr, cfg)
        reverted = evaluate_nmse(child, x_train[probe], y_train[probe]) >= train_before
        if not reverted:
            break
        child.load_state_dict(init_state)
    after = evaluate_nmse(child, h_in[val], h_out[val])
    for p in child.parameters():
        p.requires_grad_(False)
    head = losses[: max(1, len(losses) // 10)]
    tail = losses[-max(1, len(losses) // 10) :]
    return {
        "nmse_init": before,
        "nmse_final": after,
        "train_loss_first": sum(head) / len(head) if losses else before,
        "train_loss_last": sum(tail) / len(tail) if losses else before,
        "steps": steps,
        "tokens": steps * min(cfg.batch, x_train.shape[0]) * seq,
        "kept_init": reverted,
    }


# --- the work directory and the Ray / local task ---------------------------------------------------------


def write_parent_blocks(model: nn.Module, work: str | Path) -> str:
    """Per-layer parent block states + arch under ``work/parent``; returns the parent digest."""
    work = Path(work) / "parent"
    meta = work / "meta.json"
    if meta.exists():
        return json.loads(meta.read_text())["digest"]
    state = model.state_dict()
    digest = state_digest(state)
    for i, block in enumerate(model.blocks):
        save_tensors(work / f"block{i}.safetensors", block.state_dict())
    save_tensors(work / "model.safetensors", state)
    write_json(meta, {"digest": digest, "arch": model.arch.to_dict()})
    return digest


def load_parent_arch(work: str | Path) -> ArchSpec:
    return ArchSpec.from_dict(json.loads((Path(work) / "parent" / "meta.json").read_text())["arch"])


def load_parent_block(work: str | Path, arch: ArchSpec, layer: int) -> nn.Module:
    from safetensors.torch import load_file

    state = load_file(str(Path(work) / "parent" / f"block{layer}.safetensors"))
    return build_block(arch, arch.blocks[layer], state)


def changes_from_dict(data: dict[str, Any]) -> dict[str, Any]:
    return {kind: SPEC_TYPES[kind].from_dict(spec) for kind, spec in data.items()}


def unit_key(layer: int, changes: dict[str, Any], cfg: BLDConfig, parent_digest: str, act_key: str) -> str:
    """Key of one BLD unit: what produced it (parent, data, layer, changed subblocks, settings)."""
    desc = {k: v.to_dict() for k, v in sorted(changes.items())}
    kinds = "+".join(sorted(changes))
    return f"bld/L{layer}/{kinds}/{key_digest(BLD_VERSION, parent_digest, act_key, layer, desc, cfg.to_dict())}"


def bld_task(work: str, act_dir: str, layer: int, changes: dict[str, dict], cfg: dict[str, Any]) -> dict[str, Any]:
    """One BLD unit (runs on a worker): init the child by pruning, distill it, store its changed subblocks.

    Trained subblock weights go to ``work/subblocks/<sha256>.safetensors`` (content-addressed); the returned
    record names them per kind and carries the NMSE before / after.
    """
    config = BLDConfig(**cfg)
    torch.manual_seed(config.seed)
    arch = load_parent_arch(work)
    spec_changes = changes_from_dict(changes)
    parent = load_parent_block(work, arch, layer)
    h_in, h_out = load_hidden(act_dir, layer), load_hidden(act_dir, layer + 1)
    train, _ = _split(h_in.shape[0], config.val_fraction)
    child = init_child(arch, parent, arch.blocks[layer], spec_changes, h_in[train][:16], config)
    trainable = [MODULE[k] for k, s in spec_changes.items() if s.kind != "no_op"]
    trainable += [f"{m}_norm" for m in trainable]
    result = distill_block(child, trainable, h_in, h_out, config)
    files = {}
    state = child.state_dict()
    for kind, spec in spec_changes.items():
        if spec.kind == "no_op":
            continue
        sub = subblock_state(state, kind)
        digest = state_digest(sub)
        path = Path(work) / "subblocks" / f"{digest}.safetensors"
        if not path.exists():
            save_tensors(path, sub)
        files[kind] = digest
    return {**result, "layer": layer, "changes": changes, "files": files}


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
