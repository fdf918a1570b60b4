"""Rich progress bars shared by the CLI commands (on stderr, so ``--json`` output on stdout stays clean)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from puzzle.train import StepInfo


def console():  # type: ignore[no-untyped-def]
    from rich.console import Console

    return Console(stderr=True)


@contextmanager
def training_bar(description: str = "training") -> Iterator[tuple[Callable[[StepInfo], None], Callable[[str], None]]]:
    """Yields (on_step, on_status) callbacks that drive one bar with loss and tokens/s."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    out = console()
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[rate]} tok/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=out,
    )
    task = None

    every = None  # not a terminal (a log file, CI): a plain line every 5 % instead of a live bar

    def on_step(info: StepInfo) -> None:
        nonlocal task, every
        if task is None:
            task = progress.add_task(description, total=info.total, completed=info.step - 1, loss="-", rate="-")
            every = None if out.is_terminal else max(1, info.total // 20)
        progress.update(task, completed=info.step, loss=f"{info.loss:.3f}", rate=f"{info.tokens_per_s:,.0f}")
        if every is not None and (info.step % every == 0 or info.step == info.total):
            out.print(
                f"{description}: step {info.step}/{info.total}  loss {info.loss:.3f}  lr {info.lr:.2e}  "
                f"{info.tokens_per_s:,.0f} tok/s",
                highlight=False,
            )

    def on_status(message: str) -> None:
        progress.console.print(f"[dim]{message}[/dim]")

    with progress:
        yield on_step, on_status


@contextmanager
def batch_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """Yields an ``on_batch(done, total)`` callback driving a plain bar."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console(),
    )
    task = None

    def on_batch(done: int, total: int) -> None:
        nonlocal task
        if task is None:
            task = progress.add_task(description, total=total)
        progress.update(task, completed=done)

    with progress:
        yield on_batch
