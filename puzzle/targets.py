"""Deployment targets: which exported children each serving engine loads, as one table.

A child is written as plain ``llama`` / ``qwen2`` / ``nemotron_h`` when uniform (every engine loads those),
else as ``nemotron-nas`` (DeciLM ``block_configs``) or, for Nemotron-H-style hybrids, ``nemotron_h_puzzle``
(see ``puzzle.model.hf_config``). What each engine reads of those two formats, from its source:

* ``transformers``: our own configuration / modeling code shipped in the export (``trust_remote_code``):
  every block kind and width.
* ``vllm`` (``nemotron_nas.py``): per layer ``attention.no_op`` / ``ffn.no_op``, KV heads
  ``num_attention_heads // n_heads_in_group``, FFN width from ``ffn_mult`` when the block has that key, else
  ``intermediate_size`` (our configs omit ``ffn_mult`` when no value reproduces the width); no branch for
  ``replace_with_linear``; ``head_dim`` from the config. ``nemotron_h.py``: MLP and attention layers read
  their ``block_configs`` entry, Mamba layers only the global config.
* ``sglang``: as vLLM, but FFN widths from ``ffn_mult`` only (multiples of 256).
* ``trtllm`` (``modeling_nemotron_nas.py``): per-layer KV heads, ``replace_with_linear`` for both
  subblocks, FFN width from ``ffn_mult`` only.
* ``llama.cpp`` (``convert_hf_to_gguf.py`` DeciLM): ``n_heads_in_group`` null + ``replace_with_linear`` is
  linear attention, null alone no attention; ``ffn_mult`` null is no FFN (so no linear FFN); never reads
  ``no_op`` or ``intermediate_size``.

Read in their source (vllm-project/vllm ``model_executor/models/nemotron_nas.py`` and ``nemotron_h.py``,
SGLang ``srt/models/nemotron_nas.py``, TensorRT-LLM ``_torch/models/modeling_nemotron_nas.py``, llama.cpp's
``DeciModel`` converter, which also takes ``head_dim = hidden / heads`` and reads
``original_max_position_embeddings`` at the top level). Engines other than ``transformers`` and vLLM are held
to ``head_dim = hidden / heads``, and, for hybrids, to one size per mixer kind for Mamba and attention (the
global config; vLLM builds Mamba layers from it) -- conservative choices: a target listed as loading a child
does.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from puzzle.arch import ArchSpec, BlockSpec
from puzzle.errors import ConfigError

if TYPE_CHECKING:
    from puzzle.library.space import SearchSpace

DEFAULT_TARGET = "vllm"  # what the demo and the service's pipeline jobs build for: children vLLM serves
FFN_GRID = 256  # DeciLM's ffn_mult rule rounds widths up to a multiple of this


@dataclass(frozen=True)
class Target:
    """What one engine loads of the heterogeneous formats (uniform llama / qwen2 / nemotron_h: everything)."""

    name: str
    linear_attention: bool  # nemotron-nas replace_with_linear attention
    linear_ffn: bool  # nemotron-nas replace_with_linear FFN
    ffn_mult_only: bool  # nemotron-nas FFN widths from ffn_mult: multiples of 256 only
    head_dim_free: bool  # nemotron-nas head_dim may differ from hidden / heads
    biases: bool  # nemotron-nas attention / MLP biases
    hybrid_per_layer: bool  # nemotron_h_puzzle: Mamba / attention sizes may differ per layer; linear layers


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("transformers", True, True, False, True, True, True),
        Target("vllm", False, False, False, True, True, False),
        Target("sglang", False, False, True, False, False, False),
        Target("trtllm", True, True, True, False, False, False),
        Target("llama.cpp", True, False, True, False, False, False),
    )
}


def get_target(name: str) -> Target:
    """The target named ``name``; ``ConfigError`` listing the known ones otherwise."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown target {name!r}; choose one of {', '.join(TARGETS)}") from None


