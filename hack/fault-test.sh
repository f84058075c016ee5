#!/usr/bin/env bash
# Fault tests at scale, for a person to run (not part of hack/test.sh: the
# default run takes tens of minutes on 2 cores).
#
#   hack/fault-test.sh                 both scenarios, 1000 DatabaseClusters
#   N=50 PG_OUTAGE=20 hack/fault-test.sh   a quick run
#   SCENARIOS=leader hack/fault-test.sh    only the leader-election one
#
# 1. "converge": one Organization, one staging Environment whose databases
#    live on a local PostgreSQL, N DatabaseClusters. While they converge the
#    operator is SIGKILLed at random 5 times (restarted each time),
#    kube-apiserver is restarted once and PostgreSQL is stopped for
#    PG_OUTAGE seconds (default 60). Then: every DatabaseCluster Ready, no
#    bulkhead.dev/create-pending left, exactly one database and the expected
#    roles per cluster on the server (no duplicates). Then all are deleted:
#    nothing bulkhead made is left on the server (nothing leaked).
# 2. "leader": two operators with leader election (6 s lease); the
#    apiserver is frozen (SIGSTOP: connections hang, as when unreachable)
#    for 3 lease durations. From the operators' JSON logs (timestamps of
#    "became leader" and "lost the leader lease"): the old leader stopped
#    its controllers before the new one started them. After the freeze
#    either side may win the race for the Lease; the script says which.
#    Evidence from both sides: the operators' JSON logs, and the
#    apiserver's audit log (each replica's User-Agent names it): every
#    write of the old leader was received before the new leader's first.
#    LEADER_ORGS (default 200) Organizations are created just before the
#    freeze so that there is work being written when it comes.
#
# Measured on 2 shared cores with N=10, PG_OUTAGE=10: about 4 minutes in
# all (a kube-apiserver restart takes over a minute to be ready again).
# N=1000 with the default 60 s outage: 1,025 s in all (see the README).
#
# Everything runs on loopback in STATE (default .bulkhead/fault), with the
# same control plane scripts and PostgreSQL packages as the tests. Exit
# status 0 only when every check passed; each check prints PASS or FAIL.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT="$PWD"
STATE="${STATE:-$ROOT/.bulkhead/fault}"
N="${N:-1000}"
PG_OUTAGE="${PG_OUTAGE:-60}"
SCENARIOS="${SCENARIOS:-converge leader}"
TIMEOUT="${TIMEOUT:-1800}"
LEADER_ORGS="${LEADER_ORGS:-200}"
T0=$SECONDS

say() { printf '[fault %4ss] %s\n' "$((SECONDS - T0))" "$*" >&2; }
FAILED=0
check() { # check NAME COMMAND...: PASS/FAIL line, remembered for the exit status
  local name="$1"; shift
  if "$@"; then say "PASS $name"; else say "FAIL $name"; FAILED=1; fi
}

OP_PIDS=() PG_USER="" PGBIN="" PGDATA=""
run_pg() { if [[ -n "$PG_USER" ]]; then runuser -u "$PG_USER" -- "$@"; else "$@"; fi; }
cleanup() {
  set +e
  for p in "${OP_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null; done
  [[ -n "${APISERVER_PID:-}" ]] && kill -CONT "$APISERVER_PID" 2>/dev/null
  [[ -n "$PGDATA" && -f "$PGDATA/postmaster.pid" ]] && run_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null 2>&1
  hack/controlplane/stop.sh --dir "$STATE/cp" >/dev/null 2>&1
}
trap cleanup EXIT
trap 'exit 130' INT TERM

hack/install-deps.sh
BULKHEAD_CP_BIN="$(hack/controlplane/build.sh | tail -n 1)"
export PATH="$BULKHEAD_CP_BIN:$PATH"
cargo build --quiet --bin bulkhead
BULKHEAD="$ROOT/target/debug/bulkhead"

