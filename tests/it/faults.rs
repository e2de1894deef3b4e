//! Fault injection against real servers: the S3 server dies mid-snapshot,
//! and restore/deploy meet a held lock.

use crate::common;

use common::{closed_port, psql, Project};

fn s3s_bin() -> String {
    if let Ok(found) = std::process::Command::new("sh")
        .args(["-c", "command -v s3s-fs"])
        .output()
    {
        let p = String::from_utf8_lossy(&found.stdout).trim().to_string();
        if !p.is_empty() {
            return p;
        }
    }
    format!(
        "{}/.cargo/bin/s3s-fs",
        std::env::var("HOME").unwrap_or_default()
    )
}

fn start_s3(port: u16, dir: &std::path::Path) -> std::process::Child {
    let child = std::process::Command::new(s3s_bin())
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--access-key",
            "fault-key",
            "--secret-key",
            "fault-secret-123",
        ])
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("s3s-fs (installed by scripts/services.sh)");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

/// Migration 0001: a table `big` of `rows` rows, each with `row_bytes`
/// (a multiple of 32) of incompressible text.
fn big_table(p: &Project, rows: u32, row_bytes: u32) {
    p.migration(
        "postgres",
        "0001_big.up.sql",
        &format!(
            "CREATE TABLE big (id int, blob text);\n\
             INSERT INTO big SELECT g, (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, {}) i) FROM generate_series(1, {rows}) g;\n",
            row_bytes / 32
        ),
    );
}

#[test]
fn the_s3_server_dying_mid_snapshot_is_exit_3_no_migration_and_no_snapshot_listed() {
    let p = Project::new("f_s3dies");
    let port = closed_port();
    let data = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(data.path().join("fault-bucket")).unwrap();
    p.write_config(&format!(
        "[environments.fragile]\nstorage = \"s3://fault-bucket/x\"\ns3 = {{ endpoint = \"http://127.0.0.1:{port}\", force_path_style = true, region = \"us-east-1\", part_size = \"5MiB\" }}\n"
    ));
    big_table(&p, 40000, 1280);
    p.migrate_now();
    p.migration(
        "postgres",
        "0002_more.up.sql",
        "CREATE TABLE more (id int);\n",
    );
    let mut s3 = start_s3(port, data.path());
    let migrate = p
        .std_cmd()
        .env("AWS_ACCESS_KEY_ID", "fault-key")
        .env("AWS_SECRET_ACCESS_KEY", "fault-secret-123")
        .args(["-e", "fragile", "migrate"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the S3 server as soon as the snapshot has stored its first object.
    let before = common::files(data.path()).len();
    let started = std::time::Instant::now();
    while common::files(data.path()).len() == before
        && started.elapsed() < std::time::Duration::from_secs(30)
    {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    s3.kill().unwrap();
    let _ = s3.wait();
    let out = migrate.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("S3"), "{stderr}");
    assert_eq!(
        psql(&format!(
            "SELECT to_regclass('\"{}\".more') IS NULL",
            p.schema
        )),
        "t",
        "no migration was applied"
    );
    // Back up: no partial snapshot is listed, and the migration now works.
    let mut s3 = start_s3(port, data.path());
    let list = p
        .cmd()
        .env("AWS_ACCESS_KEY_ID", "fault-key")
        .env("AWS_SECRET_ACCESS_KEY", "fault-secret-123")
        .args(["-e", "fragile", "snapshots", "list", "--output", "json"])
        .output()
        .unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(doc["snapshots"].as_array().unwrap().len(), 0, "{doc}");
    let ok = p
        .cmd()
        .env("AWS_ACCESS_KEY_ID", "fault-key")
        .env("AWS_SECRET_ACCESS_KEY", "fault-secret-123")
        .args(["-e", "fragile", "migrate"])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let _ = s3.kill();
    let _ = s3.wait();
}

#[test]
fn restore_and_deploy_meet_a_held_lock_with_exit_4_naming_the_holder() {
    let p = Project::new("f_lock");
    p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (v int);\n");
    p.migrate_now();
    p.run(&["snapshot"]).ok();
    let list = p.run(&["snapshots", "list", "--output", "json"]);
    let id = list.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    p.migration("postgres", "0002_slow.up.sql", "SELECT pg_sleep(8);\n");
    let mut holder = p.spawn(&["migrate", "--no-snapshot", "--yes"]);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    p.run(&[
        "restore",
        "--snapshot",
        &id,
        "--yes",
        "--lock-timeout",
        "1s",
    ])
    .expect_code(4)
    .stderr_has("held by");
    p.run(&[
        "deploy",
        "--release",
        "v2",
        "--lock-timeout",
        "1s",
        "--",
        "true",
    ])
    .expect_code(4)
    .stderr_has("held by");
    let json = p.run(&["--output", "json", "snapshot", "--lock-timeout", "1s"]);
    json.expect_code(4);
    let doc = json.json();
    assert_eq!(doc["error"]["kind"], "lock_timeout", "{doc}");
    assert_eq!(doc["error"]["exit_code"], 4, "{doc}");
    assert!(holder.wait().unwrap().success());
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM \"{}\".valero_schema_history",
            p.schema
        )),
        "2"
    );
}

