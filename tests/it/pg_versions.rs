//! What differs between the supported PostgreSQL versions (14 to 18): the
//! features each version added survive a snapshot and restore, a snapshot
//! moves to a newer server but not to an older one, pg_dump must be at least
//! the server's version, and capture says plainly where it is not
//! available. `.ci/run` runs this file (with the other PostgreSQL end-to-end
//! tests) against every supported version: `VALERO_PG_VERSION=17
//! scripts/services.sh run cargo test --test it pg_versions::`.

use crate::common;

use common::oracle::{data_fingerprint, schema_dump};
use common::{psql, Project};

/// The main test server's major version.
fn server_major() -> u32 {
    psql("SELECT current_setting('server_version_num')::int / 10000")
        .parse()
        .unwrap()
}

/// A project with one PostgreSQL-only service whose URL comes from
/// `$SVC_PG_URL`, so one project can be pointed at two servers.
fn two_server_project(tag: &str) -> Project {
    let p = Project::new(tag);
    p.write_postgres_only_config("${SVC_PG_URL}");
    p
}

/// Features up to the server's version: each is created only where the
/// server has it.
fn version_features(major: u32) -> String {
    let mut sql = String::from(
        "CREATE TABLE base (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text NOT NULL, n numeric);\n\
         INSERT INTO base (v, n) SELECT 'v' || g, g / 3.0 FROM generate_series(1, 50) g;\n\
         CREATE FUNCTION bump(x int) RETURNS int LANGUAGE sql IMMUTABLE BEGIN ATOMIC SELECT x + 1; END;\n",
    );
    if major >= 15 {
        // 15: MERGE, NULLS NOT DISTINCT.
        sql.push_str(
            "CREATE TABLE uniq (k int, UNIQUE NULLS NOT DISTINCT (k));\nINSERT INTO uniq VALUES (NULL), (1);\n",
        );
    }
    if major >= 16 {
        sql.push_str("CREATE TABLE j (doc jsonb CHECK (doc IS JSON OBJECT));\nINSERT INTO j VALUES ('{\"a\": 1}');\n");
    }
    if major >= 17 {
        // 17: identity columns on partitioned tables; MERGE ... RETURNING.
        sql.push_str(
            "CREATE TABLE parted (id int GENERATED ALWAYS AS IDENTITY, at date NOT NULL) PARTITION BY RANGE (at);\n\
             CREATE TABLE parted_2025 PARTITION OF parted FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');\n\
             INSERT INTO parted (at) VALUES ('2025-06-19'), ('2025-06-20');\n\
             CREATE FUNCTION upsert(k int) RETURNS SETOF text LANGUAGE sql AS $$ \
               MERGE INTO uniq u USING (SELECT k) s ON u.k = s.k WHEN NOT MATCHED THEN INSERT VALUES (s.k) RETURNING merge_action() $$;\n",
        );
    }
    if major >= 18 {
        // 18: virtual generated columns, NOT NULL NOT VALID, temporal keys.
        sql.push_str(
            "CREATE TABLE gen (a int, twice int GENERATED ALWAYS AS (a * 2) VIRTUAL);\nINSERT INTO gen (a) VALUES (1), (2);\n\
             CREATE TABLE loose (x int);\nINSERT INTO loose VALUES (NULL);\nALTER TABLE loose ADD CONSTRAINT x_nn NOT NULL x NOT VALID;\n\
             CREATE EXTENSION IF NOT EXISTS btree_gist SCHEMA public;\n\
             CREATE TABLE booking (room int, during daterange, PRIMARY KEY (room, during WITHOUT OVERLAPS));\n\
             INSERT INTO booking VALUES (1, '[2025-06-19,2025-06-21)');\n",
        );
    }
    sql
}

#[test]
fn what_this_version_added_survives_a_snapshot_and_restore() {
    let major = server_major();
    let p = Project::new("v_features");
    p.migration("postgres", "0001_features.up.sql", &version_features(major));
    let id = p.migrate_and_snapshot();
    let catalog = schema_dump(&p.schema);
    let data = data_fingerprint(&p.schema);
    psql(&format!(
        "SET search_path TO \"{}\"; DELETE FROM base WHERE id > 10; DROP FUNCTION bump(int);",
        p.schema
    ));
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(
        schema_dump(&p.schema),
        catalog,
        "PostgreSQL {major}: catalog"
    );
    assert_eq!(
        data_fingerprint(&p.schema),
        data,
        "PostgreSQL {major}: data"
    );
    // The identity goes on where it was.
    let next = psql(&format!(
        "INSERT INTO \"{}\".base (v) VALUES ('next') RETURNING id",
        p.schema
    ));
    assert_eq!(next.lines().next(), Some("51"), "{next}");
    // The manifest records the pg_dump that read the DDL.
    let list = p.run(&["snapshots", "list", "--output", "json"]).json();
    assert!(list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == id.as_str()));
    let manifest =
        std::fs::read_to_string(p.path().join(format!("backups/dev/svc/{id}/manifest.json")))
            .unwrap();
    assert!(manifest.contains("\"pg_dump_version\""), "{manifest}");
}