hack/controlplane/stop.sh --dir "$STATE/cp" >/dev/null 2>&1 || true
rm -rf "$STATE"; mkdir -p "$STATE"
AUDIT_LOG="$STATE/audit.log"
KUBECONFIG="$(hack/controlplane/start.sh --dir "$STATE/cp" --with-controllers --with-kwok --owner-pid $$ --audit-log "$AUDIT_LOG" | tail -n 1)"
export KUBECONFIG
kubectl apply --server-side -f crds/ >/dev/null
kubectl wait --for=condition=Established crd --all --timeout=60s >/dev/null
kubectl create namespace bulkhead-system >/dev/null

# This run's kube-apiserver (other control planes may run from the same
# binaries): the one among the pids start.sh recorded.
apiserver_pid() {
  local p
  while read -r p; do
    [[ -r /proc/$p/cmdline ]] || continue
    if tr '\0' ' ' < "/proc/$p/cmdline" | grep -q '^[^ ]*kube-apiserver '; then echo "$p"; return; fi
  done < "$STATE/cp/pids"
}

# Restarts kube-apiserver with the command line it was started with.
restart_apiserver() {
  local pid cmd=()
  pid="$(apiserver_pid)"
  mapfile -d '' cmd < "/proc/$pid/cmdline"
  kill -TERM "$pid"
  while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
  setsid "${cmd[@]}" >>"$STATE/cp/logs/kube-apiserver.log" 2>&1 < /dev/null &
  # stop.sh stops what is listed there.
  echo "$!" >> "$STATE/cp/pids"
  until kubectl get --raw /readyz >/dev/null 2>&1; do sleep 0.5; done
}

start_operator() { # start_operator LOG ARGS...: appends the pid to OP_PIDS
  local log="$1"; shift
  "$BULKHEAD" run --http-addr 127.0.0.1:0 --log-format json --lease-namespace bulkhead-system "$@" >>"$log" 2>&1 &
  OP_PIDS+=("$!")
}

