#!/usr/bin/env bash
# Proves that the wheel works on its own, as a user would install it:
#   1. builds the wheel from a copy of what a clone holds (git's tracked and unignored files: no build/ leftovers),
#   2. installs it into a fresh virtual environment (never the source tree), torch the CPU wheel first as
#      scripts/setup.sh does, the rest from the wheel's own dependencies,
#   3. from a folder outside the source tree: `srkit export espcn-x3` and `srkit upscale` on the bundled sample
#      (also with the shipped all-int8 model), and checks that srkit ran from the fresh environment and the
#      outputs are 3x the sample.
# pip's cache makes a second run fast. Usage: bash scripts/check_wheel.sh   (PYTHON=python3.11 to choose Python)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON="${PYTHON:-python3}"
WORK=$(mktemp -d "${TMPDIR:-/tmp}/srkit-wheel.XXXXXX")
trap '(rm -rf "$WORK" >/dev/null 2>&1 </dev/null &)' EXIT  # in the background (a 1 GB venv takes a minute to delete)
START=$SECONDS
say() { printf 'check_wheel: %s (%ds)\n' "$1" $((SECONDS - START)); }

# 1. the wheel, from a clean copy of the tree
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/run"
git ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done \
  | xargs -0 cp --parents -t "$WORK/src"
# The set-up venv has `build` and setuptools (the dev extra): no isolated build env to download.
BUILDER="$ROOT/.venv/bin/python"
if [ -x "$BUILDER" ] && "$BUILDER" -c "import build, setuptools" >/dev/null 2>&1; then
  "$BUILDER" -m build --wheel --no-isolation --outdir "$WORK/dist" "$WORK/src" >"$WORK/build.log" 2>&1 \
    || { cat "$WORK/build.log"; exit 1; }
else
  "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WORK/dist" "$WORK/src"
fi
WHEEL=$(ls "$WORK"/dist/srkit-*.whl)
say "built $(basename "$WHEEL")"

# 2. a fresh environment that sees only the wheel
"$PYTHON" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt "torch==2.13.0"
"$PY" -m pip install --quiet --disable-pip-version-check --no-compile -c constraints.txt "${WHEEL}[export]"
say "installed into a fresh venv"

# 3. the commands a user types, from outside the source tree, with nothing pointing back at it
cd "$WORK/run"
unset PYTHONPATH
export PATH="$WORK/venv/bin:$PATH"
where=$("$PY" -c "import srkit; print(srkit.__file__)")
case "$where" in
  "$WORK/venv/"*) ;;
  *) echo "check_wheel: srkit was imported from $where, not from the fresh venv" >&2; exit 1 ;;
esac
SAMPLE=$("$PY" -c "from srkit.data import sample_image_path; print(sample_image_path())")
case "$SAMPLE" in
  "$WORK/venv/"*) ;;
  *) echo "check_wheel: the bundled sample is $SAMPLE, not inside the installed wheel" >&2; exit 1 ;;
esac
srkit export espcn-x3 -o "$WORK/run/e.onnx"
srkit upscale "$SAMPLE" -m "$WORK/run/e.onnx" -o "$WORK/run/o.png"
# the all-int8 model shipped in the wheel, found by the bundled name
srkit upscale "$SAMPLE" -m espcn-x3 --precision int8 -o "$WORK/run/o8.png"
"$PY" - "$SAMPLE" "$WORK/run/o.png" "$WORK/run/o8.png" <<'EOF'
import sys
from PIL import Image
with Image.open(sys.argv[1]) as a:
    for out in sys.argv[2:]:
        with Image.open(out) as b:
            assert b.size == (a.width * 3, a.height * 3), (out, a.size, b.size)
EOF
say "export and upscale from the wheel: OK"
