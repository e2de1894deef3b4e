//! `migrate`, `rollback`, `baseline`, `repair` and `status` against the real
//! PostgreSQL server started by scripts/services.sh.

use crate::common;

use common::{psql, Project};

const CREATE_A: &str =
    "CREATE TABLE a (id int PRIMARY KEY, name text);\nINSERT INTO a VALUES (1, 'x');\n";
const CREATE_B: &str = "CREATE TABLE b (id int PRIMARY KEY REFERENCES a);\n";

fn two_migrations(p: &Project) {
    p.migration("postgres", "0001_create_a.up.sql", CREATE_A);
    p.migration("postgres", "0001_create_a.down.sql", "DROP TABLE a;\n");
    p.migration("postgres", "0002_create_b.up.sql", CREATE_B);
    p.migration("postgres", "0002_create_b.down.sql", "DROP TABLE b;\n");
}

fn versions(p: &Project) -> String {
    psql(&format!(
        "SELECT string_agg(version::text || ':' || state, ',' ORDER BY version) FROM \"{}\".valero_schema_history",
        p.schema
    ))
}

fn table_exists(p: &Project, table: &str) -> bool {
    psql(&format!(
        "SELECT to_regclass('\"{}\".{table}') IS NOT NULL",
        p.schema
    )) == "t"
}

#[test]
fn migrate_applies_in_order_and_rerun_is_a_no_op() {
    let p = Project::new("apply");
    two_migrations(&p);
    let run = p.run(&["migrate", "--no-snapshot", "--yes", "--release", "v1.0.0"]);
    run.ok();
    assert!(
        run.stdout.contains("0002_create_b.up.sql"),
        "{}",
        run.stdout
    );
    assert_eq!(versions(&p), "1:applied,2:applied");
    assert_eq!(
        psql(&format!(
            "SELECT DISTINCT release FROM \"{}\".valero_schema_history",
            p.schema
        )),
        "v1.0.0"
    );
    let again = p.run(&["migrate", "--no-snapshot", "--yes", "--output", "json"]);
    again.ok();
    let doc = again.json();
    let pg = common::engine_entry(&doc, "postgres");
    assert_eq!(pg["planned"].as_array().unwrap().len(), 0);
    assert_eq!(pg["from_version"], 2);
    assert_eq!(versions(&p), "1:applied,2:applied");
}

#[test]
fn migrate_to_stops_at_the_version() {
    let p = Project::new("to");
    two_migrations(&p);
    p.run(&["migrate", "--no-snapshot", "--yes", "--to", "1"])
        .ok();
    assert_eq!(versions(&p), "1:applied");
    p.run(&["migrate", "--no-snapshot", "--yes", "--to", "7"])
        .expect_code(2);
}

#[test]
fn crlf_only_change_is_not_drift() {
    let p = Project::new("crlf");
    two_migrations(&p);
    p.migrate_now();
    p.migration(
        "postgres",
        "0001_create_a.up.sql",
        &format!("\u{feff}{}", CREATE_A.replace('\n', "\r\n")),
    );
    p.run(&["status", "--check"]).ok();
    p.migrate_now();
}

#[test]
fn edited_applied_file_is_drift_exit_5_naming_file_and_checksums() {
    let p = Project::new("drift");
    two_migrations(&p);
    p.migrate_now();
    p.migration(
        "postgres",
        "0001_create_a.up.sql",
        "CREATE TABLE a (id bigint);\n",
    );
    p.migration("postgres", "0003_c.up.sql", "CREATE TABLE c (id int);\n");
    let run = p.run(&["migrate", "--no-snapshot", "--yes"]);
    run.expect_code(5)
        .stderr_has("0001_create_a.up.sql")
        .stderr_has("drift")
        .stderr_has("hint:");
    let applied = psql(&format!(
        "SELECT checksum FROM \"{}\".valero_schema_history WHERE version = 1",
        p.schema
    ));
    assert!(
        run.stderr.contains(&applied),
        "the applied checksum is named: {}",
        run.stderr
    );
    let on_disk = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(b"CREATE TABLE a (id bigint);\n"))
    };
    assert_ne!(on_disk, applied);
    assert!(
        run.stderr.contains(&on_disk),
        "the file's checksum is named too: {}",
        run.stderr
    );
    assert!(
        !table_exists(&p, "c"),
        "nothing is applied when drift is found"
    );
    p.run(&["status", "--check"]).expect_code(9);
}

