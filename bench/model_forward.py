"""Forward speed of our CausalLM against transformers on the same checkpoint, side by side in one process.

For the tiny-llama and tiny-hybrid preset architectures (``puzzle.presets``) with random weights, measures
tokens/s of prefill (one forward over batch x prompt) and of cached decode (one token per step after a
prefill), for our model and for transformers' (LlamaForCausalLM / NemotronHForCausalLM) loaded from the
same directory, and prints a table with the ratio ours / transformers (> 1 means we are faster).

    python bench/model_forward.py [--threads 2] [--batch 4] [--prompt 256] [--decode 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from puzzle.arch import ArchSpec
from puzzle.model import CausalLM, load_pretrained, save_pretrained
from puzzle.presets import tiny_hybrid, tiny_llama


def _prefill(call: Callable[[torch.Tensor], torch.Tensor], ids: torch.Tensor) -> Callable[[], float]:
    def run() -> float:
        start = time.perf_counter()
        call(ids)
        return time.perf_counter() - start

    return run


def _decode(step: Callable[[torch.Tensor, object], tuple[torch.Tensor, object]], prompt: torch.Tensor, n: int):
    """Seconds for ``n`` greedy decode steps after a prefill of ``prompt`` (the prefill is not timed)."""

    def run() -> float:
        logits, state = step(prompt, None)
        token = logits[:, -1:].argmax(-1)
        start = time.perf_counter()
        for _ in range(n):
            logits, state = step(token, state)
            token = logits[:, -1:].argmax(-1)
        return time.perf_counter() - start

    return run


def _best_interleaved(a: Callable[[], float], b: Callable[[], float], repeats: int) -> tuple[float, float]:
    """Fastest of ``repeats`` runs of each, alternating a and b so both see the same machine load."""
    a(), b()  # warm-up
    ta, tb = [], []
    for _ in range(repeats):
        ta.append(a())
        tb.append(b())
    return min(ta), min(tb)


def bench(name: str, arch: ArchSpec, args: argparse.Namespace) -> list[tuple[str, str, float, float]]:
    import transformers

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_pretrained(CausalLM(arch), Path(tmp) / name)
        ours = load_pretrained(path)
        theirs = transformers.AutoModelForCausalLM.from_pretrained(path).eval()

    def ours_step(ids: torch.Tensor, cache: object) -> tuple[torch.Tensor, object]:
        cache = cache if cache is not None else ours.new_cache()
        return ours(ids, cache=cache), cache

    def hf_step(ids: torch.Tensor, past: object) -> tuple[torch.Tensor, object]:
        out = theirs(ids, past_key_values=past, use_cache=True)
        return out.logits, out.past_key_values

    ids = torch.randint(0, arch.vocab_size, (args.batch, args.prompt))
    prompt = ids[:, : args.decode_prompt]
    with torch.inference_mode():
        diff = (ours(ids[:, :64]) - theirs(ids[:, :64]).logits).abs().max().item()
        print(f"{name}: max |logits ours - transformers| = {diff:.2e}")
        t_ours, t_hf = _best_interleaved(
            _prefill(ours, ids), _prefill(lambda x: theirs(x, use_cache=False).logits, ids), args.repeats
        )
        rows = [(name, "prefill", ids.numel() / t_ours, ids.numel() / t_hf)]
        t_ours, t_hf = _best_interleaved(
            _decode(ours_step, prompt, args.decode), _decode(hf_step, prompt, args.decode), args.repeats
        )
        rows.append((name, "decode", args.batch * args.decode / t_ours, args.batch * args.decode / t_hf))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt", type=int, default=256, help="prefill length")
    parser.add_argument("--decode", type=int, default=64, help="decode steps")
    parser.add_argument("--decode-prompt", type=int, default=32, help="prompt length before decoding")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["tiny-llama", "tiny-hybrid"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import transformers

    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {args.threads} threads, fp32 CPU")
    print(f"batch {args.batch}, prefill {args.prompt} tokens, decode {args.decode} steps after {args.decode_prompt}")
    rows = []
    for name, arch in (("tiny-llama", tiny_llama(8192)), ("tiny-hybrid", tiny_hybrid(8192))):
        if args.only in (None, name):
            rows += bench(name, arch, args)
    print(f"\n{'checkpoint':<12} {'phase':<8} {'ours tok/s':>12} {'HF tok/s':>12} {'ours/HF':>8}")
    for name, phase, ours, hf in rows:
        print(f"{name:<12} {phase:<8} {ours:>12.0f} {hf:>12.0f} {ours / hf:>7.2f}x")


if __name__ == "__main__":
    main()
