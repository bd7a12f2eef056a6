#!/usr/bin/env bash
# Installs what Drover's build and tests need and the machine lacks, checking each capability
# rather than a command name: protoc must compile a file importing the well-known protos
# (Debian's protobuf-compiler only *recommends* libprotobuf-dev, which holds them), etcd and
# etcdctl must answer --version, curl and python3 must run, openssl must make a certificate
# (hack/etcd.sh --tls), headless chromium must render a page (the web view's browser test).
# Packages come from Debian,
# cargo-nextest from crates.io. Safe to run repeatedly; prints what it checked.
#
#   hack/install-deps.sh           install what is missing, then verify every capability
#   hack/install-deps.sh --check   only report what is missing (exit 1 if anything is)
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

check_only=false
[ "${1:-}" = "--check" ] && check_only=true

# Each probe prints nothing and succeeds only if the capability really works.
protoc_works() {
  command -v protoc >/dev/null 2>&1 || return 1
  local dir rc=0
  dir="$(mktemp -d)"
  cat >"$dir/probe.proto" <<'EOF'
syntax = "proto3";
package drover.probe;
import "google/protobuf/descriptor.proto";
import "google/protobuf/struct.proto";
message Probe { google.protobuf.Struct s = 1; }
extend google.protobuf.FieldOptions { string probe = 50000; }
EOF
  protoc -I"$dir" --descriptor_set_out="$dir/out.pb" "$dir/probe.proto" >/dev/null 2>&1 || rc=1
  rm -rf "$dir"
  return "$rc"
}
etcd_works() { command -v etcd >/dev/null 2>&1 && timeout 10 etcd --version >/dev/null 2>&1; }
etcdctl_works() { command -v etcdctl >/dev/null 2>&1 && ETCDCTL_API=3 timeout 10 etcdctl version >/dev/null 2>&1; }
curl_works() { command -v curl >/dev/null 2>&1 && curl --version >/dev/null 2>&1; }
python_works() { command -v python3 >/dev/null 2>&1 && python3 -c 'import socket' >/dev/null 2>&1; }
# A P-256 key and a self-signed certificate with an extension, as hack/etcd.sh --tls makes them.
openssl_works() {
  command -v openssl >/dev/null 2>&1 || return 1
  local dir rc=0
  dir="$(mktemp -d)"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj "/CN=probe" \
    -addext "basicConstraints=critical,CA:TRUE" -keyout "$dir/k.pem" -out "$dir/c.pem" >/dev/null 2>&1 || rc=1
  rm -rf "$dir"
  return "$rc"
}
# Headless chromium renders about:blank (the web view's browser test drives it over DevTools).
# --no-sandbox: tests and CI run as root, where chromium's sandbox refuses to start.
chromium_works() {
  command -v chromium >/dev/null 2>&1 || return 1
  local dir rc=0
  dir="$(mktemp -d)"
  timeout 60 chromium --headless --disable-gpu --no-sandbox --user-data-dir="$dir" \
    --dump-dom about:blank 2>/dev/null | grep -q '<body' || rc=1
  rm -rf "$dir"
  return "$rc"
}
cc_works() {
  command -v cc >/dev/null 2>&1 || return 1
  local dir rc=0
  dir="$(mktemp -d)"
  echo 'int main(void){return 0;}' >"$dir/p.c"
  cc -o "$dir/p" "$dir/p.c" >/dev/null 2>&1 || rc=1
  rm -rf "$dir"
  return "$rc"
}

# capability -> Debian packages that provide it
missing=()
report=()
probe() {
  local name="$1" fn="$2"
  shift 2
  if "$fn"; then
    report+=("ok      $name")
  else
    report+=("missing $name (installs: $*)")
    missing+=("$@")
  fi
}
run_probes() {
  missing=()
  report=()
  probe "protoc with the well-known protos" protoc_works protobuf-compiler libprotobuf-dev
  probe "etcd server" etcd_works etcd-server
  probe "etcdctl" etcdctl_works etcd-client
  probe "curl" curl_works curl ca-certificates
  probe "python3" python_works python3
  probe "openssl (certificates for hack/etcd.sh --tls)" openssl_works openssl
  probe "a C compiler and linker" cc_works gcc libc6-dev
  probe "headless chromium (the web view's browser test)" chromium_works chromium
}

run_probes
if $check_only; then
  printf '%s\n' "${report[@]}" >&2
  ((${#missing[@]} == 0))
  exit $?
fi

if ((${#missing[@]})); then
  log "installing ${missing[*]} from Debian's packages"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  # Debian's etcd-server starts a system service on install where an init system runs;
  # policy-rc.d 101 forbids that for the duration of the install, our scripts start their own.
  policy=/usr/sbin/policy-rc.d
  created_policy=false
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod +x "$policy"
    created_policy=true
  fi
  rc=0
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null || rc=$?
  $created_policy && $sudo rm -f "$policy"
  ((rc == 0)) || die "apt-get install ${missing[*]} failed (exit $rc)"
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
  run_probes
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest >/dev/null
fi
cargo nextest --version >/dev/null 2>&1 || die "cargo-nextest does not run after the install"
# rustfmt and clippy: hack/test.sh runs both. Added through rustup where it manages the toolchain.
for tool in fmt clippy; do
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    component=$([ "$tool" = fmt ] && echo rustfmt || echo clippy)
    if command -v rustup >/dev/null 2>&1; then
      log "adding the $component component through rustup"
      rustup component add "$component" >/dev/null 2>&1 || true
    fi
    cargo "$tool" --version >/dev/null 2>&1 || die "cargo $tool does not run: install the $component component of the Rust toolchain"
  fi
done
if ((${#missing[@]})); then
  printf '%s\n' "${report[@]}" >&2
  die "still missing after the install: ${missing[*]}"
fi
log "dependencies: protoc (+ well-known protos), etcd, etcdctl, curl, python3, openssl, cc, headless chromium, cargo-nextest, cargo fmt and cargo clippy all work"
