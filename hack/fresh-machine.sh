#!/usr/bin/env bash
# Proves the README's contract on a machine where Drover was never built: builds a clean Debian 12
# root filesystem from Debian's packages (debootstrap, minbase plus git and ca-certificates, cached
# as the local image drover-fresh/debian:12), clones this repository's HEAD into a container of
# it, and runs the README's two commands there exactly as written: `hack/up.sh`, then
# `hack/test.sh`. Prints PASS or FAIL per command and exits non-zero if either failed.
#
# Only the Rust toolchain comes from the host (its toolchain directory, mounted read-only), with a
# fresh CARGO_HOME and target/ inside the container, so cargo-nextest, etcd and protoc are
# installed by the scripts under test. The container uses the host's network (the tests bind
# loopback ports) and the host's Docker socket and CLI (the Docker tests run as on a real host),
# with a /dev/shm as large as a real machine's (Docker's default is 64 MiB),
# and trusts the host's local CA certificates (/usr/local/share/ca-certificates), which this
# network's TLS needs.
# Everything the run creates is removed on exit, even when interrupted; only the image stays.
#
#   hack/fresh-machine.sh              clone HEAD (commit first) and run both commands
#   hack/fresh-machine.sh --rebuild    rebuild the cached Debian image first
#   hack/fresh-machine.sh --keep       keep the container's work dir (printed) for a look
#   hack/fresh-machine.sh --image-only build (or find) the cached image, run nothing
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

IMAGE=drover-fresh/debian:12
SUITE=bookworm
rebuild=false
keep=false
image_only=false
for arg in "$@"; do
  case "$arg" in
    --rebuild) rebuild=true ;;
    --keep) keep=true ;;
    --image-only) image_only=true ;;
    *) echo "usage: hack/fresh-machine.sh [--rebuild] [--keep] [--image-only]" >&2; exit 64 ;;
  esac
done

docker_answers || die "the Docker engine does not answer; fresh-machine.sh runs the check in a container"
[ "$(id -u)" -eq 0 ] || die "debootstrap needs root"

# The mirror Debian's packages come from here: the one this host's apt already uses.
debian_mirror() {
  local uri=""
  if [ -f /etc/apt/sources.list.d/debian.sources ]; then
    uri="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)"
  fi
  if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
    uri="$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' /etc/apt/sources.list)"
  fi
  [ -n "$uri" ] || die "cannot tell which Debian mirror this host's apt uses"
  echo "$uri"
}

# The host's Rust toolchain directory (holds cargo, rustc, rustfmt, clippy).
toolchain_dir() {
  local sysroot
  sysroot="$(rustc --print sysroot)" || die "no Rust toolchain on the host"
  [ -x "$sysroot/bin/cargo" ] || die "$sysroot/bin/cargo is missing"
  echo "$sysroot"
}

build_image() {
  command -v debootstrap >/dev/null 2>&1 || {
    log "installing debootstrap from Debian's packages"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null
  }
  local mirror
  mirror="$(debian_mirror)"
  rootfs="$(mktemp -d /tmp/drover-rootfs.XXXXXX)"
  log "debootstrap $SUITE (minbase + git, ca-certificates) into $rootfs"
  debootstrap --variant=minbase --include=git,ca-certificates "$SUITE" "$rootfs" "$mirror" \
    >"$rootfs.log" 2>&1 || { tail -20 "$rootfs.log" >&2; rm -f "$rootfs.log"; die "debootstrap failed"; }
  rm -f "$rootfs.log"
  # The security suite as on any installed Debian, from the same host as the main mirror.
  echo "deb ${mirror%/debian}/debian-security $SUITE-security main" >>"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  log "importing the root filesystem as $IMAGE"
  local rc=0
  tar -C "$rootfs" -c . | docker import --change 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null || rc=$?
  rm -rf "$rootfs"
  ((rc == 0)) || die "docker import of the root filesystem failed"
}

