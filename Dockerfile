# vast-processor image: the binary with the four bundled transforms embedded, the default
# pipelines.toml, and a writable transforms directory for hot reload.
#
#   docker build -t vast-processor .
#   docker run --rm -p 9464:9464 -e KAFKA_BOOTSTRAP_SERVERS=broker:9092 vast-processor
#
# The build step is scripts/build-release, the same script .ci/run exercises (through
# scripts/quickstart), so the image cannot be built differently from what CI checks.

# ---- builder ---------------------------------------------------------------------------
# The tag matches rust-toolchain.toml (1.95.0), so rustup uses the image's toolchain.
FROM rust:1.95.0-slim-trixie AS builder
# librdkafka is compiled from source (C, make, perl); it links OpenSSL and zlib.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential perl pkg-config libssl-dev zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN scripts/build-release

# ---- runtime ---------------------------------------------------------------------------
FROM debian:trixie-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl libssl3t64 zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /var/lib/vast-processor \
      --shell /usr/sbin/nologin vast \
 && mkdir -p /etc/vast-processor/transforms /var/lib/vast-processor /var/cache/vast-processor \
 && chown vast:vast /etc/vast-processor/transforms /var/lib/vast-processor /var/cache/vast-processor
COPY --from=builder /src/target/release/vast-processor /usr/local/bin/vast-processor
COPY pipelines.toml /etc/vast-processor/pipelines.toml
# Compiled transforms are cached here so a restart does not recompile them.
ENV VAST_PROCESSOR_CACHE_DIR=/var/cache/vast-processor
USER 10001:10001
WORKDIR /var/lib/vast-processor
# /metrics, /healthz, /readyz, /transforms. The container listens on all of its interfaces;
# publish the port only where Prometheus needs it.
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9464/healthz"]
ENTRYPOINT ["vast-processor"]
CMD ["run", "--config", "/etc/vast-processor/pipelines.toml", "--data-dir", "/var/lib/vast-processor/data", "--admin-addr", "0.0.0.0:9464"]
