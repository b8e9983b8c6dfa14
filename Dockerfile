# syntax=docker/dockerfile:1
# spotinfer for CPU nodes: the job-intake pod, the `cpu` overlay, laptops. For GPU nodes build
# Dockerfile.cuda instead.
#
#   docker build -t spotinfer:0.1.0-cpu .
#   docker run -p 3000:3000 spotinfer:0.1.0-cpu --model-id sentence-transformers/all-MiniLM-L6-v2
#
# Built from Debian bookworm alone: Debian's own Rust (rustc-web / cargo-web, from
# bookworm-security) in the build stage, nothing but the binary on bookworm-slim at run time.
# The CPU kernels pick AVX2 / AVX-512 / AMX at run time, so one image serves every x86-64 node.
#
# Behind a TLS-intercepting proxy, hand the build your CA bundle (used for crates.io only):
#   docker build --secret id=ca_bundle,src=/etc/ssl/certs/ca-certificates.crt -t spotinfer:0.1.0-cpu .
ARG BUILDER_IMAGE=debian:bookworm
ARG RUNTIME_IMAGE=debian:bookworm-slim

# ---------------------------------------------------------------------------------------------
FROM ${BUILDER_IMAGE} AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV DEBIAN_FRONTEND=noninteractive \
    CARGO_HOME=/usr/local/cargo \
    CARGO_TERM_COLOR=never \
    CARGO_PROFILE_RELEASE_DEBUG=0

# Pinning each Debian package version would break the build at the next security update
# without making it more reproducible; the Rust version is what bookworm-security ships.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        rustc-web cargo-web gcc g++ libc6-dev make ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && rustc --version && cargo --version

WORKDIR /src
# Dependencies first, into a layer that stays cached until Cargo.toml or Cargo.lock change: the
# manifest with stand-ins for the crate's sources and bench targets (cargo refuses a manifest
# whose declared targets are missing).
COPY Cargo.toml Cargo.lock ./
RUN --mount=type=secret,id=ca_bundle \
    if [ -s /run/secrets/ca_bundle ]; then export CARGO_HTTP_CAINFO=/run/secrets/ca_bundle; fi \
    && mkdir -p src benches \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && echo 'fn main() {}' > benches/micro.rs \
    && echo 'fn main() {}' > benches/e2e.rs \
    && cargo build --release --locked --bin spotinfer \
    && rm -rf src benches

# The crate itself.
COPY build.rs ./
COPY proto proto
COPY benches benches
COPY src src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked --bin spotinfer \
    && install -D -m 0755 target/release/spotinfer /out/spotinfer \
    && /out/spotinfer --version

# ---------------------------------------------------------------------------------------------
FROM ${RUNTIME_IMAGE}
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN groupadd --gid 10001 spotinfer \
    && useradd --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin spotinfer \
    && mkdir -p /data/hub /data/state \
    && chown -R 10001:10001 /data
COPY --from=builder /out/spotinfer /usr/local/bin/spotinfer
# Listen on every interface in a container; HOSTNAME is the pod name, hence SPOTINFER_HOSTNAME.
ENV HOME=/data \
    HUGGINGFACE_HUB_CACHE=/data/hub \
    STATE_DIR=/data/state \
    SPOTINFER_HOSTNAME=0.0.0.0 \
    PORT=3000 \
    PROMETHEUS_PORT=9000
WORKDIR /data
# /data is the one place written to (Hub cache, job state): mount a volume there when the root
# filesystem is read-only.
VOLUME ["/data"]
USER 10001:10001
EXPOSE 3000 9000
# No curl in the image: bash's /dev/tcp asks /health (liveness: 200 unless the device worker
# died or is wedged). The start period covers a model download and load.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10m --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/${PORT:-3000} && printf 'GET /health HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/spotinfer", "serve"]
