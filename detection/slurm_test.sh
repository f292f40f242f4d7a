#!/usr/bin/env bash
# bash slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]; GPUS, GPUS_PER_NODE, CPUS_PER_TASK,
# SRUN_ARGS and GRES as in slurm_train.sh.
set -e
PARTITION=$1
JOB_NAME=$2
CONFIG=$3
CHECKPOINT=$4
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
GRES=${GRES-gpu:${GPUS_PER_NODE}}
SRUN_ARGS=${SRUN_ARGS:-""}
here=$(dirname "$0")
# shellcheck disable=SC2086  # SRUN_ARGS holds several options
exec srun -p "$PARTITION" --job-name="$JOB_NAME" ${GRES:+--gres="$GRES"} --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
    python -u "$here/test.py" "$CONFIG" "$CHECKPOINT" --launcher=slurm "${@:5}"
