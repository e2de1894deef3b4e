# valero-db: multi-stage build, small non-root runtime image.
#   docker build -f docker/valero-db.Dockerfile -t valero-db:0.1.0 .
# Per release, bake the configuration and migrations into a thin image:
#   FROM valero-db:0.1.0
#   COPY valero-db.toml /work/valero-db.toml
#   COPY migrations /work/migrations
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked && strip target/release/valero-db

FROM debian:bookworm-slim
# pg_dump generates the schema DDL of snapshots; it must be at least as new
# as the PostgreSQL server. PostgreSQL 18's client (from the PostgreSQL
# project's apt repository, set up by Debian's postgresql-common script)
# serves every supported server, 14 to 18. curl: the post-deploy hook's
# --verify in deploy/kubernetes/jobs.yaml (every executable an asset calls
# is installed here; tests/delivery.rs checks it).
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl postgresql-common zstd \
 && /usr/share/postgresql-common/pgdg/apt.postgresql.org.sh -y \
 && apt-get install -y --no-install-recommends postgresql-client-18 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --create-home --home-dir /home/valero valero
COPY --from=build /src/target/release/valero-db /usr/local/bin/valero-db
ENV VALERO_DB_PG_DUMP=/usr/lib/postgresql/18/bin/pg_dump
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["valero-db"]
CMD ["--help"]
