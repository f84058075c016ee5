#!/usr/bin/env bash
# bulkhead's quick start: a local control plane (etcd, kube-apiserver,
# controller-manager, scheduler, kwok, and CloudNativePG for in-cluster
# DatabaseClusters), a local PostgreSQL, the Fly.io emulator (Fly.io itself
# cannot be reached from here), the CRDs, the operator, and the production,
# staging and Fly staging examples — then what a user wants to see: objects,
# conditions, what was made at Fly, and a connection Secret that really
# connects.
#
# Interactive: it keeps running until Ctrl-C, then stops everything.
# Without a terminal (CI), or with BULKHEAD_DEMO_EXIT=1, it stops by itself.
# State lives in ${BULKHEAD_DEMO_DIR:-.bulkhead/demo}; binaries are cached, so
# a second run is fast.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
DEMO="${BULKHEAD_DEMO_DIR:-$ROOT/.bulkhead/demo}"
T0=$(date +%s)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
elapsed() { echo "$(( $(date +%s) - T0 ))s"; }

OP_PID="" FLY_PID="" PG_USER="" PGBIN=""
# Production and staging never share a database server (bulkhead reports
# that as an isolation violation), so the demo runs one PostgreSQL for each.
TIERS=(production staging)
run_pg() { if [[ -n "$PG_USER" ]]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi; }
cleanup() {
  set +e
  say "stopping the operator, the Fly emulator, PostgreSQL and the control plane"
  [[ -n "$OP_PID" ]] && kill -TERM "$OP_PID" 2>/dev/null && wait "$OP_PID" 2>/dev/null
  [[ -n "$FLY_PID" ]] && kill -INT "$FLY_PID" 2>/dev/null && wait "$FLY_PID" 2>/dev/null
  for tier in "${TIERS[@]}"; do
    if [[ -n "$PGBIN" && -f "$DEMO/pg-$tier/data/postmaster.pid" ]]; then
      run_pg "$PGBIN/pg_ctl" -D "$DEMO/pg-$tier/data" -m fast stop >/dev/null 2>&1
    fi
  done
  hack/controlplane/stop.sh --dir "$DEMO/cp" >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "installing dependencies (once)"
hack/install-deps.sh

say "building or reusing the control plane binaries (a cold build takes minutes)"
BULKHEAD_CP_BIN="$(hack/controlplane/build.sh | tail -n 1)"
export BULKHEAD_CP_BIN PATH="$BULKHEAD_CP_BIN:$PATH"

say "building bulkhead and the Fly emulator"
cargo build --quiet -p bulkhead -p fly-emulator --bin bulkhead --bin fly-emulator
BULKHEAD="$ROOT/target/debug/bulkhead"

say "starting the control plane"
hack/controlplane/stop.sh --dir "$DEMO/cp" >/dev/null 2>&1 || true
rm -rf "$DEMO"
mkdir -p "$DEMO"
KUBECONFIG="$(hack/controlplane/start.sh --dir "$DEMO/cp" --with-controllers --with-kwok --with-cnpg --owner-pid $$ | tail -n 1)"
export KUBECONFIG

say "starting two local PostgreSQL servers on 127.0.0.1 (production, staging)"
PGBIN="$(pg_config --bindir 2>/dev/null || true)"
[[ -x "$PGBIN/initdb" ]] || PGBIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")"
if [[ $(id -u) -eq 0 ]]; then
  PG_USER=postgres
  id -u "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_USER"
  chmod 755 "$DEMO" "$(dirname "$DEMO")" 2>/dev/null || true
fi
declare -A ADMIN_DSN
for tier in "${TIERS[@]}"; do
  dir="$DEMO/pg-$tier"
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  password="$(openssl rand -hex 16)"
  mkdir -p "$dir"
  printf '%s\n' "$password" > "$dir/pwfile"
  [[ -n "$PG_USER" ]] && chown -R "$PG_USER" "$dir"
  run_pg "$PGBIN/initdb" -D "$dir/data" -U postgres --pwfile="$dir/pwfile" --auth=scram-sha-256 >"$dir/initdb.log" 2>&1
  rm -f "$dir/pwfile"
  run_pg "$PGBIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
    -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir" start >/dev/null
  ADMIN_DSN[$tier]="postgres://postgres:$password@127.0.0.1:$port/postgres?sslmode=disable"
done

say "starting the Fly.io emulator on 127.0.0.1 (Fly.io is EMULATED here: fly-emulator/, strict to Fly's published schema)"
# The token the operator presents, as a real Fly API token would be: in a
# Secret of the operator's namespace, never on a command line.
FLY_TOKEN="$(openssl rand -hex 24)"
FLY_EMULATOR_TOKEN="$FLY_TOKEN" "$ROOT/target/debug/fly-emulator" --listen 127.0.0.1:0 \
  --request-log "$DEMO/fly-requests.jsonl" >"$DEMO/fly-emulator.out" 2>"$DEMO/fly-emulator.log" &
FLY_PID=$!
for _ in $(seq 100); do grep -q '^listening on ' "$DEMO/fly-emulator.out" 2>/dev/null && break; sleep 0.1; done
FLY_URL="$(sed -n 's/^listening on //p' "$DEMO/fly-emulator.out")"
[[ -n "$FLY_URL" ]] || { cat "$DEMO/fly-emulator.log" >&2; echo "the Fly emulator did not start" >&2; exit 1; }
fly_state() { curl -sf --noproxy '*' "$FLY_URL/_emulator/state"; }

say "installing the CRDs"
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl create namespace bulkhead-system >/dev/null
# Credentials live in the operator's namespace only; Environments name them.
for tier in "${TIERS[@]}"; do
  kubectl -n bulkhead-system create secret generic "postgres-$tier" --from-literal=dsn="${ADMIN_DSN[$tier]}" >/dev/null
done
kubectl -n bulkhead-system create secret generic fly-credentials --from-literal=token="$FLY_TOKEN" >/dev/null

say "starting the operator (log: $DEMO/operator.log)"
"$BULKHEAD" run --http-addr 127.0.0.1:0 --leader-election=true --lease-namespace bulkhead-system \
  --fly-api-url "$FLY_URL/graphql" --fly-machines-url "$FLY_URL" \
  >"$DEMO/operator.log" 2>&1 &
OP_PID=$!

say "applying examples: organizations, environments (production, staging) with their databases on their own PostgreSQL servers"
for set in production staging; do
  kubectl apply -f "examples/$set/organization.yaml"
done
kubectl apply -f examples/postgres/environment-staging.yaml -f examples/postgres/environment-production.yaml
kubectl apply -f examples/postgres/databasecluster-production.yaml -f examples/postgres/databasecluster-staging.yaml
say "applying the Fly staging example: an organization at Fly, its environment and a Managed Postgres cluster"
kubectl apply -f examples/fly/environment.yaml -f examples/fly/organization.yaml -f examples/fly/databasecluster.yaml

say "waiting for Ready"
kubectl wait --for=condition=Ready --timeout=180s org/acme-production org/acme-staging env/production env/staging
kubectl wait --for=condition=Ready --timeout=180s -n production dbc/my-app-db
kubectl wait --for=condition=Ready --timeout=180s -n staging dbc/my-app-db
kubectl wait --for=condition=Ready --timeout=180s org/acme-fly-staging env/fly-staging
kubectl wait --for=condition=Ready --timeout=180s -n fly-staging dbc/my-app-db

echo
say "kubectl get org,env,dbc -A   (ready in $(elapsed))"
kubectl get org,env,dbc -A
echo
say "conditions"
for obj in org/acme-staging env/staging "-n staging dbc/my-app-db" org/acme-fly-staging "-n fly-staging dbc/my-app-db"; do
  # shellcheck disable=SC2086
  kubectl get $obj -o jsonpath='{.kind}/{.metadata.name}{"\n"}{range .status.conditions[*]}  {.type}={.status} ({.reason}) {.message}{"\n"}{end}'
done
echo
say "at Fly (the emulator's state): the organization, its members and tokens, the Postgres cluster"
fly_state | python3 -c "$(cat <<'PY'
import json, sys
s = json.load(sys.stdin)
users = {u["id"]: u["email"] for u in s["users"].values()}
for org in s["organizations"].values():
    if org["org_type"] == "PERSONAL":
        continue
    print(f"  organization {org['name']} (slug {org['slug']}, id {org['id']})")
    for m in org["members"]:
        print(f"    member  {users.get(m['user_id'], m['user_id'])}: {m['role']}")
    for i in org["invitations"]:
        if i["redeemed_at"] is None:
            print(f"    invited {i['email']} (pending: Fly gives the role once they accept)")
    for t in s["tokens"]:
        if t["org_id"] == org["id"] and t["revoked_at"] is None:
            print(f"    token   {t['name']}: {t['profile']}, expires {t['expires_at']}")
    for c in s["postgres_clusters"].values():
        if c["org_id"] == org["id"] and c["deleted_at"] is None:
            print(f"    postgres {c['name']}: plan {c['plan']}, {c['region']}, v{c['pg_major_version']}, {c['disk_size_gb']} GB, databases {c['databases']}, users {sorted(c['users'])}")
PY
)"
say "the Fly deploy token's Secret (keys; the token stays in the Secret)"
kubectl -n fly-staging get secret fly-deploy-token -o go-template='{{range $k, $v := .data}}  {{$k}}{{"\n"}}{{end}}'
say "the operator's calls to Fly: $(wc -l <"$DEMO/fly-requests.jsonl") requests (log without credentials: $DEMO/fly-requests.jsonl)"
echo
say "the staging connection Secret (keys; the password stays in the Secret)"
kubectl -n staging get secret my-app-db-connection -o go-template='{{range $k, $v := .data}}  {{$k}}{{"\n"}}{{end}}'
secret() { kubectl -n staging get secret my-app-db-connection -o jsonpath="{.data.$1}" | base64 -d; }
echo
say "connecting with it: psql \"\$(kubectl -n staging get secret my-app-db-connection -o jsonpath='{.data.uri}' | base64 -d)\" -c 'select current_user, current_database()'"
psql "$(secret uri)" -Atc "select 'connected as ' || current_user || ' to ' || current_database() || ' on ' || version()"
echo
cat <<EOF
What is real here: etcd, kube-apiserver, controller-manager and scheduler
(v1.37.2, built from Go modules), the CloudNativePG operator (v1.28.1, also
from its Go module), the operator, and PostgreSQL. Fly.io is EMULATED:
fly-emulator (this repository) answers Fly's GraphQL and Machines APIs,
validating every request against Fly's published schema; nothing reached
Fly.io, and the Fly Postgres cluster holds no data. kwok plays the kubelet:
pods of in-cluster DatabaseClusters (CloudNativePG Clusters) are simulated,
so those never become Ready here; this demo's DatabaseClusters are real
databases on two local PostgreSQL servers, one per tier (sharing one would
be reported as an isolation violation).

