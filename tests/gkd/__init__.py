"""Tests of global knowledge distillation."""
