#!/usr/bin/env bash
# Build (or reuse) a local Kubernetes control plane from published Go modules.
#
# Usage: hack/controlplane/build.sh [COMPONENT...]
#   COMPONENT: kube-apiserver etcd kubectl etcdctl helm kwok
#              kube-controller-manager kube-scheduler cnpg-manager   (default: all)
#
# cnpg-manager (the CloudNativePG operator) is cached under its own
# version key (…/controlplane/cnpg-<version>/, with the CRDs and webhook
# manifests of the same module), so bumping CloudNativePG never rebuilds the
# Kubernetes binaries; the bin dir gets symlinks `cnpg-manager` and `cnpg`
# (the CloudNativePG dir: bin/, crds/, webhook/).
#
# Progress goes to stderr. The LAST stdout line is the bin dir, so callers do:
#   BIN=$(hack/controlplane/build.sh | tail -1)
#
# Environment:
#   BULKHEAD_CACHE_DIR  cache root (default ${XDG_CACHE_HOME:-$HOME/.cache}/bulkhead)
#   BULKHEAD_ASSETS     optional dir with prebuilt binaries (at least etcd and
#                       kube-apiserver, like setup-envtest's KUBEBUILDER_ASSETS);
#                       binaries found there are used as-is, the rest is built.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

log() { printf '[build.sh] %s\n' "$*" >&2; }
die() { printf '[build.sh] ERROR: %s\n' "$*" >&2; exit 1; }

# Versions are read from the wrapper go.mod files (single source of truth).
modver() { # modver DIR MODULE
  awk -v m="$2" '($1 == m || ($1 == "require" && $2 == m)) { v = ($1 == "require") ? $3 : $2; print v; exit }' "$HERE/$1/go.mod"
}
K8S_VERSION="$(modver kubernetes k8s.io/kubernetes)"
ETCD_VERSION="$(modver etcd go.etcd.io/etcd/server/v3)"
ETCDCTL_VERSION="$(modver etcd go.etcd.io/etcd/etcdctl/v3)"
HELM_VERSION="$(modver helm helm.sh/helm/v3)"
KWOK_VERSION="$(modver kwok sigs.k8s.io/kwok)"
CNPG_VERSION="$(modver cloudnative-pg github.com/cloudnative-pg/cloudnative-pg)"
for v in K8S_VERSION ETCD_VERSION ETCDCTL_VERSION HELM_VERSION KWOK_VERSION CNPG_VERSION; do
  [[ -n "${!v}" ]] || die "could not determine $v from $HERE/*/go.mod"
done

CACHE_ROOT="${BULKHEAD_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/bulkhead}/controlplane"
KEY="k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}-helm-${HELM_VERSION}-kwok-${KWOK_VERSION}"
BUILD_BIN="$CACHE_ROOT/$KEY/bin"
CNPG_DIR="$CACHE_ROOT/cnpg-${CNPG_VERSION}"

# Bump RECIPE whenever the way a binary is built changes (ldflags, tags, …):
# cached binaries with an older recipe stamp are rebuilt.
RECIPE=2

ALL=(kube-apiserver etcd kubectl etcdctl helm kwok kube-controller-manager kube-scheduler cnpg-manager)
if [[ $# -gt 0 ]]; then
  WANT=("$@")
  for c in "${WANT[@]}"; do
    [[ " ${ALL[*]} " == *" $c "* ]] || die "unknown component '$c' (known: ${ALL[*]})"
  done
else
  WANT=("${ALL[@]}")
fi

# ---------------------------------------------------------------- metadata
k8s_minor="${K8S_VERSION#v}"; k8s_minor="${k8s_minor#*.}"; k8s_minor="${k8s_minor%%.*}"
k8s_major="${K8S_VERSION#v}"; k8s_major="${k8s_major%%.*}"

component_module_dir() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl) echo kubernetes ;;
    etcd|etcdctl) echo etcd ;;
    helm) echo helm ;;
    kwok) echo kwok ;;
    cnpg-manager) echo cloudnative-pg ;;
  esac
}

# Where a component's binary is built and cached.
component_bin_dir() {
  case "$1" in
    cnpg-manager) echo "$CNPG_DIR/bin" ;;
    *) echo "$BUILD_BIN" ;;
  esac
}

component_pkg() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl) echo "k8s.io/kubernetes/cmd/$1" ;;
    etcd) echo "go.etcd.io/etcd/server/v3" ;;          # module root is package main
    etcdctl) echo "go.etcd.io/etcd/etcdctl/v3" ;;      # module root is package main
    helm) echo "helm.sh/helm/v3/cmd/helm" ;;
    kwok) echo "sigs.k8s.io/kwok/cmd/kwok" ;;
    cnpg-manager) echo "github.com/cloudnative-pg/cloudnative-pg/cmd/manager" ;;
  esac
}

