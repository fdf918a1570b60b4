"""Parent training: a preset's model trained from scratch on a corpus, written as a Hugging Face directory.

AdamW (no decay on norms and biases), linear warmup then cosine decay, gradient clipping, a fixed seed.
Batches are a pure function of (seed, step) (``puzzle.data.iter_batches``), and the state needed to go on
(weights, optimizer moments, step, losses, the tokenizer) is checkpointed atomically every
``checkpoint_every`` steps and every ``CHECKPOINT_SECONDS`` (60 s) of training, whichever comes first, in
the hidden sibling directory ``.<out name>.train/``. Running the same command
again after an interruption resumes from the last checkpoint and ends with the same weights an
uninterrupted run gets. When training ends, ``<out>`` appears whole (``puzzle.model.save_pretrained``
renames a finished directory into place) with ``config.json``, safetensors, ``tokenizer.json`` and
``tokenizer_config.json``; ``train_summary.json`` is written last (its presence marks a finished parent,
which a repeated call with the same settings reuses instead of retraining) and the state directory goes.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puzzle.data import (
    cached_tokens,
    eos_id,
    iter_batches,
    load_tokenizer,
    pack_tensor,
    read_corpus,
    save_tokenizer,
    split_corpus,
    train_bpe,
)
from puzzle.errors import ConfigError, DataError
from puzzle.files import atomic_path, write_text
from puzzle.presets import Preset, TrainConfig, warmup_cosine

if TYPE_CHECKING:
    import torch

CHECKPOINT = "checkpoint.pt"
CHECKPOINT_SECONDS = 60.0  # a checkpoint at least this often (wall time), besides every checkpoint_every steps
SUMMARY = "train_summary.json"


@dataclass(frozen=True)
class StepInfo:
    """What a progress sink sees after every optimizer step."""

    step: int
    total: int
    loss: float
    lr: float
    tokens_per_s: float


@dataclass(frozen=True)
class TrainResult:
    out_dir: str
    preset: str
    steps: int
    tokens_seen: int
    final_loss: float
    losses: tuple[float, ...]
    wall_s: float
    tokens_per_s: float
    n_params: int
    resumed_from: int | None
    reused: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["losses"] = list(self.losses)
        return data


def lr_at(step: int, config: TrainConfig) -> float:
    """Learning rate of parent-training step ``step`` (``warmup_cosine`` with the config's settings)."""
    return warmup_cosine(
        step, lr=config.lr, steps=config.steps, warmup=config.warmup_steps, min_lr_ratio=config.min_lr_ratio
    )


def logits_of(output: Any) -> torch.Tensor:
    """Our model returns logits; HF-style models return an object with ``.logits``."""
    return getattr(output, "logits", output)


def train_parent(
    preset: Preset,
    out_dir: str | os.PathLike[str],
    corpus: str | os.PathLike[str] | None = None,
    *,
    steps: int | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepInfo], None] | None = None,
    on_status: Callable[[str], None] | None = None,
    checkpoint_seconds: float | None = CHECKPOINT_SECONDS,
) -> TrainResult:
    """Train ``preset`` on ``corpus`` (default: the Python standard library) into the HF directory ``out_dir``.

    Resumes an interrupted run found in ``out_dir``; returns the finished one (``reused=True``) when
    ``out_dir`` already holds a parent trained with the same settings on the same data. A checkpoint is
    written every ``checkpoint_every`` steps and every ``checkpoint_seconds`` of training (None: by steps only).
    """
    import torch

    from puzzle.model import CausalLM

    status = on_status or (lambda _msg: None)
    config = preset.train
    if steps is not None:  # a shorter run keeps its warmup to at most a tenth of it
        config = replace(config, steps=steps, warmup_steps=min(config.warmup_steps, max(1, steps // 10)))
    out, state_dir = Path(out_dir), state_dir_of(Path(out_dir))

    status("reading corpus")
    train_docs, _ = split_corpus(read_corpus(corpus), config.held_out_fraction)
    if not train_docs.documents:
        raise DataError(f"corpus {train_docs.source}: every document fell into the held-out split; add more files")
    run_key = {"preset": preset.name, "train": config.to_dict(), "corpus": train_docs.fingerprint()}

    if (out / SUMMARY).is_file():
        return _finished(out, run_key)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "config.json").is_file())):
        raise ConfigError(f"--out {out} exists and is not an empty directory; choose a new directory for the parent")
    tokenizer = _tokenizer(state_dir, train_docs, preset, config, status)
    status("tokenizing")
    rows = pack_tensor(cached_tokens(train_docs, tokenizer, "train", cache_dir), config.seq_len)

    arch = preset.make_arch(tokenizer.get_vocab_size())
    torch.manual_seed(config.seed)
    model = CausalLM(arch)
    optimizer = adamw(model, lr=config.lr, weight_decay=config.weight_decay, betas=config.betas)

    start_step, losses, prior_wall_s, resumed_from = 0, [], 0.0, None
    checkpoint_file = state_dir / CHECKPOINT
    if checkpoint_file.is_file():
        start_step, losses, prior_wall_s = _resume(checkpoint_file, run_key, arch.to_dict(), model, optimizer, out)
        resumed_from = start_step
        status(f"resuming from step {start_step}")

    def save(done: int, elapsed: float) -> None:
        state = {"run_key": run_key, "arch": arch.to_dict(), "step": done, "model": model.state_dict()}
        state |= {"optimizer": optimizer.state_dict(), "losses": losses, "wall_s": prior_wall_s + elapsed}
        save_checkpoint(checkpoint_file, state)

    tokens_per_step = config.batch_size * config.seq_len
    run_start = time.perf_counter()
    _train_steps(model, optimizer, rows, config, start_step, losses, save, checkpoint_seconds, on_step)
    this_run_s = time.perf_counter() - run_start
    result = TrainResult(
        out_dir=str(out),
        preset=preset.name,
        steps=config.steps,
        tokens_seen=config.steps * tokens_per_step,
        final_loss=sum(losses[-10:]) / len(losses[-10:]),
        losses=tuple(losses),
        wall_s=round(prior_wall_s + this_run_s, 3),
        tokens_per_s=round((config.steps - start_step) * tokens_per_step / max(this_run_s, 1e-9), 1),
        n_params=sum(p.numel() for p in model.parameters()),
        resumed_from=resumed_from,
    )
    status("writing the Hugging Face directory")
    export_parent(model, state_dir, out)
    write_text(out / SUMMARY, json.dumps({"run_key": run_key, "result": result.to_dict()}, indent=2) + "\n")
    shutil.rmtree(state_dir, ignore_errors=True)
    return result


