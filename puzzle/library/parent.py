"""The parent as the builder's tasks read it: one safetensors file per layer, never the whole model at once.

Layout under ``WORK/parent`` (written once by ``write_parent``, layer by layer, straight from the checkpoint's
(sharded) safetensors in the checkpoint's dtype, or a requested one):

    block{i}.safetensors   parent layer i's tensors, our names (``attn.q_proj.weight``, ``ffn_norm.weight``...)
    nonblock.safetensors   embedding, final norm and LM head (``embed_tokens.weight``, ``norm.weight``, ...)
    meta.json              ``{"digest", "arch", "dtype"}``, written last

A task loads only what it needs: ``ParentPrefix`` (embedding + layers 0..i, the earlier ones held or read per batch) for distillation inputs,
``load_parent_model`` when the whole parent must run (profiling the assembled parent). The digest is
``distill.state_digest`` of the parent's state dict (what ``assemble.load_parent`` checks a parent against),
computed from the written files one tensor at a time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from puzzle.arch import ArchSpec
from puzzle.files import save_tensors, write_json

NONBLOCK = "nonblock.safetensors"


def parent_dir(work: str | Path) -> Path:
    return Path(work) / "parent"


class _StoredState(Mapping[str, torch.Tensor]):
    """The parent's state dict as stored under ``work/parent``, read one tensor at a time (for its digest)."""

    def __init__(self, work: Path, arch: ArchSpec) -> None:
        from safetensors import safe_open

        self._where: dict[str, tuple[Path, str]] = {}
        files = [(parent_dir(work) / f"block{i}.safetensors", f"blocks.{i}.") for i in range(len(arch.blocks))]
        for file, prefix in [*files, (parent_dir(work) / NONBLOCK, "")]:
            with safe_open(str(file), "pt") as f:
                self._where.update({prefix + name: (file, name) for name in f.keys()})  # noqa: SIM118
        if arch.tie_embeddings:  # a tied model's state dict holds the head under its own name too
            self._where["lm_head.weight"] = self._where["embed_tokens.weight"]

    def __getitem__(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        file, key = self._where[name]
        with safe_open(str(file), "pt") as f:
            return f.get_tensor(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)


def _split_state(state: dict[str, torch.Tensor], n_layers: int) -> tuple[list[dict[str, torch.Tensor]], dict]:
    blocks: list[dict[str, torch.Tensor]] = [{} for _ in range(n_layers)]
    rest = {}
    for name, t in state.items():
        if name.startswith("blocks."):
            _, i, local = name.split(".", 2)
            blocks[int(i)][local] = t
        else:
            rest[name] = t
    return blocks, rest


def _write(work: Path, arch: ArchSpec, layers: Any, nonblock: dict[str, torch.Tensor], dtype: str) -> str:
    """Write each ``(i, state)`` of ``layers`` (an iterator: one layer in memory at a time), then the rest."""
    from puzzle.library.distill import state_digest

    out = parent_dir(work)
    for i, state in layers:
        save_tensors(out / f"block{i}.safetensors", state)
    save_tensors(out / NONBLOCK, nonblock)
    # the digest of the model's state dict (as ``state_digest(model.state_dict())``), read back a tensor at a time
    digest = state_digest(_StoredState(work, arch))
    write_json(out / "meta.json", {"digest": digest, "arch": arch.to_dict(), "dtype": dtype})
    return digest


def _meta(work: str | Path) -> dict[str, Any] | None:
    meta = parent_dir(work) / "meta.json"
    return json.loads(meta.read_text()) if meta.exists() else None


def write_parent_blocks(model: nn.Module, work: str | Path) -> str:
    """Per-layer files of an in-memory parent under ``work/parent`` (kept when present); returns its digest."""
    meta = _meta(work)
    if meta is not None:
        return str(meta["digest"])
    blocks, rest = _split_state(model.state_dict(), len(model.blocks))
    if model.arch.tie_embeddings:
        rest.pop("lm_head.weight", None)  # the embedding, stored once
    dtype = str(model.embed_tokens.weight.dtype).removeprefix("torch.")
    return _write(Path(work), model.arch, enumerate(blocks), rest, dtype)


def write_parent(checkpoint: str | Path, work: str | Path, *, dtype: torch.dtype | None = None) -> dict[str, Any]:
    """Per-layer files of the Hugging Face checkpoint ``checkpoint``, read one layer at a time.

    Returns the meta record (``digest``, ``arch``, ``dtype``); nothing is rewritten when ``work/parent`` is complete.
    """
    from puzzle.model.hf_io import read_tensors

    meta = _meta(work)
    if meta is not None:
        return meta
    arch, reader = read_tensors(checkpoint, dtype=dtype)
    first = reader(["embed_tokens.weight"])["embed_tokens.weight"]
    stored = str(first.dtype).removeprefix("torch.")

    def layers() -> Any:
        for i in range(len(arch.blocks)):
            yield i, {k.split(".", 2)[2]: v for k, v in reader(_block_names(arch, i)).items()}

    nonblock = reader(["embed_tokens.weight", "norm.weight"] + ([] if arch.tie_embeddings else ["lm_head.weight"]))
    _write(Path(work), arch, layers(), nonblock, stored)
    meta = _meta(work)
    assert meta is not None
    return meta


def _block_names(arch: ArchSpec, i: int) -> list[str]:
    from puzzle.library.distill import block_context
    from puzzle.model import Block

    with torch.device("meta"):
        block = Block(arch.blocks[i], block_context(arch))
    return [f"blocks.{i}.{name}" for name, _ in block.named_parameters()]


def load_parent_arch(work: str | Path) -> ArchSpec:
    meta = _meta(work)
    if meta is None:
        raise FileNotFoundError(f"{parent_dir(work)}: parent not written")
    return ArchSpec.from_dict(meta["arch"])


def load_block_state(work: str | Path, layer: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(parent_dir(work) / f"block{layer}.safetensors"), device=device)


def load_parent_block(
    work: str | Path, arch: ArchSpec, layer: int, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> nn.Module:
    from puzzle.library.distill import block_context
    from puzzle.model import Block

    with torch.device("meta"):  # no throw-away fp32 init: the stored tensors are assigned as they are
        block = Block(arch.blocks[layer], block_context(arch))
    state = load_block_state(work, layer, device)
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    block.load_state_dict(state, assign=True, strict=True)
    return block.eval()


class NonBlock(nn.Module):
    """The parent's embedding, final norm and LM head (``embed_tokens``, ``norm``, ``lm_head`` as in ``CausalLM``)."""

    def __init__(self, arch: ArchSpec, state: dict[str, torch.Tensor]) -> None:
        from puzzle.model.norm import RMSNorm

        super().__init__()
        with torch.device("meta"):
            self.embed_tokens = nn.Embedding(arch.vocab_size, arch.hidden_size)
            self.norm = RMSNorm(arch.hidden_size, arch.norm_eps)
            self.lm_head = nn.Linear(arch.hidden_size, arch.vocab_size, bias=False)
        state = dict(state)
        if arch.tie_embeddings:
            state["lm_head.weight"] = state["embed_tokens.weight"]
        self.load_state_dict(state, assign=True, strict=True)
        self.requires_grad_(False)
        self.eval()


def load_nonblock(
    work: str | Path, arch: ArchSpec, *, device: str = "cpu", dtype: torch.dtype | None = None
) -> NonBlock:
    from safetensors.torch import load_file

    state = load_file(str(parent_dir(work) / NONBLOCK), device=device)
    return NonBlock(arch, {k: v.to(dtype) if dtype is not None else v for k, v in state.items()})


class ParentPrefix(nn.Module):
    """Embedding + parent layers ``0..upto`` (inclusive): the inputs and output of layer ``upto`` for token ids.

    ``resident_bytes`` bounds the earlier layers kept in memory (``None``: all of them): layers ``0..k`` stay while
    their tensors fit, the rest are read from their files (the page cache, after the first batch) for every
    forward and dropped after use, so the task's memory grows with one layer, not with the depth of ``upto``.
    Both ways compute the same activations, bit for bit. Layer ``upto`` itself is always held (``self.last``).
    """

    def __init__(
        self,
        work: str | Path,
        arch: ArchSpec,
        upto: int,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        resident_bytes: int | None = None,
    ) -> None:
        super().__init__()
        self.work, self.arch, self.device, self.dtype = Path(work), arch, device, dtype
        self.embed_tokens = load_nonblock(work, arch, device=device, dtype=dtype).embed_tokens
        self.blocks = nn.ModuleList()  # the resident earlier layers 0..len(blocks)-1
        budget = math.inf if resident_bytes is None else resident_bytes
        for i in range(upto):
            size = _stored_bytes(work, i, dtype)
            if size > budget:
                break
            budget -= size
            self.blocks.append(load_parent_block(work, arch, i, device=device, dtype=dtype))
        self.streamed = range(len(self.blocks), upto)  # loaded per forward
        self.last = load_parent_block(work, arch, upto, device=device, dtype=dtype)
        self.requires_grad_(False)
        self.eval()

    @torch.no_grad()
    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, T) -> 2 x (B, T, C)
        """(input, output) of layer ``upto``, in fp32."""
        h = self.embed_tokens(ids)
        for block in self.blocks:
            h = block(h)
        for i in self.streamed:
            h = load_parent_block(self.work, self.arch, i, device=self.device, dtype=self.dtype)(h)
        return h.float(), self.last(h).float()


def _stored_bytes(work: str | Path, layer: int, dtype: torch.dtype | None) -> int:
    """Bytes of parent layer ``layer``'s tensors once loaded (in ``dtype`` when given), from its file's header."""
    from safetensors import safe_open

    total = 0
    with safe_open(str(parent_dir(work) / f"block{layer}.safetensors"), "pt") as f:
        for name in f.keys():  # noqa: SIM118
            sl = f.get_slice(name)
            itemsize = dtype.itemsize if dtype is not None else _DTYPE_BYTES[sl.get_dtype()]
            total += math.prod(sl.get_shape()) * itemsize
    return total


_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


def load_parent_model(work: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """The whole parent (for scoring's suffix and profiling), assembled from the per-layer files."""
    from safetensors.torch import load_file

    from puzzle.model import CausalLM

    arch = load_parent_arch(work)
    with torch.device("meta"):
        model = CausalLM(arch)
    state = load_file(str(parent_dir(work) / NONBLOCK), device=device)
    for i in range(len(arch.blocks)):
        state.update({f"blocks.{i}.{k}": v for k, v in load_block_state(work, i, device).items()})
    if arch.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    model.load_state_dict(state, assign=True, strict=True)
    model.tie_weights()
    model = model.to(dtype=dtype) if dtype is not None else model
    return model.eval()
