"""The router: per elastic axis, a small network mapping a budget to per-layer choices, trained end to end.

Axes: ``attention`` (KV groups kept, with their queries), ``ffn`` (channels), ``mamba`` (heads per group) and
``depth`` (keep / skip, where the grid allows the layer's removal). Each axis router maps the one-hot of the budget to logits ``(L, options)`` (the width
sizes of the ``ElasticGrid`` above 0 for the layer's subblock; removal is the depth axis' job). A choice is drawn
with straight-through Gumbel-softmax (``hard``: a one-hot forward, soft gradients), and the *masked* forward
runs the full-width nested parent with prefix masks built from the one-hots:

* FFN: the input of ``down_proj`` times the channel mask;
* attention: the input of ``o_proj`` times the mask of the kept KV groups' query heads;
* Mamba: ``y`` (the gated norm's input) times the mask and ``s = sqrt(H_group / m)``, and ``out_proj``'s input
  divided by ``s``: the group RMS of the masked ``s * y`` is the RMS of the kept heads, so the result is the
  sliced mixer's exactly;
* depth: ``h + keep * (block(h) - h)``.

With hard one-hots the masked forward *is* the sliced submodel (test), so the KD loss the router sees is the one
of the configuration it will deploy. The cost model is the nested library's own cost table (the search's cost
terms, measured latency included when the library has it): a layer's cost is multilinear in the axis one-hots,
``keep * sum_{a,f,m} y_a y_f y_m C[a,f,m] + (1 - keep) * C_skip``, exact for one-hots. Loss per drawn budget ``b``:
``KL(parent || masked student) + w * (cost / parent_cost - b) ** 2`` with ``w`` larger above the budget than
below it (the router should spend the budget, not undershoot it).

``extract`` takes each axis' argmax and, when that exceeds the budget, walks down one option at a time (the step
losing the least logit per unit of cost saved) until it fits, so every extracted configuration respects its budget.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from puzzle.elastic.model import ElasticLM
from puzzle.elastic.space import AXES as WIDTH_AXES
from puzzle.elastic.space import ElasticConfig, ElasticGrid, LayerChoice
from puzzle.errors import ConfigError, InfeasibleError
from puzzle.library import BlockLibrary

AXES = (*WIDTH_AXES, "depth")


def width_options(grid: ElasticGrid) -> dict[str, list[list[int]]]:
    """Per axis, per layer: the kept sizes a router may pick (largest first; ``[0]`` when absent); for ``depth``
    ``[1, 0]`` (keep, skip) where the grid lets the layer be skipped, else ``[1]``."""
    out: dict[str, list[list[int]]] = {a: [] for a in AXES}
    for i in range(len(grid.sizes)):
        for axis in WIDTH_AXES:  # removing a subblock is the depth axis' job: sizes above 0 only
            out[axis].append([s for s in grid.axis_sizes(i, axis) if s > 0] or [0])
        out["depth"].append([1, 0] if grid.can_skip(i) else [1])
    return out


class Router(nn.Module):
    """One MLP per axis: budget one-hot (n_budgets) -> logits (L, max options), padded options masked out."""

    def __init__(self, options: dict[str, list[list[int]]], n_layers: int, n_budgets: int, hidden: int = 32) -> None:
        super().__init__()
        self.options = options
        self.n_budgets = n_budgets
        sizes = {a: max(len(o) for o in options[a]) for a in WIDTH_AXES} | {"depth": 2}
        self.sizes = sizes
        self.nets = nn.ModuleDict(
            {
                a: nn.Sequential(nn.Linear(n_budgets, hidden), nn.ReLU(), nn.Linear(hidden, n_layers * sizes[a]))
                for a in AXES
            }
        )
        depth = options.get("depth", [[1, 0]] * n_layers)  # layers the grid lets the router skip
        valid = {a: torch.tensor([[j < len(o) for j in range(sizes[a])] for o in options[a]]) for a in WIDTH_AXES}
        valid["depth"] = torch.tensor([[j < len(o) for j in range(2)] for o in depth])
        for a in AXES:
            self.register_buffer(f"valid_{a}", valid[a], persistent=False)
        with torch.no_grad():  # start from "keep everything": full width and kept layers are preferred
            for a in AXES:
                last = self.nets[a][-1]
                last.weight.mul_(0.1)
                bias = torch.full((n_layers, sizes[a]), -1.0)
                bias[:, 0] = 1.0
                last.bias.copy_(bias.flatten())

    def logits(self, budget_index: int) -> dict[str, torch.Tensor]:
        """Per axis: (L, options) logits for one budget (invalid options at -inf)."""
        x = F.one_hot(torch.tensor(budget_index), self.n_budgets).float()
        out = {}
        for a in AXES:
            z = self.nets[a](x).view(-1, self.sizes[a])
            out[a] = z.masked_fill(~getattr(self, f"valid_{a}"), -1e9)
        return out

    def valid(self, axis: str) -> torch.Tensor:
        """(L, options) bool: which options of ``axis`` each layer may take."""
        return getattr(self, f"valid_{axis}")

    def sample(self, budget_index: int, tau: float) -> dict[str, torch.Tensor]:
        """Straight-through Gumbel-softmax one-hots per axis: (L, options)."""
        return {a: F.gumbel_softmax(z, tau=tau, hard=True) for a, z in self.logits(budget_index).items()}

    def argmax(self, budget_index: int) -> dict[str, torch.Tensor]:
        return {a: F.one_hot(z.argmax(-1), z.shape[-1]).float() for a, z in self.logits(budget_index).items()}


# --- the masked forward ---------------------------------------------------------------------------------


def _prefix_masks(sizes: list[int], full: int, width: int = 1) -> torch.Tensor:
    """(options, full * width): 1 on the first ``size * width`` channels of each option."""
    idx = torch.arange(full * width)
    return torch.stack([(idx < s * width).float() for s in sizes]) if sizes else torch.zeros(0, full * width)


@contextmanager
def masked(elastic: ElasticLM, options: dict[str, list[list[int]]], picks: dict[str, torch.Tensor]) -> Iterator[None]:
    """Hooks that make the full-width parent compute the submodel of the width one-hots ``picks`` (see module doc)."""
    handles = []

    def scale_input(factor: torch.Tensor):  # type: ignore[no-untyped-def]
        return lambda _m, args: (args[0] * factor, *args[1:])

    for i, block in enumerate(elastic.model.blocks):
        if block.ffn is not None and hasattr(block.ffn, "down_proj"):
            n = options["ffn"][i]
            pick = picks["ffn"][i, : len(n)]
            mask = pick @ _prefix_masks(n, block.ffn.down_proj.in_features).to(pick)
            handles.append(block.ffn.down_proj.register_forward_pre_hook(scale_input(mask)))
        if block.attn is not None and hasattr(block.attn, "o_proj"):
            a = block.attn
            n = options["attention"][i]
            pick = picks["attention"][i, : len(n)]
            width = (a.n_heads // a.n_kv_heads) * a.head_dim
            mask = pick @ _prefix_masks(n, a.n_kv_heads, width).to(pick)
            handles.append(a.o_proj.register_forward_pre_hook(scale_input(mask)))
        if block.mamba is not None:
            m = block.mamba
            n = options["mamba"][i]
            pick = picks["mamba"][i, : len(n)]
            per = m.n_heads // m.n_groups
            group = _prefix_masks(n, per, m.head_dim).to(pick)  # (options, per * P), the same in every group
            mask = (pick @ group).repeat(m.n_groups)  # (H * P,)
            s = torch.sqrt(per / (pick @ torch.tensor(n, dtype=pick.dtype)))
            handles.append(m.norm.register_forward_pre_hook(scale_input(mask * s)))
            handles.append(m.out_proj.register_forward_pre_hook(scale_input(1 / s)))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def masked_forward(
    elastic: ElasticLM, options: dict[str, list[list[int]]], picks: dict[str, torch.Tensor], ids: torch.Tensor
) -> torch.Tensor:
    """Logits (B, T, V) of the submodel the one-hots ``picks`` (width axes + depth (L, 2): keep, skip) denote."""
    model = elastic.model
    keep = picks["depth"][:, 0]  # (L,)
    with masked(elastic, options, picks):
        h = model.embed(ids)
        for i, block in enumerate(model.blocks):
            h = h + keep[i] * (block(h) - h)
        return model.head(h)


def picks_config(options: dict[str, list[list[int]]], picks: dict[str, torch.Tensor]) -> ElasticConfig:
    """The ``ElasticConfig`` of hard one-hots."""
    layers = []
    for i in range(len(options["ffn"])):
        if picks["depth"][i, 0] < 0.5:
            layers.append(LayerChoice())
            continue
        sizes = {a: options[a][i][int(picks[a][i].argmax())] for a in WIDTH_AXES}
        layers.append(LayerChoice(**sizes))
    return ElasticConfig(tuple(layers))


# --- the cost model -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CostModel:
    """Per layer: the library cost of every (attention, ffn, mamba) option combination, plus skipping the layer."""

    tables: tuple[torch.Tensor, ...]  # layer i: (n_attention, n_ffn, n_mamba)
    skip: tuple[float, ...]
    non_block: float
    parent: float  # whole-model cost of the parent
    key: str

    @classmethod
    def from_library(
        cls, library: BlockLibrary, options: dict[str, list[list[int]]], key: str, scenario: str | None = None
    ) -> CostModel:
        name, scen = library.resolve_cost_key(key, scenario)
        tables, skip = [], []
        for i, layer in enumerate(library.layers):
            shape = tuple(len(options[a][i]) for a in WIDTH_AXES)
            t = torch.zeros(shape, dtype=torch.float64)
            for idx in itertools.product(*(range(n) for n in shape)):
                choice = LayerChoice(*(options[a][i][j] for a, j in zip(WIDTH_AXES, idx, strict=True)))
                try:
                    t[idx] = layer.variant(choice.name).cost(name, scen)
                except Exception as exc:
                    raise ConfigError(f"the nested library lacks layer {i} variant {choice.name}: {exc}") from None
            tables.append(t)
            can_skip = 0 in options.get("depth", [[1, 0]] * len(library.layers))[i]
            skip.append(layer.variant(LayerChoice().name).cost(name, scen) if can_skip else 0.0)  # 0: never picked
        non_block = library.non_block_cost(name, scen)
        parent = non_block + sum(layer.parent.cost(name, scen) for layer in library.layers)
        return cls(tuple(tables), tuple(skip), non_block, parent, key)

    def layer_cost(self, i: int, picks: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.tables[i].to(picks["ffn"].dtype)
        ya, yf, ym = (picks[a][i, : t.shape[k]] for k, a in enumerate(WIDTH_AXES))
        kept = torch.einsum("a,f,m,afm->", ya, yf, ym, t)
        keep = picks["depth"][i, 0]
        return keep * kept + (1 - keep) * self.skip[i]

    def ratio(self, picks: dict[str, torch.Tensor]) -> torch.Tensor:
        """Whole-model cost / the parent's: differentiable in ``picks``, exact for one-hots."""
        total = torch.stack([self.layer_cost(i, picks) for i in range(len(self.tables))]).sum()
        return (self.non_block + total) / self.parent


