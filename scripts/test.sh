#!/usr/bin/env bash
# Set up .venv and run lint, type checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
ruff check lensiar tests benchmarks scripts notebooks
mypy
# pytest exits 5 when nothing was collected; treat that (like any failure) as a failed run.
# One worker per core (pytest-xdist); tests/conftest.py gives each worker, and what it starts, its share of threads.
python -m pytest -q -p no:cacheprovider -n auto --dist worksteal "$@"
