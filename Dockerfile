# syntax=docker/dockerfile:1
#
# The bulkhead operator image: a static musl binary on an empty base,
# uid/gid 65532, no shell, no package manager. hack/image.sh builds the same
# image without a daemon (buildah, as CI does); tests/image.rs checks that
# this file and that script agree on the build command, base, user,
# entrypoint, port and labels.
#
# Build (BuildKit, from the repository root):
#   docker build -t bulkhead:0.1.0 \
#     --build-arg REVISION="$(git rev-parse HEAD)" \
#     --build-arg SOURCE="$(git config --get remote.origin.url)" .
# Multi-arch:
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/bulkhead:0.1.0 --push .
# Run it the way the Helm chart does (charts/bulkhead):
#   docker run --rm bulkhead:0.1.0 --help
#
# musl, not glibc: a musl binary is static by itself (no crt-static, no NSS
# or libgcc_s to carry), so it runs on an empty base; rustup serves the musl
# target and Debian's musl-tools gives ring the C compiler it needs.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
# musl-tools: ring's C and assembly parts are built with musl-gcc. The
# builder stage is thrown away, so its apt packages are not pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
ARG TARGETARCH
RUN case "${TARGETARCH:-amd64}" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH ${TARGETARCH}" >&2; exit 1 ;; \
    esac > /rust-target \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
# Cargo.toml declares benches; the manifest does not parse without them.
COPY benches ./benches
# The workspace's other member (the Fly.io API emulator, a test tool): the
# workspace does not load without it; only the operator is built.
COPY fly-emulator ./fly-emulator
# Cache mounts keep the registry and build artefacts between builds; the
# binary is copied out because the target dir is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --release --locked --bin bulkhead --target "$target" \
 && cp "target/$target/release/bulkhead" /bulkhead \
 && /bulkhead version

# Empty: the binary needs no libc, CA bundle (webpki-roots is compiled in;
# in-cluster the apiserver CA comes from the ServiceAccount mount) or
# passwd entry (the user is numeric).
FROM scratch
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="bulkhead" \
      org.opencontainers.image.description="Kubernetes operator for Organizations, Environments and DatabaseClusters" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="${SOURCE}"
COPY --from=build --chown=0:0 --chmod=0555 /bulkhead /bulkhead
# The uid/gid distroless calls "nonroot" and the chart runs as; the binary
# is root-owned and read-only, so the process cannot change it.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/bulkhead", "run"]