toolchain="$(toolchain_dir)"
docker_cli="$(command -v docker)"
name="drover-fresh-$$"
work="$(mktemp -d /tmp/drover-fresh.XXXXXX)"
rootfs=""
cleanup() {
  docker rm -f "$name" >/dev/null 2>&1 || true
  [ -n "$rootfs" ] && rm -rf "$rootfs" "$rootfs.log"
  if $keep; then
    log "kept the work dir: $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if $rebuild || ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  old_id="$(docker image inspect "$IMAGE" --format '{{.Id}}' 2>/dev/null || true)"
  build_image
  [ -n "$old_id" ] && docker image rm "$old_id" >/dev/null 2>&1 || true
else
  log "using the cached $IMAGE (--rebuild to make it anew)"
fi
$image_only && exit 0

# The repository as it is committed: a fresh clone sees exactly what a user would.
git -C "$ROOT" rev-parse --verify HEAD >/dev/null || die "no commit to clone"
head="$(git -C "$ROOT" rev-parse --short HEAD)"
[ -z "$(git -C "$ROOT" status --porcelain)" ] ||
  log "note: uncommitted changes are not part of the check (it clones HEAD $head)"

# Inside: clone, then the README's two commands, each timed, each with its own verdict line.
cat >"$work/inside.sh" <<'EOF'
set -u
# Trust what the host's network requires (local CAs, e.g. a TLS-inspecting egress proxy), as any
# machine on that network would; Debian's own CA set comes from the image.
if ls /host-ca/*.crt >/dev/null 2>&1; then
  cp /host-ca/*.crt /usr/local/share/ca-certificates/ && update-ca-certificates >/dev/null 2>&1
fi
cd /root
git clone --quiet /src drover || { echo "FRESH-RESULT clone FAIL"; exit 1; }
cd drover
run() {
  local label="$1"; shift
  local start=$SECONDS rc=0
  echo "==> [fresh machine] $label"
  "$@" || rc=$?
  local took=$((SECONDS - start))
  if [ "$rc" -eq 0 ]; then
    echo "FRESH-RESULT $label PASS ${took}s"
  else
    echo "FRESH-RESULT $label FAIL (exit $rc) ${took}s"
  fi
  return "$rc"
}
up=0 test=0
run "hack/up.sh" hack/up.sh || up=$?
run "hack/test.sh" hack/test.sh || test=$?
[ "$up" -eq 0 ] && [ "$test" -eq 0 ]
EOF

log "running the README's commands in a clean $IMAGE container (clone of $head)"
rc=0
docker run --name "$name" --rm --init \
  --network host \
  --shm-size 4g \
  -v /var/run/docker.sock:/var/run/docker.sock \
  -v "$docker_cli:/usr/local/bin/docker:ro" \
  -v "$toolchain:/opt/rust:ro" \
  -v "$ROOT:/src:ro" \
  -v /usr/local/share/ca-certificates:/host-ca:ro \
  -v "$work:/fresh" \
  -e CARGO_HOME=/root/.cargo \
  -e PATH=/root/.cargo/bin:/opt/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
  -e CI=true \
  "$IMAGE" bash /fresh/inside.sh 2>&1 | tee "$work/output.log" || rc=$?

echo
echo "fresh-machine summary (Debian 12 container, clone of $head):"
if grep -q '^FRESH-RESULT' "$work/output.log"; then
  grep '^FRESH-RESULT' "$work/output.log" | sed 's/^FRESH-RESULT /  /'
else
  echo "  no result: the container did not run the commands"
fi
summary="$(grep -E '^ +Summary|tests run:' "$work/output.log" | tail -1 || true)"
[ -n "$summary" ] && echo "  nextest: $(echo "$summary" | sed 's/^ *//')"
if grep -q 'FRESH-RESULT .* FAIL' "$work/output.log" || ! grep -q '^FRESH-RESULT' "$work/output.log"; then
  rc=1
fi
exit "$rc"
