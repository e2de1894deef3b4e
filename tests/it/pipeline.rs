//! The pipeline example (`deploy/ci/github-actions-deploy.yml`) walked:
//! its `run:` steps, read from the YAML, run in order by bash with its
//! inputs, secrets and step outputs substituted and its `if:` conditions
//! evaluated as GitHub Actions does, against the test services. `uses:`
//! steps (checkout, cloud credentials, artifact upload) belong to GitHub
//! and are skipped. No Docker engine runs here: a `docker` on PATH stands in
//! for the container runtime — `pull` succeeds and `run … IMAGE ARGS…` runs
//! the valero-db under test with ARGS in the folder that plays the image's
//! contents (valero-db.toml and migrations), as the release image would.

use crate::common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::Project;
use serde_yaml::Value;

const IMAGE: &str = "registry.example.com/valero/valero-db-migrations";

fn workflow() -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/ci/github-actions-deploy.yml");
    serde_yaml::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A deployment repository: the pipeline's own scripts, the docker stand-in.
struct Repository {
    dir: tempfile::TempDir,
}

impl Repository {
    fn new(image_root: &Path) -> Repository {
        let dir = tempfile::tempdir().unwrap();
        let scripts = dir.path().join("scripts");
        std::fs::create_dir_all(&scripts).unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        let write = |path: PathBuf, text: String| {
            std::fs::write(&path, text).unwrap();
            let mut cmd = std::process::Command::new("chmod");
            common::succeeds(cmd.arg("+x").arg(&path));
        };
        // The application's rollout and smoke test, as a deployment
        // repository has them: here they record the release that runs.
        write(
            scripts.join("rollout.sh"),
            format!(
                "#!/bin/sh\necho \"$2\" >> {}\n",
                dir.path().join("running").display()
            ),
        );
        write(
            scripts.join("smoke-test.sh"),
            format!(
                "#!/bin/sh\n! test -e {}\n",
                dir.path().join("broken").display()
            ),
        );
        // Failure points a test sets: the file `fail-<command>` makes that
        // valero-db command fail (exit 1) without running, `pass-<command>`
        // makes it succeed without running.
        write(
            bin.join("docker"),
            format!(
                "#!/bin/bash\n# Stands in for the container runtime (no Docker engine in the tests).\n\
                 case \"$1\" in pull) exit 0 ;; run) shift ;; *) echo \"docker $1?\" >&2; exit 2 ;; esac\n\
                 while [ $# -gt 0 ]; do case \"$1\" in {IMAGE}:*) shift; break ;; esac; shift; done\n\
                 if [ -e {dir}/fail-$1 ]; then echo \"$1 fails here (test failure point)\" >&2; exit 1; fi\n\
                 if [ -e {dir}/pass-$1 ]; then exit 0; fi\n\
                 cd {} && exec {} \"$@\"\n",
                image_root.display(),
                env!("CARGO_BIN_EXE_valero-db"),
                dir = dir.path().display(),
            ),
        );
        Repository { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn running(&self) -> Vec<String> {
        std::fs::read_to_string(self.path().join("running"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// `${{ … }}` expressions the example uses, replaced by their values.
fn substitute(text: &str, values: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed expression") + start;
        let expr = rest[start + 3..end].trim();
        let value = values
            .get(expr)
            .unwrap_or_else(|| panic!("the walk does not know ${{{{ {expr} }}}}"));
        out.push_str(value);
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    out
}

/// GitHub's step conditions as the example writes them.
fn condition_holds(
    condition: Option<&str>,
    failed: bool,
    values: &BTreeMap<String, String>,
) -> bool {
    let Some(condition) = condition else {
        return !failed;
    };
    condition.split("&&").all(|part| match part.trim() {
        "always()" => true,
        "failure()" => failed,
        "success()" => !failed,
        comparison => {
            let (left, right) = comparison
                .split_once("!=")
                .unwrap_or_else(|| panic!("the walk does not know the condition {condition}"));
            let left = values.get(left.trim()).cloned().unwrap_or_default();
            left != right.trim().trim_matches('\'')
        }
    })
}

/// Runs every step of the deploy job; returns the names of the steps that
/// ran and whether the job failed.
fn walk(repo: &Repository, environment: &str, release: &str, run_id: u32) -> (Vec<String>, bool) {
    let flow = workflow();
    let job = &flow["jobs"]["deploy"];
    let mut values = BTreeMap::from([
        ("inputs.environment".to_string(), environment.to_string()),
        ("inputs.release".to_string(), release.to_string()),
        ("github.run_id".to_string(), run_id.to_string()),
    ]);
    let mut env: Vec<(String, String)> = Vec::new();
    for scope in [&flow["env"], &job["env"]] {
        for (k, v) in scope.as_mapping().unwrap() {
            let name = k.as_str().unwrap().to_string();
            let raw = v.as_str().unwrap();
            // The job's secrets: the test services.
            values.insert(
                format!("secrets.{name}"),
                if name.ends_with("MONGODB_URL") {
                    common::mongo_url()
                } else {
                    common::pg_url()
                },
            );
            env.push((name, substitute(raw, &values)));
        }
    }
    let path = format!(
        "{}:{}",
        repo.path().join("bin").display(),
        std::env::var("PATH").unwrap()
    );
    let mut failed = false;
    let mut ran = Vec::new();
    // A step that does not run has the outcome `skipped`.
    for step in job["steps"].as_sequence().unwrap() {
        if let Some(id) = step["id"].as_str() {
            values.insert(format!("steps.{id}.outcome"), "skipped".into());
        }
    }
    for step in job["steps"].as_sequence().unwrap() {
        let Some(script) = step["run"].as_str() else {
            continue;
        };
        if !condition_holds(step["if"].as_str(), failed, &values) {
            continue;
        }
        let output = repo.path().join("github-output");
        std::fs::write(&output, "").unwrap();
        let status = std::process::Command::new("bash")
            .args(["-e", "-c", &substitute(script, &values)])
            .current_dir(repo.path())
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("PATH", &path)
            .env("GITHUB_OUTPUT", &output)
            .status()
            .unwrap();
        ran.push(step["name"].as_str().unwrap_or(script).to_string());
        if let Some(id) = step["id"].as_str() {
            let outcome = if status.success() {
                "success"
            } else {
                "failure"
            };
            values.insert(format!("steps.{id}.outcome"), outcome.into());
            for line in std::fs::read_to_string(&output).unwrap().lines() {
                if let Some((k, v)) = line.split_once('=') {
                    values.insert(format!("steps.{id}.outputs.{k}"), v.to_string());
                }
            }
        }
        failed |= !status.success();
    }
    (ran, failed)
}

#[test]
fn the_pipeline_deploys_a_release_and_rolls_a_failing_one_back_to_the_release_before() {
    let p = Project::new("pipeline");
    common::release::v1(&p);
    let repo = Repository::new(p.path());
    let (_, failed) = walk(&repo, "prod", "v1.0.0", 101);
    assert!(!failed, "the first release deploys");
    assert_eq!(repo.running(), ["v1.0.0"]);
    assert_eq!(common::release::state(&p), "1 | a=100,b=250 | 2");

    // The next release migrates data, and its smoke test fails.
    common::release::v2(&p);
    std::fs::write(repo.path().join("broken"), "").unwrap();
    let (ran, failed) = walk(&repo, "prod", "v1.1.0", 102);
    assert!(failed);
    assert!(
        ran.iter().any(|s| s.starts_with("Post-deploy (failure")),
        "{ran:?}"
    );
    assert!(!ran.iter().any(|s| s.starts_with("Go-live")), "{ran:?}");
    assert_eq!(
        common::release::state(&p),
        "1 | a=100,b=250 | 2",
        "the databases are back at the pre-deploy snapshot"
    );
    assert_eq!(
        repo.running(),
        ["v1.0.0", "v1.1.0", "v1.0.0"],
        "the application is back at the release before"
    );
    let record = std::fs::read_to_string(repo.path().join("deployment.json")).unwrap();
    assert!(record.contains("rolled-back"), "{record}");
}

/// Each point where a release can fail, walked: a failed lint or rehearsal
/// deployed nothing, so nothing is undone (no post-deploy, the application
/// stays); a failed pre-deploy rolled its databases back itself and the
/// application stays; a failed rollout undoes both.
#[test]
fn the_pipeline_undoes_exactly_what_ran_at_each_failure_point() {
    let p = Project::new("pipeline_fail");
    common::release::v1(&p);
    let repo = Repository::new(p.path());
    let (_, failed) = walk(&repo, "prod", "v1.0.0", 201);
    assert!(!failed, "the first release deploys");
    let v1 = common::release::state(&p);
    common::release::v2(&p);
    let undone = |ran: &[String]| {
        (
            ran.iter().any(|s| s.starts_with("Post-deploy (failure")),
            ran.iter()
                .any(|s| s.starts_with("Roll the application back")),
        )
    };

    // Lint: a lock hazard under --deny warnings.
    let hazard = p.migration("postgres", "0003_lock.up.sql", "LOCK TABLE prices;\n");
    let (ran, failed) = walk(&repo, "prod", "v1.1.0", 202);
    assert!(
        failed && ran.iter().any(|s| s.starts_with("Lint")),
        "{ran:?}"
    );
    assert_eq!(undone(&ran), (false, false), "nothing deployed: {ran:?}");
    std::fs::remove_file(hazard).unwrap();

    // The rehearsal fails.
    std::fs::write(repo.path().join("fail-rehearse"), "").unwrap();
    let (ran, failed) = walk(&repo, "prod", "v1.1.0", 203);
    assert!(failed);
    assert_eq!(undone(&ran), (false, false), "nothing deployed: {ran:?}");
    assert_eq!(repo.running(), ["v1.0.0"]);
    assert_eq!(common::release::state(&p), v1);

    // The pre-deploy fails (a migration the rehearsal did not catch here):
    // it rolled its databases back itself; the application never moved.
    std::fs::remove_file(repo.path().join("fail-rehearse")).unwrap();
    std::fs::write(repo.path().join("pass-rehearse"), "").unwrap();
    let broken = p.migration("postgres", "0003_broken.up.sql", "SELECT 1 / 0;\n");
    let (ran, failed) = walk(&repo, "prod", "v1.1.0", 204);
    assert!(failed && ran.iter().any(|s| s.starts_with("Pre-deploy")));
    assert_eq!(undone(&ran), (true, false), "{ran:?}");
    assert_eq!(repo.running(), ["v1.0.0"]);
    assert_eq!(common::release::state(&p), v1);
    std::fs::remove_file(broken).unwrap();
    std::fs::remove_file(repo.path().join("pass-rehearse")).unwrap();

    // The rollout fails: the databases and the application go back.
    std::fs::write(
        repo.path().join("scripts/rollout.sh"),
        format!(
            "#!/bin/sh\necho \"$2\" >> {}\ntest \"$2\" != v1.1.0\n",
            repo.path().join("running").display()
        ),
    )
    .unwrap();
    let (ran, failed) = walk(&repo, "prod", "v1.1.0", 205);
    assert!(failed);
    assert_eq!(undone(&ran), (true, true), "{ran:?}");
    assert_eq!(repo.running(), ["v1.0.0", "v1.1.0", "v1.0.0"]);
    assert_eq!(common::release::state(&p), v1);
}
