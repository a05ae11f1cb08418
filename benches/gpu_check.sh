#!/usr/bin/env bash
# The lent-GPU check in two halves (README "GPU"). The device machine has no Rust toolchain and no network, so
# everything it runs is built here and carried there (the device tool's `carry`, 64 MiB with the working tree).
#
#   bash benches/gpu_check.sh --prepare          # here: builds the stripped hrk binary and the CUDA test
#       # executables (Cargo profile gpu-release), copies them and what they read into target/gpu-carry/ (≤ 48 MiB,
#       # manifest.tsv: path, bytes, sha256), and prints the device tool's `run` call (command and carry list)
#   --profile release                            # with --prepare: reuse the release build (`cargo test --release`
#       # already made most of it) and strip the copies, instead of building the whole crate in gpu-release
#   bash target/gpu-carry/gpu_check.sh --device  # there: runs only carried executables (no cargo, no network)
#   bash benches/gpu_check.sh --device --dry-run # anywhere: prints every device step's command, runs none
#   --budget SECONDS                             # device time before the remaining steps are skipped (default 300)
#
# Device steps, most information per second first, each under its own timeout: the carried files against the
# manifest; nvidia-smi and the driver; every PTX module loads and a kernel runs; the mma.sync probes on integer
# matrices; the tf32 and bf16 convs against an f64 reference; ops and the tiny model against the CPU; W18 inference
# (eager and graphs) and training steps against the CPU; the tiny model under tf32 (measuring its bound); then the
# timings (hrk bench, the per-kernel bench) and PyTorch on the same shapes. As each step ends its output is
# appended to $OUT/gpu_check.log and $OUT/gpu_check.md / .json are rewritten (OUT defaults to target/gpu_check),
# so a lease cut short still returns what ran. A test step that skips (no device) or runs no test fails.
# Exit status: 0 when every step passed, 1 otherwise (2: usage or --prepare failed).
set -u

MODE=""
DRY=0
BUDGET=300
PROFILE=gpu-release
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) MODE=prepare ;;
    --device) MODE=device ;;
    --dry-run) DRY=1 ;;
    --budget) BUDGET="$2"; shift ;;
    --profile) PROFILE="$2"; shift ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[ -n "$MODE" ] || { echo "gpu_check: say --prepare (here) or --device (on the GPU machine); see --help" >&2; exit 2; }

# The carry: this script's own folder when it runs from there (it holds manifest.tsv), else target/gpu-carry of
# the checkout the script belongs to.
if [ -f "$(dirname "$0")/manifest.tsv" ] && [ "$MODE" = device ]; then
  CARRY="$(dirname "$0")"
else
  cd "$(dirname "$0")/.." || exit 2
  CARRY=target/gpu-carry
fi
CARRY_LIMIT_MIB=48
TREE_LIMIT_MIB=64
# The executables the device runs: the CLI and the tests / bench with device checks.
TESTS="device_check device_parity cuda_graphs"
BENCHES="kernels"
CFG_NAME=face_alignment_wflw_hrnet_w18.yaml

# ====================================== --prepare ======================================

mib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1048576 }'; }

