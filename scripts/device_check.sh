#!/usr/bin/env bash
# Device check, under 5 minutes: masked vs unmasked training step on the device (full, LoRA) and
# a short two-team LoRA Medusa run with tokens per second and the on-device mask exactness.
# Uses CUDA when present (DEVICE=auto), else the CPU; DEVICE=cpu|cuda|cuda:N forces one.
# PYTHON selects the interpreter (default: .venv/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec timeout 290 "${PYTHON:-.venv/bin/python}" -m simulations.device_check \
    --device "${DEVICE:-auto}" --steps "${STEPS:-6}" --max-train "${MAX_TRAIN:-96}"
