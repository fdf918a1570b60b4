"""Many-in-one elastic models (Nemotron Elastic, arXiv 2511.16664): nested submodels sharing one parent's weights.

    space.py    what a budget keeps of each layer (prefix sizes: KV groups, FFN channels, Mamba heads per group,
                or the layer skipped), ``ElasticConfig`` per budget, the candidate fractions ``ElasticSpace`` and
                their per-layer sizes ``ElasticGrid``, restricted to what a deployment target loads
    nest.py     rank and permute the parent so every smaller size is a prefix; depth importance (NMSE of logits)
    model.py    ``ElasticLM``: ``forward(ids, budget=0.6)`` slices prefixes of the one set of weights;
                ``slice(0.6)`` a standalone ``CausalLM``
    select.py   exact selection: a ``BlockLibrary`` of nested slices (replace-one-block KL, costs) + the MIP
    router.py   the router: per axis (attention, FFN, Mamba, depth) budget -> per-layer choices, straight-through
                Gumbel-softmax over a masked full-width forward that equals the sliced submodel, the nested
                library's cost table as the differentiable cost model, extraction that respects each budget
    distill.py  multi-budget knowledge distillation with the two-stage budget curriculum, resumable; trains the
                router jointly when given one
    build.py    the stages end to end: ``build_elastic`` -> one folder (shared weights + budgets, chosen by the
                MIP or by the router), ``load_elastic``, ``slice_budget``
    request.py  ``ElasticRequest``: what a build is asked for, validated once; ``from_dict`` lists every problem
    family.py   what each budget of a built folder is: configuration, parameters, predicted cost and quality

Serving engines: every budget is a child its ``target`` loads (default ``puzzle.targets.DEFAULT_TARGET``; None:
any). Attention elasticity removes whole KV groups with their queries, so a sliced attention has fewer query heads
than the parent; the DeciLM engines read one global head count, so for them attention is kept whole or removed.
Likewise a hybrid keeps Mamba whole or removes it for every engine but transformers (vLLM builds each Mamba layer
from the global config), and SGLang / TRT-LLM / llama.cpp get FFN widths on the 256 ``ffn_mult`` grid
(``ElasticSpace.ffn_multiple``). ``slice_budget`` exports through
``puzzle.child.export.export_point``: the manifest lists ``loadable_by``, and a target that cannot load is refused.

Not here yet: elastic embedding channels; a nested attention the DeciLM engines load (fewer KV heads, every query
head kept, as the library's ``kv_heads`` options build: a prefix of KV heads is not a slice of the weights).
"""

from __future__ import annotations

from puzzle.elastic.build import build_elastic, load_elastic, read_summary, slice_budget
from puzzle.elastic.distill import ElasticTrainConfig, ElasticTrainResult, train_elastic
from puzzle.elastic.family import FamilyMember, family
from puzzle.elastic.model import ElasticLM, slice_block_state
from puzzle.elastic.nest import NestReport, nest_parent
from puzzle.elastic.request import ElasticRequest
from puzzle.elastic.select import BudgetChoice, choose_configs, nested_library
from puzzle.elastic.space import ElasticConfig, ElasticGrid, ElasticSpace, LayerChoice, config_arch, parse_budgets

__all__ = [
    "BudgetChoice",
    "ElasticConfig",
    "ElasticGrid",
    "ElasticLM",
    "ElasticRequest",
    "ElasticSpace",
    "ElasticTrainConfig",
    "ElasticTrainResult",
    "FamilyMember",
    "LayerChoice",
    "NestReport",
    "build_elastic",
    "choose_configs",
    "config_arch",
    "family",
    "load_elastic",
    "nest_parent",
    "nested_library",
    "parse_budgets",
    "read_summary",
    "slice_block_state",
    "slice_budget",
    "train_elastic",
]
