#!/usr/bin/env bash
# Creates .venv and installs srkit with every CPU backend and the test tools. Idempotent.
# torch comes from constraints.txt (the CPU wheel, 2.13.0): an unpinned torch would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# shellcheck disable=SC1091
. .venv/bin/activate
if ! python -c "import srkit, torch, onnxruntime, openvino, pytest" >/dev/null 2>&1 \
   || [ pyproject.toml -nt .venv/.srkit-installed ]; then
  python -m pip install --quiet --upgrade pip 2>/dev/null || true
  python -m pip install --quiet -c constraints.txt "torch==2.13.0"
  # editable_mode=compat: a plain path entry (.pth) instead of setuptools' import hook. With the hook, a clone
  # named srkit/ shadows the package when Python runs from the clone's parent folder (the folder becomes a
  # namespace package and `import srkit` finds no __version__); a path entry lets the real package win.
  # PYTHONWARNINGS: setuptools boxes a notice that compat mode is "transitional" into the set-up output; the
  # mode is chosen on purpose (above), so the notice is noise for someone setting up.
  PYTHONWARNINGS=ignore python -m pip install --quiet -c constraints.txt -e ".[dev,quant,video,test-models]" \
    --config-settings editable_mode=compat
  touch .venv/.srkit-installed
fi
