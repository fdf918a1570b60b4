"""``ElasticRequest.from_dict``: a request from its fields by name (a REST body, a job spec), every problem at once."""

from __future__ import annotations

import pytest

from puzzle.elastic import ElasticRequest, ElasticSpace, ElasticTrainConfig
from puzzle.search.request import RequestError


def test_from_dict_takes_the_fields_by_name_and_nulls_as_defaults_but_for_any_target() -> None:
    request = ElasticRequest.from_dict(
        {
            "parent": "p",
            "out": "o",
            "budgets": [0.4, 0.8],
            "space": {"ffn": [1, 0.5], "mamba": None},
            "train": {"tokens": 512, "batch": 4, "lr": None},
            "selection": None,
            "kind": "elastic",  # not a field: ignored
        }
    )
    expected = ElasticRequest(
        parent="p",
        out="o",
        budgets=(0.8, 0.4),
        space=ElasticSpace(ffn=(1.0, 0.5)),
        train=ElasticTrainConfig(tokens=512, batch=4),
    )
    assert request == expected and request.target == "vllm"  # the default target, as pipeline jobs build for
    assert ElasticRequest.from_dict({"parent": "p", "out": "o", "budgets": [0.5], "target": None}).target is None


def test_from_dict_lists_every_problem_at_its_field() -> None:
    with pytest.raises(RequestError) as info:
        ElasticRequest.from_dict(
            {
                "budgets": [0.5, 1.5],
                "space": {"ffn": [0.5], "depth": [1]},
                "train": {"lr": -1},
                "selection": "greedy",
                "cost": "watts",
                "objective": "bleu",
                "holdout_rows": 0,
                "held_out_fraction": 1.0,
                "target": "tpu",
            }
        )
    problems = dict(info.value.problems)
    assert set(problems) == {
        ("parent",),
        ("out",),
        ("budgets",),
        ("space",),
        ("train",),
        ("selection",),
        ("cost",),
        ("objective",),
        ("holdout_rows",),
        ("held_out_fraction",),
        ("target",),
    }
    space = [msg for loc, msg in info.value.problems if loc == ("space",)]
    assert len(space) == 2 and any("depth" in m for m in space) and any("include 1.0" in m for m in space)
    assert "1.5" in problems[("budgets",)] and "kl_div" in problems[("objective",)]


def test_requests_that_would_fail_late_fail_at_once() -> None:
    """A router with nothing to train on, or a latency bound on slices whose latency is never measured."""
    with pytest.raises(RequestError) as info:
        ElasticRequest(parent="p", budgets=(0.5,), out="o", selection="router", train=ElasticTrainConfig(tokens=0))
    assert info.value.problems == [
        (("train", "tokens"), "selection router trains the router: give distillation tokens")
    ]
    with pytest.raises(RequestError, match="measure_latency"):
        ElasticRequest(parent="p", budgets=(0.5,), out="o", cost="runtime_ms")
    assert ElasticRequest(parent="p", budgets=(0.5,), out="o", cost="runtime_ms", measure_latency=True).cost
