#!/usr/bin/env bash
# Start a local Kubernetes control plane (etcd + kube-apiserver, optionally
# kube-controller-manager + kube-scheduler and kwok with 3 fake nodes, and
# the CloudNativePG operator).
#
# Usage: hack/controlplane/start.sh --dir DIR [--with-controllers] [--with-kwok]
#                                   [--with-cnpg] [--owner-pid PID] [--nodes N] [--pvs N]
#                                   [--audit-log FILE]
# --pvs N (with --with-kwok, default 40): unclaimed PersistentVolumes so PVCs bind.
# --with-cnpg: CloudNativePG's CRDs, its webhooks and its manager (a local
#              process, webhooks served on 127.0.0.1).
# --audit-log FILE: kube-apiserver writes an audit log there (JSON lines,
#              Metadata level, every request but get/list/watch).
#
# Progress and errors go to stderr; the LAST stdout line is DIR/kubeconfig.
# Files in DIR: kubeconfig, env, pids, pki/, etcd/ (data), logs/*.log,
#               watchdog.pid (with --owner-pid).
# Environment:
#   BULKHEAD_CP_BIN             dir with the binaries (default: output of build.sh)
#   BULKHEAD_CP_READY_TIMEOUT   seconds to wait for kube-apiserver /readyz (default 90)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
T0=$(date +%s%N)

# fd 4 = our real stderr. log() uses it so messages are not lost when a
# signal trap fires inside a command whose stderr is redirected.
exec 4>&2
log() { printf '[start.sh] %s\n' "$*" >&4; }
elapsed() { local n; n=$(date +%s%N); printf '%d.%01d' $(( (n - T0) / 1000000000 )) $(( (n - T0) / 100000000 % 10 )); }

usage() {
  sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

DIR="" WITH_CONTROLLERS=0 WITH_KWOK=0 WITH_CNPG=0 OWNER_PID="" NODES=3 PVS=40 AUDIT_LOG=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
    --dir=*) DIR="${1#*=}"; shift ;;
    --with-controllers) WITH_CONTROLLERS=1; shift ;;
    --with-kwok) WITH_KWOK=1; shift ;;
    --with-cnpg) WITH_CNPG=1; shift ;;
    --owner-pid) OWNER_PID="${2:?--owner-pid needs a value}"; shift 2 ;;
    --owner-pid=*) OWNER_PID="${1#*=}"; shift ;;
    --nodes) NODES="${2:?--nodes needs a value}"; shift 2 ;;
    --nodes=*) NODES="${1#*=}"; shift ;;
    --pvs) PVS="${2:?--pvs needs a value}"; shift 2 ;;
    --pvs=*) PVS="${1#*=}"; shift ;;
    --audit-log) AUDIT_LOG="${2:?--audit-log needs a value}"; shift 2 ;;
    --audit-log=*) AUDIT_LOG="${1#*=}"; shift ;;
    -h|--help) usage ;;
    *) log "unknown argument: $1"; usage ;;
  esac
done
[[ -n "$DIR" ]] || { log "--dir is required"; usage; }
[[ "$NODES" =~ ^[0-9]+$ ]] || { log "--nodes must be a number"; exit 2; }
[[ "$PVS" =~ ^[0-9]+$ ]] || { log "--pvs must be a number"; exit 2; }
if [[ -n "$OWNER_PID" ]]; then
  [[ "$OWNER_PID" =~ ^[0-9]+$ ]] || { log "--owner-pid must be a pid"; exit 2; }
  [[ -d /proc/$OWNER_PID ]] || { log "--owner-pid $OWNER_PID is not running"; exit 2; }
fi

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd -P)"
# Keep DIR/env trivially parseable (KEY=VALUE, no quoting needed).
[[ "$DIR" =~ ^[A-Za-z0-9_./@:+-]+$ ]] || { log "--dir path must not contain spaces or shell metacharacters: $DIR"; exit 2; }

# Refuse to start twice in the same DIR.
if [[ -s "$DIR/pids" ]]; then
  while read -r p; do
    if [[ -n "$p" && -r /proc/$p/cmdline ]] && tr '\0' ' ' < "/proc/$p/cmdline" | grep -qF -- "$DIR/"; then
      log "a control plane is already running in $DIR (pid $p); run: $HERE/stop.sh --dir $DIR"
      exit 1
    fi
  done < "$DIR/pids"
