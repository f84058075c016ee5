#!/usr/bin/env bash
# The whole test suite — exactly what CI runs (.ci/run calls this):
# formatting, lints, CRD drift, the release image (hack/image.sh), the Fly
# emulator's tests, unit tests and every integration test against the real local control plane (etcd,
# kube-apiserver, controller-manager, scheduler, kwok, helm) and a real
# PostgreSQL.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "installing dependencies"
hack/install-deps.sh

step "building (or reusing) the local control plane"
BULKHEAD_CP_BIN="$(hack/controlplane/build.sh | tail -n 1)"
export BULKHEAD_CP_BIN
export PATH="$BULKHEAD_CP_BIN:$PATH"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --workspace --all-targets -- -D warnings"
# The workspace: the operator and the Fly emulator (fly-emulator/).
cargo clippy --workspace --all-targets -- -D warnings

step "crds/ matches \`bulkhead crd\`"
generated="$(mktemp -d)"
trap 'rm -rf "$generated"' EXIT
cargo run -q -- crd --output-dir "$generated"
diff -ru crds "$generated" || { echo "crds/ is stale: run cargo run -- crd --output-dir crds --output-dir charts/bulkhead/crds" >&2; exit 1; }

step "the release image (hack/image.sh), for tests/image.rs"
# Built once here so tests/image.rs checks this archive instead of building
# its own; the release build is most of this step's time.
image_started=$SECONDS
BULKHEAD_IMAGE_ARCHIVE="$PWD/$(hack/image.sh | tail -n 1)"
export BULKHEAD_IMAGE_ARCHIVE
printf 'image built in %ss\n' "$((SECONDS - image_started))" >&2

step "the Fly emulator's tests (cargo test -p fly-emulator)"
# Seconds, loopback only; run before the operator's long suite.
cargo test -p fly-emulator --all-targets

step "cargo test (unit and integration)"
cargo test --all-targets

step "the quick start (hack/demo.sh, non-interactive)"
BULKHEAD_DEMO_EXIT=1 hack/demo.sh </dev/null
