# syntax=docker/dockerfile:1
#
# The bulkhead operator image: a static binary on distroless, non-root, no shell.
#
# Build (BuildKit, from the repository root):
#   docker build -t bulkhead:0.1.0 .
# Multi-arch:
#   docker buildx build --platform linux/amd64,linux/arm64 -t REGISTRY/bulkhead:0.1.0 --push .
# Run it the way the Helm chart does (charts/bulkhead):
#   docker run --rm bulkhead:0.1.0 --help

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
# Cache mounts keep the registry and build artefacts between builds; the
# binary is copied out because the target dir is not part of the layer.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    target="$(cat /rust-target)" \
 && cargo build --release --locked --bin bulkhead --target "$target" \
 && cp "target/$target/release/bulkhead" /bulkhead \
 && /bulkhead version

FROM gcr.io/distroless/static-debian12:nonroot
LABEL org.opencontainers.image.title="bulkhead" \
      org.opencontainers.image.description="Kubernetes operator for Organizations, Environments and DatabaseClusters" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=build --chown=0:0 --chmod=0555 /bulkhead /bulkhead
# distroless "nonroot": uid/gid 65532, no shell, no package manager.
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/bulkhead", "run"]