fi

mkdir -p "$DIR/logs" "$DIR/pki"
: > "$DIR/.bulkhead-controlplane"   # marker so stop.sh --clean only removes our dirs
: > "$DIR/pids"
rm -f "$DIR/env" "$DIR/watchdog.pid"

READY_TIMEOUT="${BULKHEAD_CP_READY_TIMEOUT:-90}"
SUCCESS=0
on_exit() {
  if [[ $SUCCESS -ne 1 ]]; then
    log "startup failed after $(elapsed)s; stopping what was started (logs kept in $DIR/logs)"
    "$HERE/stop.sh" --dir "$DIR" >&4 2>&4 || true
  fi
}
trap on_exit EXIT
# Make the EXIT trap (cleanup) run when we are interrupted too.
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

fail() { # fail COMPONENT MESSAGE
  log "ERROR: $1: $2"
  if [[ -f "$DIR/logs/$1.log" ]]; then
    log "---- last 40 lines of $DIR/logs/$1.log ----"
    tail -n 40 "$DIR/logs/$1.log" >&4 || true
    log "---- end of $1.log ----"
  fi
  if [[ -f "$DIR/logs/$1.json" ]]; then
    log "---- last 20 lines of $DIR/logs/$1.json ----"
    tail -n 20 "$DIR/logs/$1.json" >&4 || true
  fi
  exit 1
}

# ------------------------------------------------------------------ binaries
COMPONENTS=(kube-apiserver etcd kubectl)
[[ $WITH_CONTROLLERS -eq 1 ]] && COMPONENTS+=(kube-controller-manager kube-scheduler)
[[ $WITH_KWOK -eq 1 ]] && COMPONENTS+=(kwok)
[[ $WITH_CNPG -eq 1 ]] && COMPONENTS+=(cnpg-manager)
if [[ -n "${BULKHEAD_CP_BIN:-}" ]]; then
  BIN="$(cd "$BULKHEAD_CP_BIN" && pwd)"
else
  log "resolving binaries via build.sh (no-op when cached)…"
  BIN="$("$HERE/build.sh" "${COMPONENTS[@]}" | tail -n 1)" || { log "ERROR: build.sh failed"; exit 1; }
fi
for c in "${COMPONENTS[@]}"; do
  [[ -x "$BIN/$c" ]] || { log "ERROR: $BIN/$c is missing (BULKHEAD_CP_BIN=$BIN)"; exit 1; }
done
KUBECTL=("$BIN/kubectl" --kubeconfig "$DIR/kubeconfig" --request-timeout=20s)

# ------------------------------------------------------------------ ports
declare -A USED_PORTS=()
port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Free loopback port below the ephemeral range (so outgoing connections
# cannot grab it between our probe and the component's bind).
# free_port VAR : sets VAR (not a subshell, so USED_PORTS is remembered).
free_port() {
  local p i
  for i in $(seq 1 500); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 12000 ))
    [[ -z "${USED_PORTS[$p]:-}" ]] || continue
    if ! port_in_use "$p"; then
      USED_PORTS[$p]=1
      printf -v "$1" '%s' "$p"
      return 0
    fi
  done
  fail ports "could not find a free loopback port"
}

# ------------------------------------------------------------------ processes
# start_bg NAME BINARY ARGS... : starts detached (own session, no tty, stdio to
# the log so callers capturing our stdout never hang), records the pid.
LAST_PID="" LOG_OFFSET=1
start_bg() {
  local name="$1"; shift
  LOG_OFFSET=$(( $(stat -c %s "$DIR/logs/$name.log" 2>/dev/null || echo 0) + 1 ))
  printf '\n==== %s starting at %s: %s\n' "$name" "$(date -Is)" "$*" >> "$DIR/logs/$name.log"
  setsid "$@" </dev/null >>"$DIR/logs/$name.log" 2>&1 4>&- &
  LAST_PID=$!
  echo "$LAST_PID" >> "$DIR/pids"
}

