//! MongoDB migrations against the real MongoDB-protocol server
//! (SecantusDB) started by scripts/services.sh.

use crate::common;

use bson::doc;
use common::{mongo, Project};
use futures::TryStreamExt;

const CUSTOMERS: &str = r#"[
  {"create": "customers", "validator": {"$jsonSchema": {"bsonType": "object", "required": ["email"]}}},
  {"createIndexes": "customers", "indexes": [{"key": {"email": 1}, "name": "email_1", "unique": true}]}
]"#;

async fn history(db: &mongodb::Database) -> Vec<(i64, String)> {
    let mut c = db
        .collection::<bson::Document>("valero_schema_history")
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(d) = c.try_next().await.unwrap() {
        out.push((
            d.get_i64("_id").unwrap(),
            d.get_str("state").unwrap().to_string(),
        ));
    }
    out
}

async fn collections(db: &mongodb::Database) -> Vec<String> {
    let mut names = db.list_collection_names().await.unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn mongodb_migrations_apply_once_with_validator_and_indexes() {
    let p = Project::new("m_apply");
    p.migration("mongodb", "0001_customers.up.json", CUSTOMERS);
    p.migration(
        "mongodb",
        "0001_customers.down.json",
        r#"[{"drop": "customers"}]"#,
    );
    p.migration(
        "mongodb",
        "0002_seed.up.json",
        r#"[{"insert": "customers", "documents": [{"email": "a@b.de", "limit": {"$numberDecimal": "1000.50"}, "since": {"$date": "2025-06-19T08:00:00Z"}}]}]"#,
    );
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    let db = mongo(&p.mongo_db).await;
    assert_eq!(
        history(&db).await,
        vec![(1, "applied".into()), (2, "applied".into())]
    );
    let doc = db
        .collection::<bson::Document>("customers")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(doc.get("limit"), Some(bson::Bson::Decimal128(_))));
    assert!(doc.get_datetime("since").is_ok());
    // The validator is in force.
    assert!(db
        .collection::<bson::Document>("customers")
        .insert_one(doc! {"x": 1})
        .await
        .is_err());
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    assert_eq!(history(&db).await.len(), 2);
}

#[tokio::test]
async fn failing_mongodb_command_reports_its_index_and_marks_dirty() {
    let p = Project::new("m_fail");
    p.migration(
        "mongodb",
        "0001_partial.up.json",
        r#"[{"create": "one"}, {"create": "two"}, {"definitelyNotACommand": 1}, {"create": "three"}]"#,
    );
    let run = p.run(&["migrate", "--no-snapshot", "--yes"]);
    run.expect_code(6)
        .stderr_has("0001_partial.up.json")
        .stderr_has("command 2 failed")
        .stderr_has("dirty");
    let db = mongo(&p.mongo_db).await;
    assert_eq!(history(&db).await, vec![(1, "dirty".into())]);
    assert!(!collections(&db).await.contains(&"three".to_string()));
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .expect_code(6)
        .stderr_has("is dirty");
    p.run(&["status", "--check"]).expect_code(9);
    p.run(&[
        "repair",
        "-s",
        "svc",
        "--engine",
        "mongodb",
        "--version",
        "1",
        "--as",
        "applied",
    ])
    .ok();
    p.run(&["status", "--check"]).ok();
}

#[tokio::test]
async fn a_first_command_failure_leaves_nothing_behind() {
    let p = Project::new("m_first");
    p.migration(
        "mongodb",
        "0001_bad.up.json",
        r#"[{"definitelyNotACommand": 1}]"#,
    );
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .expect_code(6)
        .stderr_has("command 0 failed");
    let db = mongo(&p.mongo_db).await;
    assert!(history(&db).await.is_empty());
}

#[tokio::test]
async fn mongodb_rollback_runs_down_files() {
    let p = Project::new("m_down");
    p.migration("mongodb", "0001_customers.up.json", CUSTOMERS);
    p.migration(
        "mongodb",
        "0001_customers.down.json",
        r#"[{"drop": "customers"}]"#,
    );
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    p.run(&["rollback", "--to", "0", "--yes"]).ok();
    let db = mongo(&p.mongo_db).await;
    assert!(history(&db).await.is_empty());
    assert!(!collections(&db).await.contains(&"customers".to_string()));
}

