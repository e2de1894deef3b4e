//! deploy, pipeline hooks, releases, rollback --release, check and metrics
//! against the real servers.

use crate::common;

use common::oracle::snapshot_ids;

use common::release::{state, v1, v1_deployed_then_v2_pending, v2};
use common::{psql, Project};

#[test]
fn a_deploy_whose_rollout_succeeds_migrates_and_records_the_release() {
    let p = Project::new("d_ok");
    v1(&p);
    let marker = p.path().join("rolled-out");
    let run = p.run(&[
        "deploy",
        "--release",
        "v1.0.0",
        "--output",
        "json",
        "--",
        "sh",
        "-c",
        &format!(
            "echo \"$VALERO_DB_RELEASE $VALERO_DB_ENV $VALERO_DB_DEPLOYMENT_ID\" > {}",
            marker.display()
        ),
    ]);
    run.ok();
    let doc = run.json();
    assert_eq!(doc["state"], "succeeded");
    let written = std::fs::read_to_string(&marker).unwrap();
    assert!(written.starts_with("v1.0.0 dev "), "{written}");
    assert!(written.trim().ends_with(doc["id"].as_str().unwrap()));
    assert_eq!(state(&p), "1 | a=100,b=250 | 2");
    assert_eq!(
        psql(&format!(
            "SELECT release FROM \"{}\".valero_schema_history",
            p.schema
        )),
        "v1.0.0"
    );
    let releases = p.run(&["releases", "--output", "json"]);
    releases.ok();
    assert_eq!(releases.json()["deployments"][0]["release"], "v1.0.0");
}

#[test]
fn a_deploy_whose_verify_fails_runs_the_rollback_command_and_restores_the_databases_exactly() {
    let p = Project::new("d_verify");
    let before = v1_deployed_then_v2_pending(&p);
    let rollback_marker = p.path().join("rollback-ran");
    let run = p.run(&[
        "deploy",
        "--release",
        "v1.1.0",
        "--verify",
        "exit 3",
        "--rollback-cmd",
        &format!("touch {}", rollback_marker.display()),
        "--output",
        "json",
        "--",
        "true",
    ]);
    run.expect_code(7).stderr_has("rolled back");
    assert!(rollback_marker.exists(), "the rollback command ran");
    assert_eq!(
        state(&p),
        before,
        "databases exactly as before, data included"
    );
    let doc = run.json();
    assert_eq!(doc["state"], "rolled-back");
    assert_eq!(doc["error"]["exit_code"], 7);
}

#[test]
fn a_deploy_whose_rollout_fails_is_rolled_back_with_down_migrations_on_request() {
    let p = Project::new("d_rollout");
    let before = v1_deployed_then_v2_pending(&p);
    let run = p.run(&[
        "deploy",
        "--release",
        "v1.1.0",
        "--on-failure",
        "down",
        "--",
        "sh",
        "-c",
        "exit 42",
    ]);
    run.expect_code(7).stderr_has("exited with 42");
    assert_eq!(state(&p), before);
    // The down migrations ran after a verified snapshot of what they dropped.
    let reasons: Vec<String> = snapshot_ids(&p, "dev")
        .into_iter()
        .map(|(_, r)| r)
        .collect();
    assert!(reasons.iter().any(|r| r == "pre-rollback"), "{reasons:?}");
}

#[test]
fn a_deploy_into_a_protected_environment_needs_yes_up_front() {
    let p = Project::new("d_prot");
    v1(&p);
    let marker = p.path().join("rolled-out");
    let touch = format!("touch {}", marker.display());
    p.run(&[
        "-e",
        "prod",
        "deploy",
        "--release",
        "v1.0.0",
        "--",
        "sh",
        "-c",
        &touch,
    ])
    .expect_code(2)
    .stderr_has("protected")
    .stderr_has("restores them to the pre-deploy snapshots")
    .stderr_has("--yes");
    p.run(&["-e", "prod", "hook", "pre-deploy", "--release", "v1.0.0"])
        .expect_code(2)
        .stderr_has("protected");
    assert!(!marker.exists(), "no rollout ran");
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname = '{}'",
            p.schema
        )),
        "0",
        "nothing was migrated"
    );
    p.run(&[
        "-e",
        "prod",
        "deploy",
        "--release",
        "v1.0.0",
        "--yes",
        "--",
        "sh",
        "-c",
        &touch,
    ])
    .ok();
    assert!(marker.exists());
    assert_eq!(state(&p), "1 | a=100,b=250 | 2");
}

#[test]
fn a_failed_preflight_changes_nothing_and_runs_no_rollout() {
    let p = Project::new("d_pre");
    v1(&p);
    p.migrate_now();
    p.migration(
        "postgres",
        "0001_prices.up.sql",
        "CREATE TABLE prices (sku text);\n",
    );
    v2(&p);
    let marker = p.path().join("should-not-exist");
    p.run(&[
        "deploy",
        "--release",
        "v2",
        "--",
        "touch",
        marker.to_str().unwrap(),
    ])
    .expect_code(5);
    assert!(!marker.exists());
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM \"{}\".valero_schema_history",
            p.schema
        )),
        "1"
    );
}

#[test]
fn hooks_pre_then_post_failure_restore_the_pre_deploy_state() {
    let p = Project::new("d_hooks");
    v1(&p);
    p.run(&["hook", "pre-deploy", "--release", "v1.0.0"]).ok();
    p.run(&[
        "hook",
        "post-deploy",
        "--release",
        "v1.0.0",
        "--result",
        "success",
    ])
    .ok();
    let before = state(&p);
    v2(&p);
    p.run(&["hook", "pre-deploy", "--release", "v1.1.0"]).ok();
    assert_eq!(state(&p), "1,2 | a=200,b=500 | 3");
    p.run(&[
        "hook",
        "post-deploy",
        "--release",
        "v1.1.0",
        "--result",
        "failure",
    ])
    .expect_code(7);
    assert_eq!(state(&p), before);
    // A retried post-deploy repeats the result and does nothing again.
    p.run(&[
        "hook",
        "post-deploy",
        "--release",
        "v1.1.0",
        "--result",
        "failure",
    ])
    .expect_code(7)
    .stderr_has("already ended: rolled-back");
    assert_eq!(state(&p), before);
}

