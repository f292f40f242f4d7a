#!/usr/bin/env bash
# bash slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [test.py options]; GPUS, GPUS_PER_NODE, CPUS_PER_TASK,
# SRUN_ARGS and GRES as in tools/slurm_run.sh.
here=$(dirname "$0")
exec bash "$here/../tools/slurm_run.sh" "$1" "$2" "$here/test.py" "$3" "$4" "${@:5}"
