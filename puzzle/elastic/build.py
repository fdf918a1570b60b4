"""One checkpoint, every budget: build an elastic model from a parent, load it, slice a budget out.

``build_elastic`` runs the stages in order, each restartable:

1. load the parent and its tokenizer; the corpus splits into train / held-out (``puzzle.data``); the parent's
   held-out perplexity, before anything changes its weights;
2. the candidate grid, as soon as the parent is read: the space's sizes per layer that the deployment ``target``
   loads (``ElasticSpace.grid``; default ``puzzle.targets.DEFAULT_TARGET``, None: no restriction);
3. nest the parent (``nest.py``) on calibration rows of the train split;
4. score and cost every nested slice of the grid on held-out rows (``select.nested_library``), saved as
   ``OUT/library`` and reused when its key (parent, rows, grid, latency flag) matches;
5. the MIP picks each budget's configuration (``select.choose_configs``);
6. multi-budget distillation (``distill.train_elastic``), resumable from ``OUT/state``;
7. the held-out perplexity of every budget's child (its configuration sliced out of the trained weights, as
   ``slice_budget`` exports it) on the scoring rows of stage 4, as the parent's in stage 1;
8. write ``OUT/model`` (the shared weights: a normal HF directory of the nested parent, tokenizer included) and,
   last, ``OUT/elastic.json`` (budgets with their configurations, MIP totals and perplexity, the parent's
   perplexity and the rows it was measured on, space, target, cost, nesting report, training summary). A folder
   holding ``elastic.json`` is complete.

Schema 2 added the perplexities; a schema-1 folder still reads (``read_summary``), and rerunning its build
measures them and rewrites its ``elastic.json`` instead of rebuilding.

``load_elastic(OUT)`` gives the ``ElasticLM``; ``slice_budget(OUT, 0.6, CHILD)`` writes the budget's submodel
as a standalone child (no training) through the one export path, ``puzzle.child.export.export_point``: a
Hugging Face directory with ``puzzle_manifest.json`` (``loadable_by``), refused when the recorded target cannot
load it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from puzzle.arch import ArchSpec
from puzzle.elastic.distill import train_elastic
from puzzle.elastic.model import ElasticLM, n_params
from puzzle.elastic.nest import nest_parent
from puzzle.elastic.request import ElasticRequest
from puzzle.elastic.select import choose_configs, config_cost, nested_library
from puzzle.elastic.space import ElasticConfig, ElasticGrid, budget_key, config_arch
from puzzle.errors import CheckpointError, ConfigError, DataError
from puzzle.files import key_digest, write_json
from puzzle.targets import require_loadable

SCHEMA_VERSION = 2  # 2: held-out perplexities (parent_perplexity, perplexity_on, each budget's perplexity)
READABLE_VERSIONS = (1, 2)
ELASTIC_FILE = "elastic.json"
MODEL_DIR = "model"
LIBRARY_DIR = "library"
STATE_DIR = "state"
ROUTER_FILE = "router.safetensors"


def _rows(tokens: np.ndarray, seq_len: int, n: int | None, what: str) -> np.ndarray:
    from puzzle.data import pack_tensor

    if len(tokens) < seq_len + 1:
        raise DataError(f"the {what} split has {len(tokens)} tokens, fewer than one row of {seq_len + 1}")
    rows = pack_tensor(tokens, seq_len)
    return rows if n is None else rows[:n]


def _data(req: ElasticRequest) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(calibration rows, held-out scoring rows, training rows) of the corpus, tokenized by the parent's tokenizer."""
    from puzzle.data import cached_tokens, load_tokenizer, read_corpus, split_corpus

    tokenizer = load_tokenizer(req.parent)
    train_docs, held_docs = split_corpus(read_corpus(req.corpus), req.held_out_fraction)
    if not held_docs.documents:
        raise DataError(
            f"{held_docs.source}: no document falls in the held-out split; give a corpus of more files "
            "or a larger --held-out-fraction"
        )
    train_tokens = cached_tokens(train_docs, tokenizer, "train")
    held_tokens = cached_tokens(held_docs, tokenizer, "held-out")
    calib = _rows(train_tokens, req.score_seq_len, req.calibration_rows, "train")
    holdout = _rows(held_tokens, req.score_seq_len, req.holdout_rows, "held-out")
    train = _rows(train_tokens, req.train.seq_len, None, "train")
    return calib, holdout, train


