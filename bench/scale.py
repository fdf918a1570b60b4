"""How the library build scales with the parent: peak memory per worker, disk, BLD throughput against the roofline.

    python bench/scale.py [--sizes 10M,50M,200M,800M] [--tokens 4096] [--batch 8] [--budgets 4096,16384] [--device cpu]

Parents are Llama-shaped (head_dim 64, 4 query heads per KV head, FFN 8/3 x hidden) with **random weights**
(fine for cost: memory, disk and time do not depend on the values), saved in bf16 like released checkpoints,
with a BPE tokenizer trained on a slice of the standard library. Every worker task runs in a fresh process, so
its peak RSS is its own:

    prepare   write the parent layer by layer + the token rows (the driver's part)
    bld L0    streaming BLD of layer 0's units (one FFN variant at 50 %, as a one-variant-per-layer space)
    bld Llast the same for the last layer (the largest prefix: the worst case for memory)
    score     replace-one-block scoring of the last layer (parent loaded layer by layer)

BLD throughput: FLOPs per streamed token = 2 x prefix params (parent forward, shared by all units) + 6 x trained
child params per unit (forward + backward), against the machine's measured matmul FLOP/s in the same dtype and
thread count (a (4096 x h) @ (h x 4h) matmul). Then, for the smallest size, the disk used for distillation data at
two token budgets (it must not grow: only token ids are stored).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SIZES = {  # name -> (hidden, layers)
    "10M": (256, 8),
    "50M": (512, 16),
    "200M": (1024, 16),
    "800M": (2048, 18),
}


def _arch(hidden: int, layers: int, vocab: int) -> Any:
    from puzzle.arch import ArchSpec, AttentionSpec, BlockSpec, FFNSpec

    heads = hidden // 64
    ffn = int(8 * hidden / 3) // 64 * 64
    attention = AttentionSpec(n_heads=heads, n_kv_heads=max(1, heads // 4), head_dim=64)
    block = BlockSpec(attention=attention, ffn=FFNSpec(intermediate_size=ffn))
    return ArchSpec(vocab_size=vocab, hidden_size=hidden, blocks=(block,) * layers, family="llama")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _in_child(fn_name: str, kwargs: dict[str, Any], queue: Any) -> None:
    import torch

    torch.set_num_threads(kwargs.pop("threads"))
    start = time.perf_counter()
    result = globals()[fn_name](**kwargs)
    queue.put({"result": result, "seconds": time.perf_counter() - start, "peak_mb": _peak_mb()})


def run_isolated(fn_name: str, threads: int, **kwargs: Any) -> dict[str, Any]:
    """``fn_name(**kwargs)`` in a fresh process; its result, wall time and peak RSS."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=_in_child, args=(fn_name, {**kwargs, "threads": threads}, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def make_parent(root: str, hidden: int, layers: int, corpus: str) -> dict[str, Any]:
    import torch

    from puzzle.data import read_corpus, save_tokenizer, train_bpe
    from puzzle.model import CausalLM, save_pretrained

    tokenizer = train_bpe(read_corpus(corpus), vocab_size=4096)
    arch = _arch(hidden, layers, tokenizer.get_vocab_size())
    with torch.device("meta"):
        model = CausalLM(arch)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02)
    out = save_pretrained(model, Path(root) / "parent")
    save_tokenizer(tokenizer, out, model_max_length=2048)
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "fp32_mb": 4 * sum(p.numel() for p in model.parameters()) / 2**20,
    }


def _config(corpus: str, tokens: int, seq_len: int = 128) -> Any:
    from puzzle.library.build import BuildConfig
    from puzzle.library.distill import BLDConfig

    return BuildConfig(
        bld=BLDConfig(tokens=tokens, batch=4),
        seq_len=seq_len,
        distill_sequences=64,
        holdout_sequences=4,
        held_out_fraction=0.3,
        corpus=corpus,
        parent_dtype="bfloat16",
    )


