"""Pipeline jobs end to end: real PostgreSQL, the real worker, a real local Ray cluster, a tiny parent.

parent (a Hugging Face directory under PUZZLE_ARTIFACTS/parents) -> library (BLD, scoring, profiling on Ray)
-> search (a diverse pool) -> export (Hugging Face directories served as tar.gz archives)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from puzzle.child.assemble import assemble
from puzzle.library import BlockLibrary
from puzzle.library.build import load_report
from puzzle.model import load_pretrained
from service.settings import Settings
from tests.service.fixtures import REPO
from workers.runner import Worker

TINY_BUILD = {
    "space": "tiny",
    "bld_tokens": 512,
    "seq_len": 32,
    "distill_sequences": 16,
    "holdout_sequences": 6,
    "held_out_fraction": 0.3,
    "latency_repeats": 2,
}


pytestmark = pytest.mark.usefixtures("no_earlier_work")


def _progress(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for e in events:
        if e["type"] == "progress":
            out.setdefault(e["data"]["stage"], []).append((e["data"]["done"], e["data"]["total"]))
    return out


def test_pipeline_job_builds_stores_searches_and_exports(
    client: TestClient, settings: Settings, tiny_inputs: tuple[str, str], tmp_path: Path
) -> None:
    parent, corpus = tiny_inputs
    body = {
        "kind": "pipeline",
        "parent": parent,
        "corpus": corpus,
        "build": TINY_BUILD,
        "search": {"mode": "diverse", "objective": "kl_div", "constraints": ["num_params<=80%"], "n": 2, "d": 1},
        "export_points": [0, 1],
    }
    r = client.post("/api/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert Worker(settings, worker_id="w-pipe").run_once() == job_id
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job["error"]

    # every stage reported, each ending complete, in pipeline order
    events = client.get(f"/api/v1/jobs/{job_id}/events").json()["data"]
    progress = _progress(events)
    stages = ["parent", "library/prepare", "library/distill", "library/score", "library/profile"]
    stages += ["library/assemble", "search/diverse", "export"]
    assert [s for s in dict.fromkeys(e["data"]["stage"] for e in events if e["type"] == "progress")] == stages
    for stage in stages:
        done, total = progress[stage][-1]
        assert done == total > 0, (stage, progress[stage])
    assert progress["library/distill"][-1] == (2, 2)  # 2 layers x one BLD unit (FFN 50 %) in the tiny space
    assert progress["search/diverse"] == [(0, 2), (1, 2), (2, 2)]
    assert progress["export"] == [(0, 2), (1, 2), (2, 2)]

    # the built library is stored like an upload: listed, frontier served, architecture views work
    library_id = job["library_id"]
    assert library_id is not None
    row = client.get(f"/api/v1/libraries/{library_id}").json()
    assert row["n_layers"] == 2 and row["n_variants"] == 2 * 6 and "kl_div" in row["metric_keys"]
    result = client.get(f"/api/v1/jobs/{job_id}/result").json()
    info = result["pipeline"]
    assert info["library_id"] == library_id and set(info["exports"]) == {"0", "1"}
    library = BlockLibrary.load(settings.artifacts / info["library_dir"])
    assert load_report(settings.artifacts / info["library_dir"])["executor"] == "ray"
    assert library.digest() == row["digest"]
    frontier = client.get(f"/api/v1/libraries/{library_id}/frontier", params={"axis": "num_params"}).json()
    from puzzle import search

    reference = search.frontier(library, "kl_div", "num_params").to_dict()["points"]
    assert [p["choices"] for p in frontier["points"]] == [list(p["choices"]) for p in reference]
    best = search.solve(library, "kl_div", ["num_params<=80%"]).to_dict()
    assert result["points"][0]["choices"] == list(best["choices"])  # the pool starts at the optimum
    assert result["points"][0]["choices"] != result["points"][1]["choices"]
    arch = client.get(f"/api/v1/jobs/{job_id}/architecture", params={"point": 1}).json()
    assert [layer["variant"] for layer in arch["layers"]] == info["exports"]["1"]["layers"]

    # each exported point is a real Hugging Face directory that computes what the assembled child computes
    tokens = torch.randint(0, library_vocab(library), (2, 16))
    for point in (0, 1):
        r = client.get(f"/api/v1/jobs/{job_id}/export", params={"point": point})
        assert r.status_code == 200 and r.headers["content-type"] == "application/gzip"
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            tar.extractall(tmp_path / f"p{point}", filter="data")
        (folder,) = (tmp_path / f"p{point}").iterdir()
        names = {p.name for p in folder.iterdir()}
        assert {"config.json", "puzzle_manifest.json", "tokenizer.json"} <= names
        assert any(n.endswith(".safetensors") for n in names)
        layers = info["exports"][str(point)]["layers"]
        exported = load_pretrained(folder).eval()
        child = assemble(library, settings.artifacts / info["library_dir"], layers)
        with torch.no_grad():
            assert torch.allclose(exported(tokens), child(tokens), atol=1e-5, rtol=1e-5)
        specs = [layer.variant(n).spec for layer, n in zip(library.layers, layers, strict=True)]
        assert list(exported.arch.blocks) == specs


def library_vocab(library: BlockLibrary) -> int:
    return int(library.parent["arch"]["vocab_size"])


@pytest.mark.slow
def test_pipeline_job_resumes_after_its_worker_is_killed(
    client: TestClient, settings: Settings, tiny_inputs: tuple[str, str]
) -> None:
    """kill -9 of the worker process mid-build; the stale job is re-queued and a second worker finishes it,
    reusing every BLD / scoring / profiling result the first one stored."""
    parent, corpus = tiny_inputs
    build = {**TINY_BUILD, "bld_tokens": 4096}
    body = {"kind": "pipeline", "parent": parent, "corpus": corpus, "build": build, "export": False}
    job_id = client.post("/api/v1/jobs", json=body).json()["id"]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PUZZLE_DATABASE_URL": settings.database_url,
        "PUZZLE_ARTIFACTS": str(settings.artifacts),
        "PUZZLE_HEARTBEAT_S": "0.2",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "puzzle", "worker", "--once", "--id", "doomed"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its local Ray cluster dies with it
    )
    results = settings.artifacts / "pipelines" / f"job-{job_id}" / "library" / "work" / "results"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            running = client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running"
            if running and any(results.rglob("*.json")):
                break
            assert proc.poll() is None, "the worker exited before storing any result"
            time.sleep(0.05)
        else:
            pytest.fail("no BLD result stored within 120 s")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    kept = {p: p.stat().st_mtime_ns for p in results.rglob("*.json")}
    assert kept and client.get(f"/api/v1/jobs/{job_id}").json()["state"] == "running"

    time.sleep(0.5)  # the dead worker's heartbeat goes stale
    rescuer = Worker(settings.model_copy(update={"stale_after_s": 0.4}), worker_id="rescuer")
    assert rescuer.run_once() == job_id
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded" and job["attempts"] == 2 and job["worker_id"] == "rescuer", job["error"]
    assert {p: p.stat().st_mtime_ns for p in kept} == kept  # nothing finished was redone
    assert len(list(results.rglob("*.json"))) > len(kept)
    events = client.get(f"/api/v1/jobs/{job_id}/events").json()["data"]
    assert any(e["type"] == "requeued" for e in events)
    result = client.get(f"/api/v1/jobs/{job_id}/result").json()
    assert result["pipeline"]["exports"] == {} and len(result["points"]) == 1
