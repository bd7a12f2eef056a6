#!/usr/bin/env bash
# The fault suite: builds the drover/fault-host image (hack/fault-images.sh), then runs every
# scenario of crates/faults against a cluster of real hosts (containers on a private Docker
# network). Each scenario brings its cluster up and takes it down; whatever an interrupted run
# left (containers and networks labelled dev.drover.fault-suite.run) is removed on the way out
# and before the next run. Extra arguments go to `cargo nextest run` (e.g. a scenario's name).
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

"$ROOT/hack/fault-images.sh"
log "running the fault suite"
# One scenario at a time: each has the machine's 2 cores to itself.
cargo nextest run -p drover-faults --run-ignored all --test-threads 1 --no-capture "$@"