component_version() {
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl) echo "$K8S_VERSION" ;;
    etcd) echo "$ETCD_VERSION" ;;
    etcdctl) echo "$ETCDCTL_VERSION" ;;
    helm) echo "$HELM_VERSION" ;;
    kwok) echo "$KWOK_VERSION" ;;
    cnpg-manager) echo "$CNPG_VERSION" ;;
  esac
}

component_ldflags() {
  local ld="-s -w" p
  case "$1" in
    kube-apiserver|kube-controller-manager|kube-scheduler|kubectl)
      # Build date = publication time of the release on the Go module proxy
      # (keeps builds reproducible); the git commit is not known from modules.
      for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        ld+=" -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=$k8s_major -X $p.gitMinor=$k8s_minor"
        # gitCommit is not recorded in the module zip; blank it instead of
        # leaving the "$Format:%H$" placeholder.
        ld+=" -X $p.gitCommit= -X $p.gitTreeState=clean -X $p.buildDate=${K8S_BUILD_DATE:-1970-01-01T00:00:00Z}"
      done ;;
    helm)
      ld+=" -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
      ld+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
      # Same as helm's Makefile: k8s version derived from the client-go it is built with.
      ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=${HELM_K8S_MAJOR:-1}"
      ld+=" -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=${HELM_K8S_MINOR:-0}"
      ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=${HELM_K8S_MAJOR:-1}"
      ld+=" -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=${HELM_K8S_MINOR:-0}" ;;
    kwok)
      ld+=" -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION#v}" ;;
    cnpg-manager)
      # As CloudNativePG's Makefile; commit and date are not in the module zip.
      ld+=" -X github.com/cloudnative-pg/cloudnative-pg/pkg/versions.buildVersion=${CNPG_VERSION#v}"
      ld+=" -X github.com/cloudnative-pg/cloudnative-pg/pkg/versions.buildCommit=none" ;;
  esac
  echo "$ld"
}

# Prints the version line of a binary; non-zero exit if it does not run.
bin_version() { # bin_version NAME PATH
  local out
  case "$1" in
    kubectl) out="$(timeout 30 "$2" version --client 2>&1)" ;;
    etcdctl) out="$(timeout 30 "$2" version 2>&1)" ;;
    helm)    out="$(timeout 30 "$2" version --short 2>&1)" ;;
    cnpg-manager) out="$(timeout 30 "$2" version 2>&1)" ;;
    *)       out="$(timeout 30 "$2" --version 2>&1)" ;;
  esac || return 1
  printf '%s\n' "$out" | head -1
}

# A cached binary is valid if it was built with the current recipe, runs,
# and reports the expected version.
bin_ok() { # bin_ok NAME PATH
  local out want
  [[ -x "$2" ]] || return 1
  [[ "$(cat "$(dirname "$2")/.$1.recipe" 2>/dev/null)" == "$RECIPE" ]] || return 1
  out="$(bin_version "$1" "$2")" || return 1
  want="$(component_version "$1")"; want="${want#v}"
  [[ "$out" == *"$want"* ]]
}

# ---------------------------------------------------------------- locking
mkdir -p "$BUILD_BIN" "$CNPG_DIR/bin"
if command -v flock >/dev/null 2>&1; then
  exec 9>"$CACHE_ROOT/$KEY/.lock"
  if ! flock -n 9; then
    log "another build.sh is running for $KEY; waiting for its lock…"
    flock 9
  fi
fi

# Leftovers of builds that were killed hard (we hold the lock, so none is live).
rm -f "$BUILD_BIN"/.*.tmp.* "$CNPG_DIR"/bin/.*.tmp.* 2>/dev/null || true

export GOWORK=off CGO_ENABLED=0
unset GOFLAGS   # e.g. -mod=vendor from the caller's environment must not leak in

build_one() { # build_one NAME
  local name="$1" dir pkg ver ld tmp start rc out
  dir="$(component_module_dir "$name")"; pkg="$(component_pkg "$name")"
  ver="$(component_version "$name")"; out="$(component_bin_dir "$name")"
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to build $name; Go >= 1.26, or GOTOOLCHAIN=auto)"
  if [[ -z "${K8S_BUILD_DATE:-}" && "$dir" == kubernetes ]]; then
    K8S_BUILD_DATE="$(cd "$HERE/kubernetes" && { go list -m -f '{{if .Time}}{{.Time.UTC.Format "2006-01-02T15:04:05Z"}}{{end}}' k8s.io/kubernetes 2>/dev/null || true; })"
    K8S_BUILD_DATE="${K8S_BUILD_DATE:-1970-01-01T00:00:00Z}"
  fi
  if [[ "$name" == helm && -z "${HELM_K8S_MINOR:-}" ]]; then
    local cg
    cg="$(cd "$HERE/helm" && go list -m -f '{{.Version}}' k8s.io/client-go)"   # v0.MINOR.PATCH
    cg="${cg#v}"; HELM_K8S_MAJOR=$(( ${cg%%.*} + 1 )); cg="${cg#*.}"; HELM_K8S_MINOR="${cg%%.*}"
  fi
  ld="$(component_ldflags "$name")"
  tmp="$out/.$name.tmp.$$"
  log "building $name $ver (cold builds take minutes)…"
  start=$(date +%s)
  rc=0
  (cd "$HERE/$dir" && go build -trimpath -ldflags "$ld" -o "$tmp" "$pkg") >&2 || rc=$?
  if [[ $rc -ne 0 ]]; then
    rm -f "$tmp"
    die "go build of $name ($pkg in $HERE/$dir) failed with exit code $rc"
  fi
  mv -f "$tmp" "$out/$name"
  echo "$RECIPE" > "$out/.$name.recipe"
  log "built $name in $(( $(date +%s) - start ))s: $(bin_version "$name" "$out/$name" || echo '?')"
}

