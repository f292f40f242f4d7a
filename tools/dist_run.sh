#!/usr/bin/env bash
# tools/dist_run.sh GPUS SCRIPT [ARGS...]: run an OpenMMLab train/test script on GPUS processes per node
# with torchrun (`--launcher pytorch`). Several nodes: set NNODES, NODE_RANK, MASTER_ADDR and PORT.
set -e
GPUS=$1
SCRIPT=$2
shift 2
exec torchrun --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" --nproc_per_node="$GPUS" "$SCRIPT" "$@" --launcher pytorch
