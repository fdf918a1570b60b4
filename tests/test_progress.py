from __future__ import annotations

from types import SimpleNamespace

from puzzle.progress import StepProgress
from tests.progress import RecordingProgress


def test_step_progress_counts_the_steps_a_resumed_run_skipped() -> None:
    sink = RecordingProgress()
    on_step = StepProgress(sink, "train")
    for step in range(4, 11):  # resumed after step 3 of 10
        on_step(SimpleNamespace(step=step, total=10))
    on_step.finish()
    assert sink.totals == {"train": 10} and sink.done == {"train": 10} and sink.finished == ["train"]


def test_step_progress_reports_nothing_when_no_step_ran() -> None:
    sink = RecordingProgress()
    on_step = StepProgress(sink, "train")
    on_step.finish()
    assert not on_step.started and sink.totals == {} and sink.finished == []
