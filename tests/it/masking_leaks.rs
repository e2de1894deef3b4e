//! A refresh that cannot leak: rules on partitioned tables mask every
//! partition at every level; a refresh to a time between environments whose
//! schema and database names differ applies every captured change (masked)
//! and counts what it applied; old row images of `REPLICA IDENTITY FULL`
//! tables are masked so a replayed UPDATE or DELETE finds its row; rules
//! that cannot fit are refused by `mask check` and the restore alike (exit
//! 2, nothing changed); an engine without rules is refused from a protected
//! environment; the masking key never appears in output.

use crate::common;

use bson::{doc, Document};
use common::oracle::{data_fingerprint, mongo_state};
use common::{leaked, psql, unique, Project};

const KEY: &str = "masking-key-for-leak-tests-0123456789";

/// The partitioned and the identity-FULL tables, with rows whose personal
/// values are `secret{i}@real.de` (unique strings) and ISO birthdays
/// `1970-01-01 + i days`.
const SCHEMA: &str = r#"
CREATE TABLE invoices (id int NOT NULL, region text NOT NULL, email text, born text, opens time)
  PARTITION BY LIST (region);
CREATE TABLE inv_de PARTITION OF invoices FOR VALUES IN ('de');
CREATE TABLE inv_at PARTITION OF invoices FOR VALUES IN ('at') PARTITION BY RANGE (id);
CREATE TABLE inv_at_low PARTITION OF inv_at FOR VALUES FROM (0) TO (1000);
CREATE TABLE inv_at_high PARTITION OF inv_at FOR VALUES FROM (1000) TO (MAXVALUE);
CREATE TABLE visits (id int NOT NULL, email text) PARTITION BY HASH (id);
CREATE TABLE visits_0 PARTITION OF visits FOR VALUES WITH (MODULUS 2, REMAINDER 0);
CREATE TABLE visits_1 PARTITION OF visits FOR VALUES WITH (MODULUS 2, REMAINDER 1);
CREATE TABLE contacts (email text NOT NULL, note text);
ALTER TABLE contacts REPLICA IDENTITY FULL;
INSERT INTO invoices SELECT i, CASE WHEN i % 2 = 0 THEN 'de' ELSE 'at' END,
  'secret' || i || '@real.de', (date '1970-01-01' + i)::text, time '08:00' + i * interval '1 minute'
  FROM generate_series(1, 1500) i;
INSERT INTO visits SELECT i, 'visitor' || i || '@real.de' FROM generate_series(1, 200) i;
INSERT INTO contacts SELECT 'contact' || i || '@real.de', 'note' || i FROM generate_series(1, 50) i;
"#;

const RULES: &str = r#"
[environments.dev.masking]
key_env = "${VALERO_TEST_MASK_KEY}"

[environments.dev.masking.services.svc.postgres]
"invoices.email" = "email"
"invoices.born" = "date_shift(30)"
"visits.email" = "hash"
"contacts.email" = "email"
"contacts.note" = "text"

[environments.dev.masking.services.svc.mongodb]
"people.email" = "email"
"people.years.2024.email" = "email"
"late.email" = "email"
"#;

/// A project whose service's schema and database are named by variables,
/// so each environment's commands run with names of their own (as a
/// pipeline sets them per environment).
struct Names {
    p: Project,
    /// (schema, database) of prod, dev and a second dev copy.
    prod: (String, String),
    dev: (String, String),
    copy: (String, String),
}

impl Names {
    fn new(tag: &str) -> Names {
        let p = Project::new(tag);
        p.write_raw_config(&format!(
            r#"[environments.dev]
storage = "file://backups"

[environments.prod]
storage = "file://backups"
protected = true

[services.svc]
postgres = {{ url = "${{VALERO_PG_URL}}", schema = "${{VALERO_TEST_SCHEMA}}" }}
mongodb = {{ url = "${{VALERO_MONGO_URL}}", database = "${{VALERO_TEST_DB}}" }}
{RULES}"#
        ));
        let pair = |env: &str| {
            (
                unique(&format!("t_{tag}_{env}")),
                unique(&format!("t_{tag}_{env}")),
            )
        };
        Names {
            prod: pair("prod"),
            dev: pair("dev"),
            copy: pair("copy"),
            p,
        }
    }

