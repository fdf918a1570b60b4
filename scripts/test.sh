#!/usr/bin/env bash
# Install everything the test suite needs on a fresh machine, then run ruff and pytest.
# Usage: bash scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: Chromium for the dashboard's browser test.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends chromium >/dev/null
fi

if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
# torch is installed first and pinned: the CPU wheel, not several GB of CUDA packages.
.venv/bin/pip install -q --disable-pip-version-check torch==2.13.0
.venv/bin/pip install -q --disable-pip-version-check -e ".[service,test,dev]"

.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
