"""Per-layer architecture specs: what each block of a (heterogeneous) model is made of.

A model is an ``ArchSpec``: global sizes plus a tuple of ``BlockSpec``, one per layer. A block holds up to
three subblocks, applied in this order, each as ``x = x + subblock(norm(x))``:

* ``mamba``     a Mamba-2 mixer (``MambaSpec``), or no-op;
* ``attention`` GQA attention, a single linear layer, or no-op (``AttentionSpec``);
* ``ffn``       an MLP (SwiGLU or squared-ReLU), a single linear layer, or no-op (``FFNSpec``).

A Llama layer is attention + FFN; a Nemotron-H layer is exactly one of mamba / attention / FFN. No-op
subblocks build no module. All specs are frozen, validated in ``__post_init__`` with messages a user can
act on, and round-trip through plain JSON dicts (``to_dict`` / ``from_dict``). ``to_block_configs`` and
``from_block_configs`` convert to and from the ``block_configs`` list of the released Puzzle (DeciLM /
nemotron-nas) checkpoints.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from puzzle.errors import ConfigError

AttentionKind = Literal["gqa", "linear", "no_op"]
FFNKind = Literal["mlp", "linear", "no_op"]
MambaKind = Literal["mamba", "no_op"]
Activation = Literal["swiglu", "relu2"]

_ATTENTION_KINDS = ("gqa", "linear", "no_op")
_FFN_KINDS = ("mlp", "linear", "no_op")
_MAMBA_KINDS = ("mamba", "no_op")
_ACTIVATIONS = ("swiglu", "relu2")


def _positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"{owner}: {name} must be a positive integer, got {value!r}")


def _from_dict(cls: type, data: dict[str, Any], owner: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{owner}: expected an object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{owner}: unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return cls(**data)


@dataclass(frozen=True)
class AttentionSpec:
    """Grouped-query attention with ``n_heads`` query and ``n_kv_heads`` key/value heads, or linear / no-op.

    ``rope`` is False for Nemotron-H attention (no positional encoding in the block). ``qkv_bias`` covers
    Qwen2; ``o_bias`` the output projection.
    """

    kind: AttentionKind = "gqa"
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0
    rope: bool = True
    qkv_bias: bool = False
    o_bias: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _ATTENTION_KINDS:
            raise ConfigError(f"attention: kind must be one of {', '.join(_ATTENTION_KINDS)}, got {self.kind!r}")
        if self.kind != "gqa":
            return
        _positive("attention", n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, head_dim=self.head_dim)
        if self.n_heads % self.n_kv_heads:
            raise ConfigError(
                f"attention: {self.n_heads} query heads are not divisible by {self.n_kv_heads} KV heads; "
                f"choose a KV-head count that divides {self.n_heads}"
            )
        if self.rope and self.head_dim % 2:
            raise ConfigError(f"attention: rotary embeddings need an even head_dim, got {self.head_dim}")

    @classmethod
    def linear(cls) -> AttentionSpec:
        return cls(kind="linear")

    @classmethod
    def no_op(cls) -> AttentionSpec:
        return cls(kind="no_op")

    @property
    def is_no_op(self) -> bool:
        return self.kind == "no_op"

    @property
    def n_heads_in_group(self) -> int:
        """Query heads per KV head (the DeciLM ``n_heads_in_group``)."""
        return self.n_heads // self.n_kv_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AttentionSpec:
        return _from_dict(cls, data, "attention")


@dataclass(frozen=True)
class FFNSpec:
    """An MLP of ``intermediate_size`` (SwiGLU as in Llama, squared-ReLU non-gated as in Nemotron-H), or linear / no-op."""

    kind: FFNKind = "mlp"
    intermediate_size: int = 0
    activation: Activation = "swiglu"
    bias: bool = False

    def __post_init__(self) -> None:
        if self.kind not in _FFN_KINDS:
            raise ConfigError(f"ffn: kind must be one of {', '.join(_FFN_KINDS)}, got {self.kind!r}")
        if self.activation not in _ACTIVATIONS:
            raise ConfigError(f"ffn: activation must be one of {', '.join(_ACTIVATIONS)}, got {self.activation!r}")
        if self.kind == "mlp":
            _positive("ffn", intermediate_size=self.intermediate_size)

    @classmethod
    def linear(cls) -> FFNSpec:
        return cls(kind="linear")

    @classmethod
    def no_op(cls) -> FFNSpec:
        return cls(kind="no_op")

    @property
    def is_no_op(self) -> bool:
        return self.kind == "no_op"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FFNSpec:
        return _from_dict(cls, data, "ffn")


@dataclass(frozen=True)
class MambaSpec:
    """A Mamba-2 mixer: ``n_heads`` heads of ``head_dim`` in ``n_groups`` groups sharing B/C of ``d_state``.

    Projections: in_proj -> [z (H*P), x (H*P), B (G*N), C (G*N), dt (H)]; causal depthwise conv1d of
    ``conv_kernel`` over [x, B, C]; output ``out_proj(RMSNormGated(y * silu(z)))`` with one norm group per
    Mamba group.
    """

    kind: MambaKind = "mamba"
    n_heads: int = 0
    head_dim: int = 0
    n_groups: int = 1
    d_state: int = 0
    conv_kernel: int = 4
    chunk_size: int = 128
    conv_bias: bool = True
    proj_bias: bool = False
    time_step_limit: tuple[float, float] = (0.0, math.inf)

    def __post_init__(self) -> None:
        if self.kind not in _MAMBA_KINDS:
            raise ConfigError(f"mamba: kind must be one of {', '.join(_MAMBA_KINDS)}, got {self.kind!r}")
        object.__setattr__(self, "time_step_limit", tuple(float(v) for v in self.time_step_limit))
        if self.kind == "no_op":
            return
        _positive(
            "mamba",
            n_heads=self.n_heads,
            head_dim=self.head_dim,
            n_groups=self.n_groups,
            d_state=self.d_state,
            conv_kernel=self.conv_kernel,
            chunk_size=self.chunk_size,
        )
        if self.n_heads % self.n_groups:
            raise ConfigError(
                f"mamba: {self.n_heads} heads are not divisible by {self.n_groups} groups; every group must keep "
                f"the same number of heads (use a multiple of {self.n_groups})"
            )

    @classmethod
    def no_op(cls) -> MambaSpec:
        return cls(kind="no_op")

    @property
    def is_no_op(self) -> bool:
        return self.kind == "no_op"

    @property
    def d_inner(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def conv_channels(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.d_state

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["time_step_limit"] = [_json_float(v) for v in self.time_step_limit]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MambaSpec:
        data = dict(data)
        if "time_step_limit" in data:
            data["time_step_limit"] = tuple(float(v) for v in data["time_step_limit"])
        return _from_dict(cls, data, "mamba")


def _json_float(value: float) -> float | str:
    return "inf" if value == math.inf else value


@dataclass(frozen=True)
class BlockSpec:
    """One layer: the subblocks it keeps, applied in the order mamba, attention, ffn."""

    attention: AttentionSpec = field(default_factory=AttentionSpec.no_op)
    ffn: FFNSpec = field(default_factory=FFNSpec.no_op)
    mamba: MambaSpec = field(default_factory=MambaSpec.no_op)

    def __post_init__(self) -> None:
        for name, kind in (("attention", AttentionSpec), ("ffn", FFNSpec), ("mamba", MambaSpec)):
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"block: {name} must be a {kind.__name__}, got {type(getattr(self, name)).__name__}")

    @property
    def is_no_op(self) -> bool:
        return self.attention.is_no_op and self.ffn.is_no_op and self.mamba.is_no_op

    def to_dict(self) -> dict[str, Any]:
        return {"attention": self.attention.to_dict(), "ffn": self.ffn.to_dict(), "mamba": self.mamba.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BlockSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"block: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - {"attention", "ffn", "mamba"})
        if unknown:
            raise ConfigError(f"block: unknown field(s) {', '.join(unknown)}; known: attention, ffn, mamba")
        return cls(
            attention=AttentionSpec.from_dict(data["attention"]) if "attention" in data else AttentionSpec.no_op(),
            ffn=FFNSpec.from_dict(data["ffn"]) if "ffn" in data else FFNSpec.no_op(),
            mamba=MambaSpec.from_dict(data["mamba"]) if "mamba" in data else MambaSpec.no_op(),
        )


@dataclass(frozen=True)
class RopeSpec:
    """Rotary embeddings: base ``theta`` and optional Llama-3 scaling (``scaling_type="llama3"``)."""

    theta: float = 10000.0
    scaling_type: Literal["none", "llama3"] = "none"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def __post_init__(self) -> None:
        if self.theta <= 0:
            raise ConfigError(f"rope: theta must be positive, got {self.theta}")
        if self.scaling_type not in ("none", "llama3"):
            raise ConfigError(f"rope: scaling type {self.scaling_type!r} is not supported (supported: none, llama3)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RopeSpec:
        return _from_dict(cls, data, "rope")


Family = Literal["llama", "nemotron_h"]


@dataclass(frozen=True)
class ArchSpec:
    """A whole causal LM: embedding, ``blocks`` (one ``BlockSpec`` per layer), final norm and LM head."""

    vocab_size: int
    hidden_size: int
    blocks: tuple[BlockSpec, ...]
    family: Family = "llama"
    norm_eps: float = 1e-5
    rope: RopeSpec = field(default_factory=RopeSpec)
    max_position_embeddings: int = 4096
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        _positive("arch", vocab_size=self.vocab_size, hidden_size=self.hidden_size)
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if not self.blocks:
            raise ConfigError("arch: a model needs at least one block")
        if self.family not in ("llama", "nemotron_h"):
            raise ConfigError(f"arch: family must be llama or nemotron_h, got {self.family!r}")
        if self.norm_eps <= 0:
            raise ConfigError(f"arch: norm_eps must be positive, got {self.norm_eps}")
        for i, block in enumerate(self.blocks):
            if not isinstance(block, BlockSpec):
                raise ConfigError(f"arch: block {i} must be a BlockSpec, got {type(block).__name__}")

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def with_block(self, index: int, block: BlockSpec) -> ArchSpec:
        """A copy with layer ``index`` replaced by ``block``."""
        if not 0 <= index < self.n_layers:
            raise ConfigError(f"arch: layer {index} out of range 0..{self.n_layers - 1}")
        blocks = list(self.blocks)
        blocks[index] = block
        return replace(self, blocks=tuple(blocks))

    def to_dict(self) -> dict[str, Any]:
        return {
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "family": self.family,
            "norm_eps": self.norm_eps,
            "rope": self.rope.to_dict(),
            "max_position_embeddings": self.max_position_embeddings,
            "tie_embeddings": self.tie_embeddings,
            "blocks": [b.to_dict() for b in self.blocks],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        if not isinstance(data, dict):
            raise ConfigError(f"arch: expected an object, got {type(data).__name__}")
        data = dict(data)
        missing = [k for k in ("vocab_size", "hidden_size", "blocks") if k not in data]
        if missing:
            raise ConfigError(f"arch: missing field(s) {', '.join(missing)}")
        data["blocks"] = tuple(BlockSpec.from_dict(b) for b in data["blocks"])
        if "rope" in data:
            data["rope"] = RopeSpec.from_dict(data["rope"])
        return _from_dict(cls, data, "arch")


# --- block_configs (DeciLM / nemotron-nas) -------------------------------------------------------------


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def ffn_mult_to_intermediate_size(ffn_mult: float, hidden_size: int) -> int:
    """DeciLM's rule: ``round_up(int(2 * ffn_mult * hidden / 3), 256)``."""
    return round_up(int(2 * ffn_mult * hidden_size / 3), 256)


