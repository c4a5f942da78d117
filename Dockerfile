# kiln in a container: `docker build -t kiln .`, then
# `docker run -p 8080:8080 kiln` (the image serves deploy/kubernetes/deploy.toml:
# 0.0.0.0:8080, admin on the container's loopback, SQLite in /var/lib/kiln).
# Untested here (no container engine on the machine that wrote it).

# The builder's Debian matches the runtime's (bookworm), so the binary's
# glibc is there.
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin kiln

FROM debian:bookworm-slim
# uid 10001 is what deploy/kubernetes/kiln.yaml runs as.
RUN useradd --system --uid 10001 --user-group --home-dir /var/lib/kiln \
        --shell /usr/sbin/nologin kiln \
    && install -d -o kiln -g kiln -m 0750 /var/lib/kiln
COPY --from=build /src/target/release/kiln /usr/local/bin/kiln
COPY deploy/kubernetes/deploy.toml /etc/kiln/deploy.toml
USER 10001:10001
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kiln"]
CMD ["/etc/kiln/deploy.toml"]
