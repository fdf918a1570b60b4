"""Synchronous search endpoints (frontier, solve) and views of finished searches (architecture, export),
cross-checked against brute force and the search engine itself."""

from __future__ import annotations

import io
import itertools
import json
import tarfile

from fastapi.testclient import TestClient

from service import db
from service.settings import Settings
from tests.service.fixtures import make_library, search_job, upload
from workers.runner import Worker


def _brute_force(lib, max_runtime: float) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for combo in itertools.product(*(layer.variants for layer in lib.layers)):
        if sum(v.scenario_costs["pre"]["runtime_ms"] for v in combo) <= max_runtime + 1e-9:
            best = min(best, sum(v.metrics["kl_div"] for v in combo))
    return best


def test_solve_is_optimal_against_brute_force(client: TestClient) -> None:
    lib = make_library(n_layers=3, seed=11)
    row = upload(client, lib, "brute-3")
    parent_runtime = sum(layer.parent.scenario_costs["pre"]["runtime_ms"] for layer in lib.layers)
    r = client.post(
        f"/api/v1/libraries/{row['id']}/solve", json={"objective": "kl_div", "constraints": ["runtime_ms<=55%"]}
    )
    assert r.status_code == 200, r.text
    point = r.json()["point"]
    assert abs(point["objective"] - _brute_force(lib, 0.55 * parent_runtime)) < 1e-9
    chosen = [lib.layers[i].variants[j] for i, j in enumerate(point["choices"])]
    assert sum(v.scenario_costs["pre"]["runtime_ms"] for v in chosen) <= 0.55 * parent_runtime + 1e-9
    # a second, independent backend agrees
    other = client.post(
        f"/api/v1/libraries/{row['id']}/solve", json={"constraints": ["runtime_ms<=55%"], "solver": "cbc"}
    ).json()
    assert other["solver"] == "cbc" and abs(other["point"]["objective"] - point["objective"]) < 1e-6


def test_infeasible_solve_is_422_naming_the_binding_constraint(client: TestClient, small_library: dict) -> None:
    r = client.post(f"/api/v1/libraries/{small_library['id']}/solve", json={"constraints": ["runtime_ms<=1%"]})
    assert r.status_code == 422
    problem = r.json()["detail"][0]
    assert "runtime_ms" in problem["msg"] and problem["minimum"] is not None and problem["minimum"] > 0


def test_solve_reports_every_bad_field_at_once(client: TestClient, small_library: dict) -> None:
    r = client.post(
        f"/api/v1/libraries/{small_library['id']}/solve",
        json={"objective": "bleu", "scenario": "mars", "constraints": ["watts<=3", "runtime_ms<<1"]},
    )
    assert r.status_code == 422
    locs = {tuple(p["loc"]) for p in r.json()["detail"]}
    assert {("body", "objective"), ("body", "scenario"), ("body", "constraints", 0), ("body", "constraints", 1)} <= locs


