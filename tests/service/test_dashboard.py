"""The dashboard in headless Chromium against a real uvicorn + worker: run a frontier search from the form and
find the plotted points equal to the API's frontier; click a point for the per-layer view and its export."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from service.settings import Settings
from tests.service.fixtures import NVLABS, make_library, nvlabs_upload
from tests.service.live import serve

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="Chromium not installed at /usr/bin/chromium")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def _post(url: str, body: dict[str, Any]) -> Any:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=120) as r:
        return json.loads(r.read())


@pytest.mark.slow
def test_frontier_plot_equals_the_api_frontier(settings: Settings, pg_url: str) -> None:
    from playwright.sync_api import sync_playwright

    with serve(pg_url, settings.artifacts, workers=1) as base:
        if NVLABS.is_dir():
            library = _post(f"{base}/api/v1/libraries", nvlabs_upload("nvlabs-70b"))
        else:
            library = _post(
                f"{base}/api/v1/libraries",
                {"name": "browser-generated", "format": "puzzle", "data": make_library(8, seed=5).to_dict()},
            )
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(f"{base}/#/new")
            page.wait_for_selector(f"#f-library option[value='{library['id']}']", state="attached")
            page.select_option("#f-library", str(library["id"]))
            page.select_option("#f-mode", "frontier")
            page.select_option("#f-objective", "kl_div")
            page.select_option("#f-axis", "runtime_ms")
            page.click("#f-submit")
            page.wait_for_url("**/#/jobs/*")
            job_id = int(page.url.rsplit("/", 1)[1])
            page.wait_for_selector("#frontier-plot[data-ready='1']", timeout=240_000)
            assert page.inner_text("#job-state") == "succeeded"

            plotted = page.evaluate(
                "() => { const t = document.getElementById('frontier-plot').data[0]; return {x: t.x, y: t.y, text: t.text}; }"
            )
            result = _get(f"{base}/api/v1/jobs/{job_id}/result")
            scenario = result["scenario"]
            expected_x = [
                pt["costs"].get("runtime_ms", pt["costs"].get(f"runtime_ms@{scenario}")) for pt in result["points"]
            ]
            assert len(result["points"]) >= 2
            assert plotted["x"] == expected_x
            assert plotted["y"] == [pt["objective"] for pt in result["points"]]
            assert plotted["text"] == [pt["summary"] for pt in result["points"]]
            # the synchronous frontier endpoint gives the same frontier as the job
            direct = _get(f"{base}/api/v1/libraries/{library['id']}/frontier?objective=kl_div&axis=runtime_ms")
            assert [pt["choices"] for pt in direct["points"]] == [pt["choices"] for pt in result["points"]]

            # click the middle point with the mouse: the per-layer view of that architecture appears
            index = len(expected_x) // 2
            xy = page.evaluate(
                """(i) => { const gd = document.getElementById('frontier-plot'); const L = gd._fullLayout;
                const t = gd.data[0]; const box = gd.getBoundingClientRect();
                return [box.left + L._size.l + L.xaxis.l2p(t.x[i]), box.top + L._size.t + L.yaxis.l2p(t.y[i])]; }""",
                index,
            )
            page.mouse.move(xy[0], xy[1])
            page.wait_for_timeout(300)
            page.mouse.click(xy[0], xy[1])
            page.wait_for_selector("#arch-panel:not([hidden])", timeout=30_000)
            clicked = page.evaluate("() => window.puzzle.architecture")
            assert clicked["point"] is not None
            arch = _get(f"{base}/api/v1/jobs/{job_id}/architecture?point={clicked['point']}")
            rows = page.locator("#arch-table tbody tr")
            assert rows.count() == len(arch["layers"]) == library["n_layers"]
            assert page.inner_text("#arch-summary") == arch["summary"] == result["points"][clicked["point"]]["summary"]
            kept = sum(1 for layer in arch["layers"] if layer["attention"]["kind"] == "gqa")
            assert f"attention {kept}/{library['n_layers']}" in arch["summary"]
            href = page.get_attribute("#arch-export", "href")
            assert href == f"/api/v1/jobs/{job_id}/export?point={clicked['point']}"
            with page.expect_download() as download:
                page.click("#arch-export")
            assert download.value.suggested_filename == f"puzzle-job{job_id}-point{clicked['point']}.tar.gz"
            # compare with a second job's frontier (objective lm_loss), run through the API
            other = _post(
                f"{base}/api/v1/jobs",
                {
                    "kind": "search",
                    "library_id": library["id"],
                    "mode": "frontier",
                    "objective": "lm_loss",
                    "axis": "runtime_ms",
                },
            )
            for _ in range(600):
                if _get(f"{base}/api/v1/jobs/{other['id']}")["state"] == "succeeded":
                    break
                page.wait_for_timeout(200)
            page.reload()
            page.wait_for_selector("#frontier-plot[data-ready='1']", timeout=60_000)
            page.wait_for_selector(f"#compare-job option[value='{other['id']}']", state="attached")
            page.select_option("#compare-job", str(other["id"]))
            page.wait_for_function("() => document.getElementById('frontier-plot').data.length === 2")
            second = page.evaluate("() => document.getElementById('frontier-plot').data[1].y")
            assert second == [pt["objective"] for pt in _get(f"{base}/api/v1/jobs/{other['id']}/result")["points"]]
            assert errors == []
            browser.close()


@pytest.mark.slow
def test_pipeline_job_page_shows_its_four_stages(settings: Settings, pg_url: str) -> None:
    """A running pipeline job's page lists parent / library / search / export with each stage's latest step."""
    from playwright.sync_api import sync_playwright

    from service import crud, db

    sessions = db.session_factory(db.engine_for(db.normalise_url(pg_url)))
    with db.session_scope(sessions) as session:
        job, _ = crud.submit_job(
            session, kind="pipeline", spec={"parent": "tiny-llama"}, library_id=None, max_attempts=1
        )
        job_id = job.id
    with db.session_scope(sessions) as session:
        crud.claim_job(session, worker_id="w-page")
    for stage, done, total in [("parent/train", 5, 5), ("library/distill", 3, 8), ("library/score", 1, 4)]:
        with db.session_scope(sessions) as session:
            crud.set_progress(session, job_id=job_id, worker_id="w-page", stage=stage, done=done, total=total)
    with serve(pg_url, settings.artifacts, workers=0) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/#/jobs/{job_id}")
        page.wait_for_selector("#job-stages tr[data-stage='library']")
        # the rows render as "waiting" first and fill in as the job's events arrive: wait for them
        page.wait_for_function(
            "() => document.querySelector(\"#job-stages tr[data-stage='library'] .stage-text\")"
            "?.textContent !== 'waiting'"
        )
        rows = {
            r.get_attribute("data-stage"): r.inner_text().split("\t") for r in page.query_selector_all("#job-stages tr")
        }
        assert list(rows) == ["parent", "library", "search", "export"]
        assert rows["parent"][-1].strip() == "train 5/5"
        assert rows["library"][-1].strip() == "score 1/4"  # the latest step of the stage
        assert rows["search"][-1].strip() == rows["export"][-1].strip() == "waiting"
        bar = page.query_selector("#job-stages tr[data-stage='library'] progress")
        assert bar is not None and bar.evaluate("b => [b.value, b.max]") == [1, 4]
        # a live progress event updates the row without reloading
        with db.session_scope(sessions) as session:
            crud.set_progress(session, job_id=job_id, worker_id="w-page", stage="search/solve", done=1, total=1)
        page.wait_for_function(
            "document.querySelector(\"#job-stages tr[data-stage='search'] .stage-text\").textContent === 'solve 1/1'"
        )
        browser.close()
        assert errors == []


@pytest.mark.slow
def test_elastic_job_page_shows_its_family(settings: Settings, pg_url: str) -> None:
    """A finished elastic job's page plots each budget's held-out perplexity (the parent's at budget 1) and
    parameters and lists the budgets with their perplexity, predicted quality and export links; its stage rows are
    parent / elastic / export. A result stored before perplexities were measured plots the predicted quality."""
    from playwright.sync_api import sync_playwright

    from puzzle.elastic import ElasticConfig, ElasticRequest, FamilyMember, LayerChoice
    from puzzle.pipeline.elastic import ElasticRun
    from puzzle.pipeline.stages import Exported
    from service import crud, db

    members = tuple(
        FamilyMember(b, ElasticConfig((LayerChoice(a, f, 0), LayerChoice(2, 256, 0))), p, p, r, kl, ppl)
        for b, a, f, p, r, kl, ppl in [
            (0.8, 2, 128, 51_000, 0.79, 0.12, 41.25),
            (0.5, 1, 64, 32_000, 0.49, 0.61, 57.5),
        ]
    )
    run = ElasticRun(
        request=ElasticRequest(parent="parents/p", budgets=(0.8, 0.5), out="pipelines/job-1/elastic"),
        preset=None,
        summary={
            "selection": "mip",
            "cost": "num_params",
            "objective": "kl_div",
            "parent_params": 64_000,
            "parent_perplexity": 30.5,
            "perplexity_on": {"split": "held-out", "rows": 16, "seq_len": 128, "tokens": 2048},
            "target": "vllm",
            "training": None,
        },
        family=members,
        exports={0.8: Exported(Path("pipelines/job-1/export/budget-0.8"), Path("pipelines/job-1/export/b.tar.gz"), [])},
        seconds={},
    )
    result = run.to_dict()
    legacy = {  # as a job stored before perplexities were measured has it
        "family": [{k: v for k, v in m.items() if k != "perplexity"} for m in result["family"]],
        "elastic": {k: v for k, v in result["elastic"].items() if k not in ("parent_perplexity", "perplexity_on")},
    }
    sessions = db.session_factory(db.engine_for(db.normalise_url(pg_url)))
    job_ids = []
    for stored in (result, legacy):
        with db.session_scope(sessions) as session:
            job, _ = crud.submit_job(
                session, kind="elastic", spec={"parent": "p", "budgets": [0.8, 0.5]}, library_id=None, max_attempts=1
            )
            job_ids.append(job.id)
        with db.session_scope(sessions) as session:
            crud.claim_job(session, worker_id="w-family")
        stages = [("parent", 1, 1), ("elastic/score", 2, 2), ("elastic/distill", 4, 4), ("export", 1, 2)]
        for stage, done, total in stages:
            with db.session_scope(sessions) as session:
                crud.set_progress(session, job_id=job.id, worker_id="w-family", stage=stage, done=done, total=total)
        with db.session_scope(sessions) as session:
            crud.finish_job(session, job_id=job.id, worker_id="w-family", state="succeeded", result=stored)
    job_id, legacy_id = job_ids
    with serve(pg_url, settings.artifacts, workers=0) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/#/jobs/{job_id}")
        page.wait_for_selector("#family-plot[data-ready='1']")
        assert page.is_visible("#family-panel") and not page.is_visible("#frontier-panel")
        summary = page.inner_text("#family-summary")
        assert "children vllm loads; no distillation; parent perplexity 30.5 on 2048 held-out tokens" in summary
        plot = "() => document.getElementById('family-plot').data.map((t) => [t.name, t.x, t.y])"
        assert page.evaluate(plot) == [
            ["held-out perplexity", [0.8, 0.5], [41.25, 57.5]],
            ["parameters", [0.8, 0.5], [51_000, 32_000]],
            ["parent", [1], [30.5]],
        ]
        rows = page.query_selector_all("#family-table tbody tr")
        cells = [r.inner_text().split("\t") for r in rows]
        assert [c[:5] for c in cells] == [
            ["0.8", "51000", "79 %", "41.25", "0.12"],
            ["0.5", "32000", "49 %", "57.5", "0.61"],
        ]
        assert cells[0][5].strip() == "a2.f128.m0 a2.f256.m0"
        assert rows[0].query_selector("a").get_attribute("href") == f"/api/v1/jobs/{job_id}/export?budget=0.8"
        assert rows[1].query_selector("a") is None  # not exported
        page.wait_for_function(
            "document.querySelector(\"#job-stages tr[data-stage='export'] .stage-text\")?.textContent === '1/2'"
        )
        stages = [r.get_attribute("data-stage") for r in page.query_selector_all("#job-stages tr")]
        assert stages == ["parent", "elastic", "export"]
        assert page.inner_text("#job-stages tr[data-stage='elastic'] .stage-text") == "distill 4/4"
        # the legacy result: the predicted quality plotted, no perplexity in the summary or the table
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{base}/#/jobs/{legacy_id}")
        page.wait_for_selector("#family-plot[data-ready='1']")
        assert page.evaluate(plot) == [
            ["predicted kl_div (sum over layers)", [0.8, 0.5], [0.12, 0.61]],
            ["parameters", [0.8, 0.5], [51_000, 32_000]],
        ]
        assert "perplexity" not in page.inner_text("#family-summary")
        cells = [r.inner_text().split("\t") for r in page.query_selector_all("#family-table tbody tr")]
        assert [c[3:5] for c in cells] == [["", "0.12"], ["", "0.61"]]
        browser.close()
        assert errors == []
