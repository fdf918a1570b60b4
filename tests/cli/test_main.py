from __future__ import annotations

import subprocess
import sys

from puzzle import __version__


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "puzzle", *args], capture_output=True, text=True, timeout=300)


def test_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == __version__


def test_unknown_command_is_one_line_exit_2() -> None:
    result = run_cli("no-such-command")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr
