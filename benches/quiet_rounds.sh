#!/usr/bin/env bash
# One quiet-machine measuring session, the steps in the order given, so that every number of one
# BENCHMARKS.md section comes from the same minutes: b1 | b8 | train (benches/compare_anchors.sh),
# detect (hrk's MTCNN against facenet-pytorch, 3 rounds), loader (the data loader's throughput).
# Usage: [PYTHON=the anchors' Python, see benches/compare_anchors.sh] benches/quiet_rounds.sh b1 b8 train detect loader
# Builds first (release binary and the loader example), so the timed steps compile nothing.
set -u
cd "$(dirname "$0")/.." || exit 1
# The detector bench looks for facenet-pytorch in HRK_PYTHON: the anchors' Python unless one is given.
if [ -z "${HRK_PYTHON:-}" ] && [ -n "${PYTHON:-}" ]; then export HRK_PYTHON=$PYTHON; fi
cargo build --release --bin hrk --example loader_speed || exit 1
for step in "$@"; do
  echo "== $step ($(date -u +%H:%M:%S), $(uptime))"
  case "$step" in
  b1 | b8 | train) benches/compare_anchors.sh "$step" ;;
  detect) cargo bench --bench detect -- 3 ;;
  loader) target/release/examples/loader_speed 200 3 ;;
  *) echo "unknown step $step (b1, b8, train, detect, loader)" >&2; exit 2 ;;
  esac
done
