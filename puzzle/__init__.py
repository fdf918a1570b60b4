"""Puzzle: find, build and ship cheaper heterogeneous variants of a trained LLM."""

from __future__ import annotations

__version__ = "0.1.0"
