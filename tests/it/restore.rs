//! Restore against the real servers: fidelity (catalog and data identical),
//! selection by time, refusals that change nothing, atomicity under kill -9,
//! and recovery of an interrupted MongoDB restore.

use crate::common;

use bson::{doc, Bson, Document, RawDocumentBuf};
use common::oracle::{data_fingerprint, schema_dump, snapshot_ids};
use common::{psql, Project};
use futures::TryStreamExt;

const AWKWARD_SCHEMA: &str = r#"CREATE TYPE mood AS ENUM ('ok', 'sad', 'ünïcødé');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE SEQUENCE counter START 10;
CREATE TABLE "Weird Table" (
  id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  "select" text, "Mixed" text COLLATE "C", t text, f float8, n numeric, d date, ts timestamptz,
  arr int[], b bytea, j jsonb, p pair, r int4range, fr floatrange, m mood, pi posint,
  twice int GENERATED ALWAYS AS (coalesce(pi, 1) * 2) STORED,
  parent int REFERENCES "Weird Table" DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE events (at date NOT NULL, v int, note text) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE TABLE audit (at timestamptz DEFAULT now(), what text);
CREATE FUNCTION log_insert() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO audit (what) VALUES ('insert ' || NEW.id); RETURN NEW; END $$;
CREATE TRIGGER weird_log AFTER INSERT ON "Weird Table" FOR EACH ROW EXECUTE FUNCTION log_insert();
CREATE INDEX weird_j_idx ON "Weird Table" USING gin (j);
CREATE UNIQUE INDEX weird_select_idx ON "Weird Table" ("select") WHERE "select" IS NOT NULL;
CREATE VIEW weird_view AS SELECT id, "select" FROM "Weird Table";
CREATE MATERIALIZED VIEW weird_count AS SELECT count(*) AS c FROM "Weird Table";
CREATE PROCEDURE noop() LANGUAGE sql AS $$ SELECT 1 $$;
COMMENT ON TABLE "Weird Table" IS 'awkward; values';
COMMENT ON COLUMN "Weird Table"."select" IS 'a reserved word';
ALTER TABLE audit ENABLE ROW LEVEL SECURITY;
CREATE POLICY audit_all ON audit USING (true);
INSERT INTO "Weird Table" ("select", "Mixed", t, f, n, d, ts, arr, b, j, p, r, fr, m, pi, parent) VALUES
 ('a', 'Zz', E'tab\there\nnewline \\ backslash', 'NaN', 'NaN', 'infinity', '-infinity', ARRAY[1, NULL, 3], '\x00ff10', '{"k": [1, "two", null], "e": "🎉"}', ROW(1, NULL), '[1,5)', '[1.5,2.5]', 'ünïcødé', 7, NULL),
 (NULL, '', '', '-0', '-1.5e-10', '-infinity', 'infinity', '{}', '', '[]', NULL, 'empty', NULL, 'ok', NULL, 1),
 ('b', NULL, NULL, 'Infinity', '123456789012345678901234567890.123456789', '2025-06-19', '2025-06-19T08:00:00Z', NULL, NULL, 'null', ROW(NULL, 'x'), NULL, NULL, NULL, 1, 2),
 ('c', 'ß', repeat('x', 10000), '-Infinity', '0', '1999-12-31', NULL, ARRAY[NULL]::int[], '\xdeadbeef', '"just a string"', ROW(3, E'q\'uote'), '(,)', 'empty', 'sad', 2, 3);
INSERT INTO events VALUES ('2024-05-01', 1, 'a'), ('2025-05-01', 2, NULL);
SELECT setval('counter', 42);
REFRESH MATERIALIZED VIEW weird_count;
CREATE MATERIALIZED VIEW weird_later AS SELECT id FROM "Weird Table" WITH NO DATA;
CREATE COLLATION german_icu (provider = icu, locale = 'de-DE');
CREATE TABLE labels (id int PRIMARY KEY, name text COLLATE german_icu, a int, b int);
INSERT INTO labels VALUES (1, 'Äpfel', 1, 2), (2, 'Zebra', 2, 4);
CREATE STATISTICS labels_ab (dependencies, ndistinct) ON a, b FROM labels;
GRANT SELECT, INSERT ON "Weird Table" TO valero_app;
GRANT UPDATE ("select", t) ON "Weird Table" TO valero_app;
GRANT SELECT ON weird_view, weird_count TO valero_app;
GRANT USAGE, SELECT ON SEQUENCE counter TO valero_app;
REVOKE EXECUTE ON FUNCTION log_insert() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION log_insert() TO valero_app;
REVOKE USAGE ON TYPE mood FROM PUBLIC;
GRANT USAGE ON TYPE mood TO valero_app;
DO $$ BEGIN
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO valero_app', current_schema());
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT ON TABLES TO valero_app', current_schema());
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I REVOKE EXECUTE ON FUNCTIONS FROM PUBLIC', current_schema());
END $$;
"#;

/// A project whose service is the awkward schema, migrated; its
/// application role `valero_app` exists on the server.
fn awkward_project(tag: &str) -> Project {
    common::ensure_role("valero_app");
    let p = Project::new(tag);
    p.migration("postgres", "0001_awkward.up.sql", AWKWARD_SCHEMA);
    p.migrate_now();
    p
}

#[test]
fn postgres_restore_is_identical_in_catalog_data_and_sequences() {
    let p = awkward_project("r_fidelity");
    let catalog = schema_dump(&p.schema);
    let data = data_fingerprint(&p.schema);
    p.run(&["snapshot"]).ok();
    let (id, _) = snapshot_ids(&p, "dev").remove(0);
    // Damage everything.
    psql(&format!(
        "SET search_path TO \"{s}\"; DELETE FROM audit; UPDATE \"Weird Table\" SET t = 'changed'; DROP TABLE events CASCADE; \
         DROP VIEW weird_view; CREATE TABLE intruder (x int); SELECT setval('counter', 999); ALTER TABLE audit ADD COLUMN extra int; \
         REVOKE ALL ON \"Weird Table\" FROM valero_app; REFRESH MATERIALIZED VIEW weird_later",
        s = p.schema
    ));
    assert_ne!(data_fingerprint(&p.schema), data);
    let run = p.run(&["restore", "--snapshot", &id, "--yes", "--output", "json"]);
    run.ok();
    assert_eq!(
        schema_dump(&p.schema),
        catalog,
        "pg_dump --schema-only differs after restore"
    );
    assert_eq!(
        data_fingerprint(&p.schema),
        data,
        "rows or sequences differ after restore"
    );
    // Triggers did not fire during the load.
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{}\".audit", p.schema)),
        "4"
    );
    // History travels inside the snapshot.
    p.run(&["status", "--check"]).ok();
    let doc = run.json();
    assert_eq!(doc["services"][0]["snapshot"]["id"], id.as_str());
    assert!(doc["services"][0]["pre_restore_snapshot"].is_string());
}

