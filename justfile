# recare tasks. `just` comes with the dev extra (PyPI package rust-just).
set shell := ["bash", "-euo", "pipefail", "-c"]

venv := ".venv/bin"

# Install for development on a CPU machine (the CPU torch wheel, never a CUDA build)
install:
    python3 -m venv .venv
    {{venv}}/pip install -c constraints/cpu.txt -e '.[dev]'
    {{venv}}/pip install --no-deps clean-fid==0.1.35

# Run the whole test suite
test *ARGS:
    {{venv}}/python -m pytest {{ARGS}}

# Lint and type-check
lint:
    {{venv}}/ruff check recare_cli tests bench experiments
    {{venv}}/mypy

# Regenerate docs/cli.md from --help
docs:
    {{venv}}/python -m recare_cli.cli.docs > docs/cli.md

# Benchmarks (print markdown tables and the command to reproduce them); run as modules from the repository root
bench:
    {{venv}}/python -m bench.bench_vocab
    {{venv}}/python -m bench.bench_erase
    {{venv}}/python -m bench.bench_sample
    {{venv}}/python -m bench.bench_layout
    {{venv}}/python -m bench.bench_toy_unet

# The offline demo on the shipped toy world (TASK: nudity, vangogh or tench)
demo OUT="recare-demo" TASK="nudity":
    {{venv}}/recare demo --out {{OUT}} --task {{TASK}}

# The paper's table on a GPU with real models; settings are environment variables (docs/recipe.md)
paper-table:
    PATH="$PWD/{{venv}}:$PATH" recipes/paper-table.sh

# The same recipe on the shipped toy world with tiny settings (CPU, a few minutes; its figures mean nothing)
paper-table-toy OUT="paper-table-toy":
    PATH="$PWD/{{venv}}:$PATH" recipes/paper-table-toy.sh {{OUT}}

# What CI runs
ci: lint test
