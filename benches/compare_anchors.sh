#!/usr/bin/env bash
# Interleaves hrk with the anchors (2 threads each) on one machine so ratios are taken under the same load:
# ONNX Runtime; OpenVINO at its default precision (bf16 where the CPU has AMX or AVX512-BF16: the label says what
# it chose, e.g. openvino-default-bf16) and at f32, on the official W18 ONNX and on hrk's own export
# (openvino-hrk-export-…); PyTorch (f32 channels_last, bf16); hrk variants (f32, bf16, …); OpenVINO and ORT again.
# `train`: PyTorch's f32 and bf16-autocast training steps, hrk's f32 and `--precision bf16` ones. The rungs of
# knobs that were removed (serial branches, batch modes, serial conv batches) are in BENCHMARKS.md.
# Usage: [PYTHON=python-with-the-anchors] benches/compare_anchors.sh [b1|b8|train] [hrk-onnx]
#   hrk-onnx: also ONNX Runtime on hrk's own export (ort-hrk-export).
# The anchors' Python is a virtual environment of its own, not the repository's .venv (CI's): once, with VENV
# any folder outside the checkout,
#   python3 -m venv "$VENV" && "$VENV/bin/pip" install numpy onnx onnxruntime openvino torch
#   PYTHON=$VENV/bin/python benches/compare_anchors.sh b1
# (PyPI's torch brings CUDA libraries it does not use here: several GB.) A row whose Python package is missing
# prints "skipped: <row> needs <package>" and the others run.
set -u
cd "$(dirname "$0")/.." || exit 1
HRK=target/release/hrk
CFG=experiments/wflw/face_alignment_wflw_hrnet_w18.yaml
ORT=${HRK_SHARED:-../shared}/bench/run_ort.py
OPENVINO=${HRK_SHARED:-../shared}/bench/run_openvino.py
HRK_ONNX=target/anchors/hrk_w18.onnx
PY=${PYTHON:-python3}
MODE=${1:-b1}
uptime
# The anchors' packages this Python has, probed once (importing torch takes a few seconds).
HAVE=" "
for pkg in onnxruntime openvino torch; do
  if $PY -c "import $pkg" 2>/dev/null; then HAVE+="$pkg "; fi
done
# Runs one Python anchor row, or says which package it lacks: $1 the row's label, $2 the package, then the command.
py_row() {
  local label=$1 pkg=$2
  shift 2
  case "$HAVE" in
  *" $pkg "*) "$@" ;;
  *) echo "skipped: $label needs $pkg" ;;
  esac
}
ORT_ON_HRK_EXPORT=0
if [ "${2:-}" = hrk-onnx ]; then ORT_ON_HRK_EXPORT=1; fi
if [ "$MODE" != train ] && { [ $ORT_ON_HRK_EXPORT = 1 ] || [[ "$HAVE" == *" openvino "* ]]; }; then
  mkdir -p target/anchors
  $HRK export --cfg $CFG --init-seed 0 --onnx $HRK_ONNX >/dev/null || exit 1
fi
torch_anchor() { $PY benches/torch_anchor.py "$@"; }
ort_official() { $PY "$ORT" --batch "$1" --iters "$2" | grep '^ort'; }
ort_hrk_export() { $PY benches/ort_time.py --model "$HRK_ONNX" --label ort-hrk-export --batch "$1" --iters "$2"; }
# OpenVINO at batch $1, $2 iterations, precision $3 (default: what OpenVINO picks on this CPU; f32), on model $4
# (official or hrk-export). run_openvino.py names the precision the compiled model runs in; the label adds the rest.
openvino_row() {
  local batch=$1 iters=$2 precision=$3 model=$4 prefix=openvino-
  local args=(--batch "$batch" --iters "$iters" --precision "$precision")
  if [ "$model" = hrk-export ]; then
    args+=(--model "$HRK_ONNX")
    prefix=openvino-hrk-export-
  fi
  if [ "$precision" = default ]; then prefix+=default-; fi
  $PY "$OPENVINO" "${args[@]}" | sed -n "s/^openvino-/$prefix/p" | sed 's/-bfloat16 b/-bf16 b/; s/-float32 b/-f32 b/'
}
# The inference rows at batch $1: ORT and OpenVINO's default ($2 iterations) first and again last, so drift in the
# load shows; the others $3 iterations; the Winograd-off A/B row at batch 1 only.
infer_rows() {
  local batch=$1 ort_iters=$2 iters=$3
  py_row ort onnxruntime ort_official "$batch" "$ort_iters"
  if [ $ORT_ON_HRK_EXPORT = 1 ]; then py_row ort-hrk-export onnxruntime ort_hrk_export "$batch" "$ort_iters"; fi
  py_row openvino-default openvino openvino_row "$batch" "$ort_iters" default official
  py_row openvino-f32 openvino openvino_row "$batch" "$ort_iters" f32 official
  py_row openvino-hrk-export-default openvino openvino_row "$batch" "$ort_iters" default hrk-export
  py_row openvino-hrk-export-f32 openvino openvino_row "$batch" "$ort_iters" f32 hrk-export
  py_row torch-infer_cl torch torch_anchor --row infer_cl --batch "$batch" --iters "$iters"
  py_row torch-infer_bf16 torch torch_anchor --row infer_bf16 --batch "$batch" --iters "$iters"
  $HRK bench --cfg $CFG --batch "$batch" --iters "$iters"
  $HRK bench --cfg $CFG --batch "$batch" --iters "$iters" --precision bf16
  if [ "$batch" = 1 ]; then HRK_CONV_WINOGRAD=0 $HRK bench --cfg $CFG --batch 1 --iters "$iters"; fi
  $HRK bench --cfg $CFG --batch "$batch" --iters "$iters" --engine graph
  py_row openvino-default openvino openvino_row "$batch" "$ort_iters" default official
  py_row ort onnxruntime ort_official "$batch" "$ort_iters"
}
# One training step row at batch 8: $1 f32 or bf16 (hrk's `--precision`).
hrk_train() { $HRK bench --cfg $CFG --batch 8 --train --iters "$TRAIN_ITERS" --warmup 1 --precision "$1"; }
torch_train() { py_row "torch-$1" torch torch_anchor --row "$1" --batch 8 --iters "$TRAIN_ITERS" --warmup 1; }
TRAIN_ITERS=3
case "$MODE" in
b1) infer_rows 1 10 10 ;;
b8) infer_rows 8 6 5 ;;
train)
  torch_train train_cl
  torch_train train_bf16
  hrk_train f32
  hrk_train bf16
  torch_train train_eager
  hrk_train f32
  hrk_train bf16
  torch_train train_bf16
  torch_train train_cl ;;
*) echo "unknown mode $MODE (b1, b8, train)" >&2; exit 2 ;;
esac
uptime
