//! Fault injection against real servers: the S3 server dies mid-snapshot,
//! and restore/deploy meet a held lock.

mod common;

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

fn files_in(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            n += files_in(&e.path());
        } else {
            n += 1;
        }
    }
    n
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
    p.migration(
        "postgres",
        "0001_big.up.sql",
        "CREATE TABLE big (id int, blob text);\n\
         INSERT INTO big SELECT g, (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 40) i) FROM generate_series(1, 40000) g;\n",
    );
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
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
    let before = files_in(data.path());
    let started = std::time::Instant::now();
    while files_in(data.path()) == before && started.elapsed() < std::time::Duration::from_secs(30)
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
    p.run(&["migrate", "--no-snapshot", "--yes"]).ok();
    p.run(&["snapshot"]).ok();
    let list = p.run(&["snapshots", "list", "--output", "json"]);
    let id = list.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    p.migration("postgres", "0002_slow.up.sql", "SELECT pg_sleep(5);\n");
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
    assert!(holder.wait().unwrap().success());
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM \"{}\".valero_schema_history",
            p.schema
        )),
        "2"
    );
}
