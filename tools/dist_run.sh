#!/usr/bin/env bash
# tools/dist_run.sh GPUS SCRIPT [ARGS...]: run an OpenMMLab train/test script on GPUS processes per node
# with torchrun (`--launcher pytorch`). Several nodes: set NNODES, NODE_RANK, MASTER_ADDR and PORT.
# torchrun starts each worker in a session of its own and forwards the stop signals to them, SIGUSR1 included
# (a stopped training run saves and exits 75; torchrun then reports the signal and exits 1). It kills workers
# still running TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (default 30) after the signal.
set -e
GPUS=$1
SCRIPT=$2
shift 2
exec torchrun --nnodes="${NNODES:-1}" --node_rank="${NODE_RANK:-0}" --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${PORT:-29500}" --nproc_per_node="$GPUS" --signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1 \
    "$SCRIPT" "$@" --launcher pytorch