/// A folder that holds at most a few hundred KiB: a tmpfs when this process
/// may mount one, else the kernel's file-size limit applied to the child
/// (both make writes fail the way a full disk does).
struct SmallDisk {
    dir: tempfile::TempDir,
    mounted: bool,
}

const SMALL_DISK_BYTES: u64 = 256 << 10;

impl SmallDisk {
    fn new() -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        // VALERO_TEST_NO_TMPFS=1 exercises the fallback on a root machine.
        let mounted = unsafe { libc::geteuid() } == 0
            && std::env::var_os("VALERO_TEST_NO_TMPFS").is_none()
            && std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", &format!("size={SMALL_DISK_BYTES}")])
                .arg("tmpfs")
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        SmallDisk { dir, mounted }
    }

    /// Applies the limit to `cmd` when no tmpfs could be mounted.
    fn limit(&self, cmd: &mut std::process::Command) {
        if self.mounted {
            return;
        }
        use std::os::unix::process::CommandExt;
        unsafe {
            cmd.pre_exec(|| {
                let lim = libc::rlimit {
                    rlim_cur: SMALL_DISK_BYTES,
                    rlim_max: SMALL_DISK_BYTES,
                };
                libc::setrlimit(libc::RLIMIT_FSIZE, &lim);
                // An ignored SIGXFSZ turns the limit into EFBIG from write().
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                Ok(())
            });
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        }
    }
}

#[test]
fn a_full_local_storage_is_exit_3_with_no_manifest_and_no_migration() {
    let p = Project::new("f_full");
    let disk = SmallDisk::new();
    p.write_config(&format!(
        "[environments.small]\nstorage = \"file://{}\"\n",
        disk.dir.path().display()
    ));
    big_table(&p, 5000, 320);
    p.migrate_now();
    p.migration(
        "postgres",
        "0002_more.up.sql",
        "CREATE TABLE more (id int);\n",
    );
    for args in [
        vec!["-e", "small", "migrate"],
        vec!["-e", "small", "snapshot"],
    ] {
        let mut cmd = p.std_cmd();
        cmd.args(&args);
        disk.limit(&mut cmd);
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{args:?}: {stderr}");
        assert!(stderr.contains("is full"), "{stderr}");
        assert!(stderr.contains("snapshots prune"), "{stderr}");
        let left = common::files(disk.dir.path());
        assert!(
            left.iter()
                .all(|f| !f.ends_with("manifest.json") && !f.to_string_lossy().contains(".tmp-")),
            "{left:?}"
        );
    }
    assert_eq!(
        psql(&format!(
            "SELECT to_regclass('\"{}\".more') IS NULL",
            p.schema
        )),
        "t",
        "no migration was applied"
    );
    p.run(&["-e", "small", "snapshots", "list", "--output", "json"])
        .stdout_has("\"snapshots\": []");
}

/// An S3 front that answers the first `fail` connections with
/// `503 SlowDown` (as S3 does under load) and forwards the rest to the real
/// server. Returns its port and the count of failures served.
fn flaky_s3(upstream: u16, fail: usize) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    use std::sync::atomic::Ordering;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut client) = conn else { continue };
            if n < fail {
                let _ = client.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match client.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => head.extend_from_slice(&buf[..k]),
                    }
                }
                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>";
                let _ = write!(
                    client,
                    "HTTP/1.1 503 Slow Down\r\nContent-Type: application/xml\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                counter.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let (mut client, mut server) = (client, server);
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c2, &mut s2);
                let _ = s2.shutdown(std::net::Shutdown::Write);
            });
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut server, &mut client);
                let _ = client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    (port, served)
}

/// An S3 front that passes everything to the real server except reads of
/// stored objects (GetObject), which it answers with `500 InternalError`:
/// writes succeed and the read-back fails.
fn unreadable_s3(upstream: u16) -> u16 {
    common::s3_front::refusing(upstream, |line| {
        line.starts_with("GET ") && !line.contains("list-type")
    })
}