Keep exploring:
  export KUBECONFIG=$KUBECONFIG PATH=$BULKHEAD_CP_BIN:\$PATH
  kubectl get bulkhead -A
  kubectl describe env production
  # Fly: the contractor accepts the invitation at Fly; bulkhead gives them their role
  curl -s --noproxy '*' $FLY_URL/_emulator/state | python3 -c 'import json,sys; print(*[i["id"] for o in json.load(sys.stdin)["organizations"].values() for i in o["invitations"] if i["email"].startswith("contractor")])'
  curl -s --noproxy '*' -X POST $FLY_URL/_emulator/invitations/INVITATION_ID/accept
  kubectl get org acme-fly-staging -o jsonpath='{.status.members}'
  # an in-cluster DatabaseCluster: a CloudNativePG Cluster, as far as kwok lets it get
  kubectl apply -f - <<<'{"apiVersion":"bulkhead.dev/v1alpha1","kind":"Environment","metadata":{"name":"dev-sandbox"},"spec":{"organizationRef":{"name":"acme-staging"},"tier":"development"}}'
  kubectl -n dev-sandbox apply -f - <<<'{"apiVersion":"bulkhead.dev/v1alpha1","kind":"DatabaseCluster","metadata":{"name":"scratch"},"spec":{"databases":[{"name":"app"}]}}'
  kubectl -n dev-sandbox get dbc,clusters.postgresql.cnpg.io,databases.postgresql.cnpg.io,pods,svc
EOF

if [[ "${BULKHEAD_DEMO_EXIT:-}" == "1" || ! -t 0 ]]; then
  say "done (non-interactive run: stopping)"
  exit 0
fi
say "running; press Ctrl-C to stop everything"
while kill -0 "$OP_PID" 2>/dev/null; do sleep 1; done
say "the operator exited; see $DEMO/operator.log"
exit 1
