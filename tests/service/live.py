"""A real uvicorn server (``puzzle serve``) and worker (``puzzle worker``) as subprocesses, for the browser test
and the benchmark."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(database_url: str, artifacts: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PUZZLE_DATABASE_URL": database_url,
        "PUZZLE_ARTIFACTS": str(artifacts),
        "PUZZLE_POLL_S": "0.1",
        "PUZZLE_HEARTBEAT_S": "1",
        **(extra or {}),
    }


@contextlib.contextmanager
def serve(
    database_url: str,
    artifacts: Path,
    *,
    workers: int = 1,
    uvicorn_workers: int = 1,
    extra_env: dict[str, str] | None = None,
) -> Iterator[str]:
    """Run ``puzzle serve`` on a free loopback port (and ``workers`` ``puzzle worker`` processes); yields the base URL."""
    port = free_port()
    env = _env(database_url, artifacts, extra_env)
    log = tempfile.NamedTemporaryFile(prefix="puzzle-serve-", suffix=".log", delete=False)  # noqa: SIM115
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "puzzle",
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                str(uvicorn_workers),
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    ]
    procs += [
        subprocess.Popen(
            [sys.executable, "-m", "puzzle", "worker", "--id", f"live{i}"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers)
    ]
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if procs[0].poll() is not None:
                raise RuntimeError(f"puzzle serve exited: {Path(log.name).read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{base}/api/v1/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("puzzle serve did not become ready in 60 s")
            time.sleep(0.2)
        yield base
        if procs[0].poll() is not None:
            raise RuntimeError(f"puzzle serve died: {Path(log.name).read_text()[-3000:]}")
    finally:
        log.close()
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