#[test]
fn the_pre_restore_snapshot_undoes_a_restore() {
    let p = Project::new("r_undo");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1);",
    );
    let first = p.migrate_and_snapshot();
    psql(&format!("INSERT INTO \"{}\".t VALUES (2)", p.schema));
    let run = p.run(&["restore", "--snapshot", &first, "--yes", "--output", "json"]);
    run.ok();
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(v::text, ',') FROM \"{}\".t",
            p.schema
        )),
        "1"
    );
    let pre = run.json()["services"][0]["pre_restore_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(snapshot_ids(&p, "dev")
        .iter()
        .any(|(id, reason)| id == &pre && reason == "pre-restore"));
    p.run(&["restore", "--snapshot", &pre, "--yes"]).ok();
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(v::text, ',' ORDER BY v) FROM \"{}\".t",
            p.schema
        )),
        "1,2"
    );
}

#[test]
fn timestamp_selection_picks_the_newest_snapshot_at_or_before_it() {
    let p = Project::new("r_time");
    p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (v int);");
    p.migrate_now();
    psql(&format!("INSERT INTO \"{}\".t VALUES (1)", p.schema));
    p.run(&["snapshot"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let between = chrono::Utc::now();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    psql(&format!("INSERT INTO \"{}\".t VALUES (2)", p.schema));
    p.run(&["snapshot"]).ok();
    psql(&format!("INSERT INTO \"{}\".t VALUES (3)", p.schema));
    let t = between.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let dry = p.run(&["restore", "--timestamp", &t, "--dry-run"]);
    dry.ok();
    assert!(
        dry.stdout.contains("before the requested time"),
        "{}",
        dry.stdout
    );
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{}\".t", p.schema)),
        "3",
        "dry run changes nothing"
    );
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(v::text, ',') FROM \"{}\".t",
            p.schema
        )),
        "1"
    );
}

#[test]
fn refusals_change_nothing_and_use_the_contract_exit_codes() {
    let p = Project::new("r_refuse");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (1);",
    );
    p.migrate_now();
    p.run(&["restore", "--timestamp", "2020-01-01T00:00:00Z", "--yes"])
        .expect_code(8)
        .stderr_has("no snapshot at or before");
    p.run(&["snapshot"]).ok();
    let (id, _) = snapshot_ids(&p, "dev").remove(0);
    psql(&format!("INSERT INTO \"{}\".t VALUES (2)", p.schema));
    p.run(&["restore", "--timestamp", "2025-06-19T08:00:00", "--yes"])
        .expect_code(2)
        .stderr_has("no time zone");
    p.run(&["restore", "--timestamp", "tomorrow", "--yes"])
        .expect_code(2);
    p.run(&["restore", "--snapshot", &id])
        .expect_code(2)
        .stderr_has("--yes");
    p.run(&[
        "-e",
        "prod",
        "restore",
        "--snapshot",
        &id,
        "--from-env",
        "dev",
    ])
    .expect_code(2)
    .stderr_has("protected");
    p.run(&["restore", "--snapshot", "../../etc", "--yes"])
        .expect_code(2);
    // A corrupt object: exit 5 before anything is touched.
    let dir = p.path().join("backups/dev/svc").join(&id);
    let victim = std::fs::read_dir(dir.join("postgres/data"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut bytes = std::fs::read(&victim).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&victim, bytes).unwrap();
    p.run(&["restore", "--snapshot", &id, "--yes"])
        .expect_code(5)
        .stderr_has("corrupt");
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{}\".t", p.schema)),
        "2"
    );
    assert!(
        snapshot_ids(&p, "dev")
            .iter()
            .all(|(_, r)| r != "pre-restore"),
        "nothing happened, not even a pre-restore snapshot"
    );
}

