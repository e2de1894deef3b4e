//! A staging refresh without personal data: `restore --from-env prod`
//! applies the target environment's masking rules while the data streams,
//! on PostgreSQL and MongoDB at once. Every original value is searched for
//! in every table's COPY output, every document's raw BSON and the next
//! pre-restore snapshot's objects; keys, joins and uniqueness still hold;
//! the same key masks byte for byte alike, another key differently; the
//! refusals change nothing.

use crate::common;

use bson::{doc, Document, RawDocumentBuf};
use common::oracle::data_fingerprint;
use common::{leaked, psql, Project};
use futures::TryStreamExt;

const CUSTOMERS: usize = 300;
const KEY_VAR: &str = "VALERO_TEST_MASK_KEY";
const KEY: &str = "masking-key-for-tests-0123456789";

/// Customer `i`'s personal values, as production holds them.
struct Person {
    name: String,
    email: String,
    phone: String,
    iban: String,
    note: String,
    mobile: String,
}

fn person(i: usize) -> Person {
    Person {
        name: format!("Kundin Nummer{i:04}"),
        email: format!("kundin{i:04}@beispiel.de"),
        phone: format!("+49 221 555{i:04}"),
        iban: format!("DE89370400440532{i:06}"),
        note: format!("Ruft gern an{i:04}"),
        mobile: format!("+49 170 888{i:04}"),
    }
}

fn originals() -> Vec<String> {
    (1..=CUSTOMERS)
        .map(person)
        .flat_map(|p| [p.name, p.email, p.phone, p.iban, p.note, p.mobile])
        .collect()
}

const RULES: &str = r#"
[environments.dev.masking]
key_env = "VALERO_TEST_MASK_KEY"

[environments.dev.masking.services.svc.postgres]
"customers.name" = "name"
"customers.email" = "email"
"customers.phone" = "phone"
"customers.iban" = "iban"
"customers.birthday" = "date_shift(30)"
"customers.notes" = "text"
"orders.customer_email" = "email"
"orders.remark" = "null"

[environments.dev.masking.services.svc.mongodb]
"people.name" = "name"
"people.email" = "email"
"people.contacts.phone" = "phone"
"people.contacts.kind" = "keep"
"people.notes" = "text"
"people.birthday" = "date_shift(30)"
"#;

/// A service with personal data in both engines, migrated and snapshotted
/// in `prod`; answers the project and the snapshot's id.
async fn production(tag: &str, rules: &str) -> (Project, String) {
    let p = migrated(tag, rules);
    let id = p.snapshot_in("prod");
    (p, id)
}

/// The service with its personal data, migrated, no snapshot yet.
fn migrated(tag: &str, rules: &str) -> Project {
    let p = Project::new(tag);
    p.write_config(rules);
    p.migration(
        "postgres",
        "0001_customers.up.sql",
        r#"CREATE TABLE customers (
             id int PRIMARY KEY, name text NOT NULL, email text NOT NULL UNIQUE,
             phone text, iban text, birthday date, notes text, vip boolean NOT NULL DEFAULT false);
           CREATE TABLE orders (
             id int PRIMARY KEY, customer_email text NOT NULL REFERENCES customers (email),
             amount numeric(10,2) NOT NULL, remark text);
           INSERT INTO customers (id, name, email, phone, iban, birthday, notes)
             SELECT i, 'Kundin Nummer' || lpad(i::text, 4, '0'), 'kundin' || lpad(i::text, 4, '0') || '@beispiel.de',
                    '+49 221 555' || lpad(i::text, 4, '0'), 'DE89370400440532' || lpad(i::text, 6, '0'),
                    date '1950-01-01' + i * 37, E'Ruft gern an' || lpad(i::text, 4, '0') || E'\tmit Tab\\und Backslash'
             FROM generate_series(1, 300) i;
           INSERT INTO customers (id, name, email) VALUES (301, 'ohne', 'ohne@beispiel.de');
           UPDATE customers SET phone = NULL, notes = NULL WHERE id = 301;
           INSERT INTO orders SELECT i, 'kundin' || lpad((1 + i % 300)::text, 4, '0') || '@beispiel.de', i * 1.5,
                  'an Kundin Nummer' || lpad((1 + i % 300)::text, 4, '0')
             FROM generate_series(1, 900) i;"#,
    );
    let people: Vec<serde_json::Value> = (1..=CUSTOMERS)
        .map(|i| {
            let q = person(i);
            serde_json::json!({
                "_id": i, "name": q.name, "email": q.email, "notes": q.note,
                "birthday": {"$date": format!("19{:02}-03-04T05:06:07Z", 70 + i % 29)},
                "contacts": [{"kind": "mobil", "phone": q.mobile}, {"kind": "büro", "phone": q.phone}],
                "score": i,
            })
        })
        .collect();
    p.migration(
        "mongodb",
        "0001_people.up.json",
        &serde_json::json!([
            {"create": "people"},
            {"insert": "people", "documents": people},
            {"createIndexes": "people", "indexes": [{"key": {"email": 1}, "name": "email_unique", "unique": true}]},
        ])
        .to_string(),
    );
    p.migrate_now();
    p
}

