"""Experiments on the toy world and the demo's outputs: each answers one question and prints its table and the command
to reproduce it. Run from the repository root as modules, e.g. ``python -m experiments.care_judge``."""
