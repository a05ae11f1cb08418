#!/usr/bin/env bash
# The one script a lent GPU machine runs (H100/H200, no network, ≤ 8 minutes): checks the GPU, builds,
# runs the CUDA tests on the device (every kernel and the tiny model against the CPU, W18 inference with
# and without graphs), times the kernels (GFLOP/s and % of the chip's fp32 / TF32 peak), W18 training
# img/s at batch 16 and 64 and inference latency at batch 1 and 64 with and without CUDA graphs, and
# PyTorch on the same shapes when `import torch` works there. Writes $OUT/gpu_check.md and
# $OUT/gpu_check.json (OUT defaults to target/gpu_check), logs under $OUT/logs/.
#
#   bash benches/gpu_check.sh               # on the GPU machine
#   bash benches/gpu_check.sh --dry-run     # anywhere: prints every step and its command, says which need
#                                           # a device, runs those that do not (the build), exits 0
#   --skip-build                            # with --dry-run: do not even build (the test of this script)
#   --budget SECONDS                        # total time before remaining steps are skipped (default 470)
#   --torch-ref DIR                         # shared/reference-py (hrnet_ref.py) for the PyTorch rows
#
# Every step has its own timeout, so one hang cannot eat the lease; a failed step is recorded and the
# script goes on. Exit status: 0 when every step that ran passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.."

DRY=0
SKIP_BUILD=0
BUDGET=470
TORCH_REF=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --skip-build) SKIP_BUILD=1 ;;
    --budget) BUDGET="$2"; shift ;;
    --torch-ref) TORCH_REF="$2"; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$TORCH_REF" ]; then
  for d in shared/reference-py ../shared/reference-py; do
    [ -f "$d/hrnet_ref.py" ] && TORCH_REF="$d" && break
  done
fi

OUT="${OUT:-target/gpu_check}"
mkdir -p "$OUT/logs"
CFG=experiments/wflw/face_alignment_wflw_hrnet_w18.yaml
HRK=target/release/hrk
export HRK_REQUIRE_PTX=1
START=$(date +%s)
FAILED=0
STEPS_JSON=""
MD_STEPS=""

now() { date +%s; }
elapsed() { echo $(( $(now) - START )); }

# step NAME NEEDS_DEVICE(0|1) TIMEOUT_S COMMAND... : runs (or, in a dry run, prints) one step, logging to
# $OUT/logs/NAME.log; records its status for the report.
step() {
  local name="$1" needs="$2" limit="$3"
  shift 3
  local where; where=$([ "$needs" = 1 ] && echo "needs the device" || echo "runs here")
  local status seconds=0
  if [ "$DRY" = 1 ]; then
    echo "[dry-run] $name ($where, timeout ${limit}s): $(shell_words "$@")"
    if [ "$needs" = 1 ] || { [ "$SKIP_BUILD" = 1 ] && [ "$name" = build ]; }; then
      status="not run (dry run)"
    else
      run_timed "$name" "$limit" "$@" && status=ok || status="FAILED"
    fi
  elif [ "$(elapsed)" -ge "$BUDGET" ]; then
    status="skipped (time budget of ${BUDGET}s spent)"
  else
    local left=$(( BUDGET - $(elapsed) ))
    [ "$limit" -gt "$left" ] && limit=$left
    local t0; t0=$(now)
    run_timed "$name" "$limit" "$@" && status=ok || status="FAILED"
    seconds=$(( $(now) - t0 ))
  fi
  [ "$status" = FAILED ] && FAILED=1
  echo "gpu_check: $name: $status (${seconds}s)"
  STEPS_JSON="$STEPS_JSON${STEPS_JSON:+,}{\"step\":\"$name\",\"needs_device\":$needs,\"status\":\"$status\",\"seconds\":$seconds}"
  MD_STEPS="$MD_STEPS| $name | $where | $status | $seconds |"$'\n'
  [ "$status" = ok ]
}

