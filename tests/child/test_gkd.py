from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from puzzle.child.assemble import assemble
from puzzle.child.gkd import GKDConfig, gkd_loss, run_gkd
from puzzle.errors import ConfigError
from puzzle.library import BlockLibrary
from puzzle.model import load_pretrained
from tests.child import TEXT, tiny_library, tiny_parent_dir, tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("gkd")
    parent_dir = tiny_parent_dir(root / "parent")
    tiny_library(root / "library", parent_dir)
    library = BlockLibrary.load(root / "library")
    parent = load_pretrained(parent_dir)
    child = assemble(library, root / "library", ["ffn50", "att_noop", "kv1"], parent=parent)
    tokens = np.asarray(tokenizer().encode(TEXT * 3).ids, dtype=np.int64)
    rows = np.stack([tokens[i : i + 33] for i in range(0, len(tokens) - 33, 16)])
    return parent, child, rows


def _batch_loss(child, parent, rows, cfg) -> float:
    x = torch.from_numpy(rows[:8])
    with torch.no_grad():
        return float(gkd_loss(child, parent, x[:, :-1], x[:, 1:], cfg)[0])


def test_loss_falls(setup) -> None:
    parent, child, rows = setup
    child = copy.deepcopy(child)
    cfg = GKDConfig(tokens=40 * 4 * 32, lr=3e-3, batch=4, seq_len=32, warmup_fraction=0.1)
    before = _batch_loss(child, parent, rows, cfg)
    result = run_gkd(child, parent, rows, cfg)
    after = _batch_loss(child, parent, rows, cfg)
    assert result.steps == 40 and len(result.losses) == 40 and result.tokens == 40 * 4 * 32
    assert after < 0.6 * before, (before, after)
    assert np.mean(result.losses[-5:]) < np.mean(result.losses[:5])
    assert set(result.parts_last) == {"cosine", "kl"}  # LM loss off by default
    assert not any(p.requires_grad for p in parent.parameters())


def test_resumed_run_equals_uninterrupted(setup, tmp_path) -> None:
    parent, child, rows = setup
    cfg = GKDConfig(tokens=8 * 4 * 32, lr=1e-3, batch=4, seq_len=32, checkpoint_every=3)
    straight = copy.deepcopy(child)
    reference = run_gkd(straight, parent, rows, cfg)

    def interrupt(info) -> None:
        if info.step == 5:
            raise KeyboardInterrupt

    first = copy.deepcopy(child)
    with pytest.raises(KeyboardInterrupt):
        run_gkd(first, parent, rows, cfg, checkpoint_dir=tmp_path, on_step=interrupt)
    resumed = copy.deepcopy(child)  # a new process: fresh child from the same assembly
    result = run_gkd(resumed, parent, rows, cfg, checkpoint_dir=tmp_path)
    assert result.resumed_from == 3
    assert np.allclose(result.losses, reference.losses, rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    again = copy.deepcopy(child)  # finished checkpoint: reused, no step runs
    result = run_gkd(again, parent, rows, cfg, checkpoint_dir=tmp_path, on_step=lambda _i: pytest.fail("trained"))
    assert result.resumed_from == 8
    assert torch.equal(again.blocks[0].ffn.down_proj.weight, resumed.blocks[0].ffn.down_proj.weight)


def test_lm_loss_flag_and_bad_settings(setup) -> None:
    parent, child, rows = setup
    cfg = GKDConfig(tokens=2 * 4 * 32, batch=4, seq_len=32, lm_weight=0.5)
    result = run_gkd(copy.deepcopy(child), parent, rows, cfg)
    assert set(result.parts_last) == {"cosine", "kl", "lm"} and result.parts_last["lm"] > 0
    with pytest.raises(ConfigError, match=r"batch must be.*lr must be positive"):
        GKDConfig(lr=0, batch=0)
