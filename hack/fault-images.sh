#!/usr/bin/env bash
# Builds `drover/fault-host`, the one image every host of the fault suite runs, without any
# registry (`FROM scratch` by `docker import`): the drover and witness binaries (static), and
# Debian's etcd and etcdctl with the C library they link. An etcd member, a controller, an
# agent (whose process driver runs the witness workload) and the witness service are this
# image with different commands. Skipped when the image already holds the same files.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

docker_answers || die "docker does not answer: the fault suite needs the Docker engine"
command -v etcd >/dev/null 2>&1 || "$ROOT/hack/install-deps.sh"
target=x86_64-unknown-linux-gnu
log "building static drover and witness binaries"
RUSTFLAGS='-C target-feature=+crt-static' cargo build --quiet --release --target "$target" \
  -p drover -p drover-witness

stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
host="$stage/host"
mkdir -p "$host/tmp" "$host/state"
cp "target/$target/release/drover" "target/$target/release/witness" "$host/"
# etcd from Debian links the C library dynamically: the image carries exactly the libraries
# `ldd` names, at the paths the dynamic loader looks for them.
for file in /usr/bin/etcd /usr/bin/etcdctl; do
  mkdir -p "$host$(dirname "$file")"
  cp "$file" "$host$file"
  for lib in $(ldd "$file" | grep -o '/[^ ]*'); do
    mkdir -p "$host$(dirname "$lib")"
    cp -L "$lib" "$host$lib"
  done
done
import_image "drover/fault-host:latest" "$host" --change 'LABEL dev.drover.fault-suite=host'
