"""Benchmarks of edgelora against the paper's baselines and the tools users would pick instead."""
