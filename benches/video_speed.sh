#!/usr/bin/env bash
# Issue 26's speed figure: `hrk predict` on a 640x480 H.264 clip (300 frames, 30 fps, one real face moving,
# made by benches/video_clip.py), the W18 network (official random init: speed only, its landmarks are
# meaningless) at --precision bf16 (f32 with PRECISION=f32). Frames/s end to end: the whole command's wall time,
# process start and model set-up included (decode + detect/track + crops + landmarks + smoothing + JSONL/CSV),
#   1. a tracked frame's work, no overlay video,
#   2. the same with the overlay video (<stem>_landmarks.mp4),
#   3. the detector on every frame (--redetect 1), no overlay video.
# A tracked frame is decode + crop + W18 + smoothing + JSONL/CSV, the detector running every 30th frame. W18's random
# init cannot hold a track (its landmarks fall on one point, so the tracker drops the face every other frame and
# detects again), so 1 and 2 run that same per-frame work with `--detector none` (the whole frame is the face crop,
# on every frame) instead; the detector's share at one detection in 30 frames follows from 3.
# Needs hrk built with video (`cargo build --release --features video`) and Python with PyAV, numpy, Pillow.
# Usage: PYTHON=.venv/bin/python benches/video_speed.sh [ROUNDS, default 3]   (prints the median of ROUNDS)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
ROUNDS=${1:-3}
PRECISION=${PRECISION:-bf16}
HRK=target/release/hrk
CFG=experiments/wflw/face_alignment_wflw_hrnet_w18.yaml
FRAMES=300
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
"$PY" benches/video_clip.py "$WORK/clip.mp4" "$FRAMES"
grep -m1 'model name' /proc/cpuinfo | sed 's/.*: /cpu: /'
echo "cores: $(nproc); commit: $(git rev-parse --short HEAD); precision: $PRECISION; $FRAMES frames 640x480"

run() {
  local label=$1
  shift
  local rates=()
  for _ in $(seq "$ROUNDS"); do
    rm -rf "$WORK/out"
    local t0 t1
    t0=$(date +%s.%N)
    "$HRK" -q predict --cfg "$CFG" --init-seed 0 --precision "$PRECISION" "$WORK/clip.mp4" --out "$WORK/out" "$@" >/dev/null
    t1=$(date +%s.%N)
    rates+=("$(echo "$FRAMES / ($t1 - $t0)" | bc -l)")
  done
  local lines
  lines=$(wc -l <"$WORK/out/clip.jsonl")
  printf '%-44s %6.1f frames/s (rounds: %s; %s JSONL lines)\n' "$label" \
    "$(printf '%s\n' "${rates[@]}" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')" \
    "$(printf '%.1f ' "${rates[@]}")" "$lines"
}

run "tracked-frame work, no overlay video" --detector none --no-overlay-video
run "tracked-frame work, overlay video" --detector none
run "detector every frame, no overlay video" --redetect 1 --no-overlay-video
