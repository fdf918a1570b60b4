"""``puzzle eval``: held-out loss and perplexity of a HF model directory on a text."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="mean next-token loss and perplexity of a model on a text",
        description="Evaluate a Hugging Face model directory (with tokenizer.json) on a text file, directory or "
        ".jsonl: prints the number of predicted tokens, mean loss (nats/token) and perplexity.",
    )
    parser.add_argument("--model", required=True, help="HF model directory (config.json, safetensors, tokenizer.json)")
    parser.add_argument(
        "--text",
        default=None,
        help="text file, directory of text files or .jsonl (text field); default: the Python standard library "
        "corpus the demo parent trains on (use with --held-out for its held-out split)",
    )
    parser.add_argument(
        "--seq-len",
        type=int,
        default=None,
        help="context window (default: the model's tokenizer_config model_max_length, else 256)",
    )
    parser.add_argument(
        "--held-out", action="store_true", help="score only the held-out split of --text (as training splits it)"
    )
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per forward pass")
    parser.add_argument("--json", action="store_true", help='print {"tokens", "loss", "perplexity"} as JSON')
    parser.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from puzzle.data import DEFAULT_HELD_OUT_FRACTION, encode_corpus, load_tokenizer, read_corpus, split_corpus
    from puzzle.errors import CheckpointError, ConfigError, DataError

    model_dir = Path(args.model)
    if not model_dir.is_dir():
        raise CheckpointError(f"model directory {model_dir} does not exist; pass a HF directory with config.json")
    if args.seq_len is not None and args.seq_len <= 0:
        raise ConfigError(f"--seq-len must be a positive integer, got {args.seq_len}")
    if args.batch_size <= 0:
        raise ConfigError(f"--batch-size must be a positive integer, got {args.batch_size}")
    corpus = read_corpus(args.text)
    if args.held_out:
        _, corpus = split_corpus(corpus, DEFAULT_HELD_OUT_FRACTION)
        if not corpus.documents:
            raise DataError(f"{corpus.source}: no document falls in the held-out split; drop --held-out")
    tokenizer = load_tokenizer(model_dir)
    seq_len = args.seq_len or _model_max_length(model_dir)

    from puzzle.child.evaluate import evaluate
    from puzzle.cli.progress import batch_bar
    from puzzle.model import load_pretrained

    model = load_pretrained(model_dir)
    tokens = encode_corpus(corpus, tokenizer)
    with batch_bar("evaluating") as on_batch:
        result = evaluate(model, tokens, seq_len, batch_size=args.batch_size, on_batch=on_batch)
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        print(f"tokens {result.tokens}  loss {result.loss:.4f}  perplexity {result.perplexity:.2f}")
    return 0


def _model_max_length(model_dir: Path) -> int:
    try:
        value = json.loads((model_dir / "tokenizer_config.json").read_text()).get("model_max_length")
    except (OSError, ValueError):
        return 256
    return int(value) if isinstance(value, int) and 0 < value <= 1 << 20 else 256
