#!/usr/bin/env bash
# One team's Medusa flow from the shell, no coordinator, for every method:
# probe three bundled tasks (1 epoch), assign ownership, then fine-tune TASK unmasked and masked.
#   bash scripts/shell_flow.sh [TASK] [OUT]      (defaults: movie runs/shell-flow)
# Prints accuracy before -> after for each run; outputs are safetensors + metrics.json per run.
set -euo pipefail
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
TASK=${1:-movie}
O=${2:-runs/shell-flow}
M=.venv/bin/medusa
COMMON="--max-train 400 --max-test 300"
for method in full lora ia3; do
  lr=""; [ "$method" = full ] && lr="--lr 1e-4"
  for t in movie tweet bbc; do
    $M train --task $t --method $method --probe $COMMON --epochs 1 $lr --out $O/$method/probe-$t | tail -1
  done
  $M assign --method $method --probe movie=$O/$method/probe-movie/probe.safetensors \
    --probe tweet=$O/$method/probe-tweet/probe.safetensors \
    --probe bbc=$O/$method/probe-bbc/probe.safetensors --out $O/$method/ownership.safetensors | tail -1
  echo "== $method $TASK unmasked"
  $M train --task $TASK --method $method $COMMON --epochs 2 $lr --out $O/$method/$TASK-free | tail -1
  echo "== $method $TASK masked"
  $M train --task $TASK --method $method $COMMON --epochs 2 $lr \
    --ownership $O/$method/ownership.safetensors --team $TASK --out $O/$method/$TASK-masked | tail -1
done