def intermediate_size_to_ffn_mult(intermediate_size: int, hidden_size: int) -> float:
    """The ``ffn_mult`` whose DeciLM size is closest to ``intermediate_size`` (exact when it is a multiple of 256)."""
    return round(1.5 * intermediate_size / hidden_size, 6)


def exact_ffn_mult(intermediate_size: int, hidden_size: int) -> float | None:
    """An ``ffn_mult`` that DeciLM's rule maps back to exactly ``intermediate_size``, or None when none does
    (the size is not a multiple of 256)."""
    if intermediate_size % 256:
        return None
    for digits in (6, 9, 12, None):
        mult = (
            1.5 * intermediate_size / hidden_size
            if digits is None
            else round(1.5 * intermediate_size / hidden_size, digits)
        )
        if ffn_mult_to_intermediate_size(mult, hidden_size) == intermediate_size:
            return mult
    return None


def to_block_configs(arch: ArchSpec) -> list[dict[str, Any]]:
    """The ``block_configs`` list of a nemotron-nas ``config.json`` (explicit ``intermediate_size`` included).

    An MLP's ``ffn_mult`` is written only when DeciLM's rule gives back its exact width (a multiple of 256);
    engines that find no ``ffn_mult`` key use ``intermediate_size``. Other FFN kinds write ``ffn_mult: null``
    and ``intermediate_size: null``. Mamba subblocks, which that format lacks, are written under an extra
    ``mamba`` key (read only by Puzzle itself).
    """
    configs = []
    for block in arch.blocks:
        att, ffn = block.attention, block.ffn
        ffn_entry: dict[str, Any] = {"no_op": ffn.kind == "no_op", "replace_with_linear": ffn.kind == "linear"}
        if ffn.kind == "mlp":
            mult = exact_ffn_mult(ffn.intermediate_size, arch.hidden_size)
            if mult is not None:
                ffn_entry["ffn_mult"] = mult
            ffn_entry["intermediate_size"] = ffn.intermediate_size
        else:
            ffn_entry |= {"ffn_mult": None, "intermediate_size": None}
        entry: dict[str, Any] = {
            "attention": {
                "no_op": att.kind == "no_op",
                "replace_with_linear": att.kind == "linear",
                "n_heads_in_group": att.n_heads_in_group if att.kind == "gqa" else None,
            },
            "ffn": ffn_entry,
        }
        if not block.mamba.is_no_op:
            entry["mamba"] = block.mamba.to_dict()
        configs.append(entry)
    return configs


