//! Shared helpers for the end-to-end tests: a throwaway project folder with
//! its own config, unique schema and database names, and the real binary.
//! The servers come from `scripts/services.sh` (VALERO_PG_URL, ...); a
//! missing one fails the test, it never skips.

#![allow(dead_code)]

pub mod oracle;
pub mod release;
pub mod s3_front;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicUsize, Ordering};

pub fn env_or_fail(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the tests through `scripts/services.sh run cargo test`")
    })
}

pub fn pg_url() -> String {
    env_or_fail("VALERO_PG_URL")
}

pub fn mongo_url() -> String {
    env_or_fail("VALERO_MONGO_URL")
}

/// The PostgreSQL password used by the test services, for leak checks.
pub fn pg_password() -> String {
    url::Url::parse(&pg_url())
        .ok()
        .and_then(|u| u.password().map(str::to_string))
        .expect("VALERO_PG_URL has a password")
}

/// A loopback port with nothing listening.
pub fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!(
        "{prefix}_{}_{}_{n}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() % 100_000)
            .unwrap_or(0)
    )
}

/// A project folder: `valero-db.toml`, `migrations/`, `backups/`.
pub struct Project {
    pub dir: tempfile::TempDir,
    pub schema: String,
    pub mongo_db: String,
    pub service: String,
}

impl Project {
    /// One service `svc` with a PostgreSQL schema and a MongoDB database.
    pub fn new(tag: &str) -> Project {
        let dir = tempfile::tempdir().expect("temp dir");
        let p = Project {
            dir,
            schema: unique(&format!("t_{tag}")),
            mongo_db: unique(&format!("t_{tag}")),
            service: "svc".into(),
        };
        p.write_config("");
        p
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.path().join("valero-db.toml")
    }

    /// Writes the standard config; `extra` is appended verbatim.
    pub fn write_config(&self, extra: &str) {
        let text = format!(
            r#"[environments.dev]
storage = "file://backups"

[environments.prod]
storage = "file://backups"
protected = true

[environments.s3]
storage = "s3://${{VALERO_S3_BUCKET}}/{prefix}"
s3 = {{ endpoint = "${{VALERO_S3_ENDPOINT}}", force_path_style = true, region = "us-east-1", part_size = "5MiB", concurrency = 2 }}

[environments.deads3]
storage = "s3://${{VALERO_S3_BUCKET}}/{prefix}"
s3 = {{ endpoint = "http://127.0.0.1:{dead_port}", force_path_style = true, region = "us-east-1" }}

[services.svc]
postgres = {{ url = "${{VALERO_PG_URL}}", schema = "{schema}" }}
mongodb = {{ url = "${{VALERO_MONGO_URL}}", database = "{db}" }}
{extra}"#,
            schema = self.schema,
            db = self.mongo_db,
            prefix = self.schema,
            dead_port = closed_port(),
        );
        std::fs::write(self.config_path(), text).expect("write config");
    }

    /// A config with only `dev` and service `svc` on PostgreSQL at `url`
    /// (a URL or a `${VAR}`), in the project's schema.
    pub fn write_postgres_only_config(&self, url: &str) {
        self.write_raw_config(&format!(
            "[environments.dev]\nstorage = \"file://backups\"\n\n[services.svc]\npostgres = {{ url = \"{url}\", schema = \"{}\" }}\n",
            self.schema
        ));
    }

    /// A config with only `dev` and service `svc` on the test MongoDB, in
    /// the project's database.
    pub fn write_mongodb_only_config(&self) {
        self.write_raw_config(&format!(
            "[environments.dev]\nstorage = \"file://backups\"\n\n[services.svc]\nmongodb = {{ url = \"${{VALERO_MONGO_URL}}\", database = \"{}\" }}\n",
            self.mongo_db
        ));
    }

    pub fn write_raw_config(&self, text: &str) {
        std::fs::write(self.config_path(), text).expect("write config");
    }

    pub fn migration(&self, engine: &str, name: &str, content: &str) -> PathBuf {
        self.migration_for(&self.service, engine, name, content)
    }

    pub fn migration_for(&self, service: &str, engine: &str, name: &str, content: &str) -> PathBuf {
        let dir = self.path().join("migrations").join(service).join(engine);
        std::fs::create_dir_all(&dir).expect("migrations dir");
        let p = dir.join(name);
        std::fs::write(&p, content).expect("write migration");
        p
    }