# The arguments as one shell line (an argument with spaces or operators in single quotes).
shell_words() {
  local a q="'" line=""
  for a in "$@"; do
    case "$a" in
      *[[:space:]\'\"\&\|\;\<\>\$]*) a="'${a//$q/$q\\$q$q}'" ;;
    esac
    line="$line${line:+ }$a"
  done
  printf '%s' "$line"
}

run_timed() {
  local name="$1" limit="$2"
  shift 2
  timeout -k 10 "$limit" "$@" >"$OUT/logs/$name.log" 2>&1
  local rc=$?
  [ "$rc" = 124 ] && echo "gpu_check: $name timed out after ${limit}s" >>"$OUT/logs/$name.log"
  return "$rc"
}

# ---------- the steps, most important first ----------

step nvidia-smi 1 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader
GPU_NAME=$( [ -s "$OUT/logs/nvidia-smi.log" ] && head -1 "$OUT/logs/nvidia-smi.log" | cut -d, -f1 || echo unknown)

# Dense peaks from the datasheets (spec/PERFORMANCE.md): fp32 FMA and TF32 tensor-core TFLOP/s, HBM TB/s.
case "$GPU_NAME" in
  *H200*) PEAK_FP32=67; PEAK_TF32=495; PEAK_TBS=4.8 ;;
  *H100*PCIe*) PEAK_FP32=51; PEAK_TF32=378; PEAK_TBS=2.0 ;;
  *H100*) PEAK_FP32=67; PEAK_TF32=495; PEAK_TBS=3.35 ;;
  *A100*) PEAK_FP32=19.5; PEAK_TF32=156; PEAK_TBS=2.0 ;;
  *) PEAK_FP32=0; PEAK_TF32=0; PEAK_TBS=0 ;;
esac

step build 0 300 bash -c 'cargo build --release && cargo test --release --no-run --test device_parity --test cuda_graphs && cargo bench --no-run --bench kernels'

# The CUDA tests (they skip with a printed reason without a device; on one they must run).
step cuda-tests 1 120 bash -c 'cargo test --release --test device_parity cuda_ -- --nocapture && cargo test --release --test cuda_graphs cuda_ -- --nocapture'
# A test that finds no device skips (and passes): on the lent machine that is a failure.
step cuda-tests-ran 1 5 bash -c "test -s '$OUT/logs/cuda-tests.log' && ! grep -q 'skipped: ' '$OUT/logs/cuda-tests.log'"

BENCH_ROWS=""
bench_step() { # NAME TIMEOUT hrk-bench-args...
  local name="$1" limit="$2"
  shift 2
  step "$name" 1 "$limit" "$HRK" bench --cfg "$CFG" --device cuda "$@"
}
bench_step infer-b1-graphs 40 --batch 1 --iters 50 --warmup 3 --graphs on
bench_step infer-b1-eager 40 --batch 1 --iters 50 --warmup 3 --graphs off
bench_step infer-b64-graphs 60 --batch 64 --iters 10 --warmup 2 --graphs on
bench_step infer-b64-eager 60 --batch 64 --iters 10 --warmup 2 --graphs off
bench_step train-b16-graphs 60 --batch 16 --train --iters 5 --warmup 2 --graphs on
bench_step train-b16-eager 60 --batch 16 --train --iters 5 --warmup 2 --graphs off
bench_step train-b64-graphs 90 --batch 64 --train --iters 5 --warmup 2 --graphs on
bench_step train-b64-eager 90 --batch 64 --train --iters 5 --warmup 2 --graphs off

step kernels 1 90 env HRK_BENCH_RUNGS=cuda cargo bench --bench kernels

cat >"$OUT/torch_bench.py" <<'PY'
import json, statistics, sys, time
import torch
sys.path.insert(0, sys.argv[1])
import hrnet_ref
torch.backends.cudnn.benchmark = True
dev = torch.device("cuda")
rows = []
def timed(fn, warmup, iters):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    t = []
    for _ in range(iters):
        t0 = time.perf_counter(); fn(); torch.cuda.synchronize(); t.append(time.perf_counter() - t0)
    return statistics.median(t)
