#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs what is missing, checks formatting
# (`cargo fmt --all --check`) and lints (`cargo clippy --workspace --all-targets -D warnings`),
# builds the test image where Docker answers, runs every test with cargo-nextest (the web
# view's headless-Chromium test included: DROVER_REQUIRE_BROWSER=1), then the
# fault suite's smoke subset (hack/faults.sh --smoke: a few minutes on real hosts). Any of
# these failing fails the script, and so CI (.ci/run calls exactly this). Tests start their own
# etcd servers (single node and 3-member clusters) on free loopback ports; nothing needs to be
# running. Extra arguments go to `cargo nextest run` (e.g. a test-name filter).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

"$ROOT/hack/install-deps.sh"
log "cargo fmt --all --check"
cargo fmt --all --check || die "formatting differs from rustfmt's: run cargo fmt --all"
log "cargo clippy --workspace --all-targets -- -D warnings"
cargo clippy --quiet --workspace --all-targets -- -D warnings || die "clippy found warnings"
"$ROOT/hack/build-images.sh"
# install-deps.sh has checked that headless chromium works: the web view's browser test must
# run here, not skip (it skips only where chromium is absent and this is unset).
export DROVER_REQUIRE_BROWSER=1
log "running the test suite"
cargo nextest run --workspace --profile ci "$@"
# The fault suite's smoke subset, on real hosts (containers); the whole suite is
# hack/faults.sh. Left out when arguments pick tests, and where Docker does not answer.
if [ "$#" -eq 0 ]; then
  if docker_answers; then
    "$ROOT/hack/faults.sh" --smoke
  else
    log "docker does not answer: skipping the fault suite's smoke subset"
  fi
fi
