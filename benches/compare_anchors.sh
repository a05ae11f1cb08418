#!/usr/bin/env bash
# Interleaves hrk and the ONNX Runtime anchor (2 threads) on one machine so ratios are taken under the
# same load: ORT, hrk variants, ORT again. Usage: benches/compare_anchors.sh [b1|b8|train]
set -u
cd "$(dirname "$0")/.."
HRK=target/release/hrk
CFG=experiments/wflw/face_alignment_wflw_hrnet_w18.yaml
ORT=${HRK_SHARED:-../shared}/bench/run_ort.py
uptime
case "${1:-b1}" in
b1)
  python3 "$ORT" --batch 1 --iters 10 | grep ort
  $HRK bench --cfg $CFG --batch 1 --iters 10
  HRK_CONV_WINOGRAD=0 $HRK bench --cfg $CFG --batch 1 --iters 10
  $HRK bench --cfg $CFG --batch 1 --iters 10 --engine graph
  python3 "$ORT" --batch 1 --iters 10 | grep ort ;;
b8)
  python3 "$ORT" --batch 8 --iters 6 | grep ort
  $HRK bench --cfg $CFG --batch 8 --iters 5
  $HRK bench --cfg $CFG --batch 8 --iters 5 --engine graph
  python3 "$ORT" --batch 8 --iters 6 | grep ort ;;
train)
  $HRK bench --cfg $CFG --batch 8 --train --iters 3 --warmup 1
  HRK_CONV_SERIAL_BATCH=1 $HRK bench --cfg $CFG --batch 8 --train --iters 3 --warmup 1 ;;
esac
uptime
