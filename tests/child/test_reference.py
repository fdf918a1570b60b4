"""The "parent + same tokens" reference: the parent trained with LM loss on exactly a child's GKD batches."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import puzzle.child.gkd
from puzzle.child.gkd import GKDConfig, run_gkd
from puzzle.child.reference import reference_config, train_reference
from puzzle.model import CausalLM, load_pretrained
from tests.child import TEXT, small_llama, tiny_parent_dir, tokenizer


def _lm_loss(model: CausalLM, rows: np.ndarray) -> float:
    x = torch.from_numpy(rows)
    with torch.no_grad():
        logits = model(x[:, :-1])
    return float(F.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()))


def test_reference_trains_the_parent_on_the_childs_gkd_batches(tmp_path, monkeypatch) -> None:
    parent = load_pretrained(tiny_parent_dir(tmp_path / "parent"))
    tokens = np.asarray(tokenizer().encode(TEXT * 3).ids, dtype=np.int64)
    rows = np.stack([tokens[i : i + 33] for i in range(0, len(tokens) - 33, 16)])
    cfg = GKDConfig(tokens=12 * 4 * 32, lr=3e-3, batch=4, seq_len=32)
    seen: list[list[torch.Tensor]] = [[], []]
    real_loss = puzzle.child.gkd.gkd_loss

    def spy(child, teacher, input_ids, targets, config):  # type: ignore[no-untyped-def]
        seen[config.lm_weight > 0].append(input_ids.clone())
        return real_loss(child, teacher, input_ids, targets, config)

    monkeypatch.setattr(puzzle.child.gkd, "gkd_loss", spy)
    torch.manual_seed(3)
    child = CausalLM(small_llama())  # any child: only its batches matter here
    run_gkd(child, parent, rows, cfg)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    reference, result = train_reference(parent, rows, cfg, checkpoint_dir=tmp_path / "ref")

    assert len(seen[0]) == len(seen[1]) == cfg.steps == result.steps
    assert all(torch.equal(a, b) for a, b in zip(seen[0], seen[1], strict=True))  # the very same tokens
    assert set(result.parts_last) == {"cosine", "kl", "lm"} and result.config == reference_config(cfg).to_dict()
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())  # the parent is untouched
    assert _lm_loss(reference, rows) < _lm_loss(parent, rows)  # it learnt from the tokens
    assert (tmp_path / "ref" / "gkd.pt").is_file()
