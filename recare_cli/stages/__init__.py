"""The library API: each stage as a function from inputs to an in-memory result.

Stages load models (through ``recare_cli.models``), call the pure math in ``recare_cli.core`` and
return objects from ``recare_cli.io``; they never parse arguments or write to stdout. The CLI in
``recare_cli.cli`` is a thin layer over them.
"""
