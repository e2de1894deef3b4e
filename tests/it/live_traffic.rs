//! Migrations, rollbacks, restores and a deploy's database rollback under
//! live traffic: an application session holding a transaction open on the
//! service's tables. valero-db never hangs behind it and never stalls the
//! application for longer than one lock attempt; it names the session and
//! ends with exit 4 and nothing changed, retries until the session is gone,
//! or ends the session when told to (`--terminate-sessions --yes`).

use crate::common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::{psql, Project};

/// An application session: `psql` under its own application_name, holding
/// a transaction open after `sql`, until dropped.
struct AppSession {
    child: std::process::Child,
    pid: String,
}

impl AppSession {
    fn hold(app: &str, sql: &str) -> AppSession {
        let mut child = std::process::Command::new("psql")
            .arg(common::pg_url())
            .args(["-X", "-q"])
            .env("PGAPPNAME", app)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = writeln!(stdin, "BEGIN;\n{sql};");
            let _ = stdin.flush();
        }
        // From here on, Drop ends the psql process whatever happens.
        let mut session = AppSession {
            child,
            pid: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while session.pid.is_empty() {
            assert!(
                Instant::now() < deadline,
                "the application session never started"
            );
            std::thread::sleep(Duration::from_millis(50));
            session.pid = psql(&format!(
                "SELECT pid FROM pg_stat_activity WHERE application_name = '{app}' AND state = 'idle in transaction'"
            ));
        }
        session
    }
}

impl Drop for AppSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The application's query; it gives up after 10 s, so a restore that
/// stalls the application fails the test instead of hanging it.
fn count(p: &Project) -> String {
    let out = psql(&format!(
        "SET statement_timeout = '10s'; SELECT count(*) FROM \"{}\".t",
        p.schema
    ));
    out.lines().last().unwrap_or_default().to_string()
}

#[test]
fn a_restore_blocked_by_the_application_names_it_and_never_stalls_it_for_long() {
    let p = Project::new("lt_restore");
    let id = table_of_100(&p);
    psql(&format!("DELETE FROM \"{}\".t WHERE id > 10", p.schema));
    let app_name = format!("fibu-api-{}", p.schema);
    // The application's query carries customer data in its literals.
    let app = AppSession::hold(
        &app_name,
        &format!(
            "SELECT count(*) FROM \"{}\".t WHERE id < 4711 OR 'kundin@beispiel.de' <> ''",
            p.schema
        ),
    );

    // While the restore keeps trying, a third session's query waits at
    // most one lock attempt (2 s), never the whole --lock-timeout.
    let mut restore = p.spawn(&[
        "restore",
        "--snapshot",
        &id,
        "--yes",
        "--lock-timeout",
        "8s",
    ]);
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..3 {
        let started = Instant::now();
        assert_eq!(count(&p), "10");
        assert!(
            started.elapsed() < Duration::from_millis(3500),
            "the application waited {:?} behind the restore",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(700));
    }
    let status = restore.wait().unwrap();
    assert_eq!(status.code(), Some(4), "{status}");

    // The refusal names the session, changes nothing, and says what to do.
    let started = Instant::now();
    let refused = p.run(&[
        "restore",
        "--snapshot",
        &id,
        "--yes",
        "--lock-timeout",
        "3s",
    ]);
    assert!(
        !refused.all().contains("kundin@beispiel.de") && !refused.all().contains("4711"),
        "the application's literals never appear: {}",
        refused.all()
    );
    refused
        .expect_code(4)
        .stderr_has(&format!("pid {}", app.pid))
        .stderr_has(&format!("application {app_name}"))
        .stderr_has("idle in transaction")
        .stderr_has("WHERE id < $1 OR $2 <> $3")
        .stderr_has("--terminate-sessions");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert_eq!(count(&p), "10", "nothing was changed");

    // Told to, the restore ends the session and goes through.
    let run = p.run(&[
        "restore",
        "--snapshot",
        &id,
        "--yes",
        "--terminate-sessions",
        "--output",
        "json",
    ]);
    run.ok();
    let terminated = run.json()["services"][0]["restored"][0]["terminated_sessions"].to_string();
    assert!(
        terminated.contains(&format!("pid {}", app.pid)),
        "{terminated}"
    );
    assert_eq!(count(&p), "100");
}

