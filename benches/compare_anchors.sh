#!/usr/bin/env bash
# Interleaves hrk with the ONNX Runtime and PyTorch anchors (2 threads each) on one machine so ratios are
# taken under the same load: ORT, PyTorch (f32 channels_last, bf16), hrk variants (f32, bf16, …), ORT again. The rungs of
# knobs that were removed (serial branches, batch modes, serial conv batches) are in BENCHMARKS.md.
# Usage: [PYTHON=python-with-torch-and-onnxruntime] benches/compare_anchors.sh [b1|b8|train]
set -u
cd "$(dirname "$0")/.."
HRK=target/release/hrk
CFG=experiments/wflw/face_alignment_wflw_hrnet_w18.yaml
ORT=${HRK_SHARED:-../shared}/bench/run_ort.py
PY=${PYTHON:-python3}
TORCH="$PY benches/torch_anchor.py"
uptime
ORT_HRK=:
if [ "${2:-}" = hrk-onnx ]; then
  mkdir -p target/anchors
  $HRK export --cfg $CFG --init-seed 0 --onnx target/anchors/hrk_w18.onnx >/dev/null || exit 1
  ORT_HRK="python3 benches/ort_time.py --model target/anchors/hrk_w18.onnx --label ort-hrk-export"
fi
# The inference rows at batch $1: ORT ($2 iterations) first and again last, so drift in the load shows; the
# others $3 iterations; the Winograd-off A/B row at batch 1 only.
infer_rows() {
  local batch=$1 ort_iters=$2 iters=$3
  $PY "$ORT" --batch "$batch" --iters "$ort_iters" | grep ort
  $ORT_HRK --batch "$batch" --iters "$ort_iters"
  $TORCH --row infer_cl --batch "$batch" --iters "$iters"
  $TORCH --row infer_bf16 --batch "$batch" --iters "$iters"
  $HRK bench --cfg $CFG --batch "$batch" --iters "$iters"
  $HRK bench --cfg $CFG --batch "$batch" --iters "$iters" --precision bf16
  if [ "$batch" = 1 ]; then HRK_CONV_WINOGRAD=0 $HRK bench --cfg $CFG --batch 1 --iters "$iters"; fi
  $HRK bench --cfg $CFG --batch "$batch" --iters "$iters" --engine graph
  $PY "$ORT" --batch "$batch" --iters "$ort_iters" | grep ort
}
case "${1:-b1}" in
b1) infer_rows 1 10 10 ;;
b8) infer_rows 8 6 5 ;;
train)
  $TORCH --row train_cl --batch 8 --iters 3 --warmup 1
  $HRK bench --cfg $CFG --batch 8 --train --iters 3 --warmup 1
  $TORCH --row train_eager --batch 8 --iters 3 --warmup 1
  $HRK bench --cfg $CFG --batch 8 --train --iters 3 --warmup 1
  $TORCH --row train_cl --batch 8 --iters 3 --warmup 1 ;;
esac
uptime
