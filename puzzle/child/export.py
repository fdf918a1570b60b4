"""Ship a child: a Hugging Face directory plus ``puzzle_manifest.json`` (DESIGN.md §5).

``export_child(model, out, manifest=...)`` writes

* ``config.json`` + safetensors with Hugging Face tensor names, by ``puzzle.model.save_pretrained``: a
  heterogeneous child is ``model_type: "nemotron-nas"`` / ``DeciLMForCausalLM`` with one ``block_configs``
  entry per layer, or, for a Nemotron-H-style hybrid, ``nemotron_h_puzzle``; either ships its own
  configuration / modeling code and an ``auto_map`` (``trust_remote_code=True``). A homogeneous child is a
  plain ``LlamaForCausalLM`` / ``NemotronHForCausalLM`` config that ``transformers`` loads as is;
* the tokenizer files of the parent (``tokenizer_dir``), and the parent's special token ids in config.json;
* ``puzzle_manifest.json``: parent and library digests, constraints, objective, predicted and measured
  costs, solver, per-layer variants and the versions of puzzle / torch that wrote it (``build_manifest``),
  plus ``loadable_by``: the deployment targets (``puzzle.targets``) that load the child. Given a ``target``,
  ``export_child`` refuses a child that target cannot load, naming every offending layer (``ConfigError``).

The directory appears whole or not at all: everything is written into a hidden sibling directory, which is
renamed onto ``out`` only when complete. A non-empty ``out`` is refused unless ``force``; with ``force`` the
old directory is moved aside, replaced, then deleted (and put back if the rename fails).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from puzzle.errors import CheckpointError, ConfigError
from puzzle.files import replace_dir, staging_dir

if TYPE_CHECKING:
    from puzzle.library import BlockLibrary
    from puzzle.model import CausalLM
    from puzzle.search.request import Architecture

MANIFEST_NAME = "puzzle_manifest.json"
MANIFEST_VERSION = 1
# config.json keys carried over from the parent: the ids of the tokenizer's special tokens.
_TOKEN_ID_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")


def versions() -> dict[str, str]:
    """Versions of the libraries that decide what the exported files contain."""
    import safetensors
    import torch

    from puzzle import __version__

    return {"puzzle": __version__, "torch": torch.__version__, "safetensors": safetensors.__version__}


def build_manifest(
    *,
    parent_digest: str | None,
    library_digest: str | None,
    layers: Sequence[str],
    objective: Mapping[str, Any] | None = None,
    constraints: Sequence[str] = (),
    predicted_costs: Mapping[str, float] | None = None,
    measured_costs: Mapping[str, float] | None = None,
    solver: str | None = None,
    scenario: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of one exported child (JSON-ready; ``export_child`` adds ``hf_format`` and the time)."""
    return {
        "manifest_version": MANIFEST_VERSION,
        "parent_digest": parent_digest,
        "library_digest": library_digest,
        "layers": list(layers),
        "objective": dict(objective or {}),
        "constraints": list(constraints),
        "scenario": scenario,
        "predicted_costs": dict(predicted_costs or {}),
        "measured_costs": dict(measured_costs or {}),
        "solver": solver,
        "versions": versions(),
        **({"extra": dict(extra)} if extra else {}),
    }