/// The second server of the test services: PostgreSQL 15, TLS only.
fn fifteen_url() -> String {
    common::env_or_fail("VALERO_PG_TLS_URL")
}

#[test]
fn a_snapshot_moves_to_a_newer_server_and_is_refused_by_an_older_one() {
    let major = server_major();
    let p = two_server_project("v_cross");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY, v text);\nINSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;\n",
    );
    // Taken on PostgreSQL 15 (with Debian's pg_dump 15: the PyPI build of
    // 18's client tools has no TLS, and that server accepts TLS only) ...
    let on_15 = |args: &[&str]| {
        let env = [
            ("SVC_PG_URL", fifteen_url()),
            (
                "VALERO_DB_PG_DUMP",
                "/usr/lib/postgresql/15/bin/pg_dump".to_string(),
            ),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        p.run_with_env(&env, args)
    };
    on_15(&["migrate", "--no-snapshot", "--yes"]).ok();
    let snap = on_15(&["snapshot", "--output", "json"]);
    snap.ok();
    let id = snap.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    // ... restored into this version's server.
    let here = common::pg_url();
    let restore = p.run_with_env(
        &[("SVC_PG_URL", &here)],
        &["restore", "--snapshot", &id, "--yes"],
    );
    if major >= 15 {
        restore.ok();
        assert_eq!(
            psql(&format!("SELECT count(*) FROM \"{}\".t", p.schema)),
            "100"
        );
        p.run_with_env(&[("SVC_PG_URL", &here)], &["status", "--check"])
            .ok();
    } else {
        restore
            .expect_code(2)
            .stderr_has("taken on PostgreSQL 15")
            .stderr_has(&format!("runs {major}"));
        assert_eq!(
            psql(&format!(
                "SELECT count(*) FROM pg_namespace WHERE nspname = '{}'",
                p.schema
            )),
            "0",
            "nothing was changed"
        );
    }
    common::psql_at(
        &fifteen_url(),
        &format!("DROP SCHEMA \"{}\" CASCADE", p.schema),
    );
}

#[test]
fn a_pg_dump_older_than_the_server_is_refused_naming_both_versions() {
    let major = server_major();
    let old = std::path::Path::new("/usr/lib/postgresql/15/bin/pg_dump");
    if major <= 15 || !old.exists() {
        // Debian's pg_dump 15 is not older than this server.
        return;
    }
    let p = Project::new("v_old_dump");
    p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (v int);\n");
    let old = old.display().to_string();
    p.run_with_env(&[("VALERO_DB_PG_DUMP", &old)], &["migrate"])
        .expect_code(2)
        .stderr_has("version 15.")
        .stderr_has(&format!("PostgreSQL {major}"));
    assert_eq!(
        psql(&format!("SELECT to_regclass('\"{}\".t') IS NULL", p.schema)),
        "t",
        "no migration was applied"
    );
    assert!(
        !p.path().join("backups/dev/svc").exists()
            || std::fs::read_dir(p.path().join("backups/dev/svc"))
                .unwrap()
                .count()
                == 0,
        "nothing was stored"
    );
}

/// With continuous capture a migration's way back is a restore point, which
/// needs no pg_dump — but the snapshots after the change do: an old
/// pg_dump is refused before the change, as without capture.
#[test]
fn an_old_pg_dump_is_refused_before_a_captured_migration_changes_anything() {
    let major = server_major();
    let old = std::path::Path::new("/usr/lib/postgresql/15/bin/pg_dump");
    if major <= 15 || !old.exists() {
        // Debian's pg_dump 15 is not older than this server.
        return;
    }
    let p = Project::new("v_old_dump_rp");
    p.write_postgres_only_config("${VALERO_PG_URL}");
    p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (v int);\n");
    p.migrate_now();
    p.run(&["capture", "--once"]).ok();
    p.run(&["snapshot"]).ok();
    p.migration("postgres", "0002_u.up.sql", "CREATE TABLE u (v int);\n");
    let old = old.display().to_string();
    p.run_with_env(&[("VALERO_DB_PG_DUMP", &old)], &["migrate"])
        .expect_code(2)
        .stderr_has("version 15.")
        .stderr_has(&format!("PostgreSQL {major}"));
    assert_eq!(
        psql(&format!("SELECT to_regclass('\"{}\".u') IS NULL", p.schema)),
        "t",
        "the migration was not applied"
    );
    let _ = p.run(&["capture", "--drop", "--yes"]);
}

#[test]
fn capture_says_where_it_is_not_available() {
    let major = server_major();
    let p = Project::new("v_capture");
    p.write_postgres_only_config("${VALERO_PG_URL}");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY, v text);\n",
    );
    p.migrate_now();
    let run = p.run(&["capture", "--once"]);
    if major >= 15 {
        run.ok();
        p.run(&["capture", "--drop", "--yes"]).ok();
    } else {
        run.expect_code(2)
            .stderr_has("needs PostgreSQL 15 or newer")
            .stderr_has("runs 14");
    }
}