def _nas_problems(arch: ArchSpec, t: Target) -> list[str]:
    """Why ``t`` cannot load the nemotron-nas export of ``arch``, one line per offending layer and reason."""
    problems = []
    gqa = [b.attention for b in arch.blocks if b.attention.kind == "gqa"]
    mlp = [b.ffn for b in arch.blocks if b.ffn.kind == "mlp"]
    for i, block in enumerate(arch.blocks):
        att, ffn = block.attention, block.ffn
        where = f"layer {i}:"
        if not block.mamba.is_no_op:
            problems.append(f"{where} a Mamba subblock in a Llama-style child is not expressible in nemotron-nas")
        if att.kind == "linear" and not t.linear_attention:
            problems.append(f"{where} linear attention (replace_with_linear) is not supported by {t.name}")
        if ffn.kind == "linear" and not t.linear_ffn:
            problems.append(f"{where} linear FFN (replace_with_linear) is not supported by {t.name}")
        if att.kind == "gqa":
            first = gqa[0]
            if (att.n_heads, att.head_dim, att.qkv_bias, att.o_bias, att.rope) != (
                first.n_heads,
                first.head_dim,
                first.qkv_bias,
                first.o_bias,
                first.rope,
            ):
                problems.append(
                    f"{where} attention with {att.n_heads} heads of {att.head_dim} (bias {att.qkv_bias}/"
                    f"{att.o_bias}, rope {att.rope}) differs from the first attention layer's; nemotron-nas "
                    "has one global head count, head_dim, bias and rope"
                )
            elif not t.head_dim_free and att.head_dim * att.n_heads != arch.hidden_size:
                problems.append(
                    f"{where} head_dim {att.head_dim} is not hidden/heads = {arch.hidden_size}/{att.n_heads}; "
                    f"{t.name} derives head_dim from hidden / heads"
                )
            if (att.qkv_bias or att.o_bias) and not t.biases:
                problems.append(f"{where} attention biases are not read by {t.name}")
        if ffn.kind == "mlp":
            if (ffn.activation, ffn.bias) != (mlp[0].activation, mlp[0].bias):
                problems.append(
                    f"{where} {ffn.activation} MLP (bias {ffn.bias}) differs from the first MLP; nemotron-nas has "
                    "one global activation and bias"
                )
            if t.ffn_mult_only and ffn.intermediate_size % FFN_GRID:
                problems.append(
                    f"{where} FFN width {ffn.intermediate_size} is not a multiple of {FFN_GRID}; {t.name} builds "
                    f"widths from ffn_mult (round_up(int(2 * ffn_mult * hidden / 3), {FFN_GRID}))"
                )
            if ffn.bias and not t.biases:
                problems.append(f"{where} MLP biases are not read by {t.name}")
    return problems


def _puzzle_problems(arch: ArchSpec, t: Target) -> list[str]:
    """Why ``t`` cannot load the nemotron_h_puzzle export of ``arch``."""
    from puzzle.model.hf_hetero import puzzle_kind

    if t.hybrid_per_layer:
        return []
    problems = []
    first: dict[str, BlockSpec] = {}
    for i, block in enumerate(arch.blocks):
        kind = puzzle_kind(block)
        if kind == "linear":
            problems.append(f"layer {i}: a linear replacement is Puzzle's extension; {t.name} has no such layer")
        elif kind in ("mamba", "attention"):
            ref = first.setdefault(kind, block)
            spec, ref_spec = getattr(block, kind), getattr(ref, kind)
            if spec != ref_spec:
                size = f"{spec.n_heads} heads" if kind == "mamba" else f"{spec.n_kv_heads} KV heads"
                ref_size = f"{ref_spec.n_heads} heads" if kind == "mamba" else f"{ref_spec.n_kv_heads} KV heads"
                problems.append(
                    f"layer {i}: {kind} with {size} differs from the first {kind} layer's {ref_size}; {t.name} "
                    f"reads {kind} sizes from the global config"
                )
    return problems


def offending_layers(arch: ArchSpec, target: str) -> list[str]:
    """Every reason ``target`` cannot load the export of ``arch`` (one line per layer and reason; [] = loads)."""
    from puzzle.model.hf_config import hf_format

    t = get_target(target)
    fmt = hf_format(arch)
    if fmt == "nemotron-nas":
        return _nas_problems(arch, t)
    if fmt == "nemotron_h_puzzle":
        return _puzzle_problems(arch, t)
    return []


def loadable_by(arch: ArchSpec) -> list[str]:
    """The targets that load the export of ``arch``."""
    return [name for name in TARGETS if not offending_layers(arch, name)]


def require_loadable(arch: ArchSpec, target: str) -> None:
    """Raise ``ConfigError`` naming every offending layer when ``target`` cannot load ``arch``'s export."""
    problems = offending_layers(arch, target)
    if problems:
        raise ConfigError(f"the child cannot be loaded by {target}:\n  " + "\n  ".join(problems))


# --- search side -----------------------------------------------------------------------------------------


