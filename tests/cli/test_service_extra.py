"""Without the ``service`` extra, each service command exits 2 with one line saying what to install."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# Runs the CLI with sqlalchemy unimportable, as after `pip install -e .` without the extra.
SCRIPT = "import sys; sys.modules['sqlalchemy'] = None; from puzzle.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.mark.parametrize("command", [["db", "upgrade"], ["db", "current"], ["serve"], ["worker", "--once"]])
def test_service_commands_without_the_extra_exit_2_with_the_install_line(command: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *command], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "pip install -e '.[service]'" in lines[0] and "sqlalchemy" in lines[0]