#[test]
fn restore_from_another_environment_refreshes_this_one() {
    let p = Project::new("r_fromenv");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (v int); INSERT INTO t VALUES (7);",
    );
    p.migrate_now();
    let id = p.snapshot_in("prod");
    psql(&format!("DELETE FROM \"{}\".t", p.schema));
    // prod is protected and dev has no masking rules: refused, unchanged.
    p.run(&["restore", "--from-env", "prod", "--snapshot", &id, "--yes"])
        .expect_code(2)
        .stderr_has("--no-mask");
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{}\".t", p.schema)),
        "0"
    );
    p.run(&[
        "restore",
        "--from-env",
        "prod",
        "--snapshot",
        &id,
        "--no-mask",
        "--yes",
    ])
    .ok();
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(v::text, ',') FROM \"{}\".t",
            p.schema
        )),
        "7"
    );
}

/// Adds 8000 MongoDB documents to a project whose PostgreSQL migration is
/// written (enough that PostgreSQL waits for its commit while MongoDB loads:
/// PostgreSQL commits only after every engine is loaded), migrates,
/// snapshots, then deletes most rows of `table` and most documents. Returns
/// the snapshot's id and the MongoDB database.
async fn two_engine_snapshot_then_changes(p: &Project, table: &str) -> (String, mongodb::Database) {
    p.migration("mongodb", "0001_docs.up.json", r#"[{"create": "docs"}]"#);
    p.migrate_now();
    let db = common::mongo(&p.mongo_db).await;
    let docs: Vec<Document> = (0..8_000)
        .map(|i| doc! {"_id": i, "v": "x".repeat(200)})
        .collect();
    db.collection::<Document>("docs")
        .insert_many(docs)
        .await
        .unwrap();
    let id = p.snapshot_in("dev");
    psql(&format!(
        "DELETE FROM \"{}\".{table} WHERE id > 10",
        p.schema
    ));
    db.collection::<Document>("docs")
        .delete_many(doc! {"_id": {"$gte": 10}})
        .await
        .unwrap();
    (id, db)
}

/// Starts `restore --snapshot ID`, waits until its PostgreSQL session
/// matches `point` (a condition on pg_stat_activity), then kill -9s it and
/// waits until the server has rolled the session back.
fn kill_restore_at(p: &Project, id: &str, point: &str) {
    let mut child = p.spawn(&["restore", "--snapshot", id, "--yes"]);
    let session = format!(
        "application_name LIKE 'valero-db host=% pid={}' AND datname = current_database()",
        child.id()
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    loop {
        let hit = psql(&format!(
            "SELECT count(*) FROM pg_stat_activity WHERE {session} AND {point}"
        ));
        if hit != "0" {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the restore ended ({status}) before reaching: {point}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the restore never reached: {point}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // The server notices the dead client and rolls the transaction back.
    let mut tries = 0;
    while psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE {session}"
    )) != "0"
    {
        assert!(tries < 300, "the killed restore's session did not end");
        std::thread::sleep(std::time::Duration::from_millis(100));
        tries += 1;
    }
}

#[tokio::test]
async fn kill_9_at_every_stage_of_a_restore_leaves_the_old_state() {
    let p = Project::new("r_kill");
    p.migration(
        "postgres",
        "0001_big.up.sql",
        "CREATE TABLE big (id int PRIMARY KEY, blob text); \
         INSERT INTO big SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 200000) g; \
         CREATE INDEX big_blob ON big (blob);",
    );
    let (id, db) = two_engine_snapshot_then_changes(&p, "big").await;
    let before = data_fingerprint(&p.schema);
    let mongo_before = raw_documents(&db, "docs").await;
    for point in [
        // Loading rows (the pre-restore snapshot's COPYs go TO STDOUT).
        "query LIKE 'COPY %big% FROM STDIN%' AND state = 'active'",
        // Building an index (post-data).
        "pid IN (SELECT pid FROM pg_stat_progress_create_index)",
        // Everything loaded, waiting for the commit while MongoDB loads.
        "state = 'idle in transaction' AND query LIKE '%relkind = ''m''%'",
    ] {
        kill_restore_at(&p, &id, point);
        assert_eq!(data_fingerprint(&p.schema), before, "killed at: {point}");
        assert_eq!(
            raw_documents(&db, "docs").await,
            mongo_before,
            "killed at: {point}"
        );
        // The next locking command drops MongoDB's unfinished temporaries.
        p.run(&["snapshot"]).ok();
        let names = db.list_collection_names().await.unwrap();
        assert!(
            !names.iter().any(|n| n.starts_with("valero_tmp_")),
            "killed at: {point}: {names:?}"
        );
    }
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert!(data_fingerprint(&p.schema).contains("big=200000:"));
    assert_eq!(raw_documents(&db, "docs").await.len(), 8_000);
}

fn awkward_documents() -> Vec<Document> {
    let big = "x".repeat(3 << 20);
    vec![
        doc! {"_id": 1, "dec": Bson::Decimal128("1234.5678".parse().unwrap()), "date": bson::DateTime::from_millis(1_750_320_000_000), "i64": 5_i64, "i32": 5_i32, "f": -0.0_f64, "nan": f64::NAN},
        doc! {"_id": 2, "bin0": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Generic, bytes: vec![0, 1, 2] }),
        "bin4": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Uuid, bytes: vec![7; 16] }),
        "bin5": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::Md5, bytes: vec![9; 16] }),
        "bin80": Bson::Binary(bson::Binary { subtype: bson::spec::BinarySubtype::UserDefined(0x80), bytes: vec![1] })},
        doc! {"_id": 3, "re": Bson::RegularExpression(bson::Regex { pattern: "^a.*z$".into(), options: "i".into() }),
        "ts": Bson::Timestamp(bson::Timestamp { time: 12, increment: 34 }), "min": Bson::MinKey, "max": Bson::MaxKey,
        "code": Bson::JavaScriptCode("function () { return 1; }".into()), "nested": [[1, [2, [3]]], {"z": 1, "a": 2}], "null": Bson::Null},
        doc! {"_id": 4, "big": big, "unicode": "ünïcødé 🎉", "email": "a@b.de", "expires": bson::DateTime::from_millis(4_000_000_000_000)},
        doc! {"_id": 5, "z_first": 1, "a_second": 2, "email": "c@d.de", "status": "open"},
    ]
}

