//! Pipelines retry: a deployment is identified by environment + release.
//! A retried or killed `hook pre-deploy` or `deploy` attaches to its open
//! deployment and keeps the way back (the first attempt's snapshot and
//! versions); a retried `hook post-deploy` repeats its result; another
//! release waits until the open deployment ends or is superseded.

use crate::common;

use std::time::{Duration, Instant};

use common::oracle::data_fingerprint;
use common::release::{state, v1_deployed_then_v2_pending};
use common::{psql, Project};

fn pre_deploy(p: &Project, release: &str) -> common::Run {
    p.run(&["hook", "pre-deploy", "--release", release])
}

fn post_deploy(p: &Project, release: &str, result: &str) -> common::Run {
    p.run(&[
        "hook",
        "post-deploy",
        "--release",
        release,
        "--result",
        result,
    ])
}

/// The deployments as `releases --output json` lists them, newest first.
fn deployments(p: &Project) -> Vec<serde_json::Value> {
    let run = p.run(&["releases", "--output", "json"]);
    run.ok();
    run.json()["deployments"].as_array().unwrap().clone()
}

/// A migration that sleeps while the table `public.<marker>` exists, so a
/// test can kill valero-db in the middle of it.
fn sleepy_migration(p: &Project, name: &str, marker: &str, then: &str) {
    psql(&format!("CREATE TABLE public.{marker} ()"));
    p.migration(
        "postgres",
        name,
        &format!(
            "DO $$ BEGIN IF to_regclass('public.{marker}') IS NOT NULL THEN PERFORM pg_sleep(120); END IF; END $$;\n{then}"
        ),
    );
}

/// Starts `hook pre-deploy`, waits until its migration sleeps, kills it
/// hard. The server notices the dead client and rolls its transaction back.
fn kill_pre_deploy_in_migration(p: &Project, release: &str, marker: &str) {
    let mut child = p
        .std_cmd()
        .env("VALERO_DB_MONGO_LEASE_TTL", "2")
        .args(["hook", "pre-deploy", "--release", release])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let sleeping = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%public.{marker}%pg_sleep%' AND pid <> pg_backend_pid()"
    );
    while psql(&sleeping) != "1" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the migration never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    psql(&format!("DROP TABLE public.{marker}"));
    while psql(&sleeping) != "0" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the server kept the killed run's transaction"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_retried_pre_deploy_resumes_and_a_failure_then_restores_v1_exactly() {
    let p = Project::new("dr_retry");
    let v1 = v1_deployed_then_v2_pending(&p);
    let v1_data = data_fingerprint(&p.schema);
    pre_deploy(&p, "v2").ok();
    let v2 = state(&p);
    assert_ne!(v2, v1);
    // The Job's pod was evicted after the exit: the retry attaches to the
    // open deployment and keeps its snapshot.
    pre_deploy(&p, "v2").ok().stderr_has("resuming deployment");
    assert_eq!(state(&p), v2);
    let listed = deployments(&p);
    assert_eq!(listed[0]["release"], "v2");
    assert_eq!(listed[0]["resumed"], 1);
    assert_eq!(listed[0]["services"][0]["engines"][0]["before"], 1);
    assert!(listed[0]["services"][0]["snapshot"].is_string());

    post_deploy(&p, "v2", "failure").expect_code(7);
    assert_eq!(state(&p), v1);
    assert_eq!(data_fingerprint(&p.schema), v1_data);
}

#[test]
fn kill_9_after_the_snapshot_before_the_migration_then_a_failure_report_restores_v1() {
    let p = Project::new("dr_kill1");
    let v1 = v1_deployed_then_v2_pending(&p);
    let marker = format!("m_{}", p.schema);
    let euro =
        std::fs::read_to_string(p.path().join("migrations/svc/postgres/0002_euro.up.sql")).unwrap();
    sleepy_migration(&p, "0002_euro.up.sql", &marker, &euro);
    kill_pre_deploy_in_migration(&p, "v2", &marker);
    assert_eq!(state(&p), v1, "the killed migration was rolled back");
    let listed = deployments(&p);
    assert_eq!(listed[0]["state"], "running");
    assert!(
        listed[0]["services"][0]["snapshot"].is_string(),
        "the snapshot was recorded before the migration started: {}",
        listed[0]
    );
    post_deploy(&p, "v2", "failure").expect_code(7);
    assert_eq!(state(&p), v1);
}