prepare() {
  command -v cargo >/dev/null || { echo "gpu_check --prepare: needs cargo (run it on the build machine)" >&2; return 2; }
  export HRK_REQUIRE_PTX=1
  local json; json=$(mktemp)
  local targs="" t
  for t in $TESTS; do targs="$targs --test $t"; done
  for t in $BENCHES; do targs="$targs --bench $t"; done
  # gpu-release strips at link time; the release profile keeps debug info, so its copies are stripped below.
  local strip_copies=0
  if [ "$PROFILE" != gpu-release ]; then
    command -v strip >/dev/null || { echo "gpu_check --prepare: --profile $PROFILE needs binutils' strip" >&2; return 2; }
    strip_copies=1
  fi
  echo "gpu_check: building (cargo, profile $PROFILE)"
  # shellcheck disable=SC2086 # targs is a list of cargo arguments
  if ! cargo build --profile "$PROFILE" --bin hrk --message-format=json >"$json" ||
    ! cargo test --profile "$PROFILE" --no-run --message-format=json $targs >>"$json"; then
    rm -f "$json"
    echo "gpu_check --prepare: the build failed (see above)" >&2
    return 2
  fi
  rm -rf "$CARRY"
  mkdir -p "$CARRY/bin" "$CARRY/cfg" "$CARRY/shared/parity/tiny" "$CARRY/shared/reference-py"
  # Each artefact's target name and executable, from cargo's JSON messages.
  local name exe missing=""
  for name in hrk $TESTS $BENCHES; do
    exe=$(grep '"reason":"compiler-artifact"' "$json" | grep "\"name\":\"$name\"" | grep -o '"executable":"[^"]*"' |
      tail -1 | sed 's/^"executable":"//; s/"$//')
    if [ -z "$exe" ] || [ ! -f "$exe" ]; then missing="$missing $name"; continue; fi
    if [ "$strip_copies" = 1 ]; then
      strip -o "$CARRY/bin/$name" "$exe" || return 2
    else
      cp "$exe" "$CARRY/bin/$name"
    fi
  done
  rm -f "$json"
  [ -z "$missing" ] || { echo "gpu_check --prepare: no executable for:$missing" >&2; return 2; }
  cp benches/gpu_check.sh "$CARRY/gpu_check.sh"
  # The commit the executables were built from (+dirty with uncommitted changes), for the report.
  { git rev-parse --short HEAD 2>/dev/null || echo unknown; } | tr -d '\n' >"$CARRY/commit.txt"
  git diff --quiet HEAD 2>/dev/null || echo -n "+dirty" >>"$CARRY/commit.txt"
  cp "experiments/wflw/$CFG_NAME" "$CARRY/cfg/"
  # The reference data the device tests and PyTorch read (HRK_SHARED, else ./shared or ../shared).
  local shared="${HRK_SHARED:-}" d f
  if [ -z "$shared" ]; then
    for d in shared ../shared; do [ -d "$d/parity/tiny" ] && shared="$d" && break; done
  fi
  for f in parity/tiny/config.yaml parity/tiny/meta.json parity/tiny/weights.safetensors \
    parity/tiny/inputs.safetensors reference-py/hrnet_ref.py; do
    if [ -n "$shared" ] && [ -f "$shared/$f" ]; then
      cp "$shared/$f" "$CARRY/shared/$f"
    else
      echo "gpu_check --prepare: warning: ${shared:-<no shared folder>}/$f not found (set HRK_SHARED): the steps that read it will fail or skip" >&2
    fi
  done
  # The manifest: every carried file with its size and sha256 (checked first on the device).
  local total=0 size
  : >"$CARRY/manifest.tsv.tmp"
  while IFS= read -r f; do
    size=$(stat -c %s "$CARRY/$f")
    total=$((total + size))
    printf '%s\t%s\t%s\n' "$f" "$size" "$(sha256sum "$CARRY/$f" | cut -d' ' -f1)" >>"$CARRY/manifest.tsv.tmp"
  done < <(cd "$CARRY" && find . -type f ! -name 'manifest.tsv*' | sed 's|^\./||' | LC_ALL=C sort)
  mv "$CARRY/manifest.tsv.tmp" "$CARRY/manifest.tsv"
  cat "$CARRY/manifest.tsv"
  echo "gpu_check: carry $CARRY: $(wc -l <"$CARRY/manifest.tsv") files, $(mib "$total") MiB (limit $CARRY_LIMIT_MIB MiB)"
  if [ "$total" -gt $((CARRY_LIMIT_MIB * 1048576)) ]; then
    echo "gpu_check --prepare: the carry is $(mib "$total") MiB, over $CARRY_LIMIT_MIB MiB" >&2
    return 1
  fi
  # What else travels: the tracked files and the untracked ones git does not ignore.
  local tree
  tree=$({ git ls-files -z; git ls-files -z -o --exclude-standard; } 2>/dev/null | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
  tree=${tree:-0}
  echo "gpu_check: working tree $(mib "$tree") MiB + carry = $(mib $((tree + total))) MiB (the device tool takes $TREE_LIMIT_MIB MiB)"
  if [ $((tree + total)) -gt $((TREE_LIMIT_MIB * 1048576)) ]; then
    echo "gpu_check --prepare: working tree and carry together exceed $TREE_LIMIT_MIB MiB" >&2
    return 1
  fi
  cat <<EOF

Device call (from the checkout the session runs in, one call; the tables land in \$OUT/gpu_check.md):
  run  command:   bash $CARRY/gpu_check.sh --device
       carry:     ["$CARRY"]
       timeout_s: $((BUDGET + 60))
EOF
}

if [ "$MODE" = prepare ]; then
  [ "$DRY" = 0 ] || { echo "gpu_check: --dry-run goes with --device" >&2; exit 2; }
  prepare
  exit $?
fi

# ====================================== --device ======================================

OUT="${OUT:-target/gpu_check}"
[ "$DRY" = 1 ] || mkdir -p "$OUT"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
BIN="$CARRY/bin"
CFG="$CARRY/cfg/$CFG_NAME"
export HRK_SHARED="$CARRY/shared" HRK_REQUIRE_DEVICE=1 HRK_REQUIRE_PTX=1
START=$(date +%s)
FAILED=0
STEPS_JSON=""
MD_STEPS=""
STEP_NAMES=""
GPU_NAME=unknown
DRIVER=unknown
[ "$DRY" = 1 ] || : >"$OUT/gpu_check.log"

elapsed() { echo $(($(date +%s) - START)); }

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

# step NAME TIMEOUT_S COMMAND... : runs one step (a dry run prints it), its output in $WORK/NAME.log and appended
# to $OUT/gpu_check.log, then rewrites the report. It fails on a nonzero exit, a timeout, a skipped test ("skipped: ")
# or a test executable that ran no test.
step() {
  local name="$1" limit="$2"
  shift 2
  STEP_NAMES="$STEP_NAMES $name"
  local status seconds=0
  if [ "$DRY" = 1 ]; then
    echo "[dry-run] $name (timeout ${limit}s): $(shell_words "$@")"
    status="not run (dry run)"
  elif [ "$(elapsed)" -ge "$BUDGET" ]; then
    status="skipped (time budget of ${BUDGET}s spent)"
  else
    local left=$((BUDGET - $(elapsed))) log="$WORK/$name.log" t0 rc
    [ "$limit" -gt "$left" ] && limit=$left
    t0=$(date +%s)
    timeout -k 10 "$limit" "$@" >"$log" 2>&1
    rc=$?
    seconds=$(($(date +%s) - t0))
    if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
      status="FAILED (timed out after ${limit}s)"
    elif [ "$rc" != 0 ]; then
      status="FAILED (exit $rc)"
    elif grep -q 'skipped: ' "$log"; then
      status="FAILED (skipped: $(grep -m1 -o 'skipped: .*' "$log" | cut -c10-120))"
    elif grep -q '^running 0 tests' "$log" && ! grep -q '^running [1-9]' "$log"; then
      status="FAILED (no test matched)"
    else
      status=ok
    fi
    { echo "===== $name: $status (${seconds}s): $(shell_words "$@")"; cat "$log"; echo; } >>"$OUT/gpu_check.log"
  fi
  case "$status" in FAILED*) FAILED=1 ;; esac
  if [ "$name" = nvidia-smi ] && [ "$status" = ok ]; then
    GPU_NAME=$(head -1 "$WORK/$name.log" | cut -d, -f1 | sed 's/^ *//; s/ *$//; s/["\\]//g')
    DRIVER=$(head -1 "$WORK/$name.log" | cut -d, -f3 | sed 's/^ *//; s/ *$//; s/["\\]//g')
  fi
  [ "$DRY" = 1 ] || echo "gpu_check: $name: $status (${seconds}s)"
  local json_status=${status//\\/\\\\}
  json_status=${json_status//\"/\\\"}
  STEPS_JSON="$STEPS_JSON${STEPS_JSON:+,}{\"step\":\"$name\",\"status\":\"$json_status\",\"seconds\":$seconds,\"command\":\"$(shell_words "$@" | sed 's/\\/\\\\/g; s/"/\\"/g')\"}"
  MD_STEPS="$MD_STEPS| $name | $status | $seconds |"$'\n'
  [ "$DRY" = 1 ] || write_report
}

# A carried test executable: only the tests whose names contain FILTER, their output shown.
test_step() { # NAME TIMEOUT EXECUTABLE FILTER [more test-harness arguments]
  local name="$1" limit="$2" exe="$3" filter="$4"
  shift 4
  step "$name" "$limit" "$BIN/$exe" "$filter" --nocapture "$@"
}

bench_step() { # NAME TIMEOUT hrk-bench-arguments...
  local name="$1" limit="$2"
  shift 2
  step "$name" "$limit" "$BIN/hrk" bench --cfg "$CFG" --device cuda "$@"
}

# ---------- the report (rewritten after every step) ----------

pct() { # value peak_in_same_unit
  awk -v v="$1" -v p="$2" 'BEGIN { if (p > 0) printf "%.1f", 100 * v / p; else printf "n/a" }'
}

write_report() {
  local gpu=$GPU_NAME driver=$DRIVER
  # Dense datasheet peaks: fp32 FMA and TF32 tensor-core TFLOP/s, HBM TB/s.
  local peak_fp32=0 peak_tf32=0 peak_tbs=0
  case "$gpu" in
    *H200*) peak_fp32=67; peak_tf32=495; peak_tbs=4.8 ;;
    *H100*PCIe*) peak_fp32=51; peak_tf32=378; peak_tbs=2.0 ;;
    *H100*) peak_fp32=67; peak_tf32=495; peak_tbs=3.35 ;;
    *A100*) peak_fp32=19.5; peak_tf32=156; peak_tbs=2.0 ;;
  esac
  local name line bench_json="" md_bench=""
  for name in $STEP_NAMES; do
    line=$(grep -h '^bench-result ' "$WORK/$name.log" 2>/dev/null | tail -1)
    [ -z "$line" ] && continue
    get() { echo "$line" | tr ' ' '\n' | sed -n "s/^$1=//p"; }
    bench_json="$bench_json${bench_json:+,}{\"name\":\"$name\",\"mode\":\"$(get mode)\",\"batch\":$(get batch),\"graphs\":\"$(get graphs)\",\"median_ms\":$(get median_ms),\"img_s\":$(get img_s),\"gflops\":$(get gflops),\"pct_fp32_peak\":\"$(pct "$(get gflops)" "$(awk -v p=$peak_fp32 'BEGIN{print p*1000}')")\",\"peak_in_use_bytes\":$(get peak_in_use_bytes),\"peak_reserved_bytes\":$(get peak_reserved_bytes),\"fragmentation\":$(get fragmentation)}"
    md_bench="$md_bench| $name | $(get batch) | $(get graphs) | $(get median_ms) | $(get img_s) | $(get gflops) | $(($(get peak_reserved_bytes) / 1048576)) | $(get fragmentation) |"$'\n'
  done
  # Kernel rows: the name line, then "  cuda  <median> ms (...)  <rate> GFLOP/s|GB/s ...".
  local kernel_json="" md_kernels="" kname kms krate kunit peak math p
  if [ -s "$WORK/kernels.log" ]; then
    while IFS='|' read -r kname kms krate kunit; do
      case "$kname" in
        *tf32* | *bf16*) peak=$(awk -v p=$peak_tf32 'BEGIN{print p*1000}'); math=tf32 ;;
        *) peak=$(awk -v p=$peak_fp32 'BEGIN{print p*1000}'); math=fp32 ;;
      esac
      [ "$kunit" = "GB/s" ] && { peak=$(awk -v p=$peak_tbs 'BEGIN{print p*1000}'); math=memory; }
      p=$(pct "$krate" "$peak")
      kernel_json="$kernel_json${kernel_json:+,}{\"kernel\":\"$kname\",\"median_ms\":$kms,\"rate\":$krate,\"unit\":\"$kunit\",\"peak_kind\":\"$math\",\"pct_peak\":\"$p\"}"
      md_kernels="$md_kernels| $kname | $kms | $krate $kunit | $p % of $math |"$'\n'
    done < <(awk '/^[A-Za-z0-9_]+ / && !/^cuda:/ { name = $1 } /^  cuda +[0-9]/ { for (i = 1; i <= NF; i++) if ($i == "GFLOP/s" || $i == "GB/s") { print name "|" $2 "|" $(i-1) "|" $i; break } }' "$WORK/kernels.log")
  fi
  local torch_line commit date
  torch_line=$(grep -h '^torch-result ' "$WORK/pytorch.log" 2>/dev/null | tail -1 | sed 's/^torch-result //')
  commit=$(head -1 "$CARRY/commit.txt" 2>/dev/null)
  commit=${commit:-unknown}
  date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
  printf '{"date":"%s","commit":"%s","gpu":"%s","driver":"%s","peaks":{"fp32_tflops":%s,"tf32_tflops":%s,"hbm_tbs":%s},"steps":[%s],"bench":[%s],"kernels":[%s],"pytorch":%s,"seconds":%s}\n' \
    "$date" "$commit" "$gpu" "$driver" "$peak_fp32" "$peak_tf32" "$peak_tbs" \
    "$STEPS_JSON" "$bench_json" "$kernel_json" "${torch_line:-null}" "$(elapsed)" >"$OUT/gpu_check.json.tmp" &&
    mv "$OUT/gpu_check.json.tmp" "$OUT/gpu_check.json"
  {
    echo "# gpu_check $date, commit $commit, GPU: $gpu, driver $driver"
    echo
    echo "Peaks used for %: fp32 $peak_fp32 TFLOP/s, TF32 $peak_tf32 TFLOP/s, HBM $peak_tbs TB/s (datasheet, dense)."
    echo
    echo "| step | status | s |"
    echo "|---|---|---|"
    printf '%s' "$MD_STEPS"
    if [ -n "$md_bench" ]; then
      echo
      echo "W18 256×256 (\`hrk bench --device cuda\`):"
      echo
      echo "| run | batch | graphs | median ms | img/s | GFLOP/s | peak reserved MiB | fragmentation |"
      echo "|---|---|---|---|---|---|---|---|"
      printf '%s' "$md_bench"
    fi
    if [ -n "$md_kernels" ]; then
      echo
      echo "| kernel (W18 shape) | median ms | rate | of peak |"
      echo "|---|---|---|---|"
      printf '%s' "$md_kernels"
    fi
    if [ -n "$torch_line" ]; then
      echo
      echo "PyTorch (same shapes): \`$torch_line\`"
    fi
  } >"$OUT/gpu_check.md.tmp" && mv "$OUT/gpu_check.md.tmp" "$OUT/gpu_check.md"
}