async fn raw_documents(db: &mongodb::Database, coll: &str) -> Vec<Vec<u8>> {
    let mut c = db
        .collection::<RawDocumentBuf>(coll)
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap();
    let mut out = Vec::new();
    while let Some(d) = c.try_next().await.unwrap() {
        out.push(d.as_bytes().to_vec());
    }
    out
}

async fn index_specs(db: &mongodb::Database, coll: &str) -> Vec<Document> {
    let reply = db
        .run_command(doc! {"listIndexes": coll, "cursor": {}})
        .await
        .unwrap();
    let mut specs: Vec<Document> = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()
        .iter()
        .map(|b| {
            let mut d = b.as_document().unwrap().clone();
            d.remove("ns");
            d
        })
        .collect();
    specs.sort_by_key(|d| d.get_str("name").unwrap_or_default().to_string());
    specs
}

async fn collection_options(db: &mongodb::Database, coll: &str) -> Document {
    let reply = db
        .run_command(doc! {"listCollections": 1, "filter": {"name": coll}, "cursor": {}})
        .await
        .unwrap();
    let first = reply
        .get_document("cursor")
        .unwrap()
        .get_array("firstBatch")
        .unwrap()[0]
        .as_document()
        .unwrap()
        .clone();
    first.get_document("options").cloned().unwrap_or_default()
}

#[tokio::test]
async fn mongodb_restore_is_identical_in_documents_indexes_and_options() {
    let p = Project::new("r_mongo");
    p.migration(
        "mongodb",
        "0001_things.up.json",
        r#"[{"create": "things", "validator": {"$jsonSchema": {"bsonType": "object", "required": ["_id"]}}, "validationLevel": "moderate"},
            {"createIndexes": "things", "indexes": [
              {"key": {"email": 1}, "name": "email_unique", "unique": true, "partialFilterExpression": {"email": {"$exists": true}}},
              {"key": {"expires": 1}, "name": "expires_ttl", "expireAfterSeconds": 3600},
              {"key": {"status": 1, "_id": -1}, "name": "status_id"}]},
            {"create": "other"}]"#,
    );
    p.migrate_now();
    let db = common::mongo(&p.mongo_db).await;
    db.collection::<Document>("things")
        .insert_many(awkward_documents())
        .await
        .unwrap();
    db.collection::<Document>("other")
        .insert_one(doc! {"_id": "o"})
        .await
        .unwrap();
    let docs = raw_documents(&db, "things").await;
    let indexes = index_specs(&db, "things").await;
    let options = collection_options(&db, "things").await;
    p.run(&["snapshot"]).ok();
    let (id, _) = snapshot_ids(&p, "dev").remove(0);
    // Damage: change, delete, add, drop an index, add a collection.
    let things = db.collection::<Document>("things");
    things
        .update_one(doc! {"_id": 1}, doc! {"$set": {"i64": 6_i64}})
        .await
        .unwrap();
    things.delete_one(doc! {"_id": 2}).await.unwrap();
    things.insert_one(doc! {"_id": 99}).await.unwrap();
    db.run_command(doc! {"dropIndexes": "things", "index": "status_id"})
        .await
        .unwrap();
    db.collection::<Document>("intruder")
        .insert_one(doc! {"x": 1})
        .await
        .unwrap();
    db.collection::<Document>("other").drop().await.unwrap();
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert!(
        raw_documents(&db, "things").await == docs,
        "raw BSON differs after restore"
    );
    assert_eq!(index_specs(&db, "things").await, indexes);
    assert_eq!(collection_options(&db, "things").await, options);
    assert_eq!(raw_documents(&db, "other").await.len(), 1);
    let mut names = db.list_collection_names().await.unwrap();
    names.sort();
    assert!(!names.contains(&"intruder".to_string()), "{names:?}");
    no_restore_leftovers(&db).await;
    p.run(&["status", "--check"]).ok();
}

