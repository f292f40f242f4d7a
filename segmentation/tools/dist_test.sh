#!/usr/bin/env bash
# bash tools/dist_test.sh CONFIG CHECKPOINT GPUS [--aug-test] [--eval mIoU]
here=$(dirname "$0")
exec bash "$here/../../tools/dist_run.sh" "$3" "$here/../test.py" "$1" "$2" "${@:4}"
