#!/usr/bin/env bash
# bash slurm_train.sh PARTITION JOB_NAME CONFIG WORK_DIR [train.py options], e.g. --resume after a preemption;
# GPUS, GPUS_PER_NODE, CPUS_PER_TASK, SRUN_ARGS and GRES as in tools/slurm_run.sh (MMDetection's interface).
here=$(dirname "$0")
exec bash "$here/../tools/slurm_run.sh" "$1" "$2" "$here/train.py" "$3" --work-dir="$4" "${@:5}"