    fn run(&self, names: &(String, String), args: &[&str]) -> common::Run {
        self.p.run_with_env(
            &[
                ("VALERO_TEST_SCHEMA", &names.0),
                ("VALERO_TEST_DB", &names.1),
                ("VALERO_TEST_MASK_KEY", KEY),
            ],
            args,
        )
    }

    /// A masked refresh of `names` in dev from prod's snapshot `id`.
    fn refresh_from(&self, names: &(String, String), id: &str) -> common::Run {
        let args = [
            "-e",
            "dev",
            "restore",
            "--from-env",
            "prod",
            "--snapshot",
            id,
        ];
        self.run(names, &[&args[..], &["--yes", "--output", "json"]].concat())
    }
}

impl Drop for Names {
    fn drop(&mut self) {
        let _ = self.run(&self.prod, &["-e", "prod", "capture", "--drop", "--yes"]);
        for (schema, _) in [&self.prod, &self.dev, &self.copy] {
            let _ = std::panic::catch_unwind(|| {
                psql(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            });
        }
    }
}

/// Every row of every table of a schema (partitions are tables), as COPY
/// text.
fn rows_of(schema: &str) -> String {
    let tables = psql(&format!(
        "SELECT string_agg(quote_ident(relname), ',' ORDER BY relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND relkind = 'r'"
    ));
    tables
        .split(',')
        .map(|t| psql(&format!("COPY \"{schema}\".{t} TO STDOUT")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refresh_to_a_time_between_differently_named_environments_masks_every_partition_and_change(
) {
    let n = Names::new("mleak");
    n.p.migration("postgres", "0001_invoices.up.sql", SCHEMA);
    n.p.migration(
        "mongodb",
        "0001_people.up.json",
        &serde_json::json!([
            {"create": "people"},
            {"insert": "people", "documents": [
                {"_id": 1, "email": "mongo1@real.de", "years": {"2024": {"email": "year1@real.de"}}},
                {"_id": 2, "email": "mongo2@real.de", "years": {"2024": {"email": "year2@real.de"}}},
            ]},
        ])
        .to_string(),
    );
    n.run(
        &n.prod,
        &["-e", "prod", "migrate", "--no-snapshot", "--yes"],
    )
    .ok();
    n.run(&n.prod, &["-e", "prod", "capture", "--once"]).ok();
    n.run(&n.prod, &["-e", "prod", "snapshot"]).ok();
    // A partition attached after that snapshot, by a migration (which
    // takes the post-migrate snapshot replay starts from).
    n.p.migration(
        "postgres",
        "0002_swiss.up.sql",
        "CREATE TABLE inv_ch (LIKE invoices);
         ALTER TABLE invoices ATTACH PARTITION inv_ch FOR VALUES IN ('ch');",
    );
    n.run(&n.prod, &["-e", "prod", "migrate", "--yes"]).ok();

    // What mask check says each rule acts on: every partition, every level.
    let check = n.run(
        &n.dev,
        &[
            "-e",
            "dev",
            "mask",
            "check",
            "--from-env",
            "prod",
            "--output",
            "json",
        ],
    );
    check.ok();
    let acts: Vec<String> = check.json()["services"][0]["acts_on"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| format!("{} -> {}", a["rule"].as_str().unwrap(), a["tables"]))
        .collect();
    assert!(
        acts.contains(
            &r#"invoices.email -> ["inv_at_high","inv_at_low","inv_ch","inv_de"]"#.to_string()
        ),
        "{acts:?}"
    );
    assert!(
        acts.contains(&r#"visits.email -> ["visits_0","visits_1"]"#.to_string()),
        "{acts:?}"
    );

    // Changes after the snapshot: into partitions at both levels, an
    // UPDATE and a DELETE that find their rows only by the whole (masked)
    // old image, a MongoDB update under a numeric field name and a
    // collection the snapshot does not have.
    let prod = &n.prod.0;
    psql(&format!(
        "INSERT INTO \"{prod}\".invoices VALUES (5001, 'at', 'late-at@real.de', '1999-09-09', '10:00'), \
                                            (5002, 'de', 'late-de@real.de', '1999-09-10', '10:01'), \
                                            (5003, 'ch', 'late-ch@real.de', '1999-09-11', '10:02');
         INSERT INTO \"{prod}\".visits VALUES (201, 'late-visitor@real.de');
         UPDATE \"{prod}\".contacts SET note = 'changed' WHERE email = 'contact7@real.de';
         DELETE FROM \"{prod}\".contacts WHERE email = 'contact8@real.de';"
    ));
    let db = common::mongo(&n.prod.1).await;
    db.collection::<Document>("people")
        .update_one(
            doc! {"_id": 1},
            doc! {"$set": {"years.2024.email": "year1-new@real.de"}},
        )
        .await
        .unwrap();
    db.collection::<Document>("late")
        .insert_one(doc! {"_id": 1, "email": "late-mongo@real.de"})
        .await
        .unwrap();
    n.run(&n.prod, &["-e", "prod", "capture", "--once"]).ok();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let t = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    n.run(&n.prod, &["-e", "prod", "capture", "--once"]).ok();
    // The state at T, snapshotted: the oracle for the refresh to T.
    let at_t = n.run(&n.prod, &["-e", "prod", "snapshot", "--output", "json"]);
    at_t.ok();
    let at_t = at_t.json()["snapshots"][0]["id"]
        .as_str()
        .unwrap()
        .to_string();

    let refresh = n.run(
        &n.dev,
        &[
            "-e",
            "dev",
            "restore",
            "--from-env",
            "prod",
            "--timestamp",
            &t,
            "--yes",
            "--output",
            "json",
        ],
    );
    refresh.ok();
    let report = refresh.json();
    let service = &report["services"][0];
    assert_eq!(service["masked"], true, "{report}");
    assert_eq!(
        service["masked_engines"],
        serde_json::json!({"postgres": true, "mongodb": true})
    );
    let replayed = |engine: &str| {
        service["restored"]
            .as_array()?
            .iter()
            .find(|e| e["engine"] == engine)
            .and_then(|e| e.get("replayed").cloned())
    };
    let pg = replayed("postgres").unwrap_or_else(|| panic!("no PostgreSQL replay in {report}"));
    let mongo = replayed("mongodb").unwrap_or_else(|| panic!("no MongoDB replay in {report}"));
    // Three INSERTs into partitions at two levels (one attached after the
    // first snapshot), one into a HASH partition, an UPDATE and a DELETE:
    // applied, every one.
    assert_eq!(pg["changes"].as_u64(), Some(6), "{pg}");
    assert_eq!((mongo["changes"].as_u64()), Some(2), "{mongo}");

    // Exactly the masked refresh of the snapshot taken at T.
    n.refresh_from(&n.copy, &at_t).ok();
    assert_eq!(data_fingerprint(&n.dev.0), data_fingerprint(&n.copy.0));
    let (dev_db, copy_db) = (
        common::mongo(&n.dev.1).await,
        common::mongo(&n.copy.1).await,
    );
    assert_eq!(mongo_state(&dev_db).await, mongo_state(&copy_db).await);

    // Nothing personal arrived: not in any partition, not in a replayed row.
    let mut originals: Vec<String> = (1..=1500).map(|i| format!("secret{i}@real.de")).collect();
    originals.extend((1..=201).map(|i| format!("visitor{i}@real.de")));
    originals.extend((1..=50).map(|i| format!("contact{i}@real.de")));
    originals.extend(
        [
            "late-at@real.de",
            "late-de@real.de",
            "late-ch@real.de",
            "late-visitor@real.de",
        ]
        .map(String::from),
    );
    let rows = rows_of(&n.dev.0);
    assert!(rows.lines().count() > 1700, "every partition was read");
    assert_eq!(leaked(rows.as_bytes(), &originals), Vec::<&str>::new());
    let dev = &n.dev.0;
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM \"{dev}\".invoices WHERE born = (date '1970-01-01' + id)::text OR born IS NULL"
        )),
        "0",
        "every birthday moved, none blanked"
    );
    for (partition, id) in [("inv_at_high", 5001), ("inv_ch", 5003)] {
        assert_eq!(
            psql(&format!(
                "SELECT count(*) FROM \"{dev}\".{partition} WHERE id = {id}"
            )),
            "1"
        );
    }
    // The replayed UPDATE and DELETE found their rows by the masked image.
    assert_eq!(
        psql(&format!("SELECT count(*) FROM \"{dev}\".contacts")),
        "49"
    );
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM \"{dev}\".contacts WHERE note = 'changed'"
        )),
        "0",
        "'changed' is masked text too"
    );
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM \"{dev}\".contacts WHERE note !~ '^[a-z]+[0-9]+$'"
        )),
        "1"
    );
    let bson = format!("{:?}", mongo_state(&dev_db).await);
    for original in [
        "mongo1@real.de",
        "year1@real.de",
        "year1-new@real.de",
        "late-mongo@real.de",
    ] {
        assert!(!bson.contains(original), "{original} in {bson}");
    }
    let late = dev_db
        .collection::<Document>("late")
        .find_one(doc! {"_id": 1})
        .await
        .unwrap();
    assert!(late.is_some_and(|d| d.get_str("email").unwrap().ends_with("@example.invalid")));

    // The next refresh first snapshots what the last one left: that
    // snapshot, like everything else in the target's storage, holds no
    // original either.
    let next = n.refresh_from(&n.dev, &at_t);
    next.ok();
    let pre = next.json()["services"][0]["pre_restore_snapshot"]
        .as_str()
        .unwrap_or_else(|| panic!("no pre-restore snapshot in {}", next.all()))
        .to_string();
    let pre_bytes = common::stored_bytes(&n.p.path().join("backups/dev/svc").join(&pre));
    assert!(
        memchr::memmem::find(&pre_bytes, b"@example.invalid").is_some(),
        "the pre-restore snapshot holds the masked rows"
    );
    originals.extend(
        [
            "mongo1@real.de",
            "year1@real.de",
            "year1-new@real.de",
            "late-mongo@real.de",
        ]
        .map(String::from),
    );
    let stored = common::stored_bytes(&n.p.path().join("backups/dev"));
    assert_eq!(leaked(&stored, &originals), Vec::<&str>::new());
}

