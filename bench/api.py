"""API latency under load: p50 / p99 / throughput / errors of job submission and of a frontier request.

Runs a real ``puzzle serve`` (uvicorn) against a fresh PostgreSQL database on 127.0.0.1 (created and dropped
here), stores a library (the real NVlabs Llama-3.3-70B library when the shared data is present, else a
generated one), and drives it from each of ``--clients`` (e.g. 1,20,50) concurrent loopback clients with a
bounded number of requests. The server runs with the per-client rate limit of expensive reads off
(``PUZZLE_RATE_PER_S=0``: every client here is 127.0.0.1, one client to the limiter); any non-2xx answer or
transport failure is counted as an error.

Goals: submit p99 <= 50 ms; frontier (20k points) p99 <= 200 ms.

    python bench/api.py [--clients 1,20,50] [--submits 1000] [--frontiers 300] [--uvicorn-workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service import db  # noqa: E402
from tests.service.fixtures import NVLABS, PG_ADMIN_URL, make_library, nvlabs_upload  # noqa: E402
from tests.service.live import serve  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def drive(base: str, clients: int, total: int, request) -> tuple[list[float], float, int]:  # type: ignore[no-untyped-def]
    """``total`` requests spread over ``clients`` concurrent connections; returns latencies (s) of the 2xx
    answers, wall time and the number of errors (non-2xx answers and transport failures)."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=120) as client:

        async def one_client() -> None:
            for i in counter:
                start = time.perf_counter()
                try:
                    response = await request(client, i)
                except httpx.TransportError as exc:
                    errors.append(type(exc).__name__)
                    continue
                if response.status_code >= 300:
                    errors.append(str(response.status_code))
                    continue
                latencies.append(time.perf_counter() - start)

        wall = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        if errors:
            print(f"  {len(errors)} of {total} requests failed: {sorted(set(errors))}")
        return latencies, time.perf_counter() - wall, len(errors)


def report(name: str, clients: int, lat: list[float], wall: float, errors: int, goal_ms: float) -> dict[str, float]:
    if not lat:
        print(f"| {name:<8} | {clients:>3} | - | - | 0 | {errors:>6} | MISSED (every request failed) |")
        return {}
    p50, p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
    rate = len(lat) / wall
    print(
        f"| {name:<8} | {clients:>3} | {p50:8.1f} | {p99:8.1f} | {rate:7.0f} | {errors:>6} | "
        f"{'met' if p99 <= goal_ms else 'MISSED'} (p99 <= {goal_ms:.0f} ms) |"
    )
    return {f"{name}_{clients}_p50_ms": p50, f"{name}_{clients}_p99_ms": p99, f"{name}_{clients}_rps": rate}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", default="1,20,50", help="comma-separated client counts")
    parser.add_argument("--submits", type=int, default=1000)
    parser.add_argument("--frontiers", type=int, default=300)
    parser.add_argument("--uvicorn-workers", type=int, default=1)
    parser.add_argument("--view", default="columns", choices=["columns", "points"], help="frontier response view")
    parser.add_argument("--only", choices=["submit", "frontier"], help="measure just one of the two")
    args = parser.parse_args()

    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"puzzle_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    try:
        db.upgrade(url)
        with (
            tempfile.TemporaryDirectory() as artifacts,
            serve(
                url,
                Path(artifacts),
                workers=0,
                uvicorn_workers=args.uvicorn_workers,
                extra_env={"PUZZLE_RATE_PER_S": "0"},
            ) as base,
        ):
            upload = (
                nvlabs_upload("bench-70b")
                if NVLABS.is_dir()
                else {"name": "bench-generated", "format": "puzzle", "data": make_library(40, seed=1).to_dict()}
            )
            library = httpx.post(f"{base}/api/v1/libraries", json=upload, timeout=120).json()
            frontier_url = (
                f"/api/v1/libraries/{library['id']}/frontier?objective=kl_div&axis=runtime_ms&view={args.view}"
            )
            per_layer = library["n_variants"] // library["n_layers"]
            print(f"library {library['name']}: {library['n_layers']} layers x {per_layer} variants")
            figures: dict[str, float] = {}
            if args.only != "submit":
                t0 = time.perf_counter()
                first = httpx.get(base + frontier_url, timeout=600)
                cold = time.perf_counter() - t0
                assert first.status_code == 200, first.text[:500]
                parsed = first.json()
                figures["frontier_points"] = len(parsed.get("points") or parsed.get("axis_values"))
                print(
                    f"frontier: {figures['frontier_points']:.0f} points, {len(first.content) / 1e6:.1f} MB JSON, "
                    f"first (uncached) request {cold:.2f} s"
                )
            body = {
                "kind": "search",
                "library_id": library["id"],
                "mode": "solve",
                "objective": "kl_div",
                "constraints": ["runtime_ms<=60%"],
            }

            async def submit(client: httpx.AsyncClient, i: int) -> httpx.Response:
                return await client.post(
                    "/api/v1/jobs", json=body, headers={"Idempotency-Key": f"bench-{uuid.uuid4()}"}
                )

            async def frontier(client: httpx.AsyncClient, i: int) -> httpx.Response:
                return await client.get(frontier_url)

            print(f"server: uvicorn x{args.uvicorn_workers}, PostgreSQL, {os.cpu_count()} CPUs shared with the clients")
            print("| request  | clients | p50 ms | p99 ms | req/s | errors | goal |\n|---|---|---|---|---|---|---|")
            for clients in [int(c) for c in args.clients.split(",")]:
                if args.only != "frontier":
                    total = max(50, args.submits // 10) if clients == 1 else args.submits
                    lat, wall, errors = asyncio.run(drive(base, clients, total, submit))
                    figures.update(report("submit", clients, lat, wall, errors, 50))
                if args.only != "submit":
                    total = max(20, args.frontiers // 10) if clients == 1 else args.frontiers
                    lat, wall, errors = asyncio.run(drive(base, clients, total, frontier))
                    figures.update(report("frontier", clients, lat, wall, errors, 200))
            print(json.dumps({k: round(v, 2) for k, v in figures.items()}))
    finally:
        db.engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
