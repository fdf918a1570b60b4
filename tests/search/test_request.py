"""Typed search requests: parsed once, every problem listed with its location, lossless JSON round trip."""

from __future__ import annotations

import pytest

from puzzle.search import Architecture, RequestError, SearchRequest, run_search, solve
from puzzle.search.problem import parse_constraint
from tests.search.synthetic import random_library


def test_round_trip_keeps_every_field_and_exact_bounds() -> None:
    request = SearchRequest(
        mode="diverse",
        objective="lm_loss",
        constraints=(parse_constraint("runtime_ms<=55.5%"), parse_constraint("num_params>=1234567.25")),
        scenario="pre",
        solver="cbc",
        n=4,
        diversity=3,
        time_limit=2.5,
    )
    data = request.to_dict()
    assert data["d"] == 3 and data["constraints"] == ["runtime_ms<=55.5%", "num_params>=1234567.25"]
    assert SearchRequest.from_dict(data) == request
    # a bound str() would round (1.23457e+06) survives the trip exactly
    big = SearchRequest(constraints=(parse_constraint("num_params<=123456789"),))
    assert SearchRequest.from_dict(big.to_dict()).constraints[0].value == 123456789.0
    frontier = SearchRequest.from_dict({"mode": "frontier", "axis": "runtime_ms", "lo": 1, "hi": 2})
    assert (frontier.lo, frontier.hi) == (1.0, 2.0) and SearchRequest.from_dict(frontier.to_dict()) == frontier


def test_every_problem_is_listed_with_its_location() -> None:
    with pytest.raises(RequestError) as caught:
        SearchRequest.from_dict(
            {"mode": "walk", "constraints": ["runtime_ms<<3", "num_params<=50%"], "n": 0, "solver": "magic"}
        )
    locs = {loc for loc, _ in caught.value.problems}
    assert locs == {("mode",), ("constraints", 0), ("n",), ("solver",)}
    with pytest.raises(RequestError) as caught:
        SearchRequest.from_dict({"mode": "frontier", "lo": 3, "hi": 1})
    assert {loc for loc, _ in caught.value.problems} == {("axis",), ("lo",)}
    with pytest.raises(RequestError, match="greedy baseline gives one solution"):
        SearchRequest(mode="diverse", solver="greedy")


def test_library_names_are_checked_at_their_original_positions() -> None:
    library = random_library(5, 4, seed=1)
    data = {"objective": "bleu", "scenario": "mars", "constraints": ["x<<1", "watts<=3", "runtime_ms<=70%"]}
    with pytest.raises(RequestError) as caught:
        SearchRequest.from_dict(data, library=library)
    problems = dict(caught.value.problems)
    assert set(problems) == {("objective",), ("scenario",), ("constraints", 0), ("constraints", 1)}
    assert "watts" in problems[("constraints", 1)]
    ok = SearchRequest.from_dict({"constraints": ["runtime_ms<=70%"]}, library=library)
    assert ok.problems(library) == []


def test_dispatcher_and_architecture_agree_with_the_engine() -> None:
    library = random_library(6, 5, seed=2)
    request = SearchRequest(constraints=(parse_constraint("runtime_ms<=60%"),))
    result = run_search(library, request)
    reference = solve(library, "kl_div", ["runtime_ms<=60%"])
    (point,) = result.points
    assert point.arch.choices == reference.choices and point.objective == reference.objective
    assert point.costs == pytest.approx(reference.totals)
    names = point.arch.names(library)
    assert names == list(reference.layers) and Architecture.from_names(library, names) == point.arch
    stored = result.to_dict()
    assert stored["mode"] == "solve" and stored["constraints"] == ["runtime_ms<=60%"]
    assert stored["points"][0]["choices"] == list(reference.choices) and stored["search"]["solver"] == "dp"