#[test]
fn a_blocker_that_commits_while_the_restore_waits_lets_it_through() {
    let p = Project::new("lt_commit");
    let id = table_of_100(&p);
    psql(&format!("DELETE FROM \"{}\".t WHERE id > 10", p.schema));
    let app = AppSession::hold(
        &format!("report-{}", p.schema),
        &format!("SELECT count(*) FROM \"{}\".t", p.schema),
    );
    let mut restore = p.spawn(&[
        "restore",
        "--snapshot",
        &id,
        "--yes",
        "--lock-timeout",
        "60s",
    ]);
    std::thread::sleep(Duration::from_secs(3));
    drop(app); // the report ends
    let status = restore.wait().unwrap();
    assert!(status.success(), "{status}");
    assert_eq!(count(&p), "100");
}

/// The table `t` with ids 1..=100, migrated, and a snapshot of it.
fn table_of_100(p: &Project) -> String {
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY);\nINSERT INTO t SELECT generate_series(1, 100);\n",
    );
    p.migrate_and_snapshot()
}

/// Sets the dev environment's `migration_lock_timeout` and `_retries`.
fn migration_locks(p: &Project, timeout: &str, retries: u32) {
    let text = std::fs::read_to_string(p.config_path()).unwrap();
    let text = text.replacen(
        "[environments.dev]\n",
        &format!(
            "[environments.dev]\nmigration_lock_timeout = \"{timeout}\"\nmigration_lock_retries = {retries}\n"
        ),
        1,
    );
    std::fs::write(p.config_path(), text).unwrap();
}

/// Runs valero-db in the background with stderr kept.
fn spawn_logged(p: &Project, args: &[&str]) -> std::process::Child {
    p.std_cmd()
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn valero-db")
}

/// Whether column `c` of `t` exists.
fn has_column_c(p: &Project) -> bool {
    psql(&format!(
        "SELECT count(*) FROM information_schema.columns WHERE table_schema = '{}' AND table_name = 't' AND column_name = 'c'",
        p.schema
    )) == "1"
}

/// A session reading `t` in an open transaction.
fn reader(p: &Project, app: &str) -> AppSession {
    AppSession::hold(app, &format!("SELECT count(*) FROM \"{}\".t", p.schema))
}

#[test]
fn a_migration_blocked_by_the_application_retries_then_names_it_and_never_stalls_it_for_long() {
    let p = Project::new("lt_migrate");
    table_of_100(&p);
    migration_locks(&p, "1s", 2);
    p.migration(
        "postgres",
        "0002_c.up.sql",
        "ALTER TABLE t ADD COLUMN c int;\n",
    );
    p.migration(
        "postgres",
        "0002_c.down.sql",
        "ALTER TABLE t DROP COLUMN c;\n",
    );
    let app_name = format!("fibu-api-{}", p.schema);
    let app = reader(&p, &app_name);

    // Three attempts of 1 s with pauses of 1 s and 2 s: while the migration
    // keeps trying, the application's queries wait at most one attempt.
    let started = Instant::now();
    let migrate = spawn_logged(&p, &["migrate", "--yes", "--no-snapshot"]);
    let mut longest = Duration::ZERO;
    while started.elapsed() < Duration::from_secs(5) {
        let asked = Instant::now();
        assert_eq!(count(&p), "100");
        longest = longest.max(asked.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        longest < Duration::from_millis(2500),
        "the application waited {longest:?} behind the migration"
    );
    let out = migrate.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    for needle in [
        "retry 1 of 2",
        "retry 2 of 2",
        "in each of 3 attempts",
        &format!("pid {}", app.pid),
        &format!("application {app_name}"),
        "idle in transaction",
        "nothing of this migration was applied",
    ] {
        assert!(stderr.contains(needle), "no '{needle}' in: {stderr}");
    }
    assert!(!has_column_c(&p), "nothing was applied");

    // Once the session is gone, the same migration applies; a rollback
    // then meets the next such session the same way.
    drop(app);
    p.run(&["migrate", "--yes", "--no-snapshot"]).ok();
    assert!(has_column_c(&p));
    let app = reader(&p, &app_name);
    p.run(&["rollback", "--to", "1", "--yes", "--no-snapshot"])
        .expect_code(4)
        .stderr_has(&format!("pid {}", app.pid))
        .stderr_has("0002_c.down.sql");
    assert!(has_column_c(&p), "the rollback changed nothing");
}

#[test]
fn a_blocker_that_commits_while_the_migration_retries_lets_it_through() {
    let p = Project::new("lt_mcommit");
    table_of_100(&p);
    migration_locks(&p, "1s", 5);
    p.migration(
        "postgres",
        "0002_c.up.sql",
        "ALTER TABLE t ADD COLUMN c int;\n",
    );
    let app = reader(&p, &format!("report-{}", p.schema));
    let migrate = spawn_logged(&p, &["migrate", "--yes", "--no-snapshot"]);
    std::thread::sleep(Duration::from_millis(2500));
    drop(app); // the report ends
    let out = migrate.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("retry 1 of 5"), "{stderr}");
    assert!(has_column_c(&p));
}

