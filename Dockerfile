# syntax=docker/dockerfile:1
#
# The `meshcache node` image: a release build of the binary on a small
# Debian runtime, run as a non-root user, configured by MESHCACHE_*
# variables (see `meshcache node --help`). Kubernetes manifests that use
# it: deploy/kubernetes/.
#
#   docker build -t meshcache .
#
# The Rust version: Cargo.toml's rust-version (what the locked
# dependencies need: time 0.3.55, rcgen 0.14, postcard 1.2).
ARG RUST_VERSION=1.88

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and the target directory are cache mounts, so a rebuild after
# a source change compiles only what changed; the binary is copied out of
# the cache mount. Release builds keep line tables (`debug = 1` in
# Cargo.toml); the image drops them and keeps the symbols for backtraces.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    cargo build --release --locked --bin meshcache \
    && install -D -m 0755 target/release/meshcache /out/meshcache

# The binary links only glibc (rustls with ring: no OpenSSL; jemalloc is
# built in), and the mesh trusts its own CA from the certificate directory,
# so the runtime needs no ca-certificates. Debian slim rather than
# distroless: a shell, `cat` and `sha256sum` help to check, inside a pod,
# that an updated Secret has reached its files before a reload.
FROM debian:bookworm-slim
RUN groupadd --system --gid 10001 meshcache \
    && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/meshcache --no-create-home \
       --shell /usr/sbin/nologin meshcache \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/meshcache
COPY --from=build /out/meshcache /usr/local/bin/meshcache

# Defaults for a container. The mesh listens on every interface, so each
# node must also be given MESHCACHE_ADVERTISE (the address its peers dial)
# and MESHCACHE_NAME (its name, the one in its certificate). The Redis
# protocol is served on every interface: set MESHCACHE_REQUIREPASS. The
# admin port stays on loopback (it has no authentication): use it with
# `docker exec` / `kubectl exec ... meshcache status`. Certificates are
# read from /etc/meshcache/certs: mount ca.crt, NAME.crt and NAME.key
# there (made by `meshcache certs init` and `meshcache certs issue NAME`).
# Logs go to stderr at RUST_LOG's level (default info).
ENV MESHCACHE_LISTEN=0.0.0.0:7946 \
    MESHCACHE_RESP=0.0.0.0:6379 \
    MESHCACHE_METRICS=0.0.0.0:9090 \
    MESHCACHE_ADMIN=127.0.0.1:7947 \
    MESHCACHE_CERTS=/etc/meshcache/certs

# QUIC between peers; Redis protocol for clients; HTTP for /metrics,
# /healthz and /readyz.
EXPOSE 7946/udp 6379/tcp 9090/tcp

USER 10001:10001
WORKDIR /var/lib/meshcache
# SIGTERM drains (Redis clients, then the peers' pushes, each bounded by
# MESHCACHE_DRAIN_TIMEOUT_MS, default 10 s) and exits 0: give `docker stop`
# a timeout of at least twice that plus 5 s (`docker stop -t 30`).
STOPSIGNAL SIGTERM
ENTRYPOINT ["meshcache", "node"]
