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
# Table objects hold COPY text regrouped column by column (docs/snapshot-
# format.md, "Column blocks"): a line "<rows> <columns>", then the values of
# the first column, one per line, then the next column's. Back to rows:
columns_to_rows() {
  LC_ALL=C awk 'need == 0 { rows = $1; cols = $2; need = rows * cols; n = 0; next }
    { v[n++] = $0 }
    n == need { for (r = 0; r < rows; r++) { line = v[r]
                  for (c = 1; c < cols; c++) line = line "\t" v[c * rows + r]
                  print line }
                need = 0; split("", v) }'
}
# What the manifest records beside pg_dump's DDL, read with psql's own JSON
# functions: the extensions that live in the schema (created right after the
# schema, at their version), the materialized views the snapshot had
# without data (left so), and the schema's ACL (pg_dump leaves out what
# matches initdb's ACL of `public`).
manifest_sql() {
  psql "$url" -X -At -v m="$(cat "$snap/manifest.json")" -v s="$schema" <<SQL
WITH pos AS (SELECT e -> 'position' AS p FROM json_array_elements((:'m')::json -> 'engines') e
             WHERE e ->> 'engine' = 'postgres')
$1
SQL
}
extensions="$(manifest_sql "SELECT format('CREATE EXTENSION IF NOT EXISTS %I WITH SCHEMA %I VERSION %L;', x ->> 'name', :'s', x ->> 'version')
  FROM pos, json_array_elements(coalesce(p -> 'extensions', '[]')) x;")"
unpopulated="$(manifest_sql "SELECT coalesce(string_agg(quote_literal(v), ','), '''''')
  FROM pos, json_array_elements_text(coalesce(p -> 'unpopulated_views', '[]')) v;")"
schema_acl="$(manifest_sql "SELECT format('REVOKE ALL ON SCHEMA %I FROM PUBLIC;', :'s') WHERE (SELECT json_typeof(p -> 'schema_acl') = 'array' FROM pos)
  UNION ALL SELECT format('GRANT %s ON SCHEMA %I TO %s%s;', g ->> 'privilege', :'s',
    CASE WHEN g ->> 'grantee' = 'PUBLIC' THEN 'PUBLIC' ELSE quote_ident(g ->> 'grantee') END,
    CASE WHEN (g ->> 'grantable')::bool THEN ' WITH GRANT OPTION' ELSE '' END)
  FROM pos, json_array_elements(CASE WHEN json_typeof(p -> 'schema_acl') = 'array' THEN p -> 'schema_acl' ELSE '[]' END) g;")"
{
  echo "DROP SCHEMA IF EXISTS $qschema CASCADE;"
  zstd -dc "$snap/postgres/pre-data.sql.zst" | fit |
    awk -v ext="$extensions" '{ print } !done && /^CREATE SCHEMA .*;$/ { if (ext != "") print ext; done = 1 }'
  echo "$schema_acl"
  for f in "$snap"/postgres/data/*.zst; do
    [ -e "$f" ] || continue
    t="$(basename "$f")"; t="${t%.*.zst}"; t="${t#*-}"   # 00003-name.columns.zst -> name
    t="$(printf '%b' "$(sed 's/+\([0-9A-F][0-9A-F]\)/\\x\1/g' <<<"$t")")"   # +XX -> byte XX
    echo "COPY $qschema.\"${t//\"/\"\"}\" FROM STDIN;"
    case "$f" in
      *.columns.zst) zstd -dc "$f" | columns_to_rows ;;
      *) zstd -dc "$f" ;;   # format 1: COPY text as is
    esac
    echo '\.'
  done
  zstd -dc "$snap/postgres/sequences.sql.zst"
  zstd -dc "$snap/postgres/post-data.sql.zst" | fit
  cat <<SQL
DO \$\$ DECLARE v regclass; BEGIN
  FOR v IN SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = '${schema//\'/\'\'}' AND c.relkind = 'm'
             AND c.relname NOT IN ($unpopulated) ORDER BY c.oid LOOP
    EXECUTE 'REFRESH MATERIALIZED VIEW ' || v;
  END LOOP; END \$\$;
SQL
} | psql "$url" --single-transaction -v ON_ERROR_STOP=1 -X -q
