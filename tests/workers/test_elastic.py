"""Elastic jobs end to end: real PostgreSQL, the real worker, a tiny directory parent and tiny token counts.

parent (a Hugging Face directory under PUZZLE_ARTIFACTS/parents) -> elastic family (nest, score every nested slice,
MIP per budget, multi-budget distillation) -> each budget sliced into a Hugging Face child, served as tar.gz."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from puzzle.child.export import read_manifest
from puzzle.elastic import load_elastic, read_summary
from puzzle.elastic.model import n_params
from puzzle.model import load_pretrained
from service.settings import Settings
from workers.runner import Worker

pytestmark = pytest.mark.usefixtures("no_earlier_work")

# 2 layers scored on 8 held-out rows of 32 tokens; 4 distillation steps of 4 x 32 tokens
TINY = {
    "budgets": [0.6, 0.8],
    "train": {"tokens": 512, "batch": 4, "seq_len": 32},
    "calibration_rows": 4,
    "holdout_rows": 8,
    "score_seq_len": 32,
    "held_out_fraction": 0.3,
}


@pytest.fixture(autouse=True)
def _one_thread() -> Any:
    """Tiny models run fastest on one thread (tests/elastic/conftest.py says why)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _progress(events: list[dict[str, Any]]) -> dict[str, list[tuple[int, int]]]:
    out: dict[str, list[tuple[int, int]]] = {}
    for e in events:
        if e["type"] == "progress":
            out.setdefault(e["data"]["stage"], []).append((e["data"]["done"], e["data"]["total"]))
    return out


