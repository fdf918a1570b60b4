"""Shared fixtures of the service and worker tests: a real PostgreSQL database per test session, settings,
the app, and block libraries (a small generated one, and the real 70B NVlabs library when the shared data
is present)."""

from __future__ import annotations

import os
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from puzzle.arch import AttentionSpec, BlockSpec, FFNSpec
from puzzle.library import BlockLibrary, Layer, Scenario, Variant
from service import db
from service.main import create_app
from service.settings import Settings
from tests.shared_data import shared_data_dir

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get("PUZZLE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
NVLABS = (shared_data_dir(REPO) or Path("/nonexistent")) / "nvlabs-puzzle-llama-3.3-70b"
NVLABS_FILES = ("block_library", "measurement_info", "parent_block_stats")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh, uniquely named PostgreSQL database with the schema applied; dropped at the end."""
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL unreachable at {PG_ADMIN_URL} ({type(exc).__name__}); the service tests need it")
    name = f"puzzle_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        db.upgrade(url)
        yield url
    finally:
        db.engine_for(db.normalise_url(url)).dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def settings(pg_url: str, artifacts: Path) -> Settings:
    return Settings(
        database_url=pg_url, artifacts=artifacts, heartbeat_s=0.2, stale_after_s=30.0, poll_s=0.05, api_token=None
    )


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(autouse=True)
def _clean_jobs(request: pytest.FixtureRequest) -> None:
    """Each test starts with no jobs (libraries and cached frontiers are kept: they are content-addressed)."""
    if "pg_url" not in request.fixturenames:
        return
    url = request.getfixturevalue("pg_url")
    with db.engine_for(db.normalise_url(url)).begin() as conn:
        conn.execute(text("TRUNCATE idempotency_keys, job_events, jobs RESTART IDENTITY CASCADE"))


@pytest.fixture
def app_with(settings: Settings) -> Iterator[Any]:
    """``app_with(**settings)``: a TestClient on the same database with other settings."""
    clients: list[TestClient] = []

    def make(**update: Any) -> TestClient:
        c = TestClient(create_app(settings.model_copy(update=update)))
        c.__enter__()
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def make_library(n_layers: int = 6, *, seed: int = 0) -> BlockLibrary:
    """A small Llama-like library: per layer the parent, fewer KV heads, narrower FFN, linear and no-op
    subblocks (12 variants), with seeded quality scores and costs that grow with what a variant keeps."""
    rng = random.Random(seed)
    hidden, heads, head_dim, ffn_full = 64, 8, 8, 256
    scenario = Scenario("pre", "prefill", 8, 128, "cpu", "fp32")
    layers = []
    for i in range(n_layers):
        variants = []
        attentions: list[tuple[str, AttentionSpec, float]] = [
            (f"kv{kv}", AttentionSpec(n_heads=heads, n_kv_heads=kv, head_dim=head_dim), kv / 8) for kv in (8, 4, 2, 1)
        ]
        attentions += [("attn_linear", AttentionSpec.linear(), 0.05), ("attn_none", AttentionSpec.no_op(), 0.0)]
        ffns = [
            ("ffn100", FFNSpec(intermediate_size=ffn_full), 1.0),
            ("ffn50", FFNSpec(intermediate_size=ffn_full // 2), 0.5),
        ]
        for a_name, a_spec, a_keep in attentions:
            for f_name, f_spec, f_keep in ffns:
                is_parent = a_name == "kv8" and f_name == "ffn100"
                loss = (
                    0.0 if is_parent else (1.0 - a_keep) * (0.3 + rng.random()) + (1.0 - f_keep) * (0.2 + rng.random())
                )
                runtime = 1.0 + 3.0 * a_keep + 4.0 * f_keep + 0.01 * rng.random()
                params = 1000.0 * (0.25 + a_keep) + 3000.0 * f_keep
                variants.append(
                    Variant(
                        name=f"{a_name}+{f_name}",
                        is_parent=is_parent,
                        spec=BlockSpec(attention=a_spec, ffn=f_spec),
                        metrics={"kl_div": loss, "lm_loss": 2.0 + loss / 2},
                        costs={"num_params": params},
                        scenario_costs={"pre": {"runtime_ms": runtime, "memory_mib": params / 100}},
                    )
                )
        layers.append(Layer(index=i, variants=tuple(variants)))
    return BlockLibrary(
        layers=tuple(layers),
        scenarios={"pre": scenario},
        default_scenario="pre",
        family="llama",
        hidden_size=hidden,
        parent={"name": "generated"},
    )


def nvlabs_upload(name: str = "llama-3.3-70b") -> dict[str, Any]:
    import json

    return {
        "name": name,
        "format": "nvlabs",
        "data": {k: json.loads((NVLABS / f"{k}.json").read_text()) for k in NVLABS_FILES},
    }


def upload(client: TestClient, library: BlockLibrary, name: str, **kwargs: Any) -> dict[str, Any]:
    response = client.post(
        "/api/v1/libraries", json={"name": name, "format": "puzzle", "data": library.to_dict()}, **kwargs
    )
    assert response.status_code in (200, 201), response.text
    return response.json()


@pytest.fixture(scope="session")
def small_library(client: TestClient) -> dict[str, Any]:
    """The generated library, stored through the API."""
    return upload(client, make_library(), "generated-6")


def search_job(library_id: int, **params: Any) -> dict[str, Any]:
    return {"kind": "search", "library_id": library_id, "mode": "solve", "objective": "kl_div", **params}
