//! Restore points against the real servers: with the service under
//! capture, `migrate`, `rollback` and `deploy` flush the capture and record
//! a restore point instead of a full pre-change snapshot; a restore to it
//! is exact (pg_dump with privileges, per-table data, sequences; MongoDB
//! raw BSON); each reason for a full snapshot instead is named; kill -9
//! while taking one leaves none and applies no migration; prune keeps what
//! a kept restore point needs; the post-change snapshot of a deployment
//! waits for its success, and until then later restores are refused.

use crate::common;

use common::oracle::{data_fingerprint, mongo_state, schema_dump};
use common::{mongo, psql, Project};

fn sql(p: &Project, statement: &str) -> String {
    psql(&statement.replace("$S", &format!("\"{}\"", p.schema)))
}

/// A service with both engines at version 1, captured, with a snapshot
/// at version 1 and changes since (shipped and not yet shipped).
fn captured_service(tag: &str, config: fn(&Project)) -> Project {
    common::ensure_role("valero_app");
    let p = Project::new(tag);
    config(&p);
    p.migration(
        "postgres",
        "0001_ledger.up.sql",
        "CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL, balance numeric(12,2));\n\
         GRANT SELECT, INSERT ON accounts TO valero_app;\n\
         INSERT INTO accounts (name, balance) SELECT 'acct ' || g, g FROM generate_series(1, 100) g;\n",
    );
    p.migration(
        "mongodb",
        "0001_people.up.json",
        r#"[{"create": "people"}, {"insert": "people", "documents": [{"_id": 1, "name": "a", "tags": [1, 2]}, {"_id": 2, "name": "b"}]}]"#,
    );
    p.migrate_now();
    p.run(&["capture", "--once"]).ok();
    p.run(&["snapshot"]).ok();
    p
}

fn both(p: &Project) {
    p.write_config("");
}

fn postgres_only(p: &Project) {
    p.write_postgres_only_config("${VALERO_PG_URL}");
}

fn mongodb_only(p: &Project) {
    p.write_mongodb_only_config();
}

fn has_postgres(p: &Project) -> bool {
    std::fs::read_to_string(p.config_path())
        .unwrap()
        .contains("postgres =")
}

fn has_mongodb(p: &Project) -> bool {
    std::fs::read_to_string(p.config_path())
        .unwrap()
        .contains("mongodb =")
}

/// Changes to both engines; the last ones right before the caller's next
/// command, with no pause (a restore point holds them all).
async fn change(p: &Project, n: i64) {
    if has_postgres(p) {
        sql(
            p,
            &format!("UPDATE $S.accounts SET balance = balance + {n} WHERE id % 7 = 0"),
        );
        sql(p, &format!("INSERT INTO $S.accounts (name) SELECT 'new {n} ' || g FROM generate_series(1, 20) g"));
        sql(
            p,
            "DELETE FROM $S.accounts WHERE id = (SELECT min(id) FROM $S.accounts)",
        );
    }
    if has_mongodb(p) {
        let db = mongo(&p.mongo_db).await;
        let people = db.collection::<bson::Document>("people");
        people
            .insert_one(bson::doc! {"_id": 100 + n, "name": format!("n{n}"), "n": bson::Decimal128::from_bytes([1; 16])})
            .await
            .unwrap();
        people
            .update_one(bson::doc! {"_id": 1}, bson::doc! {"$push": {"tags": n}})
            .await
            .unwrap();
    }
}

/// The oracle state of the service: catalog with privileges, data and
/// sequences; MongoDB raw BSON.
async fn state(p: &Project) -> String {
    let mut out = String::new();
    if has_postgres(p) {
        out.push_str(&schema_dump(&p.schema));
        out.push_str(&data_fingerprint(&p.schema));
    }
    if has_mongodb(p) {
        out.push_str(&format!(
            "{:?}",
            mongo_state(&mongo(&p.mongo_db).await).await
        ));
    }
    out
}