#[test]
fn a_failed_read_back_of_the_pre_migrate_snapshot_blocks_the_migration() {
    let p = Project::new("f_readback");
    let port = unreadable_s3(s3_port());
    p.write_config(&format!(
        "[environments.readfail]\nstorage = \"s3://${{VALERO_S3_BUCKET}}/{0}\"\ns3 = {{ endpoint = \"http://127.0.0.1:{port}\", force_path_style = true, region = \"us-east-1\" }}\n",
        p.schema
    ));
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (v int);\nINSERT INTO t VALUES (1);\n",
    );
    p.run(&["-e", "readfail", "migrate"])
        .expect_code(3)
        .stderr_has("HTTP 500");
    assert_eq!(
        psql(&format!("SELECT to_regclass('\"{}\".t') IS NULL", p.schema)),
        "t",
        "no migration was applied"
    );
    // Nothing that looks complete was left behind in the bucket.
    let list = p.run(&["-e", "s3", "snapshots", "list", "--output", "json"]);
    list.ok().stdout_has("\"snapshots\": []");
}

fn s3_port() -> u16 {
    common::s3_front::s3_port()
}

#[test]
fn transient_s3_errors_are_retried_and_persistent_ones_are_exit_3() {
    use std::sync::atomic::Ordering;
    let p = Project::new("f_flaky");
    let (flaky, flaky_served) = flaky_s3(s3_port(), 3);
    let (dead, dead_served) = flaky_s3(s3_port(), usize::MAX);
    p.write_config(&format!(
        "[environments.flaky]\nstorage = \"s3://${{VALERO_S3_BUCKET}}/{0}\"\ns3 = {{ endpoint = \"http://127.0.0.1:{flaky}\", force_path_style = true, region = \"us-east-1\" }}\n\
         [environments.down]\nstorage = \"s3://${{VALERO_S3_BUCKET}}/{0}\"\ns3 = {{ endpoint = \"http://127.0.0.1:{dead}\", force_path_style = true, region = \"us-east-1\" }}\n",
        p.schema
    ));
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE t (v int);\nINSERT INTO t VALUES (1);\n",
    );

    p.run(&["-e", "down", "migrate"])
        .expect_code(3)
        .stderr_has("HTTP 503")
        .stderr_has("after 5 attempts");
    assert_eq!(
        dead_served.load(Ordering::SeqCst),
        5,
        "every attempt of the first request (5 in the standard retry mode) met the error"
    );
    assert_eq!(
        psql(&format!("SELECT to_regclass('\"{}\".t') IS NULL", p.schema)),
        "t",
        "no migration was applied"
    );

    p.run(&["-e", "flaky", "migrate"]).ok();
    assert_eq!(flaky_served.load(Ordering::SeqCst), 3);
    let list = p
        .run(&["-e", "flaky", "snapshots", "list", "--output", "json"])
        .json();
    let id = list["snapshots"][0]["id"].as_str().unwrap().to_string();
    p.run(&["-e", "flaky", "snapshots", "verify", &id]).ok();
}

/// The restart tests share one restartable cluster (the TLS-only one of
/// scripts/services.sh); they take turns.
static RESTARTS: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn restart_postgres() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
    let out = std::process::Command::new(script)
        .arg("restart-pg-tls")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A project whose only database is the restartable cluster.
fn restartable_project(tag: &str) -> Project {
    let p = Project::new(tag);
    p.write_postgres_only_config("${VALERO_PG_TLS_URL}");
    p
}

fn psql_restartable(sql: &str) -> String {
    common::psql_at(&common::env_or_fail("VALERO_PG_TLS_URL"), sql)
}

#[test]
fn postgres_restarting_mid_snapshot_is_a_clear_error_and_a_rerun_succeeds() {
    let _turn = RESTARTS.lock().unwrap_or_else(|e| e.into_inner());
    let p = restartable_project("f_pgrestart_snap");
    big_table(&p, 40000, 1280);
    p.migrate_now();
    let folder = p.path().join("backups/dev/svc");
    // Restart while pg_dump reads the DDL, then while COPY streams rows.
    for point in ["", "postgres/data"] {
        let snapshot = p
            .std_cmd()
            .arg("snapshot")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !common::files(&folder)
            .iter()
            .any(|f| f.to_string_lossy().contains(point))
            && started.elapsed() < std::time::Duration::from_secs(30)
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        restart_postgres();
        let out = snapshot.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "at '{point}': {stderr}");
        assert!(stderr.contains("PostgreSQL of service svc"), "{stderr}");
        let list = p.run(&["snapshots", "list", "--output", "json"]).json();
        assert_eq!(list["snapshots"].as_array().unwrap().len(), 0, "{list}");
    }
    // The server is back: the same command succeeds and verifies.
    p.run(&["snapshot"]).ok();
    p.run(&["snapshots", "verify", "--all"]).ok();
    psql_restartable(&format!("DROP SCHEMA \"{}\" CASCADE", p.schema));
}

