#!/usr/bin/env bash
# tools/slurm_run.sh PARTITION JOB_NAME SCRIPT [ARGS...]: run an OpenMMLab train/test script as a Slurm job step
# with `--launcher slurm`. MMDetection's interface: GPUS (all tasks, default 8), GPUS_PER_NODE (8),
# CPUS_PER_TASK (5), SRUN_ARGS (extra srun options, e.g. "--requeue --signal=USR1@90"); GRES (default
# gpu:$GPUS_PER_NODE; empty: none, for CPU nodes).
set -e
PARTITION=$1
JOB_NAME=$2
SCRIPT=$3
shift 3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
GRES=${GRES-gpu:${GPUS_PER_NODE}}
SRUN_ARGS=${SRUN_ARGS:-""}
# shellcheck disable=SC2086  # SRUN_ARGS holds several options
exec srun -p "$PARTITION" --job-name="$JOB_NAME" ${GRES:+--gres="$GRES"} --ntasks="$GPUS" \
    --ntasks-per-node="$GPUS_PER_NODE" --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
    python -u "$SCRIPT" "$@" --launcher=slurm
