"""The fair reference for healed children: "parent + same tokens".

GKD trains every child on extra tokens the parent never saw; with an under-trained parent, those tokens
alone lower perplexity, so a child can end below its own parent by diverging from it. The reference is the
parent trained further with the plain next-token loss on *exactly* the GKD tokens a child gets: the same
rows, the same batches in the same order (``run_gkd``'s batching, a pure function of rows, seed and step),
the same step count, learning-rate schedule, optimizer and clipping. Only the loss differs (``lm`` instead
of ``cosine + kl``), so "child vs reference" isolates what compression costs.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from puzzle.child.gkd import GKDConfig, GKDResult
    from puzzle.model import CausalLM
    from puzzle.train import StepInfo

METHOD = "parent+tokens"  # the row's method name in reports


def reference_config(gkd: GKDConfig) -> GKDConfig:
    """The GKD settings with the loss swapped for plain next-token cross-entropy (everything else equal)."""
    return replace(gkd, cosine_weight=0.0, kl_weight=0.0, lm_weight=1.0)


def train_reference(
    parent: CausalLM,
    rows: np.ndarray,
    gkd: GKDConfig,
    *,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
) -> tuple[CausalLM, GKDResult]:
    """A copy of ``parent`` trained on the GKD ``rows`` with ``gkd``'s schedule and LM loss; resumable from
    ``checkpoint_dir`` like GKD (use its own folder: the checkpoint key includes the config, so a child's
    checkpoint is never taken for it). ``parent`` itself is left as it was (its parameters frozen)."""
    from puzzle.child.gkd import run_gkd

    model = copy.deepcopy(parent)
    result = run_gkd(model, parent, rows, reference_config(gkd), checkpoint_dir=checkpoint_dir, on_step=on_step)
    return model, result