fn refresh(p: &Project, id: &str, key: &str, extra: &[&str]) -> common::Run {
    let mut args = vec!["restore", "--from-env", "prod", "--snapshot", id, "--yes"];
    args.extend_from_slice(extra);
    p.run_with_env(&[(KEY_VAR, key)], &args)
}

/// Every table's COPY output, as one text.
fn copy_out(p: &Project) -> String {
    ["customers", "orders"]
        .iter()
        .map(|t| psql(&format!("COPY \"{}\".{t} TO STDOUT", p.schema)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every document's raw BSON, in `_id` order.
async fn raw_documents(p: &Project) -> Vec<u8> {
    let db = common::mongo(&p.mongo_db).await;
    let docs: Vec<RawDocumentBuf> = db
        .collection::<RawDocumentBuf>("people")
        .find(doc! {})
        .sort(doc! {"_id": 1})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    docs.iter().flat_map(|d| d.as_bytes().to_vec()).collect()
}

/// Every object of a snapshot, decompressed, as one byte string.
fn snapshot_bytes(p: &Project, env: &str, id: &str) -> Vec<u8> {
    common::stored_bytes(&p.path().join("backups").join(env).join("svc").join(id))
}

#[tokio::test]
async fn a_masked_refresh_leaves_no_original_value_and_keeps_keys_joins_and_uniqueness() {
    let (p, id) = production("mask_refresh", RULES).await;
    let originals = originals();
    assert_eq!(
        leaked(copy_out(&p).as_bytes(), &originals).len(),
        originals.len() - CUSTOMERS,
        "the fixture holds every original in PostgreSQL (mobile numbers live in MongoDB only)"
    );
    assert!(!leaked(&raw_documents(&p).await, &originals).is_empty());

    let run = refresh(&p, &id, KEY, &["--output", "json"]);
    run.ok();
    assert_eq!(run.json()["services"][0]["masked"], true);
    assert!(!run.all().contains(KEY), "the key is never printed");

    // Not one original value anywhere in the target.
    let text = copy_out(&p);
    assert_eq!(leaked(text.as_bytes(), &originals), Vec::<&str>::new());
    let bson = raw_documents(&p).await;
    assert_eq!(leaked(&bson, &originals), Vec::<&str>::new());
    assert!(!text.contains("Kundin Nummer") && !text.contains("beispiel.de"));

    // Counts, foreign keys, uniqueness, NULLs and unmasked columns.
    let q = |sql: &str| psql(&sql.replace("S.", &format!("\"{}\".", p.schema)));
    assert_eq!(q("SELECT count(*) FROM S.customers"), "301");
    assert_eq!(
        q("SELECT count(*) FROM S.orders o JOIN S.customers c ON c.email = o.customer_email"),
        "900"
    );
    assert_eq!(q("SELECT count(DISTINCT email) FROM S.customers"), "301");
    assert_eq!(
        q("SELECT count(*) FROM S.orders WHERE remark IS NOT NULL"),
        "0"
    );
    assert_eq!(
        q("SELECT phone IS NULL AND notes IS NULL FROM S.customers WHERE id = 301"),
        "t"
    );
    assert_eq!(q("SELECT sum(amount) FROM S.orders"), "608175.00");
    assert_eq!(
        q("SELECT count(*) FROM S.customers WHERE id <= 300 AND (birthday = date '1950-01-01' + id * 37 \
           OR abs(birthday - (date '1950-01-01' + id * 37)) > 30)"),
        "0",
        "every birthday moved, by at most 30 days"
    );
    let iban_ok = q(
        "SELECT bool_and(length(iban) = 22 AND iban LIKE 'DE%') FROM S.customers WHERE id <= 300",
    );
    assert_eq!(iban_ok, "t");
    assert!(q("SELECT notes FROM S.customers WHERE id = 1").contains("\t"));

    // The same customer masks alike in both engines.
    let db = common::mongo(&p.mongo_db).await;
    let people = db.collection::<Document>("people");
    assert_eq!(
        people.count_documents(doc! {}).await.unwrap(),
        CUSTOMERS as u64
    );
    for i in [1, 150, 300] {
        let pg = q(&format!("SELECT email FROM S.customers WHERE id = {i}"));
        let d = people.find_one(doc! {"_id": i}).await.unwrap().unwrap();
        assert_eq!(d.get_str("email").unwrap(), pg, "customer {i}");
        let phone = q(&format!("SELECT phone FROM S.customers WHERE id = {i}"));
        let contacts = d.get_array("contacts").unwrap();
        let office = contacts[1].as_document().unwrap();
        assert_eq!(office.get_str("phone").unwrap(), phone, "phone of {i}");
        assert_eq!(office.get_str("kind").unwrap(), "büro", "kept");
        assert_eq!(number(&d, "score"), i as i64, "unmasked field");
    }

    // The refreshed service is a normal service: migrations apply on top.
    let (first_text, first_bson) = (copy_out(&p), raw_documents(&p).await);
    p.run(&["status", "--check"]).ok();
    p.migration(
        "postgres",
        "0002_city.up.sql",
        "ALTER TABLE customers ADD COLUMN city text;",
    );
    // A rehearsal on production's data is masked the same way, and
    // refused the same way without the key.
    p.run(&["rehearse", "--from-env", "prod"])
        .expect_code(2)
        .stderr_has(KEY_VAR);
    p.run_with_env(&[(KEY_VAR, KEY)], &["rehearse", "--from-env", "prod"])
        .ok()
        .stdout_has("0002");
    p.migrate_now();

    // The same key again: byte-identical data; its pre-restore snapshot
    // (of the masked state) holds no original either.
    let run = refresh(&p, &id, KEY, &["--output", "json"]);
    run.ok();
    assert_eq!(copy_out(&p), first_text);
    assert_eq!(raw_documents(&p).await, first_bson);
    let pre = run.json()["services"][0]["pre_restore_snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = snapshot_bytes(&p, "dev", &pre);
    assert!(stored.len() > 10_000, "the pre-restore snapshot was read");
    assert_eq!(leaked(&stored, &originals), Vec::<&str>::new());

    // Another key: other stand-ins.
    refresh(&p, &id, "another-masking-key-0123456789ab", &[]).ok();
    assert_ne!(copy_out(&p), first_text);
    assert_ne!(raw_documents(&p).await, first_bson);
    assert_eq!(
        leaked(copy_out(&p).as_bytes(), &originals),
        Vec::<&str>::new()
    );
}

/// Ends production's capture (slot, publication, change stream state)
/// however the test ends.
struct ProdCapture<'a>(&'a Project);

impl Drop for ProdCapture<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["-e", "prod", "capture", "--drop", "--yes"]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_masked_refresh_to_a_time_masks_the_replayed_changes_alike() {
    let p = migrated("mask_replay", RULES);
    let _capture = ProdCapture(&p);
    p.run(&["-e", "prod", "capture", "--once"]).ok();
    p.snapshot_in("prod");
    // Changes after the snapshot, with new personal data in both engines.
    let q = |sql: &str| psql(&sql.replace("S.", &format!("\"{}\".", p.schema)));
    q("INSERT INTO S.customers (id, name, email, phone, notes) \
       VALUES (302, 'Neue Kundin', 'neu@beispiel.de', '+49 221 9990302', 'Neue Notiz');
       UPDATE S.customers SET phone = '+49 221 9990005', notes = 'Geaenderte Notiz' WHERE id = 5;
       INSERT INTO S.orders VALUES (901, 'neu@beispiel.de', 9.99, 'an Neue Kundin');
       DELETE FROM S.orders WHERE id = 7;");
    let db = common::mongo(&p.mongo_db).await;
    let people = db.collection::<Document>("people");
    people
        .insert_one(
            doc! {"_id": 302, "name": "Neue Kundin", "email": "neu@beispiel.de",
            "contacts": [{"kind": "mobil", "phone": "+49 170 9990302"}]},
        )
        .await
        .unwrap();
    people
        .update_one(
            doc! {"_id": 5},
            doc! {"$set": {"contacts.1.phone": "+49 221 9990005", "notes": "Geaenderte Notiz"}},
        )
        .await
        .unwrap();
    p.run(&["-e", "prod", "capture", "--once"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    // A pass covers up to a second before it starts: this one covers T.
    p.run(&["-e", "prod", "capture", "--once"]).ok();

    let run = p.run_with_env(
        &[(KEY_VAR, KEY)],
        &["restore", "--from-env", "prod", "--timestamp", &t, "--yes"],
    );
    run.ok().stdout_has("replayed");
    let mut originals = originals();
    originals.extend(
        [
            "Neue Kundin",
            "neu@beispiel.de",
            "9990302",
            "9990005",
            "Neue Notiz",
            "Geaenderte Notiz",
        ]
        .map(String::from),
    );
    assert_eq!(
        leaked(copy_out(&p).as_bytes(), &originals),
        Vec::<&str>::new()
    );
    assert_eq!(
        leaked(&raw_documents(&p).await, &originals),
        Vec::<&str>::new()
    );

    // Replayed rows masked exactly as the snapshot's: one customer, one
    // stand-in, in both engines; the replayed UPDATE found its masked row.
    let key = valero_db::mask::MaskKey::new(KEY.as_bytes()).unwrap();
    let email = valero_db::mask::Transformer::Email
        .apply(&key, "neu@beispiel.de")
        .unwrap();
    assert_eq!(
        q("SELECT email FROM S.customers WHERE id = 302"),
        email.clone().unwrap()
    );
    let new = people.find_one(doc! {"_id": 302}).await.unwrap().unwrap();
    assert_eq!(new.get_str("email").ok(), email.as_deref());
    let phone = q("SELECT phone FROM S.customers WHERE id = 5");
    let five = people.find_one(doc! {"_id": 5}).await.unwrap().unwrap();
    let office = five.get_array("contacts").unwrap()[1]
        .as_document()
        .unwrap();
    assert_eq!(office.get_str("phone").unwrap(), phone);
    assert_eq!(
        Some(phone),
        valero_db::mask::Transformer::Phone
            .apply(&key, "+49 221 9990005")
            .unwrap()
    );
    assert_eq!(q("SELECT count(*) FROM S.customers"), "302");
    assert_eq!(
        q("SELECT count(*) FROM S.orders o JOIN S.customers c ON c.email = o.customer_email"),
        "900"
    );
    assert_eq!(q("SELECT count(*) FROM S.orders WHERE id = 7"), "0");
    assert_eq!(people.count_documents(doc! {}).await.unwrap(), 301);

    // Strict: a string field only a captured change brings (no document of
    // the snapshot has it) is refused like one in the snapshot, and the
    // refused refresh changes nothing.
    p.snapshot_in("prod");
    people
        .insert_one(
            doc! {"_id": 303, "name": "Dritte", "email": "dritte@beispiel.de", "hobby": "Segeln"},
        )
        .await
        .unwrap();
    p.run(&["-e", "prod", "capture", "--once"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t2 = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    p.run(&["-e", "prod", "capture", "--once"]).ok();
    p.write_config(&RULES.replace(
        "key_env = \"VALERO_TEST_MASK_KEY\"",
        "key_env = \"VALERO_TEST_MASK_KEY\"\nstrict = true",
    ));
    let before = (data_fingerprint(&p.schema), raw_documents(&p).await);
    p.run_with_env(
        &[(KEY_VAR, KEY)],
        &["restore", "--from-env", "prod", "--timestamp", &t2, "--yes"],
    )
    .expect_code(2)
    .stderr_has("people.hobby");
    assert_unchanged(&p, &before, "strict refusal in a replay").await;
}

#[tokio::test]
async fn refreshes_the_rules_do_not_cover_are_refused_and_change_nothing() {
    let (p, id) = production("mask_refuse", RULES).await;
    let before = (data_fingerprint(&p.schema), raw_documents(&p).await);
    let unchanged = |what: &'static str| assert_unchanged(&p, &before, what);

    // A transformer that does not exist, or a rule for an unknown service:
    // a configuration error naming the key.
    p.write_config(&RULES.replace(
        "\"customers.email\" = \"email\"",
        "\"customers.email\" = \"mail\"",
    ));
    refresh(&p, &id, KEY, &[])
        .expect_code(2)
        .stderr_has("environments.dev.masking.services.svc.postgres.\"customers.email\": \"mail\" is not a transformer");
    unchanged("unknown transformer").await;
    p.write_config(&RULES.replace("services.svc.mongodb]", "services.crm.mongodb]"));
    refresh(&p, &id, KEY, &[])
        .expect_code(2)
        .stderr_has("environments.dev.masking.services.crm: no such service");
    unchanged("unknown service").await;
    p.write_config(RULES);

    // No key.
    p.run(&["restore", "--from-env", "prod", "--snapshot", &id, "--yes"])
        .expect_code(2)
        .stderr_has(KEY_VAR);
    unchanged("no key").await;
    refresh(&p, &id, "short", &[])
        .expect_code(2)
        .stderr_has("16 bytes");

    // A rule naming a column the snapshot does not have.
    p.write_config(&RULES.replace("\"customers.iban\"", "\"customers.ibna\""));
    refresh(&p, &id, KEY, &[])
        .expect_code(2)
        .stderr_has("customers.ibna is not in the snapshot");
    unchanged("unknown column").await;

    // A collection the snapshot does not have.
    p.write_config(&RULES.replace("\"people.notes\"", "\"persons.notes\""));
    refresh(&p, &id, KEY, &[])
        .expect_code(2)
        .stderr_has("collection persons is not in the snapshot");
    unchanged("unknown collection").await;

    // A transformer whose output does not fit the column.
    p.write_config(&RULES.replace(
        "\"orders.remark\" = \"null\"",
        "\"orders.remark\" = \"null\"\n\"orders.amount\" = \"email\"",
    ));
    refresh(&p, &id, KEY, &[])
        .expect_code(2)
        .stderr_has("orders.amount is numeric(10,2)");
    unchanged("type misfit").await;

    // A unique column under a transformer that may give two rows one value.
    p.write_config(&RULES.replace(
        "\"customers.email\" = \"email\"",
        "\"customers.email\" = \"name\"",
    ));
    refresh(&p, &id, KEY, &[])
        .expect_code(2)
        .stderr_has("customers.email is unique; name may give two rows one value");
    unchanged("unique column").await;

    // Strict: a text column neither masked nor kept.
    p.write_config(
        &RULES
            .replace(
                "key_env = \"VALERO_TEST_MASK_KEY\"",
                "key_env = \"VALERO_TEST_MASK_KEY\"\nstrict = true",
            )
            .replace("\"orders.remark\" = \"null\"\n", ""),
    );
    refresh(&p, &id, KEY, &[])
        .expect_code(2)
        .stderr_has("strict: orders.remark (text) is neither masked nor kept");
    unchanged("strict PostgreSQL").await;

    // Strict on MongoDB: a string field no rule names.
    p.write_config(
        &RULES
            .replace(
                "key_env = \"VALERO_TEST_MASK_KEY\"",
                "key_env = \"VALERO_TEST_MASK_KEY\"\nstrict = true",
            )
            .replace("\"people.contacts.kind\" = \"keep\"\n", ""),
    );
    refresh(&p, &id, KEY, &[])
        .expect_code(2)
        .stderr_has("people.contacts.kind");
    unchanged("strict MongoDB").await;

    // Rules for another service only: a protected source is refused.
    p.write_config("[environments.dev.masking]\nkey_env = \"VALERO_TEST_MASK_KEY\"\n");
    refresh(&p, &id, KEY, &[])
        .expect_code(2)
        .stderr_has("no masking rules for svc");
    unchanged("no rules for the service").await;
}

async fn assert_unchanged(p: &Project, before: &(String, Vec<u8>), what: &str) {
    assert_eq!(data_fingerprint(&p.schema), before.0, "{what}");
    assert_eq!(raw_documents(p).await, before.1, "{what}");
}

/// A number field, whichever integer type the migration stored.
fn number(d: &Document, field: &str) -> i64 {
    match d.get(field) {
        Some(bson::Bson::Int32(n)) => i64::from(*n),
        Some(bson::Bson::Int64(n)) => *n,
        other => panic!("{field} is {other:?}"),
    }
}

#[tokio::test]
async fn mask_check_names_every_rule_that_does_not_fit_without_restoring() {
    let (p, _) = production("mask_check", RULES).await;
    let before = (data_fingerprint(&p.schema), raw_documents(&p).await);
    p.run(&["mask", "check", "--from-env", "prod"])
        .ok()
        .stdout_has("svc: 14 rules against snapshot")
        .stdout_has("every rule fits");

    let bad = RULES
        .replace(
            "\"customers.iban\" = \"iban\"",
            "\"customers.ibna\" = \"iban\"",
        )
        .replace(
            "\"customers.email\" = \"email\"",
            "\"customers.email\" = \"name\"",
        )
        .replace(
            "\"orders.remark\" = \"null\"",
            "\"orders.amount\" = \"phone\"",
        )
        .replace("\"people.notes\" = \"text\"", "\"people.note\" = \"text\"")
        .replace(
            "\"people.email\" = \"email\"",
            "\"people.email\" = \"text\"",
        )
        .replace(
            "\"people.name\" = \"name\"",
            "\"people.contacts\" = \"email\"",
        );
    p.write_config(&bad.replace(
        "key_env = \"VALERO_TEST_MASK_KEY\"",
        "key_env = \"VALERO_TEST_MASK_KEY\"\nstrict = true",
    ));
    let run = p.run(&["mask", "check", "--from-env", "prod", "--output", "json"]);
    run.expect_code(2);
    let problems: Vec<String> = run.json()["services"][0]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let all = problems.join("\n");
    for expected in [
        "column customers.ibna is not in the snapshot",
        "customers.email is unique; name may give two rows one value",
        "orders.amount is numeric(10,2); phone does not produce such values",
        "strict: customers.iban (text) is neither masked nor kept",
        "strict: orders.remark (text) is neither masked nor kept",
    ] {
        assert!(all.contains(expected), "{expected} missing from:\n{all}");
    }
    for expected in [
        "people.email has a unique index; text may give two documents one value",
        "field people.note occurs in none of the snapshot's 300 documents",
        "people: field contacts holds a document, which email cannot mask",
        "strict: people.name is a string field neither masked nor kept",
    ] {
        assert!(all.contains(expected), "{expected} missing from:\n{all}");
    }

    // Samples hold production values: never where no person reads them.
    p.write_config(RULES);
    let run = p.run_with_env(
        &[(KEY_VAR, KEY)],
        &["mask", "check", "--from-env", "prod", "--show-samples"],
    );
    run.ok().stderr_has("terminal only");
    assert!(!run.all().contains("  sample "), "{}", run.all());
    assert_eq!(
        leaked(run.all().as_bytes(), &originals()),
        Vec::<&str>::new()
    );
    // On a terminal (a pseudo-terminal from `script`), they are shown.
    let bin = assert_cmd::cargo::cargo_bin("valero-db");
    let line = format!(
        "{} --config {} mask check --from-env prod --show-samples",
        bin.display(),
        p.config_path().display()
    );
    let shown = std::process::Command::new("script")
        .args(["-qec", &line, "/dev/null"])
        .env(KEY_VAR, KEY)
        .current_dir(p.path())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{text}");
    let key = valero_db::mask::MaskKey::new(KEY.as_bytes()).unwrap();
    let stand_in = valero_db::mask::Transformer::Email
        .apply(&key, "kundin0001@beispiel.de")
        .unwrap()
        .unwrap();
    assert!(
        text.contains(&format!(
            "sample customers.email: \"kundin0001@beispiel.de\" -> \"{stand_in}\""
        )),
        "{text}"
    );
    assert!(text.contains("sample people.contacts.phone: "), "{text}");
    assert_unchanged(&p, &before, "mask check changes nothing").await;
}
