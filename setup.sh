#!/usr/bin/env bash
# Set up the project on a fresh machine: a virtual environment in .venv with the exact tested
# versions (requirements.txt) and the scalablevit package installed in editable mode.
# Re-running it is cheap: an existing .venv is reused and only what changed is installed.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r requirements.txt -e .
"$VENV/bin/python" -c "import scalablevit, timm, torch; print(f'scalablevit {scalablevit.__version__}, timm {timm.__version__}, torch {torch.__version__}: ready')"
