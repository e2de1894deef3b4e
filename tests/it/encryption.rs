//! Client-side encryption of snapshot objects against the real servers:
//! objects are unreadable without the key, `verify` works on the ciphertext
//! without it, a wrong or missing key is refused before anything changes,
//! and altered ciphertext fails the restore even with a rewritten manifest.

use crate::common;

use common::{files, Project};
use serde_json::Value;

const KEY: &str = "3b1f6a0c9d8e7f60514233241506f7e8d9cabbac0d1e2f3041526374859607a8";
const OTHER_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const SECRET_ROW: &str = "TOPSECRET-payroll-row";

fn project(tag: &str) -> Project {
    let p = Project::new(tag);
    p.write_config(&format!(
        "[environments.secure]\nstorage = \"file://vault\"\nencryption = {{ key_env = \"VALERO_TEST_SNAPSHOT_KEY\" }}\n\n\
         [environments.secure_s3]\nstorage = \"s3://${{VALERO_S3_BUCKET}}/{}-enc\"\n\
         s3 = {{ endpoint = \"${{VALERO_S3_ENDPOINT}}\", force_path_style = true, region = \"us-east-1\" }}\n\
         encryption = {{ key_file = \"snapshot.key\" }}\n",
        p.schema
    ));
    p.migration(
        "postgres",
        "0001_pay.up.sql",
        &format!("CREATE TABLE pay (id int PRIMARY KEY, note text);\nINSERT INTO pay SELECT g, '{SECRET_ROW} ' || g FROM generate_series(1, 3000) g;\n"),
    );
    p.migration(
        "mongodb",
        "0001_people.up.json",
        &format!(r#"[{{"create": "people"}}, {{"insert": "people", "documents": [{{"_id": 1, "n": "{SECRET_ROW}"}}]}}]"#),
    );
    p.migrate_now();
    p
}

fn with_key(p: &Project, key: Option<&str>, args: &[&str]) -> common::Run {
    let mut cmd = p.cmd();
    cmd.env_remove("VALERO_TEST_SNAPSHOT_KEY");
    if let Some(k) = key {
        cmd.env("VALERO_TEST_SNAPSHOT_KEY", k);
    }
    common::Run::from(cmd.args(args).output().unwrap())
}

fn count(p: &Project) -> String {
    p.psql(&format!("SELECT count(*) FROM \"{}\".pay", p.schema))
}

#[test]
fn encrypted_snapshots_restore_only_with_their_key_and_verify_without_it() {
    let p = project("enc");
    let snap = with_key(
        &p,
        Some(KEY),
        &["-e", "secure", "snapshot", "--output", "json"],
    );
    snap.ok();
    let id = snap.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let folder = p.path().join("vault/secure/svc").join(&id);
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(folder.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(
        manifest["encryption"]["key_fingerprint"]
            .as_str()
            .unwrap()
            .len(),
        16
    );
    for f in files(&folder) {
        let bytes = std::fs::read(&f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains(KEY), "the key is stored in {}", f.display());
        if !f.ends_with("manifest.json") {
            assert!(
                bytes.starts_with(b"VALERO-E"),
                "{} is not encrypted",
                f.display()
            );
            assert!(zstd::decode_all(&bytes[..]).is_err());
        }
    }
    assert!(!snap.all().contains(KEY));

    // verify needs no key: it checks the stored (encrypted) bytes.
    with_key(&p, None, &["-e", "secure", "snapshots", "verify", &id]).ok();
    with_key(&p, None, &["-e", "secure", "snapshots", "list"]).ok();

    p.psql(&format!("DELETE FROM \"{}\".pay WHERE id > 10", p.schema));
    with_key(
        &p,
        Some(OTHER_KEY),
        &["-e", "secure", "restore", "--snapshot", &id, "--yes"],
    )
    .expect_code(2)
    .stderr_has("fingerprint");
    with_key(
        &p,
        None,
        &["-e", "secure", "restore", "--snapshot", &id, "--yes"],
    )
    .expect_code(2)
    .stderr_has("VALERO_TEST_SNAPSHOT_KEY is not set");
    with_key(&p, Some("abc123"), &["-e", "secure", "snapshot"])
        .expect_code(2)
        .stderr_has("64 hex digits");
    assert_eq!(count(&p), "10", "a refused restore changed the database");

    with_key(
        &p,
        Some(KEY),
        &["-e", "secure", "restore", "--snapshot", &id, "--yes"],
    )
    .ok();
    assert_eq!(count(&p), "3000");
}

#[test]
fn altered_ciphertext_fails_the_restore_even_with_a_rewritten_manifest() {
    use sha2::Digest;
    let p = project("enc_alter");
    let snap = with_key(
        &p,
        Some(KEY),
        &["-e", "secure", "snapshot", "--output", "json"],
    );
    let id = snap.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let folder = p.path().join("vault/secure/svc").join(&id);
    let path = folder.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let objects = manifest["objects"].as_array_mut().unwrap();
    let table = objects
        .iter_mut()
        .find(|o| o["kind"] == "postgres/table")
        .unwrap();
    let object = folder.join(table["key"].as_str().unwrap());
    let mut bytes = std::fs::read(&object).unwrap();
    let at = bytes.len() - 20;
    bytes[at] ^= 0x40;
    std::fs::write(&object, &bytes).unwrap();
    // An attacker with write access rewrites the checksum too.
    table["sha256"] = hex::encode(sha2::Sha256::digest(&bytes)).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    with_key(&p, None, &["-e", "secure", "snapshots", "verify", &id]).ok();

    p.psql(&format!("DELETE FROM \"{}\".pay WHERE id > 10", p.schema));
    with_key(
        &p,
        Some(KEY),
        &["-e", "secure", "restore", "--snapshot", &id, "--yes"],
    )
    .expect_code(5)
    .stderr_has("decryption failed");
    assert_eq!(count(&p), "10", "the database was touched");
}

#[test]
fn a_plaintext_snapshot_planted_in_an_encrypted_environment_is_refused() {
    let p = project("enc_plant");
    let snap = p.run(&["snapshot", "--output", "json"]);
    let id = snap.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let from = p.path().join("backups/dev/svc").join(&id);
    let to = p.path().join("vault/secure/svc").join(&id);
    for f in files(&from) {
        let dest = to.join(f.strip_prefix(&from).unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(&f, &dest).unwrap();
    }
    let path = to.join("manifest.json");
    let mut manifest: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    manifest["environment"] = "secure".into();
    std::fs::write(&path, serde_json::to_vec_pretty(&manifest).unwrap()).unwrap();
    with_key(
        &p,
        Some(KEY),
        &["-e", "secure", "restore", "--snapshot", &id, "--yes"],
    )
    .expect_code(5)
    .stderr_has("not encrypted");
}

#[test]
fn encrypted_snapshots_round_trip_through_s3_with_a_key_file() {
    let p = project("enc_s3");
    std::fs::write(p.path().join("snapshot.key"), format!("{KEY}\n")).unwrap();
    let snap = p.run(&["-e", "secure_s3", "snapshot", "--output", "json"]);
    snap.ok();
    let id = snap.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    p.run(&["-e", "secure_s3", "snapshots", "verify", &id]).ok();
    p.psql(&format!("DELETE FROM \"{}\".pay", p.schema));
    p.run(&["-e", "secure_s3", "restore", "--snapshot", &id, "--yes"])
        .ok();
    assert_eq!(count(&p), "3000");
    std::fs::write(p.path().join("snapshot.key"), OTHER_KEY).unwrap();
    p.run(&["-e", "secure_s3", "restore", "--snapshot", &id, "--yes"])
        .expect_code(2)
        .stderr_has("fingerprint");
}
