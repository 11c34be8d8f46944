#!/bin/bash
# Multi-node prompt training with torchrun; run this on every node with its NODE_RANK.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/torchrun.sh configs/prompt_tuning/sst2.yaml
# The backbone sharded (FSDP) instead of copied on every GPU: TRAINER_CONFIG=configs/trainer/fsdp.yaml
# Lightning detects torchrun's environment and joins its processes instead of launching its own.
set -euo pipefail
CONFIG=${1:?usage: scripts/torchrun.sh CONFIG.yaml [more CLI arguments]}
shift
NNODES=${NNODES:-1}
NPROC=${NPROC_PER_NODE:-$(nvidia-smi -L | wc -l)}
torchrun --nnodes "$NNODES" --node-rank "${NODE_RANK:-0}" --nproc-per-node "$NPROC" \
  --master-addr "${MASTER_ADDR:-127.0.0.1}" --master-port "${MASTER_PORT:-29500}" \
  -m lit_prompts fit --config "${TRAINER_CONFIG:-configs/trainer/multi_node.yaml}" --config "$CONFIG" \
  --trainer.num_nodes "$NNODES" --trainer.devices "$NPROC" "$@"
