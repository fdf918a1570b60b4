from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from puzzle.child.assemble import assemble
from puzzle.errors import CheckpointError, LibraryError
from puzzle.library import BlockLibrary
from puzzle.library.distill import build_block
from puzzle.model import load_pretrained
from tests.child import ids, small_llama, tiny_library, tiny_parent_dir


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path, BlockLibrary]:
    root = tmp_path_factory.mktemp("lib")
    parent = tiny_parent_dir(root / "parent")
    tiny_library(root / "library", parent)
    return parent, root / "library", BlockLibrary.load(root / "library")


def test_all_parent_variants_give_back_the_parent(built) -> None:
    parent_dir, lib_dir, library = built
    child = assemble(library, lib_dir, ["parent"] * library.n_layers)
    parent = load_pretrained(parent_dir)
    x = ids()
    with torch.no_grad():
        assert torch.equal(child(x), parent(x))
    assert child.hf_source == parent_dir


def test_mixed_solution_uses_library_weights_and_parent_subblocks(built) -> None:
    parent_dir, lib_dir, library = built
    names = ["ffn50", "att_noop", "noop"]
    parent = load_pretrained(parent_dir)
    child = assemble(library, lib_dir, {"layers": names}, parent=parent)
    assert [b.ffn.intermediate_size for b in child.arch.blocks[:2]] == [64, 128]
    assert child.arch.blocks[1].attention.is_no_op and child.arch.blocks[2].is_no_op
    v0 = library.layers[0].variant("ffn50")
    block0 = build_block(parent.arch, v0.spec, load_file(str(lib_dir / v0.weights)))
    x = ids()
    with torch.no_grad():  # independent composition: library block 0, parent FFN of block 1, nothing for 2
        h = block0(parent.embed(x))
        ffn1 = parent.blocks[1]
        h = h + ffn1.ffn(ffn1.ffn_norm(h))
        expected = parent.head(h)
        assert torch.allclose(child(x), expected, atol=1e-6)
    # the child shares no storage with the library or the parent (GKD trains it in place)
    before = {k: v.clone() for k, v in parent.state_dict().items()}
    for p in child.parameters():
        p.data.zero_()
    assert load_file(str(lib_dir / v0.weights))["ffn.down_proj.weight"].abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in parent.state_dict().items())


def test_bad_solutions_and_parents_are_clear_errors(built, tmp_path) -> None:
    _parent_dir, lib_dir, library = built
    with pytest.raises(LibraryError, match="no variant named 'nope'"):
        assemble(library, lib_dir, ["parent", "nope", "parent"])
    with pytest.raises(LibraryError, match="2 variants but the library has 3"):
        assemble(library, lib_dir, ["parent", "parent"])
    other = tiny_parent_dir(tmp_path / "other", small_llama(), seed=7)
    with pytest.raises(CheckpointError, match="differ from the parent"):
        assemble(library, lib_dir, ["parent"] * 3, parent=other)
    (lib_dir / library.layers[0].variant("ffn50").weights).rename(tmp_path / "moved")
    try:
        with pytest.raises(LibraryError, match=r"weights file .* not found"):
            assemble(library, lib_dir, ["ffn50", "parent", "parent"])
    finally:
        (tmp_path / "moved").rename(lib_dir / library.layers[0].variant("ffn50").weights)
