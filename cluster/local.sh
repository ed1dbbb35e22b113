#!/usr/bin/env bash
# A real three-node Ray cluster on one machine: a head and two worker nodes, each its own raylet
# with its own CPUs and a custom resource label, for trying multi-node behaviour without a cloud.
#
#   cluster/local.sh up        start the head and the two worker nodes (prints the address)
#   cluster/local.sh add NAME  join one more worker node (resource node_NAME) to the running
#                              cluster, e.g. to watch a run grow its pool (prints the node's pid)
#   cluster/local.sh status    the nodes and their resources (ray status) and our process ids
#   cluster/local.sh down      stop exactly this cluster, added nodes included (other Ray
#                              instances on the host survive)
#
# Then, for example:
#   export RAY_AUTH_MODE=token  # the cluster requires the token (~/.ray/auth_token)
#   rayfl run tiny --address "$(cluster/local.sh address)" --set client.num_workers=2
#   RAY_ADDRESS=http://127.0.0.1:8275 ray job submit --working-dir . -- rayfl tune tune_configs/smoke.yaml
#
# Settings (environment variables; the defaults suit one cluster per machine):
#   RAYFL_LOCAL_DIR         state folder: pid files, node logs, Ray's temp dir (/tmp/rayfl-local)
#   RAYFL_LOCAL_PORT        the head's GCS port, i.e. the cluster address 127.0.0.1:PORT (6390)
#   RAYFL_LOCAL_PORT_BASE   first of a block of ~700 ports used by the nodes' daemons and workers
#                           (26400); pick another block to run a second cluster beside this one.
#                           Node number n (head 0, node_a 1, node_b 2, added nodes 3, 4, ...)
#                           uses BASE+10n..BASE+10n+9 and the workers' BASE+100+200n..+199
#   RAYFL_LOCAL_HEAD_CPUS   CPUs of the head (0: it runs only the driver, the rayfl server actor
#                           and Ray's own daemons; the client workers go to the worker nodes)
#   RAYFL_LOCAL_WORKER_CPUS CPUs of each worker node (1)
#   RAYFL_LOCAL_WORKER_GPUS GPUs of each worker node (0; a GPU is not split between the nodes:
#                           set CUDA_VISIBLE_DEVICES yourself if you have several)
#   RAYFL_LOCAL_DASHBOARD   1: start the dashboard (needed by `ray job submit`), bound to
#                           127.0.0.1 only; 0: no dashboard, saves ~300 MB (1)
#   RAYFL_LOCAL_DASHBOARD_PORT  (8275)
#   RAYFL_LOCAL_OBJECT_STORE_MB object store of each node in MB (300)
#
# Why all the ports: several raylets on one host must not share the node-manager, object-manager,
# dashboard-agent, runtime-env-agent and metrics ports, nor the range their worker processes bind
# to. Ray's defaults (52365, 10001, 8265, ...) are left to any other Ray on the machine.
#
# Security: Ray's token authentication stays on (RAY_AUTH_MODE=token; the token is
# ~/.ray/auth_token, created by `ray get-auth-token --generate` on the first `up`): clients need
# RAY_AUTH_MODE=token in their environment. The dashboard binds to 127.0.0.1. Ray's GCS and
# raylets listen on all interfaces (Ray registers nodes under the host's IP, never 127.0.0.1), so
# on a machine reachable from outside keep these ports closed in its firewall.
#
# Stopping: `ray stop` would kill every Ray process on the host, including other people's. `down`
# instead signals the process group of each node it started (recorded in RAYFL_LOCAL_DIR/*.pid),
# then kills any straggler whose command line names this cluster's temp dir.
set -euo pipefail

DIR="${RAYFL_LOCAL_DIR:-/tmp/rayfl-local}"
PORT="${RAYFL_LOCAL_PORT:-6390}"
BASE="${RAYFL_LOCAL_PORT_BASE:-26400}"
HEAD_CPUS="${RAYFL_LOCAL_HEAD_CPUS:-0}"
WORKER_CPUS="${RAYFL_LOCAL_WORKER_CPUS:-1}"
WORKER_GPUS="${RAYFL_LOCAL_WORKER_GPUS:-0}"
DASHBOARD="${RAYFL_LOCAL_DASHBOARD:-1}"
DASHBOARD_PORT="${RAYFL_LOCAL_DASHBOARD_PORT:-8275}"
OBJECT_STORE_MB="${RAYFL_LOCAL_OBJECT_STORE_MB:-300}"
PYTHON="${RAYFL_PYTHON:-python}" # the Python that has ray (an activated venv's)
IP=127.0.0.1 # how we reach the head; Ray itself registers the nodes under the host's IP
TEMP="$DIR/ray" # Unix socket paths must stay under 107 characters: keep DIR short
NODES=(head node_a node_b)

