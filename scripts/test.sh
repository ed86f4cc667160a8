#!/usr/bin/env bash
# Set up (scripts/install.sh), run the static checks (ruff, mypy, import-linter), then the default
# test suite: everything but the tests marked slow.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m slow` for the real-model runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Static checks first (seconds): lint, types over every first-party package, import layering.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/lint-imports
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
set +e
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