#[tokio::test]
async fn a_live_mongodb_lease_blocks_with_exit_4_and_an_expired_one_does_not() {
    let p = Project::new("m_lease");
    p.migration("mongodb", "0001_customers.up.json", CUSTOMERS);
    let db = mongo(&p.mongo_db).await;
    let locks = db.collection::<bson::Document>("valero_schema_lock");
    let in_a_minute =
        bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() + 60_000);
    locks
        .insert_one(doc! {"_id": "migrate", "token": "someone-else", "host": "deploy-7", "pid": 4242_i64, "since": bson::DateTime::now(), "expires_at": in_a_minute})
        .await
        .unwrap();
    let run = p.run(&[
        "-s",
        "svc",
        "migrate",
        "--no-snapshot",
        "--yes",
        "--lock-timeout",
        "1s",
    ]);
    run.expect_code(4).stderr_has("host=deploy-7 pid=4242");
    assert!(history(&db).await.is_empty());
    // A lease left by a killed process expires.
    let past = bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 1_000);
    locks
        .update_one(doc! {"_id": "migrate"}, doc! {"$set": {"expires_at": past}})
        .await
        .unwrap();
    p.run(&["migrate", "--no-snapshot", "--yes", "--lock-timeout", "1s"])
        .ok();
    assert_eq!(history(&db).await.len(), 1);
    assert!(
        locks
            .find_one(doc! {"_id": "migrate"})
            .await
            .unwrap()
            .is_none(),
        "the lease is released"
    );
}

#[tokio::test]
async fn malformed_extended_json_is_exit_2_before_anything_runs() {
    let p = Project::new("m_badjson");
    p.migration("mongodb", "0001_ok.up.json", r#"[{"create": "ok"}]"#);
    p.migration(
        "mongodb",
        "0002_bad.up.json",
        r#"[{"insert": "x", "documents": [{"n": {"$numberLong": "nope"}}]}]"#,
    );
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .expect_code(2)
        .stderr_has("0002_bad.up.json");
    // Empty, not JSON, not an array, an empty array, a non-document element.
    for body in [
        "",
        "  \n",
        "{\"create\": \"x\"",
        "{\"create\": \"x\"}",
        "[]",
        "[1]",
    ] {
        p.migration("mongodb", "0002_bad.up.json", body);
        p.run(&["migrate", "--no-snapshot", "--yes"])
            .expect_code(2)
            .stderr_has("0002_bad.up.json");
    }
    let db = mongo(&p.mongo_db).await;
    assert!(history(&db).await.is_empty());
}

#[tokio::test]
async fn a_mongodb_dry_run_writes_nothing_not_even_a_lease() {
    let p = Project::new("m_dry");
    p.migration("mongodb", "0001_customers.up.json", CUSTOMERS);
    let db = mongo(&p.mongo_db).await;
    let run = p.run(&["migrate", "--dry-run", "--output", "json"]);
    run.ok();
    assert_eq!(
        collections(&db).await,
        Vec::<String>::new(),
        "a dry run on a fresh database creates nothing"
    );
    let plan = run.json();
    let mongo_run = common::engine_entry(&plan, "mongodb");
    assert_eq!(mongo_run["planned"], serde_json::json!([1]));
    // A rollback plan is read-only too.
    p.run(&["rollback", "--to", "0", "--dry-run"]).ok();
    assert_eq!(collections(&db).await, Vec::<String>::new());
}

#[tokio::test]
async fn a_dry_run_reports_a_pending_recovery_instead_of_doing_it() {
    let p = Project::new("m_dry_rec");
    p.migration(
        "mongodb",
        "0001_c.up.json",
        r#"[{"create": "c"}, {"insert": "c", "documents": [{"_id": 1, "v": "old"}]}]"#,
    );
    p.migrate_now();
    let db = mongo(&p.mongo_db).await;
    let journal = db.collection::<bson::Document>("valero_restore_journal");
    db.collection::<bson::Document>("valero_tmp_dead0009_0")
        .insert_one(doc! {"_id": 1, "v": "new"})
        .await
        .unwrap();
    journal
        .insert_one(doc! {"_id": "restore", "state": "swapping", "token": "dead0009", "snapshot": "z",
            "renames": [{"tmp": "valero_tmp_dead0009_0", "name": "c"}], "views": [], "keep": ["c", "valero_schema_history"]})
        .await
        .unwrap();
    let before = collections(&db).await;
    p.migration("mongodb", "0002_d.up.json", r#"[{"create": "d"}]"#);
    let run = p.run(&["migrate", "--dry-run", "--output", "json"]);
    run.ok();
    let notes = run.json()["notes"].to_string();
    assert!(
        notes.contains("interrupted restore of snapshot z is pending")
            && notes.contains("complete it"),
        "{notes}"
    );
    assert_eq!(
        collections(&db).await,
        before,
        "nothing recovered, nothing created"
    );
    assert!(journal.find_one(doc! {}).await.unwrap().is_some());
    let c = db
        .collection::<bson::Document>("c")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.get_str("v").unwrap(), "old");
    // The real run recovers first, then migrates.
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .ok()
        .stderr_has("completing the interrupted restore");
}
