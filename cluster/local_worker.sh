#!/usr/bin/env bash
# A worker node on this machine for the local dev cluster (cluster/local_head.sh): a second
# raylet on 127.0.0.1 with its own ports, so node loss can be tried on a laptop.
#   cluster/local_worker.sh                     # join 127.0.0.1:6379 with 2 CPUs
#   NUM_CPUS=4 RESOURCES='{"s4d_model_node": 2}' cluster/local_worker.sh
# Prints the raylet's PID: `kill -9 <pid>` (and its children) is a preempted node.
# Each worker node gets its own Ray temp dir (NODE_TEMP_DIR, default /tmp/ray-node-<port>), as
# a machine of its own would: nodes sharing the head's would share its runtime_resources, and a
# replacement node's runtime-env agent re-unpacks (rm -rf, then unzip) a job's working dir there
# while workers on the other nodes still import from it.
# Place model pools on such nodes with `stages: {tracking: {custom_resources: {s4d_model_node: 0.5}}}`.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
NODE_MANAGER_PORT="$(free_port)"
RESOURCES="${RESOURCES:-"{}"}"
NODE_TEMP_DIR="${NODE_TEMP_DIR:-${TMPDIR:-/tmp}/ray-node-$NODE_MANAGER_PORT}"
ray start --address "${HEAD_ADDRESS:-127.0.0.1:6379}" \
  --node-ip-address 127.0.0.1 \
  --num-cpus "${NUM_CPUS:-2}" \
  --resources "$RESOURCES" \
  --temp-dir "$NODE_TEMP_DIR" \
  --node-manager-port "$NODE_MANAGER_PORT" \
  --object-manager-port "$(free_port)" \
  --dashboard-agent-listen-port "$(free_port)" \
  --dashboard-agent-grpc-port "$(free_port)" \
  --runtime-env-agent-port "$(free_port)" \
  --metrics-export-port "$(free_port)" \
  --disable-usage-stats >&2
for proc in /proc/[0-9]*; do
  if tr '\0' ' ' < "$proc/cmdline" 2>/dev/null | grep -q "raylet .*--node_manager_port=$NODE_MANAGER_PORT "; then
    echo "${proc#/proc/}"
  fi
done
