#!/usr/bin/env bash
# End-to-end smoke test of the local control plane:
#   start (controllers + kwok) -> server version -> StatefulSet with 2 Ready
#   pods -> owner-reference garbage collection -> namespace deletion -> stop,
#   and check that no process of the run is left.
#
# Usage: hack/controlplane/smoke.sh [--keep]   (--keep: leave it running)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1

log() { printf '[smoke] %s\n' "$*" >&2; }
die() { log "FAIL: $*"; exit 1; }

DIR="$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-cp-smoke.XXXXXX")"
cleanup() {
  if [[ $KEEP -eq 0 ]]; then "$HERE/stop.sh" --dir "$DIR" --clean; fi
}
trap cleanup EXIT

s=$(date +%s%N)
KUBECONFIG="$("$HERE/start.sh" --dir "$DIR" --with-controllers --with-kwok | tail -n 1)"
log "start.sh took $(( ($(date +%s%N) - s) / 1000000 )) ms"
export KUBECONFIG
BIN="$(sed -n 's/^BULKHEAD_CP_BIN=//p' "$DIR/env")"
k() { "$BIN/kubectl" "$@"; }

want="$(cd "$HERE" && awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' kubernetes/go.mod)"
server="$(k version -o json | jq -r .serverVersion.gitVersion)"
[[ "$server" == "$want" ]] || die "server version $server, want $want"
log "server version $server"

k create namespace smoke >/dev/null
k apply -f - >/dev/null <<'EOF'
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: web, namespace: smoke}
spec:
  replicas: 2
  serviceName: web
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers: [{name: web, image: registry.k8s.io/pause:3.10}]
EOF
k -n smoke rollout status statefulset/web --timeout=120s >&2
k -n smoke wait --for=condition=Ready pod/web-0 pod/web-1 --timeout=60s >&2
ready="$(k -n smoke get pods -l app=web -o json | jq '[.items[] | select(.status.phase == "Running") | select(any(.status.conditions[]; .type == "Ready" and .status == "True"))] | length')"
[[ "$ready" == 2 ]] || die "expected 2 Running+Ready pods, got $ready"
log "StatefulSet: 2 pods Running+Ready"

k -n smoke create configmap owner >/dev/null
uid="$(k -n smoke get configmap owner -o jsonpath='{.metadata.uid}')"
k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: child
  namespace: smoke
  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: owner, uid: "$uid"}]
EOF
k -n smoke delete configmap owner >/dev/null
k -n smoke wait --for=delete configmap/child --timeout=60s >&2 || die "owner-ref child was not garbage collected"
log "garbage collector removed the owner-ref child"

s=$(date +%s)
k delete namespace smoke --timeout=120s >/dev/null || die "namespace deletion did not finish"
log "namespace deleted in $(( $(date +%s) - s ))s"

if [[ $KEEP -eq 1 ]]; then
  log "left running: source $DIR/env; stop with $HERE/stop.sh --dir $DIR --clean"
  exit 0
fi
pids="$(cat "$DIR/pids")"
"$HERE/stop.sh" --dir "$DIR"
for p in $pids; do
  if [[ -d /proc/$p ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$p/status" 2>/dev/null; then
    die "pid $p still running after stop.sh"
  fi
done
log "OK: all processes stopped"