def extract(router: Router, cost: CostModel, budgets: Sequence[float]) -> dict[float, ElasticConfig]:
    """Per budget: the router's argmax configuration, walked down until it fits ``cost <= budget * parent``."""
    out = {}
    with torch.no_grad():
        for b_index, budget in enumerate(budgets):
            logits = router.logits(b_index)
            picks = router.argmax(b_index)
            while float(cost.ratio(picks)) > budget + 1e-9:
                best = None
                current = float(cost.ratio(picks))
                for i in range(len(cost.tables)):
                    for a in AXES:
                        j = int(picks[a][i].argmax())
                        n_valid = int(router.valid(a)[i].sum())
                        if j + 1 >= n_valid:
                            continue
                        trial = {k: v.clone() for k, v in picks.items()}
                        trial[a][i].zero_()
                        trial[a][i, j + 1] = 1.0
                        saved = current - float(cost.ratio(trial))
                        if saved <= 0:
                            continue
                        loss = float(logits[a][i, j] - logits[a][i, j + 1]) / saved
                        if best is None or loss < best[0]:
                            best = (loss, trial)
                if best is None:
                    raise InfeasibleError(
                        f"budget {budget:g}: even the smallest configuration costs {current:.3f} of the parent",
                        constraint=f"{cost.key}<={100 * budget:g}%",
                        minimum=current,
                    )
                picks = best[1]
            out[budget] = picks_config(router.options, picks)
    return out