def _block_problems(block: BlockSpec, parent: BlockSpec, hidden: int, family: str, t: Target) -> list[str]:
    """Why ``t`` cannot load ``block`` in place of ``parent`` inside a heterogeneous child."""
    arch = ArchSpec(vocab_size=1, hidden_size=hidden, blocks=(parent, block), family=family)  # type: ignore[arg-type]
    if family == "nemotron_h":
        from puzzle.model.hf_hetero import puzzle_kind

        if puzzle_kind(block) is None:
            return ["not one Nemotron-H mixer"]
        return [p for p in _puzzle_problems(arch, t) if p.startswith("layer 1")]
    return [p for p in _nas_problems(arch, t) if p.startswith("layer 1")]


def unloadable_variants(library: Any, target: str) -> set[tuple[int, str]]:
    """The (layer, variant name) of ``library`` that ``target`` cannot load in a heterogeneous child.

    Variants without a ``spec`` (synthetic libraries) cannot be judged and are never listed.
    """
    t = get_target(target)
    hidden, family = library.hidden_size, library.family or "llama"
    out: set[tuple[int, str]] = set()
    for layer in library.layers:
        parent = layer.parent.spec
        for variant in layer.variants:
            if variant.spec is None or parent is None or hidden is None:
                continue
            if _block_problems(variant.spec, parent, hidden, family, t):
                out.add((layer.index, variant.name))
    return out


def loadability_key(target: str) -> str:
    """The cost that counts a child's layers ``target`` cannot load (``with_loadability``)."""
    return f"unloadable_{get_target(target).name}"


def with_loadability(library: Any, target: str) -> Any:
    """``library`` with one more scenario-free cost per variant: 1 where ``target`` cannot load it, else 0.

    A search bounds it at 0 (``<name> <= 0``), so every backend, the frontier and the pools leave those
    variants out without knowing about targets, and choices keep the library's indices.
    """
    key = loadability_key(target)
    bad = unloadable_variants(library, target)
    layers = tuple(
        replace(
            layer,
            variants=tuple(
                replace(v, costs={**v.costs, key: float((layer.index, v.name) in bad)}) for v in layer.variants
            ),
        )
        for layer in library.layers
    )
    return replace(library, layers=layers, non_block_costs={**library.non_block_costs, key: 0.0})


def restrict_space(space: SearchSpace, target: str, arch: ArchSpec) -> SearchSpace:
    """``space`` without the options ``target`` cannot load in a child of ``arch`` (the parent).

    Llama-style parents: no linear attention / FFN where unsupported; FFN widths rounded to multiples of
    256 (the ``ffn_mult`` grid) where the target reads only ``ffn_mult`` (kept at the parent width when it is
    under 256). Nemotron-H-style parents, for engines that read Mamba / attention sizes globally: Mamba heads
    and KV heads kept at the parent's, no linear replacements.
    """
    from puzzle.library.space import AttentionOptions, FFNOptions, MambaOptions

    t = get_target(target)

    def attention(opts: AttentionOptions | None) -> AttentionOptions | None:
        if opts is None:
            return None
        if arch.family == "nemotron_h" and not t.hybrid_per_layer:
            kv = sorted({b.attention.n_kv_heads for b in arch.blocks if b.attention.kind == "gqa"})
            return replace(opts, kv_heads=tuple(kv) or None, linear=False)
        return replace(opts, linear=opts.linear and t.linear_attention)

    def ffn(opts: FFNOptions | None) -> FFNOptions | None:
        if opts is None:
            return None
        if arch.family == "nemotron_h":
            return opts if t.hybrid_per_layer else replace(opts, linear=False)
        opts = replace(opts, linear=opts.linear and t.linear_ffn)
        if t.ffn_mult_only:
            widths = [b.ffn.intermediate_size for b in arch.blocks if b.ffn.kind == "mlp"]
            if widths and min(widths) >= FFN_GRID:
                return replace(opts, multiple=FFN_GRID)
            return replace(opts, fractions=(1.0,))
        return opts

    def mamba(opts: MambaOptions | None) -> MambaOptions | None:
        if opts is None or t.hybrid_per_layer:
            return opts
        return replace(opts, head_fractions=(1.0,))

    return replace(
        space,
        attention=attention(space.attention),
        ffn=ffn(space.ffn),
        mamba=mamba(space.mamba),
        overrides=tuple(
            replace(o, attention=attention(o.attention), ffn=ffn(o.ffn), mamba=mamba(o.mamba)) for o in space.overrides
        ),
    )