#[test]
fn rollback_release_brings_every_service_back_to_that_releases_versions() {
    let p = Project::new("d_relback");
    v1(&p);
    p.run(&["deploy", "--release", "v1.0.0", "--", "true"]).ok();
    let v1_state = state(&p);
    v2(&p);
    p.run(&["deploy", "--release", "v1.1.0", "--", "true"]).ok();
    assert_ne!(state(&p), v1_state);
    p.run(&["rollback", "--release", "v1.0.0", "--yes"]).ok();
    assert_eq!(state(&p), v1_state);
    p.run(&["rollback", "--release", "v9.9.9", "--yes"])
        .expect_code(2)
        .stderr_has("no successful deployment");
}

#[test]
fn check_is_exit_9_with_pending_migrations_and_0_when_ready() {
    let p = Project::new("d_check");
    v1(&p);
    let run = p.run(&["check", "--output", "json"]);
    run.expect_code(9);
    assert_eq!(run.json()["ready"], false);
    p.migrate_now();
    p.run(&["check"]).expect_code(9).stdout_has("no snapshot");
    p.run(&["snapshot"]).ok();
    p.run(&["check", "--max-age", "1h"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(2100));
    p.run(&["check", "--max-age", "1s"]).expect_code(9);
}

#[test]
fn the_metrics_file_is_prometheus_text_format() {
    let p = Project::new("d_metrics");
    v1(&p);
    let path = p.path().join("valero.prom");
    p.run(&[
        "deploy",
        "--release",
        "v1.0.0",
        "--metrics-file",
        path.to_str().unwrap(),
        "--",
        "true",
    ])
    .ok();
    let text = std::fs::read_to_string(&path).unwrap();
    let mut samples = 0;
    for line in text.lines() {
        // HELP, TYPE and the encoder's closing `# EOF` (a comment to the
        // text format's readers).
        if line.starts_with("# ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line}"));
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line}"));
        let (name, labels) = series
            .split_once('{')
            .unwrap_or_else(|| panic!("no labels in {line}"));
        assert!(
            name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
            "{line}"
        );
        assert!(labels.ends_with('}'), "{line}");
        samples += 1;
    }
    assert!(
        text.contains(
            "valero_db_snapshot_last_success_timestamp_seconds{env=\"dev\",service=\"svc\"}"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "valero_db_schema_version{env=\"dev\",service=\"svc\",engine=\"postgres\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("valero_db_deploy_last_success{env=\"dev\",release=\"v1.0.0\"} 1"),
        "{text}"
    );
    assert!(samples >= 6);
    assert!(!text.contains(&common::pg_password()));
}

#[test]
fn completions_are_generated() {
    let p = Project::new("d_compl");
    for shell in ["bash", "zsh", "fish"] {
        let run = p.run(&["completions", shell]);
        run.ok();
        assert!(run.stdout.contains("valero-db"), "{shell}");
    }
}

#[test]
fn metrics_are_pushed_to_a_pushgateway() {
    use std::io::{Read, Write};
    let p = Project::new("d_push");
    v1(&p);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut req = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = conn.read(&mut buf) {
            if n == 0 {
                break;
            }
            req.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&req);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(str::to_string)
                    })
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                if body.len() >= len {
                    break;
                }
            }
        }
        conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            .unwrap();
        String::from_utf8_lossy(&req).into_owned()
    });
    p.run(&[
        "migrate",
        "--no-snapshot",
        "--yes",
        "--pushgateway",
        &format!("http://127.0.0.1:{port}"),
    ])
    .ok();
    let request = server.join().unwrap();
    assert!(
        request.starts_with("PUT /metrics/job/valero-db/env/dev HTTP/1.1"),
        "{request}"
    );
    assert!(
        request.contains(
            "valero_db_schema_version{env=\"dev\",service=\"svc\",engine=\"postgres\"} 1"
        ),
        "{request}"
    );
}

#[test]
fn a_rollout_that_overruns_its_timeout_is_stopped_and_rolled_back() {
    let p = Project::new("d_timeout");
    let before = v1_deployed_then_v2_pending(&p);
    let started = std::time::Instant::now();
    p.run(&[
        "deploy",
        "--release",
        "v1.1.0",
        "--timeout",
        "1s",
        "--",
        "sleep",
        "60",
    ])
    .expect_code(7)
    .stderr_has("timed out");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "the rollout was stopped, not waited for"
    );
    assert_eq!(state(&p), before);
}

#[test]
fn sigterm_during_the_rollout_is_forwarded_and_the_databases_are_rolled_back() {
    let p = Project::new("d_signal");
    let before = v1_deployed_then_v2_pending(&p);
    let running = p.path().join("rollout-running");
    let got_term = p.path().join("rollout-got-term");
    let script = format!(
        "trap 'touch {term}; exit 143' TERM; touch {run}; sleep 60 & wait",
        term = got_term.display(),
        run = running.display()
    );
    let mut child = p.spawn(&["deploy", "--release", "v1.1.0", "--", "sh", "-c", &script]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !running.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the rollout never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert!(got_term.exists(), "the rollout received the SIGTERM");
    assert_eq!(status.code(), Some(7), "{status}");
    assert_eq!(state(&p), before, "the databases were rolled back");
}