# ---------- the steps, most information per second first ----------

# The carry arrived whole: every file of the manifest with its size and sha256.
verify_carry() {
  local f size sum n=0
  while IFS=$'\t' read -r f size sum; do
    if [ "$(stat -c %s "$CARRY/$f" 2>/dev/null)" != "$size" ] || [ "$(sha256sum <"$CARRY/$f" | cut -d' ' -f1)" != "$sum" ]; then
      echo "$CARRY/$f: missing, or not the file of manifest.tsv"
      return 1
    fi
    n=$((n + 1))
  done <"$CARRY/manifest.tsv"
  echo "$n files match $CARRY/manifest.tsv"
}
export CARRY
export -f verify_carry
step manifest 20 bash -c verify_carry
step nvidia-smi 20 nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm --format=csv,noheader
test_step ptx-load 90 device_check cuda_ptx
test_step mma-probes 30 device_check cuda_mma
test_step conv-tf32-bf16 60 device_check cuda_conv
test_step ops-tiny-model 90 device_parity cuda_
test_step w18-infer-train 120 cuda_graphs cuda_
# Not yet bounded on a device (tests/device_parity.rs): run for its figures; a failure here is a measurement.
test_step tiny-model-tf32 60 device_parity cuda_tiny_model_matches_cpu_under_tf32_mma --ignored

