#!/usr/bin/env bash
# bash dist_train.sh CONFIG GPUS [train.py options]; several nodes: NNODES, NODE_RANK, MASTER_ADDR, PORT.
here=$(dirname "$0")
exec bash "$here/../tools/dist_run.sh" "$2" "$here/train.py" "$1" "${@:3}"
