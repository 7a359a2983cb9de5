#!/usr/bin/env bash
# The main job on the bundled model: set up, export ESPCN x3 with the parity gate, upscale the bundled sample photo
# on OpenVINO and ONNX Runtime, and benchmark every installed backend. Results land in ./out/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
mkdir -p out
echo "== srkit zoo"
srkit zoo
echo; echo "== srkit export espcn-x3 -o out/espcn-x3.onnx"
srkit export espcn-x3 -o out/espcn-x3.onnx
for backend in openvino ort; do
  echo; echo "== srkit upscale srkit/data/sample.png -m out/espcn-x3.onnx --backend $backend -o out/sample_x3_$backend.png"
  srkit upscale srkit/data/sample.png -m out/espcn-x3.onnx --backend "$backend" -o "out/sample_x3_$backend.png"
done
for backend in openvino ort; do
  echo; echo "== srkit quantize out/espcn-x3.onnx --backend $backend   (int8 within a 0.3 dB PSNR-Y budget)"
  srkit quantize out/espcn-x3.onnx --backend "$backend"
done
echo; echo "== srkit bench -m out/espcn-x3.onnx --backend all --size 1080p --json out/bench.json --markdown out/bench.md (+ the speed targets)"
srkit bench -m out/espcn-x3.onnx --backend all --size 1080p --json out/bench.json --markdown out/bench.md \
  --target-fps 80 --target-e2e-fps 50 --target-speedup 15
echo; echo "outputs in ./out: espcn-x3.onnx (and its int8 siblings), sample_x3_openvino.png, sample_x3_ort.png, bench.json, bench.md"