# The CRDs and webhook manifests of the CloudNativePG module, next to its
# manager (same version key): start.sh --with-cnpg installs them.
extract_cnpg_assets() {
  local mod
  [[ -s "$CNPG_DIR/crds/.version" && "$(cat "$CNPG_DIR/crds/.version")" == "$CNPG_VERSION" ]] && return 0
  command -v go >/dev/null 2>&1 || die "go is not on PATH (needed to fetch the CloudNativePG module)"
  mod="$(cd "$HERE/cloudnative-pg" && go mod download -json github.com/cloudnative-pg/cloudnative-pg | awk -F'"' '$2 == "Dir" { print $4 }')"
  [[ -d "$mod/config/crd/bases" ]] || die "CloudNativePG module $CNPG_VERSION has no config/crd/bases (got '$mod')"
  rm -rf "$CNPG_DIR/crds.tmp" "$CNPG_DIR/webhook.tmp"
  mkdir -p "$CNPG_DIR/crds.tmp" "$CNPG_DIR/webhook.tmp"
  cp "$mod"/config/crd/bases/*.yaml "$CNPG_DIR/crds.tmp/"
  cp "$mod/config/webhook/manifests.yaml" "$CNPG_DIR/webhook.tmp/"
  echo "$CNPG_VERSION" > "$CNPG_DIR/crds.tmp/.version"
  rm -rf "$CNPG_DIR/crds" "$CNPG_DIR/webhook"
  mv "$CNPG_DIR/webhook.tmp" "$CNPG_DIR/webhook"
  mv "$CNPG_DIR/crds.tmp" "$CNPG_DIR/crds"
  log "CloudNativePG $CNPG_VERSION CRDs and webhook manifests in $CNPG_DIR"
}

trap 'rm -f "$BUILD_BIN"/.*.tmp.$$ "$CNPG_DIR"/bin/.*.tmp.$$' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# ---------------------------------------------------------------- assets
OUT_BIN="$BUILD_BIN"
if [[ -n "${BULKHEAD_ASSETS:-}" ]]; then
  [[ -d "$BULKHEAD_ASSETS" ]] || die "BULKHEAD_ASSETS=$BULKHEAD_ASSETS is not a directory"
  ASSETS="$(cd "$BULKHEAD_ASSETS" && pwd -P)"
  [[ -x "$ASSETS/etcd" && -x "$ASSETS/kube-apiserver" ]] \
    || die "BULKHEAD_ASSETS=$ASSETS must contain executable etcd and kube-apiserver"
  # A per-assets-dir bin dir of symlinks: asset binaries where present, our
  # builds (in the version-keyed cache) for the rest.
  hash="$(printf '%s' "$ASSETS" | sha256sum | cut -c1-12)"
  OUT_BIN="$CACHE_ROOT/assets-$hash-$KEY/bin"
  mkdir -p "$OUT_BIN"
  printf '%s\n' "$ASSETS" > "$CACHE_ROOT/assets-$hash-$KEY/ASSETS_DIR"
fi

# Build order: apiserver + etcd + kubectl first (enough for most tests).
for name in "${WANT[@]}"; do
  if [[ "$OUT_BIN" != "$BUILD_BIN" && -x "$ASSETS/$name" ]]; then
    bin_version "$name" "$ASSETS/$name" >/dev/null || die "$ASSETS/$name does not run"
    ln -sfn "$ASSETS/$name" "$OUT_BIN/$name"
    log "using $name from BULKHEAD_ASSETS: $(bin_version "$name" "$ASSETS/$name")"
    continue
  fi
  built="$(component_bin_dir "$name")/$name"
  if bin_ok "$name" "$built"; then
    log "cached $name $(component_version "$name")"
  else
    build_one "$name"
    bin_ok "$name" "$built" \
      || die "built $name but '$built' does not report version $(component_version "$name")"
  fi
  if [[ "$OUT_BIN" != "$(dirname "$built")" ]]; then
    ln -sfn "$built" "$OUT_BIN/$name"
  fi
  if [[ "$name" == cnpg-manager ]]; then
    extract_cnpg_assets
    ln -sfn "$CNPG_DIR" "$OUT_BIN/cnpg"
  fi
done

echo "$OUT_BIN"
