"""The elastic model: one set of (nested) parent weights, any budget's architecture run by slicing prefixes.

    elastic = ElasticLM(nested_parent, {0.6: config_06, 0.4: config_04})
    logits = elastic(ids, budget=0.6)            # or config=ElasticConfig(...); no budget: the full parent
    child = elastic.slice(0.6)                   # a standalone CausalLM (copies), e.g. for save_pretrained

Per layer, ``slice_block_state`` takes the kept prefix of every tensor: views for attention (the first KV
groups with their queries) and FFN channels; for Mamba heads the kept prefix of each group is gathered, since
the groups interleave (head ``h`` is in group ``h // (H / G)``). The sliced tensors run through a parameterless
template of the smaller block (built on the meta device, one per block spec) with ``torch.func.functional_call``,
so the budget runs the very code of ``puzzle.model`` and gradients reach the shared weights. A skipped layer
passes its input through; a fully kept layer runs the parent block itself.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from puzzle.arch import BlockSpec
from puzzle.elastic.space import ElasticConfig, LayerChoice, budget_key, choice_block, config_arch
from puzzle.errors import ConfigError
from puzzle.model import Block, CausalLM, ModelContext

Tensors = dict[str, torch.Tensor]


def _mamba_rows(block: Block, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(heads, channels, in_proj rows, conv rows) kept when every group keeps its first ``m`` heads."""
    mixer = block.mamba
    H, P, G, N = mixer.n_heads, mixer.head_dim, mixer.n_groups, mixer.d_state
    heads = (torch.arange(G)[:, None] * (H // G) + torch.arange(m)).flatten()  # (m*G,)
    chans = (heads[:, None] * P + torch.arange(P)).flatten()  # (m*G*P,)
    d_inner, bc = H * P, torch.arange(2 * G * N)
    in_rows = torch.cat([chans, d_inner + chans, 2 * d_inner + bc, 2 * d_inner + 2 * G * N + heads])
    conv_rows = torch.cat([chans, d_inner + bc])
    dev = mixer.in_proj.weight.device
    return heads.to(dev), chans.to(dev), in_rows.to(dev), conv_rows.to(dev)


def _slice_mamba(block: Block, m: int, params: Tensors) -> Tensors:
    heads, chans, in_rows, conv_rows = _mamba_rows(block, m)
    out: Tensors = {}
    for name, t in params.items():
        leaf = name.removeprefix("mamba.")
        if leaf in ("in_proj.weight", "in_proj.bias"):
            out[name] = t[in_rows]
        elif leaf in ("conv1d.weight", "conv1d.bias"):
            out[name] = t[conv_rows]
        elif leaf in ("dt_bias", "A_log", "D"):
            out[name] = t[heads]
        elif leaf == "norm.weight":
            out[name] = t[chans]
        elif leaf == "out_proj.weight":
            out[name] = t[:, chans]
        else:  # out_proj.bias
            out[name] = t
    return out


def _slice_attention(block: Block, k: int, params: Tensors) -> Tensors:
    attn = block.attn
    nq, nk = k * (attn.n_heads // attn.n_kv_heads) * attn.head_dim, k * attn.head_dim
    out: Tensors = {}
    for name, t in params.items():
        leaf = name.removeprefix("attn.")
        if leaf.startswith("q_proj."):
            out[name] = t[:nq]
        elif leaf.startswith(("k_proj.", "v_proj.")):
            out[name] = t[:nk]
        elif leaf == "o_proj.weight":
            out[name] = t[:, :nq]
        else:  # o_proj.bias
            out[name] = t
    return out


def _slice_ffn(i: int, params: Tensors) -> Tensors:
    out: Tensors = {}
    for name, t in params.items():
        leaf = name.removeprefix("ffn.")
        if leaf.startswith(("gate_proj.", "up_proj.")):
            out[name] = t[:i]
        elif leaf == "down_proj.weight":
            out[name] = t[:, :i]
        else:  # down_proj.bias
            out[name] = t
    return out


def slice_block_state(block: Block, choice: LayerChoice) -> tuple[BlockSpec, Tensors]:
    """(spec, tensors) of the prefix ``choice`` of a nested parent block: views (attention, FFN) or gathers (Mamba)
    of its parameters, so gradients through them reach the parent's."""
    spec = choice_block(block.spec, choice)
    params = dict(block.named_parameters())
    out: Tensors = {}
    for sub, mod in (("attention", "attn"), ("ffn", "ffn"), ("mamba", "mamba")):
        child, parent = getattr(spec, sub), getattr(block.spec, sub)
        if child.is_no_op:
            continue
        own = {n: t for n, t in params.items() if n.startswith(f"{mod}.")}
        out |= {n: t for n, t in params.items() if n.startswith(f"{mod}_norm.")}
        if child == parent:
            out |= own
        elif sub == "attention":
            out |= _slice_attention(block, choice.attention, own)
        elif sub == "ffn":
            out |= _slice_ffn(choice.ffn, own)
        else:
            out |= _slice_mamba(block, choice.mamba, own)
    return spec, out


class ElasticLM(nn.Module):
    """A nested parent (``model``) plus the configuration of each budget; runs any of them from one set of weights."""

    def __init__(self, model: CausalLM, budgets: dict[float, ElasticConfig] | None = None) -> None:
        super().__init__()
        self.model = model
        self.budgets: dict[float, ElasticConfig] = {}
        for budget, config in (budgets or {}).items():
            config.check(model.arch)
            self.budgets[float(budget)] = config
        self._ctx = ModelContext.from_arch(model.arch)
        self._templates: dict[BlockSpec, Block] = {}

    @property
    def arch(self):  # type: ignore[no-untyped-def]
        return self.model.arch

    def config_for(self, budget: float | None = None, config: ElasticConfig | None = None) -> ElasticConfig:
        """The configuration of ``budget`` (or ``config`` itself); neither: the full parent."""
        if config is not None:
            config.check(self.model.arch)
            return config
        if budget is None:
            return ElasticConfig.full(self.model.arch)
        for b, c in self.budgets.items():
            if abs(b - budget) < 1e-9:
                return c
        known = ", ".join(budget_key(b) for b in sorted(self.budgets, reverse=True)) or "none"
        raise ConfigError(f"budget {budget_key(budget)} was not trained into this elastic model (budgets: {known})")

    def _template(self, spec: BlockSpec) -> Block:
        template = self._templates.get(spec)
        if template is None:
            with torch.device("meta"):
                template = Block(spec, self._ctx)
            self._templates[spec] = template
        return template

    def run_block(self, i: int, choice: LayerChoice, h: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        block = self.model.blocks[i]
        if choice.is_skip:
            return h
        if choice == LayerChoice.full(block.spec):
            return block(h)
        spec, state = slice_block_state(block, choice)
        return functional_call(self._template(spec), state, (h,), strict=True)

    def forward(
        self,
        input_ids: torch.Tensor,
        budget: float | None = None,
        *,
        config: ElasticConfig | None = None,
        return_hidden: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (B, T, V) of the ``budget``'s (or ``config``'s) submodel; ``hidden`` as in ``CausalLM``."""
        cfg = self.config_for(budget, config)
        h = self.model.embed(input_ids)  # (B, T, C)
        hidden = [h]
        for i, choice in enumerate(cfg.layers):
            h = self.run_block(i, choice, h)
            if return_hidden:
                hidden.append(h)
        logits = self.model.head(h)
        return (logits, hidden) if return_hidden else logits

    @torch.no_grad()
    def slice(self, budget: float | None = None, *, config: ElasticConfig | None = None) -> CausalLM:
        """A standalone ``CausalLM`` of the budget's submodel (contiguous copies of the kept prefixes)."""
        cfg = self.config_for(budget, config)
        parent = self.model
        arch = config_arch(parent.arch, cfg)
        state = {
            n: t
            for n, t in parent.state_dict().items()
            if not n.startswith("blocks.") and not (arch.tie_embeddings and n == "lm_head.weight")
        }
        for i, choice in enumerate(cfg.layers):
            _, block_state = slice_block_state(parent.blocks[i], choice)
            state |= {f"blocks.{i}.{n}": t for n, t in block_state.items()}
        state = {n: t.detach().clone().contiguous() for n, t in state.items()}
        if arch.tie_embeddings:
            state["lm_head.weight"] = state["embed_tokens.weight"]
        with torch.device("meta"):
            child = CausalLM(arch)
        child.load_state_dict(state, assign=True, strict=True)
        child.tie_weights()
        return child.eval()


def n_params(model: nn.Module) -> int:
    """Distinct parameters of a model (a tied head counts once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
