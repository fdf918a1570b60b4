"""Tests of child evaluation."""
