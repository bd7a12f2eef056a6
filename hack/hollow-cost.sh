#!/usr/bin/env bash
# What an idle hollow node costs: starts its own etcd (tmpfs data dir, free loopback ports),
# then `drover agent --hollow-nodes N --node hollow`, waits until all N node keys exist, and
# samples the agent's VmRSS and CPU time (and etcd's) over a window. Prints KiB per node and
# CPU microseconds per node per second. Everything it started is stopped and removed on exit,
# error or interrupt.
#
#   hack/hollow-cost.sh [NODES=2000] [WINDOW_SECONDS=20]
#
# The binary is $DROVER_BIN, else ${CARGO_TARGET_DIR:-$ROOT/target}/release/drover (build it first:
# cargo build --release -p drover). Bounded: registration may take 120 s, the window is
# WINDOW_SECONDS; nothing is left running afterwards.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

NODES="${1:-2000}"
WINDOW="${2:-20}"
BIN="${DROVER_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/drover}"
PREFIX=/hollow-cost
[ -x "$BIN" ] || die "no drover binary at $BIN (cargo build --release -p drover)"
command -v etcd >/dev/null || die "etcd is not installed (hack/install-deps.sh)"

base=/dev/shm
[ -d "$base" ] || base="${TMPDIR:-/tmp}"
DIR="$(mktemp -d "$base/drover-hollow-cost-XXXXXX")"
ETCD_PID="" AGENT_PID=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$AGENT_PID" ] && kill -0 "$AGENT_PID" 2>/dev/null; then
    kill -TERM "$AGENT_PID" 2>/dev/null || true
    # SIGTERM revokes the leases; give it a few seconds, then SIGKILL.
    for _ in $(seq 1 50); do kill -0 "$AGENT_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$AGENT_PID" 2>/dev/null || true
  fi
  if [ -n "$ETCD_PID" ]; then
    kill -KILL "$ETCD_PID" 2>/dev/null || true
    wait "$ETCD_PID" 2>/dev/null || true
  fi
  rm -rf "$DIR"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

client="http://127.0.0.1:$(free_port)"
peer="http://127.0.0.1:$(free_port)"
etcd --name hc --data-dir "$DIR/etcd" --logger=zap --log-level=warn \
  --listen-client-urls "$client" --advertise-client-urls "$client" \
  --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
  --initial-cluster "hc=$peer" --initial-cluster-state new \
  --quota-backend-bytes=$((8 * 1024 * 1024 * 1024)) >"$DIR/etcd.log" 2>&1 &
ETCD_PID=$!
ctl() { ETCDCTL_API=3 etcdctl --endpoints "$client" "$@"; }
for _ in $(seq 1 100); do
  ctl endpoint health >/dev/null 2>&1 && break
  sleep 0.1
done
ctl endpoint health >/dev/null 2>&1 || die "etcd did not become healthy: $(cat "$DIR/etcd.log")"

"$BIN" --etcd "$client" --prefix "$PREFIX" \
  agent --hollow-nodes "$NODES" --node hollow >"$DIR/agent.log" 2>&1 &
AGENT_PID=$!
log "agent pid $AGENT_PID: waiting for $NODES node keys"
registered=0
for _ in $(seq 1 1200); do
  kill -0 "$AGENT_PID" 2>/dev/null || die "the agent exited: $(tail -n 20 "$DIR/agent.log")"
  registered="$(ctl get --prefix "$PREFIX/nodes/" --keys-only | grep -c . || true)"
  [ "$registered" -ge "$NODES" ] && break
  sleep 0.1
done
[ "$registered" -ge "$NODES" ] || die "only $registered/$NODES nodes registered within 120 s"
# Let start-up work (first listings, registrations) settle before the window opens.
sleep 2

ticks="$(getconf CLK_TCK)"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
a0="$(cpu_ticks "$AGENT_PID")" e0="$(cpu_ticks "$ETCD_PID")" t0="$(date +%s.%N)"
sleep "$WINDOW"
a1="$(cpu_ticks "$AGENT_PID")" e1="$(cpu_ticks "$ETCD_PID")" t1="$(date +%s.%N)"
agent_rss="$(rss_kib "$AGENT_PID")" etcd_rss="$(rss_kib "$ETCD_PID")"
# A failed scrape prints "?" rather than ending the run (set -e, pipefail) after the window.
watchers="$(curl -s "$client/metrics" | awk '/^etcd_debugging_mvcc_watcher_total / {print $2}' || true)"
streams="$(curl -s "$client/metrics" | awk '/^etcd_debugging_mvcc_watch_stream_total / {print $2}' || true)"
python3 - "$NODES" "$ticks" "$t0" "$t1" "$a0" "$a1" "$e0" "$e1" "$agent_rss" "$etcd_rss" \
  "${watchers:-?}" "${streams:-?}" <<'EOF'
import sys
n, ticks = int(sys.argv[1]), int(sys.argv[2])
t0, t1 = float(sys.argv[3]), float(sys.argv[4])
a0, a1, e0, e1 = (int(x) for x in sys.argv[5:9])
agent_rss, etcd_rss = int(sys.argv[9]), int(sys.argv[10])
watchers, streams = sys.argv[11], sys.argv[12]
secs = t1 - t0
def us_per_node_s(c0, c1):
    return (c1 - c0) / ticks * 1e6 / n / secs
print(f"{n} idle hollow nodes, {secs:.1f} s window")
print(f"agent: VmRSS {agent_rss} KiB = {agent_rss / n:.1f} KiB per node; "
      f"CPU {(a1 - a0) / ticks:.2f} s = {us_per_node_s(a0, a1):.1f} us per node per second")
print(f"etcd:  VmRSS {etcd_rss} KiB = {etcd_rss / n:.1f} KiB per node; "
      f"CPU {(e1 - e0) / ticks:.2f} s = {us_per_node_s(e0, e1):.1f} us per node per second")
print(f"etcd watchers {watchers}, watch streams {streams}")
EOF
