//! `valero-db lint` run the way users run it: a hazard and its safe form
//! per rule as migration files, allow comments with reasons, the JSON
//! report, exit codes (0 with warnings, 5 for errors or denied warnings),
//! pending migrations only unless `--all`, the findings in `migrate
//! --dry-run` and the pre-deploy hook's log, and the example project's
//! migrations lint clean.

use crate::common;

use common::Project;
use serde_json::Value;

/// (rule, hazard, safe form) for PostgreSQL; each becomes a migration file.
const POSTGRES: &[(&str, &str, &str)] = &[
    (
        "require-concurrent-index-creation",
        "CREATE INDEX accounts_name ON accounts (name);",
        "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY accounts_name ON accounts (name);",
    ),
    (
        "constraint-missing-not-valid",
        "ALTER TABLE accounts ADD CONSTRAINT positive CHECK (balance >= 0);",
        "ALTER TABLE accounts ADD CONSTRAINT positive CHECK (balance >= 0) NOT VALID;",
    ),
    (
        "adding-foreign-key-constraint",
        "ALTER TABLE accounts ADD CONSTRAINT parent_fk FOREIGN KEY (parent) REFERENCES accounts (id);",
        "ALTER TABLE accounts ADD CONSTRAINT parent_fk FOREIGN KEY (parent) REFERENCES accounts (id) NOT VALID;",
    ),
    (
        "adding-not-nullable-field",
        "ALTER TABLE accounts ALTER COLUMN name SET NOT NULL;",
        "ALTER TABLE accounts ADD CONSTRAINT name_not_null CHECK (name IS NOT NULL) NOT VALID;",
    ),
    (
        "changing-column-type",
        "ALTER TABLE accounts ALTER COLUMN balance TYPE numeric(20, 2);",
        "ALTER TABLE accounts ADD COLUMN balance_wide numeric(20, 2);",
    ),
    (
        "adding-field-with-default",
        "ALTER TABLE accounts ADD COLUMN token uuid DEFAULT gen_random_uuid();",
        "ALTER TABLE accounts ADD COLUMN flag boolean DEFAULT false;",
    ),
    (
        "renaming-column",
        "ALTER TABLE accounts RENAME COLUMN name TO title;",
        "ALTER TABLE accounts ADD COLUMN title text;",
    ),
    (
        "lock-table",
        "LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;",
        "SELECT 1;",
    ),
    (
        "vacuum-full",
        "-- valero:no-transaction\nVACUUM FULL accounts;",
        "-- valero:no-transaction\nVACUUM accounts;",
    ),
    (
        "cluster",
        "CLUSTER accounts USING accounts_pkey;",
        "ANALYZE accounts;",
    ),
    (
        "concurrently-in-transaction",
        "CREATE INDEX CONCURRENTLY accounts_balance ON accounts (balance);",
        "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY accounts_balance ON accounts (balance);",
    ),
    (
        "no-transaction-several-statements",
        "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY a1 ON accounts (name);\nCREATE INDEX CONCURRENTLY a2 ON accounts (balance);",
        "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY a1 ON accounts (name);",
    ),
    (
        "down-loses-data",
        "ALTER TABLE accounts DROP COLUMN balance;",
        "ALTER TABLE accounts ADD COLUMN note text;",
    ),
];

/// (rule, hazard, safe form) for MongoDB command files.
const MONGODB: &[(&str, &str, &str)] = &[
    (
        "mongodb-drop",
        r#"[{"drop": "old_events"}]"#,
        r#"[{"create": "events"}]"#,
    ),
    (
        "mongodb-index-on-existing-collection",
        r#"[{"createIndexes": "customers", "indexes": [{"key": {"email": 1}, "name": "email_1"}]}]"#,
        r#"[{"create": "tags"}, {"createIndexes": "tags", "indexes": [{"key": {"name": 1}, "name": "name_1"}]}]"#,
    ),
    (
        "mongodb-validator-on-existing-data",
        r#"[{"collMod": "customers", "validator": {"email": {"$exists": true}}}]"#,
        r#"[{"collMod": "customers", "validator": {"email": {"$exists": true}}, "validationAction": "warn"}]"#,
    ),
    (
        "mongodb-write-without-filter",
        r#"[{"update": "customers", "updates": [{"q": {}, "u": {"$set": {"vip": false}}, "multi": true}]}]"#,
        r#"[{"update": "customers", "updates": [{"q": {"vip": {"$exists": false}}, "u": {"$set": {"vip": false}}, "multi": true}]}]"#,
    ),
];

/// A project with one file per hazard and per safe form; returns, per
/// rule, the hazard's and the safe form's file names.
fn project_with_fixtures() -> (Project, Vec<(String, String, String)>) {
    let p = Project::new("lint");
    let mut version = 1;
    let mut files = Vec::new();
    for (engine, cases, ext) in [("postgres", POSTGRES, "sql"), ("mongodb", MONGODB, "json")] {
        for (rule, hazard, safe) in cases {
            let slug = rule.replace('-', "_");
            let mut names = Vec::new();
            for (kind, body) in [("hazard", hazard), ("safe", safe)] {
                let name = format!("{version:04}_{kind}_{slug}");
                p.migration(engine, &format!("{name}.up.{ext}"), body);
                let down = if ext == "sql" {
                    "SELECT 1;"
                } else {
                    r#"[{"ping": 1}]"#
                };
                p.migration(engine, &format!("{name}.down.{ext}"), down);
                names.push(format!("svc/{engine}/{name}.up.{ext}"));
                version += 1;
            }
            files.push((rule.to_string(), names[0].clone(), names[1].clone()));
        }
    }
    (p, files)
}

