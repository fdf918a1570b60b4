"""The pipeline request: one round trip of the job spec, every problem of a submission at once."""

from __future__ import annotations

import pytest

from puzzle.pipeline.request import BuildSettings, PipelineRequest, input_problems
from puzzle.search import RequestError, SearchRequest
from puzzle.search.problem import parse_constraint


def test_round_trip_of_a_job_spec() -> None:
    request = PipelineRequest(
        parent="tiny-hybrid",
        train_steps=5,
        corpus="stdlib",
        build=BuildSettings(space="tiny", bld_tokens=1024, held_out_fraction=0.2),
        search=SearchRequest(mode="diverse", n=3, diversity=2, constraints=(parse_constraint("num_params<=80%"),)),
        export_points=(0, 2),
    )
    spec = request.to_dict()
    assert spec["search"]["d"] == 2 and spec["build"]["space"] == "tiny" and spec["export_points"] == [0, 2]
    assert PipelineRequest.from_dict(spec) == request
    assert PipelineRequest.from_dict({"parent": "tiny-llama"}) == PipelineRequest(parent="tiny-llama")


def test_every_problem_at_once(tmp_path) -> None:
    body = {
        "parent": "no-such-parent",
        "train_steps": 3,
        "build": {"space": "huge"},
        "search": {"objective": "accuracy", "constraints": ["runtime_ms<=50%", "speed=fast"]},
        "export_points": [0, 1],
    }
    with pytest.raises(RequestError) as caught:
        PipelineRequest.from_dict(body)
    locs = {loc for loc, _ in caught.value.problems}
    assert locs == {
        ("train_steps",),
        ("build", "space"),
        ("search", "objective"),
        ("search", "constraints", 1),
        ("export_points",),
    }
    with pytest.raises(RequestError, match="never a path"):
        PipelineRequest(parent="../etc")
    (tmp_path / "parents" / "mine").mkdir(parents=True)
    (tmp_path / "parents" / "mine" / "config.json").write_text("{}")
    assert input_problems("mine", None, tmp_path / "parents", tmp_path / "corpora") == []
    problems = dict(input_problems("other", "text", tmp_path / "parents", tmp_path / "corpora", where="ROOT/"))
    assert "ROOT/parents/" in problems[("parent",)] and "mine" in problems[("parent",)]
    assert "ROOT/corpora/" in problems[("corpus",)]
