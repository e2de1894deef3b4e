//! Secrets never leak: every command runs at trace level with a distinctive
//! password in every database URL, an S3 secret key and a snapshot
//! encryption key — on success paths and on the error paths where drivers
//! like to echo URLs — and then everything written is searched: stdout,
//! stderr, manifests, deployment records, metrics and every stored object
//! (local and S3).

use crate::common;

use std::path::{Path, PathBuf};

use common::{closed_port, env_or_fail, files, pg_password, Project};

const SNAPSHOT_KEY: &str = "5ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7e75ec7";
const WRONG_PG: &str = "Pg-Leak-Wrong-77";
const MONGO_PW: &str = "Mongo-Leak-Pw-4242";
const WRONG_S3: &str = "Wrong-S3-Secret-5150";

/// A file's bytes, decompressed when it is a plain zstd object.
fn readable(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_default();
    if path.extension().is_some_and(|e| e == "zst") && !bytes.starts_with(b"VALERO-E") {
        zstd::decode_all(&bytes[..]).unwrap_or(bytes)
    } else {
        bytes
    }
}

#[test]
fn no_secret_appears_in_any_output_file_record_or_metric() {
    leak_check();
}

fn with_svc<'a>(a: &[&'a str]) -> Vec<&'a str> {
    ["-s", "svc"].iter().chain(a).copied().collect()
}

