"""Libraries with numbers no search can add up safely are refused at load and import, naming the culprit."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest

from puzzle.errors import LibraryError
from puzzle.library import BlockLibrary, import_nvlabs
from tests.library.test_library import NVLABS, needs_nvlabs, tiny_library


def _variant(d: dict, layer: int, j: int) -> dict:
    return d["layers"][layer]["variants"][j]


@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0, 1e16, 1e308, 10**400])
@pytest.mark.parametrize("where", ["costs", "scenario_costs", "metrics"])
def test_unsafe_numbers_are_refused_with_layer_and_variant(value: float, where: str) -> None:
    data = tiny_library().to_dict()
    v = _variant(data, 1, 2)
    if where == "costs":
        v["costs"]["num_params"] = value
    elif where == "scenario_costs":
        v["scenario_costs"]["pre"]["runtime_ms"] = value
    else:
        v["metrics"]["kl_div"] = value
        if value == -1.0:  # metrics (unlike costs) may be negative
            assert BlockLibrary.from_dict(data).layers[1].variants[2].metrics["kl_div"] == -1.0
            return
    with pytest.raises(LibraryError) as info:
        BlockLibrary.from_dict(data)
    message = str(info.value)
    assert message.startswith(f"layer 1 variant 2: variant {v['name']!r}"), message
    assert any(word in message for word in ("finite", "negative", "sane range")), message


def test_legal_extremes_still_load() -> None:
    data = tiny_library().to_dict()
    _variant(data, 1, 2)["scenario_costs"]["pre"]["runtime_ms"] = 1e15
    _variant(data, 0, 1)["metrics"]["kl_div"] = -1e15
    assert BlockLibrary.from_dict(data).layers[1].variants[2].scenario_costs["pre"]["runtime_ms"] == 1e15


@pytest.mark.parametrize("value", [math.nan, 1e30, 1e40, 10**40, 2.5, 0])
@pytest.mark.parametrize("field", ["batch_size", "seq_len"])
def test_scenario_sizes_must_be_sane_whole_numbers(value: float, field: str) -> None:
    data = tiny_library().to_dict()
    data["scenarios"]["pre"][field] = value
    with pytest.raises(LibraryError, match=f"scenario pre: {field}"):
        BlockLibrary.from_dict(data)


@pytest.mark.parametrize("value", [10**12, 1e30])
def test_hidden_size_must_be_sane(value: float) -> None:
    data = tiny_library().to_dict()
    data["hidden_size"] = value
    with pytest.raises(LibraryError, match="hidden_size"):
        BlockLibrary.from_dict(data)


def _nvlabs_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "nv"
    shutil.copytree(NVLABS, folder)
    for f in folder.iterdir():
        f.chmod(0o644)
    return folder


def _edit(path: Path, edit) -> None:  # type: ignore[no-untyped-def]
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))  # json writes NaN / Infinity as the JS literals


@needs_nvlabs
@pytest.mark.parametrize(
    ("file", "edit", "message"),
    [
        ("measurement_info.json", lambda d: d.update(batch_size=1e40), "batch_size: must be between 1 and"),
        ("measurement_info.json", lambda d: d.update(batch_size=math.nan), "batch_size: expected a whole number"),
        ("measurement_info.json", lambda d: d.update(sequence_length=10**40), "sequence_length: must be between"),
        (
            "parent_block_stats.json",
            lambda d: d["stats"].update(ffn_intermediate_size=math.nan),
            "ffn_intermediate_size: expected a whole number",
        ),
        ("parent_block_stats.json", lambda d: d["stats"].update(num_kv_heads=1e30), "num_kv_heads: must be between"),
        (
            "block_library.json",
            lambda d: next(iter(d["layer_7"].values()))["stats"].update(runtime_ms=1e308),
            "layer_7 variant",
        ),
        (
            "block_library.json",
            lambda d: list(d["layer_3"].values())[2]["stats"].update(num_kv_heads=math.nan),
            "num_kv_heads: expected a whole number",
        ),
    ],
)
def test_nvlabs_import_refuses_unsafe_numbers(tmp_path: Path, file: str, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    folder = _nvlabs_copy(tmp_path)
    _edit(folder / file, edit)
    with pytest.raises(LibraryError, match=message):
        import_nvlabs(folder)


def test_block_spec_sizes_beyond_range_are_refused() -> None:
    data = tiny_library().to_dict()
    _variant(data, 1, 0)["spec"]["ffn"]["intermediate_size"] = 10**40
    with pytest.raises(LibraryError, match=r"layer 1 variant 0: .*spec\.ffn\.intermediate_size: must be at most"):
        BlockLibrary.from_dict(data)