def prepare_stage(parent: str, work: str, corpus: str, tokens: int) -> dict[str, Any]:
    from puzzle.library.build import prepare

    prep = prepare(parent, Path(work), _config(corpus, tokens))
    return {k: v for k, v in prep.items() if k in ("digest", "distill_file", "holdout_file", "distill_tokens")}


def bld_stage(work: str, data_file: str, layer: int, tokens: int, batch: int, device: str) -> dict[str, Any]:
    from puzzle.arch import FFNSpec
    from puzzle.library.build import BuildConfig
    from puzzle.library.distill import BLDConfig, unit_key
    from puzzle.library.parent import load_parent_arch
    from puzzle.library.stream import bld_layer_task

    arch = load_parent_arch(work)
    ffn = FFNSpec(intermediate_size=arch.blocks[layer].ffn.intermediate_size // 2)
    cfg = BLDConfig(tokens=tokens, batch=batch)
    units = [(unit_key(layer, {"ffn": ffn}, cfg, "bench", "bench"), {"ffn": ffn.to_dict()})]
    resident = BuildConfig().prefix_resident_mb  # the builder's default: earlier layers beyond it are read per batch
    result = bld_layer_task(work, data_file, layer, units, cfg.to_dict(), device, "bfloat16", resident)
    hidden = arch.hidden_size
    prefix_params = arch.vocab_size * hidden + sum(_block_params(arch, i) for i in range(layer + 1))
    child_params = 3 * hidden * ffn.intermediate_size + hidden + (_block_params(arch, layer) - _ffn_params(arch, layer))
    tokens_streamed = result["tokens"]
    result["flops"] = tokens_streamed * (2 * prefix_params + 6 * child_params * len(units))
    return result


def _block_params(arch: Any, i: int) -> int:
    from puzzle.library.cost import block_params

    return block_params(arch, arch.blocks[i])


def _ffn_params(arch: Any, i: int) -> int:
    return 3 * arch.hidden_size * arch.blocks[i].ffn.intermediate_size + arch.hidden_size


def score_stage(work: str, holdout_file: str, layer: int) -> dict[str, Any]:
    from puzzle.library.parent import load_parent_arch
    from puzzle.library.score import score_task

    arch = load_parent_arch(work)
    variants = [{"name": "parent", "spec": arch.blocks[layer].to_dict(), "files": {}}]
    return score_task(work, holdout_file, layer, variants, 4, "cpu", "bfloat16")


def matmul_flops(hidden: int, dtype: str) -> float:
    import torch

    a = torch.randn(4096, hidden, dtype=getattr(torch, dtype))
    b = torch.randn(hidden, 4 * hidden, dtype=getattr(torch, dtype))
    for _ in range(2):
        a @ b
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < 2.0:
        a @ b
        n += 1
    return 2 * 4096 * hidden * 4 * hidden * n / (time.perf_counter() - start)


def du_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def corpus_slice(root: Path) -> str:
    import sysconfig

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    target = root / "corpus"
    if not target.exists():
        for package in ("json", "email", "asyncio", "unittest", "xml"):
            shutil.copytree(stdlib / package, target / package, ignore=shutil.ignore_patterns("__pycache__"))
    return str(target)


def bench_size(
    name: str, root: Path, corpus: str, tokens: int, batch: int, threads: int, device: str
) -> dict[str, Any]:
    hidden, layers = SIZES[name]
    size_root = root / name
    parent = run_isolated("make_parent", threads, root=str(size_root), hidden=hidden, layers=layers, corpus=corpus)
    work = size_root / "work"
    prep = run_isolated(
        "prepare_stage", threads, parent=str(size_root / "parent"), work=str(work), corpus=corpus, tokens=tokens
    )
    p = prep["result"]
    row: dict[str, Any] = {"size": name, "params": parent["result"]["params"], "fp32_mb": parent["result"]["fp32_mb"]}
    row["prepare"] = {"seconds": prep["seconds"], "peak_mb": prep["peak_mb"]}
    for label, layer in (("bld_first", 0), ("bld_last", layers - 1)):
        r = run_isolated(
            "bld_stage", threads, work=str(work), data_file=p["distill_file"], layer=layer, tokens=tokens,
            batch=batch, device=device,
        )  # fmt: skip
        res = r["result"]
        row[label] = {
            "seconds": res["seconds"],
            "peak_mb": r["peak_mb"],
            "train_seconds": res["train_seconds"],
            "tokens_per_s_per_core": res["unit_tokens"] / res["train_seconds"] / threads,
            "gflops": res["flops"] / res["train_seconds"] / 1e9,
        }
    sc = run_isolated("score_stage", threads, work=str(work), holdout_file=p["holdout_file"], layer=layers - 1)
    row["score_last"] = {"seconds": sc["seconds"], "peak_mb": sc["peak_mb"]}
    row["roofline_gflops"] = matmul_flops(hidden, "bfloat16") / 1e9
    row["roofline_fp32_gflops"] = matmul_flops(hidden, "float32") / 1e9
    row["disk_mb"] = {
        "parent_files": du_mb(work / "parent"),
        "distill_data": du_mb(Path(p["distill_file"]).parent),
        "subblocks": du_mb(work / "subblocks") if (work / "subblocks").exists() else 0.0,
    }
    row["target_peak_mb"] = row["fp32_mb"] / 2 + 400
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10M,50M,200M,800M")
    ap.add_argument("--tokens", type=int, default=4096, help="BLD tokens per unit")
    ap.add_argument("--budgets", default="4096,32768", help="two token budgets for the disk-growth check")
    ap.add_argument("--batch", type=int, default=8, help="BLD sequences per step")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--root", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="scale-bench-"))
    corpus = corpus_slice(root)
    rows = []
    for name in args.sizes.split(","):
        row = bench_size(name, root, corpus, args.tokens, args.batch, args.threads, args.device)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    print(
        f"{'size':>5} {'params':>8} {'fp32 MB':>8} {'target MB':>9} | {'peak MB prep/bld0/bldL/score':>30} | "
        f"{'BLD tok/s/core':>14} {'GFLOP/s':>8} {'roof':>6} {'eff':>5} | {'disk MB parent/data':>20}"
    )
    for r in rows:
        peaks = "/".join(f"{r[k]['peak_mb']:.0f}" for k in ("prepare", "bld_first", "bld_last", "score_last"))
        bl = r["bld_last"]
        print(
            f"{r['size']:>5} {r['params'] / 1e6:>7.1f}M {r['fp32_mb']:>8.0f} {r['target_peak_mb']:>9.0f} | {peaks:>30} | "
            f"{bl['tokens_per_s_per_core']:>14.0f} {bl['gflops']:>8.1f} {r['roofline_gflops']:>6.1f} "
            f"{bl['gflops'] / r['roofline_gflops']:>5.0%} | "
            f"{r['disk_mb']['parent_files']:>10.0f}/{r['disk_mb']['distill_data']:.2f}"
        )
    # disk growth with the token budget (smallest size): only token ids are stored, whatever the budget
    small = args.sizes.split(",")[0]
    budgets = [int(b) for b in args.budgets.split(",")]
    disk = []
    for budget in budgets:
        work = root / f"budget-{budget}"
        shutil.rmtree(work, ignore_errors=True)
        prep = run_isolated(
            "prepare_stage",
            args.threads,
            parent=str(root / small / "parent"),
            work=str(work),
            corpus=corpus,
            tokens=budget,
        )
        run_isolated(
            "bld_stage",
            args.threads,
            work=str(work),
            data_file=prep["result"]["distill_file"],
            layer=0,
            tokens=budget,
            batch=args.batch,
            device=args.device,
        )
        disk.append(du_mb(work) - du_mb(work / "parent"))
    print(
        f"disk for distillation data + trained units ({small}): "
        + ", ".join(f"{b} tokens: {d:.2f} MB" for b, d in zip(budgets, disk, strict=True))
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "budget_disk_mb": dict(zip(budgets, disk, strict=True))}, indent=1)
        )


if __name__ == "__main__":
    main()