alive() { [[ -d /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# Kill one started process and drop it from DIR/pids (used before a retry).
kill_started() {
  local pid="$1" i
  kill -TERM "$pid" 2>/dev/null || true
  for i in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  grep -vx "$pid" "$DIR/pids" > "$DIR/pids.tmp" || true
  mv -f "$DIR/pids.tmp" "$DIR/pids"
}

port_collision() { # port_collision NAME : did the last attempt die on a busy port?
  tail -c +"$LOG_OFFSET" "$DIR/logs/$1.log" | grep -qiE 'address already in use|bind: address|failed to listen'
}

# wait_for NAME PID TIMEOUT CHECK... : poll CHECK until it succeeds.
# Returns 0 ready, 1 process died, 2 timeout.
wait_for() {
  local name="$1" pid="$2" timeout="$3"; shift 3
  local deadline=$(( $(date +%s) + timeout ))
  while :; do
    if "$@" >/dev/null 2>&1; then return 0; fi
    alive "$pid" || return 1
    [[ $(date +%s) -lt $deadline ]] || return 2
    sleep 0.25
  done
}

# start_component NAME TIMEOUT PORTVARS -- (uses function launch_NAME / check_NAME)
# Retries up to 5 times on port collisions with fresh ports.
start_component() {
  local name="$1" timeout="$2" attempt rc pid
  for attempt in 1 2 3 4 5; do
    "pick_ports_${name//-/_}"
    "launch_${name//-/_}"
    pid=$LAST_PID
    rc=0; wait_for "$name" "$pid" "$timeout" "check_${name//-/_}" || rc=$?
    case $rc in
      0) log "$name ready (pid $pid) at $(elapsed)s"; return 0 ;;
      1) if port_collision "$name" && [[ $attempt -lt 5 ]]; then
           log "$name hit a port collision, retrying with new ports (attempt $((attempt + 1)))"
           kill_started "$pid"; continue
         fi
         fail "$name" "process exited during startup" ;;
      2) if port_collision "$name" && [[ $attempt -lt 5 ]]; then
           log "$name hit a port collision, retrying with new ports (attempt $((attempt + 1)))"
           kill_started "$pid"; continue
         fi
         fail "$name" "not ready after ${timeout}s" ;;
    esac
  done
  fail "$name" "could not start after 5 attempts"
}

CURL_ADMIN=(curl -sf --max-time 5 --cacert "$DIR/pki/ca.crt" --cert "$DIR/pki/admin.crt" --key "$DIR/pki/admin.key")

