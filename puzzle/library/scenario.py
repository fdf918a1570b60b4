"""A library's scenarios and the checks every library record applies to its values.

Sane ranges (so that a library can never carry numbers a solver cannot add up exactly enough):
    metrics and costs   finite, |value| <= ``MAX_VALUE`` (1e15), costs not negative
    sizes and counts    whole numbers in [1, ``MAX_SIZE``] (batch sizes, sequence lengths, hidden sizes, heads)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from puzzle.errors import LibraryError

MAX_VALUE = 1e15
MAX_SIZE = 2**31 - 1
SCENARIO_KINDS = ("prefill", "decode")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_name(kind: str, name: str) -> None:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise LibraryError(f"{kind} name {name!r} must be non-empty and use only letters, digits, '_', '.', '-'")


def numbers(owner: str, values: Any, *, nonnegative: bool) -> dict[str, float]:
    """A mapping name -> float, each finite, within +-``MAX_VALUE`` and (costs) not negative."""
    if not isinstance(values, Mapping):
        raise LibraryError(f"{owner}: expected an object of numbers, got {type(values).__name__}")
    out: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str) or not key or "@" in key:
            raise LibraryError(f"{owner}: key {key!r} must be a non-empty string without '@'")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise LibraryError(f"{owner}.{key}: expected a number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an int too large for a float
            value = math.inf
        if not math.isfinite(value):
            raise LibraryError(f"{owner}.{key}: must be finite, got {value}")
        if nonnegative and value < 0:
            raise LibraryError(f"{owner}.{key}: a cost cannot be negative, got {value}")
        if abs(value) > MAX_VALUE:
            raise LibraryError(f"{owner}.{key}: {value:g} is beyond the sane range (|value| <= {MAX_VALUE:g})")
        out[key] = value
    return out


def check_sizes(owner: str, data: Any) -> None:
    """Every whole number in ``data`` (a spec's nested ``to_dict()``) is at most ``MAX_SIZE``."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            check_sizes(f"{owner}.{key}", value)
    elif isinstance(data, int) and not isinstance(data, bool) and abs(data) > MAX_SIZE:
        raise LibraryError(f"{owner}: must be at most {MAX_SIZE:,}, got {data:g}")


def size(owner: str, value: Any, *, minimum: int = 1) -> int:
    """A whole number in ``[minimum, MAX_SIZE]`` (integral floats such as 8.0 are taken; NaN, 1e30 are not)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise LibraryError(f"{owner}: expected a whole number, got {value!r}")
    if isinstance(value, float) and (not math.isfinite(value) or not value.is_integer()):
        raise LibraryError(f"{owner}: expected a whole number, got {value!r}")
    if not minimum <= value <= MAX_SIZE:
        raise LibraryError(f"{owner}: must be between {minimum} and {MAX_SIZE:,}, got {value:g}")
    return int(value)


def scenario_numbers(owner: str, values: Any) -> dict[str, dict[str, float]]:
    if not isinstance(values, Mapping):
        raise LibraryError(f"{owner}: expected an object scenario -> costs, got {type(values).__name__}")
    return {str(s): numbers(f"{owner}[{s}]", c, nonnegative=True) for s, c in values.items()}


@dataclass(frozen=True)
class Scenario:
    """One measured workload (hardware + shape) that latency and memory costs refer to."""

    name: str
    kind: str = "prefill"
    batch_size: int = 1
    seq_len: int = 1
    device: str = "unknown"
    dtype: str = "unknown"
    tokens_per_sequence: int = 0  # 0: derived from kind (prefill: seq_len, decode: 1)
    threads: int = 0  # CPU threads the latencies were measured with (0: not recorded); re-measure with as many

    def __post_init__(self) -> None:
        check_name("scenario", self.name)
        if self.kind not in SCENARIO_KINDS:
            raise LibraryError(
                f"scenario {self.name}: kind must be one of {', '.join(SCENARIO_KINDS)}, got {self.kind!r}"
            )
        for attr in ("batch_size", "seq_len"):
            object.__setattr__(self, attr, size(f"scenario {self.name}: {attr}", getattr(self, attr)))
        object.__setattr__(self, "threads", size(f"scenario {self.name}: threads", self.threads, minimum=0))
        tokens = size(f"scenario {self.name}: tokens_per_sequence", self.tokens_per_sequence, minimum=0)
        object.__setattr__(self, "tokens_per_sequence", tokens)
        if self.tokens_per_sequence == 0:
            object.__setattr__(self, "tokens_per_sequence", self.seq_len if self.kind == "prefill" else 1)

    @property
    def tokens_per_run(self) -> int:
        """Tokens one measured run processes or produces: batch x tokens per sequence."""
        return self.batch_size * self.tokens_per_sequence

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "device": self.device,
            "dtype": self.dtype,
            "tokens_per_sequence": self.tokens_per_sequence,
            "threads": self.threads,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Scenario:
        if not isinstance(data, Mapping):
            raise LibraryError(f"scenario: expected an object, got {type(data).__name__}")
        known = {"name", "kind", "batch_size", "seq_len", "device", "dtype", "tokens_per_sequence", "threads"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LibraryError(f"scenario {data.get('name')}: unknown field(s) {', '.join(unknown)}")
        if "name" not in data:
            raise LibraryError("scenario: missing field name")
        return cls(**dict(data))
