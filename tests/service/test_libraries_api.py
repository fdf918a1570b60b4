"""Libraries: upload (ours and NVlabs), list/get, conflicts, bad input, and nothing written outside the root."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.settings import Settings
from tests.service.fixtures import NVLABS, make_library, nvlabs_upload, upload


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_upload_list_get_and_content_addressed_storage(client: TestClient, settings: Settings) -> None:
    lib = make_library(n_layers=3, seed=7)
    created = upload(client, lib, "three-layers")
    assert created["n_layers"] == 3 and created["n_variants"] == 36 and created["digest"] == lib.digest()
    assert created["metric_keys"] == ["kl_div", "lm_loss"]
    assert "runtime_ms@pre" in created["cost_keys"] and created["default_scenario"] == "pre"
    stored = settings.artifacts / "libraries" / lib.digest() / "library.json"
    assert stored.is_file()
    got = client.get(f"/api/v1/libraries/{created['id']}")
    assert got.status_code == 200 and got.json() == created
    listed = client.get("/api/v1/libraries", params={"limit": 200}).json()["data"]
    assert created["id"] in [x["id"] for x in listed]


def test_same_name_same_content_is_a_replay_other_content_conflicts(client: TestClient) -> None:
    lib = make_library(n_layers=2, seed=1)
    first = client.post("/api/v1/libraries", json={"name": "twice", "format": "puzzle", "data": lib.to_dict()})
    again = client.post("/api/v1/libraries", json={"name": "twice", "format": "puzzle", "data": lib.to_dict()})
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == f"/api/v1/libraries/{first.json()['id']}"
    other = make_library(n_layers=2, seed=2)
    clash = client.post("/api/v1/libraries", json={"name": "twice", "format": "puzzle", "data": other.to_dict()})
    assert clash.status_code == 409 and "already exists" in clash.json()["detail"]


def test_library_pagination_walks_every_library_once(client: TestClient) -> None:
    ids = {upload(client, make_library(n_layers=2, seed=100 + i), f"page-{i}")["id"] for i in range(5)}
    seen: list[int] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/api/v1/libraries", params=params).json()
        assert len(page["data"]) <= 2
        seen += [x["id"] for x in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert ids <= set(seen) and len(seen) == len(set(seen)) and seen == sorted(seen, reverse=True)


def test_bad_uploads_are_422_with_the_reason(client: TestClient) -> None:
    broken = make_library(n_layers=2).to_dict()
    broken["layers"][1]["variants"][0]["metrics"] = {"other": 1.0}
    r = client.post("/api/v1/libraries", json={"name": "broken", "format": "puzzle", "data": broken})
    assert r.status_code == 422 and "metrics" in r.json()["detail"][0]["msg"]
    r = client.post("/api/v1/libraries", json={"name": "nv", "format": "nvlabs", "data": {"block_library": {}}})
    assert r.status_code == 422 and "missing measurement_info, parent_block_stats" in r.json()["detail"][0]["msg"]
    # every field problem at once
    r = client.post("/api/v1/libraries", json={"name": "", "format": "xml", "extra": 1})
    locs = {tuple(p["loc"]) for p in r.json()["detail"]}
    assert r.status_code == 422 and {("body", "name"), ("body", "format"), ("body", "data"), ("body", "extra")} <= locs


@pytest.mark.parametrize(
    "name", ["../../escape", "..", "/etc/passwd", "a/../../b", "..\\..\\win", "x\x00y", "%2e%2e%2fescape", ".hidden"]
)
def test_path_traversal_names_are_refused_and_write_nothing(client: TestClient, settings: Settings, name: str) -> None:
    root = settings.artifacts
    outside = root.parent
    before_out, before_in = set(os.listdir(outside)), _tree(root)
    r = client.post(
        "/api/v1/libraries", json={"name": name, "format": "puzzle", "data": make_library(2, seed=9).to_dict()}
    )
    assert r.status_code == 422
    assert set(os.listdir(outside)) == before_out and _tree(root) == before_in


def test_weights_paths_inside_a_library_cannot_escape(client: TestClient, settings: Settings) -> None:
    data = make_library(n_layers=2, seed=3).to_dict()
    data["layers"][0]["variants"][1]["weights"] = "../../../../tmp/evil.safetensors"
    outside = settings.artifacts.parent
    before = set(os.listdir(outside))
    r = client.post("/api/v1/libraries", json={"name": "evil-weights", "format": "puzzle", "data": data})
    assert r.status_code == 422 and "relative to the library folder" in r.json()["detail"][0]["msg"]
    assert set(os.listdir(outside)) == before


def test_unknown_library_is_404(client: TestClient) -> None:
    assert client.get("/api/v1/libraries/999999").status_code == 404
    assert client.get("/api/v1/libraries/999999/frontier", params={"axis": "runtime_ms"}).status_code == 404
    assert client.post("/api/v1/libraries/999999/solve", json={}).status_code == 404


@pytest.mark.skipif(not NVLABS.is_dir(), reason="shared NVlabs 70B library not present")
def test_nvlabs_70b_upload(client: TestClient, settings: Settings) -> None:
    r = client.post("/api/v1/libraries", json=nvlabs_upload("nvlabs-70b-upload"))
    assert r.status_code in (200, 201), r.text
    body = r.json()
    assert body["format"] == "nvlabs" and body["n_layers"] == 80 and body["n_variants"] == 80 * 16
    assert body["hidden_size"] == 8192 and body["scenarios"][0]["batch_size"] == 256
    assert not list((settings.artifacts / "tmp").iterdir()), "the NVlabs scratch folder is cleaned up"


def test_oversized_bodies_are_413(settings: Settings) -> None:
    from service.main import create_app

    small = settings.model_copy(update={"max_upload_bytes": 1000})
    with TestClient(create_app(small)) as c:
        r = c.post("/api/v1/libraries", json={"name": "big", "format": "puzzle", "data": make_library(2).to_dict()})
        assert r.status_code == 413 and "PUZZLE_MAX_UPLOAD_BYTES=1000" in r.json()["detail"]
