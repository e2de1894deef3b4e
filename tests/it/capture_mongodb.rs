//! MongoDB continuous capture against the real MongoDB-protocol server:
//! inserts, updates, replaces, deletes, a collection created and one dropped
//! before and after T across several segments; restore to T gives the raw
//! BSON of every document exactly as at T.

use crate::common;

use std::time::Duration;

use bson::{doc, Document};

use common::{mongo, tmp_files, Project};

fn project(tag: &str) -> Project {
    let p = Project::new(tag);
    p.write_mongodb_only_config();
    p.migration(
        "mongodb",
        "0001_people.up.json",
        r#"[{"create": "people"}, {"create": "temp"},
            {"insert": "people", "documents": [{"_id": 1, "name": "a", "tags": [1, 2, 3, 4], "addr": {"city": "Köln"}},
                                               {"_id": 2, "name": "b", "n": {"$numberDecimal": "1.50"}},
                                               {"_id": 3, "name": "c"}]},
            {"insert": "temp", "documents": [{"_id": "t"}]}]"#,
    );
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    p
}

/// Every collection's documents as raw BSON, sorted by _id.
async fn state(db: &mongodb::Database) -> Vec<(String, Vec<Vec<u8>>)> {
    common::oracle::mongo_state(db).await
}

fn capture(p: &Project) {
    p.run(&["capture", "--once"]).ok();
}

