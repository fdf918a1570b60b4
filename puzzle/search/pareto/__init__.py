"""Exact Pareto frontiers: the 2-D staircase DP and the bounded frontier built on it."""
