"""API latency under load: p50 / p99 of job submission and of a frontier request, 50 concurrent clients.

Runs a real ``puzzle serve`` (uvicorn) against a fresh PostgreSQL database on 127.0.0.1 (created and dropped
here), stores a library (the real NVlabs Llama-3.3-70B library when the shared data is present, else a
generated one), and drives it from ``--clients`` concurrent loopback clients with a bounded number of
requests. Each figure is printed beside a one-client baseline run in the same process.

Goals: submit p99 <= 50 ms; frontier (20k points) p99 <= 200 ms.

    python bench/api.py [--clients 50] [--submits 1000] [--frontiers 300] [--uvicorn-workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
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


async def drive(base: str, clients: int, total: int, request) -> tuple[list[float], float]:  # type: ignore[no-untyped-def]
    """``total`` requests spread over ``clients`` concurrent connections; returns latencies (s) and wall time."""
    latencies: list[float] = []
    errors: list[str] = []
    counter = iter(range(total))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def one_client() -> None:
            for i in counter:
                start = time.perf_counter()
                try:
                    response = await request(client, i)
                except httpx.TransportError as exc:
                    errors.append(type(exc).__name__)
                    continue
                latencies.append(time.perf_counter() - start)
                assert response.status_code < 300, response.text[:300]

        wall = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        if errors:
            print(f"  {len(errors)} of {total} requests failed at the transport level: {sorted(set(errors))}")
        return latencies, time.perf_counter() - wall


def report(name: str, base_lat: list[float], lat: list[float], wall: float, clients: int, goal_ms: float) -> None:
    p50, p99 = percentile(lat, 50) * 1e3, percentile(lat, 99) * 1e3
    b50, b99 = percentile(base_lat, 50) * 1e3, percentile(base_lat, 99) * 1e3
    print(
        f"{name:<9} 1 client: p50 {b50:7.1f} ms  p99 {b99:7.1f} ms | {clients} clients: p50 {p50:7.1f} ms  "
        f"p99 {p99:7.1f} ms  ({len(lat) / wall:6.0f} req/s, p99 x{p99 / b99:4.1f} of 1 client)  "
        f"goal p99 <= {goal_ms:.0f} ms: {'met' if p99 <= goal_ms else 'MISSED'}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50)
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
            serve(url, Path(artifacts), workers=0, uvicorn_workers=args.uvicorn_workers) as base,
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
            if args.only != "frontier":
                base_sub, _ = asyncio.run(drive(base, 1, max(50, args.submits // 10), submit))
                sub, wall_sub = asyncio.run(drive(base, args.clients, args.submits, submit))
                report("submit", base_sub, sub, wall_sub, args.clients, 50)
                figures.update(
                    submit_p50_ms=percentile(sub, 50) * 1e3,
                    submit_p99_ms=percentile(sub, 99) * 1e3,
                    submit_mean_ms=statistics.fmean(sub) * 1e3,
                )
            if args.only != "submit":
                base_fr, _ = asyncio.run(drive(base, 1, max(20, args.frontiers // 10), frontier))
                fr, wall_fr = asyncio.run(drive(base, args.clients, args.frontiers, frontier))
                report("frontier", base_fr, fr, wall_fr, args.clients, 200)
                figures.update(frontier_p50_ms=percentile(fr, 50) * 1e3, frontier_p99_ms=percentile(fr, 99) * 1e3)
            print(json.dumps({k: round(v, 2) for k, v in figures.items()}))
    finally:
        db.engine_for.cache_clear()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