#[test]
fn postgres_restarting_mid_migration_leaves_nothing_half_applied_and_a_rerun_succeeds() {
    let _turn = RESTARTS.lock().unwrap_or_else(|e| e.into_inner());
    let p = restartable_project("f_pgrestart_mig");
    p.migration("postgres", "0001_t.up.sql", "CREATE TABLE t (id int);\n");
    p.migrate_now();
    p.migration(
        "postgres",
        "0002_slow.up.sql",
        "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\nSELECT pg_sleep(5);\nCREATE TABLE b (id int);\n",
    );
    let migrate = p
        .std_cmd()
        .args(["migrate", "--no-snapshot", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the migration is inside pg_sleep.
    let started = std::time::Instant::now();
    while psql_restartable("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(5)%' AND pid <> pg_backend_pid()") == "0"
        && started.elapsed() < std::time::Duration::from_secs(30)
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    restart_postgres();
    let out = migrate.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        matches!(out.status.code(), Some(3) | Some(6)),
        "exit 3 or 6, got {:?}: {stderr}",
        out.status.code()
    );
    assert!(
        stderr.contains("0002_slow.up.sql") || stderr.contains("PostgreSQL"),
        "{stderr}"
    );
    let s = &p.schema;
    assert_eq!(
        psql_restartable(&format!(
            "SELECT to_regclass('\"{s}\".a') IS NULL AND to_regclass('\"{s}\".b') IS NULL"
        )),
        "t",
        "nothing of the interrupted migration remains"
    );
    assert_eq!(
        psql_restartable(&format!(
            "SELECT string_agg(version || ':' || state, ',' ORDER BY version) FROM \"{s}\".valero_schema_history"
        )),
        "1:applied"
    );
    p.migrate_now();
    assert_eq!(
        psql_restartable(&format!("SELECT count(*) FROM \"{s}\".a")),
        "1"
    );
    psql_restartable(&format!("DROP SCHEMA \"{s}\" CASCADE"));
}

use common::wait_for_session;

fn signal(child: &std::process::Child, sig: i32) {
    // SAFETY: kill(2) on a child we spawned and have not reaped.
    let r = unsafe { libc::kill(child.id() as i32, sig) };
    assert_eq!(r, 0, "kill failed");
}

#[test]
fn sigterm_and_sigint_are_exit_130_with_the_open_transaction_rolled_back() {
    let p = Project::new("f_signal");
    p.migration(
        "postgres",
        "0001_slow.up.sql",
        "CREATE TABLE t (v int);\nINSERT INTO t VALUES (1);\nSELECT pg_sleep(60);\n",
    );
    let child = p
        .std_cmd()
        .args(["migrate", "--no-snapshot", "--yes", "--output", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_session(child.id(), "query LIKE '%pg_sleep%' AND state = 'active'");
    signal(&child, libc::SIGTERM);
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", out.status);
    // With --output json the interruption is one JSON document too.
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "interrupted", "{doc}");
    assert_eq!(doc["error"]["exit_code"], 130, "{doc}");
    // Its session is ended on the server at once, not when pg_sleep is
    // over: the transaction is rolled back and the lock is free.
    let mut tries = 0;
    while psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'valero-db host=% pid={pid}'"
    )) != "0"
    {
        assert!(tries < 50, "the interrupted migration's session lives on");
        std::thread::sleep(std::time::Duration::from_millis(100));
        tries += 1;
    }
    assert_eq!(
        psql(&format!("SELECT to_regclass('\"{}\".t') IS NULL", p.schema)),
        "t",
        "no table, no history row"
    );
    let status = p.run(&["status", "--output", "json"]).json();
    assert!(status["services"][0]["dirty"].is_null(), "{status}");

    // SIGINT while a restore loads: the old state stays.
    p.migration("postgres", "0001_slow.up.sql", "CREATE TABLE t (v int);\n");
    p.migration(
        "postgres",
        "0002_big.up.sql",
        "CREATE TABLE big (id int PRIMARY KEY, blob text);\nINSERT INTO big SELECT g, repeat(md5(g::text), 30) FROM generate_series(1, 200000) g;\n",
    );
    let id = p.migrate_and_snapshot();
    psql(&format!("DELETE FROM \"{}\".big WHERE id > 10", p.schema));
    let mut child = p.spawn(&["restore", "--snapshot", &id, "--yes"]);
    wait_for_session(
        child.id(),
        "query LIKE 'COPY %big% FROM STDIN%' AND state = 'active'",
    );
    signal(&child, libc::SIGINT);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{status}");
    let mut tries = 0;
    while psql(&format!(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'valero-db host=% pid={}'",
        child.id()
    )) != "0"
    {
        assert!(tries < 50, "the interrupted restore's session did not end");
        std::thread::sleep(std::time::Duration::from_millis(100));
        tries += 1;
    }
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{}\".big", p.schema)),
        "10",
        "the old state stays"
    );
}
