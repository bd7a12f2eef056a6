#!/usr/bin/env bash
# The fault suite: builds the drover/fault-host image (hack/fault-images.sh), then runs the
# scenarios of crates/faults against a cluster of real hosts (containers on private Docker
# networks), and prints the reliability table (docs/reliability.md) from the figures they
# recorded in target/faults/figures.jsonl.
#
#   hack/faults.sh            every scenario, each fault repeated DROVER_FAULT_ROUNDS times
#                             (default 3), on the release build
#   hack/faults.sh --smoke    the CI subset (an agent cut off, with and without self-fencing;
#                             the etcd leader killed), one round each, on the debug build
#
# Extra arguments go to `cargo nextest run` (e.g. `-E 'test(etcd)'`). Each scenario brings its
# cluster up and takes it down; whatever an interrupted run left (containers and networks
# labelled dev.drover.fault-suite.run) is removed on the way out and before the next run.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

cleanup() {
  local ids
  ids="$(docker ps -aq --filter label=dev.drover.fault-suite.run 2>/dev/null || true)"
  [ -z "$ids" ] || docker rm -f -v $ids >/dev/null 2>&1 || true
  ids="$(docker network ls -q --filter label=dev.drover.fault-suite.run 2>/dev/null || true)"
  [ -z "$ids" ] || docker network rm $ids >/dev/null 2>&1 || true
}
trap cleanup EXIT INT TERM

profile=release
filter=()
if [ "${1:-}" = "--smoke" ]; then
  shift
  profile=debug
  export DROVER_FAULT_ROUNDS=1
  filter=(-E 'test(a_cut_off_agent_stops) | test(without_self_fencing) | test(the_etcd_leader_killed)')
else
  export DROVER_FAULT_ROUNDS="${DROVER_FAULT_ROUNDS:-3}"
fi
"$ROOT/hack/fault-images.sh" "$profile"
mkdir -p target/faults
export DROVER_FAULT_FIGURES="$ROOT/target/faults/figures.jsonl"
: > "$DROVER_FAULT_FIGURES"
log "running the fault suite ($profile build, $DROVER_FAULT_ROUNDS round(s) per scenario)"
started="$(date -u +%Y-%m-%dT%H:%MZ)"
status=0
# One scenario at a time (--no-capture runs them one by one): each has both cores to itself.
cargo nextest run -p drover-faults --run-ignored all --no-fail-fast --no-capture \
  "${filter[@]}" "$@" || status=$?
log "figures of the run started $started ($profile build, $DROVER_FAULT_ROUNDS round(s)):"
cargo run --quiet -p drover-faults --bin fault-report -- "$DROVER_FAULT_FIGURES" |
  tee target/faults/table.md
exit "$status"