/// Rules that cannot fit the target's columns, and the reason each gives.
const MISFITS: &[(&str, &str)] = &[
    (
        r#""parents.code" = "email"
"children.parent_code" = "email""#,
        "parents.code is character varying(20); email writes up to 33 characters",
    ),
    (r#""parents.label" = "hash""#, "parents.label is character varying(12); hash writes up to 16 characters"),
    (r#""parents.small" = "number_range(0, 40000)""#, "parents.small is smallint; number_range(0, 40000) goes beyond it"),
    (
        r#""parents.code" = "hash""#,
        "children.parent_code references parents.code: both must be masked by the same transformer (they are: no rule and hash)",
    ),
    (
        r#""parents.code" = "hash"
"children.parent_code" = "iban""#,
        "children.parent_code references parents.code: both must be masked by the same transformer (they are: iban and hash)",
    ),
    (r#""children.nick" = "name""#, "children.nick is unique; name may give two rows one value"),
    (r#""parents.mail" = "email""#, "parents.mail is of domain mail_address, whose CHECK constraints email may not meet"),
    (r#""parents.opens" = "date_shift(3)""#, "parents.opens is time without time zone; date_shift does not produce such values"),
];

#[tokio::test(flavor = "multi_thread")]
async fn rules_that_cannot_fit_and_engines_without_rules_are_refused_before_anything_changes() {
    let p = Project::new("mfit");
    p.migration(
        "postgres",
        "0001_parents.up.sql",
        r#"CREATE DOMAIN mail_address AS text CHECK (VALUE LIKE '%@%');
           CREATE TABLE parents (id int PRIMARY KEY, code varchar(20) UNIQUE, label varchar(12), small smallint,
                                 born text, opens time, mail mail_address);
           CREATE TABLE children (id int PRIMARY KEY, parent_code varchar(20) REFERENCES parents (code), nick text);
           CREATE UNIQUE INDEX children_nick ON children (lower(nick));
           INSERT INTO parents SELECT i, 'code' || i, 'label' || i, i, (date '1980-01-01' + i)::text, '08:00',
                                      'p' || i || '@real.de' FROM generate_series(1, 20) i;
           INSERT INTO children SELECT i, 'code' || i, 'nick' || i FROM generate_series(1, 20) i;"#,
    );
    p.migration("mongodb", "0001_people.up.json", r#"[{"create": "people"}, {"insert": "people", "documents": [{"_id": 1, "email": "m@real.de"}]}]"#);
    p.migrate_now();
    let id = p.snapshot_in("prod");
    let with_rules = |postgres: &str, mongodb: &str| {
        p.write_config(&format!(
            "[environments.dev.masking]\nkey_env = \"${{VALERO_TEST_MASK_KEY}}\"\n\n\
             [environments.dev.masking.services.svc.postgres]\n{postgres}\n\n\
             [environments.dev.masking.services.svc.mongodb]\n{mongodb}\n"
        ))
    };
    let run = |args: &[&str]| p.run_with_env(&[("VALERO_TEST_MASK_KEY", KEY)], args);
    let before = data_fingerprint(&p.schema);
    let mongo_before = mongo_state(&common::mongo(&p.mongo_db).await).await;
    let unchanged = |what: &str| {
        assert_eq!(data_fingerprint(&p.schema), before, "{what}");
    };
    let refresh = ["restore", "--from-env", "prod", "--snapshot", &id, "--yes"];
    for (rules, reason) in MISFITS {
        with_rules(rules, r#""people.email" = "email""#);
        run(&["mask", "check", "--from-env", "prod"])
            .expect_code(2)
            .stdout_has(reason);
        run(&refresh).expect_code(2).stderr_has(reason);
        unchanged(rules);
    }

    // A value its transformer cannot stand in for ends the refresh.
    psql(&format!(
        "UPDATE \"{}\".parents SET born = '04.03.1975' WHERE id = 7",
        p.schema
    ));
    let born = p.snapshot_in("prod");
    let before = data_fingerprint(&p.schema);
    with_rules(
        r#""parents.born" = "date_shift(30)""#,
        r#""people.email" = "email""#,
    );
    let run_born = run(&[
        "restore",
        "--from-env",
        "prod",
        "--snapshot",
        &born,
        "--yes",
    ]);
    run_born
        .expect_code(2)
        .stderr_has("masking table parents: row 20, column born: date_shift cannot stand in for a value that is not an ISO date");
    assert!(
        !run_born.all().contains("04.03.1975"),
        "the value is never shown"
    );
    assert_eq!(data_fingerprint(&p.schema), before);

    // An empty rules table, or rules for one engine only, are no rules for
    // the other: refused from a protected environment, engine named.
    for (postgres, mongodb, missing) in [
        ("", "", "svc (postgres), svc (mongodb)"),
        ("", r#""people.email" = "email""#, "svc (postgres)"),
        (r#""parents.code" = "keep""#, "", "svc (mongodb)"),
    ] {
        with_rules(postgres, mongodb);
        run(&refresh)
            .expect_code(2)
            .stderr_has(&format!("has no masking rules for {missing}"));
        run(&["mask", "check", "--from-env", "prod"])
            .expect_code(2)
            .stdout_has("rules for svc: a refresh from prod would be refused");
        assert_eq!(data_fingerprint(&p.schema), before);
    }
    assert_eq!(
        mongo_state(&common::mongo(&p.mongo_db).await).await,
        mongo_before
    );

    // `key_env = "${VAR}"` names the variable, as every secret of the file
    // is written; the key appears nowhere, not even when it is wrong.
    with_rules(
        r#""parents.code" = "hash"
"children.parent_code" = "hash""#,
        r#""people.email" = "email""#,
    );
    let masked = run(&[
        "restore",
        "--from-env",
        "prod",
        "--snapshot",
        &born,
        "--yes",
        "--output",
        "json",
    ]);
    masked.ok();
    assert_eq!(masked.json()["services"][0]["masked"], true);
    assert!(!masked.all().contains(KEY));
    let short = p.run_with_env(&[("VALERO_TEST_MASK_KEY", "too-short")], &refresh);
    short
        .expect_code(2)
        .stderr_has("VALERO_TEST_MASK_KEY: a masking key needs at least 16 bytes");
    assert!(!short.all().contains("too-short"), "{}", short.all());
}