export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
export RAY_USAGE_STATS_ENABLED=0
# A raylet aborts if its dashboard agent has not reported its ports in time, which happens on a
# busy machine (agents are Python processes that import a lot): wait longer, and retry a node
# that failed anyway (start_and_wait).
export RAY_agent_register_timeout_ms="${RAY_agent_register_timeout_ms:-120000}"
export RAY_raylet_start_wait_time_s="${RAY_raylet_start_wait_time_s:-120}"

log() { echo "local.sh: $*" >&2; }

# The ports of node number $1 (0 = head): ten daemon ports and a 200-port worker range each.
node_ports() {
  local b=$((BASE + 10 * $1)) w=$((BASE + 100 + 200 * $1))
  echo "--node-manager-port=$((b)) --object-manager-port=$((b + 1))" \
    "--dashboard-agent-listen-port=$((b + 2)) --dashboard-agent-grpc-port=$((b + 3))" \
    "--runtime-env-agent-port=$((b + 4)) --metrics-export-port=$((b + 5))" \
    "--min-worker-port=$w --max-worker-port=$((w + 199))"
}

alive() { [[ -f "$DIR/$1.pid" ]] && kill -0 "$(cat "$DIR/$1.pid")" 2>/dev/null; }

# Starts one node as `ray start --block` in its own session (setsid: process group = its pid),
# so that `down` can signal the node and every process it spawned, and nothing else.
start_node() {
  local name=$1 idx=$2
  shift 2
  # shellcheck disable=SC2046  # node_ports is a list of words on purpose
  setsid ray start --block --object-store-memory=$((OBJECT_STORE_MB << 20)) \
    --disable-usage-stats $(node_ports "$idx") "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

count_nodes() { # alive nodes in the cluster (0 if the head does not answer)
  "$PYTHON" - "$IP:$PORT" <<'EOF' 2>/dev/null || echo 0
import sys
from ray._raylet import GcsClient
nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5)
print(sum(1 for n in nodes.values() if n.state == 0))  # 0: ALIVE
EOF
}

# Starts node $1 (number $2, then `ray start` options) until the cluster has $WANT (default
# $2 + 1) alive nodes; up to three attempts, since a node can abort on start when the machine is
# busy (see above).
start_and_wait() {
  local name=$1 idx=$2 want=${WANT:-$(($2 + 1))} attempt n=0
  for attempt in 1 2 3; do
    start_node "$@"
    for _ in $(seq 1 180); do
      n=$(count_nodes)
      [[ "$n" -ge "$want" ]] && return 0
      alive "$name" || break # its `ray start` gave up: try again
      sleep 1
    done
    log "node $name did not come up (attempt $attempt; $DIR/$name.log)"
    cp "$DIR/$name.log" "$DIR/$name.attempt$attempt.log" 2>/dev/null || true
    [[ -f "$DIR/$name.pid" ]] && kill -KILL -- "-$(cat "$DIR/$name.pid")" 2>/dev/null || true
    sleep 2
  done
  return 1
}

