//! The monitoring path as operators run it: valero-db pushes to a real
//! Pushgateway, a real Prometheus scrapes it and evaluates
//! `deploy/monitoring/prometheus-rules.yaml` unchanged, and fired alerts
//! reach a real Alertmanager. Read back through their HTTP APIs.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::release::v1;
use common::Project;
use serde_json::Value;

/// Pushgateway, Prometheus and Alertmanager on free loopback ports; killed
/// when dropped.
struct Stack {
    children: Vec<Child>,
    pushgateway: u16,
    prometheus: u16,
    alertmanager: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Stack {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn rules_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/monitoring/prometheus-rules.yaml")
}

fn start(dir: &Path, log: &str, program: &str, args: &[String]) -> Child {
    Command::new(program)
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(log)).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{program} (installed by scripts/services.sh): {e}"))
}

impl Stack {
    fn start() -> Stack {
        Self::scraping(&[])
    }

    /// Also scrapes `capture --metrics-listen` on these loopback ports.
    fn scraping(capture_ports: &[u16]) -> Stack {
        Self::scraping_with(capture_ports, &rules_file())
    }

    /// `scraping`, evaluating the rules in `rules`.
    fn scraping_with(capture_ports: &[u16], rules: &Path) -> Stack {
        let dir = tempfile::tempdir().unwrap();
        let (pushgateway, prometheus, alertmanager) = (free_port(), free_port(), free_port());
        let d = dir.path();
        std::fs::write(
            d.join("alertmanager.yml"),
            "route:\n  receiver: operators\n  group_wait: 1s\nreceivers:\n  - name: operators\n",
        )
        .unwrap();
        // As the admin guide tells operators to scrape a Pushgateway:
        // honor_labels keeps the env/service labels valero-db pushed.
        std::fs::write(
            d.join("prometheus.yml"),
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {rules}\n\
                 alerting:\n  alertmanagers:\n    - static_configs:\n        - targets: ['127.0.0.1:{alertmanager}']\n\
                 scrape_configs:\n  - job_name: pushgateway\n    honor_labels: true\n    static_configs:\n      - targets: ['127.0.0.1:{pushgateway}']\n\
                 \x20 - job_name: valero-db-capture\n    static_configs:\n      - targets: [{captures}]\n",
                rules = rules.display(),
                captures = capture_ports
                    .iter()
                    .map(|p| format!("'127.0.0.1:{p}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
        .unwrap();
        let arg = |k: &str, v: String| format!("--{k}={v}");
        let path = |name: &str| d.join(name).display().to_string();
        let children = vec![
            start(
                d,
                "pushgateway.log",
                "prometheus-pushgateway",
                &[arg(
                    "web.listen-address",
                    format!("127.0.0.1:{pushgateway}"),
                )],
            ),
            start(
                d,
                "alertmanager.log",
                "prometheus-alertmanager",
                &[
                    arg("config.file", path("alertmanager.yml")),
                    arg("storage.path", path("am-data")),
                    arg("web.listen-address", format!("127.0.0.1:{alertmanager}")),
                    arg("cluster.listen-address", String::new()),
                ],
            ),
            start(
                d,
                "prometheus.log",
                "prometheus",
                &[
                    arg("config.file", path("prometheus.yml")),
                    arg("storage.tsdb.path", path("prom-data")),
                    arg("web.listen-address", format!("127.0.0.1:{prometheus}")),
                ],
            ),
        ];
        let stack = Stack {
            children,
            pushgateway,
            prometheus,
            alertmanager,
            _dir: dir,
        };
        for (port, ready) in [
            (pushgateway, "/-/ready"),
            (alertmanager, "/-/ready"),
            (prometheus, "/-/ready"),
        ] {
            stack.wait_for(&format!("127.0.0.1:{port}{ready} answers"), || {
                get(port, ready).is_some()
            });
        }
        stack
    }

    fn pushgateway_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.pushgateway)
    }

    /// Prometheus' state of alert `name` for environment `env`: pending,
    /// firing, or None when inactive.
    fn alert_state(&self, name: &str, env: &str) -> Option<String> {
        self.alert_state_by(name, "env", env)
    }

    /// Prometheus' state of alert `name` whose label `label` is `value`.
    fn alert_state_by(&self, name: &str, label: &str, value: &str) -> Option<String> {
        let doc = get_json(self.prometheus, "/api/v1/alerts")?;
        doc["data"]["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == name && a["labels"][label] == value)
            .map(|a| a["state"].as_str().unwrap_or_default().to_string())
    }

    /// Prometheus' state of alert `name` for the scrape target `instance`.
    fn target_alert_state(&self, name: &str, instance: &str) -> Option<String> {
        self.alert_state_by(name, "instance", instance)
    }

    /// Whether Alertmanager holds an active alert `name` for `env`.
    fn alertmanager_has(&self, name: &str, env: &str) -> bool {
        get_json(self.alertmanager, "/api/v2/alerts")
            .and_then(|doc| {
                doc.as_array().map(|alerts| {
                    alerts
                        .iter()
                        .any(|a| a["labels"]["alertname"] == name && a["labels"]["env"] == env)
                })
            })
            .unwrap_or(false)
    }

    /// Whether Alertmanager holds an active alert `name` for target `instance`.
    fn alertmanager_has_target(&self, name: &str, instance: &str) -> bool {
        let until = Instant::now() + Duration::from_secs(30);
        while Instant::now() < until {
            let found = get_json(self.alertmanager, "/api/v2/alerts").is_some_and(|doc| {
                doc.as_array().is_some_and(|alerts| {
                    alerts.iter().any(|a| {
                        a["labels"]["alertname"] == name && a["labels"]["instance"] == instance
                    })
                })
            });
            if found {
                return true;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        false
    }

    /// One series' value as Prometheus scraped it.
    fn value(&self, query: &str) -> Option<f64> {
        let path = format!("/api/v1/query?query={}", urlencode(query));
        let doc = get_json(self.prometheus, &path)?;
        doc["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|v| v.parse().ok())
    }

    fn wait_for(&self, what: &str, mut done: impl FnMut() -> bool) {
        let until = Instant::now() + Duration::from_secs(60);
        while Instant::now() < until {
            if done() {
                return;
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let logs: String = ["pushgateway.log", "alertmanager.log", "prometheus.log"]
            .iter()
            .map(|l| {
                let text = std::fs::read_to_string(self._dir.path().join(l)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(5).collect();
                format!("{l}: {}\n", tail.join("\n  "))
            })
            .collect();
        panic!("waited 60 s for: {what}\n{logs}");
    }
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'-' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// GET over loopback with curl; None unless it answers 2xx.
fn get(port: u16, path: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "5"])
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn get_json(port: u16, path: &str) -> Option<Value> {
    serde_json::from_str(&get(port, path)?).ok()
}

#[test]
fn a_failed_deploy_fires_through_pushgateway_prometheus_and_alertmanager_and_a_good_one_resolves_it(
) {
    let stack = Stack::start();
    let p = Project::new("mon_deploy");
    v1(&p);
    let push = stack.pushgateway_url();
    p.run(&[
        "deploy",
        "--release",
        "v1.0.0",
        "--pushgateway",
        &push,
        "--",
        "false",
    ])
    .expect_code(7);
    stack.wait_for("ValeroDbDeployFailed firing in Prometheus", || {
        stack.alert_state("ValeroDbDeployFailed", "dev").as_deref() == Some("firing")
    });
    stack.wait_for("ValeroDbDeployFailed in Alertmanager", || {
        stack.alertmanager_has("ValeroDbDeployFailed", "dev")
    });
    // Nothing else about a healthy service alerts.
    assert_eq!(stack.alert_state("ValeroDbDirty", "dev"), None);
    assert_eq!(stack.alert_state("ValeroDbDatabaseDown", "dev"), None);

    p.run(&[
        "deploy",
        "--release",
        "v1.0.0",
        "--pushgateway",
        &push,
        "--",
        "true",
    ])
    .ok();
    stack.wait_for("ValeroDbDeployFailed resolved", || {
        stack.alert_state("ValeroDbDeployFailed", "dev").is_none()
    });
    assert_eq!(
        stack.value("valero_db_deploy_last_success{env=\"dev\",release=\"v1.0.0\"}"),
        Some(1.0)
    );
}

#[test]
fn a_stale_snapshot_and_an_unreachable_database_go_pending_and_a_fresh_snapshot_resolves_it() {
    let stack = Stack::start();
    let p = Project::new("mon_stale");
    p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (v int);\n");
    p.migrate_now();
    let id = p.snapshot_in("dev");
    // The newest snapshot's consistent point, 30 hours ago.
    let manifest = p
        .path()
        .join("backups/dev/svc")
        .join(&id)
        .join("manifest.json");
    let mut m: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    let old = (chrono::Utc::now() - chrono::Duration::hours(30)).to_rfc3339();
    m["consistent_at"] = old.clone().into();
    m["engines"][0]["consistent_at"] = old.into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    let push = stack.pushgateway_url();
    p.run(&["status", "--pushgateway", &push]).ok();
    stack.wait_for("ValeroDbSnapshotStale pending (for: 15m)", || {
        stack.alert_state("ValeroDbSnapshotStale", "dev").as_deref() == Some("pending")
    });

    // The database goes away: status says so and the alert goes pending.
    p.write_config(&format!(
        "[services.down]\npostgres = {{ url = \"postgres://valero@127.0.0.1:{}/valero\", schema = \"down\" }}\n",
        common::closed_port()
    ));
    let down = p.run(&["-s", "down", "status", "--pushgateway", &push]);
    assert_ne!(down.code, 0, "status of an unreachable database fails");
    stack.wait_for("ValeroDbDatabaseDown pending (for: 5m)", || {
        stack.alert_state("ValeroDbDatabaseDown", "dev").as_deref() == Some("pending")
    });

    p.write_config("");
    p.run(&["snapshot", "--pushgateway", &push]).ok();
    stack.wait_for("ValeroDbSnapshotStale resolved by a fresh snapshot", || {
        stack.alert_state("ValeroDbSnapshotStale", "dev").is_none()
    });
}

#[test]
fn a_capture_that_stopped_shipping_goes_pending_and_its_next_pass_resolves_it() {
    let stack = Stack::start();
    let p = Project::new("mon_lag");
    p.write_mongodb_only_config();
    p.migration(
        "mongodb",
        "0001_people.up.json",
        r#"[{"create": "people"}, {"insert": "people", "documents": [{"_id": 1}]}]"#,
    );
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    p.run(&["snapshot"]).ok();
    p.run(&["capture", "--once"]).ok();
    // The capture last covered changes 20 minutes ago (as if its Deployment
    // had been down since).
    let progress = p
        .path()
        .join("backups/dev/.capture/svc/mongodb/progress.json");
    let mut doc: Value = serde_json::from_slice(&std::fs::read(&progress).unwrap()).unwrap();
    doc["covered_until"] = (chrono::Utc::now() - chrono::Duration::minutes(20))
        .to_rfc3339()
        .into();
    std::fs::write(&progress, serde_json::to_vec(&doc).unwrap()).unwrap();
    let push = stack.pushgateway_url();
    p.run(&["status", "--pushgateway", &push]).ok();
    stack.wait_for("ValeroDbCaptureLagging pending (for: 10m)", || {
        stack
            .alert_state("ValeroDbCaptureLagging", "dev")
            .as_deref()
            == Some("pending")
    });
    p.run(&["capture", "--once", "--pushgateway", &push]).ok();
    stack.wait_for("ValeroDbCaptureLagging resolved by the next pass", || {
        stack.alert_state("ValeroDbCaptureLagging", "dev").is_none()
    });
}

#[test]
fn a_running_capture_serves_metrics_that_prometheus_scrapes() {
    let port = free_port();
    let stack = Stack::scraping(&[port]);
    let p = Project::new("mon_listen");
    p.write_mongodb_only_config();
    p.migration(
        "mongodb",
        "0001_people.up.json",
        r#"[{"create": "people"}]"#,
    );
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    p.run(&["snapshot"]).ok();
    let listen = format!("127.0.0.1:{port}");
    let mut capture = p.spawn(&["capture", "--interval", "1s", "--metrics-listen", &listen]);
    let series = "valero_db_capture_lag_seconds{job=\"valero-db-capture\",env=\"dev\",service=\"svc\",engine=\"mongodb\"}";
    stack.wait_for("the capture's lag scraped by Prometheus", || {
        stack
            .value(series)
            .is_some_and(|lag| (0.0..60.0).contains(&lag))
    });
    let served = get(port, "/metrics").expect("GET /metrics");
    assert!(
        served.contains(
            "valero_db_snapshot_last_success_timestamp_seconds{env=\"dev\",service=\"svc\"}"
        ),
        "{served}"
    );
    assert!(get(port, "/").is_none(), "only /metrics is served");
    // SIGTERM ends the capture cleanly, and the endpoint with it.
    let pid = capture.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    assert_eq!(capture.wait().unwrap().code(), Some(0));
    assert!(get(port, "/metrics").is_none());
    // An address that cannot be bound is refused before anything runs.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    p.run(&["capture", "--metrics-listen", &addr])
        .expect_code(2)
        .stderr_has("--metrics-listen");
}

/// A capture that dies is noticed by Prometheus itself — its target down —
/// within the rule's `for:` plus two scrape intervals, and its restart
/// resolves the alert; the covered time it serves is a timestamp that
/// Prometheus ages. The shipped rules run with their `for:` shortened to
/// seconds (the expressions as shipped), so the test waits seconds.
#[test]
fn a_capture_that_dies_fires_its_alert_in_prometheus_and_a_restart_resolves_it() {
    const FOR_SECS: u64 = 3;
    let rules_dir = tempfile::tempdir().unwrap();
    let rules = rules_dir.path().join("rules.yaml");
    let shipped = std::fs::read_to_string(rules_file()).unwrap();
    let fast = shipped
        .lines()
        .map(|l| match l.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: {FOR_SECS}s", &l[..l.len() - l.trim_start().len()]),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&rules, fast).unwrap();
    let port = free_port();
    let stack = Stack::scraping_with(&[port], &rules);
    let p = Project::new("mon_dies");
    p.write_mongodb_only_config();
    p.migration(
        "mongodb",
        "0001_people.up.json",
        r#"[{"create": "people"}]"#,
    );
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    p.run(&["snapshot"]).ok();
    let listen = format!("127.0.0.1:{port}");
    let instance = listen.clone();
    let spawn = || p.spawn(&["capture", "--interval", "1s", "--metrics-listen", &listen]);
    let mut capture = spawn();
    let covered = "valero_db_capture_covered_timestamp_seconds{job=\"valero-db-capture\",env=\"dev\",service=\"svc\",engine=\"mongodb\"}";
    stack.wait_for("the covered time scraped and aged by Prometheus", || {
        stack
            .value(&format!("time() - {covered}"))
            .is_some_and(|lag| (0.0..30.0).contains(&lag))
    });
    assert_eq!(
        stack.target_alert_state("ValeroDbCaptureDown", &instance),
        None
    );

    capture.kill().unwrap();
    capture.wait().unwrap();
    let died = Instant::now();
    stack.wait_for("ValeroDbCaptureDown firing", || {
        stack
            .target_alert_state("ValeroDbCaptureDown", &instance)
            .as_deref()
            == Some("firing")
    });
    // for: + two scrape intervals (1 s each) + two rule evaluations (1 s).
    let bound = Duration::from_secs(FOR_SECS + 2 + 2 + 1);
    assert!(died.elapsed() <= bound, "fired after {:?}", died.elapsed());
    assert!(stack.alertmanager_has_target("ValeroDbCaptureDown", &instance));

    let mut capture = spawn();
    stack.wait_for("ValeroDbCaptureDown resolved by the restart", || {
        stack
            .target_alert_state("ValeroDbCaptureDown", &instance)
            .is_none()
    });
    let _ = Command::new("kill")
        .args(["-TERM", &capture.id().to_string()])
        .status();
    let _ = capture.wait();
}

/// A bcrypt hash of PUSH_PASSWORD, as the Pushgateway's web config wants.
const PUSH_PASSWORD: &str = "Push-Secret-9";
const PUSH_PASSWORD_BCRYPT: &str = "$2b$10$abcdefghijklmnopqrstuuC5jU1CGlodvkY9ZiMZd9bwsitMu0xii";

#[test]
fn metrics_are_pushed_over_https_with_basic_auth_and_a_refusal_is_reported_without_the_secret() {
    let ca = common::env_or_fail("VALERO_TLS_CA");
    let tls = Path::new(&ca).parent().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\nbasic_auth_users:\n  valero: '{PUSH_PASSWORD_BCRYPT}'\n",
            tls.join("server.crt").display(),
            tls.join("server.key").display()
        ),
    )
    .unwrap();
    let port = free_port();
    let mut gateway = start(
        dir.path(),
        "pushgateway.log",
        "prometheus-pushgateway",
        &[
            format!("--web.listen-address=127.0.0.1:{port}"),
            format!("--web.config.file={}", web.display()),
        ],
    );
    let curl = |auth: bool, path: &str| {
        let mut cmd = Command::new("curl");
        cmd.args(["-fsS", "--max-time", "5", "--cacert", &ca]);
        if auth {
            cmd.args(["-u", &format!("valero:{PUSH_PASSWORD}")]);
        }
        let out = cmd
            .arg(format!("https://127.0.0.1:{port}{path}"))
            .output()
            .unwrap();
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let until = Instant::now() + Duration::from_secs(30);
    while curl(true, "/-/ready").is_none() {
        assert!(Instant::now() < until, "the TLS Pushgateway did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        curl(false, "/metrics").is_none(),
        "the gateway asks for credentials"
    );

    let p = Project::new("mon_https");
    v1(&p);
    p.migrate_now();
    let url = format!("https://127.0.0.1:{port}");
    let pushed = p.run_with_env(
        &[
            ("SSL_CERT_FILE", ca.as_str()),
            ("VALERO_DB_PUSHGATEWAY_USER", "valero"),
            ("VALERO_DB_PUSHGATEWAY_PASSWORD", PUSH_PASSWORD),
        ],
        &["status", "--pushgateway", &url],
    );
    pushed.ok();
    assert!(
        !pushed.stderr.contains("pushing metrics failed"),
        "{}",
        pushed.stderr
    );
    let metrics = curl(true, "/metrics").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("valero_db_schema_version{")
                && l.contains("env=\"dev\"")
                && l.contains("job=\"valero-db\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );

    // A wrong password: the command's own work stands, the push failure is
    // reported, the password is not.
    let refused = p.run_with_env(
        &[
            ("SSL_CERT_FILE", ca.as_str()),
            ("VALERO_DB_PUSHGATEWAY_USER", "valero"),
            ("VALERO_DB_PUSHGATEWAY_PASSWORD", "Wrong-Push-Secret"),
        ],
        &["status", "--pushgateway", &url],
    );
    refused.ok().stderr_has("refused the push");
    assert!(!refused.all().contains("Wrong-Push-Secret"));
    // A certificate the system does not trust is not pushed to.
    let untrusted = p.run_with_env(
        &[
            ("SSL_CERT_FILE", "/etc/ssl/certs/ca-certificates.crt"),
            ("VALERO_DB_PUSHGATEWAY_USER", "valero"),
            ("VALERO_DB_PUSHGATEWAY_PASSWORD", PUSH_PASSWORD),
        ],
        &["status", "--pushgateway", &url],
    );
    untrusted.ok().stderr_has("pushing metrics failed");
    assert!(!untrusted.all().contains(PUSH_PASSWORD));
    let _ = gateway.kill();
    let _ = gateway.wait();
}
