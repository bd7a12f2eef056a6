#!/usr/bin/env bash
# Builds the test workload image `drover/echo-server:latest` without any registry: the echo
# server is compiled as a static binary and packaged as a one-file image by `docker import`
# (the equivalent of `FROM scratch` + `COPY`). Skipped, with a message, where Docker does not
# answer.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

if ! docker_answers; then
  log "docker does not answer: skipping the echo-server image"
  exit 0
fi
target=x86_64-unknown-linux-gnu
log "building the static echo-server"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --target "$target" -p echo-server
bin="${CARGO_TARGET_DIR:-target}/$target/release/echo-server"
# DROVER_ECHO_IMAGE names another tag (tests use it to leave the real one alone).
image="${DROVER_ECHO_IMAGE:-drover/echo-server:latest}"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$bin" "$stage/echo-server"
import_image "$image" "$stage" \
  --change 'ENTRYPOINT ["/echo-server"]' \
  --change 'ENV PORT=7777' \
  --change 'EXPOSE 7777' \
  --change 'LABEL dev.drover.test-workload=echo-server'
