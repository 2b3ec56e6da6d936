#!/usr/bin/env bash
# A local Redis Cluster of three masters (ports 7000-7002, no replicas) from Debian's
# redis-server, for the tests of hot-state layout v2 on a cluster (issue 21). Nothing is kept
# on disk; data and logs go in .local/redis-cluster/ (git-ignored). Idempotent: a cluster that
# already answers is left alone.
#
#   scripts/redis-cluster.sh up|down|status
#
# `up` prints the seed nodes as tests and `redis.cluster_nodes` take them:
#   TEST_REDIS_CLUSTER=redis://127.0.0.1:7000,redis://127.0.0.1:7001,redis://127.0.0.1:7002
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DIR="$ROOT/.local/redis-cluster"
PORTS=(7000 7001 7002)
say() { printf '[redis-cluster] %s\n' "$*" >&2; }

cluster_ok() { redis-cli -p "${PORTS[0]}" cluster info 2>/dev/null | grep -q 'cluster_state:ok'; }

nodes() {
  local out=()
  for port in "${PORTS[@]}"; do out+=("redis://127.0.0.1:$port"); done
  (IFS=,; echo "${out[*]}")
}

up() {
  if cluster_ok; then say "already up"; nodes; return 0; fi
  for port in "${PORTS[@]}"; do
    mkdir -p "$DIR/$port"
    if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
      # A fresh node each time: a nodes.conf from an earlier cluster would name old peers.
      rm -f "$DIR/$port/nodes.conf"
      redis-server --port "$port" --bind 127.0.0.1 --cluster-enabled yes \
        --cluster-config-file nodes.conf --save "" --appendonly no --dir "$DIR/$port" \
        --daemonize yes --logfile "$DIR/$port/log"
    fi
  done
  for port in "${PORTS[@]}"; do
    for _ in $(seq 1 40); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.25; done
  done
  local args=()
  for port in "${PORTS[@]}"; do args+=("127.0.0.1:$port"); done
  redis-cli --cluster create "${args[@]}" --cluster-replicas 0 --cluster-yes >"$DIR/create.log" 2>&1 \
    || { say "cluster create failed; see $DIR/create.log"; exit 1; }
  for _ in $(seq 1 80); do
    if cluster_ok; then say "up"; nodes; return 0; fi
    sleep 0.25
  done
  say "cluster did not reach cluster_state:ok; see $DIR/*/log"; exit 1
}

down() {
  for port in "${PORTS[@]}"; do redis-cli -p "$port" shutdown nosave >/dev/null 2>&1 || true; done
  rm -rf "$DIR"
  say "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) if cluster_ok; then say "up"; nodes; else say "down"; exit 1; fi ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
