//! TLS to the databases through their URLs, against real TLS servers from
//! `scripts/services.sh`: a PostgreSQL cluster that rejects unencrypted
//! connections (`hostnossl ... reject`) and a TLS front for the
//! MongoDB-protocol server, both with a throwaway CA.

use crate::common;

use common::{env_or_fail, Project};

fn pg_tls_url() -> String {
    env_or_fail("VALERO_PG_TLS_URL")
}

fn psql_tls(sql: &str) -> String {
    common::psql_at(&pg_tls_url(), sql)
}

/// A project whose service reaches both databases over TLS only.
fn tls_project(tag: &str, pg_url: &str) -> Project {
    let p = Project::new(tag);
    p.write_raw_config(&format!(
        r#"[environments.dev]
storage = "file://backups"

[services.svc]
postgres = {{ url = "{pg_url}", schema = "{schema}" }}
mongodb = {{ url = "${{VALERO_MONGO_TLS_URL}}", database = "{db}" }}
"#,
        schema = p.schema,
        db = p.mongo_db,
    ));
    p
}

#[test]
fn migrate_snapshot_and_restore_work_over_verified_tls() {
    let p = tls_project("tls", "${VALERO_PG_TLS_URL}");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY, v text);\nINSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 100) g;\n",
    );
    p.migration(
        "mongodb",
        "0001_people.up.json",
        r#"[{"create": "people"}, {"insert": "people", "documents": [{"_id": 1, "n": "a"}]}]"#,
    );
    // Both engines, the pre-migrate snapshot included (pg_dump over TLS too).
    p.run(&["migrate"]).ok();
    p.run(&["status", "--check"]).ok();
    let snap = p.run(&["snapshot", "--output", "json"]).json();
    let id = snap["snapshots"][0]["id"].as_str().unwrap().to_string();
    psql_tls(&format!("DELETE FROM \"{}\".t WHERE id > 50", p.schema));
    p.migration(
        "mongodb",
        "0002_more.up.json",
        r#"[{"insert": "people", "documents": [{"_id": 2, "n": "b"}]}]"#,
    );
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    std::fs::remove_file(p.path().join("migrations/svc/mongodb/0002_more.up.json")).unwrap();
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(
        psql_tls(&format!("SELECT count(*) FROM \"{}\".t", p.schema)),
        "100"
    );
    // The MongoDB side came back over TLS too: one person, version 1.
    let status = p.run(&["status", "--output", "json"]).json();
    let mongo = common::engine_entry(&status, "mongodb");
    assert_eq!(mongo["current_version"], 1, "{status}");
    psql_tls(&format!("DROP SCHEMA \"{}\" CASCADE", p.schema));
}

#[test]
fn a_server_that_requires_tls_refuses_a_plain_url_with_exit_3() {
    let plain = pg_tls_url().split('?').next().unwrap().to_string() + "?sslmode=disable";
    let p = tls_project("tls_plain", &plain);
    p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (id int);\n");
    p.run(&["status"])
        .expect_code(3)
        .stderr_has("no encryption");
}

#[test]
fn a_certificate_from_an_unknown_ca_is_refused_with_exit_3() {
    // verify-full without our CA: the system roots do not know it.
    let untrusted = pg_tls_url().split('?').next().unwrap().to_string() + "?sslmode=verify-full";
    let p = tls_project("tls_ca", &untrusted);
    p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (id int);\n");
    p.run(&["status"]).expect_code(3).stderr_has("certificate");
}

/// The MongoDB TLS front's URL with its query replaced.
fn mongo_tls_url_with(query: &str) -> String {
    let url = env_or_fail("VALERO_MONGO_TLS_URL");
    format!("{}?{query}", url.split('?').next().unwrap())
}

fn mongo_tls_project(tag: &str, mongo_url: &str) -> Project {
    let p = Project::new(tag);
    p.write_raw_config(&format!(
        "[environments.dev]\nstorage = \"file://backups\"\n\n[services.svc]\nmongodb = {{ url = \"{mongo_url}\", database = \"{db}\" }}\n",
        db = p.mongo_db,
    ));
    p
}

#[test]
fn a_mongodb_server_that_requires_tls_refuses_a_plain_url_with_exit_3() {
    let p = mongo_tls_project(
        "tls_m_plain",
        &mongo_tls_url_with("directConnection=true&serverSelectionTimeoutMS=3000"),
    );
    p.run(&["status"]).expect_code(3).stderr_has("unreachable");
}

#[test]
fn a_mongodb_certificate_from_an_unknown_ca_is_refused_with_exit_3() {
    let p = mongo_tls_project(
        "tls_m_ca",
        &mongo_tls_url_with("directConnection=true&tls=true&serverSelectionTimeoutMS=3000"),
    );
    p.run(&["status"]).expect_code(3).stderr_has("unreachable");
}
