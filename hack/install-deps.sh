#!/usr/bin/env bash
# Installs what Drover's build and tests need and the machine lacks: etcd (server and etcdctl)
# and protoc from Debian's packages, and cargo-nextest from crates.io. Safe to run repeatedly.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

missing=()
command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
command -v etcdctl >/dev/null 2>&1 || missing+=(etcd-client)
command -v protoc >/dev/null 2>&1 || missing+=(protobuf-compiler)
command -v curl >/dev/null 2>&1 || missing+=(curl)

if ((${#missing[@]})); then
  log "installing ${missing[*]} from Debian's packages"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian starts etcd as a service on install where systemd runs; our scripts start their own.
  if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
    $sudo systemctl disable --now etcd >/dev/null 2>&1 || true
  fi
fi

if ! cargo nextest --version >/dev/null 2>&1; then
  log "installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest >/dev/null
fi
command -v etcd >/dev/null || die "etcd is still missing after the install"
command -v protoc >/dev/null || die "protoc is still missing after the install"
