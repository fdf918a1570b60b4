from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from puzzle.child.assemble import assemble
from puzzle.child.assess import kl_to_parent, predicted_cost
from puzzle.library import BlockLibrary
from puzzle.model import load_pretrained
from tests.child import TEXT, tiny_library, tiny_parent_dir, tokenizer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("assess")
    parent_dir = tiny_parent_dir(root / "parent")
    tiny_library(root / "library", parent_dir)
    library = BlockLibrary.load(root / "library")
    tokens = np.asarray(tokenizer().encode(TEXT).ids, dtype=np.int32)
    return load_pretrained(parent_dir), library, root / "library", tokens


def test_kl_to_parent_is_zero_for_the_parent_and_matches_a_direct_computation(setup) -> None:
    parent, library, lib_dir, tokens = setup
    assert kl_to_parent(parent, parent, tokens, 32) == pytest.approx(0.0, abs=1e-7)
    child = assemble(library, lib_dir, ["ffn50", "noop", "kv1"], parent=parent)
    tokens = tokens[: 3 * 32 + 1]  # exactly three full rows
    ids = torch.from_numpy(tokens.astype(np.int64))[:-1].view(3, 32)
    with torch.no_grad():
        expected = F.kl_div(
            F.log_softmax(child(ids), -1).flatten(0, 1),
            F.log_softmax(parent(ids), -1).flatten(0, 1),
            log_target=True,
            reduction="batchmean",
        )
    got = kl_to_parent(child, parent, tokens, 32, batch_size=2)
    assert got > 1e-5  # random weights: small but clearly non-zero
    assert got == pytest.approx(float(expected), rel=1e-5)


def test_predicted_cost_sums_blocks_and_non_block(setup) -> None:
    _parent, library, _lib_dir, _tokens = setup
    names = ["ffn50", "noop", "parent"]
    blocks = sum(library.layers[i].variant(n).scenario_costs["cpu"]["runtime_ms"] for i, n in enumerate(names))
    assert predicted_cost(library, names, "runtime_ms", "cpu") == pytest.approx(blocks + 0.05)
    assert predicted_cost(library, names, "num_params", None) == sum(
        library.layers[i].variant(n).costs["num_params"] for i, n in enumerate(names)
    )


def test_measure_latency_times_the_child_in_the_library_scenario(setup) -> None:
    from puzzle.child.assess import measure_latency

    parent, library, lib_dir, _tokens = setup
    names = ["ffn50", "noop", "kv1"]
    child = assemble(library, lib_dir, names, parent=parent)
    (lat,) = measure_latency(child, library, names, repeats=3, warmup=1)
    assert lat.scenario == "cpu"
    assert lat.measured_ms > 0 and lat.spread_ms >= 0
    assert lat.predicted_ms == predicted_cost(library, names, "runtime_ms", "cpu")
    assert lat.to_dict()["error_pct"] == pytest.approx(100 * (lat.measured_ms / lat.predicted_ms - 1))
    with pytest.raises(Exception, match="unknown scenario"):
        measure_latency(child, library, names, ["gpu"])