def _train_steps(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    rows: Any,
    config: TrainConfig,
    start_step: int,
    losses: list[float],
    save: Callable[[int, float], None],
    checkpoint_seconds: float | None,
    on_step: Callable[[StepInfo], None] | None,
) -> None:
    """Optimizer steps ``start_step .. config.steps``; ``save(done, elapsed)`` every ``checkpoint_every`` steps
    and whenever ``checkpoint_seconds`` have passed since the last save (never after the last step)."""
    import torch
    import torch.nn.functional as F

    tokens_per_step = config.batch_size * config.seq_len
    batches = iter_batches(rows, config.batch_size, config.seed, start_step=start_step)
    model.train()
    run_start = last_save = time.perf_counter()
    for step in range(start_step, config.steps):
        batch = torch.from_numpy(next(batches))  # (B, T + 1)
        inputs, targets = batch[:, :-1], batch[:, 1:]
        lr = lr_at(step, config)
        for group in optimizer.param_groups:
            group["lr"] = lr
        logits = logits_of(model(inputs))  # (B, T, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))

        done, now = step + 1, time.perf_counter()
        due = done % config.checkpoint_every == 0 or (
            checkpoint_seconds is not None and now - last_save >= checkpoint_seconds
        )
        if due and done < config.steps:
            save(done, now - run_start)
            last_save = time.perf_counter()
        if on_step is not None:
            rate = (done - start_step) * tokens_per_step / max(now - run_start, 1e-9)
            on_step(StepInfo(step=done, total=config.steps, loss=losses[-1], lr=lr, tokens_per_s=rate))


def _tokenizer(state_dir: Path, docs: Any, preset: Preset, config: TrainConfig, status: Callable[[str], None]) -> Any:
    """The run's tokenizer: the one an interrupted run saved in ``state_dir``, else a BPE trained on ``docs``."""
    state_dir.mkdir(parents=True, exist_ok=True)
    if (state_dir / "tokenizer.json").is_file():
        return load_tokenizer(state_dir)
    status(f"training a byte-level BPE tokenizer (vocab {preset.vocab_size})")
    tokenizer = train_bpe(docs, preset.vocab_size)
    save_tokenizer(tokenizer, state_dir, model_max_length=config.seq_len)
    return tokenizer


def state_dir_of(out: Path) -> Path:
    """Where an unfinished run of ``out`` keeps its checkpoint and tokenizer."""
    return out.parent / f".{out.name}.train"


def export_parent(model: torch.nn.Module, tokenizer_dir: Path, out: Path) -> None:
    """``save_pretrained`` with the tokenizer files of ``tokenizer_dir``; its EOS becomes ``bos/eos_token_id``."""
    from puzzle.model import save_pretrained

    save_pretrained(model, out, tokenizer_dir=tokenizer_dir)
    config_file = out / "config.json"
    config = json.loads(config_file.read_text())
    eos = eos_id(load_tokenizer(out))
    config.update(bos_token_id=eos, eos_token_id=eos)
    write_text(config_file, json.dumps(config, indent=2) + "\n")


def adamw(
    model: torch.nn.Module, *, lr: float, weight_decay: float, betas: tuple[float, float]
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, without weight decay on norms and biases (parent training, GKD)."""
    import torch

    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=1e-8)


def save_checkpoint(file: Path, state: dict[str, Any]) -> None:
    """``torch.save`` of a training state, atomically (parent training, GKD)."""
    import torch

    file.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(file) as tmp:
        torch.save(state, tmp)


def _resume(
    file: Path, run_key: dict[str, Any], arch: dict[str, Any], model: Any, optimizer: Any, out: Path
) -> tuple[int, list[float], float]:
    """Load the interrupted run in ``file`` into ``model`` and ``optimizer``: ``(step, losses, wall seconds)``."""
    import torch

    state = torch.load(file, map_location="cpu", weights_only=False)
    if state["run_key"] != run_key or state["arch"] != arch:
        raise ConfigError(
            f"{out} holds an interrupted run with other settings or data; rerun it with the same options, "
            f"or delete {file.parent} to start over"
        )
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"], list(state["losses"]), state["wall_s"]


def _finished(out: Path, run_key: dict[str, Any]) -> TrainResult:
    """The result of the parent already trained in ``out`` (ConfigError if with other settings or data)."""
    summary = json.loads((out / SUMMARY).read_text())
    if summary.get("run_key") != run_key:
        raise ConfigError(
            f"{out} already holds a parent trained with other settings or data; choose another --out or delete it"
        )
    return replace(_result_from_dict(summary["result"]), reused=True)


def _result_from_dict(data: dict[str, Any]) -> TrainResult:
    data = dict(data)
    data["losses"] = tuple(data["losses"])
    return TrainResult(**data)
