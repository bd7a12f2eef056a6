#!/usr/bin/env bash
# Builds `drover/fault-host`, the one image every host of the fault suite runs, without any
# registry (`FROM scratch` by `docker import`): the drover and witness binaries and Debian's
# etcd and etcdctl, each with exactly the shared libraries `ldd` names, at the paths the
# dynamic loader looks for them. An etcd member, a controller, an agent (whose process driver
# runs the witness workload), the operator's cli host and the witness service are this image
# with different commands. Skipped when the image already holds the same files.
#
#   hack/fault-images.sh [release|debug]
#
# release (the default, for the full suite and its figures) or debug (the CI smoke subset:
# reuses the test build instead of compiling everything again).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

profile="${1:-release}"
case "$profile" in
  release) cargo_profile=(--release) ;;
  debug) cargo_profile=() ;;
  *) die "unknown profile $profile: release or debug" ;;
esac
docker_answers || die "docker does not answer: the fault suite needs the Docker engine"
command -v etcd >/dev/null 2>&1 || "$ROOT/hack/install-deps.sh"
log "building drover and witness ($profile)"
cargo build --quiet "${cargo_profile[@]}" -p drover -p drover-witness

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
host="$stage/host"
mkdir -p "$host/tmp" "$host/state"
# with_libraries FILE DEST: copies FILE to DEST inside the image and every library it links.
with_libraries() {
  local file="$1" dest="$2" lib
  mkdir -p "$host$(dirname "$dest")"
  cp "$file" "$host$dest"
  for lib in $(ldd "$file" | grep -o '/[^ ]*'); do
    mkdir -p "$host$(dirname "$lib")"
    cp -L "$lib" "$host$lib"
  done
}
with_libraries "${CARGO_TARGET_DIR:-target}/$profile/drover" /drover
with_libraries "${CARGO_TARGET_DIR:-target}/$profile/witness" /witness
with_libraries /usr/bin/etcd /usr/bin/etcd
with_libraries /usr/bin/etcdctl /usr/bin/etcdctl
import_image "drover/fault-host:latest" "$host" --change 'LABEL dev.drover.fault-suite=host'