fn findings(report: &Value) -> Vec<(String, String, Option<String>)> {
    report["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("no findings in {report}"))
        .iter()
        .map(|f| {
            (
                f["file"].as_str().unwrap().to_string(),
                f["rule"].as_str().unwrap().to_string(),
                f["allowed"].as_str().map(str::to_string),
            )
        })
        .collect()
}

#[test]
fn every_rule_finds_its_hazard_and_not_the_safe_form() {
    let (p, files) = project_with_fixtures();
    let run = p.run(&["lint", "--all", "--output", "json"]);
    let report = run.json();
    let found = findings(&report);
    for (rule, hazard, safe) in &files {
        assert!(
            found.iter().any(|(f, r, _)| f == hazard && r == rule),
            "{rule} not reported for {hazard}: {found:?}"
        );
        let in_safe: Vec<_> = found.iter().filter(|(f, _, _)| f == safe).collect();
        assert!(
            in_safe.is_empty(),
            "the safe form {safe} has findings: {in_safe:?}"
        );
    }
    // Errors (CONCURRENTLY inside the transaction) make it exit 5.
    run.expect_code(5);
    assert_eq!(report["error"]["kind"], "lint");
    let first = &report["findings"][0];
    for key in ["file", "at", "rule", "severity", "message", "help"] {
        assert!(!first[key].is_null(), "{key} missing in {first}");
    }
}

#[test]
fn warnings_pass_unless_denied_and_an_allow_comment_records_its_reason() {
    let p = Project::new("lint_exit");
    p.migration(
        "postgres",
        "0001_accounts.up.sql",
        "CREATE TABLE accounts (id int PRIMARY KEY, name text);",
    );
    p.migration(
        "postgres",
        "0002_index.up.sql",
        "CREATE INDEX accounts_name ON accounts (name);\n",
    );
    let warned = p.run(&["lint", "--all"]);
    warned
        .ok()
        .stdout_has("svc/postgres/0002_index.up.sql:1  warning  require-concurrent-index-creation")
        .stdout_has("0 error(s), 1 warning(s), 0 allowed in 2 file(s)");
    p.run(&["lint", "--all", "--deny", "warnings"])
        .expect_code(5)
        .stderr_has("1 warning(s) (warnings denied)");
    p.migration(
        "postgres",
        "0002_index.up.sql",
        "-- valero:allow require-concurrent-index-creation accounts has 40 rows in every environment\nCREATE INDEX accounts_name ON accounts (name);\n",
    );
    let allowed = p.run(&["lint", "--all", "--deny", "warnings", "--output", "json"]);
    allowed.ok();
    assert_eq!(
        findings(&allowed.json()),
        vec![(
            "svc/postgres/0002_index.up.sql".to_string(),
            "require-concurrent-index-creation".to_string(),
            Some("accounts has 40 rows in every environment".to_string())
        )]
    );
    // An allow without its reason is an error of its own.
    p.migration(
        "postgres",
        "0002_index.up.sql",
        "-- valero:allow require-concurrent-index-creation\nCREATE INDEX accounts_name ON accounts (name);\n",
    );
    p.run(&["lint", "--all"])
        .expect_code(5)
        .stdout_has("allow-without-reason");
}

#[test]
fn only_pending_migrations_are_linted_and_migrate_dry_run_shows_their_findings() {
    let p = Project::new("lint_pending");
    p.migration(
        "postgres",
        "0001_accounts.up.sql",
        "CREATE TABLE accounts (id int PRIMARY KEY, name text);\nLOCK TABLE accounts;\n",
    );
    p.migrate_now();
    p.migration(
        "postgres",
        "0002_index.up.sql",
        "CREATE INDEX accounts_name ON accounts (name);\n",
    );
    let pending = p.run(&["lint", "--output", "json"]);
    pending.ok();
    let found = findings(&pending.json());
    assert_eq!(
        found
            .iter()
            .map(|(f, r, _)| (f.as_str(), r.as_str()))
            .collect::<Vec<_>>(),
        vec![(
            "svc/postgres/0002_index.up.sql",
            "require-concurrent-index-creation"
        )],
        "the applied file's LOCK TABLE is not pending"
    );
    assert_eq!(pending.json()["files"], 1);
    let all = p.run(&["lint", "--all", "--output", "json"]).json();
    assert!(findings(&all).iter().any(|(_, r, _)| r == "lock-table"));

    let dry = p.run(&["migrate", "--dry-run"]);
    dry.ok()
        .stdout_has("apply 2")
        .stdout_has("0002_index.up.sql:1  warning  require-concurrent-index-creation");
    let dry = p.run(&["migrate", "--dry-run", "--output", "json"]).json();
    let pg = common::engine_entry(&dry, "postgres");
    assert_eq!(pg["lint"][0]["rule"], "require-concurrent-index-creation");
    // The pipeline's pre-deploy hook says it in the log, and applies.
    p.run(&["hook", "pre-deploy", "--release", "v2", "--yes"])
        .ok()
        .stderr_has(
            "lint: svc/postgres/0002_index.up.sql:line 1 warning require-concurrent-index-creation",
        );
    p.run(&["status", "--check"]).ok();
}

#[test]
fn the_example_project_lints_clean() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    common::succeeds(
        std::process::Command::new(assert_cmd::cargo::cargo_bin("valero-db"))
            .current_dir(root)
            .env_remove("VALERO_DB_CONFIG")
            .args(["lint", "--all", "--deny", "warnings"]),
    );
}