#[test]
fn kill_9_in_the_middle_of_the_migrations_then_a_retry_finishes_and_a_failure_restores_v1() {
    let p = Project::new("dr_kill2");
    let v1 = v1_deployed_then_v2_pending(&p);
    let marker = format!("m_{}", p.schema);
    sleepy_migration(&p, "0003_slow.up.sql", &marker, "SELECT 1;\n");
    kill_pre_deploy_in_migration(&p, "v2", &marker);
    // The retry finishes what is missing and keeps the way back to v1.
    p.run_with_env(
        &[("VALERO_DB_MONGO_LEASE_TTL", "2")],
        &["hook", "pre-deploy", "--release", "v2"],
    )
    .ok()
    .stderr_has("resuming deployment")
    .stderr_has("keeping the pre-deploy snapshot");
    assert!(state(&p).starts_with("1,2,3 |"), "{}", state(&p));
    post_deploy(&p, "v2", "failure").expect_code(7);
    assert_eq!(state(&p), v1);
}

#[test]
fn a_retried_post_deploy_repeats_its_result_and_does_nothing_again() {
    let p = Project::new("dr_post");
    v1_deployed_then_v2_pending(&p);
    pre_deploy(&p, "v2").ok();
    post_deploy(&p, "v2", "success").ok();
    let v2 = state(&p);
    let ids = common::oracle::snapshot_ids(&p, "dev");
    // The retry, even one that says failure, changes nothing.
    post_deploy(&p, "v2", "success")
        .ok()
        .stderr_has("already ended");
    post_deploy(&p, "v2", "failure")
        .ok()
        .stderr_has("already ended");
    assert_eq!(state(&p), v2);
    assert_eq!(common::oracle::snapshot_ids(&p, "dev"), ids);
}

#[test]
fn another_release_waits_for_the_open_deployment_unless_it_supersedes_it() {
    let p = Project::new("dr_open");
    v1_deployed_then_v2_pending(&p);
    pre_deploy(&p, "v2").ok();
    pre_deploy(&p, "v3")
        .expect_code(4)
        .stderr_has("deployment")
        .stderr_has("of release v2 is still open")
        .stderr_has("--supersede");
    p.run(&[
        "hook",
        "pre-deploy",
        "--release",
        "v3",
        "--supersede",
        "v2 abandoned after a failed canary",
    ])
    .ok();
    let listed = deployments(&p);
    assert_eq!(listed[0]["release"], "v3");
    assert_eq!(listed[1]["state"], "superseded");
    assert_eq!(
        listed[1]["superseded"]["reason"],
        "v2 abandoned after a failed canary"
    );
    p.run(&["releases"]).ok().stdout_has("superseded by v3");
}

#[test]
fn a_deploy_killed_during_the_rollout_is_finished_by_its_rerun() {
    let p = Project::new("dr_deploy");
    v1_deployed_then_v2_pending(&p);
    let marker = p.path().join("rollout-started");
    let mut child = p
        .std_cmd()
        .args(["deploy", "--release", "v2", "--", "sh", "-c"])
        .arg(format!("touch {}; exec sleep 60", marker.display()))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !marker.exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "no rollout");
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let v2 = state(&p);
    let first = deployments(&p)[0].clone();
    assert_eq!(first["state"], "running");

    p.run(&["deploy", "--release", "v2", "--", "true"])
        .ok()
        .stderr_has("resuming deployment");
    let listed = deployments(&p);
    assert_eq!(listed.len(), 2, "v1 and one deployment of v2");
    assert_eq!(listed[0]["id"], first["id"]);
    assert_eq!(listed[0]["state"], "succeeded");
    assert_eq!(listed[0]["services"], first["services"]);
    assert_eq!(state(&p), v2);
}

#[test]
fn a_pipeline_deployment_id_names_the_deployment_across_retries() {
    let p = Project::new("dr_id");
    let v1 = v1_deployed_then_v2_pending(&p);
    let pre = |id: &str| {
        p.run(&[
            "hook",
            "pre-deploy",
            "--release",
            "v2",
            "--deployment-id",
            id,
        ])
    };
    let post = |release: &str, id: &str, result: &str| {
        p.run(&[
            "hook",
            "post-deploy",
            "--release",
            release,
            "--deployment-id",
            id,
            "--result",
            result,
        ])
    };
    pre("run-42").ok();
    pre("run-42").ok().stderr_has("resuming deployment run-42");
    let listed = deployments(&p);
    assert_eq!(listed[0]["id"], "run-42");
    assert_eq!(listed[0]["resumed"], 1);

    // Another id for the same release (a new Helm revision of it, whose
    // hook Jobs' id contains the revision): the open deployment, resumed,
    // known by both ids.
    pre("run-43").ok().stderr_has("resuming deployment run-42");
    let listed = deployments(&p);
    assert_eq!(listed.len(), 2, "no second deployment of v2");
    assert_eq!(listed[0]["aliases"], serde_json::json!(["run-43"]));
    // Another release waits for the open one.
    p.run(&[
        "hook",
        "pre-deploy",
        "--release",
        "v3",
        "--deployment-id",
        "run-44",
    ])
    .expect_code(4)
    .stderr_has("deployment run-42 of release v2 is still open");
    post("v2", "run-44", "failure")
        .expect_code(2)
        .stderr_has("no deployment run-44");
    post("v3", "run-42", "failure")
        .expect_code(2)
        .stderr_has("deployment run-42 is of release v2, not v3");
    pre("../run-42").expect_code(2).stderr_has("deployment id");

    post("v2", "run-42", "failure").expect_code(7);
    assert_eq!(state(&p), v1);
    // The pipeline's re-run with the same id tries again: a new attempt
    // of the same deployment, the rolled-back one kept in its record.
    pre("run-42").ok().stderr_has("starting attempt 2");
    assert_ne!(state(&p), v1, "v2 migrated again");
    let listed = deployments(&p);
    assert_eq!(listed.len(), 2, "v1 and run-42, nothing new");
    assert_eq!(listed[0]["attempts"][0]["state"], "rolled-back");
    assert_eq!(listed[0]["attempts"].as_array().unwrap().len(), 1);
    p.run(&["releases"])
        .ok()
        .stdout_has("(attempt 2; before: rolled-back)");
    post("v2", "run-42", "success").ok();
    let v2 = state(&p);
    // Once it succeeded, a re-run repeats the success and changes nothing.
    pre("run-42").ok().stderr_has("already ended (succeeded");
    assert_eq!(state(&p), v2);
}

