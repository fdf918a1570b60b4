"""Costs of blocks: parameters, memory per scenario (formula), latency per scenario (measured).

Memory (DESIGN.md §3), in MiB at a scenario's batch ``b`` and context ``s`` with ``bytes`` per value::

    params * bytes
    + 2 * kv_heads * head_dim * bytes * b * s                                 per GQA attention subblock
    + b * (conv_channels * (kernel - 1) + heads * head_dim * d_state) * bytes  per Mamba-2 mixer

Latency is measured on the device that runs the build, per scenario: *prefill* runs the block on (batch,
seq_len) fresh hidden states; *decode* runs one token per sequence after a cache filled with ``seq_len``
tokens of context. Each measurement does warm-up runs, then ``repeats`` timed runs (CUDA events on a GPU,
``perf_counter`` on CPU) and records the median and the spread (max - min) in ms, with the device name and
dtype on the ``Scenario``.

Every timed run starts from a cold last-level cache (a buffer twice its size is written first), as a real
model's step finds it: its weights are far larger than the cache. Without that, a block's time depends on what
ran before it (on the tiny-llama parent, CPU decode: 1.29 ms for one block timed alone, 1.94 ms per block in a
chain of 8, and the LM head 1.2 ms alone but about 2.2 ms after any layer), so a sum of parts cannot predict a
whole. On CPU, timing processes also keep freed memory instead of returning it to the kernel (glibc's
``M_MMAP_MAX=0``, ``M_TRIM_THRESHOLD``), as serving engines reuse their buffers: otherwise each large tensor is
mapped afresh and page-faulted on every call, and the cost depends on the allocation history (tiny-llama
prefill, embedding + head: 61 ms after the whole model ran, 49.5 ms with buffers kept). ``measure_model`` times the assembled parent and its non-block part (embedding,
final norm, LM head) so the library can report how far "sum of blocks + non-block" is from the real thing.
"""

from __future__ import annotations

import functools
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from puzzle.arch import ArchSpec, BlockSpec
from puzzle.library import Scenario

MIB = 1024 * 1024
PROFILE_VERSION = 4  # part of every profiling result's key: bump when how a block is timed (or what it runs) changes
# 3: the Mamba scan no longer slows down on underflowing decays (puzzle.model.ssd.DECAY_FLOOR)
# 4: every timed run starts from a cold last-level cache; CPU timing keeps freed memory (steady allocator)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def device_name(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu-{platform.machine()}"


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def default_scenarios(device: str = "cpu", dtype: str = "float32", threads: int = 1) -> tuple[Scenario, ...]:
    """A prefill and a decode workload sized for tiny parents on the build device (``threads``: CPU only)."""
    dev = device_name(device)
    short = "cpu" if dev.startswith("cpu") else _slug(dev)
    dt = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}[dtype]
    threads = threads if dev.startswith("cpu") else 0
    return (
        Scenario(f"{short}-{dt}-prefill-b4-s256", "prefill", 4, 256, dev, dtype, threads=threads),
        Scenario(f"{short}-{dt}-decode-b16-s512", "decode", 16, 512, dev, dtype, threads=threads),
    )


# --- formulas -------------------------------------------------------------------------------------------


def block_params(arch: ArchSpec, spec: BlockSpec) -> int:
    """Parameters of one block (its subblocks and norms), counted without allocating."""
    from puzzle.library.distill import build_block

    with torch.device("meta"):
        block = build_block(arch, spec)
    return sum(p.numel() for p in block.parameters())


def state_bytes(spec: BlockSpec, batch: int, context: int, bytes_per_value: int) -> int:
    """KV cache + Mamba state of one block at ``batch`` sequences of ``context`` tokens."""
    total = 0
    att = spec.attention
    if att.kind == "gqa":
        total += 2 * att.n_kv_heads * att.head_dim * bytes_per_value * batch * context
    m = spec.mamba
    if m.kind == "mamba":
        total += batch * (m.conv_channels * (m.conv_kernel - 1) + m.n_heads * m.head_dim * m.d_state) * bytes_per_value
    return total


def block_memory_mib(arch: ArchSpec, spec: BlockSpec, scenario: Scenario, params: int | None = None) -> float:
    nbytes = torch.finfo(DTYPES.get(scenario.dtype, torch.float32)).bits // 8
    params = block_params(arch, spec) if params is None else params
    return (params * nbytes + state_bytes(spec, scenario.batch_size, scenario.seq_len, nbytes)) / MIB


# --- timing -----------------------------------------------------------------------------------------------


class _threads:
    """Run with ``n`` torch threads (``0``: leave the count as it is), restoring the previous count afterwards."""

    def __init__(self, n: int) -> None:
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self) -> None:
        if self.n > 0:
            torch.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


