"""Assemble a child ``CausalLM`` from a search solution: one library variant per layer, with its weights.

For layer ``i`` and its chosen variant ``v`` (by name), every subblock of ``v.spec`` that is not a no-op gets
its tensors (the subblock and its norm, ``attn.*`` + ``attn_norm.*`` etc.) from

1. the variant's own weights file ``LIBRARY_DIR/v.weights`` (content-addressed safetensors written by the
   builder: the composed block state), when it holds that subblock;
2. else the parent checkpoint's block ``i``, when that subblock equals the parent's (a kept parent subblock);

and anything else is an error (a changed subblock without weights cannot be invented). The embedding, final
norm and LM head are the parent's. The parent checkpoint is ``parent`` (a directory or a loaded model), else
the library's recorded ``parent["source"]``; its weights must have the digest the library was built from.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puzzle.errors import CheckpointError, LibraryError
from puzzle.library.distill import MODULE as _MODULE  # BlockSpec field -> module attribute of puzzle.model.Block

if TYPE_CHECKING:
    import torch

    from puzzle.library import BlockLibrary
    from puzzle.model import CausalLM


def chosen_layers(solution: Any) -> tuple[str, ...]:
    """Variant names per layer of a search ``Solution``, its ``to_dict()``, or a plain list of names."""
    solution = solution.get("layers") if isinstance(solution, dict) else getattr(solution, "layers", solution)
    if not isinstance(solution, Sequence) or isinstance(solution, str) or not all(isinstance(n, str) for n in solution):
        raise LibraryError("a solution must give one variant name per layer (its 'layers' list)")
    return tuple(solution)


def load_parent(library: BlockLibrary, parent: str | os.PathLike[str] | CausalLM | None = None) -> CausalLM:
    """The parent model the library was built from (checked against the library's parent digest)."""
    from puzzle.library.distill import state_digest
    from puzzle.model import CausalLM, load_pretrained

    if parent is None:
        source = library.parent.get("source")
        if not source:
            raise LibraryError("the library does not record its parent checkpoint; pass the parent directory")
        parent = source
    model = parent if isinstance(parent, CausalLM) else load_pretrained(parent)
    want = library.parent.get("digest")
    if want and state_digest(model.state_dict()) != want:
        where = getattr(model, "hf_source", "the given parent")
        raise CheckpointError(
            f"{where}: weights differ from the parent this library was built from (digest {want[:12]}…); "
            "pass the parent checkpoint the library was built on"
        )
    if model.arch.n_layers != library.n_layers:
        raise LibraryError(f"the parent has {model.arch.n_layers} layers but the library {library.n_layers}")
    return model


def _variant_state(
    library_dir: Path, layer: int, variant: Any, parent_spec: Any, parent_state: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    own: dict[str, torch.Tensor] = {}
    if variant.weights is not None:
        file = library_dir / variant.weights
        if not file.is_file():
            raise LibraryError(f"layer {layer} variant {variant.name!r}: weights file {file} not found")
        own = load_file(str(file))
    state: dict[str, torch.Tensor] = {}
    for kind, mod in _MODULE.items():
        spec = getattr(variant.spec, kind)
        if spec.is_no_op:
            continue
        prefixes = (f"{mod}.", f"{mod}_norm.")
        part = {k: v for k, v in own.items() if k.startswith(prefixes)}
        if not part and spec == getattr(parent_spec, kind):
            part = {k: v for k, v in parent_state.items() if k.startswith(prefixes)}
        if not part:
            raise LibraryError(
                f"layer {layer} variant {variant.name!r}: no weights for its {kind} subblock "
                "(it differs from the parent's and the library holds no trained weights for it); rebuild the library"
            )
        state.update(part)
    return state


def assemble(
    library: BlockLibrary,
    library_dir: str | os.PathLike[str],
    solution: Any,
    *,
    parent: str | os.PathLike[str] | CausalLM | None = None,
) -> CausalLM:
    """The child ``CausalLM`` (eval mode) of ``solution`` (see ``chosen_layers``) built from library weights."""
    import torch

    from puzzle.model import CausalLM

    names = chosen_layers(solution)
    if len(names) != library.n_layers:
        raise LibraryError(f"the solution names {len(names)} variants but the library has {library.n_layers} layers")
    parent_model = load_parent(library, parent)
    arch = parent_model.arch
    variants = [library.layers[i].variant(name) for i, name in enumerate(names)]
    for i, v in enumerate(variants):
        if v.spec is None:
            raise LibraryError(f"layer {i} variant {v.name!r} has no block spec (an imported library cannot be built)")
    child_arch = replace(arch, blocks=tuple(v.spec for v in variants))
    state: dict[str, torch.Tensor] = {
        k: v.clone() for k, v in parent_model.state_dict().items() if not k.startswith("blocks.")
    }
    for i, v in enumerate(variants):
        block_state = _variant_state(Path(library_dir), i, v, arch.blocks[i], parent_model.blocks[i].state_dict())
        state.update({f"blocks.{i}.{k}": t.clone() for k, t in block_state.items()})
    with torch.device("meta"):
        child = CausalLM(child_arch)
    try:
        child.load_state_dict(state, assign=True, strict=True)
    except RuntimeError as exc:
        raise LibraryError(f"library weights do not fit the chosen variants: {exc}") from exc
    child.tie_weights()
    source = getattr(parent_model, "hf_source", None)
    if source is not None:
        child.hf_source = source  # type: ignore[assignment]  # tokenizer files travel with the child
    return child.eval()