# ------------------------------------------------------------------ certs
PKI="$DIR/pki"
gen_certs() {
  local ext
  ext="$(mktemp)"
  # CA
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/ca.key" -sha256 -days 3650 -subj "/CN=bulkhead-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/ca.crt" 2>/dev/null
  # sign NAME SUBJECT EXTFILE-CONTENT
  sign() {
    printf '%s\n' "$3" > "$ext"
    openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/$1.key" 2>/dev/null
    openssl req -new -key "$PKI/$1.key" -subj "$2" -out "$PKI/$1.csr" 2>/dev/null
    openssl x509 -req -in "$PKI/$1.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -sha256 -days 3650 -extfile "$ext" -out "$PKI/$1.crt" 2>/dev/null
    rm -f "$PKI/$1.csr"
  }
  sign apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign admin "/O=system:masters/CN=bulkhead-admin" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
  # front-proxy (request-header) CA + client, so aggregated APIs work and
  # controllers do not complain about a missing requestheader CA.
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/front-proxy-ca.key" 2>/dev/null
  openssl req -x509 -new -key "$PKI/front-proxy-ca.key" -sha256 -days 3650 -subj "/CN=bulkhead-front-proxy-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign,digitalSignature" \
    -out "$PKI/front-proxy-ca.crt" 2>/dev/null
  printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=clientAuth" > "$ext"
  openssl ecparam -name prime256v1 -genkey -noout -out "$PKI/front-proxy-client.key" 2>/dev/null
  openssl req -new -key "$PKI/front-proxy-client.key" -subj "/CN=front-proxy-client" -out "$PKI/front-proxy-client.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/front-proxy-client.csr" -CA "$PKI/front-proxy-ca.crt" -CAkey "$PKI/front-proxy-ca.key" \
    -CAcreateserial -sha256 -days 3650 -extfile "$ext" -out "$PKI/front-proxy-client.crt" 2>/dev/null
  rm -f "$PKI/front-proxy-client.csr"
  # service-account token signing key pair
  openssl genrsa -out "$PKI/sa.key" 2048 2>/dev/null
  openssl rsa -in "$PKI/sa.key" -pubout -out "$PKI/sa.pub" 2>/dev/null
  rm -f "$ext"
  chmod 600 "$PKI"/*.key
}
if [[ -s "$PKI/ca.crt" && -s "$PKI/ca.key" && -s "$PKI/apiserver.crt" && -s "$PKI/admin.crt" && -s "$PKI/sa.key" && -s "$PKI/sa.pub" && -s "$PKI/front-proxy-client.crt" ]]; then
  log "reusing certificates in $PKI"
else
  gen_certs || { log "ERROR: openssl failed to generate certificates"; exit 1; }
  log "certificates created at $(elapsed)s"
fi

# ------------------------------------------------------------------ etcd
# Reuse the previous ports if the etcd data dir already exists (its member
# URL is persisted there); otherwise pick fresh ones.
ETCD_CLIENT_PORT="" ETCD_PEER_PORT=""
if [[ -d "$DIR/etcd/member" && -s "$DIR/ports" ]]; then
  # shellcheck disable=SC1091
  ETCD_CLIENT_PORT="$(sed -n 's/^ETCD_CLIENT_PORT=//p' "$DIR/ports")"
  ETCD_PEER_PORT="$(sed -n 's/^ETCD_PEER_PORT=//p' "$DIR/ports")"
fi
pick_ports_etcd() {
  if [[ -n "$ETCD_PEER_PORT" && -d "$DIR/etcd/member" ]] && ! port_in_use "$ETCD_PEER_PORT" && ! port_in_use "$ETCD_CLIENT_PORT"; then
    USED_PORTS[$ETCD_CLIENT_PORT]=1; USED_PORTS[$ETCD_PEER_PORT]=1
    return 0
  fi
  [[ -d "$DIR/etcd/member" ]] && { log "etcd data dir exists but its ports are unknown/busy; wiping $DIR/etcd"; rm -rf "$DIR/etcd"; }
  free_port ETCD_CLIENT_PORT; free_port ETCD_PEER_PORT
}
launch_etcd() {
  start_bg etcd "$BIN/etcd" \
    --name=bulkhead \
    --data-dir="$DIR/etcd" \
    --listen-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --advertise-client-urls="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls="http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster="bulkhead=http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster-state=new \
    --unsafe-no-fsync=true \
    --quota-backend-bytes=$((4 * 1024 * 1024 * 1024)) \
    --log-level=warn
}
check_etcd() { curl -sf --max-time 3 "http://127.0.0.1:$ETCD_CLIENT_PORT/health" | grep -q '"health":"true"'; }
start_component etcd 30
printf 'ETCD_CLIENT_PORT=%s\nETCD_PEER_PORT=%s\n' "$ETCD_CLIENT_PORT" "$ETCD_PEER_PORT" > "$DIR/ports"

# ------------------------------------------------------------------ kube-apiserver
APISERVER_PORT=""
pick_ports_kube_apiserver() { free_port APISERVER_PORT; }
launch_kube_apiserver() {
  local audit=()
  if [[ -n "$AUDIT_LOG" ]]; then
    cat > "$DIR/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: None
  verbs: [get, list, watch]
- level: Metadata
POLICY
    audit=(--audit-policy-file="$DIR/audit-policy.yaml" --audit-log-path="$AUDIT_LOG" --audit-log-maxsize=0)
  fi
  start_bg kube-apiserver "$BIN/kube-apiserver" "${audit[@]}" \
    --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT" \
    --bind-address=127.0.0.1 \
    --advertise-address=127.0.0.1 \
    --secure-port="$APISERVER_PORT" \
    --tls-cert-file="$PKI/apiserver.crt" \
    --tls-private-key-file="$PKI/apiserver.key" \
    --client-ca-file="$PKI/ca.crt" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" \
    --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User \
    --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" \
    --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --authorization-mode=Node,RBAC \
    --service-account-key-file="$PKI/sa.pub" \
    --service-account-signing-key-file="$PKI/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --disable-admission-plugins=ServiceAccount \
    --service-cluster-ip-range=10.0.0.0/16 \
    --allow-privileged=true \
    --endpoint-reconciler-type=none \
    --profiling=false \
    --cert-dir="$DIR/pki/apiserver-generated" \
    --v=1
}
check_kube_apiserver() { [[ "$("${CURL_ADMIN[@]}" "https://127.0.0.1:$APISERVER_PORT/readyz")" == ok ]]; }
start_component kube-apiserver "$READY_TIMEOUT"
APISERVER_PID="$LAST_PID"
APISERVER_URL="https://127.0.0.1:$APISERVER_PORT"
APISERVER_READY_AT="$(elapsed)"

# ------------------------------------------------------------------ kubeconfig
b64() { base64 -w0 < "$1"; }
cat > "$DIR/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: bulkhead
  cluster:
    server: $APISERVER_URL
    certificate-authority-data: $(b64 "$PKI/ca.crt")
users:
- name: bulkhead-admin
  user:
    client-certificate-data: $(b64 "$PKI/admin.crt")
    client-key-data: $(b64 "$PKI/admin.key")
contexts:
- name: bulkhead
  context:
    cluster: bulkhead
    user: bulkhead-admin
    namespace: default
current-context: bulkhead
EOF
chmod 600 "$DIR/kubeconfig.tmp"
mv -f "$DIR/kubeconfig.tmp" "$DIR/kubeconfig"

wait_for kube-apiserver "$APISERVER_PID" 60 "${KUBECTL[@]}" get namespace default kube-system \
  || fail kube-apiserver "namespaces default/kube-system did not appear"
log "namespace default exists at $(elapsed)s"

write_env() {
  {
    echo "BULKHEAD_CP_DIR=$DIR"
    echo "KUBECONFIG=$DIR/kubeconfig"
    echo "BULKHEAD_CP_BIN=$BIN"
    echo "APISERVER_URL=$APISERVER_URL"
    echo "APISERVER_PORT=$APISERVER_PORT"
    echo "ETCD_URL=http://127.0.0.1:$ETCD_CLIENT_PORT"
    echo "BULKHEAD_CP_WITH_CONTROLLERS=$WITH_CONTROLLERS"
    echo "BULKHEAD_CP_WITH_KWOK=$WITH_KWOK"
    echo "BULKHEAD_CP_WITH_CNPG=$WITH_CNPG"
  } > "$DIR/env.tmp"
  mv -f "$DIR/env.tmp" "$DIR/env"
}

# ------------------------------------------------------------------ controllers
if [[ $WITH_CONTROLLERS -eq 1 ]]; then
  KCM_PORT=""
  pick_ports_kube_controller_manager() { free_port KCM_PORT; }
  launch_kube_controller_manager() {
    start_bg kube-controller-manager "$BIN/kube-controller-manager" \
      --kubeconfig="$DIR/kubeconfig" \
      --authentication-kubeconfig="$DIR/kubeconfig" \
      --authorization-kubeconfig="$DIR/kubeconfig" \
      --bind-address=127.0.0.1 \
      --secure-port="$KCM_PORT" \
      --cert-dir="$DIR/pki/kcm-generated" \
      --service-account-private-key-file="$PKI/sa.key" \
      --root-ca-file="$PKI/ca.crt" \
      --cluster-signing-cert-file="$PKI/ca.crt" \
      --cluster-signing-key-file="$PKI/ca.key" \
      --service-cluster-ip-range=10.0.0.0/16 \
      --leader-elect=false \
      --use-service-account-credentials=false \
      --controllers='*' \
      --profiling=false \
      --v=1
  }
  check_kube_controller_manager() { [[ "$(curl -skf --max-time 3 "https://127.0.0.1:$KCM_PORT/healthz")" == ok ]]; }
  start_component kube-controller-manager 60
  KCM_PID="$LAST_PID"

  SCHED_PORT=""
  pick_ports_kube_scheduler() { free_port SCHED_PORT; }
  launch_kube_scheduler() {
    start_bg kube-scheduler "$BIN/kube-scheduler" \
      --kubeconfig="$DIR/kubeconfig" \
      --authentication-kubeconfig="$DIR/kubeconfig" \
      --authorization-kubeconfig="$DIR/kubeconfig" \
      --bind-address=127.0.0.1 \
      --secure-port="$SCHED_PORT" \
      --cert-dir="$DIR/pki/scheduler-generated" \
      --leader-elect=false \
      --profiling=false \
      --v=1
  }
  check_kube_scheduler() { [[ "$(curl -skf --max-time 3 "https://127.0.0.1:$SCHED_PORT/healthz")" == ok ]]; }
  start_component kube-scheduler 60

  # The service-account controller creates the default ServiceAccount.
  wait_for kube-controller-manager "$KCM_PID" 60 "${KUBECTL[@]}" -n default get serviceaccount default \
    || fail kube-controller-manager "ServiceAccount default/default was not created"
  log "ServiceAccount default/default exists at $(elapsed)s"
fi

# ------------------------------------------------------------------ kwok
if [[ $WITH_KWOK -eq 1 ]]; then
  KWOK_PORT=""
  STAGE_ARGS=()
  for f in "$HERE"/kwok/stages/*.yaml; do STAGE_ARGS+=("--config=$f"); done
  [[ ${#STAGE_ARGS[@]} -gt 0 ]] || { log "ERROR: no stage files in $HERE/kwok/stages"; exit 1; }
  pick_ports_kwok() { free_port KWOK_PORT; }
  launch_kwok() {
    start_bg kwok "$BIN/kwok" \
      --kubeconfig="$DIR/kubeconfig" \
      --manage-all-nodes=false \
      --manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake \
      --manage-nodes-with-label-selector=type=kwok \
      --node-lease-duration-seconds=40 \
      --cidr=10.244.0.1/16 \
      --node-ip=10.1.0.1 \
      --server-address="127.0.0.1:$KWOK_PORT" \
      "${STAGE_ARGS[@]}"
  }
  check_kwok() { curl -sf --max-time 3 "http://127.0.0.1:$KWOK_PORT/healthz" >/dev/null; }
  start_component kwok 60
  KWOK_PID="$LAST_PID"

  if [[ "$NODES" -gt 0 ]]; then
    nodes_yaml=""
    for i in $(seq 0 $((NODES - 1))); do
      nodes_yaml+="---
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    node.alpha.kubernetes.io/ttl: \"0\"
    kwok.x-k8s.io/node: fake
  labels:
    beta.kubernetes.io/arch: amd64
    beta.kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/role: agent
    node-role.kubernetes.io/agent: \"\"
    type: kwok
spec: {}
status:
  addresses:
  - address: 10.1.0.$((i + 1))
    type: InternalIP
  - address: kwok-node-$i
    type: Hostname
  allocatable:
    cpu: \"32\"
    memory: 256Gi
    pods: \"110\"
  capacity:
    cpu: \"32\"
    memory: 256Gi
    pods: \"110\"
  nodeInfo:
    architecture: amd64
    bootID: \"\"
    containerRuntimeVersion: \"\"
    kernelVersion: \"\"
    kubeProxyVersion: fake
    kubeletVersion: fake
    machineID: \"\"
    operatingSystem: linux
    osImage: \"\"
    systemUUID: \"\"
  phase: Running
"
    done
    printf '%s' "$nodes_yaml" > "$DIR/kwok-nodes.yaml"
    "${KUBECTL[@]}" apply -f "$DIR/kwok-nodes.yaml" >&2 || fail kwok "could not create fake nodes"
    wait_for kwok "$KWOK_PID" 60 "${KUBECTL[@]}" wait --for=condition=Ready node -l type=kwok --timeout=5s \
      || fail kwok "fake nodes did not become Ready"
    log "$NODES kwok node(s) Ready at $(elapsed)s"
  fi
  # kwok simulates pods, not storage: a pool of unclaimed PersistentVolumes
  # (never mounted; the pods are simulated) lets PVCs of StatefulSets bind
  # through the real PV controller.
  if [[ "$PVS" -gt 0 ]]; then
    pv_yaml=""
    for i in $(seq 0 $((PVS - 1))); do
      pv_yaml+="---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: kwok-pv-$i
  labels: {type: kwok}
spec:
  capacity: {storage: 1Ti}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: /nonexistent/kwok-pv-$i}
"
    done
    printf '%s' "$pv_yaml" > "$DIR/kwok-pvs.yaml"
    "${KUBECTL[@]}" apply -f "$DIR/kwok-pvs.yaml" >/dev/null || fail kwok "could not create PersistentVolumes"
    log "$PVS PersistentVolume(s) for simulated pods at $(elapsed)s"
  fi
fi

# ------------------------------------------------------------------ CloudNativePG
# The real operator from its Go module, run as a local process (no image):
# its CRDs (so every Cluster and Database is validated by CloudNativePG's own
# schema), its admission webhooks served on 127.0.0.1 with a certificate of
# this control plane's CA (WEBHOOK_CERT_DIR makes it skip the PKI set-up
# that needs its own Deployment), and its controllers. kwok plays the
# kubelet for the instance pods, so PostgreSQL never runs: CloudNativePG
# creates the initdb Job, PVC, pods, Services and Secrets and reports
# readyInstances, but stays Ready=False (it cannot reach the instance
# manager in a simulated pod).
if [[ $WITH_CNPG -eq 1 ]]; then
  CNPG_ASSETS="$BIN/cnpg"
  [[ -d "$CNPG_ASSETS/crds" && -f "$CNPG_ASSETS/webhook/manifests.yaml" ]] \
    || { log "ERROR: $CNPG_ASSETS has no crds/ and webhook/ (run build.sh cnpg-manager)"; exit 1; }
  "${KUBECTL[@]}" apply --server-side -f "$CNPG_ASSETS/crds/" >/dev/null || fail kube-apiserver "could not apply the CloudNativePG CRDs"
  "${KUBECTL[@]}" wait --for=condition=Established --timeout=60s -f "$CNPG_ASSETS/crds/" >/dev/null \
    || fail kube-apiserver "CloudNativePG CRDs were not established"
  "${KUBECTL[@]}" create namespace cnpg-system >/dev/null 2>&1 || true
  # Serving certificate for the webhooks, signed by the control plane's CA.
  CNPG_RUN="$DIR/cnpg"
  mkdir -p "$CNPG_RUN/certs" "$CNPG_RUN/operator"
  if [[ ! -s "$CNPG_RUN/certs/apiserver.crt" ]]; then
    printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
      "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost" > "$CNPG_RUN/certs/ext"
    openssl ecparam -name prime256v1 -genkey -noout -out "$CNPG_RUN/certs/apiserver.key" 2>/dev/null
    openssl req -new -key "$CNPG_RUN/certs/apiserver.key" -subj "/CN=cnpg-webhook" -out "$CNPG_RUN/certs/csr" 2>/dev/null
    openssl x509 -req -in "$CNPG_RUN/certs/csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial \
      -sha256 -days 3650 -extfile "$CNPG_RUN/certs/ext" -out "$CNPG_RUN/certs/apiserver.crt" 2>/dev/null \
      || { log "ERROR: openssl failed to sign the CloudNativePG webhook certificate"; exit 1; }
    rm -f "$CNPG_RUN/certs/csr" "$CNPG_RUN/certs/ext"
  fi
  # The manager finds the instance-manager binaries it injects into pods
  # at ./operator/manager_<arch> (its image's layout); without them it
  # refuses every Cluster ("invalid architecture").
  CNPG_ARCH="$(uname -m)"; case "$CNPG_ARCH" in x86_64) CNPG_ARCH=amd64 ;; aarch64) CNPG_ARCH=arm64 ;; esac
  ln -sfn "$BIN/cnpg-manager" "$CNPG_RUN/operator/manager_$CNPG_ARCH"
  CNPG_WEBHOOK_PORT="" CNPG_METRICS_PORT=""
  pick_ports_cnpg_manager() { free_port CNPG_WEBHOOK_PORT; free_port CNPG_METRICS_PORT; }
  launch_cnpg_manager() {
    # --log-destination also puts DIR on the command line, which is how
    # stop.sh recognises the process as this control plane's.
    cd "$CNPG_RUN"
    start_bg cnpg-manager env KUBECONFIG="$DIR/kubeconfig" OPERATOR_NAMESPACE=cnpg-system \
      POD_NAME=cnpg-manager-local WEBHOOK_CERT_DIR="$CNPG_RUN/certs" \
      "$BIN/cnpg-manager" controller \
      --leader-elect=false \
      --webhook-port="$CNPG_WEBHOOK_PORT" \
      --metrics-bind-address="127.0.0.1:$CNPG_METRICS_PORT" \
      --log-destination="$DIR/logs/cnpg-manager.json"
    cd - >/dev/null
  }
  check_cnpg_manager() { [[ "$(curl -sf --max-time 3 --cacert "$PKI/ca.crt" "https://127.0.0.1:$CNPG_WEBHOOK_PORT/readyz")" == OK ]]; }
  start_component cnpg-manager 60
  # The webhook configurations of the module, pointed at the local server.
  awk -v url="https://127.0.0.1:$CNPG_WEBHOOK_PORT" -v ca="$(b64 "$PKI/ca.crt")" '
    /^  name: mutating-webhook-configuration/ { print "  name: cnpg-mutating-webhook-configuration"; next }
    /^  name: validating-webhook-configuration/ { print "  name: cnpg-validating-webhook-configuration"; next }
    /^    service:$/ { svc = 1; next }
    svc && /^      path:/ { print "    url: " url $2; print "    caBundle: " ca; svc = 0; next }
    svc { next }
    { print }' "$CNPG_ASSETS/webhook/manifests.yaml" > "$CNPG_RUN/webhooks.yaml"
  grep -q "url: https://127.0.0.1" "$CNPG_RUN/webhooks.yaml" || fail cnpg-manager "could not rewrite the webhook manifests"
  "${KUBECTL[@]}" apply -f "$CNPG_RUN/webhooks.yaml" >/dev/null || fail cnpg-manager "could not register the CloudNativePG webhooks"
  log "CloudNativePG $("$BIN/cnpg-manager" version 2>/dev/null | sed -n 's/.*Version:\([^ ]*\).*/\1/p') CRDs, webhooks and manager ready at $(elapsed)s"
fi

write_env

# ------------------------------------------------------------------ watchdog
if [[ -n "$OWNER_PID" ]]; then
  # Fully detached (own session, stdio not inherited) so it survives the
  # caller and never holds the caller's stdout pipe open. It compares the
  # owner's start time so a recycled pid is not mistaken for the owner, and
  # treats a zombie as dead.
  owner_start="$(sed 's/^.*) //' "/proc/$OWNER_PID/stat" | awk '{print $20}')"
  # shellcheck disable=SC2016  # expanded by the inner bash
  setsid nohup bash -c '
    owner=$1 start=$2 dir=$3 stop=$4
    running() {
      [[ -r /proc/$owner/stat ]] || return 1
      local s
      s=$(sed "s/^.*) //" /proc/$owner/stat 2>/dev/null) || return 1
      [[ ${s%% *} != Z && $(awk "{print \$20}" <<<"$s") == "$start" ]]
    }
    echo "watchdog $$: watching owner pid $owner"
    while running && [[ -f $dir/pids ]]; do sleep 1; done
    echo "watchdog $$: owner $owner gone at $(date -Is); running stop.sh"
    exec "$stop" --dir "$dir" --from-watchdog
  ' bulkhead-cp-watchdog "$OWNER_PID" "$owner_start" "$DIR" "$HERE/stop.sh" \
    </dev/null >>"$DIR/logs/watchdog.log" 2>&1 4>&- &
  echo $! > "$DIR/watchdog.pid"
  log "watchdog (pid $!) will run stop.sh when pid $OWNER_PID exits"
fi

SUCCESS=1
log "control plane up in $(elapsed)s (kube-apiserver ready at ${APISERVER_READY_AT}s); env: $DIR/env"
echo "$DIR/kubeconfig"