fn leak_check() {
    let p = Project::new("leak");
    let pg = common::pg_url();
    let pg_port = url::Url::parse(&pg).unwrap().port().unwrap();
    let s3_secret = env_or_fail("AWS_SECRET_ACCESS_KEY");
    p.write_raw_config(&format!(
        r#"[environments.dev]
storage = "file://backups"

[environments.s3]
storage = "s3://${{VALERO_S3_BUCKET}}/{prefix}-leak"
s3 = {{ endpoint = "${{VALERO_S3_ENDPOINT}}", force_path_style = true, region = "us-east-1" }}

[environments.secure]
storage = "file://vault"
encryption = {{ key_env = "VALERO_TEST_LEAK_KEY" }}

[services.svc]
postgres = {{ url = "${{VALERO_PG_URL}}", schema = "{schema}" }}
mongodb = {{ url = "${{VALERO_MONGO_URL}}", database = "{db}" }}

[services.badpg]
postgres = {{ url = "postgres://valero:{WRONG_PG}@127.0.0.1:{pg_port}/valero", schema = "{schema}_bad" }}

[services.badmongo]
mongodb = {{ url = "mongodb://leaker:{MONGO_PW}@127.0.0.1:{dead}/?directConnection=true&serverSelectionTimeoutMS=1500", database = "x" }}
"#,
        prefix = p.schema,
        schema = p.schema,
        db = p.mongo_db,
        dead = closed_port(),
    ));
    p.migration_for(
        "svc",
        "postgres",
        "0001_a.up.sql",
        "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n",
    );
    p.migration_for("svc", "postgres", "0001_a.down.sql", "DROP TABLE a;\n");
    p.migration_for("svc", "mongodb", "0001_m.up.json", r#"[{"create": "m"}]"#);
    p.migration_for("svc", "mongodb", "0001_m.down.json", r#"[{"drop": "m"}]"#);
    let metrics = p.path().join("metrics.prom");
    let metrics_arg = metrics.display().to_string();

    let mut outputs = Vec::new();
    let mut run = |args: &[&str], env: &[(&str, &str)], expected: i32| {
        let mut cmd = p.cmd();
        cmd.env("VALERO_TEST_LEAK_KEY", SNAPSHOT_KEY);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.arg("-vv").args(args).output().unwrap();
        let text = format!(
            "$ {args:?}\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(expected), "{text}");
        outputs.push(text);
    };
    let with = with_svc;
    run(&with(&["status"]), &[], 0);
    run(&with(&["migrate"]), &[], 0);
    run(&with(&["-e", "s3", "snapshot"]), &[], 0);
    run(&with(&["-e", "s3", "snapshots", "verify", "--all"]), &[], 0);
    run(&with(&["-e", "secure", "snapshot"]), &[], 0);
    run(&with(&["-e", "secure", "snapshots", "list"]), &[], 0);
    run(&with(&["snapshots", "list", "--output", "json"]), &[], 0);
    run(
        &with(&["restore", "--timestamp", "2999-01-01T00:00:00Z", "--yes"]),
        &[],
        0,
    );
    run(
        &with(&[
            "deploy",
            "--release",
            "v9",
            "--metrics-file",
            &metrics_arg,
            "--",
            "true",
        ]),
        &[],
        0,
    );
    run(&with(&["hook", "pre-deploy", "--release", "v10"]), &[], 0);
    run(
        &with(&[
            "hook",
            "post-deploy",
            "--release",
            "v10",
            "--result",
            "failure",
        ]),
        &[],
        7,
    );
    run(&with(&["releases"]), &[], 0);
    run(&with(&["check", "--output", "json"]), &[], 0);
    run(&with(&["rollback", "--to", "0", "--yes"]), &[], 0);
    // Error paths: a wrong PostgreSQL password, MongoDB credentials for a
    // server that is not there, a wrong S3 secret.
    run(&["-s", "badpg", "status"], &[], 3);
    run(&["-s", "badpg", "migrate", "--output", "json"], &[], 3);
    run(&["-s", "badmongo", "status"], &[], 3);
    run(
        &with(&["-e", "s3", "snapshot"]),
        &[("AWS_SECRET_ACCESS_KEY", WRONG_S3)],
        3,
    );

    let secrets = [
        pg_password(),
        WRONG_PG.to_string(),
        MONGO_PW.to_string(),
        s3_secret,
        WRONG_S3.to_string(),
        SNAPSHOT_KEY.to_string(),
    ];
    let mut written: Vec<(String, Vec<u8>)> = outputs
        .into_iter()
        .map(|o| ("output".to_string(), o.into_bytes()))
        .collect();
    // Everything in the project folder except the inputs (config, migrations).
    let mut stored: Vec<PathBuf> = files(p.path())
        .into_iter()
        .filter(|f| f != &p.config_path() && !f.starts_with(p.path().join("migrations")))
        .collect();
    // s3s-fs keeps objects as files; scan them (MinIO under Docker does not,
    // and its objects are the same as the local ones scanned here).
    let s3_dir = std::env::var("VALERO_S3_DATA_DIR").ok().map(PathBuf::from);
    let s3_files: Vec<PathBuf> = s3_dir
        .iter()
        .flat_map(|d| files(d))
        .filter(|f| {
            f.display()
                .to_string()
                .contains(&format!("{}-leak", p.schema))
        })
        .collect();
    assert!(s3_dir.is_none() || !s3_files.is_empty());
    stored.extend(s3_files);
    assert!(stored.iter().any(|f| f.ends_with("metrics.prom")));
    assert!(stored
        .iter()
        .any(|f| f.display().to_string().contains(".deployments")));
    for f in stored {
        written.push((f.display().to_string(), readable(&f)));
    }
    for (what, bytes) in &written {
        let text = String::from_utf8_lossy(bytes);
        for s in &secrets {
            assert!(
                !text.contains(s.as_str()),
                "secret leaked in {what}:\n{text}"
            );
        }
    }
    // The searches looked at real content.
    assert!(written
        .iter()
        .any(|(_, b)| String::from_utf8_lossy(b).contains("***")));
}

/// `--log-format json` (or VALERO_DB_LOG_FORMAT=json): every stderr line
/// one JSON object with level, target and message, the environment, the
/// service, the engine and the snapshot id as span fields, and no secret — also from a failing run
/// whose driver error names the URL.
#[test]
fn json_logs_are_one_object_per_line_with_environment_service_and_no_secret() {
    let p = Project::new("jlog");
    p.migration(
        "postgres",
        "0001_a.up.sql",
        "CREATE TABLE a (id int);\nINSERT INTO a VALUES (1);\n",
    );
    let parsed = |stderr: &str| -> Vec<serde_json::Value> {
        stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .filter(|l| !l.starts_with("error:") && !l.starts_with("  "))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
            .collect()
    };
    let in_span = |lines: &[serde_json::Value], field: &str, value: &str| {
        lines.iter().any(|l| {
            l["spans"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s[field] == value))
        })
    };
    let run = p.run(&["--log-format", "json", "-s", "svc", "migrate", "--yes"]);
    run.ok();
    let lines = parsed(&run.stderr);
    assert!(!lines.is_empty(), "migrate logs its snapshot");
    for l in &lines {
        assert!(
            l["level"].is_string() && l["target"].is_string() && l["message"].is_string(),
            "{l}"
        );
    }
    assert!(in_span(&lines, "environment", "dev"), "{}", run.stderr);
    assert!(in_span(&lines, "service", "svc"), "{}", run.stderr);
    assert!(in_span(&lines, "engine", "postgres"), "{}", run.stderr);
    let listed = p.run(&["snapshots", "list", "--output", "json"]);
    let snapshot = listed.json()["snapshots"][0]["id"].clone();
    let snapshot = snapshot
        .as_str()
        .unwrap_or_else(|| panic!("{}", listed.all()));
    assert!(in_span(&lines, "snapshot", snapshot), "{}", run.stderr);
    // A wrong password in the URL: the error and the logs mask it.
    let wrong = "Wr0ng-pa\"ss\\word-42";
    p.write_postgres_only_config(&format!(
        "postgres://valero:{}@127.0.0.1:{}/valero",
        url::form_urlencoded::byte_serialize(wrong.as_bytes()).collect::<String>(),
        url::Url::parse(&common::pg_url()).unwrap().port().unwrap()
    ));
    let failed = p.run_with_env(&[("VALERO_DB_LOG_FORMAT", "json")], &["-vv", "status"]);
    failed.expect_code(3);
    parsed(&failed.stderr);
    let escaped = serde_json::to_string(wrong).unwrap();
    for secret in [wrong, escaped.trim_matches('"'), &pg_password()] {
        assert!(
            !failed.all().contains(secret),
            "{secret} in {}",
            failed.all()
        );
    }
}
