"""docker-compose.yml parses and wires the services the way the README promises (no docker engine here)."""

from __future__ import annotations

import yaml

from service.settings import Settings
from tests.service.fixtures import REPO


def test_compose_file_parses_and_wires_every_service() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "api", "ray-head", "worker", "gpu-worker"} <= set(services)
    api = services["api"]
    assert "puzzle db upgrade && exec puzzle serve" in " ".join(api["command"])
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["gpu-worker"]["profiles"] == ["gpu"]
    assert services["gpu-worker"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # every Puzzle container gets the same PUZZLE_* variables, and they are the settings' variables
    fields = {f"PUZZLE_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "worker", "gpu-worker"):
        env = services[name]["environment"]
        assert env == services["api"]["environment"]
        assert set(env) <= fields
        assert {"PUZZLE_DATABASE_URL", "PUZZLE_API_TOKEN", "PUZZLE_RAY_ADDRESS", "PUZZLE_ARTIFACTS"} <= set(env)
    assert env["PUZZLE_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert (REPO / services["api"]["build"]["dockerfile"]).is_file()
