#!/usr/bin/env bash
# Shared helpers for the hack/ scripts: logging and the repository root.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '\033[1;34m==>\033[0m %s\n' "$*" >&2; }
die() { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }
# A loopback TCP port that was free a moment ago.
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}
docker_answers() { command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; }

# import_image IMAGE STAGE_DIR [--change ...]: packages every file under STAGE_DIR as the image
# IMAGE with `docker import` (the equivalent of `FROM scratch` + `COPY`: no registry needed).
# Skips the import when IMAGE already holds the same files (label dev.drover.content-sha256),
# and removes the image it replaces, so repeated builds leave nothing dangling.
import_image() {
  local image="$1" stage="$2"
  shift 2
  local sum current old_id
  sum="$(cd "$stage" && find . -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
  current="$(docker image inspect "$image" \
    --format '{{index .Config.Labels "dev.drover.content-sha256"}}' 2>/dev/null || true)"
  if [ "$current" = "$sum" ]; then
    log "$image is up to date"
    return 0
  fi
  old_id="$(docker image inspect "$image" --format '{{.Id}}' 2>/dev/null || true)"
  log "importing $image"
  tar -C "$stage" -c . | docker import "$@" \
    --change "LABEL dev.drover.content-sha256=$sum" - "$image" >/dev/null
  if [ -n "$old_id" ] && [ "$old_id" != "$(docker image inspect "$image" --format '{{.Id}}')" ]; then
    docker image rm "$old_id" >/dev/null 2>&1 ||
      log "the previous $image ($old_id) is still used by a container; left in place"
  fi
}