@functools.cache
def _steady_allocator() -> bool:
    """Keep freed memory in this process (glibc): no fresh mappings, no trimming. True when it took effect."""
    import ctypes
    import ctypes.util

    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_max = -1, -4
        return bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**31 - 1))
    except (OSError, AttributeError):  # not glibc
        return False


def _cache_bytes() -> int:
    """The largest CPU cache, from sysfs (32 MiB when unknown)."""
    sizes = []
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = f.read_text().strip()
        units = {"K": 2**10, "M": 2**20, "G": 2**30}
        sizes.append(int(text[:-1]) * units[text[-1]] if text[-1] in units else int(text))
    return max(sizes, default=32 * MIB)


@functools.cache
def _flush_buffer(device: torch.device) -> torch.Tensor:
    size = 2 * (torch.cuda.get_device_properties(device).L2_cache_size if device.type == "cuda" else _cache_bytes())
    return torch.empty(max(size, MIB) // 4, dtype=torch.float32, device=device)


def flush_cache(device: torch.device) -> None:
    """Evict the last-level cache of ``device`` by writing a buffer twice its size."""
    _flush_buffer(device).fill_(1.0)


def time_ms(
    fn: Callable[[], Any],
    device: torch.device,
    *,
    warmup: int = 3,
    repeats: int = 10,
    samples: list[float] | None = None,
) -> tuple[float, float]:
    """(median, max - min) wall time of ``fn`` in ms after ``warmup`` untimed calls, each timed run from a cold
    cache (see the module docstring); every timed run's ms is appended to ``samples`` when given."""
    if device.type == "cpu":
        _steady_allocator()
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        for _ in range(repeats):
            flush_cache(device)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize(device)
            times.append(start.elapsed_time(end))
    else:
        for _ in range(repeats):
            flush_cache(device)
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    if samples is not None:
        samples.extend(times)
    return statistics.median(times), max(times) - min(times)


def _chain_runner(blocks: list[nn.Module], scenario: Scenario, hidden: int, device: torch.device, dtype: torch.dtype):
    """One timed call runs every block of ``blocks`` in sequence, each on the previous one's output (and, for
    decode, each with its own cache holding ``seq_len`` tokens of context)."""
    from puzzle.model import LayerCache

    b, s = scenario.batch_size, scenario.seq_len
    gen = torch.Generator(device="cpu").manual_seed(0)
    if scenario.kind == "prefill":
        x = torch.randn(b, s, hidden, generator=gen).to(device, dtype)

        def prefill() -> torch.Tensor:
            h = x
            for block in blocks:
                h = block(h)
            return h

        return prefill
    caches = [LayerCache() for _ in blocks]
    context = torch.randn(b, s, hidden, generator=gen).to(device, dtype)
    for block, cache in zip(blocks, caches, strict=True):
        block(context, cache)
    step = torch.randn(b, 1, hidden, generator=gen).to(device, dtype)

    def decode() -> torch.Tensor:
        h = step
        for block, cache in zip(blocks, caches, strict=True):
            h = block(h, cache)
            cache.kv.length = min(cache.kv.length, s)  # keep the context at s tokens across repeats
        return h

    return decode


@torch.no_grad()
def _realistic(block: nn.Module) -> nn.Module:
    """Mamba mixers get the trained-like init (dt in [1e-3, 0.1], A = -1..-H): PyTorch's default one makes the
    scan underflow into denormal floats, which CPUs handle slowly (tiny-hybrid Mamba block, prefill: 36.0 ms
    with the default init, 23.8 ms with this one, 23.0 ms with trained weights)."""
    from puzzle.model.lm import init_mamba
    from puzzle.model.mamba2 import Mamba2

    for module in block.modules():
        if isinstance(module, Mamba2):
            init_mamba(module)
    return block


@torch.no_grad()
def measure_block(
    arch: ArchSpec,
    spec: BlockSpec,
    scenarios: tuple[Scenario, ...],
    *,
    device: str = "cpu",
    warmup: int = 3,
    repeats: int = 10,
    copies: int = 1,
) -> dict[str, dict[str, float]]:
    """Per scenario: ``runtime_ms`` (median), ``runtime_spread_ms``, ``runtime_min_ms``, ``memory_mib`` of one block.

    The block is timed as a chain of ``copies`` independent instances run in sequence, and the time is divided
    by ``copies``: inside a model, a block's weights and cache are no longer in the CPU caches when its turn
    comes, and timing a single instance in a loop (everything cache-hot) underestimates it (on the tiny-llama
    parent, CPU decode: 1.42 ms alone vs 2.10 ms per block in a chain of 8 vs 2.13 ms inside the model).
    """
    from puzzle.library.distill import build_block

    dev = torch.device(device)
    params = block_params(arch, spec)
    out = {}
    for sc in scenarios:
        dtype = DTYPES[sc.dtype]
        blocks = [_realistic(build_block(arch, spec)).to(dev, dtype).eval() for _ in range(copies)]
        runs: list[float] = []
        with _threads(sc.threads):
            median, spread = time_ms(
                _chain_runner(blocks, sc, arch.hidden_size, dev, dtype),
                dev,
                warmup=warmup,
                repeats=repeats,
                samples=runs,
            )
        out[sc.name] = {
            "runtime_ms": median / copies,
            "runtime_spread_ms": spread / copies,
            "runtime_min_ms": min(runs) / copies,  # the least disturbed run: steadier than the median on a busy host
            "memory_mib": block_memory_mib(arch, spec, sc, params),
        }
    return out


def _model_runners(m: nn.Module, sc: Scenario, dev: torch.device) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(whole model, non-block part) callables for one scenario."""
    b, s = sc.batch_size, sc.seq_len
    gen = torch.Generator(device="cpu").manual_seed(0)
    ids = torch.randint(0, m.arch.vocab_size, (b, s), generator=gen).to(dev)
    if sc.kind == "prefill":
        return (lambda: m(ids)), (lambda: m.head(m.embed(ids)))
    cache = m.new_cache()
    m(ids, cache)
    step = ids[:, -1:]

    def whole() -> torch.Tensor:
        logits = m(step, cache)
        cache.length = s
        for layer in cache.layers:
            layer.kv.length = min(layer.kv.length, s)  # keep the context at s tokens across repeats
        return logits

    return whole, (lambda: m.head(m.embed(step)))


@torch.no_grad()
def measure_model(
    model: nn.Module, scenarios: tuple[Scenario, ...], *, device: str = "cpu", warmup: int = 3, repeats: int = 10
) -> dict[str, dict[str, float]]:
    """Per scenario: the whole model's ``runtime_ms`` / spread / min, and its non-block part (embed + head) alone."""
    dev = torch.device(device)
    out = {}
    for sc in scenarios:
        m = model.to(dev, DTYPES[sc.dtype]).eval()
        whole, non_block = _model_runners(m, sc, dev)
        runs: list[float] = []
        nb_runs: list[float] = []
        with _threads(sc.threads):
            median, spread = time_ms(whole, dev, warmup=warmup, repeats=repeats, samples=runs)
            nb_median, nb_spread = time_ms(non_block, dev, warmup=warmup, repeats=repeats, samples=nb_runs)
        out[sc.name] = {
            "runtime_ms": median,
            "runtime_spread_ms": spread,
            "runtime_min_ms": min(runs),
            "non_block_runtime_ms": nb_median,
            "non_block_runtime_spread_ms": nb_spread,
            "non_block_runtime_min_ms": min(nb_runs),
        }
    model.to("cpu", torch.float32)
    return out


def non_block_params(arch: ArchSpec) -> int:
    """Embedding + final norm + LM head (the head shares the embedding when tied)."""
    head = 0 if arch.tie_embeddings else arch.vocab_size * arch.hidden_size
    return arch.vocab_size * arch.hidden_size + arch.hidden_size + head


def non_block_memory_mib(arch: ArchSpec, scenario: Scenario) -> float:
    nbytes = torch.finfo(DTYPES.get(scenario.dtype, torch.float32)).bits // 8
    return non_block_params(arch) * nbytes / MIB


# --- executor tasks -------------------------------------------------------------------------------------


def profile_task(
    arch: dict[str, Any],
    specs: list[dict[str, Any]],
    scenarios: list[dict[str, Any]],
    device: str,
    warmup: int,
    repeats: int,
    copies: int = 1,
) -> dict[str, Any]:
    """Measure a list of block specs (runs on a worker; each scenario names its thread count); results in order."""
    a = ArchSpec.from_dict(arch)
    scs = tuple(Scenario.from_dict(s) for s in scenarios)
    results = []
    for s in specs:
        spec = BlockSpec.from_dict(s)
        timing = measure_block(a, spec, scs, device=device, warmup=warmup, repeats=repeats, copies=copies)
        results.append({"params": block_params(a, spec), "scenarios": timing})
    return {"results": results}


def profile_model_task(
    work: str, scenarios: list[dict[str, Any]], device: str, warmup: int, repeats: int
) -> dict[str, Any]:
    """Measure the assembled parent (runs on a worker; each scenario names its thread count)."""
    from puzzle.library.parent import load_parent_model

    model = load_parent_model(work)
    scs = tuple(Scenario.from_dict(s) for s in scenarios)
    return {"scenarios": measure_model(model, scs, device=device, warmup=warmup, repeats=repeats)}
