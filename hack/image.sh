#!/usr/bin/env bash
# Builds the operator image as an OCI archive, without a container daemon:
# a static musl release binary on an empty base, uid/gid 65532, no shell,
# entrypoint `bulkhead run`. The Dockerfile describes the same image for
# people with Docker/BuildKit; tests/image.rs checks that the two agree and
# that the archive is what this comment says.
#
#   hack/image.sh                 build target/image/bulkhead-<version>.oci.tar
#   hack/image.sh --output FILE   build FILE instead
#   hack/image.sh --print-ref     print the image reference it tags, and exit
#
# The reference is the Helm chart's default image (image.repository in
# charts/bulkhead/values.yaml, tagged with the chart's appVersion), so a
# chart installed with default values runs exactly this image. Load it with
# e.g. `skopeo copy oci-archive:FILE docker://REGISTRY/bulkhead:VERSION`,
# `podman load -i FILE` or `kind load image-archive FILE`.
#
# Needs buildah (hack/install-deps.sh installs it), musl-gcc (ring's C parts)
# and the x86_64/aarch64-unknown-linux-musl Rust target. Works as root (as CI
# runs it): buildah uses the vfs storage driver in a scratch directory, so
# nothing is mounted, no container runtime runs and /var/lib/containers is
# never touched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The one-line values these come from are simple enough for sed; the chart
# test renders the chart with helm and compares it with --print-ref.
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)"
app_version="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' charts/bulkhead/Chart.yaml)"
repository="$(sed -n '/^image:/,/^[^ #]/s/^  repository: *\([^ #]*\).*$/\1/p' charts/bulkhead/values.yaml)"
[[ -n "$version" && -n "$app_version" && -n "$repository" ]] || die "cannot read the version or the chart's image"
[[ "$version" == "$app_version" ]] || die "Cargo.toml version $version != Chart.yaml appVersion $app_version"
ref="$repository:$app_version"

output="target/image/bulkhead-$version.oci.tar"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --print-ref) echo "$ref"; exit 0 ;;
    --output) output="$2"; shift 2 ;;
    *) die "unknown argument $1" ;;
  esac
done

case "$(uname -m)" in
  x86_64) target=x86_64-unknown-linux-musl; arch=amd64 ;;
  aarch64) target=aarch64-unknown-linux-musl; arch=arm64 ;;
  *) die "unsupported machine $(uname -m)" ;;
esac
command -v buildah >/dev/null || die "buildah not found: run hack/install-deps.sh"

# The same command as the Dockerfile's build stage (tests/image.rs compares
# them). musl's static libc makes the binary run on an empty base; the
# release profile strips it (Cargo.toml).
log "cargo build --release ($target)"
started=$SECONDS
cargo build --release --locked --bin bulkhead --target "$target"
binary="target/$target/release/bulkhead"
"$binary" version >/dev/null || die "$binary does not run"
log "binary built in $((SECONDS - started))s: $(du -h "$binary" | cut -f1)"

revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)"
# Where the source is: the clone's origin, unless the caller says.
source_url="${BULKHEAD_IMAGE_SOURCE:-$(git config --get remote.origin.url 2>/dev/null || echo unknown)}"
# The commit's time, not now, so rebuilding one commit gives the same image.
created="${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || echo 0)}"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
b() { buildah --root "$work/root" --runroot "$work/run" --storage-driver vfs "$@"; }

ctr="$(b from --name "bulkhead-image-$$" scratch)"
b copy --chown 0:0 --chmod 0555 "$ctr" "$binary" /bulkhead >/dev/null
# The same user, entrypoint, port and labels as the Dockerfile's last stage.
b config \
  --os linux --arch "$arch" \
  --user 65532:65532 \
  --entrypoint '["/bulkhead", "run"]' \
  --port 8080/tcp \
  --label org.opencontainers.image.title=bulkhead \
  --label "org.opencontainers.image.description=Kubernetes operator for Organizations, Environments and DatabaseClusters" \
  --label org.opencontainers.image.licenses=Apache-2.0 \
  --label "org.opencontainers.image.version=$version" \
  --label "org.opencontainers.image.revision=$revision" \
  --label "org.opencontainers.image.source=$source_url" \
  "$ctr"
mkdir -p "$(dirname "$output")"
rm -f "$output"
b commit --quiet --format oci --disable-compression=false --identity-label=false --omit-history \
  --timestamp "$created" --rm "$ctr" "oci-archive:$output:$ref" >/dev/null
log "wrote $output ($ref, $(du -h "$output" | cut -f1))"
echo "$output"
