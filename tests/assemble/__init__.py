"""Tests of assembling a child from a library solution."""
