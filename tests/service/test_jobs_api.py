"""Jobs over REST: submit (202 + Location, idempotency), list (cursor, filters), get, cancel, events (polling
and SSE resume), 404 / 422 / 401."""

from __future__ import annotations

import json
import threading
from typing import Any

from fastapi.testclient import TestClient
from pydantic import SecretStr

from service.main import create_app
from service.settings import Settings
from tests.service.fixtures import search_job


def _submit(client: TestClient, body: dict[str, Any], **headers: str) -> Any:
    return client.post("/api/v1/jobs", json=body, headers=headers)


def test_submit_is_202_with_location_and_a_queued_job(client: TestClient, small_library: dict) -> None:
    r = _submit(client, search_job(small_library["id"], constraints=["runtime_ms<=70%"]))
    assert r.status_code == 202, r.text
    job = r.json()
    assert r.headers["location"] == f"/api/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["attempts"] == 0 and job["kind"] == "search"
    assert job["spec"]["constraints"] == ["runtime_ms<=70%"] and job["library_id"] == small_library["id"]
    got = client.get(r.headers["location"])
    assert got.status_code == 200 and got.json() == job
    events = client.get(f"/api/v1/jobs/{job['id']}/events").json()
    assert [(e["type"], e["data"]) for e in events["data"]] == [("state", {"state": "queued"})]


def test_idempotency_key_replays_and_conflicts(client: TestClient, small_library: dict) -> None:
    body = search_job(small_library["id"], constraints=["num_params<=60%"])
    first = _submit(client, body, **{"Idempotency-Key": "k-1"})
    replay = _submit(client, body, **{"Idempotency-Key": "k-1"})
    assert first.status_code == replay.status_code == 202
    assert replay.json()["id"] == first.json()["id"] and replay.headers["idempotent-replayed"] == "true"
    assert replay.headers["location"] == first.headers["location"]
    other = _submit(client, {**body, "constraints": ["num_params<=50%"]}, **{"Idempotency-Key": "k-1"})
    assert other.status_code == 409 and "different request body" in other.json()["detail"]
    assert len(client.get("/api/v1/jobs").json()["data"]) == 1


