#!/usr/bin/env bash
# Restores the PostgreSQL part of a valero-db snapshot with only bash, zstd
# and psql — for the day valero-db is not at hand. One transaction: on any
# error nothing changes. See docs/manual-restore.md.
#
#   docs/manual-restore-postgres.sh SNAPSHOT_FOLDER SCHEMA DATABASE_URL
set -euo pipefail
snap="$1"; schema="$2"; url="$3"
qschema="\"${schema//\"/\"\"}\""
# A newer pg_dump writes settings an older server lacks (pg_dump 18:
# `SET transaction_timeout`); such lines are left out.
known="$(psql "$url" -X -At -c "SELECT name FROM pg_settings")"
fit() {
  awk -v known="$known" 'BEGIN { n = split(known, a, "\n"); for (i = 1; i <= n; i++) k[a[i]] = 1 }
    /^SET [a-z_]+ = .*;$/ && !($2 in k) { next } { print }'
}
{
  echo "DROP SCHEMA IF EXISTS $qschema CASCADE;"
  zstd -dc "$snap/postgres/pre-data.sql.zst" | fit
  for f in "$snap"/postgres/data/*.copy.zst; do
    [ -e "$f" ] || continue
    t="$(basename "$f" .copy.zst)"; t="${t#*-}"   # 00003-name.copy.zst -> name
    t="$(printf '%b' "$(sed 's/+\([0-9A-F][0-9A-F]\)/\\x\1/g' <<<"$t")")"   # +XX -> byte XX
    echo "COPY $qschema.\"${t//\"/\"\"}\" FROM STDIN;"
    zstd -dc "$f"
    echo '\.'
  done
  zstd -dc "$snap/postgres/sequences.sql.zst"
  zstd -dc "$snap/postgres/post-data.sql.zst" | fit
  cat <<SQL
DO \$\$ DECLARE v regclass; BEGIN
  FOR v IN SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = '${schema//\'/\'\'}' AND c.relkind = 'm' ORDER BY c.oid LOOP
    EXECUTE 'REFRESH MATERIALIZED VIEW ' || v;
  END LOOP; END \$\$;
SQL
} | psql "$url" --single-transaction -v ON_ERROR_STOP=1 -X -q
