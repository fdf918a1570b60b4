"""Progress sinks: where long stages report how far they are (a terminal bar, a job store, nothing).

The one progress protocol: the pipeline calls ``start(stage, total)``, ``advance(stage, n)`` and
``finish(stage)``; it never knows which sink it got. ``RichProgress`` draws one bar per stage in a terminal;
a worker's job context is a sink that records each report in the job store. ``Scoped`` names the steps of one
pipeline stage ``stage/step``; ``StageTimer`` times the stages of a run.
"""

from __future__ import annotations

import time
from typing import Any, Protocol


class ProgressSink(Protocol):
    def start(self, stage: str, total: int) -> None: ...

    def advance(self, stage: str, n: int = 1) -> None: ...

    def finish(self, stage: str) -> None: ...


class NullProgress:
    """Reports nothing."""

    def start(self, stage: str, total: int) -> None:
        pass

    def advance(self, stage: str, n: int = 1) -> None:
        pass

    def finish(self, stage: str) -> None:
        pass


class RichProgress:
    """One rich progress bar per stage; use as a context manager."""

    def __init__(self, **kwargs: Any) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), **kwargs
        )
        self._tasks: dict[str, Any] = {}

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def start(self, stage: str, total: int) -> None:
        self._tasks[stage] = (self._progress.add_task(stage, total=total), total)

    def advance(self, stage: str, n: int = 1) -> None:
        self._progress.advance(self._tasks[stage][0], n)

    def finish(self, stage: str) -> None:
        task, total = self._tasks[stage]
        self._progress.update(task, completed=total)


class StepProgress:
    """``on_step(info)`` for a training loop (``info.step`` 1-based of ``info.total``) that drives one stage of a
    sink; the steps a resumed run skips count as done. Call ``finish()`` after the loop (a no-op if no step ran,
    e.g. a finished run that was reused)."""

    def __init__(self, sink: ProgressSink, stage: str) -> None:
        self.sink, self.stage, self.started = sink, stage, False

    def __call__(self, info: Any) -> None:
        if not self.started:
            self.sink.start(self.stage, info.total)
            self.sink.advance(self.stage, info.step - 1)
            self.started = True
        self.sink.advance(self.stage)

    def finish(self) -> None:
        if self.started:
            self.sink.finish(self.stage)


class Scoped:
    """The sink ``sink`` with every step of one pipeline stage reported as ``scope/step``."""

    def __init__(self, sink: ProgressSink, scope: str) -> None:
        self.sink, self.scope = sink, scope

    def start(self, stage: str, total: int) -> None:
        self.sink.start(f"{self.scope}/{stage}", total)

    def advance(self, stage: str, n: int = 1) -> None:
        self.sink.advance(f"{self.scope}/{stage}", n)

    def finish(self, stage: str) -> None:
        self.sink.finish(f"{self.scope}/{stage}")


class StageTimer:
    """Seconds per stage of a run: ``lap(stage)`` closes the stage that ran since the previous lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> float:
        now = time.perf_counter()
        self.seconds[stage] = now - self._last
        self._last = now
        return self.seconds[stage]

    def rounded(self, digits: int) -> dict[str, float]:
        return {k: round(v, digits) for k, v in self.seconds.items()}
