"""The pipeline's fuse option: an exported child's attention-free FFN run is fused before export."""

from __future__ import annotations

import torch

from puzzle.child.assemble import assemble, load_parent
from puzzle.pipeline.request import FuseSettings, PipelineRequest
from puzzle.pipeline.stages import fuse_stage
from puzzle.search import Architecture
from tests.child import TEXT, ids, tiny_library, tiny_parent_dir


def test_fuse_stage_fuses_the_attention_free_run_and_reports_it(tmp_path) -> None:
    parent_dir = tiny_parent_dir(tmp_path / "parent")
    library = tiny_library(tmp_path / "work" / "library", parent_dir)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"f{i}.py").write_text(TEXT if i % 2 else TEXT.upper())
    arch = Architecture.from_names(library, ["parent", "att_noop", "att_noop"])
    parent = load_parent(library, parent_dir)
    settings = FuseSettings(max_kl=10.0, calib_tokens=512, eval_tokens=512)
    fused, report = fuse_stage(library, tmp_path / "work", arch, parent, parent_dir, corpus, settings)
    assert report["fused_groups"] == [[1, 2]]
    assert fused.arch.blocks[2].ffn.is_no_op and fused.arch.blocks[2].attention.is_no_op
    child = assemble(library, tmp_path / "work" / "library", arch.names(library), parent=parent)
    width = fused.arch.blocks[1].ffn.intermediate_size
    assert width == child.arch.blocks[1].ffn.intermediate_size + child.arch.blocks[2].ffn.intermediate_size
    with torch.no_grad():
        assert fused(ids()).shape == child(ids()).shape

    # a child with no attention-free run is exported unfused, the report saying why
    plain = Architecture.from_names(library, ["parent", "parent", "parent"])
    same, why = fuse_stage(library, tmp_path / "work", plain, parent, parent_dir, corpus, settings)
    assert why["fused_groups"] == [] and why["skipped"]
    assert same.arch.blocks == parent.arch.blocks


def test_fuse_settings_round_trip_and_problems() -> None:
    request = PipelineRequest.from_dict({"parent": "tiny-llama", "fuse": {"max_kl": 0.02, "max_fusions": 2}})
    assert request.fuse == FuseSettings(max_kl=0.02, max_fusions=2)
    assert PipelineRequest.from_dict(request.to_dict()) == request
    from puzzle.search.request import RequestError

    try:
        PipelineRequest.from_dict({"parent": "tiny-llama", "fuse": {"max_kl": -1, "size": 3}})
    except RequestError as exc:
        locs = [loc for loc, _ in exc.problems]
        assert ("fuse", "max_kl") in locs and ("fuse",) in locs
    else:
        raise AssertionError("bad fuse settings were accepted")
