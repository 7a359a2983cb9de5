#!/usr/bin/env bash
# Set up, then lint, type-check and run the test suite (the slow tests, marked `slow`, are deselected), then prove
# the wheel: built from the tracked files, installed into a fresh venv, `srkit export` + `srkit upscale` from outside
# the tree (scripts/check_wheel.sh, about two minutes with pip's cache warm).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
ruff check srkit tests bench scripts
mypy srkit
python -m pytest -m "not slow" -q "$@"
# the benchmark suite is run by hand (pytest bench/: timings need an idle machine), but it must still import
python -m pytest bench/ --collect-only -q >/dev/null
bash scripts/check_wheel.sh
