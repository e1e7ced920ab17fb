#!/usr/bin/env bash
# Create .venv with the pinned packages of constraints.txt and install this project into it.
# keras-retinanet 1.0.0 goes in with --no-deps because its metadata requires opencv-python, which needs
# desktop display libraries, while the project uses opencv-python-headless. It compiles one
# Cython extension, so it is built against the NumPy and Cython already in the environment.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -c constraints.txt setuptools wheel cython numpy
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
.venv/bin/python -m pip install --quiet --no-deps --no-build-isolation -c constraints.txt keras-retinanet==1.0.0
.venv/bin/python -c "import stages.kerascompat, keras_retinanet.models" 
echo "environment ready: .venv"
