"""Benchmarks: each prints a markdown table and the command to reproduce it. Run from the repository root as
modules, e.g. ``python -m bench.bench_layout``."""
