#!/usr/bin/env bash
# bash dist_test.sh CONFIG CHECKPOINT GPUS [test.py options, e.g. --eval bbox segm]
here=$(dirname "$0")
exec bash "$here/../tools/dist_run.sh" "$3" "$here/test.py" "$1" "$2" "${@:4}"
