//! Snapshots against real PostgreSQL, the MongoDB-protocol server, a local
//! folder and the real S3 server (s3s-fs): format, verification, the
//! pre-migrate snapshot, failure handling and retention.

use crate::common;

use std::io::Read;
use std::path::{Path, PathBuf};

use common::{psql, Project};

fn seed(p: &Project) {
    p.migration(
        "postgres",
        "0001_data.up.sql",
        "CREATE TABLE items (id serial PRIMARY KEY, name text, note text);\n\
         INSERT INTO items (name, note) SELECT 'item ' || g, E'tab\\there\\nnewline \\\\ back ü 🎉' FROM generate_series(1, 500) g;\n\
         INSERT INTO items (name, note) VALUES (NULL, '');\n",
    );
    p.migration("mongodb", "0001_people.up.json", r#"[{"create": "people"}, {"insert": "people", "documents": [{"_id": 1, "n": "a"}, {"_id": 2, "n": {"$numberDecimal": "1.5"}}]}]"#);
}

fn snapshot_dirs(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for svc in std::fs::read_dir(root).into_iter().flatten().flatten() {
        for snap in std::fs::read_dir(svc.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(snap.path());
        }
    }
    out.sort();
    out
}

fn zstd_file(path: &Path) -> Vec<u8> {
    let f = std::fs::File::open(path).unwrap();
    let mut d = zstd::stream::read::Decoder::new(f).unwrap();
    let mut out = Vec::new();
    d.read_to_end(&mut out).unwrap();
    out
}

#[test]
fn migrate_takes_a_verified_pre_migrate_snapshot_with_the_schema_version() {
    let p = Project::new("snap_pre");
    seed(&p);
    p.run(&["migrate"]).ok();
    p.migration(
        "postgres",
        "0002_more.up.sql",
        "ALTER TABLE items ADD COLUMN extra int;\n",
    );
    let run = p.run(&["migrate", "--output", "json"]);
    run.ok();
    let doc = run.json();
    let snaps = doc["snapshots"].as_array().unwrap();
    assert_eq!(snaps.len(), 1, "{doc}");
    assert_eq!(snaps[0]["reason"], "pre-migrate");
    assert_eq!(
        snaps[0]["schema_versions"]["postgres"], 1,
        "taken before 0002"
    );
    let list = p.run(&["snapshots", "list", "--output", "json"]);
    list.ok();
    let all = list.json()["snapshots"].as_array().unwrap().clone();
    assert_eq!(all.len(), 2, "one per migrate run with pending migrations");
    // status names the newest snapshot.
    let status = p.run(&["status", "--output", "json"]);
    status.ok();
    let newest = all.last().unwrap()["id"].as_str().unwrap().to_string();
    assert_eq!(
        status.json()["services"][0]["newest_snapshot"]["id"],
        newest.as_str()
    );
    assert!(status.stdout.contains("\"newest_snapshot\""));
    // Nothing pending: no snapshot.
    p.run(&["migrate"]).ok();
    assert_eq!(
        p.run(&["snapshots", "list", "--output", "json"]).json()["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}

#[test]
fn objects_decompress_and_decode_to_exactly_what_copy_returns() {
    let p = Project::new("snap_copy");
    seed(&p);
    p.migrate_now();
    p.run(&["snapshot", "--label", "fidelity"]).ok();
    let dirs = snapshot_dirs(&p.path().join("backups/dev"));
    assert_eq!(dirs.len(), 1);
    let dir = &dirs[0];
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["label"], "fidelity");
    let items = manifest["objects"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "items")
        .unwrap();
    let stored = zstd_file(&dir.join(items["key"].as_str().unwrap()));
    let out = std::process::Command::new("psql")
        .arg(common::pg_url())
        .args([
            "-X",
            "-c",
            &format!("COPY \"{}\".items TO STDOUT", p.schema),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(items["encoding"], "copy-columns");
    let mut columns = valero_db::snapshot::columns::ColumnDecoder::new();
    let decoded = columns.push(&stored).unwrap();
    columns.finish().unwrap();
    assert_eq!(decoded, out.stdout, "COPY text round-trips byte for byte");
    assert_eq!(items["rows"], 501);
    let pre = String::from_utf8(zstd_file(&dir.join("postgres/pre-data.sql.zst"))).unwrap();
    assert!(
        pre.contains("CREATE TABLE") && pre.contains("items"),
        "{pre}"
    );
    let post = String::from_utf8(zstd_file(&dir.join("postgres/post-data.sql.zst"))).unwrap();
    assert!(post.contains("PRIMARY KEY"), "{post}");
    let seqs = String::from_utf8(zstd_file(&dir.join("postgres/sequences.sql.zst"))).unwrap();
    assert!(
        seqs.contains("items_id_seq") && seqs.contains("501"),
        "{seqs}"
    );
    // MongoDB: concatenated BSON, readable as mongodump's layout.
    let people = zstd_file(&dir.join("mongodb/people.bson.zst"));
    let mut docs = Vec::new();
    let mut rest = &people[..];
    while !rest.is_empty() {
        let len = i32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
        docs.push(bson::Document::from_reader(&rest[..len]).unwrap());
        rest = &rest[len..];
    }
    assert_eq!(docs.len(), 2);
    assert!(matches!(docs[1].get("n"), Some(bson::Bson::Decimal128(_))));
    let meta: serde_json::Value =
        serde_json::from_slice(&zstd_file(&dir.join("mongodb/people.metadata.json.zst"))).unwrap();
    assert_eq!(meta["collectionName"], "people");
    assert!(meta["indexes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["name"] == "_id_"));
}

#[test]
fn a_flipped_byte_fails_verify_with_exit_5_naming_the_object() {
    let p = Project::new("snap_flip");
    seed(&p);
    p.migrate_now();
    p.run(&["snapshot"]).ok();
    let dir = snapshot_dirs(&p.path().join("backups/dev")).remove(0);
    let id = dir.file_name().unwrap().to_string_lossy().to_string();
    p.run(&["snapshots", "verify", &id]).ok();
    let victim = dir.join("postgres/pre-data.sql.zst");
    let mut bytes = std::fs::read(&victim).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&victim, bytes).unwrap();
    p.run(&["snapshots", "verify", &id])
        .expect_code(5)
        .stderr_has("postgres/pre-data.sql.zst");
    p.run(&["snapshots", "verify", "--all"]).expect_code(5);
    std::fs::remove_file(&victim).unwrap();
    p.run(&["snapshots", "verify", &id])
        .expect_code(5)
        .stderr_has("missing");
    p.run(&["snapshots", "verify", "../etc"]).expect_code(2);
}

#[test]
fn a_snapshot_without_manifest_does_not_exist_and_prune_removes_it() {
    let p = Project::new("snap_leftover");
    seed(&p);
    p.migrate_now();
    p.run(&["snapshot"]).ok();
    p.run(&["snapshot"]).ok();
    p.run(&["snapshot"]).ok();
    // An interrupted snapshot: objects but no manifest.
    let leftover = p
        .path()
        .join("backups/dev/svc/20200101T000000.000Z-dead00/postgres");
    std::fs::create_dir_all(&leftover).unwrap();
    std::fs::write(leftover.join("pre-data.sql.zst"), b"partial").unwrap();
    let list = p.run(&["snapshots", "list", "--output", "json"]).json();
    assert_eq!(list["snapshots"].as_array().unwrap().len(), 3);
    // An incomplete snapshot named by id is an integrity failure.
    p.run(&[
        "restore",
        "--snapshot",
        "20200101T000000.000Z-dead00",
        "--yes",
    ])
    .expect_code(5)
    .stderr_has("incomplete");
    // Refused without --yes, showing what it would remove; nothing goes.
    let refused = p.run(&["snapshots", "prune", "--keep-last", "1"]);
    refused
        .expect_code(2)
        .stderr_has("--yes")
        .stdout_has("would remove incomplete leftover");
    let shown = refused
        .stdout
        .lines()
        .filter(|l| l.starts_with("would remove 20"))
        .count();
    assert_eq!(shown, 2, "{}", refused.stdout);
    assert_eq!(snapshot_dirs(&p.path().join("backups/dev")).len(), 4);
    let dry = p.run(&["snapshots", "prune", "--keep-last", "1", "--dry-run"]);
    dry.ok();
    assert!(dry.stdout.contains("would remove"), "{}", dry.stdout);
    assert_eq!(snapshot_dirs(&p.path().join("backups/dev")).len(), 4);
    p.run(&["snapshots", "prune", "--keep-last", "1", "--yes"])
        .ok();
    let left = snapshot_dirs(&p.path().join("backups/dev"));
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(
        p.run(&["snapshots", "list", "--output", "json"]).json()["snapshots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    // The newest is never removed, even with a zero policy.
    p.run(&["snapshots", "prune", "--keep-last", "0", "--yes"])
        .ok();
    assert_eq!(snapshot_dirs(&p.path().join("backups/dev")).len(), 1);
}

#[test]
fn s3_snapshot_with_multipart_objects_lists_and_verifies() {
    let p = Project::new("snap_s3");
    // ~13 MiB after zstd: several 5 MiB parts.
    p.migration(
        "postgres",
        "0001_big.up.sql",
        "CREATE TABLE big (id int, blob text);\n\
         INSERT INTO big SELECT g, (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 40) i) FROM generate_series(1, 20000) g;\n",
    );
    p.run(&["-e", "s3", "migrate"]).ok();
    p.run(&["-e", "s3", "snapshot"]).ok();
    let list = p.run(&["-e", "s3", "snapshots", "list", "--output", "json"]);
    list.ok();
    let snaps = list.json()["snapshots"].as_array().unwrap().clone();
    assert_eq!(snaps.len(), 2, "pre-migrate (empty schema) and manual");
    let big = snaps
        .iter()
        .map(|s| s["size"].as_u64().unwrap())
        .max()
        .unwrap();
    assert!(
        big > 10 << 20,
        "the data must span several parts, got {big}"
    );
    p.run(&["-e", "s3", "snapshots", "verify", "--all"]).ok();
    // No unfinished multipart uploads are left in the bucket folder.
    let data_dir = std::env::var("VALERO_S3_DATA_DIR").unwrap_or_default();
    if !data_dir.is_empty() {
        let stray: Vec<_> = walk(Path::new(&data_dir))
            .into_iter()
            .filter(|f| f.contains(&p.schema) && f.contains("upload"))
            .collect();
        assert!(stray.is_empty(), "{stray:?}");
    }
}

fn walk(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(walk(&e.path()));
        } else {
            out.push(e.path().display().to_string());
        }
    }
    out
}

#[test]
fn unreachable_s3_refuses_the_migration_with_exit_3_and_applies_nothing() {
    let p = Project::new("snap_deads3");
    seed(&p);
    let run = p.run(&["-e", "deads3", "migrate"]);
    run.expect_code(3).stderr_has("S3");
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_namespace WHERE nspname = '{}'",
            p.schema
        )),
        "0"
    );
}

#[test]
fn no_secret_in_manifests_or_snapshot_output() {
    let p = Project::new("snap_secret");
    seed(&p);
    let password = common::pg_password();
    let s3_secret = std::env::var("AWS_SECRET_ACCESS_KEY").unwrap_or_default();
    let mut all = String::new();
    for args in [
        vec!["migrate", "-vv"],
        vec!["snapshot", "-vv"],
        vec!["snapshots", "list", "--output", "json"],
        vec!["-e", "s3", "snapshot", "-vv"],
    ] {
        all.push_str(&p.run(&args).all());
    }
    for dir in snapshot_dirs(&p.path().join("backups/dev")) {
        all.push_str(&String::from_utf8_lossy(
            &std::fs::read(dir.join("manifest.json")).unwrap(),
        ));
        for f in walk(&dir) {
            if f.ends_with(".zst") {
                all.push_str(&String::from_utf8_lossy(&zstd_file(Path::new(&f))));
            }
        }
    }
    assert!(!all.contains(&password), "PostgreSQL password leaked");
    assert!(
        s3_secret.is_empty() || !all.contains(&s3_secret),
        "S3 secret leaked"
    );
}

#[test]
fn every_object_kind_of_the_schema_appears_in_the_ddl() {
    let p = Project::new("snap_kinds");
    p.migration(
        "postgres",
        "0001_kinds.up.sql",
        r#"CREATE TYPE mood AS ENUM ('ok', 'sad');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TYPE floatrange AS RANGE (subtype = float8);
CREATE SEQUENCE counter START 10;
CREATE TABLE parent (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, m mood DEFAULT 'ok', n posint, "Select" text COLLATE "C",
  twice int GENERATED ALWAYS AS (n * 2) STORED, up int REFERENCES parent DEFERRABLE INITIALLY DEFERRED);
CREATE TABLE events (at date NOT NULL, v int) PARTITION BY RANGE (at);
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01');
CREATE INDEX parent_n_idx ON parent (n);
CREATE VIEW parent_view AS SELECT id, m FROM parent;
CREATE MATERIALIZED VIEW parent_mv AS SELECT count(*) AS c FROM parent;
CREATE FUNCTION bump() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN NEW.n := coalesce(NEW.n, 1); RETURN NEW; END $$;
CREATE PROCEDURE noop() LANGUAGE sql AS $$ SELECT 1 $$;
CREATE TRIGGER parent_bump BEFORE INSERT ON parent FOR EACH ROW EXECUTE FUNCTION bump();
COMMENT ON TABLE parent IS 'the parent';
ALTER TABLE parent ENABLE ROW LEVEL SECURITY;
CREATE POLICY parent_all ON parent USING (true);
"#,
    );
    p.migrate_now();
    p.run(&["snapshot"]).ok();
    let dir = snapshot_dirs(&p.path().join("backups/dev")).remove(0);
    let pre = String::from_utf8(zstd_file(&dir.join("postgres/pre-data.sql.zst"))).unwrap();
    let post = String::from_utf8(zstd_file(&dir.join("postgres/post-data.sql.zst"))).unwrap();
    for needle in [
        "CREATE TYPE",
        "AS ENUM",
        "CREATE DOMAIN",
        "AS RANGE",
        "CREATE SEQUENCE",
        "GENERATED ALWAYS AS IDENTITY",
        "* 2)) STORED",
        "COLLATE",
        "PARTITION BY RANGE",
        "FOR VALUES FROM",
        "CREATE VIEW",
        "CREATE MATERIALIZED VIEW",
        "CREATE FUNCTION",
        "CREATE PROCEDURE",
        "COMMENT ON TABLE",
    ] {
        assert!(pre.contains(needle), "pre-data lacks {needle}:\n{pre}");
    }
    for needle in [
        "PRIMARY KEY",
        "FOREIGN KEY",
        "DEFERRABLE INITIALLY DEFERRED",
        "CREATE INDEX",
        "CREATE TRIGGER",
        "CREATE POLICY",
        "ROW LEVEL SECURITY",
    ] {
        assert!(post.contains(needle), "post-data lacks {needle}:\n{post}");
    }
    // Data of partitions is captured from the leaf tables.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let names: Vec<&str> = manifest["objects"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o["name"].as_str())
        .collect();
    assert!(
        names.contains(&"events_2025") && !names.contains(&"events"),
        "{names:?}"
    );
}

#[test]
fn kill_9_in_the_middle_of_a_snapshot_leaves_nothing_listed() {
    let p = Project::new("snap_kill");
    p.migration(
        "postgres",
        "0001_big.up.sql",
        "CREATE TABLE big (id int, blob text);\n\
         INSERT INTO big SELECT g, repeat(md5(g::text), 40) FROM generate_series(1, 150000) g;\n",
    );
    let docs: Vec<String> = (0..3_000)
        .map(|i| format!(r#"{{"_id": {i}, "pad": "{}"}}"#, "m".repeat(3000)))
        .collect();
    p.migration(
        "mongodb",
        "0001_bulk.up.json",
        &format!(
            r#"[{{"create": "bulk"}}, {{"insert": "bulk", "documents": [{}]}}]"#,
            docs.join(",")
        ),
    );
    p.migrate_now();
    let root = p.path().join("backups/dev");
    // Killed hard at several points: as the first object (PostgreSQL DDL)
    // appears, while table rows stream, while a MongoDB collection streams.
    for point in ["", "postgres/data/", "mongodb/"] {
        // A short MongoDB lease: the killed run's lease expires quickly.
        let mut child = p
            .std_cmd()
            .env("VALERO_DB_MONGO_LEASE_TTL", "2")
            .arg("snapshot")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !walk(&root).iter().any(|f| f.contains(point))
            && started.elapsed() < std::time::Duration::from_secs(60)
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        unsafe_kill_9(&mut child);
        assert!(
            child.try_wait().unwrap().is_some_and(|s| !s.success()),
            "the snapshot had finished before the kill at '{point}'"
        );
        let list = p.run(&["snapshots", "list", "--output", "json"]);
        list.ok();
        assert_eq!(
            list.json()["snapshots"].as_array().unwrap().len(),
            0,
            "killed at '{point}': {}",
            list.stdout
        );
    }
    // A later snapshot works, and prune cleans the leftovers.
    p.run(&["snapshot"]).ok();
    p.run(&["snapshots", "prune", "--keep-last", "1", "--yes"])
        .ok();
    assert_eq!(snapshot_dirs(&root).len(), 1);
    assert!(
        walk(&root).iter().all(|f| !f.contains(".tmp-")),
        "no temporary files remain"
    );
}

fn unsafe_kill_9(child: &mut std::process::Child) {
    // std's kill() sends SIGKILL on Unix.
    child.kill().expect("kill -9");
    let _ = child.wait();
}

#[test]
fn types_from_other_schemas_and_extensions_are_recorded_as_requirements() {
    let p = Project::new("snap_req");
    let other = common::unique("t_types");
    psql(&format!("CREATE SCHEMA \"{other}\"; CREATE TYPE \"{other}\".colour AS ENUM ('red'); CREATE EXTENSION IF NOT EXISTS citext"));
    p.migration(
        "postgres",
        "0001_t.up.sql",
        &format!("CREATE TABLE t (c \"{other}\".colour, e public.citext, tags public.citext[]);\n"),
    );
    p.migrate_now();
    p.run(&["snapshot"]).ok();
    let dir = snapshot_dirs(&p.path().join("backups/dev")).remove(0);
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let requires = manifest["engines"][0]["position"]["requires"]
        .as_array()
        .unwrap()
        .clone();
    assert!(
        requires
            .iter()
            .any(|r| r["type"] == "colour" && r["type_schema"] == other.as_str()),
        "{requires:?}"
    );
    assert!(
        requires.iter().any(|r| r["extension"] == "citext"),
        "{requires:?}"
    );
    psql(&format!(
        "DROP SCHEMA \"{}\" CASCADE; DROP SCHEMA \"{other}\" CASCADE",
        p.schema
    ));
}

#[test]
fn storage_keys_start_with_the_environment_under_the_configured_url() {
    let p = Project::new("layout");
    seed(&p);
    p.write_config("\n[environments.nested]\nstorage = \"file://backups/nested\"\n");
    p.migrate_now();
    let id = p.snapshot_in("nested");
    // The URL is the root; the environment's name comes first in every key.
    let manifest = p
        .path()
        .join(format!("backups/nested/nested/svc/{id}/manifest.json"));
    assert!(manifest.is_file(), "{}", manifest.display());
    let id = p.snapshot_in("dev");
    assert!(p
        .path()
        .join(format!("backups/dev/svc/{id}/manifest.json"))
        .is_file());
    // S3: PREFIX/<env>/<service>/<id>/ in the bucket.
    let id = p.snapshot_in("s3");
    let data_dir = common::env_or_fail("VALERO_S3_DATA_DIR");
    let bucket = common::env_or_fail("VALERO_S3_BUCKET");
    let key = Path::new(&data_dir)
        .join(bucket)
        .join(&p.schema)
        .join(format!("s3/svc/{id}/manifest.json"));
    assert!(key.is_file(), "{}", key.display());
}
