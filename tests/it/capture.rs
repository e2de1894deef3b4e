//! Continuous capture and point-in-time restore against the real
//! PostgreSQL server: changes before and after T across several segments,
//! restore to T gives exactly the state at T; a missing segment is exit 5;
//! a kill -9 of capture loses and duplicates nothing; a schema change made
//! outside valero-db stops the replay naming the table.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::{psql, tmp_files, Project};

/// A PostgreSQL-only project (MongoDB capture has its own file, capture_mongodb.rs).
fn project(tag: &str) -> Project {
    // The application's role: its grants travel through snapshots and
    // restores to a time like everything else (`state` compares them).
    common::ensure_role("valero_app");
    let p = Project::new(tag);
    p.write_postgres_only_config("${VALERO_PG_URL}");
    p.migration(
        "postgres",
        "0001_ledger.up.sql",
        "CREATE TABLE accounts (id serial PRIMARY KEY, name text NOT NULL, balance numeric(12,2), meta jsonb, opened timestamptz DEFAULT now());\n\
         CREATE TABLE notes (account int, body text);\n\
         ALTER TABLE notes REPLICA IDENTITY FULL;\n\
         CREATE INDEX ON accounts (name);\n\
         GRANT SELECT, INSERT ON accounts TO valero_app;\n\
         GRANT UPDATE (body) ON notes TO valero_app;\n\
         INSERT INTO accounts (name, balance, meta) SELECT 'acct ' || g, g * 1.5, jsonb_build_object('g', g) FROM generate_series(1, 50) g;\n",
    );
    p.migrate_now();
    p
}

fn sql(p: &Project, statement: &str) -> String {
    psql(&statement.replace("$S", &format!("\"{}\"", p.schema)))
}

/// The schema's DDL with its privileges and every table's rows, as text
/// to compare.
fn state(p: &Project) -> String {
    let ddl = std::process::Command::new(common::oracle::pg_dump_bin())
        .args([
            "--schema-only",
            "--no-owner",
            "-n",
            &p.schema,
            &common::pg_url(),
        ])
        .output()
        .unwrap();
    let ddl: String = String::from_utf8_lossy(&ddl.stdout)
        .lines()
        .filter(|l| {
            !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict") && !l.starts_with("--")
        })
        .collect::<Vec<_>>()
        .join("\n");
    let rows = sql(
        p,
        "SELECT (SELECT string_agg(a::text, E'\\n' ORDER BY a.id) FROM $S.accounts a) || E'\\n--\\n' || \
         coalesce((SELECT string_agg(n::text, E'\\n' ORDER BY n::text) FROM $S.notes n), '')",
    );
    format!("{ddl}\n==\n{rows}")
}

