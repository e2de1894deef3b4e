//! A restore under live traffic: an application session holding a read
//! transaction open on the service's tables. The restore never hangs behind
//! it and never stalls the application for longer than one lock attempt; it
//! names the session and ends with exit 4 and nothing changed, or ends the
//! session when told to (`--terminate-sessions --yes`).

mod common;

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
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY);\nINSERT INTO t SELECT generate_series(1, 100);\n",
    );
    let id = p.migrate_and_snapshot();
    psql(&format!("DELETE FROM \"{}\".t WHERE id > 10", p.schema));
    let app_name = format!("fibu-api-{}", p.schema);
    let app = AppSession::hold(
        &app_name,
        &format!("SELECT count(*) FROM \"{}\".t", p.schema),
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
    p.run(&[
        "restore",
        "--snapshot",
        &id,
        "--yes",
        "--lock-timeout",
        "3s",
    ])
    .expect_code(4)
    .stderr_has(&format!("pid {}", app.pid))
    .stderr_has(&format!("application {app_name}"))
    .stderr_has("idle in transaction")
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
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (id int PRIMARY KEY);\nINSERT INTO t SELECT generate_series(1, 100);\n",
    );
    let id = p.migrate_and_snapshot();
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

#[test]
fn terminate_sessions_needs_yes() {
    let p = Project::new("lt_yes");
    p.run(&["restore", "--snapshot", "x", "--terminate-sessions"])
        .expect_code(2)
        .stderr_has("--yes");
}
