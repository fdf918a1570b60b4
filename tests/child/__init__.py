"""Tests of shipping a child (export). ``tiny_parent_dir`` is the one factory of small saved parents that the
assemble / GKD / evaluation tests share: a preset-factory architecture plus a real BPE tokenizer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from puzzle.arch import ArchSpec
from puzzle.data import Corpus, Document, train_bpe
from puzzle.presets import tiny_hybrid, tiny_llama

VOCAB = 320
TEXT = "def add(a, b):\n    return a + b\n\nclass Point:\n    x: int = 0\n    y: int = 0\n" * 20


def small_llama(n_layers: int = 3) -> ArchSpec:
    return tiny_llama(VOCAB, hidden=64, n_layers=n_layers, n_heads=4, n_kv_heads=2, intermediate=128)


def small_hybrid() -> ArchSpec:
    return tiny_hybrid(
        VOCAB, hidden=64, pattern="M*-", n_heads=4, n_kv_heads=2, intermediate=128,
        mamba_heads=4, mamba_head_dim=16, mamba_groups=2, d_state=8, chunk_size=16,
    )  # fmt: skip


def tokenizer() -> Any:
    corpus = Corpus("test", (Document("a.py", TEXT), Document("b.py", TEXT.upper())))
    return train_bpe(corpus, vocab_size=VOCAB)


def tiny_parent_dir(directory: Path, arch: ArchSpec | None = None, seed: int = 0) -> Path:
    """A random-weight parent of ``arch`` (default ``small_llama()``) saved as a HF directory with a tokenizer."""
    import json

    from puzzle.data import eos_id, save_tokenizer
    from puzzle.model import CausalLM, save_pretrained

    torch.manual_seed(seed)
    model = CausalLM(arch or small_llama()).eval()
    save_pretrained(model, directory)
    tok = tokenizer()
    save_tokenizer(tok, directory, model_max_length=64)
    config = json.loads((directory / "config.json").read_text())
    config.update(bos_token_id=eos_id(tok), eos_token_id=eos_id(tok))
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return directory


def ids(batch: int = 2, length: int = 16, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def tiny_library(directory: Path, parent_dir: Path) -> Any:
    """A small real block library of the parent in ``parent_dir``, written to ``directory``.

    Per layer: the parent block, FFN pruned to 50 % (activation importance), KV heads 2 -> 1, attention as a
    no-op (no weights of its own: the parent FFN is reused), and the whole block as a no-op. Weights are
    pruned inits (no BLD, to stay fast); ``kl_div`` is replace-one-block KL on random tokens and the costs are
    parameter counts, with ``runtime_ms`` in one scenario proportional to them (a deterministic stand-in).
    """
    import torch.nn.functional as F

    from puzzle.arch import AttentionSpec, BlockSpec, FFNSpec
    from puzzle.files import save_tensors
    from puzzle.library import BlockLibrary, Layer, Scenario, Variant
    from puzzle.library.distill import BLDConfig, init_child, state_digest
    from puzzle.model import load_pretrained

    parent = load_pretrained(parent_dir)
    arch = parent.arch
    x = ids(4, 32, seed=5)
    with torch.no_grad():
        ref = F.log_softmax(parent(x), -1)
        hidden = parent(x, return_hidden=True)[1]
    layers = []
    for i, pblock in enumerate(parent.blocks):
        pspec = arch.blocks[i]
        att, ffn = pspec.attention, pspec.ffn
        options = {
            "parent": pspec,
            "ffn50": BlockSpec(att, FFNSpec(intermediate_size=ffn.intermediate_size // 2)),
            "kv1": BlockSpec(AttentionSpec(n_heads=att.n_heads, n_kv_heads=1, head_dim=att.head_dim), ffn),
            "att_noop": BlockSpec(AttentionSpec.no_op(), ffn),
            "noop": BlockSpec(AttentionSpec.no_op(), FFNSpec.no_op()),
        }
        variants = []
        for name, spec in options.items():
            changes = {k: getattr(spec, k) for k in ("attention", "ffn") if getattr(spec, k) != getattr(pspec, k)}
            block = init_child(arch, pblock, pspec, changes, hidden[i][:2], BLDConfig()) if changes else pblock
            weights = None
            if name in ("parent", "ffn50", "kv1"):
                state = block.state_dict()
                weights = f"weights/{state_digest(state)}.safetensors"
                save_tensors(directory / weights, state)
            with torch.no_grad():
                h = block(hidden[i])
                for later in parent.blocks[i + 1 :]:
                    h = later(h)
                logq = F.log_softmax(parent.head(h), -1)
            kl = float((ref.exp() * (ref - logq)).sum(-1).mean())
            params = float(sum(p.numel() for p in block.parameters())) if not spec.is_no_op else 0.0
            variants.append(
                Variant(
                    name=name,
                    is_parent=name == "parent",
                    spec=spec,
                    metrics={"kl_div": max(kl, 0.0)},
                    costs={"num_params": params},
                    scenario_costs={"cpu": {"runtime_ms": 0.01 + params / 1e4}},
                    weights=weights,
                )
            )
        layers.append(Layer(index=i, variants=tuple(variants)))
    from puzzle.library.distill import state_digest as digest

    library = BlockLibrary(
        layers=tuple(layers),
        scenarios={"cpu": Scenario("cpu", "prefill", 1, 32, "cpu", "float32")},
        family=arch.family,
        hidden_size=arch.hidden_size,
        parent={"source": str(parent_dir), "digest": digest(parent.state_dict()), "arch": arch.to_dict()},
        non_block_scenario_costs={"cpu": {"runtime_ms": 0.05}},
    )
    library.save(directory)
    return library
