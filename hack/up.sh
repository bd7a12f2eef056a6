#!/usr/bin/env bash
# Drover's main job in one command, from a fresh clone: installs what is missing, builds the
# echo-server image (where Docker answers) and the drover binary, then runs `drover up`: a local
# etcd (under .drover/), one controller and one agent; applies manifests/examples/echo.yaml,
# waits until it runs, lists its instances and shows the echo reply from the published port.
#
#   hack/up.sh           show the result, then stop everything
#   hack/up.sh --stay    keep the cluster running until Ctrl-C
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

"$ROOT/hack/install-deps.sh"
"$ROOT/hack/build-images.sh"
log "building drover"
cargo build --quiet -p drover
mode=(--exit)
if [ "${1:-}" = "--stay" ]; then
  mode=()
  shift
fi
log "drover up"
exec "${CARGO_TARGET_DIR:-target}/debug/drover" up "${mode[@]}" "$@"
