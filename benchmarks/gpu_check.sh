#!/usr/bin/env bash
# GPU check in one run, with one table at the end:
#   1 env       python, torch and its CUDA build, driver, GPU, JAX and its devices, ray, av
#   2 models    bench_gpu: each model's throughput and peak memory in fp32 and bf16, random
#               weights written in the official checkpoint formats (no download)
#   3 optimize  bench_optimize: the track optimiser against the reference, then a full clip,
#               on JAX's default backend (the GPU where JAX has one)
#   4 pipeline  bench_gpu's Ray pipeline on synthetic clips, only where ray and av import
#
#   benchmarks/gpu_check.sh                 # on a GPU machine: the step limits add up to
#                                           # 9.5 min (sizes estimated; not yet run on a GPU)
#   benchmarks/gpu_check.sh --dry-run       # anywhere, no GPU needed: print what the GPU run
#                                           # measures (commands, sizes), then run each step
#                                           # at its smallest size on the CPU
#   benchmarks/gpu_check.sh --out DIR       # keep the results (JSON lines, table.txt) in DIR
#   benchmarks/gpu_check.sh --models sea_raft,deeplab   # a subset of bench_gpu's models
#
# Made for the lent GPU machine as it is: its own python3 with torch and JAX, no Ray, no PyAV,
# no network; only this repository is needed. PYTHON names the interpreter (default:
# .venv/bin/python when there is one, else python3). Each step runs under a time limit; a step
# that fails or runs out of time is named in the table and the next step runs. Exit status 1
# when a step failed or timed out, else 0.
set -uo pipefail
cd "$(dirname "$0")/.."

DRY_RUN=0
MODELS=sea_raft,bootstap,deeplab,dynadust3r,tracksto4d
OUT_DIR=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --models) MODELS=$2; shift ;;
    --out) OUT_DIR=$2; shift ;;
    -h|--help) awk 'NR > 1 && /^#/ { print; next } NR > 1 { exit }' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -z "$OUT_DIR" ]; then OUT_DIR=$(mktemp -d -t s4d-gpu-check-XXXXXX); fi
mkdir -p "$OUT_DIR"
rm -f "$OUT_DIR"/{env.json,steps.tsv,models.jsonl,optimize.jsonl,pipeline.jsonl,table.txt}
export PYTHONUNBUFFERED=1 S4D_JAX_CACHE=0  # compile times are part of the optimiser's figures

# the GPU run: commands and time limits (s); the four limits add up to 9.5 min
GPU_ENV=("$PY" -m benchmarks.gpu_check env --json "$OUT_DIR/env.json")
GPU_MODELS=("$PY" -m benchmarks.bench_gpu --skip-pipeline --precisions fp32,bf16
  --models "$MODELS" --json-out "$OUT_DIR/models.jsonl")
GPU_OPTIMIZE=("$PY" -m benchmarks.bench_optimize --tracks 4000 --frames 128
  --full-tracks 25000 --full-frames 200 --json-out "$OUT_DIR/optimize.jsonl")
GPU_PIPELINE=("$PY" -m benchmarks.bench_gpu --models "" --runner ray --pipeline-precision bf16
  --json-out "$OUT_DIR/pipeline.jsonl")
LIMIT_ENV=60 LIMIT_MODELS=300 LIMIT_OPTIMIZE=120 LIMIT_PIPELINE=90

failed=0
quoted() {  # a command as it would be typed: empty words and words with spaces quoted
  local word out=""
  for word in "$@"; do
    if [ -z "$word" ] || [[ "$word" =~ [[:space:]] ]]; then out+="'$word' "; else out+="$word "; fi
  done
  printf '%s' "${out% }"
}

# run_step NAME LIMIT_S COMMAND...: run it under the limit, record its status in steps.tsv
run_step() {
  local name=$1 limit=$2 start=$SECONDS rc=0 status=ok
  shift 2
  echo
  echo "=== $name (limit ${limit} s): $(quoted "$@")"
  timeout --kill-after=10 "$limit" "$@" || rc=$?
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
    status="timeout"; failed=1
  elif [ "$rc" -ne 0 ]; then
    status="failed (exit $rc)"; failed=1
  fi
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$((SECONDS - start))" "$(quoted "$@")" \
    >>"$OUT_DIR/steps.tsv"
}