def build_elastic(
    req: ElasticRequest,
    *,
    on_status: Callable[[str], None] | None = None,
    on_layer: Callable[[int, int], None] | None = None,
    on_step: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Build the elastic checkpoint ``req.out`` from ``req.parent`` (see the module docstring); returns its summary.

    (Over 80 lines: the stages run in order with their resume checks and status lines, as the docstring lists.)
    """
    from puzzle.library import BlockLibrary
    from puzzle.library.cost import default_scenarios
    from puzzle.model import load_pretrained, save_pretrained

    status = on_status or (lambda _msg: None)
    out = Path(req.out)
    if (out / ELASTIC_FILE).is_file():
        summary = read_summary(out)
        if summary.get("request") == req.to_dict():
            if summary["schema_version"] < 2:
                status("measuring the held-out perplexities this folder was written without")
                summary = _upgrade(summary, req, out)
            status(f"reusing the finished elastic model in {out}")
            return summary
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / LIBRARY_DIR).exists())):
        raise ConfigError(f"--out {out} exists and is not an elastic folder; choose a new directory")
    status("reading the parent and the corpus")
    model = load_pretrained(req.parent, dtype=torch.float32)
    grid = req.space.grid(model.arch, req.target)  # before any heavy work: ConfigError when the target cannot load
    calib, holdout, train_rows = _data(req)
    status("held-out perplexity of the parent")
    parent_perplexity = _perplexity(model, holdout)
    status("nesting the parent (ranking heads, channels, Mamba heads, layers)")
    report = nest_parent(model, torch.from_numpy(calib[:, :-1]))
    elastic = ElasticLM(model)

    scenarios = default_scenarios(req.device)
    key = key_digest(
        str(Path(req.parent).resolve()),
        model.arch.to_dict(),
        holdout.tolist(),
        grid.to_dict(),
        req.measure_latency,
    )
    lib_dir = out / LIBRARY_DIR
    library = None
    if (lib_dir / "library.json").is_file():
        library = BlockLibrary.load(lib_dir)
        if library.notes.get("key") != key:
            library = None
    if library is None:
        status("scoring every nested slice (replace-one-block KL) and its costs")
        library = nested_library(
            elastic,
            grid,
            torch.from_numpy(holdout),
            scenarios=scenarios,
            measure_latency=req.measure_latency,
            device=req.device,
            on_layer=on_layer,
        )
        library = BlockLibrary.from_dict(library.to_dict() | {"notes": library.notes | {"key": key}})
        library.save(lib_dir)
    status("choosing each budget's configuration (MIP)")
    choices = choose_configs(library, req.budgets, cost=req.cost, objective=req.objective)
    _check_loadable(model.arch, [c.config for c in choices.values()], req.target)
    elastic = ElasticLM(model, {c.budget: c.config for c in choices.values()})
    training, routed = None, None
    if req.selection == "router":
        status(f"training the router jointly with multi-budget distillation: {req.train.steps} steps")
        training, routed = _train_router(req, elastic, library, grid, train_rows, out, on_step)
        _check_loadable(model.arch, [ElasticConfig.from_list(r["layers"]) for r in routed.values()], req.target)
    elif req.train.steps > 0:
        status(f"multi-budget distillation: {req.train.steps} steps")
        result = train_elastic(elastic, train_rows, req.train, checkpoint_dir=out / STATE_DIR, on_step=on_step)
        training = result.to_dict()
    budgets = routed if routed is not None else {k: c.to_dict() for k, c in choices.items()}
    status("held-out perplexity of every budget")
    budgets = {k: entry | {"perplexity": _budget_perplexity(elastic, entry, holdout)} for k, entry in budgets.items()}
    status("writing the shared weights and the budgets")
    save_pretrained(model, out / MODEL_DIR, tokenizer_dir=req.parent)
    summary = {
        "schema_version": SCHEMA_VERSION,
        "request": req.to_dict(),
        "parent": str(req.parent),
        "parent_params": n_params(model),
        "parent_perplexity": parent_perplexity,
        "perplexity_on": _perplexity_on(holdout),
        "cost": req.cost,
        "objective": req.objective,
        "space": req.space.to_dict(),
        "target": req.target,
        "selection": req.selection,
        "budgets": budgets,
        "mip": {k: c.to_dict() for k, c in choices.items()},
        "nest": report.to_dict(),
        "training": training,
        "library": LIBRARY_DIR,
        "model": MODEL_DIR,
    }
    write_json(out / ELASTIC_FILE, summary)
    shutil.rmtree(out / STATE_DIR, ignore_errors=True)
    return summary


def _stream(rows: np.ndarray) -> np.ndarray:
    """The token stream of packed rows (N, T + 1) of stride T: ``evaluate`` packs it back into exactly these rows."""
    return np.concatenate([rows[0, :1], rows[:, 1:].reshape(-1)])


def _perplexity(model: torch.nn.Module, holdout: np.ndarray) -> float:
    """``model``'s perplexity on the held-out rows (N, T + 1), each token after a row's first predicted once."""
    from puzzle.child.evaluate import evaluate

    return evaluate(model, _stream(holdout), holdout.shape[1] - 1).perplexity


def _budget_perplexity(elastic: ElasticLM, entry: Mapping[str, Any], holdout: np.ndarray) -> float:
    """The held-out perplexity of a budget entry's child: its configuration sliced out of the shared weights."""
    return _perplexity(elastic.slice(config=ElasticConfig.from_list(entry["layers"])), holdout)


def _perplexity_on(holdout: np.ndarray) -> dict[str, Any]:
    """What the summary's perplexities were measured on: the first ``rows`` rows of ``seq_len`` + 1 tokens (stride
    ``seq_len``) of the held-out split, ``tokens`` predicted tokens."""
    n, width = holdout.shape
    return {"split": "held-out", "rows": n, "seq_len": width - 1, "tokens": n * (width - 1)}


def _upgrade(summary: dict[str, Any], req: ElasticRequest, out: Path) -> dict[str, Any]:
    """A schema-1 summary of the finished folder ``out`` with the perplexities (measured now, on the rows its build
    scored: the same request reads the same rows), written back as the current schema."""
    from puzzle.model import load_pretrained

    _, holdout, _ = _data(req)
    elastic = load_elastic(out)
    upgraded = summary | {
        "schema_version": SCHEMA_VERSION,
        "parent_perplexity": _perplexity(load_pretrained(req.parent, dtype=torch.float32), holdout),
        "perplexity_on": _perplexity_on(holdout),
        "budgets": {
            k: entry | {"perplexity": _budget_perplexity(elastic, entry, holdout)}
            for k, entry in summary["budgets"].items()
        },
    }
    write_json(out / ELASTIC_FILE, upgraded)
    return upgraded


def _check_loadable(arch: ArchSpec, configs: list[ElasticConfig], target: str | None) -> None:
    """The grid admits only slices ``target`` loads; check the assembled configurations too (ConfigError if not)."""
    if target is not None:
        for config in configs:
            require_loadable(config_arch(arch, config), target)


def _train_router(
    req: ElasticRequest,
    elastic: ElasticLM,
    library: Any,
    grid: ElasticGrid,
    rows: np.ndarray,
    out: Path,
    on_step: Callable[[Any], None] | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train the router with the shared weights; (training summary, per-budget extracted configurations)."""
    from puzzle.elastic.distill import RouterTraining
    from puzzle.elastic.router import CostModel, Router, extract, width_options
    from puzzle.files import save_tensors

    options = width_options(grid)
    n_budgets = len(req.budgets) + int(req.train.include_full)
    router = Router(options, elastic.arch.n_layers, n_budgets)
    cost = CostModel.from_library(library, options, req.cost)
    rt = RouterTraining(router=router, cost=cost)
    result = train_elastic(
        elastic, rows, req.train, budgets=req.budgets, router=rt, checkpoint_dir=out / STATE_DIR, on_step=on_step
    )
    order = ([1.0] if req.train.include_full else []) + list(req.budgets)
    configs = extract(router, cost, order)
    save_tensors(out / ROUTER_FILE, router.state_dict())
    routed = {}
    for budget in req.budgets:
        config = configs[budget]
        picks_ratio = _config_ratio(library, config, req.cost)
        routed[budget_key(budget)] = {"budget": budget, "layers": config.to_list(), "cost_ratio": picks_ratio}
    return result.to_dict() | {"router_options": options}, routed


def _config_ratio(library: Any, config: Any, cost: str) -> float:
    total, parent = config_cost(library, config, cost)
    return total / parent


def read_summary(path: str | Path) -> dict[str, Any]:
    file = Path(path) / ELASTIC_FILE
    if not file.is_file():
        raise CheckpointError(
            f"{path}: not an elastic model folder (no {ELASTIC_FILE}); build one with `elastic train`"
        )
    try:
        data = json.loads(file.read_text())
    except ValueError as exc:
        raise CheckpointError(f"{file}: not valid JSON ({exc})") from exc
    if data.get("schema_version") not in READABLE_VERSIONS:
        known = " or ".join(map(str, READABLE_VERSIONS))
        raise CheckpointError(f"{file}: schema_version {data.get('schema_version')!r} is not {known}")
    return data


def load_elastic(path: str | Path) -> ElasticLM:
    """The ``ElasticLM`` of an elastic folder: shared weights + each budget's configuration."""
    from puzzle.model import load_pretrained

    data = read_summary(path)
    model = load_pretrained(Path(path) / data["model"], dtype=torch.float32)
    budgets = {float(c["budget"]): ElasticConfig.from_list(c["layers"]) for c in data["budgets"].values()}
    return ElasticLM(model, budgets)


def slice_budget(path: str | Path, budget: float, out: str | Path) -> Path:
    """Write ``budget``'s submodel of the elastic folder ``path`` as a standalone child at ``out`` (new or empty),
    with its manifest; ``ConfigError`` naming each offending layer when the recorded target cannot load it."""
    from puzzle.child.export import export_point
    from puzzle.library import BlockLibrary
    from puzzle.search.request import Architecture

    path = Path(path)
    data = read_summary(path)
    elastic = load_elastic(path)
    config = elastic.config_for(budget)
    library = BlockLibrary.load(path / data["library"])
    mip = data["mip"].get(budget_key(budget), {})
    by_mip = data["selection"] == "mip"
    return export_point(
        library,
        path / data["library"],
        Architecture.from_names(library, [c.name for c in config.layers]),
        out,
        model=elastic.slice(config=config),
        tokenizer_dir=path / data["model"],
        objective={"metric": data["objective"], "value": mip.get("objective") if by_mip else None},
        constraints=[mip["constraint"]] if "constraint" in mip else (),
        solver=mip.get("solver") if by_mip else "router",
        extra={"elastic": {"model": str(path.resolve()), "budget": budget, "selection": data["selection"]}},
        target=data.get("target"),
    )


__all__ = ["budget_key", "build_elastic", "load_elastic", "read_summary", "slice_budget"]