def check_target(out: str | os.PathLike[str], *, force: bool) -> Path:
    """``out`` as a Path; raises ``ConfigError`` when it is a file, or a non-empty directory without ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is a file; choose a directory path for the export")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"{out}: directory exists and is not empty; choose another --out or pass --force to replace it"
        )
    return out


def _tokenizer_source(model: CausalLM, tokenizer_dir: str | os.PathLike[str] | None) -> Path:
    source = Path(tokenizer_dir) if tokenizer_dir is not None else getattr(model, "hf_source", None)
    if source is None or not (Path(source) / "tokenizer.json").is_file():
        where = f" ({source} has no tokenizer.json)" if source is not None else ""
        raise CheckpointError(
            f"no tokenizer to ship with the child{where}; pass the parent checkpoint directory as the tokenizer source"
        )
    return Path(source)


def export_child(
    model: CausalLM,
    out: str | os.PathLike[str],
    *,
    manifest: Mapping[str, Any],
    tokenizer_dir: str | os.PathLike[str] | None = None,
    force: bool = False,
    target: str | None = None,
) -> Path:
    """Write ``model`` with its tokenizer and ``manifest`` as the Hugging Face directory ``out`` (atomically).

    With ``target`` (``puzzle.targets.TARGETS``), a child that target cannot load is refused before anything
    is written: ``ConfigError`` naming each offending layer and why.
    """
    from puzzle.model import hf_format, save_pretrained
    from puzzle.targets import loadable_by, require_loadable

    if target is not None:
        require_loadable(model.arch, target)
    out = check_target(out, force=force)
    source = _tokenizer_source(model, tokenizer_dir)
    staging = staging_dir(out)
    try:
        save_pretrained(model, staging, tokenizer_dir=source)
        config_file = staging / "config.json"
        config = json.loads(config_file.read_text())
        parent_config = source / "config.json"
        if parent_config.is_file():
            parent = json.loads(parent_config.read_text())
            config.update({k: parent[k] for k in _TOKEN_ID_KEYS if parent.get(k) is not None})
        config_file.write_text(json.dumps(config, indent=2) + "\n")
        full = {
            **manifest,
            "hf_format": hf_format(model.arch),
            "loadable_by": loadable_by(model.arch),
            **({"target": target} if target is not None else {}),
            "exported_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        # allow_nan=False: a NaN cost is a bug upstream, and the manifest must stay strict JSON
        (staging / MANIFEST_NAME).write_text(json.dumps(full, indent=2, allow_nan=False) + "\n")
        replace_dir(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of an exported child directory."""
    file = Path(path) / MANIFEST_NAME
    if not file.is_file():
        raise CheckpointError(f"{file}: not found; {path} is not a Puzzle export")
    return json.loads(file.read_text())


def predicted_costs(library: Any, layers: Sequence[str]) -> dict[str, float]:
    """Every whole-model cost of the library (``NAME`` and ``NAME@SCENARIO``) for the variants ``layers``
    (``puzzle.search.views.totals``, the one whole-model totals function)."""
    from puzzle.search.request import Architecture
    from puzzle.search.views import totals

    arch = Architecture.from_names(library, layers)
    return {k: float(v[0]) for k, v in totals(library, arch.choices, library.all_cost_keys(), None).items()}


def export_point(
    library: BlockLibrary,
    library_dir: str | os.PathLike[str],
    arch: Architecture,
    out: str | os.PathLike[str],
    *,
    parent: str | os.PathLike[str] | CausalLM | None = None,
    model: CausalLM | None = None,
    tokenizer_dir: str | os.PathLike[str] | None = None,
    objective: Mapping[str, Any] | None = None,
    constraints: Sequence[str] = (),
    solver: str | None = None,
    scenario: str | None = None,
    measured_costs: Mapping[str, float] | None = None,
    measure: bool = False,
    extra: Mapping[str, Any] | None = None,
    force: bool = False,
    target: str | None = None,
) -> Path:
    """The one export path (``puzzle export``, a pipeline job, the demo): the child ``arch`` of ``library``,
    assembled from the weights in ``library_dir``, written as the Hugging Face directory ``out`` with its manifest.

    ``parent``: the parent checkpoint directory (default: the one the library records; checked against the
    library's parent digest) or a parent model already loaded by ``load_parent``. ``model``: an already assembled
    (e.g. GKD-healed) child to write instead of a fresh assembly. With ``measure`` the child's latency is measured
    here in every scenario of the library and recorded with the error of the library's prediction (meaningful
    only on the device the library was profiled on). ``target``: refuse (``ConfigError`` naming each layer) a child
    that deployment target cannot load.
    """
    from puzzle.child.assemble import assemble, load_parent
    from puzzle.model import CausalLM

    out = check_target(out, force=force)  # fail before any heavy work
    layers = arch.names(library)
    parent_model = None
    if model is None or parent is not None:
        parent_model = parent if isinstance(parent, CausalLM) else load_parent(library, parent)
    child = model if model is not None else assemble(library, library_dir, layers, parent=parent_model)
    measured = dict(measured_costs or {})
    if measure:
        from puzzle.child.assess import measure_latency

        for lat in measure_latency(child, library, layers):
            measured[f"runtime_ms@{lat.scenario}"] = lat.measured_ms
            measured[f"runtime_error_pct@{lat.scenario}"] = lat.error_pct
    manifest = build_manifest(
        parent_digest=library.parent.get("digest"),
        library_digest=library.digest(),
        layers=layers,
        objective=objective,
        constraints=constraints,
        predicted_costs=predicted_costs(library, layers),
        measured_costs=measured,
        solver=solver,
        scenario=scenario,
        extra=extra,
    )
    source = tokenizer_dir if tokenizer_dir is not None else getattr(parent_model, "hf_source", None)
    return export_child(child, out, manifest=manifest, tokenizer_dir=source, force=force, target=target)