/// Captures, then marks a time T with the state at T; the next change
/// comes more than a second after T (a pass covers up to a second before
/// it started).
async fn capture_and_mark_t(
    p: &Project,
    db: &mongodb::Database,
) -> (String, Vec<(String, Vec<Vec<u8>>)>) {
    capture(p);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let at_t = state(db).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    (t, at_t)
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_restore_to_a_time_replays_change_events_exactly() {
    let p = project("capm_exact");
    let db = mongo(&p.mongo_db).await;
    let people = db.collection::<Document>("people");
    capture(&p);
    p.run(&["snapshot"]).ok();
    people
        .update_one(
            doc! {"_id": 1},
            doc! {"$set": {"addr.zip": "50667", "name": "A"}, "$unset": {"tags": ""}},
        )
        .await
        .unwrap();
    people
        .insert_one(
            doc! {"_id": 4, "name": "d", "when": bson::DateTime::from_millis(1_700_000_000_123)},
        )
        .await
        .unwrap();
    capture(&p);
    people
        .replace_one(doc! {"_id": 2}, doc! {"_id": 2, "replaced": true})
        .await
        .unwrap();
    people.delete_one(doc! {"_id": 3}).await.unwrap();
    db.collection::<Document>("late")
        .insert_many(vec![doc! {"_id": 1, "v": 1}, doc! {"_id": 2, "v": 2}])
        .await
        .unwrap();
    db.collection::<Document>("temp").drop().await.unwrap();
    capture(&p);
    db.collection::<Document>("late")
        .update_one(doc! {"_id": 2}, doc! {"$set": {"v": 20}})
        .await
        .unwrap();
    let (t, at_t) = capture_and_mark_t(&p, &db).await;
    people.delete_many(doc! {}).await.unwrap();
    db.collection::<Document>("late").drop().await.unwrap();
    db.collection::<Document>("after")
        .insert_one(doc! {"_id": 1})
        .await
        .unwrap();
    capture(&p);
    assert_ne!(state(&db).await, at_t);
    let run = p.run(&["restore", "--timestamp", &t, "--yes"]);
    run.ok().stdout_has("replayed");
    assert_eq!(
        state(&db).await,
        at_t,
        "the restored state differs from the state at T"
    );
    // A restore inside the replay window cannot be replayed across.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    capture(&p);
    let t2 = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    capture(&p);
    p.run(&["restore", "--timestamp", &t2, "--yes"])
        .expect_code(5)
        .stderr_has("a restore ran");
    let status = p.run(&["status", "--output", "json"]).json();
    assert!(
        status["services"][0]["capture"]["lag_seconds"]
            .as_i64()
            .is_some(),
        "{status}"
    );
    // A missing segment is a gap (exit 5), nothing changed.
    let segs = p.capture_segments("mongodb");
    std::fs::remove_dir_all(&segs[1]).unwrap();
    let before = state(&db).await;
    p.run(&["restore", "--timestamp", &t, "--yes"])
        .expect_code(5)
        .stderr_has("gap");
    assert_eq!(state(&db).await, before);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_of_mongodb_capture_mid_segment_loses_and_duplicates_nothing() {
    let p = project("capm_kill");
    let db = mongo(&p.mongo_db).await;
    capture(&p);
    p.run(&["snapshot"]).ok();
    let docs: Vec<Document> = (0..4_000)
        .map(|i| doc! {"_id": i, "pad": "x".repeat(200)})
        .collect();
    db.collection::<Document>("bulk")
        .insert_many(docs)
        .await
        .unwrap();
    let dir = p.path().join("backups/dev/.capture/svc/mongodb");
    // A killed capture's lease blocks the next one until it expires.
    let mut child = p.spawn_with_env(
        &[("VALERO_DB_MONGO_LEASE_TTL", "2")],
        &["capture", "--once"],
    );
    let started = std::time::Instant::now();
    while tmp_files(&dir) == 0 && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert_eq!(
        p.capture_segments("mongodb").len(),
        0,
        "the capture was not killed while writing its segment"
    );
    let (t, at_t) = capture_and_mark_t(&p, &db).await;
    db.collection::<Document>("bulk")
        .delete_many(doc! {"_id": {"$lt": 1000}})
        .await
        .unwrap();
    capture(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(
        db.collection::<Document>("bulk")
            .count_documents(doc! {})
            .await
            .unwrap(),
        4_000
    );
    assert_eq!(state(&db).await, at_t);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_and_recreated_database_replays_to_what_existed_at_t() {
    let p = project("capm_dropdb");
    let db = mongo(&p.mongo_db).await;
    capture(&p);
    p.run(&["snapshot"]).ok();
    db.collection::<Document>("people")
        .insert_one(doc! {"_id": 10})
        .await
        .unwrap();
    db.drop().await.unwrap();
    db.collection::<Document>("fresh")
        .insert_one(doc! {"_id": 1, "v": "after the drop"})
        .await
        .unwrap();
    let (t, at_t) = capture_and_mark_t(&p, &db).await;
    db.collection::<Document>("fresh")
        .insert_one(doc! {"_id": 2})
        .await
        .unwrap();
    capture(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(state(&db).await, at_t);
}

/// Waits until a capture holds the service's lease.
async fn lease_taken(db: &mongodb::Database) {
    let locks = db.collection::<Document>("valero_schema_lock");
    let started = std::time::Instant::now();
    while locks
        .find_one(doc! {"_id": "capture"})
        .await
        .unwrap()
        .is_none()
    {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no capture lease after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn one_mongodb_capture_at_a_time_and_an_abandoned_lease_expires() {
    let p = project("capm_lease");
    let db = mongo(&p.mongo_db).await;
    capture(&p);
    let running = p.spawn(&["capture", "--interval", "500ms"]);
    lease_taken(&db).await;
    p.run(&["--lock-timeout", "1s", "capture", "--once"])
        .expect_code(4)
        .stderr_has("another `valero-db capture`");
    // Changes made meanwhile are the running capture's to ship.
    db.collection::<Document>("people")
        .insert_one(doc! {"_id": 4, "name": "d"})
        .await
        .unwrap();
    let started = std::time::Instant::now();
    while p.capture_segments("mongodb").is_empty() && started.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(p.capture_segments("mongodb").len(), 1);
    unsafe {
        libc::kill(running.id() as i32, libc::SIGTERM);
    }
    let out = running.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        db.collection::<Document>("valero_schema_lock")
            .find_one(doc! {"_id": "capture"})
            .await
            .unwrap()
            .is_none(),
        "the lease was not released"
    );
    capture(&p);

    // Killed: its lease (1 s + two intervals) expires, the next capture
    // takes over.
    let mut abandoned = p.spawn_with_env(
        &[("VALERO_DB_MONGO_LEASE_TTL", "1")],
        &["capture", "--interval", "500ms"],
    );
    lease_taken(&db).await;
    abandoned.kill().unwrap();
    let _ = abandoned.wait();
    let started = std::time::Instant::now();
    p.run(&["--lock-timeout", "30s", "capture", "--once"]).ok();
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "waited {:?} for an abandoned 2 s lease",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_mongodb_capture_whose_lease_was_taken_over_stops_with_exit_4() {
    let p = project("capm_stall");
    let db = mongo(&p.mongo_db).await;
    capture(&p);
    p.run(&["snapshot"]).ok();
    let spawn = |ttl: &str| {
        p.std_cmd()
            .env("VALERO_DB_MONGO_LEASE_TTL", ttl)
            .args(["capture", "--interval", "500ms"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let stalled = spawn("1");
    lease_taken(&db).await;
    unsafe {
        libc::kill(stalled.id() as i32, libc::SIGSTOP);
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let successor = spawn("30");
    let locks = db.collection::<Document>("valero_schema_lock");
    let started = std::time::Instant::now();
    loop {
        let holder = locks.find_one(doc! {"_id": "capture"}).await.unwrap();
        if holder.and_then(|d| d.get_i64("pid").ok()) == Some(successor.id() as i64) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the expired lease was not taken over"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    unsafe {
        libc::kill(stalled.id() as i32, libc::SIGCONT);
    }
    let out = stalled.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("another `valero-db capture`"), "{stderr}");
    unsafe {
        libc::kill(successor.id() as i32, libc::SIGTERM);
    }
    assert_eq!(successor.wait_with_output().unwrap().status.code(), Some(0));
    // The chain the two left behind restores.
    db.collection::<Document>("people")
        .insert_one(doc! {"_id": 5, "name": "e"})
        .await
        .unwrap();
    let (t, at_t) = capture_and_mark_t(&p, &db).await;
    db.collection::<Document>("people")
        .delete_many(doc! {})
        .await
        .unwrap();
    capture(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(state(&db).await, at_t);
}