def from_block_configs(
    configs: list[dict[str, Any]],
    *,
    hidden_size: int,
    n_heads: int,
    head_dim: int,
    activation: Activation = "swiglu",
) -> tuple[BlockSpec, ...]:
    """Blocks from a ``block_configs`` list; ``intermediate_size`` wins over ``ffn_mult`` when both are given."""
    blocks = []
    for i, entry in enumerate(configs):
        try:
            att_cfg, ffn_cfg = entry.get("attention", {}), entry.get("ffn", {})
            if att_cfg.get("no_op"):
                attention = AttentionSpec.no_op()
            elif att_cfg.get("replace_with_linear"):
                attention = AttentionSpec.linear()
            else:
                group = int(att_cfg["n_heads_in_group"])
                if group <= 0 or n_heads % group:
                    raise ConfigError(f"n_heads_in_group {group} does not divide {n_heads} heads")
                attention = AttentionSpec(n_heads=n_heads, n_kv_heads=n_heads // group, head_dim=head_dim)
            if ffn_cfg.get("no_op"):
                ffn = FFNSpec.no_op()
            elif ffn_cfg.get("replace_with_linear"):
                ffn = FFNSpec.linear()
            else:
                size = ffn_cfg.get("intermediate_size") or ffn_mult_to_intermediate_size(
                    float(ffn_cfg["ffn_mult"]), hidden_size
                )
                ffn = FFNSpec(intermediate_size=int(size), activation=activation)
            mamba = MambaSpec.from_dict(entry["mamba"]) if entry.get("mamba") else MambaSpec.no_op()
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ConfigError(f"block_configs[{i}]: malformed entry ({exc!r}): {entry!r}") from exc
        except ConfigError as exc:
            raise ConfigError(f"block_configs[{i}]: {exc}") from exc
        blocks.append(BlockSpec(attention=attention, ffn=ffn, mamba=mamba))
    return tuple(blocks)
