"""``puzzle elastic``: build a many-in-one elastic model (every budget in one checkpoint) and slice budgets out."""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from puzzle.elastic import ElasticRequest


def _fractions(text: str) -> tuple[float, ...]:
    from puzzle.errors import ConfigError

    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"expected comma-separated fractions like 1,0.5,0, got {text!r}") from None


def register(subparsers: argparse._SubParsersAction) -> None:
    elastic = subparsers.add_parser("elastic", help="many-in-one elastic models: one checkpoint, every budget")
    sub = elastic.add_subparsers(dest="elastic_command", metavar="SUBCOMMAND", required=True)
    train = sub.add_parser(
        "train",
        help="nest a parent, choose each budget's submodel (MIP) and distil all budgets into one set of weights",
        description="Rank and permute the parent so every smaller size is a prefix, score every nested slice of "
        "every layer (replace-one-block KL), let the MIP choose each budget's configuration, then train the shared "
        "weights on all budgets at once (two-stage curriculum) and measure every budget's held-out perplexity. Writes "
        "OUT/model (HF), OUT/library and OUT/elastic.json. Rerun the same command to resume.",
    )
    train.add_argument("--parent", required=True, metavar="DIR", help="parent HF directory (with tokenizer.json)")
    train.add_argument("--budgets", required=True, help="fractions of the parent's cost, e.g. 0.8,0.6,0.4")
    train.add_argument("--out", required=True, metavar="DIR", help="output folder (new, or the same one to resume)")
    train.add_argument("--corpus", default=None, help="text file, directory or .jsonl (default: the Python stdlib)")
    train.add_argument(
        "--cost",
        default="num_params",
        help="cost the budgets bound (a library cost key, e.g. "
        "num_params, memory_mib, runtime_ms with --latency; default num_params)",
    )
    train.add_argument("--latency", action="store_true", help="measure every slice's latency here (runtime_ms)")
    train.add_argument("--tokens", type=int, default=131_072, help="distillation text tokens (0: no training)")
    train.add_argument("--batch", type=int, default=8, help="sequences per step")
    train.add_argument("--seq-len", type=int, default=128, help="tokens per sequence")
    train.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    train.add_argument("--budgets-per-step", type=int, default=0, help="submodels trained per step (0: all)")
    train.add_argument("--ffn", default="1,0.75,0.5,0.25,0", help="FFN width fractions to score (1 and 0 = remove)")
    train.add_argument("--attention", default="1,0.5,0.25,0", help="KV-group fractions to score")
    train.add_argument("--mamba", default="1,0.75,0.5,0.25,0", help="Mamba heads-per-group fractions to score")
    train.add_argument(
        "--target",
        default=None,
        help="deployment target every budget's child must load in (default: vllm; 'any' for no restriction): "
        "only slices it loads are scored, e.g. attention whole or removed for the DeciLM engines",
    )
    train.add_argument(
        "--ffn-multiple",
        type=int,
        default=None,
        metavar="N",
        help="round FFN widths up to a multiple of N (default: the target's grid, 256 for sglang / trtllm / "
        "llama.cpp, else 1)",
    )
    train.add_argument(
        "--held-out-fraction",
        type=float,
        default=0.05,
        help="share of the corpus documents held out for scoring the slices (default 0.05, as parents train)",
    )
    train.add_argument(
        "--selection",
        choices=("mip", "router"),
        default="mip",
        help="who picks each budget's submodel: the exact MIP over the scored nested slices (default), or a "
        "router trained jointly with the distillation (Gumbel-softmax against the library's cost table)",
    )
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    train.set_defaults(func=_train)

    sl = sub.add_parser(
        "slice",
        help="write one budget of an elastic model as a standalone Hugging Face child (no training)",
        description="Slice the budget's submodel out of the shared weights and export it like any child: a "
        "Hugging Face directory (config, safetensors, tokenizer) with puzzle_manifest.json (loadable_by); refused, "
        "naming each offending layer, when the target the model was trained for cannot load it.",
    )
    sl.add_argument("--model", required=True, metavar="DIR", help="elastic folder written by `elastic train`")
    sl.add_argument("--budget", required=True, type=float, help="one of the budgets it was trained with")
    sl.add_argument("--out", required=True, metavar="DIR", help="child directory (new or empty)")
    sl.set_defaults(func=_slice)


def _target(text: str | None) -> str | None:
    """``--target``: a name of ``puzzle.targets.TARGETS``, ``any`` (None), or absent (the default target)."""
    from puzzle.errors import ConfigError
    from puzzle.targets import DEFAULT_TARGET, TARGETS

    if text is None:
        return DEFAULT_TARGET
    if text == "any":
        return None
    if text not in TARGETS:
        raise ConfigError(f"--target {text!r}: choose one of {', '.join(TARGETS)} or any")
    return text


def _request(args: argparse.Namespace) -> ElasticRequest:
    """The ``ElasticRequest`` of ``elastic train``'s arguments (ConfigError when malformed)."""
    from puzzle.elastic import ElasticRequest, ElasticSpace, ElasticTrainConfig

    return ElasticRequest(
        parent=args.parent,
        budgets=args.budgets,
        out=args.out,
        corpus=args.corpus,
        space=ElasticSpace(
            attention=_fractions(args.attention),
            ffn=_fractions(args.ffn),
            mamba=_fractions(args.mamba),
            ffn_multiple=args.ffn_multiple,
        ),
        cost=args.cost,
        train=ElasticTrainConfig(
            tokens=args.tokens,
            batch=args.batch,
            seq_len=args.seq_len,
            lr=args.lr,
            budgets_per_step=args.budgets_per_step,
        ),
        measure_latency=args.latency,
        selection=args.selection,
        held_out_fraction=args.held_out_fraction,
        target=_target(args.target),
    )


def _train(args: argparse.Namespace) -> int:
    from puzzle.cli.progress import training_bar
    from puzzle.elastic import build_elastic

    req = _request(args)
    with training_bar("elastic distillation") as (on_step, status):

        def on_layer(done: int, total: int) -> None:
            status(f"scored the nested slices of layer {done}/{total}")

        summary = build_elastic(req, on_status=status, on_layer=on_layer, on_step=on_step)
    if args.json:
        print(json.dumps(summary, indent=1))
        return 0
    for key, mip in summary["mip"].items():
        share = 100 * mip["totals"][summary["cost"]] / mip["parent_totals"][summary["cost"]]
        line = f"budget {key}: MIP {summary['cost']} {share:.1f}% of the parent, KL sum {mip['objective']:.4f}"
        if summary["selection"] == "router":
            line += f"; router {100 * summary['budgets'][key]['cost_ratio']:.1f}%"
        print(f"{line}; held-out perplexity {summary['budgets'][key]['perplexity']:.3f}")
    on = summary["perplexity_on"]
    print(
        f"parent {summary['parent_params']:,} parameters, held-out perplexity {summary['parent_perplexity']:.3f} "
        f"({on['tokens']:,} tokens); wrote {args.out}"
    )
    return 0


def _slice(args: argparse.Namespace) -> int:
    from puzzle.child.export import read_manifest
    from puzzle.elastic import slice_budget
    from puzzle.elastic.model import n_params
    from puzzle.model import load_pretrained

    target = slice_budget(args.model, args.budget, args.out)
    loaders = ", ".join(read_manifest(target)["loadable_by"]) or "none"
    print(
        f"budget {args.budget:g}: {n_params(load_pretrained(target)):,} parameters; loadable by {loaders}; wrote {target}"
    )
    return 0
