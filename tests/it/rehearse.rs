//! `valero-db rehearse` against the real server: the pending migrations run
//! on a restored copy in a scratch database, measured (a blocking index
//! build holds a write-blocking lock about as long as it runs, the
//! concurrent form does not), failures are exit 6, a lock budget is exit 9,
//! the live service is never touched and no scratch database survives —
//! not even a kill -9 (the next run drops it).

use crate::common;

use std::time::{Duration, Instant};

use common::oracle::{data_fingerprint, schema_dump};
use common::{psql, Project};
use serde_json::Value;

/// A PostgreSQL-only service with a table big enough to measure, migrated
/// and snapshotted.
fn project(tag: &str) -> Project {
    let p = Project::new(tag);
    p.write_postgres_only_config("${VALERO_PG_URL}");
    p.migration(
        "postgres",
        "0001_big.up.sql",
        "CREATE TABLE big (id bigint PRIMARY KEY, payload text, maybe int);\n\
         INSERT INTO big SELECT g, md5(g::text) || md5((g * 7)::text), CASE WHEN g = 4242 THEN NULL ELSE g END FROM generate_series(1, 300000) g;\n",
    );
    p.migrate_now();
    p.run(&["snapshot"]).ok();
    p
}

fn live_state(p: &Project) -> (String, String) {
    (schema_dump(&p.schema), data_fingerprint(&p.schema))
}

fn scratch_databases(p: &Project) -> String {
    let prefix = valero_db::engine::scratch_prefix("svc", &p.schema);
    psql(&format!(
        "SELECT count(*) FROM pg_database WHERE starts_with(datname, '{prefix}')"
    ))
}

fn lock_on<'a>(migration: &'a Value, table: &str) -> Vec<&'a Value> {
    migration["locks"]
        .as_array()
        .unwrap_or_else(|| panic!("no locks in {migration}"))
        .iter()
        .filter(|l| l["table"] == table)
        .collect()
}

#[test]
fn a_blocking_index_build_is_measured_and_the_concurrent_one_is_not() {
    let p = project("reh_index");
    p.migration(
        "postgres",
        "0002_index.up.sql",
        "CREATE INDEX big_payload ON big (payload);\n",
    );
    let before = live_state(&p);
    let run = p.run(&["rehearse", "--output", "json"]);
    run.ok();
    let report = run.json();
    let m = &report["services"][0]["migrations"][0];
    assert_eq!(m["file"], "0002_index.up.sql", "{report}");
    let big = lock_on(m, "big");
    assert_eq!(big.len(), 1, "{m}");
    assert_eq!(big[0]["mode"], "ShareLock");
    assert_eq!(big[0]["blocks_writes"], true);
    let (held, took) = (
        big[0]["held_ms"].as_u64().unwrap(),
        m["duration_ms"].as_u64().unwrap(),
    );
    assert!(
        held * 2 >= took && held <= took + 100,
        "the lock was held {held} ms of a {took} ms migration"
    );
    assert!(m["wal_bytes"].as_i64().unwrap() > 1_000_000, "{m}");
    // The live service is untouched and still has 0002 pending.
    assert_eq!(live_state(&p), before);
    p.run(&["status", "--check"]).expect_code(9);
    assert_eq!(scratch_databases(&p), "0");

    p.migration(
        "postgres",
        "0002_index.up.sql",
        "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY big_payload ON big (payload);\n",
    );
    let concurrent = p.run(&["rehearse", "--output", "json"]).json();
    let m = &concurrent["services"][0]["migrations"][0];
    let big = lock_on(m, "big");
    assert!(
        big.iter().all(|l| l["blocks_writes"] == false),
        "CREATE INDEX CONCURRENTLY blocked writes: {m}"
    );
    assert!(
        big.iter().any(|l| l["mode"] == "ShareUpdateExclusiveLock"),
        "{m}"
    );
    assert_eq!(scratch_databases(&p), "0");
}

#[test]
fn a_rewrite_is_reported_and_a_budget_fails_the_rehearsal() {
    let p = project("reh_budget");
    p.migration(
        "postgres",
        "0002_type.up.sql",
        "ALTER TABLE big ALTER COLUMN maybe TYPE bigint;\n",
    );
    let report = p.run(&["rehearse", "--output", "json"]).json();
    let m = &report["services"][0]["migrations"][0];
    assert_eq!(m["rewritten"][0], "big", "{m}");
    assert_eq!(lock_on(m, "big")[0]["mode"], "AccessExclusiveLock");
    p.run(&["rehearse", "--budget", "lock=1ms"])
        .expect_code(9)
        .stderr_has("blocked writes longer than the budget of 1ms")
        .stderr_has("AccessExclusiveLock on big");
    p.run(&["rehearse", "--budget", "lock=10m"]).ok();
    p.run(&["rehearse", "--budget", "5s"])
        .expect_code(2)
        .stderr_has("lock=DURATION");
    assert_eq!(scratch_databases(&p), "0");
}

