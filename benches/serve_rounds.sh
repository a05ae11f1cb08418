#!/usr/bin/env bash
# `hrk serve` under load: for each variant (f32 / bf16, batching on / off) start the server on W18 (official
# random init: speed only), run benches/serve_load.rs at 1, 4 and 16 concurrent clients with the 640x480
# one-face photo, stop the server with SIGTERM. Prints one line per variant and client count.
# Usage: benches/serve_rounds.sh [REQUESTS per client count, default 48] [ROUNDS, default 1]
# Build first: cargo build --release && cargo bench --bench serve_load --no-run
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-48}
rounds=${2:-1}
CFG=experiments/wflw/face_alignment_wflw_hrnet_w18.yaml
HRK=target/release/hrk
LOAD=$(find target/release/deps -maxdepth 1 -name 'serve_load-*' -type f -executable | head -1)
[ -x "$HRK" ] && [ -n "$LOAD" ] || { echo "build first: cargo build --release && cargo bench --bench serve_load --no-run" >&2; exit 2; }
port=${SERVE_PORT:-18080}

run_variant() { # label, then hrk serve flags
  local label=$1
  shift
  local log
  log=$(mktemp)
  "$HRK" serve --cfg "$CFG" --init-seed 0 --addr "127.0.0.1:$port" "$@" 2>"$log" &
  local pid=$!
  for _ in $(seq 600); do
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && break
    sleep 0.1
  done
  "$LOAD" --url "http://127.0.0.1:$port" --clients 1,4,16 --requests "$requests" --warmup 8 | sed "s/^/$label /"
  kill -TERM "$pid"
  wait "$pid"
  rm -f "$log"
}

for _ in $(seq "$rounds"); do
  run_variant "f32  batching=on " --precision f32
  run_variant "f32  batching=off" --precision f32 --batch-wait-ms 0
  run_variant "bf16 batching=on " --precision bf16
  run_variant "bf16 batching=off" --precision bf16 --batch-wait-ms 0
done