#[tokio::test]
async fn an_interrupted_mongodb_restore_is_undone_or_completed_by_the_next_command() {
    let p = Project::new("r_journal");
    p.migration(
        "mongodb",
        "0001_c.up.json",
        r#"[{"create": "c"}, {"insert": "c", "documents": [{"_id": 1, "v": "old"}]}]"#,
    );
    p.migrate_now();
    let db = common::mongo(&p.mongo_db).await;
    let journal = db.collection::<Document>("valero_restore_journal");
    // Died while loading: the next command undoes it.
    db.collection::<Document>("valero_tmp_dead0001_0")
        .insert_one(doc! {"_id": 1, "v": "new"})
        .await
        .unwrap();
    journal
        .insert_one(doc! {"_id": "restore", "state": "loading", "token": "dead0001", "snapshot": "x",
            "renames": [{"tmp": "valero_tmp_dead0001_0", "name": "c"}], "views": [], "keep": ["c", "valero_schema_history"]})
        .await
        .unwrap();
    let run = p.run(&["snapshot"]);
    run.ok().stderr_has("undoing the interrupted restore");
    assert_eq!(raw_documents(&db, "c").await.len(), 1);
    let c = db
        .collection::<Document>("c")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.get_str("v").unwrap(), "old");
    assert!(journal.find_one(doc! {}).await.unwrap().is_none());
    // Died while swapping: the next command completes it.
    db.collection::<Document>("valero_tmp_dead0002_0")
        .insert_one(doc! {"_id": 1, "v": "new"})
        .await
        .unwrap();
    journal
        .insert_one(doc! {"_id": "restore", "state": "swapping", "token": "dead0002", "snapshot": "y",
            "renames": [{"tmp": "valero_tmp_dead0002_0", "name": "c"}], "views": [], "keep": ["c", "valero_schema_history"]})
        .await
        .unwrap();
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .ok()
        .stderr_has("completing the interrupted restore");
    let c = db
        .collection::<Document>("c")
        .find_one(doc! {})
        .await
        .unwrap()
        .unwrap();
    assert_eq!(c.get_str("v").unwrap(), "new");
    let names = db.list_collection_names().await.unwrap();
    assert!(
        !names.iter().any(|n| n.starts_with("valero_tmp_")),
        "{names:?}"
    );
    assert!(journal.find_one(doc! {}).await.unwrap().is_none());
}

#[test]
fn manual_postgres_restore_procedure_works() {
    let p = awkward_project("r_manual");
    let catalog = schema_dump(&p.schema);
    let data = data_fingerprint(&p.schema);
    p.run(&["snapshot"]).ok();
    let (id, _) = snapshot_ids(&p, "dev").remove(0);
    psql(&format!("DROP SCHEMA \"{}\" CASCADE", p.schema));
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/manual-restore-postgres.sh");
    let snap = p.path().join("backups/dev/svc").join(&id);
    let out = std::process::Command::new("bash")
        .arg(script)
        .arg(&snap)
        .arg(&p.schema)
        .arg(common::pg_url())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(schema_dump(&p.schema), catalog);
    assert_eq!(data_fingerprint(&p.schema), data);
}

/// A table object's stored bytes, decompressed.
fn unzstd(path: &std::path::Path) -> Vec<u8> {
    zstd::decode_all(std::fs::File::open(path).unwrap()).unwrap()
}

/// Stores `raw` compressed as the object of manifest entry `entry`, under
/// `key`, with its size, sha256 and raw size in the entry.
fn store_object(snap: &std::path::Path, entry: &mut serde_json::Value, key: &str, raw: &[u8]) {
    use sha2::Digest;
    let stored = zstd::encode_all(raw, 3).unwrap();
    std::fs::remove_file(snap.join(entry["key"].as_str().unwrap())).unwrap();
    std::fs::write(snap.join(key), &stored).unwrap();
    entry["key"] = key.into();
    entry["size"] = stored.len().into();
    entry["sha256"] = hex::encode(sha2::Sha256::digest(&stored)).into();
    entry["raw_size"] = raw.len().into();
}