fn now(p: &Project) -> String {
    sql(
        p,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

fn capture(p: &Project) {
    p.run(&["capture", "--once"]).ok();
}

fn segments(p: &Project) -> Vec<PathBuf> {
    p.capture_segments("postgres")
}

fn drop_capture(p: &Project) {
    p.run(&["capture", "--drop", "--yes"]).ok();
}

/// Captures, then marks a time T with the state at T; the next change
/// comes more than a second after T (a pass covers up to a second before
/// it started).
fn capture_and_mark_t(p: &Project) -> (String, String) {
    capture(p);
    std::thread::sleep(Duration::from_millis(300));
    let t = now(p);
    let at_t = state(p);
    std::thread::sleep(Duration::from_millis(1200));
    (t, at_t)
}

/// The reasons of the environment's snapshots.
fn snapshot_reasons(p: &Project) -> Vec<String> {
    let list = p.run(&["snapshots", "list", "--output", "json"]).json();
    list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["reason"].as_str().map(str::to_string))
        .collect()
}

/// Changes before T in three segments, T, changes after T in two more.
fn history(p: &Project) -> (String, String) {
    capture(p);
    p.run(&["snapshot"]).ok();
    sql(
        p,
        "UPDATE $S.accounts SET balance = balance + 10 WHERE id <= 10",
    );
    sql(
        p,
        "INSERT INTO $S.notes VALUES (1, 'first'), (1, 'first'), (2, 'it''s \"quoted\" \\ back')",
    );
    capture(p);
    sql(p, "DELETE FROM $S.accounts WHERE id IN (40, 41)");
    sql(p, "DELETE FROM $S.notes WHERE body = 'first' AND ctid = (SELECT min(ctid) FROM $S.notes WHERE body = 'first')");
    sql(p, "INSERT INTO $S.accounts (name, balance, meta) VALUES ('new', NULL, '{\"nested\": [1, {\"x\": null}]}')");
    capture(p);
    sql(p, "BEGIN; UPDATE $S.accounts SET meta = meta || '{\"t\": 1}' WHERE id = 3; UPDATE $S.notes SET body = 'changed' WHERE account = 2; COMMIT");
    let (t, at_t) = capture_and_mark_t(p);
    sql(p, "UPDATE $S.accounts SET name = 'after T' WHERE id = 1");
    sql(p, "INSERT INTO $S.accounts (name) VALUES ('after T')");
    capture(p);
    sql(p, "DELETE FROM $S.accounts WHERE id = 2; TRUNCATE $S.notes");
    capture(p);
    (t, at_t)
}

#[test]
fn restore_to_a_time_replays_captured_changes_exactly_and_capture_goes_on() {
    let p = project("cap_exact");
    let (t, at_t) = history(&p);
    assert!(segments(&p).len() >= 4, "{:?}", segments(&p));
    assert_ne!(state(&p), at_t);
    let run = p.run(&["restore", "--timestamp", &t, "--yes"]);
    run.ok().stdout_has("replayed");
    assert_eq!(
        state(&p),
        at_t,
        "the restored state differs from the state at T"
    );
    // New rows do not collide with replayed ones (sequences moved up).
    sql(
        &p,
        "INSERT INTO $S.accounts (name) VALUES ('after the restore')",
    );
    // Capture goes on after the restore (the schema is back in the publication).
    capture(&p);
    let t2 = {
        std::thread::sleep(Duration::from_millis(1200));
        now(&p)
    };
    let after = state(&p);
    std::thread::sleep(Duration::from_millis(1200));
    capture(&p);
    // A restore ran in the window since the newest snapshot: refused.
    p.run(&["restore", "--timestamp", &t2, "--yes"])
        .expect_code(5)
        .stderr_has("a restore ran");
    p.run(&["snapshot"]).ok();
    sql(
        &p,
        "UPDATE $S.accounts SET name = 'later' WHERE name = 'after the restore'",
    );
    std::thread::sleep(Duration::from_millis(300));
    let t3 = now(&p);
    let at_t3 = state(&p);
    std::thread::sleep(Duration::from_millis(1200));
    std::thread::sleep(Duration::from_millis(1200));
    sql(&p, "DELETE FROM $S.accounts");
    capture(&p);
    p.run(&["restore", "--timestamp", &t3, "--yes"]).ok();
    assert_eq!(state(&p), at_t3);
    assert_ne!(after, at_t3);
    // status and metrics show the lag and the WAL the slot keeps.
    capture(&p);
    let metrics = p.path().join("m.prom");
    let status = p
        .run(&[
            "status",
            "--output",
            "json",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ])
        .json();
    let lag = &status["services"][0]["capture"];
    assert!(
        lag["lag_seconds"]
            .as_i64()
            .is_some_and(|s| (0..60).contains(&s)),
        "{status}"
    );
    assert!(lag["retained_wal_bytes"].as_i64().is_some(), "{status}");
    let text = std::fs::read_to_string(&metrics).unwrap();
    assert!(
        text.contains(
            "valero_db_capture_lag_seconds{env=\"dev\",service=\"svc\",engine=\"postgres\"}"
        ),
        "{text}"
    );
    let wal_sample = |text: &str| -> f64 {
        let series =
            "valero_db_capture_retained_wal_bytes{env=\"dev\",service=\"svc\",engine=\"postgres\"} ";
        text.lines()
            .find_map(|l| l.strip_prefix(series))
            .unwrap_or_else(|| panic!("no retained-WAL sample in:\n{text}"))
            .parse()
            .unwrap()
    };
    let kept_before = wal_sample(&text);
    // Changes the capture has not shipped keep WAL on the server: the
    // sample grows with them.
    sql(
        &p,
        "INSERT INTO $S.notes SELECT g, repeat('wal', 200) FROM generate_series(1, 20000) g",
    );
    p.run(&["status", "--metrics-file", metrics.to_str().unwrap()])
        .ok();
    let kept_after = wal_sample(&std::fs::read_to_string(&metrics).unwrap());
    assert!(
        kept_after > kept_before + 1_000_000.0,
        "retained WAL {kept_before} -> {kept_after}"
    );
    drop_capture(&p);
    let status = p.run(&["status", "--output", "json"]).json();
    assert!(
        status["services"][0]["capture"]["retained_wal_bytes"].is_null(),
        "{status}"
    );
}

#[test]
fn a_missing_segment_is_exit_5_naming_the_gap_and_snapshot_only_still_works() {
    let p = project("cap_gap");
    let (t, _) = history(&p);
    let segs = segments(&p);
    let aside = p.path().join("aside");
    std::fs::rename(&segs[1], &aside).unwrap();
    let before = state(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"])
        .expect_code(5)
        .stderr_has("gap");
    assert_eq!(state(&p), before, "a refused restore changed the database");
    p.run(&["restore", "--timestamp", &t, "--snapshot-only", "--yes"])
        .ok();
    assert_eq!(sql(&p, "SELECT count(*) FROM $S.accounts"), "50");
    // Times beyond what was captured are a gap too.
    std::fs::rename(&aside, &segs[1]).unwrap();
    p.run(&["restore", "--timestamp", "2999-01-01T00:00:00Z", "--yes"])
        .expect_code(5)
        .stderr_has("captured only up to");
    drop_capture(&p);
}

#[test]
fn kill_9_of_capture_mid_segment_loses_and_duplicates_nothing() {
    let p = project("cap_kill");
    capture(&p);
    p.run(&["snapshot"]).ok();
    sql(
        &p,
        "INSERT INTO $S.notes SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 150000) g",
    );
    sql(&p, "UPDATE $S.accounts SET balance = 0 WHERE id = 5");
    let dir = p.path().join("backups/dev/.capture/svc/postgres");
    let mut child = p.spawn(&["capture", "--once"]);
    let started = std::time::Instant::now();
    while tmp_files(&dir) == 0 && started.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap();
    let _ = child.wait();
    assert!(
        segments(&p).is_empty(),
        "a killed capture left a complete segment"
    );
    let (t, at_t) = capture_and_mark_t(&p);
    sql(&p, "DELETE FROM $S.notes WHERE account < 1000");
    capture(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(sql(&p, "SELECT count(*) FROM $S.notes"), "150000");
    assert_eq!(state(&p), at_t);
    drop_capture(&p);
}

#[test]
fn a_schema_change_outside_valero_db_stops_the_replay_naming_the_table() {
    let p = project("cap_ddl");
    capture(&p);
    p.run(&["snapshot"]).ok();
    sql(&p, "ALTER TABLE $S.accounts ADD COLUMN rogue int");
    sql(&p, "INSERT INTO $S.accounts (name, rogue) VALUES ('x', 1)");
    capture(&p);
    std::thread::sleep(Duration::from_millis(1200));
    let t = now(&p);
    std::thread::sleep(Duration::from_millis(1200));
    capture(&p);
    let before = state(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"])
        .expect_code(5)
        .stderr_has("accounts")
        .stderr_has("outside valero-db");
    assert_eq!(state(&p), before);
    drop_capture(&p);
}

#[test]
fn prune_removes_only_segments_older_than_every_kept_snapshot() {
    let p = project("cap_prune");
    let (_, _) = history(&p);
    let before = segments(&p).len();
    // A newer snapshot, then changes after it.
    p.run(&["snapshot"]).ok();
    sql(
        &p,
        "UPDATE $S.accounts SET name = 'after the last snapshot' WHERE id = 7",
    );
    let (t, at_t) = capture_and_mark_t(&p);
    sql(&p, "DELETE FROM $S.accounts WHERE id = 7");
    capture(&p);
    let pruned = p
        .run(&[
            "snapshots",
            "prune",
            "--keep-last",
            "1",
            "--yes",
            "--output",
            "json",
        ])
        .json();
    let removed = pruned["capture_segments_removed"].as_array().unwrap().len();
    assert!(removed >= before, "{pruned}");
    assert_eq!(
        segments(&p).len(),
        2,
        "the segments after the kept snapshot stay"
    );
    // Capture goes on after the prune, continuing the chain where it ended
    // (not where the pruned segments began).
    sql(
        &p,
        "UPDATE $S.accounts SET name = 'after the prune' WHERE id = 8",
    );
    let (t2, at_t2) = capture_and_mark_t(&p);
    sql(&p, "DELETE FROM $S.accounts WHERE id = 8");
    capture(&p);
    p.run(&["restore", "--timestamp", &t2, "--yes"]).ok();
    assert_eq!(state(&p), at_t2, "a time after the prune");
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(state(&p), at_t);
    drop_capture(&p);
}

#[test]
fn capture_runs_until_sigterm_shipping_every_interval_and_exits_0() {
    let p = project("cap_loop");
    let child = p
        .std_cmd()
        .args(["capture", "--interval", "500ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    sql(
        &p,
        "INSERT INTO $S.accounts (name) VALUES ('while running')",
    );
    let started = std::time::Instant::now();
    while segments(&p).is_empty() && started.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        segments(&p).len(),
        1,
        "the change was not shipped within the interval"
    );
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 transactions"));
    drop_capture(&p);
}

#[test]
fn a_migration_after_the_snapshot_is_covered_by_the_post_migrate_snapshot() {
    let p = project("cap_migr");
    capture(&p);
    p.run(&["snapshot"]).ok();
    sql(&p, "UPDATE $S.accounts SET balance = 1 WHERE id = 1");
    p.migration(
        "postgres",
        "0002_currency.up.sql",
        "ALTER TABLE accounts ADD COLUMN currency text NOT NULL DEFAULT 'EUR';\nUPDATE accounts SET balance = balance * 2;\n",
    );
    let run = p.run(&["migrate"]);
    run.ok();
    let reasons = snapshot_reasons(&p);
    assert!(reasons.iter().any(|r| r == "post-migrate"), "{reasons:?}");
    sql(
        &p,
        "INSERT INTO $S.accounts (name, currency) VALUES ('usd', 'USD')",
    );
    let (t, at_t) = capture_and_mark_t(&p);
    sql(&p, "DELETE FROM $S.accounts WHERE currency = 'USD'");
    capture(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(state(&p), at_t);
    drop_capture(&p);
}

#[test]
fn a_rollback_after_the_snapshot_is_covered_by_the_post_rollback_snapshot() {
    let p = project("cap_rollb");
    p.migration(
        "postgres",
        "0002_currency.up.sql",
        "ALTER TABLE accounts ADD COLUMN currency text NOT NULL DEFAULT 'EUR';\n",
    );
    p.migration(
        "postgres",
        "0002_currency.down.sql",
        "ALTER TABLE accounts DROP COLUMN currency;\n",
    );
    p.migrate_now();
    capture(&p);
    p.run(&["snapshot"]).ok();
    sql(&p, "UPDATE $S.accounts SET balance = 1 WHERE id = 1");
    p.run(&["rollback", "--to", "1", "--yes"]).ok();
    let reasons = snapshot_reasons(&p);
    assert!(reasons.iter().any(|r| r == "post-rollback"), "{reasons:?}");
    sql(
        &p,
        "INSERT INTO $S.accounts (name) VALUES ('after the rollback')",
    );
    let (t, at_t) = capture_and_mark_t(&p);
    sql(
        &p,
        "DELETE FROM $S.accounts WHERE name = 'after the rollback'",
    );
    capture(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(state(&p), at_t);
    drop_capture(&p);
}

#[test]
fn capture_in_a_loop_reconnects_when_the_database_goes_away_and_comes_back() {
    let p = project("cap_blip");
    capture(&p);
    p.run(&["snapshot"]).ok();
    let pg = url::Url::parse(&common::pg_url()).unwrap();
    let blip = common::Blip::start(pg.port().unwrap());
    let mut through = pg.clone();
    through.set_port(Some(blip.port())).unwrap();
    let log = p.path().join("capture.log");
    let child = p
        .std_cmd()
        .env("VALERO_PG_URL", through.as_str())
        .args(["capture", "--interval", "500ms"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let shipped = |n: usize| {
        let started = std::time::Instant::now();
        while segments(&p).len() < n && started.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(segments(&p).len(), n, "no new segment within 30 s");
    };
    sql(
        &p,
        "INSERT INTO $S.accounts (name) VALUES ('before the blip')",
    );
    shipped(1);
    std::thread::sleep(Duration::from_millis(500));
    blip.cut();
    sql(
        &p,
        "INSERT INTO $S.accounts (name) VALUES ('during the blip')",
    );
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(segments(&p).len(), 1);
    blip.restore();
    shipped(2);
    std::thread::sleep(Duration::from_millis(300));
    let t = now(&p);
    let at_t = state(&p);
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("reconnecting in"), "{stderr}");
    // The report counts completed passes: a pass cut between storing its
    // segment and moving the slot on is finished by the next one.
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("changes captured"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    std::thread::sleep(Duration::from_millis(1200));
    sql(&p, "DELETE FROM $S.accounts");
    capture(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(state(&p), at_t);
    drop_capture(&p);
}

#[test]
fn capture_says_clearly_when_wal_level_is_not_logical() {
    // The TLS-only cluster of scripts/services.sh runs with wal_level=replica.
    let p = Project::new("cap_wal");
    p.write_postgres_only_config("${VALERO_PG_TLS_URL}");
    p.run(&["capture", "--once"])
        .expect_code(2)
        .stderr_has("wal_level = logical")
        .stderr_has("restart PostgreSQL");
}

#[test]
fn a_restore_of_another_service_in_the_same_database_does_not_block_replay() {
    let p = project("cap_two");
    let other = format!("{}_other", p.schema);
    let config = std::fs::read_to_string(p.config_path()).unwrap();
    p.write_raw_config(&format!(
        "{config}\n[services.other]\npostgres = {{ url = \"${{VALERO_PG_URL}}\", schema = \"{other}\" }}\n"
    ));
    p.migration_for(
        "other",
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY);\n",
    );
    p.run(&["-s", "other", "migrate", "--no-snapshot", "--yes"])
        .ok();
    p.run(&["-s", "other", "snapshot"]).ok();
    capture(&p);
    p.run(&["-s", "svc", "snapshot"]).ok();
    sql(
        &p,
        "UPDATE $S.accounts SET name = 'before the other restore' WHERE id = 1",
    );
    let snap = p
        .run(&["-s", "other", "snapshots", "list", "--output", "json"])
        .json();
    let id = snap["snapshots"][0]["id"].as_str().unwrap().to_string();
    p.run(&["-s", "other", "restore", "--snapshot", &id, "--yes"])
        .ok();
    sql(
        &p,
        "UPDATE $S.accounts SET name = 'after the other restore' WHERE id = 2",
    );
    let (t, at_t) = capture_and_mark_t(&p);
    std::thread::sleep(Duration::from_millis(1200));
    sql(&p, "DELETE FROM $S.accounts");
    capture(&p);
    p.run(&["-s", "svc", "restore", "--timestamp", &t, "--yes"])
        .ok();
    assert_eq!(state(&p), at_t);
    psql(&format!("DROP SCHEMA IF EXISTS \"{other}\" CASCADE"));
    drop_capture(&p);
}

#[test]
fn a_restore_to_a_time_never_hands_out_a_sequence_value_twice() {
    let p = project("cap_seq");
    // A sequence no column owns: receipt numbers drawn by the application.
    p.migration(
        "postgres",
        "0002_receipts.up.sql",
        "CREATE SEQUENCE receipt_no;\n",
    );
    p.migrate_now();
    capture(&p);
    p.run(&["snapshot"]).ok();
    sql(
        &p,
        "INSERT INTO $S.accounts (name) SELECT 'more ' || g FROM generate_series(1, 300) g",
    );
    sql(
        &p,
        "SELECT nextval('$S.receipt_no') FROM generate_series(1, 5)",
    );
    // The highest ids handed out before T are gone by T.
    sql(&p, "DELETE FROM $S.accounts WHERE id > 340");
    let (t, at_t) = capture_and_mark_t(&p);
    capture(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(state(&p), at_t);
    assert_eq!(sql(&p, "SELECT max(id) FROM $S.accounts"), "340");
    // Every value handed out by T stays used: the next ones are new.
    let id = sql(
        &p,
        "INSERT INTO $S.accounts (name) VALUES ('after') RETURNING id",
    );
    assert_eq!(id.lines().next(), Some("351"));
    assert_eq!(sql(&p, "SELECT nextval('$S.receipt_no')"), "6");
    drop_capture(&p);
}

/// The rows of the ledger table with every column, generated ones too.
fn ledger(p: &Project) -> String {
    sql(
        p,
        "SELECT coalesce(string_agg(l::text, ' ' ORDER BY l.id), '') FROM $S.ledger l",
    )
}

#[test]
fn identity_columns_replay_inserts_updates_and_deletes() {
    let p = project("cap_identity");
    p.migration(
        "postgres",
        "0002_ledger.up.sql",
        "CREATE TABLE ledger (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, amount int NOT NULL, note text, \
         doubled int GENERATED ALWAYS AS (amount * 2) STORED);\n\
         INSERT INTO ledger (amount, note) SELECT g, 'n' || g FROM generate_series(1, 5) g;\n",
    );
    p.migrate_now();
    capture(&p);
    p.run(&["snapshot"]).ok();
    sql(
        &p,
        "INSERT INTO $S.ledger (amount, note) VALUES (6, 'six'), (7, 'seven')",
    );
    sql(
        &p,
        "UPDATE $S.ledger SET amount = amount + 100, note = 'changed' WHERE id IN (2, 6)",
    );
    sql(&p, "DELETE FROM $S.ledger WHERE id = 3");
    sql(&p, "UPDATE $S.ledger SET note = NULL WHERE id = 1");
    let (t, at_t) = capture_and_mark_t(&p);
    let rows_at_t = ledger(&p);
    sql(&p, "INSERT INTO $S.ledger (amount) VALUES (8)");
    sql(&p, "DELETE FROM $S.ledger WHERE id = 2");
    capture(&p);
    p.run(&["restore", "--timestamp", &t, "--yes"]).ok();
    assert_eq!(ledger(&p), rows_at_t);
    assert_eq!(state(&p), at_t, "the catalog (identity ALWAYS) and rows");
    // The identity is ALWAYS again and goes on after every value used.
    let next = sql(&p, "INSERT INTO $S.ledger (amount) VALUES (9) RETURNING id");
    let next: i64 = next.lines().next().unwrap().parse().unwrap();
    assert!(next > 8, "identity reissued {next}");
    let explicit = std::process::Command::new("psql")
        .arg(common::pg_url())
        .args(["-X", "-q", "-c"])
        .arg(format!(
            "INSERT INTO \"{}\".ledger (id, amount) VALUES (1000, 1)",
            p.schema
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&explicit.stderr).contains("cannot insert a non-DEFAULT value"),
        "{}",
        String::from_utf8_lossy(&explicit.stderr)
    );
    drop_capture(&p);
}
