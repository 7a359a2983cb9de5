#!/usr/bin/env bash
# Set up, then lint, type-check and run the test suite (the slow tests, marked `slow`, are deselected).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check srkit tests bench scripts
mypy srkit
python -m pytest -m "not slow" -q "$@"
