#!/usr/bin/env bash
# Installs what building and testing bulkhead needs on a fresh Debian
# machine: the Rust components, PostgreSQL server binaries, openssl, the
# tools the control-plane scripts call, and what hack/image.sh and
# tests/image.rs use to build and unpack the image without a daemon.
# Idempotent; fast when all is present.
set -euo pipefail

log() { printf '[install-deps] %s\n' "$*" >&2; }

need_apt=()
have_pg() {
  command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null
}
have_pg || need_apt+=(postgresql)
command -v psql >/dev/null 2>&1 || need_apt+=(postgresql-client)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v curl >/dev/null 2>&1 || need_apt+=(curl)
command -v setsid >/dev/null 2>&1 || need_apt+=(util-linux)
command -v pgrep >/dev/null 2>&1 || need_apt+=(procps)
command -v runuser >/dev/null 2>&1 || need_apt+=(util-linux)
# The image: buildah builds the OCI archive, umoci unpacks it for the test,
# skopeo copies it to a registry; musl-gcc builds ring's C parts for musl.
command -v buildah >/dev/null 2>&1 || need_apt+=(buildah)
command -v umoci >/dev/null 2>&1 || need_apt+=(umoci)
command -v skopeo >/dev/null 2>&1 || need_apt+=(skopeo)
command -v musl-gcc >/dev/null 2>&1 || need_apt+=(musl-tools)

if [[ ${#need_apt[@]} -gt 0 ]]; then
  log "installing ${need_apt[*]}"
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

if command -v rustup >/dev/null 2>&1; then
  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
  # The image's static binary (hack/image.sh).
  musl_target="$(uname -m)-unknown-linux-musl"
  rustup target list --installed 2>/dev/null | grep -qx "$musl_target" || rustup target add "$musl_target"
fi

command -v go >/dev/null 2>&1 || log "warning: no Go toolchain: the control plane can only come from BULKHEAD_ASSETS"
log "dependencies present"
