//! Snapshots altered after they were written — by hand, by a bad copy, by
//! an attacker with write access to the bucket — are refused with exit 5
//! by `snapshots verify` and `restore`, and the database is not touched.

use crate::common;

use std::path::{Path, PathBuf};

use common::Project;
use serde_json::Value;

fn seed(p: &Project) {
    p.migration(
        "postgres",
        "0001_items.up.sql",
        "CREATE TABLE items (id int PRIMARY KEY, name text);\n\
         INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 200) g;\n",
    );
    p.migrate_now();
}

/// Takes a snapshot and returns its folder.
fn take(p: &Project) -> PathBuf {
    let out = p.run(&["snapshot", "--output", "json"]).json();
    let id = out["snapshots"][0]["id"].as_str().unwrap().to_string();
    p.path().join("backups/dev/svc").join(id)
}

fn id_of(dir: &Path) -> String {
    dir.file_name().unwrap().to_string_lossy().into_owned()
}

fn read_manifest(dir: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

fn write_manifest(dir: &Path, m: &Value) {
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_vec_pretty(m).unwrap(),
    )
    .unwrap();
}

fn table_object(m: &Value) -> usize {
    m["objects"]
        .as_array()
        .unwrap()
        .iter()
        .position(|o| o["kind"] == "postgres/table")
        .expect("a table object")
}

/// `verify` and `restore` both refuse with exit 5 and the message, and the
/// live data is unchanged.
fn refused(p: &Project, id: &str, needle: &str) {
    p.run(&["snapshots", "verify", id])
        .expect_code(5)
        .stderr_has(needle);
    p.run(&["restore", "--snapshot", id, "--yes"])
        .expect_code(5)
        .stderr_has(needle);
    assert_eq!(
        p.psql(&format!("SELECT count(*) FROM \"{}\".items", p.schema)),
        "201",
        "the database was touched"
    );
}

#[test]
fn altered_manifests_are_exit_5_and_restore_changes_nothing() {
    let p = Project::new("altered");
    seed(&p);
    let a = take(&p);
    let b = take(&p);
    let id = id_of(&a);
    p.psql(&format!(
        "INSERT INTO \"{}\".items VALUES (9999, 'after the snapshots')",
        p.schema
    ));
    let original = read_manifest(&a);
    let t = table_object(&original);

    type Alteration = (&'static str, fn(&mut Value, usize, &str), &'static str);
    let alterations: Vec<Alteration> = vec![
        (
            "checksum changed",
            |m, t, _| m["objects"][t]["sha256"] = "0".repeat(64).into(),
            "corrupt",
        ),
        (
            "size changed",
            |m, t, _| {
                m["objects"][t]["size"] = (m["objects"][t]["size"].as_u64().unwrap() + 1).into()
            },
            "corrupt",
        ),
        (
            "key escapes with ..",
            |m, t, _| m["objects"][t]["key"] = "../../../etc/passwd".into(),
            "invalid",
        ),
        (
            "absolute key",
            |m, t, _| m["objects"][t]["key"] = "/etc/passwd".into(),
            "invalid",
        ),
        (
            "object missing from the folder",
            |m, t, _| m["objects"][t]["key"] = "postgres/not-there.copy.zst".into(),
            "missing",
        ),
        (
            "manifest of another snapshot",
            |m, _, other| m["id"] = other.into(),
            "moved or altered",
        ),
        (
            "manifest of another service",
            |m, _, _| m["service"] = "crm".into(),
            "moved or altered",
        ),
        (
            "manifest of another environment",
            |m, _, _| m["environment"] = "prod".into(),
            "moved or altered",
        ),
        (
            "unknown field",
            |m, _, _| m["restore_command"] = "rm -rf /".into(),
            "invalid",
        ),
    ];
    let other = id_of(&b);
    for (what, alter, needle) in alterations {
        let mut m = original.clone();
        alter(&mut m, t, &other);
        write_manifest(&a, &m);
        eprintln!("alteration: {what}");
        refused(&p, &id, needle);
    }

    // Truncated JSON.
    let bytes = serde_json::to_vec_pretty(&original).unwrap();
    std::fs::write(a.join("manifest.json"), &bytes[..bytes.len() / 2]).unwrap();
    refused(&p, &id, "invalid");
    // Huge JSON: refused by size before it is parsed.
    std::fs::write(a.join("manifest.json"), vec![b' '; 65 << 20]).unwrap();
    refused(&p, &id, "larger than");
    // `verify --all` reports the altered snapshot too.
    p.run(&["snapshots", "verify", "--all"]).expect_code(5);

    // The untouched manifest restores: the refusals above were real.
    write_manifest(&a, &original);
    p.run(&["snapshots", "verify", &id]).ok();
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(
        p.psql(&format!("SELECT count(*) FROM \"{}\".items", p.schema)),
        "200"
    );
}

#[test]
fn an_object_swapped_in_from_another_snapshot_is_exit_5_naming_it() {
    let p = Project::new("swapped");
    seed(&p);
    let a = take(&p);
    p.psql(&format!(
        "UPDATE \"{}\".items SET name = 'renamed' WHERE id <= 100; INSERT INTO \"{0}\".items VALUES (9999, 'x')",
        p.schema
    ));
    let b = take(&p);
    let ma = read_manifest(&a);
    let key = ma["objects"][table_object(&ma)]["key"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::copy(b.join(&key), a.join(&key)).unwrap();
    p.psql(&format!("DELETE FROM \"{}\".items WHERE id = 1", p.schema));
    let id = id_of(&a);
    for args in [
        vec!["snapshots", "verify", id.as_str()],
        vec!["restore", "--snapshot", id.as_str(), "--yes"],
    ] {
        p.run(&args).expect_code(5).stderr_has(&key);
    }
    assert_eq!(
        p.psql(&format!("SELECT count(*) FROM \"{}\".items", p.schema)),
        "200",
        "the database was touched"
    );
}