#[test]
fn failing_migration_rolls_back_ddl_and_history_exit_6() {
    let p = Project::new("fail");
    p.migration("postgres", "0001_ok.up.sql", CREATE_A);
    p.migration(
        "postgres",
        "0002_broken.up.sql",
        "CREATE TABLE half (id int);\nINSERT INTO a VALUES (2, 'y');\nSELECT * FROM no_such_table;\n",
    );
    let run = p.run(&["migrate", "--no-snapshot", "--yes"]);
    run.expect_code(6)
        .stderr_has("0002_broken.up.sql")
        .stderr_has("no_such_table");
    assert!(run.stderr.contains("rolled back"), "{}", run.stderr);
    assert_eq!(versions(&p), "1:applied");
    assert!(!table_exists(&p, "half"));
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{}\".a", p.schema)),
        "1"
    );
}

#[test]
fn no_transaction_failure_marks_dirty_until_repaired() {
    let p = Project::new("dirty");
    p.migration("postgres", "0001_a.up.sql", CREATE_A);
    p.migration(
        "postgres",
        "0002_idx.up.sql",
        "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY a_name_idx ON a (name);\nCREATE INDEX CONCURRENTLY broken_idx ON a (nope);\n",
    );
    let run = p.run(&["migrate", "--no-snapshot", "--yes"]);
    run.expect_code(6)
        .stderr_has("dirty")
        .stderr_has("valero-db repair");
    assert_eq!(versions(&p), "1:applied,2:dirty");
    // The first statement really ran outside a transaction.
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_indexes WHERE schemaname = '{}' AND indexname = 'a_name_idx'",
            p.schema
        )),
        "1"
    );
    let again = p.run(&["migrate", "--no-snapshot", "--yes"]);
    again
        .expect_code(6)
        .stderr_has("is dirty")
        .stderr_has("repair");
    p.run(&["status", "--check"]).expect_code(9);
    // The operator fixes the file and marks the version pending again.
    psql(&format!("DROP INDEX \"{}\".a_name_idx", p.schema));
    p.migration(
        "postgres",
        "0002_idx.up.sql",
        "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY a_name_idx ON a (name);\n",
    );
    p.run(&[
        "repair",
        "-s",
        "svc",
        "--engine",
        "postgres",
        "--version",
        "2",
        "--as",
        "pending",
    ])
    .ok();
    p.migrate_now();
    assert_eq!(versions(&p), "1:applied,2:applied");
}

#[test]
fn rollback_runs_down_files_newest_first() {
    let p = Project::new("down");
    two_migrations(&p);
    p.migrate_now();
    let run = p.run(&["rollback", "--to", "0", "--yes"]);
    run.ok();
    assert!(!table_exists(&p, "a") && !table_exists(&p, "b"));
    assert_eq!(versions(&p), "");
    p.migrate_now();
    assert_eq!(versions(&p), "1:applied,2:applied");
}

#[test]
fn rollback_refuses_before_changing_anything_when_a_down_file_is_missing() {
    let p = Project::new("nodown");
    p.migration("postgres", "0001_a.up.sql", CREATE_A);
    p.migration("postgres", "0002_b.up.sql", CREATE_B);
    p.migration("postgres", "0003_c.up.sql", "CREATE TABLE c (id int);\n");
    p.migration("postgres", "0003_c.down.sql", "DROP TABLE c;\n");
    p.migrate_now();
    let run = p.run(&["rollback", "--to", "1", "--yes"]);
    run.expect_code(2)
        .stderr_has("no down file for version(s) 2");
    assert_eq!(versions(&p), "1:applied,2:applied,3:applied");
    assert!(table_exists(&p, "c"));
}

#[test]
fn rollback_takes_a_verified_pre_rollback_snapshot_that_undoes_it() {
    let p = Project::new("prerb");
    two_migrations(&p);
    p.migrate_now();
    psql(&format!("INSERT INTO \"{}\".b VALUES (1)", p.schema));
    let run = p.run(&["rollback", "--to", "1", "--yes", "--output", "json"]);
    run.ok();
    let doc = run.json();
    assert_eq!(doc["snapshots"][0]["reason"], "pre-rollback");
    let id = doc["snapshots"][0]["id"].as_str().unwrap().to_string();
    assert!(!table_exists(&p, "b"));
    assert_eq!(versions(&p), "1:applied");
    // What the down migration dropped is in that snapshot.
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(versions(&p), "1:applied,2:applied");
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{}\".b", p.schema)),
        "1"
    );
}

#[test]
fn rollback_without_usable_storage_changes_nothing_unless_told_no_snapshot() {
    let p = Project::new("rbnostore");
    two_migrations(&p);
    p.migrate_now();
    p.run(&["-e", "deads3", "rollback", "--to", "1", "--yes"])
        .expect_code(3);
    assert_eq!(versions(&p), "1:applied,2:applied");
    p.run(&[
        "-e",
        "deads3",
        "rollback",
        "--to",
        "1",
        "--no-snapshot",
        "--yes",
    ])
    .ok();
    assert_eq!(versions(&p), "1:applied");
}