fn edit_manifest(snap: &std::path::Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let path = snap.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

#[test]
fn a_format_1_snapshot_of_plain_copy_text_still_restores_exactly() {
    let p = awkward_project("r_format1");
    let catalog = schema_dump(&p.schema);
    let data = data_fingerprint(&p.schema);
    p.run(&["snapshot"]).ok();
    let (id, _) = snapshot_ids(&p, "dev").remove(0);
    let snap = p.path().join("backups/dev/svc").join(&id);
    // Rewrite the snapshot as valero-db wrote it before column blocks.
    edit_manifest(&snap, |m| {
        m["format"] = 1.into();
        let mut tables = 0;
        for o in m["objects"].as_array_mut().unwrap() {
            if o["kind"] != "postgres/table" {
                continue;
            }
            assert_eq!(o["encoding"], "copy-columns", "{o}");
            let encoded = unzstd(&snap.join(o["key"].as_str().unwrap()));
            let mut decoder = valero_db::snapshot::columns::ColumnDecoder::new();
            let rows = decoder.push(&encoded).unwrap();
            decoder.finish().unwrap();
            let key = o["key"]
                .as_str()
                .unwrap()
                .replace(".columns.zst", ".copy.zst");
            store_object(&snap, o, &key, &rows);
            o.as_object_mut().unwrap().remove("encoding");
            tables += 1;
        }
        assert!(tables >= 3, "the fixture has tables");
    });
    psql(&format!(
        "SET search_path TO \"{s}\"; DELETE FROM audit; UPDATE \"Weird Table\" SET t = 'changed'",
        s = p.schema
    ));
    p.run(&["snapshots", "verify", &id]).ok();
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(schema_dump(&p.schema), catalog);
    assert_eq!(data_fingerprint(&p.schema), data);
}

#[test]
fn a_damaged_column_block_with_a_matching_checksum_is_exit_5_and_changes_nothing() {
    let p = awkward_project("r_badblock");
    p.run(&["snapshot"]).ok();
    let (id, _) = snapshot_ids(&p, "dev").remove(0);
    let snap = p.path().join("backups/dev/svc").join(&id);
    psql(&format!("DELETE FROM \"{}\".audit", p.schema));
    let data = data_fingerprint(&p.schema);
    edit_manifest(&snap, |m| {
        let o = m["objects"]
            .as_array_mut()
            .unwrap()
            .iter_mut()
            .find(|o| o["kind"] == "postgres/table" && o["rows"].as_u64() > Some(1))
            .expect("a table with rows");
        let encoded = unzstd(&snap.join(o["key"].as_str().unwrap()));
        // One value line fewer than the block header promises.
        let cut = encoded[..encoded.len() - 1]
            .iter()
            .rposition(|b| *b == b'\n')
            .unwrap();
        let key = o["key"].as_str().unwrap().to_string();
        store_object(&snap, o, &key, &encoded[..cut + 1]);
    });
    p.run(&["restore", "--snapshot", &id, "--yes"])
        .expect_code(5)
        .stderr_has("corrupt");
    assert_eq!(
        data_fingerprint(&p.schema),
        data,
        "the database was touched"
    );
}

#[test]
fn the_environments_compression_level_is_used_and_restores_exactly() {
    let p = awkward_project("r_level");
    psql(&format!(
        "INSERT INTO \"{}\".audit (at, what) SELECT now() - g * interval '1 minute', 'Buchung ' || g || ' an Konto ' || g % 97 \
         FROM generate_series(1, 60000) g",
        p.schema
    ));
    let catalog = schema_dump(&p.schema);
    let data = data_fingerprint(&p.schema);
    let stored = |level: u32| {
        p.write_config(&format!(
            "[environments.dev.compression]\nlevel = {level}\n"
        ));
        let out = p.run(&["snapshot", "--output", "json"]).json();
        out["snapshots"][0]["size"].as_u64().expect("size")
    };
    let (fast, small) = (stored(1), stored(19));
    assert!(
        small < fast,
        "level 19 stored {small} bytes, level 1 {fast}"
    );
    let (id, _) = snapshot_ids(&p, "dev").pop().unwrap();
    psql(&format!("DELETE FROM \"{}\".audit", p.schema));
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(schema_dump(&p.schema), catalog);
    assert_eq!(data_fingerprint(&p.schema), data);
}

#[test]
fn a_public_sample_schema_round_trips() {
    // pgbench's schema, written by the PostgreSQL project, not by us.
    let p = Project::new("r_pgbench");
    psql(&format!("CREATE SCHEMA \"{}\"", p.schema));
    let bin =
        std::env::var("VALERO_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    let out = std::process::Command::new(format!("{bin}/pgbench"))
        .env("PGOPTIONS", format!("-c search_path={}", p.schema))
        .args(["-i", "-s", "1", "--foreign-keys", "-q", &common::pg_url()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let catalog = schema_dump(&p.schema);
    let data = data_fingerprint(&p.schema);
    p.run(&["snapshot"]).ok();
    let (id, _) = snapshot_ids(&p, "dev").remove(0);
    psql(&format!("SET search_path TO \"{}\"; UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid < 500; DELETE FROM pgbench_history", p.schema));
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(schema_dump(&p.schema), catalog);
    assert_eq!(data_fingerprint(&p.schema), data);
}

#[tokio::test]
async fn kill_9_during_a_mongodb_restore_leaves_old_or_new_after_the_next_command() {
    let p = Project::new("r_mkill");
    p.migration("mongodb", "0001_c.up.json", r#"[{"create": "c"}]"#);
    p.migrate_now();
    let db = common::mongo(&p.mongo_db).await;
    let c = db.collection::<Document>("c");
    let docs: Vec<Document> = (0..20_000)
        .map(|i| doc! {"_id": i, "v": "new", "pad": "x".repeat(200)})
        .collect();
    c.insert_many(docs).await.unwrap();
    p.run(&["snapshot"]).ok();
    let (id, _) = snapshot_ids(&p, "dev").remove(0);
    c.delete_many(doc! {}).await.unwrap();
    c.insert_one(doc! {"_id": -1, "v": "old"}).await.unwrap();
    for delay_ms in [400u64, 1200, 2500] {
        let mut child = p
            .std_cmd()
            .env("VALERO_DB_MONGO_LEASE_TTL", "2")
            .args(["restore", "--snapshot", &id, "--yes"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        let _ = child.kill();
        let _ = child.wait();
        // The next command on the service finishes or undoes the restore.
        p.run(&["migrate", "--no-snapshot", "--yes", "--lock-timeout", "90s"])
            .ok();
        let count = c.count_documents(doc! {}).await.unwrap();
        let old = c.count_documents(doc! {"v": "old"}).await.unwrap();
        assert!(
            (count == 1 && old == 1) || (count == 20_000 && old == 0),
            "a mix after kill -9 at {delay_ms} ms: {count} documents, {old} old"
        );
        no_restore_leftovers(&db).await;
        if count == 20_000 {
            break;
        }
    }
}

/// Replaces a table's stored object with `change(stored bytes)` and
/// rewrites its size and sha256 (and raw size, when given) in the manifest,
/// as someone who knows the format would.
fn rewrite_table_object(
    p: &Project,
    id: &str,
    table: &str,
    change: impl FnOnce(Vec<u8>) -> (Vec<u8>, Option<u64>),
) {
    use sha2::{Digest, Sha256};
    let dir = p.path().join("backups/dev/svc").join(id);
    let manifest_path = dir.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&manifest_path).unwrap()).unwrap();
    let entry = manifest["objects"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|o| o["name"] == table)
        .unwrap();
    let object = dir.join(entry["key"].as_str().unwrap());
    let (stored, raw_size) = change(std::fs::read(&object).unwrap());
    std::fs::write(&object, &stored).unwrap();
    entry["size"] = serde_json::json!(stored.len());
    entry["sha256"] = serde_json::json!(hex::encode(Sha256::digest(&stored)));
    if let Some(raw) = raw_size {
        entry["raw_size"] = serde_json::json!(raw);
    }
    std::fs::write(
        &manifest_path,
        serde_json::to_vec_pretty(&manifest).unwrap(),
    )
    .unwrap();
}

#[test]
fn a_truncated_zstd_object_is_refused_even_when_its_hash_was_rewritten() {
    let p = Project::new("r_trunc");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (v text); INSERT INTO t SELECT md5(g::text) FROM generate_series(1, 20000) g;",
    );
    let id = p.migrate_and_snapshot();
    psql(&format!("INSERT INTO \"{}\".t VALUES ('after')", p.schema));
    rewrite_table_object(&p, &id, "t", |bytes| {
        (bytes[..bytes.len() / 2].to_vec(), None)
    });
    p.run(&["snapshots", "verify", &id]).ok();
    p.run(&["restore", "--snapshot", &id, "--yes"])
        .expect_code(5)
        .stderr_has("corrupt");
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{}\".t", p.schema)),
        "20001",
        "nothing changed"
    );
}

/// Every column type restore converts to COPY binary, with the values at
/// the edges of what each type prints.
const EVERY_CONVERTED_TYPE: &str = r#"CREATE TABLE every_type (
  b bool, i2 int2, i4 int4, i8 int8, f4 float4, f8 float8, n numeric, n2 numeric(15,2),
  t text, vc varchar(20), c char(5), js json, jb jsonb, by bytea, u uuid,
  d date, ts timestamp, ts3 timestamp(3), tz timestamptz
);
INSERT INTO every_type VALUES
 (true, -32768, -2147483648, -9223372036854775808, 'NaN', '-0', 'NaN', -0.01,
  E'tab\there\nnl\\bs\rcr\x01', '', 'ab', '{"a": "\\n"}', '{"k": [1, "ü", null]}', '\x00ff5c0a09', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '0044-03-15 BC', '0044-03-15 12:30:00.5 BC', '1999-12-31 23:59:59.999', '2000-01-01 00:00:00+00'),
 (false, 32767, 2147483647, 9223372036854775807, 'Infinity', '1.7976931348623157e308', 'Infinity', 1234567890123.45,
  repeat('x', 5000), 'zwanzig Zeichen lang', '', 'null', '"str"', '', '00000000-0000-0000-0000-000000000000',
  'infinity', 'infinity', '-infinity', '-infinity'),
 (NULL, 0, 0, 0, '-Infinity', '5e-324', '-Infinity', 0,
  '\N', '\', '\\', '[]', '{}', '\x5c4e', NULL,
  '-infinity', '-infinity', 'infinity', 'infinity'),
 (true, -1, 1, -1, '3.4e38', '0.1', '0.000000000000000000000000000001', '-0.00',
  'ünïcødé 🎉', NULL, NULL, '{"x":1,   "x":2}', '{"x":1, "x":2}', NULL, NULL,
  '10000-02-29', '294276-12-31 23:59:59.999999', '4713-11-24 00:00:00 BC', '1900-06-01 12:00:00.000001+05:53:28'),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
