"""A progress sink that records what it was told, for tests."""

from __future__ import annotations


class RecordingProgress:
    """Keeps (stage, total, done) per stage; for tests and for polling callers."""

    def __init__(self) -> None:
        self.totals: dict[str, int] = {}
        self.done: dict[str, int] = {}
        self.finished: list[str] = []

    def start(self, stage: str, total: int) -> None:
        self.totals[stage] = total
        self.done.setdefault(stage, 0)

    def advance(self, stage: str, n: int = 1) -> None:
        self.done[stage] = self.done.get(stage, 0) + n

    def finish(self, stage: str) -> None:
        self.finished.append(stage)