/// Version 2 for every engine the service has.
fn second_migration(p: &Project) {
    p.migration(
        "postgres",
        "0002_currency.up.sql",
        "ALTER TABLE accounts ADD COLUMN currency text NOT NULL DEFAULT 'EUR';\nUPDATE accounts SET balance = balance * 2;\n",
    );
    p.migration(
        "postgres",
        "0002_currency.down.sql",
        "ALTER TABLE accounts DROP COLUMN currency;\n",
    );
    p.migration(
        "mongodb",
        "0002_rename.up.json",
        r#"[{"update": "people", "updates": [{"q": {}, "u": {"$set": {"v": 2}}, "multi": true}]}]"#,
    );
}

fn listing(p: &Project) -> serde_json::Value {
    let run = p.run(&["snapshots", "list", "--output", "json"]);
    run.ok();
    run.json()
}

fn reasons(p: &Project) -> Vec<String> {
    listing(p)["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["reason"].as_str().unwrap().to_string())
        .collect()
}

fn restore_points(p: &Project) -> Vec<serde_json::Value> {
    listing(p)["restore_points"].as_array().unwrap().clone()
}

/// A deploy whose verify fails, from a restore point: rolled back to
/// exactly the state before it, changes of the last moment included.
async fn failed_deploy_restores_exactly(p: &Project) {
    change(p, 1).await;
    p.run(&["capture", "--once"]).ok();
    change(p, 2).await;
    let before = state(p).await;
    second_migration(p);
    let run = p.run(&[
        "deploy",
        "--release",
        "v2",
        "--verify",
        "exit 3",
        "--output",
        "json",
        "--",
        "true",
    ]);
    run.expect_code(7).stderr_has("restore point");
    let points = restore_points(p);
    assert_eq!(points.len(), 1, "{points:?}");
    assert!(
        !reasons(p).iter().any(|r| r == "pre-migrate"),
        "a restore point instead of a full pre-migrate snapshot: {:?}",
        reasons(p)
    );
    let record = run.json();
    assert_eq!(record["state"], "rolled-back", "{record}");
    assert_eq!(
        state(p).await,
        before,
        "exactly the state before the deploy"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_deploy_restores_postgresql_exactly_from_its_restore_point() {
    let p = captured_service("rp_pg", postgres_only);
    failed_deploy_restores_exactly(&p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_deploy_restores_mongodb_exactly_from_its_restore_point() {
    let p = captured_service("rp_mongo", mongodb_only);
    failed_deploy_restores_exactly(&p).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_deploy_restores_a_service_with_both_engines_exactly_from_its_restore_point() {
    let p = captured_service("rp_both", both);
    failed_deploy_restores_exactly(&p).await;
}

/// `migrate`'s report: restore points taken and why not.
fn migrate_json(p: &Project, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["migrate", "--output", "json"];
    all.extend_from_slice(args);
    let run = p.run(&all);
    run.ok();
    run.json()
}

fn assert_full_snapshot_because(doc: &serde_json::Value, reason: &str) {
    assert_eq!(doc["restore_points"].as_array().unwrap().len(), 0, "{doc}");
    assert_eq!(doc["snapshots"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["no_restore_point"][0]["reason"], reason, "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_takes_a_restore_point_when_capture_is_healthy_and_restore_to_it_is_exact() {
    let p = captured_service("rp_migr", both);
    change(&p, 1).await;
    let before = state(&p).await;
    second_migration(&p);
    let doc = migrate_json(&p, &[]);
    assert_eq!(doc["restore_points"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(
        doc["no_restore_point"].as_array().unwrap().len(),
        0,
        "{doc}"
    );
    let id = doc["restore_points"][0]["id"].as_str().unwrap().to_string();
    // migrate alone takes the post-migrate snapshot right after the change.
    assert_eq!(reasons(&p), ["manual", "post-migrate"]);
    let at = restore_points(&p)[0]["at"].as_str().unwrap().to_string();
    // Captured after the point: the migration's own changes and later ones
    // are in the segments now, and stay out of the restore.
    change(&p, 2).await;
    p.run(&["capture", "--once"]).ok();
    p.run(&["restore", "--restore-point", &id, "--yes"]).ok();
    assert_eq!(
        state(&p).await,
        before,
        "--restore-point gives the state before the change"
    );
    change(&p, 3).await;
    p.run(&["restore", "--timestamp", &at, "--yes"]).ok();
    assert_eq!(
        state(&p).await,
        before,
        "--timestamp at the restore point's time is the same"
    );
    // The time as `snapshots list` prints it (microseconds), copied by an
    // operator, names the point too — stored at that precision.
    let listed = p.run(&["snapshots", "list"]);
    listed.ok();
    let printed = listed
        .stdout
        .lines()
        .find(|l| l.contains("(restore point)"))
        .and_then(|l| {
            l.split_whitespace()
                .find(|w| w.contains('T') && w.ends_with('Z'))
        })
        .unwrap_or_else(|| panic!("no restore point row: {}", listed.stdout))
        .to_string();
    assert_eq!(
        printed.len(),
        "2026-12-04T18:33:19.345123Z".len(),
        "{printed}"
    );
    let instant = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap();
    assert_eq!(instant(&printed), instant(&at), "stored as printed");
    change(&p, 4).await;
    p.run(&["capture", "--once"]).ok();
    p.run(&["restore", "--timestamp", &printed, "--yes"]).ok();
    assert_eq!(
        state(&p).await,
        before,
        "--timestamp at the printed time is the restore point"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_takes_a_full_snapshot_when_capture_was_never_set_up() {
    let p = Project::new("rp_never");
    p.write_postgres_only_config("${VALERO_PG_URL}");
    p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (v int);\n");
    p.migrate_now();
    p.run(&["snapshot"]).ok();
    second_migration(&p);
    p.migration(
        "postgres",
        "0002_currency.up.sql",
        "ALTER TABLE t ADD COLUMN w int;\n",
    );
    let doc = migrate_json(&p, &[]);
    assert_full_snapshot_because(&doc, "not_captured");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_takes_a_full_snapshot_when_a_captured_segment_is_missing() {
    let p = captured_service("rp_gap", postgres_only);
    change(&p, 1).await;
    p.run(&["capture", "--once"]).ok();
    change(&p, 2).await;
    p.run(&["capture", "--once"]).ok();
    let segments = p.capture_segments("postgres");
    assert!(segments.len() >= 2, "{segments:?}");
    std::fs::remove_dir_all(&segments[0]).unwrap();
    second_migration(&p);
    let doc = migrate_json(&p, &[]);
    assert_full_snapshot_because(&doc, "gap");
    assert!(
        doc["no_restore_point"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("gap")
            || doc["no_restore_point"][0]["detail"]
                .as_str()
                .unwrap()
                .contains("missing"),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_takes_a_full_snapshot_when_a_captured_segment_fails_its_read_back() {
    let p = captured_service("rp_corrupt", postgres_only);
    change(&p, 1).await;
    p.run(&["capture", "--once"]).ok();
    // Same size, one byte altered: only the sha256 can tell.
    let changes = p.capture_segments("postgres")[0].join("changes.zst");
    let mut bytes = std::fs::read(&changes).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&changes, bytes).unwrap();
    second_migration(&p);
    let doc = migrate_json(&p, &[]);
    assert_full_snapshot_because(&doc, "gap");
    let detail = doc["no_restore_point"][0]["detail"].as_str().unwrap();
    assert!(detail.contains("sha256"), "{doc}");
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_takes_a_full_snapshot_when_the_newest_snapshot_is_at_other_versions() {
    let p = captured_service("rp_vers", postgres_only);
    second_migration(&p);
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    p.migration(
        "postgres",
        "0003_more.up.sql",
        "ALTER TABLE accounts ADD COLUMN note text;\n",
    );
    let doc = migrate_json(&p, &[]);
    assert_full_snapshot_because(&doc, "other_versions");
    assert!(
        doc["no_restore_point"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("version 1"),
        "{doc}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn migrate_takes_a_full_snapshot_when_the_captured_changes_cannot_be_read() {
    let p = captured_service("rp_store", postgres_only);
    // The same environment behind a front that refuses every request for
    // captured changes and restore points: the rest of the storage works.
    let port = common::s3_front::refusing(common::s3_front::s3_port(), |line| {
        line.contains(".capture") || line.contains(".restore-points")
    });
    let config = |endpoint: &str| {
        format!(
            "[environments.dev]\nstorage = \"s3://${{VALERO_S3_BUCKET}}/{0}\"\ns3 = {{ endpoint = \"{endpoint}\", force_path_style = true, region = \"us-east-1\" }}\n\n[services.svc]\npostgres = {{ url = \"${{VALERO_PG_URL}}\", schema = \"{0}\" }}\n",
            p.schema
        )
    };
    p.write_raw_config(&config("${VALERO_S3_ENDPOINT}"));
    p.run(&["capture", "--once"]).ok();
    p.run(&["snapshot"]).ok();
    change(&p, 1).await;
    p.write_raw_config(&config(&format!("http://127.0.0.1:{port}")));
    second_migration(&p);
    let doc = migrate_json(&p, &[]);
    assert_full_snapshot_because(&doc, "failed");
    assert_ne!(
        sql(
            &p,
            "SELECT count(*) FROM $S.accounts WHERE currency = 'EUR'"
        ),
        "0",
        "the migration ran after the full snapshot"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_taking_a_restore_point_leaves_none_and_applies_no_migration() {
    let p = captured_service("rp_kill", postgres_only);
    // Enough changes that the flush reads for a while.
    sql(
        &p,
        "INSERT INTO $S.accounts (name) SELECT 'bulk ' || g FROM generate_series(1, 150000) g",
    );
    sql(&p, "UPDATE $S.accounts SET balance = 7");
    let before = state(&p).await;
    second_migration(&p);
    let mut child = p.spawn(&["migrate"]);
    let pid = child.id();
    common::wait_for_session(
        pid,
        "query LIKE '%pg_logical_slot_peek_binary_changes%' AND state = 'active'",
    );
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
    child.wait().unwrap();
    common::wait_for_no_session(pid);
    assert!(restore_points(&p).is_empty(), "no restore point is listed");
    assert_eq!(reasons(&p), ["manual"], "no snapshot either");
    assert_eq!(
        sql(&p, "SELECT count(*) FROM information_schema.columns WHERE table_schema = '$$' AND column_name = 'currency'".replace("$$", &p.schema).as_str()),
        "0",
        "no migration was applied"
    );
    assert_eq!(state(&p).await, before);
    // The next run takes its restore point and restores exactly from it.
    let doc = migrate_json(&p, &[]);
    assert_eq!(doc["restore_points"].as_array().unwrap().len(), 1, "{doc}");
    let id = doc["restore_points"][0]["id"].as_str().unwrap().to_string();
    p.run(&["restore", "--restore-point", &id, "--yes"]).ok();
    assert_eq!(state(&p).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn prune_keeps_the_snapshot_and_changes_a_kept_restore_point_needs() {
    let p = captured_service("rp_prune", postgres_only);
    change(&p, 1).await;
    p.run(&["capture", "--once"]).ok();
    change(&p, 2).await;
    let before = state(&p).await;
    second_migration(&p);
    let doc = migrate_json(&p, &[]);
    let id = doc["restore_points"][0]["id"].as_str().unwrap().to_string();
    let base = restore_points(&p)[0]["base_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let segments = p.capture_segments("postgres").len();
    let pruned = p.run(&[
        "snapshots",
        "prune",
        "--keep-last",
        "1",
        "--yes",
        "--output",
        "json",
    ]);
    pruned.ok();
    let listed = listing(&p);
    let ids: Vec<&str> = listed["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&base.as_str()),
        "the restore point's base snapshot stays: {ids:?}"
    );
    assert_eq!(restore_points(&p).len(), 1);
    assert_eq!(
        p.capture_segments("postgres").len(),
        segments,
        "every segment after the base stays"
    );
    p.run(&["restore", "--restore-point", &id, "--yes"]).ok();
    assert_eq!(state(&p).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deployment_takes_its_post_migrate_snapshot_after_success_and_later_restores_wait_for_it()
{
    let p = captured_service("rp_defer", postgres_only);
    change(&p, 1).await;
    second_migration(&p);
    p.run(&["hook", "pre-deploy", "--release", "v2"]).ok();
    assert_eq!(restore_points(&p).len(), 1);
    assert_eq!(reasons(&p), ["manual"], "no post-migrate snapshot yet");
    let id = restore_points(&p)[0]["id"].as_str().unwrap().to_string();
    p.run(&["check"]).expect_code(9).stdout_has(&id);
    sql(
        &p,
        "INSERT INTO $S.accounts (name, currency) VALUES ('usd', 'USD')",
    );
    p.run(&["capture", "--once"]).ok();
    let later = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    p.run(&["capture", "--once"]).ok();
    p.run(&["restore", "--timestamp", &later, "--yes"])
        .expect_code(5)
        .stderr_has(&id);
    p.run(&[
        "hook",
        "post-deploy",
        "--release",
        "v2",
        "--result",
        "success",
    ])
    .ok();
    assert_eq!(reasons(&p), ["manual", "post-migrate"]);
    p.run(&["check"]).ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn rollback_takes_a_restore_point_and_restore_to_it_returns_before_the_down_migration() {
    let p = captured_service("rp_rollb", postgres_only);
    second_migration(&p);
    migrate_json(&p, &[]);
    change(&p, 1).await;
    let before = state(&p).await;
    let run = p.run(&["rollback", "--to", "1", "--yes", "--output", "json"]);
    run.ok();
    let doc = run.json();
    assert_eq!(doc["restore_points"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["snapshots"].as_array().unwrap().len(), 0, "{doc}");
    let id = doc["restore_points"][0]["id"].as_str().unwrap().to_string();
    p.run(&["restore", "--restore-point", &id, "--yes"]).ok();
    assert_eq!(state(&p).await, before);
}

/// Ends a running `capture` the way Kubernetes does, and waits for it.
fn stop(mut capture: std::process::Child) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(capture.id() as i32, libc::SIGTERM) }, 0);
    assert_eq!(capture.wait().unwrap().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn with_the_capture_deployment_running_migrate_waits_for_its_pass_and_restores_exactly() {
    let p = captured_service("rp_daemon", both);
    let capture = p.spawn(&["capture", "--interval", "1s"]);
    change(&p, 1).await;
    let before = state(&p).await;
    second_migration(&p);
    let doc = migrate_json(&p, &[]);
    assert_eq!(doc["restore_points"].as_array().unwrap().len(), 1, "{doc}");
    let id = doc["restore_points"][0]["id"].as_str().unwrap().to_string();
    change(&p, 2).await;
    // The capture Deployment ships the migration and what came after.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    stop(capture);
    p.run(&["restore", "--restore-point", &id, "--yes"]).ok();
    assert_eq!(
        state(&p).await,
        before,
        "exactly the state before the migration"
    );
    // A capture that does not catch up within --lock-timeout: a full
    // snapshot, saying so.
    p.run(&["snapshot"]).ok();
    let capture = p.spawn(&["capture", "--interval", "1h"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    p.migration(
        "postgres",
        "0003_more.up.sql",
        "ALTER TABLE accounts ADD COLUMN note text;\n",
    );
    change(&p, 3).await;
    let doc = migrate_json(&p, &["--lock-timeout", "2s"]);
    stop(capture);
    assert_full_snapshot_because(&doc, "capture_busy");
}