up() {
  for n in "${NODES[@]}"; do
    if alive "$n"; then
      log "already up (node $n, pid $(cat "$DIR/$n.pid")); run: $0 down"
      exit 1
    fi
  done
  mkdir -p "$DIR"
  rm -f "$DIR"/*.pid "$DIR/added"
  if [[ "$RAY_AUTH_MODE" == token ]]; then
    ray get-auth-token --generate >/dev/null # a no-op if ~/.ray/auth_token exists
  fi
  # Even with --include-dashboard=false Ray starts a minimal dashboard process on the dashboard
  # port, so the port is always set (Ray's default 8265 may belong to another Ray).
  local dash=(--include-dashboard=false)
  [[ "$DASHBOARD" == 1 ]] && dash=(--include-dashboard=true)
  dash+=(--dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT")
  start_and_wait head 0 --head --port="$PORT" --temp-dir="$TEMP" --num-cpus="$HEAD_CPUS" \
    --num-gpus=0 --ray-client-server-port=$((BASE + 9)) --resources='{"node_head": 1}' "${dash[@]}" ||
    { down; exit 1; }
  # One at a time: nodes sharing a session folder pick their socket names (raylet.1, ...) on
  # start, and two starting at once can pick the same one.
  start_and_wait node_a 1 --address="$IP:$PORT" --num-cpus="$WORKER_CPUS" \
    --num-gpus="$WORKER_GPUS" --resources='{"node_a": 1}' || { down; exit 1; }
  start_and_wait node_b 2 --address="$IP:$PORT" --num-cpus="$WORKER_CPUS" \
    --num-gpus="$WORKER_GPUS" --resources='{"node_b": 1}' || { down; exit 1; }
  echo "$IP:$PORT" >"$DIR/address"
  log "up: 3 nodes at $IP:$PORT (logs: $DIR/*.log)"
  [[ "$DASHBOARD" == 1 ]] && log "dashboard and job API: http://127.0.0.1:$DASHBOARD_PORT"
  echo "$IP:$PORT"
}

# Every node this cluster started: the three of `up`, then those of `add` (in $DIR/added).
all_nodes() {
  printf '%s\n' "${NODES[@]}"
  [[ -f "$DIR/added" ]] && cat "$DIR/added"
  return 0
}

# One more worker node, named $1 (custom resource node_$1), with the next free node number.
add() {
  local name=${1:-} idx want
  if [[ ! "$name" =~ ^[A-Za-z0-9_]+$ ]]; then
    echo "usage: $0 add NAME (letters, digits, _)" >&2
    exit 2
  fi
  alive head || { log "the cluster is not up: run $0 up first"; exit 1; }
  # (grep without -q: no SIGPIPE under pipefail; "a" would clash with node_a's resource)
  if all_nodes | grep -x -e "$name" -e "node_$name" >/dev/null; then
    log "a node named $name (or with resource node_$name) exists already"
    exit 1
  fi
  idx=$(($(all_nodes | wc -l))) # head 0, node_a 1, node_b 2, added: 3, 4, ...
  want=$(($(count_nodes) + 1))   # not idx + 1: a killed node no longer counts
  [[ $want -gt 1 ]] || { log "the head at $IP:$PORT does not answer"; exit 1; }
  echo "$name" >>"$DIR/added"    # before the start, so that `down` stops it whatever happens
  WANT=$want start_and_wait "$name" "$idx" --address="$IP:$PORT" --num-cpus="$WORKER_CPUS" \
    --num-gpus="$WORKER_GPUS" --resources="{\"node_$name\": 1}" || exit 1
  log "added node $name (node_$name=1, pid $(cat "$DIR/$name.pid"))"
  cat "$DIR/$name.pid"
}

status() {
  local n
  for n in $(all_nodes); do
    if alive "$n"; then echo "$n: up (pid $(cat "$DIR/$n.pid"))"; else echo "$n: down"; fi
  done
  if alive head; then
    ray status --address="$IP:$PORT"
  fi
}

down() {
  local pids=() n pid
  for n in $(all_nodes); do
    [[ -f "$DIR/$n.pid" ]] || continue
    pid=$(cat "$DIR/$n.pid")
    # The whole process group: `ray start --block`, its raylet, agents and worker processes.
    kill -TERM -- "-$pid" 2>/dev/null && pids+=("$pid")
  done
  for _ in $(seq 1 20); do # up to 10 s for a graceful exit
    local left=0
    for pid in "${pids[@]}"; do kill -0 -- "-$pid" 2>/dev/null && left=1; done
    [[ $left == 0 ]] && break
    sleep 0.5
  done
  for pid in "${pids[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  # Stragglers that left the process group: only processes naming this cluster's temp dir.
  local stray
  stray=$(pgrep -f -- "$TEMP/" || true)
  if [[ -n "$stray" ]]; then
    # shellcheck disable=SC2086
    kill -KILL $stray 2>/dev/null || true
  fi
  rm -f "$DIR"/*.pid "$DIR/address" "$DIR/added"
  log "down"
}

address() { cat "$DIR/address"; }

case "${1:-}" in
  up) up ;;
  add) add "${2:-}" ;;
  down) down ;;
  status) status ;;
  address) address ;;
  *)
    echo "usage: $0 up|down|status|address|add NAME" >&2
    exit 2
    ;;
esac
