#!/usr/bin/env bash
# Local dev cluster: a Ray head on 127.0.0.1 with the dashboard and a Prometheus metrics port.
#   cluster/local_head.sh                 # start (uses .venv/ of this checkout)
#   NUM_GPUS=2 cluster/local_head.sh      # advertise 2 GPUs: a GPU-cluster rehearsal without
#                                         # GPUs (models run with models.allow_cpu_fallback)
#   cluster/local_head.sh stop            # stop
# Then submit jobs to http://127.0.0.1:8265 and watch them at the same address in a browser.
# RAY_PORT, DASHBOARD_PORT, METRICS_PORT and TEMP_DIR move it (tests run heads side by side).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
if [ "${1:-start}" = "stop" ]; then
  exec ray stop
fi
# More logical CPUs than cores: model actors take fractional CPUs, and read/decode tasks must
# still find a slot on a 2-core laptop (an actor pool holding every CPU starves them).
# Ray 2.60 heads authenticate clients with a token: make one on first use (~/.ray/auth_token)
# unless RAY_AUTH_TOKEN is set; clients send it with RAY_AUTH_MODE=token.
if [ -z "${RAY_AUTH_TOKEN:-}" ]; then
  ray get-auth-token --generate >/dev/null
fi
NUM_CPUS="${NUM_CPUS:-$(( $(nproc) > 4 ? $(nproc) : 4 ))}"
exec ray start --head \
  --node-ip-address 127.0.0.1 \
  --port "${RAY_PORT:-6379}" \
  --dashboard-host 127.0.0.1 \
  --dashboard-port "${DASHBOARD_PORT:-8265}" \
  --metrics-export-port "${METRICS_PORT:-8080}" \
  --num-cpus "$NUM_CPUS" \
  --num-gpus "${NUM_GPUS:-0}" \
  ${TEMP_DIR:+--temp-dir "$TEMP_DIR"} \
  --disable-usage-stats
