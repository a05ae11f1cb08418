#!/usr/bin/env bash
# Interleaves hrk variants round by round so an A/B sees the same machine state (this host has bursts where
# everything runs ~35 % slower; compare within a round). Prints ms/img per variant per round.
# Usage: benches/ab_rounds.sh ROUNDS BATCH ITERS "ENV=.. target/release/hrk" "target/ab/hrk-before" ...
# AB_ARGS adds bench arguments to every variant (e.g. AB_ARGS=--train times a training step; its line then says
# ms/img of the step divided by the batch; AB_ARGS='--precision bf16' works too: the timing line is picked out
# of the output, not the last line, which bf16 runs follow with their heatmap deviation).
set -u
cd "$(dirname "$0")/.."
CFG=experiments/wflw/face_alignment_wflw_hrnet_w18.yaml
rounds=$1 batch=$2 iters=$3
shift 3
for _ in $(seq "$rounds"); do
  k=0
  for variant in "$@"; do
    k=$((k + 1))
    # shellcheck disable=SC2086 # a variant is "ENV=value ... binary" and AB_ARGS a list, split on purpose
    ms=$(env $variant bench --cfg $CFG --batch "$batch" --iters "$iters" ${AB_ARGS:-} 2>&1 | grep -E '^(inference|train step)' | tail -1 | grep -o "[0-9.]* ms/img")
    printf '[%d] %s   ' "$k" "$ms"
  done
  echo
done
