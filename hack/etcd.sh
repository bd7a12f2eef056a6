#!/usr/bin/env bash
# Starts or stops a local etcd in the background on free loopback ports with its own data dir
# under .drover/etcd (a single node, or a 3-member cluster with --cluster).
#
#   hack/etcd.sh start [--cluster]   prints the endpoints and writes them to .drover/etcd.env
#   hack/etcd.sh stop
#   hack/etcd.sh status
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STATE="$ROOT/.drover/etcd"
ENV_FILE="$ROOT/.drover/etcd.env"

start() {
  local members=1
  [ "${1:-}" = "--cluster" ] && members=3
  command -v etcd >/dev/null || "$ROOT/hack/install-deps.sh"
  if [ -f "$ENV_FILE" ] && status >/dev/null 2>&1; then
    log "etcd already runs: $(cat "$ENV_FILE")"
    return 0
  fi
  stop >/dev/null 2>&1 || true
  mkdir -p "$STATE"
  local token="drover-$$-$RANDOM" cluster="" clients=() peers=() i
  for ((i = 0; i < members; i++)); do
    clients[i]="http://127.0.0.1:$(free_port)"
    peers[i]="http://127.0.0.1:$(free_port)"
    cluster+="${cluster:+,}m$i=${peers[i]}"
  done
  for ((i = 0; i < members; i++)); do
    # Periodic auto-compaction keeps etcd's history (and db size) bounded on a long-lived
    # cluster; an hour is far more than any watcher needs to catch up.
    # --backend-batch-interval: see ETCD_SERVER_FLAGS in crates/drover-store/src/server_flags.rs.
    etcd --name "m$i" --data-dir "$STATE/m$i" --logger=zap --log-level=warn \
      --backend-batch-interval=10ms \
      --auto-compaction-mode=periodic --auto-compaction-retention=1h \
      --listen-client-urls "${clients[i]}" --advertise-client-urls "${clients[i]}" \
      --listen-peer-urls "${peers[i]}" --initial-advertise-peer-urls "${peers[i]}" \
      --initial-cluster "$cluster" --initial-cluster-token "$token" --initial-cluster-state new \
      >"$STATE/m$i.log" 2>&1 &
    echo $! >"$STATE/m$i.pid"
  done
  local endpoints
  endpoints="$(IFS=,; echo "${clients[*]}")"
  echo "DROVER_ETCD=$endpoints" >"$ENV_FILE"
  for _ in $(seq 1 100); do
    if ETCDCTL_API=3 etcdctl --endpoints "$endpoints" endpoint health >/dev/null 2>&1; then
      log "etcd ($members member(s)) answers at $endpoints"
      echo "$endpoints"
      return 0
    fi
    sleep 0.1
  done
  die "etcd did not become healthy; see $STATE/m0.log"
}

stop() {
  local pid
  for f in "$STATE"/m*.pid; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    kill "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  rm -f "$ENV_FILE"
}

status() {
  [ -f "$ENV_FILE" ] || { echo "etcd is not started by hack/etcd.sh"; return 1; }
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  ETCDCTL_API=3 etcdctl --endpoints "$DROVER_ETCD" endpoint health
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: hack/etcd.sh start [--cluster] | stop | status" >&2; exit 64 ;;
esac
