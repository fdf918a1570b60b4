"""Deployment targets in the search: a target's unloadable variants are never chosen, by any mode or backend."""

from __future__ import annotations

import pytest

from puzzle.pipeline.request import PipelineRequest
from puzzle.search import Architecture, run_search
from puzzle.search.problem import parse_constraint
from puzzle.search.request import RequestError, SearchRequest
from puzzle.targets import unloadable_variants
from tests.search.synthetic import decoupled_library


def _library():
    return decoupled_library(n_layers=6, n_attention=4, n_ffn=6, seed=3)


def _chosen_bad(library, choices, target: str) -> set[tuple[int, str]]:
    names = Architecture(tuple(choices)).names(library)
    return {(i, n) for i, n in enumerate(names)} & unloadable_variants(library, target)


@pytest.mark.parametrize("solver", [None, "cpsat", "highs"])
def test_solve_with_a_target_never_chooses_what_it_cannot_load(solver) -> None:
    library = _library()
    bad = unloadable_variants(library, "sglang")  # FFN widths off the ffn_mult grid of 256
    assert bad, "the synthetic library must hold variants sglang cannot load"
    budget = (parse_constraint("num_params<=70%"),)  # forces FFN cuts
    free = run_search(library, SearchRequest(constraints=budget, solver=solver))
    assert _chosen_bad(library, free.points[0].arch.choices, "sglang")  # without a target it picks them
    bound = run_search(library, SearchRequest(constraints=budget, solver=solver, target="sglang"))
    choices = bound.points[0].arch.choices
    assert not _chosen_bad(library, choices, "sglang")
    assert bound.points[0].objective >= free.points[0].objective - 1e-9  # a restriction cannot do better
    assert bound.to_dict()["constraints"] == ["num_params<=70%"]  # the user's constraints, as given


def test_frontier_and_pool_with_a_target_stay_loadable() -> None:
    library = _library()
    front = run_search(library, SearchRequest(mode="frontier", axis="runtime_ms", target="sglang"))
    assert front.points and all(not _chosen_bad(library, p.arch.choices, "sglang") for p in front.points)
    pool = run_search(
        library,
        SearchRequest(
            mode="diverse", n=3, diversity=1, constraints=(parse_constraint("num_params<=80%"),), target="sglang"
        ),
    )
    assert all(not _chosen_bad(library, p.arch.choices, "sglang") for p in pool.points)


def test_unknown_targets_are_refused_with_their_location() -> None:
    with pytest.raises(RequestError) as exc:
        SearchRequest.from_dict({"target": "tgi"})
    assert exc.value.problems[0][0] == ("target",) and "tgi" in exc.value.problems[0][1]
    with pytest.raises(RequestError) as exc:
        PipelineRequest.from_dict({"parent": "tiny-llama", "target": "tgi"})
    assert any(loc == ("target",) for loc, _ in exc.value.problems)


def test_a_pipeline_searches_for_its_target_unless_the_search_names_one() -> None:
    request = PipelineRequest.from_dict({"parent": "tiny-llama"})
    assert request.target == "vllm" and request.search_request.target == "vllm"
    assert PipelineRequest.from_dict(request.to_dict()) == request
    own = PipelineRequest.from_dict({"parent": "tiny-llama", "search": {"target": "trtllm"}})
    assert own.search_request.target == "trtllm"
    anything = PipelineRequest.from_dict({"parent": "tiny-llama", "target": None})
    assert anything.search_request.target is None


def test_a_solver_time_out_is_reported_as_one_by_the_cli_and_the_api(tmp_path) -> None:
    """Not as infeasible: the CLI exits 3 with the time-out line, the API answers 504 with the bound."""
    from puzzle.cli import TIMEOUT, main
    from puzzle.errors import SolveTimeout
    from service.api.errors import puzzle_error_response

    library = decoupled_library(n_layers=40, n_attention=6, n_ffn=30, seed=1)
    library.save(tmp_path / "lib")
    code = main(
        ["search", "--library", str(tmp_path / "lib"), "--max", "runtime_ms=40%", "--max", "memory_mib=50%",
         "--solver", "cbc", "--time-limit", "0.001"]
    )  # fmt: skip
    assert code == TIMEOUT
    response = puzzle_error_response(SolveTimeout("cbc", 0.001, 1.5))
    assert response.status_code == 504 and b'"bound":1.5' in response.body