skip_step() {  # NAME REASON
  echo
  echo "=== $1 skipped: $2"
  printf '%s\tskipped\t0\t%s\n' "$1" "$2" >>"$OUT_DIR/steps.tsv"
}

# why the pipeline cannot run here (empty: it can)
pipeline_blocker() {
  "$PY" -c 'import ray, av' 2>&1 | tail -n 1
}

echo "gpu_check: python $PY, results in $OUT_DIR"
echo
echo "The GPU run measures:"
echo "  1 env       $(quoted "${GPU_ENV[@]}")  (limit ${LIMIT_ENV} s)"
echo "  2 models    $(quoted "${GPU_MODELS[@]}")  (limit ${LIMIT_MODELS} s)"
"$PY" -m benchmarks.bench_gpu --plan --skip-pipeline --precisions fp32,bf16 --models "$MODELS" |
  sed 's/^/              /'
echo "  3 optimize  $(quoted "${GPU_OPTIMIZE[@]}")  (limit ${LIMIT_OPTIMIZE} s)"
echo "              ours and the reference on 4000 tracks x 128 frames (outputs compared), then"
echo "              ours on a full clip of 25000 tracks x 200 frames; one fresh process each"
echo "  4 pipeline  $(quoted "${GPU_PIPELINE[@]}")  (limit ${LIMIT_PIPELINE} s; only where ray"
echo "              and av import)"
"$PY" -m benchmarks.bench_gpu --plan --models "" --runner ray --pipeline-precision bf16 |
  sed 's/^/              /'

if [ "$DRY_RUN" = 1 ]; then
  # smallest sizes, on the CPU even where a GPU is visible
  export CUDA_VISIBLE_DEVICES="" JAX_PLATFORMS=cpu
  CHEAP_BF16=$(echo "$MODELS" | tr ',' '\n' | grep -E '^(sea_raft|dynadust3r|tracksto4d)$' |
    paste -sd, -)
  echo
  echo "--dry-run: each step at its smallest size on the CPU (bench_gpu --tiny; bf16 on the CPU"
  echo "only for ${CHEAP_BF16:-no model}: BootsTAP and DeepLab take ~7 s and ~70 s a bf16 call on"
  echo "2 CPU cores, which have no fast bf16 kernels)"
  run_step env 120 "${GPU_ENV[@]}"
  run_step models 300 "$PY" -m benchmarks.bench_gpu --tiny --device cpu --skip-pipeline \
    --precisions fp32 --models "$MODELS" --json-out "$OUT_DIR/models.jsonl"
  if [ -n "$CHEAP_BF16" ]; then
    run_step models-bf16 300 "$PY" -m benchmarks.bench_gpu --tiny --device cpu --skip-pipeline \
      --precisions bf16 --models "$CHEAP_BF16" --json-out "$OUT_DIR/models.jsonl"
  fi
  run_step optimize 300 "$PY" -m benchmarks.bench_optimize --tracks 64 --frames 16 \
    --full-tracks 128 --full-frames 24 --json-out "$OUT_DIR/optimize.jsonl"
  blocker=$(pipeline_blocker)
  if [ -n "$blocker" ]; then
    skip_step pipeline "ray or av not importable: $blocker"
  else
    run_step pipeline 600 "$PY" -m benchmarks.bench_gpu --tiny --device cpu --models "" \
      --runner ray --clips 1 --pipeline-precision fp32 --json-out "$OUT_DIR/pipeline.jsonl"
  fi
else
  run_step env "$LIMIT_ENV" "${GPU_ENV[@]}"
  run_step models "$LIMIT_MODELS" "${GPU_MODELS[@]}"
  run_step optimize "$LIMIT_OPTIMIZE" "${GPU_OPTIMIZE[@]}"
  blocker=$(pipeline_blocker)
  if [ -n "$blocker" ]; then
    skip_step pipeline "ray or av not importable: $blocker"
  else
    run_step pipeline "$LIMIT_PIPELINE" "${GPU_PIPELINE[@]}"
  fi
fi

echo
"$PY" -m benchmarks.gpu_check table "$OUT_DIR" | tee "$OUT_DIR/table.txt"
exit "$failed"