-- Enough rows to cross the chunks the stream arrives in.
INSERT INTO every_type
SELECT g % 3 = 0, (g % 30000)::int2, g * 7, g::int8 * 1000003, g / 7.0, g / 3.0, (g * 7919)::numeric / 1000, g / 100.0,
  md5(g::text) || E'\t' || g, left(md5(g::text), 20), left(md5(g::text), 5), json_build_object('g', g), jsonb_build_object('g', g, 's', md5(g::text)),
  decode(md5(g::text), 'hex'), md5(g::text)::uuid,
  date '2024-01-01' + g, timestamp '2024-01-01' + g * interval '1.000001 second', timestamp '1950-01-01' + g * interval '1 hour',
  timestamptz '1970-01-01 00:00:00+00' + g * interval '17 minutes 3.5 seconds'
FROM generate_series(1, 60000) g;
"#;

#[test]
fn every_converted_type_round_trips_through_the_binary_load() {
    let p = Project::new("r_binary");
    p.migration("postgres", "0001_types.up.sql", EVERY_CONVERTED_TYPE);
    p.migrate_now();
    let data = data_fingerprint(&p.schema);
    p.run(&["snapshot"]).ok();
    let (id, _) = snapshot_ids(&p, "dev").remove(0);
    psql(&format!(
        "UPDATE \"{}\".every_type SET t = 'changed', f8 = 1, tz = now()",
        p.schema
    ));
    let run = p.run(&["-v", "restore", "--snapshot", &id, "--yes"]);
    run.ok();
    run.stderr_has("COPY every_type (as binary)");
    assert_eq!(
        data_fingerprint(&p.schema),
        data,
        "a value changed on its way through COPY binary"
    );
    // Bits, not just printed values: -0, NaN and the float4 edge.
    let bits = |s: &str| {
        psql(&format!(
            "SELECT md5(string_agg(coalesce(float4send(f4)::text, '') || float8send(coalesce(f8, 0))::text || coalesce(numeric_send(n)::text, ''), ',' ORDER BY i4, i8)) FROM \"{s}\".every_type"
        ))
    };
    let restored = bits(&p.schema);
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(bits(&p.schema), restored);
}

