#!/usr/bin/env bash
# Starts or stops a local etcd in the background on free loopback ports with its own data dir
# under .drover/etcd (a single node, or a 3-member cluster with --cluster).
#
#   hack/etcd.sh start [--cluster] [--tls]   prints the endpoints and writes them to .drover/etcd.env
#   hack/etcd.sh stop
#   hack/etcd.sh status
#
# --tls: serves clients (and peers) over TLS and requires a client certificate signed by a CA
# made here with openssl (kept in .drover/etcd/pki and reused by later starts). The env file
# then also names the files every drover process needs (DROVER_ETCD_CAFILE, _CERTFILE,
# _KEYFILE): `set -a; . .drover/etcd.env; set +a`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
STATE="$ROOT/.drover/etcd"
PKI="$STATE/pki"
ENV_FILE="$ROOT/.drover/etcd.env"

# make_leaf NAME CN EXTENSIONS: a P-256 key and a certificate signed by the CA in $PKI.
make_leaf() {
  local name="$1" cn="$2" ext="$3"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$cn" \
    -keyout "$PKI/$name-key.pem" -out "$PKI/$name.csr" 2>/dev/null
  printf '%b' "$ext" >"$PKI/$name.ext"
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.pem" -CAkey "$PKI/ca-key.pem" \
    -CAcreateserial -days 825 -out "$PKI/$name.pem" -extfile "$PKI/$name.ext" 2>/dev/null
  rm -f "$PKI/$name.csr" "$PKI/$name.ext"
}

# A CA, a server certificate for 127.0.0.1/localhost (also the peers' certificate) and a
# client certificate, unless they exist. The client certificate's CN names no etcd user:
# with etcd's auth on, etcd would take a certificate's CN as the user of a request without
# a token.
make_pki() {
  [ -f "$PKI/ca.pem" ] && [ -f "$PKI/server.pem" ] && [ -f "$PKI/client.pem" ] && return 0
  command -v openssl >/dev/null || "$ROOT/hack/install-deps.sh"
  rm -rf "$PKI"
  mkdir -p "$PKI"
  chmod 700 "$PKI"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
    -subj "/CN=drover local etcd CA" -keyout "$PKI/ca-key.pem" -out "$PKI/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
  make_leaf server "drover local etcd" \
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n'
  make_leaf client "drover-client" \
    'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n'
  log "made a CA and certificates in $PKI"
}

# etcdctl against the endpoints in $1, with the env file's TLS files when there are any.
ctl() {
  local endpoints="$1"
  shift
  local tls=()
  if [ -n "${DROVER_ETCD_CAFILE:-}" ]; then
    tls=(--cacert "$DROVER_ETCD_CAFILE" --cert "$DROVER_ETCD_CERTFILE" --key "$DROVER_ETCD_KEYFILE")
  fi
  ETCDCTL_API=3 etcdctl --endpoints "$endpoints" "${tls[@]}" "$@"
}

start() {
  local members=1 tls=false arg
  for arg in "$@"; do
    case "$arg" in
      --cluster) members=3 ;;
      --tls) tls=true ;;
      *) die "hack/etcd.sh start: unknown option $arg (use --cluster, --tls)" ;;
    esac
  done
  command -v etcd >/dev/null || "$ROOT/hack/install-deps.sh"
  if [ -f "$ENV_FILE" ] && status >/dev/null 2>&1; then
    log "etcd already runs: $(cat "$ENV_FILE")"
    return 0
  fi
  stop >/dev/null 2>&1 || true
  mkdir -p "$STATE"
  local scheme=http tls_flags=()
  if $tls; then
    make_pki
    scheme=https
    tls_flags=(
      --cert-file "$PKI/server.pem" --key-file "$PKI/server-key.pem"
      --trusted-ca-file "$PKI/ca.pem" --client-cert-auth
      --peer-cert-file "$PKI/server.pem" --peer-key-file "$PKI/server-key.pem"
      --peer-trusted-ca-file "$PKI/ca.pem" --peer-client-cert-auth
    )
  fi
  local token="drover-$$-$RANDOM" cluster="" clients=() peers=() i
  for ((i = 0; i < members; i++)); do
    clients[i]="$scheme://127.0.0.1:$(free_port)"
    peers[i]="$scheme://127.0.0.1:$(free_port)"
    cluster+="${cluster:+,}m$i=${peers[i]}"
  done
  for ((i = 0; i < members; i++)); do
    # Periodic auto-compaction keeps etcd's history (and db size) bounded on a long-lived
    # cluster; an hour is far more than any watcher needs to catch up.
    # --backend-batch-interval: see ETCD_SERVER_FLAGS in crates/drover-store/src/server_flags.rs.
    etcd --name "m$i" --data-dir "$STATE/m$i" --logger=zap --log-level=warn \
      --backend-batch-interval=10ms \
      --auto-compaction-mode=periodic --auto-compaction-retention=1h \
      --listen-client-urls "${clients[i]}" --advertise-client-urls "${clients[i]}" \
      --listen-peer-urls "${peers[i]}" --initial-advertise-peer-urls "${peers[i]}" \
      --initial-cluster "$cluster" --initial-cluster-token "$token" --initial-cluster-state new \
      "${tls_flags[@]}" \
      >"$STATE/m$i.log" 2>&1 &
    echo $! >"$STATE/m$i.pid"
  done
  local endpoints
  endpoints="$(IFS=,; echo "${clients[*]}")"
  {
    echo "DROVER_ETCD=$endpoints"
    if $tls; then
      echo "DROVER_ETCD_CAFILE=$PKI/ca.pem"
      echo "DROVER_ETCD_CERTFILE=$PKI/client.pem"
      echo "DROVER_ETCD_KEYFILE=$PKI/client-key.pem"
    fi
  } >"$ENV_FILE"
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  for _ in $(seq 1 100); do
    if ctl "$endpoints" endpoint health >/dev/null 2>&1; then
      log "etcd ($members member(s)) answers at $endpoints"
      if $tls; then
        log "over TLS with client certificates; every drover process needs:"
        log "  --etcd $endpoints --etcd-cafile $PKI/ca.pem \\"
        log "    --etcd-certfile $PKI/client.pem --etcd-keyfile $PKI/client-key.pem"
        log "or the same from the environment: set -a; . $ENV_FILE; set +a"
      fi
      echo "$endpoints"
      return 0
    fi
    sleep 0.1
  done
  die "etcd did not become healthy; see $STATE/m0.log"
}

stop() {
  local pid
  for f in "$STATE"/m*.pid; do
    [ -f "$f" ] || continue
    pid="$(cat "$f")"
    kill "$pid" 2>/dev/null || true
    rm -f "$f"
  done
  rm -f "$ENV_FILE"
}

status() {
  [ -f "$ENV_FILE" ] || { echo "etcd is not started by hack/etcd.sh"; return 1; }
  # shellcheck disable=SC1090
  source "$ENV_FILE"
  ctl "$DROVER_ETCD" endpoint health
}

case "${1:-}" in
  start) shift; start "$@" ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: hack/etcd.sh start [--cluster] [--tls] | stop | status" >&2; exit 64 ;;
esac
