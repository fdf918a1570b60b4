"""Tests of the baselines (uniform width, depth pruning)."""
