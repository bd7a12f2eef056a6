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
bin="target/$target/release/echo-server"
# DROVER_ECHO_IMAGE names another tag (tests use it to leave the real one alone).
image="${DROVER_ECHO_IMAGE:-drover/echo-server:latest}"
sum="$(sha256sum "$bin" | cut -d' ' -f1)"
current="$(docker image inspect "$image" \
  --format '{{index .Config.Labels "dev.drover.binary-sha256"}}' 2>/dev/null || true)"
if [ "$current" = "$sum" ]; then
  log "$image is up to date"
  exit 0
fi
# Re-importing under the same tag would leave the old image behind as a dangling <none>; it is
# removed below once the new one carries the tag (unless a container still uses it).
old_id="$(docker image inspect "$image" --format '{{.Id}}' 2>/dev/null || true)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
cp "$bin" "$stage/echo-server"
log "importing $image"
tar -C "$stage" -c echo-server | docker import \
  --change 'ENTRYPOINT ["/echo-server"]' \
  --change 'ENV PORT=7777' \
  --change 'EXPOSE 7777' \
  --change 'LABEL dev.drover.test-workload=echo-server' \
  --change "LABEL dev.drover.binary-sha256=$sum" \
  - "$image" >/dev/null
if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect "$image" --format '{{.Id}}')" ]; then
  docker image rm "$old_id" >/dev/null 2>&1 ||
    log "the previous $image ($old_id) is still used by a container; left in place"
fi