    pub fn cmd(&self) -> assert_cmd::Command {
        assert_cmd::Command::from_std(self.std_cmd())
    }

    /// The binary with this project's config, for spawning in the background.
    pub fn std_cmd(&self) -> std::process::Command {
        let mut c = std::process::Command::new(assert_cmd::cargo::cargo_bin("valero-db"));
        c.current_dir(self.path())
            .env_remove("VALERO_DB_CONFIG")
            .env_remove("VALERO_DB_ENV")
            .env_remove("VALERO_DB_LOG")
            .arg("--config")
            .arg(self.config_path());
        c
    }

    /// Starts the binary in the background with output discarded.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        self.spawn_with_env(&[], args)
    }

    /// `spawn` with extra environment variables.
    pub fn spawn_with_env(&self, env: &[(&str, &str)], args: &[&str]) -> std::process::Child {
        self.std_cmd()
            .envs(env.iter().copied())
            .args(args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn valero-db")
    }

    /// `run` with extra environment variables.
    pub fn run_with_env(&self, env: &[(&str, &str)], args: &[&str]) -> Run {
        self.std_cmd()
            .envs(env.iter().copied())
            .args(args)
            .output()
            .expect("run valero-db")
            .into()
    }

    pub fn run(&self, args: &[&str]) -> Run {
        let out = self.cmd().args(args).output().expect("run valero-db");
        Run::from(out)
    }

    pub fn psql(&self, sql: &str) -> String {
        psql(sql)
    }

    pub fn drop_all(&self) {
        let _ = psql(&format!(
            "DROP SCHEMA IF EXISTS \"{}\" CASCADE",
            self.schema
        ));
        // A capture slot left behind would keep WAL on the shared server.
        let slot =
            valero_db::engine::postgres::capture::slot_name("dev", &self.service, &self.schema);
        let _ = std::process::Command::new("psql")
            .arg(pg_url())
            .args(["-X", "-q", "-c"])
            .arg(format!(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = '{slot}' AND NOT active; \
                 DROP PUBLICATION IF EXISTS \"{slot}\""
            ))
            .output();
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        self.drop_all();
    }
}

/// Every file below `dir`, recursively (none if it does not exist).
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// Every file below `dir`, zstd-compressed ones decompressed, as one byte
/// string: what a storage folder holds, readable for a search.
pub fn stored_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    for f in files(dir) {
        let raw = std::fs::read(&f).unwrap();
        if f.extension().is_some_and(|e| e == "zst") {
            out.extend(zstd::decode_all(raw.as_slice()).unwrap());
        } else {
            out.extend(raw);
        }
    }
    out
}

/// The `originals` that occur in `haystack`: a leak is any of them found.
pub fn leaked<'a>(haystack: &[u8], originals: &'a [String]) -> Vec<&'a str> {
    originals
        .iter()
        .filter(|o| memchr::memmem::find(haystack, o.as_bytes()).is_some())
        .map(String::as_str)
        .collect()
}

/// Temporary files of objects being written below `dir`.
pub fn tmp_files(dir: &Path) -> usize {
    files(dir)
        .iter()
        .filter(|f| f.to_string_lossy().contains(".tmp-"))
        .count()
}

impl Project {
    /// The complete capture segments (their manifest exists) of service
    /// `svc` in environment `dev`, oldest first.
    pub fn capture_segments(&self, engine: &str) -> Vec<PathBuf> {
        let dir = self
            .path()
            .join("backups/dev/.capture")
            .join(&self.service)
            .join(engine);
        let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.join("segment.json").exists())
            .collect();
        out.sort();
        out
    }
}

/// Runs SQL with psql and returns the unaligned output.
/// A new database on the test server, and its URL. Extensions exist once
/// per database: tests that install them into a service's schema each get
/// their own.
pub fn own_database(tag: &str) -> String {
    let name = unique(tag);
    psql(&format!("CREATE DATABASE \"{name}\""));
    let mut url = url::Url::parse(&pg_url()).expect("VALERO_PG_URL");
    url.set_path(&name);
    url.to_string()
}

impl Project {
    /// Points the project's PostgreSQL service at the database `url`.
    pub fn use_database(&self, url: &str) {
        let text = std::fs::read_to_string(self.config_path()).expect("config");
        self.write_raw_config(&text.replace("${VALERO_PG_URL}", url));
    }
}