#[test]
fn a_no_transaction_migration_reports_what_it_waits_for() {
    let p = Project::new("lt_cic");
    table_of_100(&p);
    p.migration(
        "postgres",
        "0002_i.up.sql",
        "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY t_id_i ON t (id);\n",
    );
    // An open write transaction: the index build waits for it to end.
    let app_name = format!("writer-{}", p.schema);
    let app = AppSession::hold(
        &app_name,
        &format!("INSERT INTO \"{}\".t VALUES (1000)", p.schema),
    );
    let migrate = spawn_logged(&p, &["migrate", "--yes", "--no-snapshot"]);
    std::thread::sleep(Duration::from_secs(3));
    drop(app);
    let out = migrate.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("0002_i.up.sql: waiting"), "{stderr}");
    assert!(
        stderr.contains(&format!("application {app_name}")),
        "{stderr}"
    );
}

#[test]
fn a_deploy_whose_database_rollback_is_blocked_says_what_blocked_it_and_what_to_run() {
    let p = Project::new("lt_deploy");
    table_of_100(&p);
    p.migration(
        "postgres",
        "0002_c.up.sql",
        "ALTER TABLE t ADD COLUMN c int;\n",
    );
    // The new release's pods start (a session reading t for 30 s), then
    // the rollout fails: the database rollback meets that session.
    let app_name = format!("fibu-v2-{}", p.schema);
    let rollout = format!(
        "PGAPPNAME={app_name} psql \"$VALERO_PG_URL\" -X -q -c 'BEGIN; SELECT count(*) FROM \"{}\".t; SELECT pg_sleep(30);' >/dev/null 2>&1 & sleep 1; exit 1",
        p.schema
    );
    let run = p.run(&[
        "deploy",
        "--release",
        "v2",
        "--lock-timeout",
        "3s",
        "--",
        "sh",
        "-c",
        &rollout,
    ]);
    run.expect_code(7)
        .stderr_has("rolling the databases back FAILED")
        .stderr_has(&format!("application {app_name}"))
        .stderr_has("--terminate-sessions")
        .stderr_has("valero-db restore -e dev -s svc --snapshot");
    assert!(has_column_c(&p), "the database rollback changed nothing");

    // What the report says to run works.
    let report = run.all();
    let snapshot = report
        .split("--snapshot ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("a snapshot id in the hint")
        .to_string();
    p.run(&[
        "restore",
        "-s",
        "svc",
        "--snapshot",
        &snapshot,
        "--yes",
        "--terminate-sessions",
    ])
    .ok()
    .stderr_has(&format!("application {app_name}"));
    assert!(!has_column_c(&p));
}

#[test]
fn terminate_sessions_needs_yes() {
    let p = Project::new("lt_yes");
    p.run(&["restore", "--snapshot", "x", "--terminate-sessions"])
        .expect_code(2)
        .stderr_has("--yes");
}
