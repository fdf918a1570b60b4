from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Token caches go to a fresh folder, so no test depends on what an earlier run left in ~/.cache/puzzle."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PUZZLE_CACHE_DIR", str(tmp_path_factory.mktemp("puzzle-cache")))
    yield
    mp.undo()
