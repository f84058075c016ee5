#!/usr/bin/env bash
# Stop a control plane started by start.sh. Idempotent.
#
# Usage: hack/controlplane/stop.sh --dir DIR [--clean]
#   Sends TERM to every pid in DIR/pids (newest first, the first line = etcd
#   last), waits up to 10 s, then KILLs what is left; stops the --owner-pid
#   watchdog too.
#   --clean also removes DIR (only if start.sh created it: DIR/.bulkhead-controlplane).
# A pid is only signalled if its command line mentions DIR, so a stale pid
# file can never hit an unrelated process that reused the pid.
set -euo pipefail

log() { printf '[stop.sh] %s\n' "$*" >&2; }

DIR="" CLEAN=0 FROM_WATCHDOG=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --dir) DIR="${2:?--dir needs a value}"; shift 2 ;;
    --dir=*) DIR="${1#*=}"; shift ;;
    --clean) CLEAN=1; shift ;;
    --from-watchdog) FROM_WATCHDOG=1; shift ;;   # internal: called by start.sh's watchdog
    -h|--help) sed -n '2,9p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 0 ;;
    *) log "unknown argument: $1"; exit 2 ;;
  esac
done
[[ -n "$DIR" ]] || { log "--dir is required"; exit 2; }
if [[ ! -d "$DIR" ]]; then
  log "$DIR does not exist; nothing to stop"
  exit 0
fi
DIR="$(cd "$DIR" && pwd -P)"

alive() { [[ -d /proc/$1 ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
ours() { # is pid $1 a live process whose command line mentions DIR?
  alive "$1" && [[ -r /proc/$1/cmdline ]] && tr '\0' '\n' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$DIR"
}

PIDS=()
if [[ -f "$DIR/pids" ]]; then
  while read -r p; do
    [[ "$p" =~ ^[0-9]+$ ]] && PIDS=("$p" "${PIDS[@]}")   # reverse: newest first
  done < "$DIR/pids"
fi

TARGETS=()
for p in "${PIDS[@]}"; do
  if ours "$p"; then TARGETS+=("$p"); fi
done

# stop_wave TIMEOUT PID... : TERM, wait up to TIMEOUT s, then KILL.
stop_wave() {
  local timeout="$1" deadline p left; shift
  [[ $# -gt 0 ]] || return 0
  for p in "$@"; do kill -TERM "$p" 2>/dev/null || true; done
  deadline=$(( $(date +%s) + timeout ))
  while :; do
    left=()
    for p in "$@"; do if alive "$p"; then left+=("$p"); fi; done
    [[ ${#left[@]} -gt 0 ]] || return 0
    if [[ $(date +%s) -ge $deadline ]]; then
      log "still running after ${timeout}s, sending KILL: ${left[*]}"
      for p in "${left[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
      sleep 0.5
      return 0
    fi
    sleep 0.1
  done
}

if [[ ${#TARGETS[@]} -gt 0 ]]; then
  log "stopping ${#TARGETS[@]} process(es) in $DIR: ${TARGETS[*]}"
  # DIR/pids lists etcd first. Stop everything else before it (newest first),
  # so kube-apiserver can shut down cleanly instead of hanging on a dead etcd.
  last="${PIDS[${#PIDS[@]}-1]}"
  rest=()
  for p in "${TARGETS[@]}"; do [[ "$p" == "$last" ]] || rest+=("$p"); done
  stop_wave 10 "${rest[@]}"
  if [[ " ${TARGETS[*]} " == *" $last "* ]]; then stop_wave 10 "$last"; fi
fi
# Keep the pid list for reference but make it inert for the next stop/start.
if [[ -f "$DIR/pids" ]]; then mv -f "$DIR/pids" "$DIR/pids.stopped"; fi

# Stop the watchdog unless it is the one running us.
if [[ -f "$DIR/watchdog.pid" ]]; then
  w="$(cat "$DIR/watchdog.pid")"
  if [[ $FROM_WATCHDOG -eq 0 && "$w" =~ ^[0-9]+$ && "$w" != "$$" ]] && ours "$w"; then
    kill -TERM "$w" 2>/dev/null || true
  fi
  rm -f "$DIR/watchdog.pid"
fi

if [[ $CLEAN -eq 1 ]]; then
  if [[ -f "$DIR/.bulkhead-controlplane" ]]; then
    rm -rf "$DIR"
    log "removed $DIR"
  else
    log "not removing $DIR: it was not created by start.sh (no .bulkhead-controlplane marker)"
  fi
fi
log "stopped"
