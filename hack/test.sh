#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, builds the test image where
# Docker answers, and runs every test with cargo-nextest. Tests start their own etcd servers
# (single node and 3-member clusters) on free loopback ports; nothing needs to be running.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

"$ROOT/hack/install-deps.sh"
"$ROOT/hack/build-images.sh"
log "running the test suite"
cargo nextest run --workspace --profile ci "$@"