/// Runs a command and fails the test with its output unless it exits 0;
/// answers its stdout and stderr together.
pub fn succeeds(cmd: &mut std::process::Command) -> String {
    let out = cmd.output().expect("run the command");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed: {text}");
    text
}

/// Creates a role on the test server unless it exists (tests running at
/// the same time may both try).
pub fn ensure_role(name: &str) {
    psql(&format!(
        "DO $$ BEGIN CREATE ROLE \"{name}\" NOLOGIN; EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
    ));
}

pub fn psql(sql: &str) -> String {
    psql_at(&pg_url(), sql)
}

/// Runs SQL with psql against `url` and returns the unaligned output.
pub fn psql_at(url: &str, sql: &str) -> String {
    let out = std::process::Command::new("psql")
        .arg(url)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Output of one run, with helpers for assertions.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }

    pub fn ok(&self) -> &Self {
        self.expect_code(0)
    }

    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", self.stdout))
    }

    pub fn stdout_has(&self, needle: &str) -> &Self {
        assert!(
            self.stdout.contains(needle),
            "stdout lacks {needle:?}:\n{}",
            self.stdout
        );
        self
    }

    pub fn stderr_has(&self, needle: &str) -> &Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }
}

/// A MongoDB client for checks.
pub async fn mongo(db: &str) -> mongodb::Database {
    mongodb::Client::with_uri_str(mongo_url())
        .await
        .expect("mongo client")
        .database(db)
}

/// A TCP front for a server that a test can cut — every connection closed,
/// new ones closed on arrival — and restore, as a network blip or a server
/// restart would look to a client.
pub struct Blip {
    port: u16,
    down: std::sync::Arc<std::sync::atomic::AtomicBool>,
    open: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
}

impl Blip {
    pub fn start(upstream: u16) -> Blip {
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let open = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (is_down, streams) = (down.clone(), open.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(client) = conn else { continue };
                if is_down.load(Ordering::SeqCst) {
                    let _ = client.shutdown(std::net::Shutdown::Both);
                    continue;
                }
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                {
                    let mut all = streams.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(server.try_clone().unwrap());
                }
                for (mut from, mut to) in [
                    (client.try_clone().unwrap(), server.try_clone().unwrap()),
                    (server, client),
                ] {
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut from, &mut to);
                        let _ = to.shutdown(std::net::Shutdown::Both);
                    });
                }
            }
        });
        Blip { port, down, open }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        for s in self.open.lock().unwrap().drain(..) {
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
    }

    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The scenario most tests start from: migrated, then snapshotted.
impl Project {
    /// Applies the pending migrations without a snapshot.
    pub fn migrate_now(&self) {
        self.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    }

    /// Takes a snapshot in `env` and returns its id.
    pub fn snapshot_in(&self, env: &str) -> String {
        let run = self.run(&["-e", env, "snapshot", "--output", "json"]);
        run.ok();
        run.json()["snapshots"][0]["id"]
            .as_str()
            .expect("snapshot id")
            .to_string()
    }

    /// Migrates, snapshots in `dev`, and returns the snapshot's id.
    pub fn migrate_and_snapshot(&self) -> String {
        self.migrate_now();
        self.snapshot_in("dev")
    }
}

/// The entry of one engine in a command's JSON `services` list (migrate,
/// status), e.g. `engine_entry(&doc, "mongodb")`.
pub fn engine_entry(doc: &serde_json::Value, engine: &str) -> serde_json::Value {
    doc["services"]
        .as_array()
        .unwrap_or_else(|| panic!("no services list in {doc}"))
        .iter()
        .find(|s| s["engine"] == engine)
        .unwrap_or_else(|| panic!("no {engine} entry in {doc}"))
        .clone()
}

/// Waits until the valero-db process `pid` has a PostgreSQL session
/// matching `condition` (on pg_stat_activity).
pub fn wait_for_session(pid: u32, condition: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while sessions_of(pid, condition) == "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "valero-db never reached: {condition}"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Waits until no PostgreSQL session of the (ended) valero-db process
/// `pid` is left: a killed client's backend ends with its statement.
pub fn wait_for_no_session(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while sessions_of(pid, "true") != "0" {
        assert!(
            std::time::Instant::now() < deadline,
            "the sessions of valero-db pid {pid} did not end"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn sessions_of(pid: u32, condition: &str) -> String {
    psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'valero-db host=% pid={pid}' AND {condition}"
    ))
}