#[test]
fn text_the_converter_does_not_know_loads_as_text_after_a_partial_binary_load() {
    let p = Project::new("r_binfall");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int, at timestamp, note text); \
         INSERT INTO t SELECT g, timestamp '2024-01-01' + g * interval '1 minute', md5(g::text) FROM generate_series(1, 300000) g;",
    );
    let id = p.migrate_and_snapshot();
    // COPY text PostgreSQL reads but never prints: a space before the
    // number and a T in the timestamp, in the last row, after most rows
    // were sent as binary.
    rewrite_table_object(&p, &id, "t", |stored| {
        let mut text = zstd::decode_all(stored.as_slice()).unwrap();
        let header = text.split(|b| *b == b'\n').next().unwrap();
        assert!(header.ends_with(b" 3"), "stored as column blocks");
        // One more column block (docs/snapshot-format.md) of one row.
        text.extend_from_slice(b"1 3\n 300001\n2030-01-01T10:00:00\nlast\n");
        let len = text.len() as u64;
        (zstd::encode_all(text.as_slice(), 3).unwrap(), Some(len))
    });
    psql(&format!("DELETE FROM \"{}\".t", p.schema));
    let run = p.run(&["-v", "restore", "--snapshot", &id, "--yes"]);
    run.ok();
    run.stderr_has("table t loads as COPY text");
    run.stderr_has("COPY t (as text)");
    assert_eq!(
        psql(&format!(
            "SELECT count(*) || ' ' || count(DISTINCT id) || ' ' || max(at) FROM \"{}\".t",
            p.schema
        )),
        "300001 300001 2030-01-01 10:00:00"
    );
}

#[tokio::test]
async fn a_failed_postgres_commit_leaves_mongodb_untouched() {
    let p = Project::new("r_pgfail");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 1000);",
    );
    let (id, db) = two_engine_snapshot_then_changes(&p, "t").await;
    let before = data_fingerprint(&p.schema);
    let mongo_before = raw_documents(&db, "docs").await;
    // PostgreSQL is loaded and waits for its commit while MongoDB loads;
    // its session dies there, so its commit fails.
    let mut child = p
        .std_cmd()
        .args(["restore", "--snapshot", &id, "--yes"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let session = format!(
        "application_name LIKE 'valero-db host=% pid={}' AND datname = current_database()",
        child.id()
    );
    // The last query before the commit: the restore's list of materialized
    // views to refresh (the snapshot's own list orders by name).
    let waiting = "state = 'idle in transaction' AND query LIKE '%relkind = ''m'' ORDER BY c.oid%'";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE {session} AND {waiting}"
    )) == "0"
    {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the restore ended early"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "never reached the commit wait"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    psql(&format!(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {session} AND {waiting}"
    ));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(data_fingerprint(&p.schema), before);
    assert_eq!(
        raw_documents(&db, "docs").await,
        mongo_before,
        "MongoDB commits only after PostgreSQL did"
    );
    no_restore_leftovers(&db).await;
}

/// A finished or undone MongoDB restore leaves no temporary collection and
/// no restore journal behind.
async fn no_restore_leftovers(db: &mongodb::Database) {
    let names = db.list_collection_names().await.unwrap();
    assert!(
        !names
            .iter()
            .any(|n| n.starts_with("valero_tmp_") || n == "valero_restore_journal"),
        "{names:?}"
    );
}