def test_frontier_endpoint_matches_the_engine_and_is_cached(
    client: TestClient, settings: Settings, small_library: dict
) -> None:
    from puzzle import search

    url = f"/api/v1/libraries/{small_library['id']}/frontier"
    r = client.get(url, params={"objective": "kl_div", "axis": "runtime_ms"})
    assert r.status_code == 200, r.text
    body = r.json()
    reference = search.frontier(make_library(), "kl_div", "runtime_ms", ()).to_dict()["points"]
    assert [p["choices"] for p in body["points"]] == [list(s["choices"]) for s in reference]
    assert body["axis"] == "runtime_ms" and body["scenario"] == "pre" and len(body["points"]) >= 3
    lib = make_library()
    for p in body["points"]:  # costs re-summed independently from the library's variants
        chosen = [lib.layers[i].variants[j] for i, j in enumerate(p["choices"])]
        assert abs(p["costs"]["runtime_ms"] - sum(v.scenario_costs["pre"]["runtime_ms"] for v in chosen)) < 1e-9
        assert abs(p["costs"]["num_params"] - sum(v.costs["num_params"] for v in chosen)) < 1e-6
        assert abs(p["objective"] - sum(v.metrics["kl_div"] for v in chosen)) < 1e-9
    objectives = [p["objective"] for p in body["points"]]
    assert objectives == sorted(objectives, reverse=True)  # cheaper runtime, worse quality: a real trade-off
    assert r.headers["content-encoding"] == "gzip"  # pre-compressed copy for clients that accept it
    again = client.get(
        url, params={"objective": "kl_div", "axis": "runtime_ms"}, headers={"Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in again.headers and again.content == r.content
    with db.engine_for(db.normalise_url(settings.database_url)).connect() as conn:
        from sqlalchemy import text

        assert (
            conn.execute(
                text("SELECT count(*) FROM frontier_cache WHERE library_id = :i"), {"i": small_library["id"]}
            ).scalar()
            >= 1
        )
    xs = [
        p["costs"]["runtime_ms"] if "runtime_ms" in p["costs"] else p["costs"]["runtime_ms@pre"] for p in body["points"]
    ]
    lo, hi = xs[1], xs[-2]
    bounded = client.get(url, params={"objective": "kl_div", "axis": "runtime_ms", "lo": lo, "hi": hi}).json()
    assert [p["choices"] for p in bounded["points"]] == [
        p["choices"] for p, x in zip(body["points"], xs, strict=True) if lo <= x <= hi
    ]
    columns = client.get(url, params={"objective": "kl_div", "axis": "runtime_ms", "view": "columns"}).json()
    assert columns["axis_values"] == xs and columns["objectives"] == [p["objective"] for p in body["points"]]
    assert columns["summaries"] == [p["summary"] for p in body["points"]] and "points" not in columns
    bad = client.get(url, params={"objective": "kl_div", "axis": "watts", "scenario": "mars"})
    assert bad.status_code == 422 and {tuple(p["loc"]) for p in bad.json()["detail"]} == {
        ("query", "axis"),
        ("query", "scenario"),
    }


def test_architecture_and_export_of_a_finished_job(client: TestClient, settings: Settings, small_library: dict) -> None:
    job_id = client.post("/api/v1/jobs", json=search_job(small_library["id"], constraints=["runtime_ms<=60%"])).json()[
        "id"
    ]
    assert client.get(f"/api/v1/jobs/{job_id}/architecture").status_code == 409  # not finished yet
    Worker(settings).run_once()
    result = client.get(f"/api/v1/jobs/{job_id}/result").json()
    arch = client.get(f"/api/v1/jobs/{job_id}/architecture", params={"point": 0}).json()
    lib = make_library()
    assert len(arch["layers"]) == lib.n_layers and arch["objective"] == result["points"][0]["objective"]
    for view, j in zip(arch["layers"], result["points"][0]["choices"], strict=True):
        variant = lib.layers[view["index"]].variants[j]
        assert view["variant"] == variant.name
        spec = variant.spec
        assert view["attention"]["kind"] == spec.attention.kind
        if spec.attention.kind == "gqa":
            assert view["attention"]["n_kv_heads"] == spec.attention.n_kv_heads
        assert view["ffn"]["kind"] == spec.ffn.kind
        if spec.ffn.kind == "mlp":
            assert view["ffn"]["intermediate_size"] == spec.ffn.intermediate_size
    assert len(arch["block_configs"]) == lib.n_layers
    assert client.get(f"/api/v1/jobs/{job_id}/architecture", params={"point": 5}).status_code == 422

    r = client.get(f"/api/v1/jobs/{job_id}/export")
    assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
    with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
        names = sorted(tar.getnames())
        assert names == [
            f"puzzle-architecture/{n}"
            for n in ("README.txt", "architecture.json", "block_configs.json", "solution.json")
        ]
        exported = json.load(tar.extractfile("puzzle-architecture/architecture.json"))  # type: ignore[arg-type]
        assert exported["layers"] == arch["layers"]
        assert "export" in tar.extractfile("puzzle-architecture/README.txt").read().decode()  # type: ignore[union-attr]