def test_elastic_job_builds_the_family_and_exports_each_budget(
    client: TestClient, settings: Settings, tiny_inputs: tuple[str, str], tmp_path: Path
) -> None:
    parent, corpus = tiny_inputs
    r = client.post("/api/v1/jobs", json={"kind": "elastic", "parent": parent, "corpus": corpus, **TINY})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert Worker(settings, worker_id="w-elastic").run_once() == job_id
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job["error"]

    # every stage reported through the job context, each ending complete, in order
    events = client.get(f"/api/v1/jobs/{job_id}/events").json()["data"]
    progress = _progress(events)
    assert list(progress) == ["parent", "elastic/score", "elastic/distill", "export"]
    assert progress["elastic/score"][-1] == (2, 2)  # one step per layer of the parent
    assert progress["elastic/distill"][-1] == (4, 4)  # 512 tokens / (4 x 32)
    assert progress["export"][-1] == (2, 2)
    assert any(e["type"] == "log" and e["data"]["message"].startswith("elastic: nesting") for e in events)

    # the result is the family the folder holds: the MIP's configuration and totals per budget, largest first
    result = client.get(f"/api/v1/jobs/{job_id}/result").json()
    info, family = result["elastic"], result["family"]
    folder = settings.artifacts / info["dir"]
    summary = read_summary(folder)
    assert (info["selection"], info["cost"], info["objective"], info["target"]) == (
        "mip",
        "num_params",
        "kl_div",
        "vllm",
    )
    assert info["parent"] == {"path": f"parents/{parent}"} and info["training"]["steps"] == 4
    assert info["parent_perplexity"] == summary["parent_perplexity"] > 1
    assert info["perplexity_on"] == {"split": "held-out", "rows": 8, "seq_len": 32, "tokens": 256}
    assert [m["budget"] for m in family] == [0.8, 0.6]
    for member in family:
        mip = summary["mip"][f"{member['budget']:g}"]
        assert member["layers"] == mip["layers"] == summary["budgets"][f"{member['budget']:g}"]["layers"]
        assert member["objective"] == pytest.approx(mip["objective"])
        assert member["perplexity"] == summary["budgets"][f"{member['budget']:g}"]["perplexity"] > 1
        assert member["cost"] == pytest.approx(mip["totals"]["num_params"]) == member["params"]
        assert member["cost_ratio"] <= member["budget"] and member["params"] < summary["parent_params"]
    assert family[0]["params"] > family[1]["params"]

    # each budget downloads as a Hugging Face child that computes what the family computes at that budget
    elastic = load_elastic(folder)
    ids = torch.randint(0, elastic.arch.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
    for member in family:
        r = client.get(f"/api/v1/jobs/{job_id}/export", params={"budget": member["budget"]})
        assert r.status_code == 200 and r.headers["content-type"] == "application/gzip", r.text
        assert f"budget{member['budget']:g}-hf.tar.gz" in r.headers["content-disposition"]
        with tarfile.open(fileobj=io.BytesIO(r.content), mode="r:gz") as tar:
            tar.extractall(tmp_path / f"b{member['budget']}", filter="data")
        (child_dir,) = (tmp_path / f"b{member['budget']}").iterdir()
        assert {"config.json", "tokenizer.json", "puzzle_manifest.json"} <= {p.name for p in child_dir.iterdir()}
        assert read_manifest(child_dir)["loadable_by"] and read_manifest(child_dir)["target"] == "vllm"
        child = load_pretrained(child_dir).eval()
        assert n_params(child) == member["params"]
        with torch.no_grad():
            torch.testing.assert_close(child(ids), elastic(ids, budget=member["budget"]), rtol=0, atol=1e-5)

    # a budget the family lacks, or none, is a 422 naming its budgets; an elastic job has no architecture points
    for params in ({"budget": 0.7}, {}):
        r = client.get(f"/api/v1/jobs/{job_id}/export", params=params)
        assert r.status_code == 422 and "0.8, 0.6" in r.json()["detail"][0]["msg"], r.text
    r = client.get(f"/api/v1/jobs/{job_id}/architecture")
    assert r.status_code == 422 and "elastic" in r.json()["detail"][0]["msg"]


def test_a_cancelled_elastic_job_leaves_no_work_folder(
    client: TestClient, settings: Settings, tiny_inputs: tuple[str, str]
) -> None:
    """The retention rule of pipeline jobs (service.pipelines) holds for elastic jobs: cancel deletes the folder."""
    parent, corpus = tiny_inputs
    job_id = client.post("/api/v1/jobs", json={"kind": "elastic", "parent": parent, "corpus": corpus, **TINY}).json()[
        "id"
    ]
    worker = Worker(settings, worker_id="w-elastic-cancel")
    job = worker.claim()
    assert job is not None and job.id == job_id
    work = settings.artifacts / "pipelines" / f"job-{job_id}"
    (work / "elastic").mkdir(parents=True)  # what an interrupted build leaves
    assert client.post(f"/api/v1/jobs/{job_id}/cancel").json()["cancel_requested"]
    assert worker.execute(job) == "cancelled"
    assert not work.exists()


def test_elastic_job_on_a_preset_parent_with_the_router(
    client: TestClient, settings: Settings, tiny_inputs: tuple[str, str]
) -> None:
    """A preset parent is trained in the job's work folder first (2 steps here); the router picks each budget."""
    _, corpus = tiny_inputs
    body = {"kind": "elastic", "parent": "tiny-llama", "train_steps": 2, "corpus": corpus, "selection": "router"}
    body |= {**TINY, "budgets": [0.7], "target": None, "space": {"ffn_multiple": 64}}
    job_id = client.post("/api/v1/jobs", json=body).json()["id"]
    assert Worker(settings, worker_id="w-elastic-router").run_once() == job_id
    job = client.get(f"/api/v1/jobs/{job_id}").json()
    assert job["state"] == "succeeded", job["error"]
    progress = _progress(client.get(f"/api/v1/jobs/{job_id}/events").json()["data"])
    assert list(progress) == ["parent/train", "elastic/score", "elastic/distill", "export"]
    assert progress["parent/train"][-1] == (2, 2) and progress["elastic/score"][-1] == (8, 8)
    result = client.get(f"/api/v1/jobs/{job_id}/result").json()
    info, (member,) = result["elastic"], result["family"]
    assert info["parent"] == {"path": f"pipelines/job-{job_id}/parent", "preset": "tiny-llama"}
    summary = read_summary(settings.artifacts / info["dir"])
    assert info["selection"] == "router" and member["layers"] == summary["budgets"]["0.7"]["layers"]
    assert info["target"] is None and summary["space"]["ffn_multiple"] == 64
    assert all(layer["ffn"] % 64 == 0 for layer in member["layers"])
    assert member["cost_ratio"] == pytest.approx(summary["budgets"]["0.7"]["cost_ratio"])
    assert member["perplexity"] == summary["budgets"]["0.7"]["perplexity"] > 1  # the router's configuration's
    r = client.get(f"/api/v1/jobs/{job_id}/export", params={"budget": 0.7})
    assert r.status_code == 200 and len(r.content) > 0