scenario_converge() {
  say "converge: PostgreSQL, $N DatabaseClusters, 5 operator kills, 1 apiserver restart, ${PG_OUTAGE}s database outage"
  PGBIN="$(pg_config --bindir 2>/dev/null || true)"
  [[ -x "$PGBIN/initdb" ]] || PGBIN="$(dirname "$(ls -d /usr/lib/postgresql/*/bin/initdb | sort -V | tail -n 1)")"
  local dir="$STATE/pg" port password
  if [[ $(id -u) -eq 0 ]]; then
    PG_USER=postgres
    id -u "$PG_USER" >/dev/null 2>&1 || useradd --system --no-create-home "$PG_USER"
    chmod 755 "$STATE" "$(dirname "$STATE")" 2>/dev/null || true
  fi
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  password="$(openssl rand -hex 16)"
  mkdir -p "$dir"; printf '%s\n' "$password" > "$dir/pwfile"
  [[ -n "$PG_USER" ]] && chown -R "$PG_USER" "$dir"
  PGDATA="$dir/data"
  run_pg "$PGBIN/initdb" -D "$PGDATA" -U postgres --pwfile="$dir/pwfile" --auth=scram-sha-256 >"$dir/initdb.log" 2>&1
  rm -f "$dir/pwfile"
  pg_start() {
    run_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$dir/server.log" -w \
      -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=300" start >/dev/null
  }
  pg_start
  local dsn="postgres://postgres:$password@127.0.0.1:$port/postgres?sslmode=disable"
  export PGPASSWORD="$password"
  sql() { psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -Atc "$1"; }
  kubectl -n bulkhead-system create secret generic postgres-fault --from-literal=dsn="$dsn" >/dev/null

  kubectl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Namespace
metadata: {name: fault, labels: {bulkhead.dev/adoptable-by: fault}}
---
apiVersion: bulkhead.dev/v1alpha1
kind: Organization
metadata: {name: fault}
spec: {members: [{email: ops@fault.example, role: admin}], billing: {plan: enterprise}, deletionPolicy: Delete}
---
apiVersion: bulkhead.dev/v1alpha1
kind: Environment
metadata: {name: fault}
spec:
  organizationRef: {name: fault}
  tier: staging
  namespaces: [fault]
  databaseProvider: {type: postgres, credentialsSecretRef: {name: postgres-fault, key: dsn}}
EOF
  local log="$STATE/operator-converge.log"
  start_operator "$log" --leader-election=false --concurrency 8
  kubectl wait --for=condition=Ready --timeout=300s env/fault >/dev/null

  say "creating $N DatabaseClusters"
  for i in $(seq 1 "$N"); do
    printf -- '---\napiVersion: bulkhead.dev/v1alpha1\nkind: DatabaseCluster\nmetadata: {name: db-%d, namespace: fault}\nspec:\n  engine: postgres\n  databases: [{name: app}]\n  users: [{name: app_rw, databases: [app], privileges: readWrite}]\n  writeConnectionSecretToRef: {name: db-%d-connection}\n  deletionPolicy: Delete\n' "$i" "$i"
  done | kubectl apply -f - >/dev/null

  # The faults, spread over the convergence: 5 kills at random moments, the
  # apiserver restart after the 2nd, the database outage after the 4th.
  for k in 1 2 3 4 5; do
    sleep "$((RANDOM % 20 + 5))"
    say "kill -9 the operator ($k/5)"
    kill -KILL "${OP_PIDS[-1]}" 2>/dev/null || true; wait "${OP_PIDS[-1]}" 2>/dev/null || true
    unset 'OP_PIDS[-1]'
    if [[ $k == 2 ]]; then say "restarting kube-apiserver"; restart_apiserver; fi
    if [[ $k == 4 ]]; then
      say "stopping PostgreSQL for ${PG_OUTAGE}s"
      run_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m immediate stop >/dev/null
      start_operator "$log" --leader-election=false --concurrency 8
      sleep "$PG_OUTAGE"
      pg_start
      continue
    fi
    start_operator "$log" --leader-election=false --concurrency 8
  done

  say "waiting (up to ${TIMEOUT}s) for every DatabaseCluster to be Ready"
  local started=$SECONDS
  check "all $N DatabaseClusters Ready" kubectl wait --for=condition=Ready --timeout="${TIMEOUT}s" -n fault dbc --all >/dev/null
  say "converged ${SECONDS}s after start of faults-and-wait ($((SECONDS - started))s of waiting)"
  pending="$(kubectl get dbc -n fault -o json | python3 -c 'import json,sys; print(sum(1 for o in json.load(sys.stdin)["items"] if "bulkhead.dev/create-pending" in (o["metadata"].get("annotations") or {})))')"
  check "no create-pending left ($pending)" test "$pending" -eq 0
  dbs="$(sql "select count(*) from pg_database where datname like 'db\_%\_stage\_app'")"
  check "one database per cluster ($dbs of $N)" test "$dbs" -eq "$N"
  roles="$(sql "select count(*) from pg_roles where rolname like 'db\_%\_stage\_%'")"
  check "owner and app_rw roles per cluster ($roles of $((2 * N)))" test "$roles" -eq "$((2 * N))"

  say "deleting every DatabaseCluster"
  kubectl delete dbc -n fault --all --wait=false >/dev/null
  check "every DatabaseCluster gone" kubectl wait --for=delete --timeout="${TIMEOUT}s" -n fault dbc --all >/dev/null
  dbs="$(sql "select count(*) from pg_database where datname like 'db\_%'")"
  roles="$(sql "select count(*) from pg_roles where rolname like 'db\_%'")"
  check "nothing leaked on the server ($dbs databases, $roles roles)" test "$dbs" -eq 0 -a "$roles" -eq 0

  for p in "${OP_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  OP_PIDS=()
  run_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast stop >/dev/null; PGDATA=""
}

scenario_leader() {
  say "leader: two operators, 6s lease, apiserver frozen for 18s"
  local a="$STATE/operator-a.log" b="$STATE/operator-b.log"
  POD_NAME=fault-a start_operator "$a" --leader-election=true --lease-name fault-leader --lease-duration 6
  sleep 1
  POD_NAME=fault-b start_operator "$b" --leader-election=true --lease-name fault-leader --lease-duration 6
  local leader
  for _ in $(seq 1 60); do
    leader="$(kubectl -n bulkhead-system get lease fault-leader -o jsonpath='{.spec.holderIdentity}' 2>/dev/null || true)"
    [[ -n "$leader" ]] && break; sleep 1
  done
  say "leader before the outage: $leader"
  # Work for whoever leads: Organizations created just before the freeze,
  # so the leader is writing when the apiserver stops answering and the
  # audit log shows whose writes came when.
  for i in $(seq 1 "$LEADER_ORGS"); do
    printf -- '---\napiVersion: bulkhead.dev/v1alpha1\nkind: Organization\nmetadata: {name: leader-%d}\nspec: {members: [{email: ops@leader.example, role: admin}]}\n' "$i"
  done | kubectl apply -f - >/dev/null
  sleep 2
  APISERVER_PID="$(apiserver_pid)"
  kill -STOP "$APISERVER_PID"
  sleep 18
  kill -CONT "$APISERVER_PID"; APISERVER_PID=""
  sleep 20
  # When each process started and stopped reconciling, from its JSON log:
  # the events in time order (stderr), then "ok" or "overlap".
  local verdict
  verdict="$(python3 - "$a" "$b" <<'EOF'
import json, sys
events = []
for path in sys.argv[1:]:
    who = path.rsplit("-", 1)[1].split(".")[0]
    for line in open(path):
        try:
            l = json.loads(line)
        except ValueError:
            continue
        m = l.get("message", "")
        if "became leader" in m:
            events.append((l["timestamp"], who, "start"))
        elif "lost the leader lease" in m:
            events.append((l["timestamp"], who, "stop"))
events.sort()
leading = set()
ok = True
for ts, who, what in events:
    print(ts, who, what, file=sys.stderr)
    if what == "start":
        if leading - {who}:
            ok = False
        leading.add(who)
    else:
        leading.discard(who)
print("ok" if ok else "overlap")
EOF
)"
  check "never two leaders at once (old stopped before new started)" test "$verdict" = ok
  # The same from the apiserver's side: in its audit log (User-Agent
  # "bulkhead/<version> (<replica>)"), every write of the first leader
  # (but the Lease's and its start-up SelfSubjectReview) was received
  # before the first such write of the other.
  local audit
  local other=fault-b; [[ "$leader" == fault-b ]] && other=fault-a
  audit="$(python3 - "$AUDIT_LOG" "$leader" "$other" <<'EOF'
import json, sys
path, first, second = sys.argv[1], sys.argv[2], sys.argv[3]
def entries(path):
    """The audit log's entries, one JSON object a line (a torn line skipped)."""
    for line in open(path):
        try:
            yield json.loads(line)
        except ValueError:
            pass
writes = {}
for e in entries(path):
    ua = e.get("userAgent", "")
    if not ua.startswith("bulkhead/") or e.get("verb") not in ("create", "update", "patch", "delete"):
        continue
    # The Lease is what replicas race for, and a SelfSubjectReview (who am
    # I, at start-up) changes nothing: neither is a leader's write.
    if (e.get("objectRef") or {}).get("resource") in ("leases", "selfsubjectreviews"):
        continue
    who = ua[ua.find("(") + 1:ua.rfind(")")]
    writes.setdefault(who, []).append(e["requestReceivedTimestamp"])
old = sorted(writes.get(first, []))
new = sorted(writes.get(second, []))
print(f"{first}: {len(old)} writes, last {old[-1] if old else '-'}; {second}: {len(new)} writes, first {new[0] if new else '-'}", file=sys.stderr)
print("ok" if not old or not new or old[-1] < new[0] else "overlap")
EOF
)"
  check "the apiserver's audit log: no write of the old leader after the new leader's first" test "$audit" = ok
  kubectl delete organization $(seq -f 'leader-%g' 1 "$LEADER_ORGS") --wait=false >/dev/null 2>&1 || true
  # Which way it went: after the freeze either the old leader renews first
  # and keeps the Lease, or it gives up and the standby takes over.
  if grep -q "became leader" "$b"; then say "the standby took over"; else say "no hand-over: the old leader renewed first"; fi
  for p in "${OP_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  OP_PIDS=()
}

for s in $SCENARIOS; do "scenario_$s"; done
say "done in $((SECONDS - T0))s: $([[ $FAILED == 0 ]] && echo 'all checks passed' || echo 'some checks FAILED')"
exit "$FAILED"