#[test]
fn a_failed_preflight_ends_the_deployment_and_blocks_no_release() {
    let p = Project::new("dr_pre");
    let v1 = v1_deployed_then_v2_pending(&p);
    // The applied v1 file was edited: the preflight refuses, nothing runs.
    let file = p.path().join("migrations/svc/postgres/0001_prices.up.sql");
    let original = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{original}-- edited after it ran\n")).unwrap();
    let pre = |release: &str, id: &str| {
        p.run(&[
            "hook",
            "pre-deploy",
            "--release",
            release,
            "--deployment-id",
            id,
        ])
    };
    pre("v2", "run-7").expect_code(5).stderr_has("drift");
    assert_eq!(state(&p), v1);
    let listed = deployments(&p);
    assert_eq!(listed[0]["id"], "run-7");
    assert_eq!(listed[0]["state"], "failed", "ended, not left open");
    // Fixed, the next pipeline run is not refused by an open deployment.
    std::fs::write(&file, original).unwrap();
    pre("v2", "run-8").ok();
    post_deploy(&p, "v2", "success").ok();
    assert_eq!(deployments(&p)[1]["state"], "failed");
}

#[test]
fn two_pre_deploys_of_one_release_at_once_work_one_after_the_other_on_one_record() {
    let p = Project::new("dr_race");
    let v1 = v1_deployed_then_v2_pending(&p);
    let marker = format!("race_{}", p.schema);
    // Sleeps while the marker table has its row (each loop reads it with
    // a fresh snapshot), until the test deletes it.
    psql(&format!(
        "CREATE TABLE public.{marker} (x int); INSERT INTO public.{marker} VALUES (1)"
    ));
    p.migration(
        "postgres",
        "0003_slow.up.sql",
        &format!(
            "DO $$ BEGIN WHILE EXISTS (SELECT FROM public.{marker}) LOOP PERFORM pg_sleep(0.1); END LOOP; END $$;\n"
        ),
    );
    let first = p
        .std_cmd()
        .args([
            "hook",
            "pre-deploy",
            "--release",
            "v2",
            "--deployment-id",
            "run-1",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let sleeping = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%public.{marker}%pg_sleep%' AND pid <> pg_backend_pid()"
    );
    let started = Instant::now();
    while psql(&sleeping) != "1" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the first never migrated"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The second run (another pipeline run of the same release) waits for
    // the first instead of opening or resuming the record beside it.
    let second = p.run(&[
        "hook",
        "pre-deploy",
        "--release",
        "v2",
        "--deployment-id",
        "run-2",
        "--lock-timeout",
        "2s",
    ]);
    second
        .expect_code(4)
        .stderr_has("another pre-deploy or deploy of environment dev");
    psql(&format!("DELETE FROM public.{marker}"));
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let listed = deployments(&p);
    assert_eq!(listed.len(), 2, "v1 and one deployment of v2");
    assert_eq!(listed[0]["state"], "pre-deployed");
    assert_ne!(state(&p), v1);
    // Once the first has ended, the second (a re-run) resumes that record.
    p.run(&[
        "hook",
        "pre-deploy",
        "--release",
        "v2",
        "--deployment-id",
        "run-2",
    ])
    .ok()
    .stderr_has("resuming deployment run-1");
    post_deploy(&p, "v2", "failure").expect_code(7);
    assert_eq!(
        state(&p),
        v1,
        "the pre-deploy snapshot of the first run is the way back"
    );
    psql(&format!("DROP TABLE public.{marker}"));
}