def test_concurrent_submits_with_one_key_create_one_job(client: TestClient, small_library: dict) -> None:
    body = search_job(small_library["id"])
    ids: list[int] = []
    barrier = threading.Barrier(8)

    def go() -> None:
        barrier.wait()
        r = _submit(client, body, **{"Idempotency-Key": "race"})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])

    threads = [threading.Thread(target=go) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 8 and len(set(ids)) == 1
    assert len(client.get("/api/v1/jobs").json()["data"]) == 1


def test_list_pagination_and_filters(client: TestClient, small_library: dict) -> None:
    ids = [_submit(client, search_job(small_library["id"], n=i + 1)).json()["id"] for i in range(7)]
    for job_id in ids[:2]:
        assert client.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 202
    seen, cursor = [], None
    while True:
        page = client.get("/api/v1/jobs", params={"limit": 3, **({"cursor": cursor} if cursor else {})}).json()
        assert len(page["data"]) <= 3
        seen += [j["id"] for j in page["data"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == sorted(ids, reverse=True)
    cancelled = client.get("/api/v1/jobs", params={"state": "cancelled"}).json()["data"]
    assert sorted(j["id"] for j in cancelled) == ids[:2]
    both = client.get("/api/v1/jobs", params=[("state", "cancelled"), ("state", "queued")]).json()["data"]
    assert len(both) == 7
    assert client.get("/api/v1/jobs", params={"kind": "pipeline"}).json()["data"] == []
    assert client.get("/api/v1/jobs", params={"cursor": "not-a-cursor"}).status_code == 422
    assert client.get("/api/v1/jobs", params={"state": "paused"}).status_code == 422


def test_cancel_queued_and_finished_jobs(client: TestClient, small_library: dict) -> None:
    job = _submit(client, search_job(small_library["id"])).json()
    r = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["state"] == "cancelled" and r.json()["finished_at"]
    again = client.post(f"/api/v1/jobs/{job['id']}/cancel")
    assert again.status_code == 409 and "already cancelled" in again.json()["detail"]
    assert client.get(f"/api/v1/jobs/{job['id']}/result").status_code == 409
    types = [e["data"].get("state") for e in client.get(f"/api/v1/jobs/{job['id']}/events").json()["data"]]
    assert types == ["queued", "cancelled"]


def test_unknown_ids_are_404(client: TestClient) -> None:
    for method, path in [
        ("get", "/api/v1/jobs/4242"),
        ("post", "/api/v1/jobs/4242/cancel"),
        ("get", "/api/v1/jobs/4242/events"),
        ("get", "/api/v1/jobs/4242/events/stream"),
        ("get", "/api/v1/jobs/4242/result"),
        ("get", "/api/v1/jobs/4242/architecture"),
        ("get", "/api/v1/jobs/4242/export"),
    ]:
        r = getattr(client, method)(path)
        assert r.status_code == 404, (path, r.status_code, r.text)
        assert "no job with id 4242" in r.json()["detail"]


def test_422_lists_every_problem(client: TestClient, small_library: dict) -> None:
    r = _submit(client, {"kind": "search", "mode": "walk", "n": 0, "surprise": True})
    assert r.status_code == 422
    locs = {tuple(p["loc"][-1:]) for p in r.json()["detail"]}
    assert {("library_id",), ("mode",), ("n",), ("surprise",)} <= locs
    # problems only the library can reveal, all at once
    body = search_job(
        small_library["id"],
        mode="frontier",
        objective="bleu",
        axis="watts",
        scenario="mars",
        constraints=["runtime_ms<<3", "num_params<=50%"],
    )
    r = _submit(client, body)
    assert r.status_code == 422
    detail = {tuple(p["loc"]): p["msg"] for p in r.json()["detail"]}
    assert set(detail) == {("body", "scenario"), ("body", "objective"), ("body", "axis"), ("body", "constraints", 0)}
    assert "kl_div" in detail[("body", "objective")] and "runtime_ms" in detail[("body", "axis")]
    r = _submit(client, search_job(999999))
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "library_id"]
    r = _submit(client, search_job(small_library["id"], mode="frontier"))
    assert r.status_code == 422 and "needs 'axis'" in r.json()["detail"][0]["msg"]
    r = client.post("/api/v1/jobs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


def test_pipeline_submission_lists_every_problem(client: TestClient, settings: Settings) -> None:
    (settings.artifacts / "parents").mkdir(parents=True, exist_ok=True)
    body = {
        "kind": "pipeline",
        "parent": "no-such-parent",
        "train_steps": 3,
        "corpus": "no-such-corpus",
        "search": {"objective": "accuracy", "constraints": ["runtime_ms<=50%", "speed=fast"]},
    }
    r = _submit(client, body)
    assert r.status_code == 422, r.text
    problems = {tuple(p["loc"]): p["msg"] for p in r.json()["detail"]}
    assert set(problems) == {
        ("body", "parent"),
        ("body", "train_steps"),
        ("body", "corpus"),
        ("body", "search", "objective"),
        ("body", "search", "constraints", 1),
    }
    assert "tiny-llama" in problems[("body", "parent")] and "PUZZLE_ARTIFACTS/parents/" in problems[("body", "parent")]
    assert "kl_div" in problems[("body", "search", "objective")]
    # a parent or corpus is a name, never a path
    for bad in ("../etc", "/etc/passwd", "a/b", ".hidden"):
        r = _submit(client, {"kind": "pipeline", "parent": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "pipeline", "parent"], bad
        r = _submit(client, {"kind": "pipeline", "parent": "tiny-llama", "corpus": bad})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"][:3] == ["body", "pipeline", "corpus"], bad
    # a solve gives one point: only point 0 can be exported
    r = _submit(client, {"kind": "pipeline", "parent": "tiny-llama", "export_points": [0, 1]})
    assert r.status_code == 422 and "below 1" in r.json()["detail"][0]["msg"]
    r = _submit(client, {"kind": "pipeline", "parent": "tiny-llama", "build": {"space": "huge"}})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][-1] == "space"
    assert client.get("/api/v1/jobs").json()["data"] == []
    # a preset parent with defaults is accepted and queued (no library yet)
    r = _submit(client, {"kind": "pipeline", "parent": "tiny-hybrid", "train_steps": 5})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["state"] == "queued" and job["library_id"] is None
    assert job["spec"]["build"]["space"] == "demo" and job["spec"]["export_points"] == [0]


def test_elastic_submission_lists_every_problem_and_stores_nothing(client: TestClient, settings: Settings) -> None:
    (settings.artifacts / "parents").mkdir(parents=True, exist_ok=True)
    body = {
        "kind": "elastic",
        "parent": "no-such-parent",
        "train_steps": 3,
        "corpus": "no-such-corpus",
        "budgets": [0.5, 1.5],
        "selection": "router",
        "train": {"tokens": 0},
        "cost": "runtime_ms",
        "objective": "bleu",
        "space": {"ffn": [0.5, 0.25]},
    }
    r = _submit(client, body)
    assert r.status_code == 422, r.text
    problems = {tuple(p["loc"]): p["msg"] for p in r.json()["detail"]}
    assert set(problems) == {
        ("body", "parent"),
        ("body", "train_steps"),
        ("body", "corpus"),
        ("body", "budgets"),
        ("body", "train", "tokens"),
        ("body", "cost"),
        ("body", "objective"),
        ("body", "space"),
    }
    assert "tiny-llama" in problems[("body", "parent")] and "PUZZLE_ARTIFACTS/parents/" in problems[("body", "parent")]
    assert "1.5" in problems[("body", "budgets")] and "measure_latency" in problems[("body", "cost")]
    assert "router" in problems[("body", "train", "tokens")] and "include 1.0" in problems[("body", "space")]
    # the body's own shape first (pydantic): unknown fields, no budgets, a fraction out of range
    r = _submit(client, {"kind": "elastic", "parent": "tiny-llama", "budgets": [], "space": {"ffn": [2]}, "why": 1})
    assert r.status_code == 422
    assert {tuple(p["loc"][-2:]) for p in r.json()["detail"]} >= {("elastic", "budgets"), ("elastic", "why")}
    # a corpus the family could not split names the elastic job's own knob
    corpora = settings.artifacts / "corpora"
    corpora.mkdir(parents=True, exist_ok=True)
    (corpora / "empty.txt").write_text("")
    r = _submit(client, {"kind": "elastic", "parent": "tiny-llama", "budgets": [0.5], "corpus": "empty.txt"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "corpus"], r.text
    assert client.get("/api/v1/jobs").json()["data"] == []
    # a preset parent with defaults is queued; its spec is the body (nulls: the request's defaults)
    r = _submit(client, {"kind": "elastic", "parent": "tiny-hybrid", "budgets": [0.4, 0.8], "train_steps": 5})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["kind"] == "elastic" and job["state"] == "queued" and job["library_id"] is None
    assert job["spec"]["budgets"] == [0.4, 0.8] and job["spec"]["selection"] is None and job["spec"]["export"]
    assert [j["id"] for j in client.get("/api/v1/jobs", params={"kind": "elastic"}).json()["data"]] == [job["id"]]


def test_writes_need_the_bearer_token_when_configured(settings: Settings, small_library: dict) -> None:
    secured = settings.model_copy(update={"api_token": SecretStr("s3cret")})
    with TestClient(create_app(secured)) as c:
        body = search_job(small_library["id"])
        r = c.post("/api/v1/jobs", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        r = c.post("/api/v1/jobs", json=body, headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401 and "not valid" in r.json()["detail"]
        r = c.post("/api/v1/libraries", json={"name": "x", "data": {}})
        assert r.status_code == 401
        ok = c.post("/api/v1/jobs", json=body, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 202
        job_id = ok.json()["id"]
        assert c.post(f"/api/v1/jobs/{job_id}/cancel").status_code == 401
        assert c.get(f"/api/v1/jobs/{job_id}").status_code == 200  # reads stay open
        assert c.get("/api/v1/jobs").status_code == 200
        assert c.post(f"/api/v1/jobs/{job_id}/cancel", headers={"Authorization": "Bearer s3cret"}).status_code == 202


def _sse(client: TestClient, path: str, **headers: str) -> list[dict[str, Any]]:
    events, current = [], {}
    with client.stream("GET", path, headers=headers) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if not line:
                if "data" in current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(": ")
                current[key] = value
    return events


def test_events_polling_and_sse_resume(client: TestClient, small_library: dict) -> None:
    job = _submit(client, search_job(small_library["id"])).json()
    client.post(f"/api/v1/jobs/{job['id']}/cancel")
    everything = client.get(f"/api/v1/jobs/{job['id']}/events").json()
    first_id = everything["data"][0]["id"]
    newer = client.get(f"/api/v1/jobs/{job['id']}/events", params={"after": first_id}).json()
    assert [e["id"] for e in newer["data"]] == [e["id"] for e in everything["data"][1:]]
    assert client.get(f"/api/v1/jobs/{job['id']}/events", params={"after": everything["last_id"]}).json()["data"] == []

    stream = _sse(client, f"/api/v1/jobs/{job['id']}/events/stream")  # ends: the job is finished
    assert [int(e["id"]) for e in stream] == [e["id"] for e in everything["data"]]
    assert [e["event"] for e in stream] == ["state", "state"]
    assert json.loads(stream[-1]["data"])["data"]["state"] == "cancelled"
    resumed = _sse(client, f"/api/v1/jobs/{job['id']}/events/stream", **{"Last-Event-ID": str(first_id)})
    assert [int(e["id"]) for e in resumed] == [e["id"] for e in everything["data"][1:]]
    bad = client.get(f"/api/v1/jobs/{job['id']}/events/stream", headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 422