#[test]
fn rollback_needs_yes_without_a_terminal_and_in_protected_envs() {
    let p = Project::new("confirm");
    two_migrations(&p);
    p.migrate_now();
    // The plan is shown with the refusal, so the operator sees what --yes does.
    p.run(&["rollback", "--to", "1"])
        .expect_code(2)
        .stderr_has("--yes")
        .stdout_has("would revert 1 migration(s), 2 -> 1");
    p.run(&["-e", "prod", "rollback", "--to", "1"])
        .expect_code(2)
        .stderr_has("protected");
    p.run(&["-e", "prod", "migrate", "--no-snapshot"])
        .expect_code(2)
        .stderr_has("protected");
    p.run(&["migrate", "--no-snapshot"])
        .expect_code(2)
        .stderr_has("--yes");
    assert_eq!(versions(&p), "1:applied,2:applied");
}

#[test]
fn dry_run_changes_nothing() {
    let p = Project::new("dry");
    two_migrations(&p);
    let run = p.run(&["migrate", "--dry-run"]);
    run.ok();
    assert!(run.stdout.contains("would apply 2"), "{}", run.stdout);
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname = '{}'",
            p.schema
        )),
        "0",
        "not even the schema is created"
    );
}

#[test]
fn a_release_deployed_before_valero_db_is_recorded_by_baseline_and_rolled_back_to() {
    let p = Project::new("blrel");
    two_migrations(&p);
    // v0.9.0 went live at version 1, before valero-db recorded releases.
    p.run(&["migrate", "--no-snapshot", "--yes", "--to", "1"])
        .ok();
    p.run(&["rollback", "--release", "v0.9.0", "--yes"])
        .expect_code(2)
        .stderr_has("baseline --release v0.9.0");
    p.run(&["baseline", "--release", "v0.9.0"])
        .ok()
        .stdout_has("recorded release v0.9.0");
    p.migrate_now();
    assert_eq!(versions(&p), "1:applied,2:applied");
    p.run(&["rollback", "--release", "v0.9.0", "--yes"]).ok();
    assert_eq!(versions(&p), "1:applied");
}

#[test]
fn baseline_adopts_an_existing_schema() {
    let p = Project::new("baseline");
    two_migrations(&p);
    psql(&format!(
        "CREATE SCHEMA \"{s}\"; CREATE TABLE \"{s}\".a (id int PRIMARY KEY, name text)",
        s = p.schema
    ));
    p.run(&["baseline", "--version", "1", "--engine", "postgres"])
        .ok();
    assert_eq!(versions(&p), "1:applied");
    p.migrate_now();
    assert_eq!(versions(&p), "1:applied,2:applied");
    p.run(&["baseline", "--version", "1", "--engine", "postgres"])
        .expect_code(2)
        .stderr_has("already has a migration history");
}

#[test]
fn concurrent_migrate_applies_once_and_the_second_exits_4_naming_the_holder() {
    let p = Project::new("lock");
    p.migration(
        "postgres",
        "0001_slow.up.sql",
        "CREATE TABLE slow (id int);\nINSERT INTO slow VALUES (1);\nSELECT pg_sleep(4);\n",
    );
    let mut first = p.spawn(&["migrate", "--no-snapshot", "--yes"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let second = p.run(&["migrate", "--no-snapshot", "--yes", "--lock-timeout", "1s"]);
    let first_status = first.wait().expect("first run");
    assert!(first_status.success());
    second
        .expect_code(4)
        .stderr_has("held by")
        .stderr_has("pid=");
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{}\".slow", p.schema)),
        "1"
    );
    assert_eq!(versions(&p), "1:applied");
}

#[test]
fn lock_of_one_service_does_not_block_another() {
    let p = Project::new("twolocks");
    let other = common::unique("t_other");
    p.write_config(&format!(
        "[services.other]\npostgres = {{ url = \"${{VALERO_PG_URL}}\", schema = \"{other}\" }}\n"
    ));
    p.migration("postgres", "0001_slow.up.sql", "SELECT pg_sleep(3);\n");
    p.migration_for(
        "other",
        "postgres",
        "0001_fast.up.sql",
        "CREATE TABLE t (id int);\n",
    );
    let mut first = p.spawn(&["-s", "svc", "migrate", "--no-snapshot", "--yes"]);
    std::thread::sleep(std::time::Duration::from_millis(1000));
    p.run(&[
        "-s",
        "other",
        "migrate",
        "--no-snapshot",
        "--yes",
        "--lock-timeout",
        "1s",
    ])
    .ok();
    assert!(first.wait().unwrap().success());
    psql(&format!("DROP SCHEMA \"{other}\" CASCADE"));
}
