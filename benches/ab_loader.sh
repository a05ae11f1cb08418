#!/usr/bin/env bash
# Interleaved A/B of the data loader: two builds of examples/loader_speed run alternately, A then B, on
# each sample set, for ROUNDS rounds, so both see the same machine state (compare within a round).
# SETs: 0 train whole decode, 1 train region decode, 2 test whole, 3 test region (see loader_speed).
# Usage: benches/ab_loader.sh ROUNDS A_BINARY B_BINARY SET...
#   e.g. benches/ab_loader.sh 4 target/ab/loader_speed_before target/release/examples/loader_speed 0 1 2 3
set -u
cd "$(dirname "$0")/.."
rounds=$1 a=$2 b=$3
shift 3
for round in $(seq "$rounds"); do
  for set in "$@"; do
    printf 'round %d set %s  A: %s  B: %s\n' "$round" "$set" \
      "$("$a" 200 1 1 "$set" | tail -1)" "$("$b" 200 1 1 "$set" | tail -1)"
  done
done
