"""The ``pipeline`` job kind: parent -> library -> search -> export.

Stages and their units (progress is reported per stage):
    parent   check / load the parent checkpoint                  (1 unit)
    library  build the block library: BLD + scoring + profiling  (one unit per (layer, variant) task, on Ray)
    search   the same search a ``search`` job runs                (frontier / solve / diverse)
    export   write the chosen child as a Hugging Face directory   (1 unit per exported point)

The builder (``puzzle.pipeline``) and the exporter (``puzzle.export``) do not exist yet, so the API refuses
pipeline jobs with a 422 that says so (``pipeline_unavailable_reason``) and ``run_pipeline`` is the hook the
worker calls once they land: it will hand ``puzzle.pipeline`` a Ray executor (``PUZZLE_RAY_ADDRESS``) and the
job context as its progress sink.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING, Any

from service.errors import NotAvailableError

if TYPE_CHECKING:
    from workers.runner import JobContext

STAGES = ("parent", "library", "search", "export")
_NEEDS = ("puzzle.pipeline", "puzzle.export")


def pipeline_unavailable_reason() -> str:
    missing = [m for m in _NEEDS if importlib.util.find_spec(m) is None]
    what = ", ".join(missing) if missing else "the pipeline job runner"
    return (
        "pipeline jobs (parent -> library -> search -> export) are not available yet: this installation lacks "
        f"{what} (the block-library builder and the Hugging Face exporter). Submit kind 'search' over a stored "
        "library instead (POST /api/v1/libraries, then a job with kind 'search')"
    )


def run_pipeline(ctx: JobContext) -> dict[str, Any]:
    """Runner hook for ``pipeline`` jobs; refuses until the builder and exporter exist."""
    raise NotAvailableError(pipeline_unavailable_reason(), loc=("body", "kind"))