#[test]
fn a_not_null_that_fails_on_real_data_fails_the_rehearsal_with_exit_6() {
    let p = project("reh_fail");
    p.migration(
        "postgres",
        "0002_backfill.up.sql",
        "UPDATE big SET maybe = -1 WHERE id <= 100;\n",
    );
    p.migration(
        "postgres",
        "0003_not_null.up.sql",
        "ALTER TABLE big ALTER COLUMN maybe SET NOT NULL;\n",
    );
    let before = live_state(&p);
    p.run(&["rehearse"])
        .expect_code(6)
        .stderr_has("0003_not_null.up.sql")
        .stderr_has("contains null values");
    let report = p.run(&["rehearse", "--output", "json"]).json();
    let ran = &report["services"][0]["migrations"];
    assert_eq!(ran[0]["file"], "0002_backfill.up.sql", "{report}");
    assert_eq!(ran[0]["rows"], 100, "rows touched: {report}");
    assert_eq!(ran[1]["file"], "0003_not_null.up.sql");
    assert_eq!(report["error"]["exit_code"], 6);
    assert_eq!(live_state(&p), before);
    assert_eq!(scratch_databases(&p), "0");
}

#[test]
fn a_killed_rehearsal_leaves_a_scratch_database_that_the_next_run_drops() {
    let p = project("reh_kill");
    p.migration("postgres", "0002_slow.up.sql", "SELECT pg_sleep(60);\n");
    let mut child = p.spawn(&["rehearse"]);
    let prefix = valero_db::engine::scratch_prefix("svc", &p.schema);
    let running = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, '{prefix}') AND query LIKE 'SELECT pg_sleep(60)%'"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while psql(&running) == "0" {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the rehearsal ended early"
        );
        assert!(Instant::now() < deadline, "the migration never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        scratch_databases(&p),
        "1",
        "kill -9 leaves the scratch database"
    );
    // The server ends the orphaned session within a second or two
    // (client_connection_check_interval); then the next run drops it.
    let gone =
        format!("SELECT count(*) FROM pg_stat_activity WHERE starts_with(datname, '{prefix}')");
    let deadline = Instant::now() + Duration::from_secs(15);
    while psql(&gone) != "0" {
        assert!(Instant::now() < deadline, "the orphaned session stays");
        std::thread::sleep(Duration::from_millis(100));
    }
    p.migration("postgres", "0002_slow.up.sql", "SELECT 1;\n");
    p.run(&["rehearse"])
        .ok()
        .stderr_has("left by an earlier rehearsal");
    assert_eq!(scratch_databases(&p), "0");
}

#[tokio::test]
async fn mongodb_commands_are_timed_on_a_scratch_copy_and_stale_leftovers_are_dropped() {
    use bson::{doc, Document};
    let p = Project::new("reh_mongo");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY);\n",
    );
    p.migration(
        "mongodb",
        "0001_events.up.json",
        r#"[{"create": "events"}, {"insert": "events", "documents": [{"_id": 1, "kind": "a"}, {"_id": 2, "kind": "b"}, {"_id": 3, "kind": "a"}]}]"#,
    );
    p.migrate_now();
    p.run(&["snapshot"]).ok();
    p.migration(
        "mongodb",
        "0002_kind.up.json",
        r#"[{"createIndexes": "events", "indexes": [{"key": {"kind": 1}, "name": "kind_1"}]},
            {"update": "events", "updates": [{"q": {"kind": "a"}, "u": {"$set": {"seen": true}}, "multi": true}]}]"#,
    );
    // A scratch database a killed rehearsal left an hour ago, and one a
    // running rehearsal keeps alive.
    let prefix = valero_db::engine::scratch_prefix("svc", &p.mongo_db);
    let client = mongodb::Client::with_uri_str(common::mongo_url())
        .await
        .unwrap();
    let beat = |at: bson::DateTime| doc! {"_id": "heartbeat", "at": at};
    let hour_ago =
        bson::DateTime::from_millis(bson::DateTime::now().timestamp_millis() - 3_600_000);
    let (stale, alive) = (format!("{prefix}old_1"), format!("{prefix}alive_1"));
    for (name, at) in [(&stale, hour_ago), (&alive, bson::DateTime::now())] {
        client
            .database(name)
            .collection::<Document>("valero_rehearsal")
            .insert_one(beat(at))
            .await
            .unwrap();
    }

    let run = p.run(&["rehearse", "--output", "json"]);
    run.ok();
    let report = run.json();
    let mongo = report["services"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["engine"] == "mongodb")
        .unwrap_or_else(|| panic!("no MongoDB rehearsal in {report}"))
        .clone();
    let m = &mongo["migrations"][0];
    assert_eq!(m["file"], "0002_kind.up.json", "{mongo}");
    let commands = m["commands"].as_array().unwrap();
    assert_eq!(commands.len(), 2, "{m}");
    assert_eq!(commands[0]["name"], "createIndexes");
    assert_eq!(commands[1]["name"], "update");
    assert!(commands.iter().all(|c| c["duration_ms"].is_u64()));

    // The live database is untouched: no index, nothing updated, 0002 pending.
    let live = common::mongo(&p.mongo_db).await;
    let mut names = Vec::new();
    let mut cursor = live
        .collection::<Document>("events")
        .list_index_names()
        .await
        .unwrap();
    names.append(&mut cursor);
    assert!(!names.contains(&"kind_1".to_string()), "{names:?}");
    assert_eq!(
        live.collection::<Document>("events")
            .count_documents(doc! {"seen": true})
            .await
            .unwrap(),
        0
    );
    p.run(&["status", "--check"]).expect_code(9);
    let left: Vec<String> = client
        .list_database_names()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect();
    assert_eq!(
        left,
        vec![alive.clone()],
        "the stale leftover and this run's copy are gone"
    );
    client.database(&alive).drop().await.unwrap();
}