m = hrnet_ref.build(98).to(dev)
for b in (1, 64):
    x = torch.randn(b, 3, 256, 256, device=dev)
    m.eval()
    with torch.no_grad():
        s = timed(lambda: m(x), 3, 20 if b == 1 else 10)
    rows.append({"mode": "infer", "batch": b, "median_ms": s * 1e3, "img_s": b / s})
opt = torch.optim.Adam(m.parameters(), lr=1e-4)
for b in (16, 64):
    x = torch.randn(b, 3, 256, 256, device=dev); y = torch.randn(b, 98, 64, 64, device=dev)
    m.train()
    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.mse_loss(m(x), y).backward()
        opt.step()
    s = timed(step, 2, 5)
    rows.append({"mode": "train", "batch": b, "median_ms": s * 1e3, "img_s": b / s})
print("torch-result " + json.dumps({"torch": torch.__version__, "tf32_conv": torch.backends.cudnn.allow_tf32, "rows": rows}))
PY
if [ "$DRY" = 1 ] || { command -v python3 >/dev/null && python3 -c 'import torch' 2>/dev/null && [ -n "$TORCH_REF" ]; }; then
  step pytorch 1 90 python3 "$OUT/torch_bench.py" "${TORCH_REF:-shared/reference-py}"
else
  echo "gpu_check: pytorch: skipped (no python3 with torch, or no reference-py/hrnet_ref.py)"
  STEPS_JSON="$STEPS_JSON,{\"step\":\"pytorch\",\"needs_device\":1,\"status\":\"skipped (no torch or no hrnet_ref.py)\",\"seconds\":0}"
  MD_STEPS="$MD_STEPS| pytorch | needs the device | skipped (no torch or no hrnet_ref.py) | 0 |"$'\n'
fi

# ---------- the report ----------

pct() { # value peak_in_same_unit
  awk -v v="$1" -v p="$2" 'BEGIN { if (p > 0) printf "%.1f", 100 * v / p; else printf "n/a" }'
}

BENCH_JSON=""
MD_BENCH=""
for name in infer-b1-graphs infer-b1-eager infer-b64-graphs infer-b64-eager train-b16-graphs train-b16-eager train-b64-graphs train-b64-eager; do
  line=$(grep -h '^bench-result ' "$OUT/logs/$name.log" 2>/dev/null | tail -1)
  [ -z "$line" ] && continue
  get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
  BENCH_JSON="$BENCH_JSON${BENCH_JSON:+,}{\"name\":\"$name\",\"mode\":\"$(get mode)\",\"batch\":$(get batch),\"graphs\":\"$(get graphs)\",\"median_ms\":$(get median_ms),\"img_s\":$(get img_s),\"gflops\":$(get gflops),\"pct_fp32_peak\":\"$(pct "$(get gflops)" "$(awk -v p=$PEAK_FP32 'BEGIN{print p*1000}')")\",\"peak_in_use_bytes\":$(get peak_in_use_bytes),\"peak_reserved_bytes\":$(get peak_reserved_bytes),\"fragmentation\":$(get fragmentation)}"
  MD_BENCH="$MD_BENCH| $name | $(get batch) | $(get graphs) | $(get median_ms) | $(get img_s) | $(get gflops) | $(( $(get peak_reserved_bytes) / 1048576 )) | $(get fragmentation) |"$'\n'
done