bench_step infer-b1-graphs 30 --batch 1 --iters 50 --warmup 3 --graphs on
bench_step infer-b1-eager 30 --batch 1 --iters 50 --warmup 3 --graphs off
bench_step infer-b64-graphs 45 --batch 64 --iters 10 --warmup 2 --graphs on
bench_step infer-b64-eager 45 --batch 64 --iters 10 --warmup 2 --graphs off
bench_step train-b16-graphs 45 --batch 16 --train --iters 5 --warmup 2 --graphs on
bench_step train-b16-eager 45 --batch 16 --train --iters 5 --warmup 2 --graphs off
bench_step train-b64-graphs 60 --batch 64 --train --iters 5 --warmup 2 --graphs on
bench_step train-b64-eager 60 --batch 64 --train --iters 5 --warmup 2 --graphs off
step kernels 60 env HRK_BENCH_RUNGS=cuda "$BIN/kernels"

cat >"$WORK/torch_bench.py" <<'PY'
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
step pytorch 90 python3 "$WORK/torch_bench.py" "$CARRY/shared/reference-py"

if [ "$DRY" = 1 ]; then
  echo "gpu_check: dry run: $(echo $STEP_NAMES | wc -w) steps listed, none run"
  exit 0
fi
write_report
echo "gpu_check: wrote $OUT/gpu_check.md, gpu_check.json and gpu_check.log ($(elapsed)s)"
exit "$FAILED"