# Kernel rows: the name line, then "  cuda  <median> ms (...)  <rate> GFLOP/s|GB/s ...".
KERNEL_JSON=""
MD_KERNELS=""
if [ -s "$OUT/logs/kernels.log" ]; then
  while IFS='|' read -r kname kms krate kunit; do
    case "$kname" in *tf32*) peak=$(awk -v p=$PEAK_TF32 'BEGIN{print p*1000}'); math=tf32 ;; *) peak=$(awk -v p=$PEAK_FP32 'BEGIN{print p*1000}'); math=fp32 ;; esac
    [ "$kunit" = "GB/s" ] && { peak=$(awk -v p=$PEAK_TBS 'BEGIN{print p*1000}'); math=memory; }
    p=$(pct "$krate" "$peak")
    KERNEL_JSON="$KERNEL_JSON${KERNEL_JSON:+,}{\"kernel\":\"$kname\",\"median_ms\":$kms,\"rate\":$krate,\"unit\":\"$kunit\",\"peak_kind\":\"$math\",\"pct_peak\":\"$p\"}"
    MD_KERNELS="$MD_KERNELS| $kname | $kms | $krate $kunit | $p % of $math |"$'\n'
  done < <(awk '/^[A-Za-z0-9_]+ / && !/^cuda:/ { name = $1 } /^  cuda +[0-9]/ { for (i = 1; i <= NF; i++) if ($i == "GFLOP/s" || $i == "GB/s") { print name "|" $2 "|" $(i-1) "|" $i; break } }' "$OUT/logs/kernels.log")
fi

TORCH_LINE=$(grep -h '^torch-result ' "$OUT/logs/pytorch.log" 2>/dev/null | tail -1 | sed 's/^torch-result //')
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DATE=$(date -u +%Y-%m-%dT%H:%M:%SZ)

TMP_JSON="$OUT/gpu_check.json.tmp"
printf '{"date":"%s","commit":"%s","gpu":"%s","dry_run":%s,"peaks":{"fp32_tflops":%s,"tf32_tflops":%s,"hbm_tbs":%s},"steps":[%s],"bench":[%s],"kernels":[%s],"pytorch":%s,"seconds":%s}\n' \
  "$DATE" "$COMMIT" "$GPU_NAME" "$([ $DRY = 1 ] && echo true || echo false)" "$PEAK_FP32" "$PEAK_TF32" "$PEAK_TBS" \
  "$STEPS_JSON" "$BENCH_JSON" "$KERNEL_JSON" "${TORCH_LINE:-null}" "$(elapsed)" >"$TMP_JSON" && mv "$TMP_JSON" "$OUT/gpu_check.json"

TMP_MD="$OUT/gpu_check.md.tmp"
{
  echo "# gpu_check $DATE, commit $COMMIT, GPU: $GPU_NAME$([ $DRY = 1 ] && echo ' (dry run)')"
  echo
  echo "Peaks used for %: fp32 $PEAK_FP32 TFLOP/s, TF32 $PEAK_TF32 TFLOP/s, HBM $PEAK_TBS TB/s (datasheet, dense)."
  echo
  echo "| step | where | status | s |"
  echo "|---|---|---|---|"
  printf '%s' "$MD_STEPS"
  if [ -n "$MD_BENCH" ]; then
    echo
    echo "W18 256×256 (\`hrk bench --device cuda\`):"
    echo
    echo "| run | batch | graphs | median ms | img/s | GFLOP/s | peak reserved MiB | fragmentation |"
    echo "|---|---|---|---|---|---|---|---|"
    printf '%s' "$MD_BENCH"
  fi
  if [ -n "$MD_KERNELS" ]; then
    echo
    echo "| kernel (W18 shape) | median ms | rate | of peak |"
    echo "|---|---|---|---|"
    printf '%s' "$MD_KERNELS"
  fi
  if [ -n "$TORCH_LINE" ]; then
    echo
    echo "PyTorch (same shapes): \`$TORCH_LINE\`"
  fi
} >"$TMP_MD" && mv "$TMP_MD" "$OUT/gpu_check.md"

echo "gpu_check: wrote $OUT/gpu_check.md and $OUT/gpu_check.json ($(elapsed)s)"
if [ "$DRY" = 1 ]; then
  exit 0
fi
exit "$FAILED"
