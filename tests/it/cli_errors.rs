//! Bad input of every kind ends in a clear message and the contract's exit
//! code, with nothing changed and no secret printed.

use crate::common;

use common::{pg_password, psql, Project};

#[test]
fn unknown_config_key_names_the_key_and_line() {
    let p = Project::new("badkey");
    p.write_raw_config("[environments.dev]\nstorage = \"file://b\"\nstorrage = \"x\"\n");
    p.run(&["status"])
        .expect_code(2)
        .stderr_has("storrage")
        .stderr_has("line 3");
}

#[test]
fn malformed_toml_is_exit_2() {
    let p = Project::new("malformed");
    p.write_raw_config("[environments.dev\nstorage = ");
    p.run(&["status"])
        .expect_code(2)
        .stderr_has("valero-db.toml");
}

#[test]
fn unset_variable_is_named_without_a_value() {
    let p = Project::new("unset");
    p.write_raw_config(
        "[environments.dev]\nstorage = \"file://b\"\n[services.fibu]\npostgres = { url = \"${FIBU_DATABASE_URL_NOT_SET}\", schema = \"fibu\" }\n",
    );
    p.run(&["status"])
        .expect_code(2)
        .stderr_has("FIBU_DATABASE_URL_NOT_SET");
}

#[test]
fn unknown_environment_and_service_are_exit_2() {
    let p = Project::new("unknown");
    p.run(&["-e", "qa", "status"])
        .expect_code(2)
        .stderr_has("unknown environment 'qa'");
    p.run(&["-s", "nope", "status"])
        .expect_code(2)
        .stderr_has("unknown service 'nope'");
}

#[test]
fn service_names_that_could_escape_a_path_are_exit_2() {
    let p = Project::new("escape");
    p.write_raw_config(
        "[environments.dev]\nstorage = \"file://b\"\n[services.\"../x\"]\npostgres = { url = \"postgres://h/db\", schema = \"s\" }\n",
    );
    p.run(&["status"]).expect_code(2).stderr_has("../x");
}

#[test]
fn bad_migration_file_names_are_exit_2_naming_the_file() {
    let p = Project::new("badname");
    p.migration("postgres", "first_table.up.sql", "SELECT 1;");
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .expect_code(2)
        .stderr_has("first_table.up.sql");
}

#[test]
fn duplicate_versions_are_exit_2() {
    let p = Project::new("dup");
    p.migration("postgres", "0001_a.up.sql", "SELECT 1;");
    p.migration("postgres", "1_b.up.sql", "SELECT 1;");
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .expect_code(2)
        .stderr_has("duplicate version 1");
}

#[test]
fn down_without_up_and_empty_files_are_exit_2() {
    let p = Project::new("orphan");
    p.migration("postgres", "0004_x.down.sql", "SELECT 1;");
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .expect_code(2)
        .stderr_has("0004_x.down.sql");
    let p = Project::new("empty");
    p.migration("postgres", "0001_empty.up.sql", "-- nothing yet\n");
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .expect_code(2)
        .stderr_has("no SQL statement");
    let p = Project::new("emptyjson");
    p.migration("mongodb", "0001_empty.up.json", "[]");
    p.run(&["migrate", "--no-snapshot", "--yes"])
        .expect_code(2)
        .stderr_has("0001_empty.up.json");
}

#[test]
fn lock_timeout_needs_a_unit() {
    let p = Project::new("unit");
    p.run(&["status", "--lock-timeout", "90"])
        .expect_code(2)
        .stderr_has("unit");
}

#[test]
fn unknown_flag_is_exit_2() {
    let p = Project::new("flag");
    p.run(&["migrate", "--frobnicate"]).expect_code(2);
}

#[test]
fn unreachable_postgres_is_exit_3() {
    let p = Project::new("down");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    p.write_raw_config(&format!(
        "[environments.dev]\nstorage = \"file://b\"\n[services.fibu]\npostgres = {{ url = \"postgres://u:Sekrit-Unreach-1@127.0.0.1:{port}/db\", schema = \"fibu\" }}\n"
    ));
    p.migration_for("fibu", "postgres", "0001_a.up.sql", "SELECT 1;");
    let run = p.run(&["migrate", "--no-snapshot", "--yes"]);
    run.expect_code(3).stderr_has("unreachable");
    assert!(!run.all().contains("Sekrit-Unreach-1"), "{}", run.all());
    p.run(&["status"]).expect_code(3);
}

#[test]
fn unreachable_mongodb_is_exit_3() {
    let p = Project::new("mdown");
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    p.write_raw_config(&format!(
        "[environments.dev]\nstorage = \"file://b\"\n[services.crm]\nmongodb = {{ url = \"mongodb://u:Sekrit-Mongo-2@127.0.0.1:{port}/?directConnection=true&serverSelectionTimeoutMS=1500\", database = \"crm\" }}\n"
    ));
    let run = p.run(&["status"]);
    run.expect_code(3);
    assert!(!run.all().contains("Sekrit-Mongo-2"), "{}", run.all());
}

#[test]
fn password_appears_in_no_output_of_any_command() {
    let p = Project::new("secret");
    p.migration("postgres", "0001_a.up.sql", "CREATE TABLE a (id int);\n");
    p.migration("postgres", "0001_a.down.sql", "DROP TABLE a;\n");
    p.migration(
        "postgres",
        "0002_fails.up.sql",
        "SELECT current_setting('no.such.setting');\n",
    );
    let password = pg_password();
    let mut outputs = Vec::new();
    for args in [
        vec!["status", "-vv"],
        vec!["migrate", "--no-snapshot", "--yes", "--to", "1", "-vv"],
        vec![
            "migrate",
            "--no-snapshot",
            "--yes",
            "--output",
            "json",
            "-vv",
        ],
        vec!["status", "--output", "json"],
        vec!["rollback", "--to", "0", "--yes", "-vv"],
    ] {
        let run = p.run(&args);
        outputs.push(run.all());
    }
    // A wrong password produces a driver error that must not echo it either.
    let wrong = common::pg_url().replace(&password, "Wrong-Pass-Zz9");
    let q = Project::new("secret2");
    q.write_raw_config(&format!(
        "[environments.dev]\nstorage = \"file://b\"\n[services.fibu]\npostgres = {{ url = \"{wrong}\", schema = \"fibu\" }}\n"
    ));
    let run = q.run(&["status", "-vv"]);
    run.expect_code(3);
    outputs.push(run.all());
    for out in &outputs {
        assert!(!out.contains(&password), "password leaked:\n{out}");
        assert!(!out.contains("Wrong-Pass-Zz9"), "password leaked:\n{out}");
    }
    let _ = psql("SELECT 1");
}

#[test]
fn json_output_is_exactly_one_document_even_on_error() {
    let p = Project::new("json");
    p.run(&["-s", "nope", "status", "--output", "json"])
        .expect_code(2);
    let run = p.run(&["-s", "nope", "status", "--output", "json"]);
    let doc = run.json();
    assert_eq!(doc["error"]["exit_code"], 2);
    assert_eq!(doc["error"]["kind"], "usage");
}

#[test]
fn argument_errors_are_one_json_document_with_json_output() {
    let p = Project::new("json_args");
    for args in [
        &["status", "--output", "json", "--bogus"][..],
        &["--output=json", "migrate", "--lock-timeout", "5"],
        &["--output", "json", "restore", "--timestamp"],
        &["--output", "json", "rollback"],
    ] {
        let run = p.run(args);
        run.expect_code(2);
        let doc = run.json();
        assert_eq!(doc["error"]["kind"], "usage", "{args:?}");
        assert_eq!(doc["error"]["exit_code"], 2, "{args:?}");
        assert!(doc["error"]["message"].as_str().unwrap().len() > 5);
    }
    // Without --output json, clap's own text.
    let run = p.run(&["status", "--bogus"]);
    run.expect_code(2)
        .stderr_has("unexpected argument '--bogus'");
    assert!(run.stdout.is_empty());
}

#[test]
fn every_error_class_is_one_json_document_with_its_exit_code() {
    let p = Project::new("json_all");
    p.migration("postgres", "0001_a.up.sql", "CREATE TABLE a (id int);\n");
    let expect = |args: &[&str], code: i32, kind: &str| {
        let mut all = vec!["--output", "json"];
        all.extend(args);
        let run = p.run(&all);
        run.expect_code(code);
        let doc = run.json();
        assert_eq!(doc["error"]["exit_code"], code, "{args:?}: {doc}");
        assert_eq!(doc["error"]["kind"], kind, "{args:?}: {doc}");
    };
    expect(&["-s", "nope", "status"], 2, "usage");
    expect(&["-e", "deads3", "snapshot"], 3, "unreachable");
    expect(&["status", "--check"], 9, "not_ready");
    expect(
        &["restore", "--timestamp", "2000-01-01T00:00:00Z", "--yes"],
        8,
        "no_snapshot",
    );
    p.migrate_now();
    p.migration("postgres", "0001_a.up.sql", "CREATE TABLE a (id bigint);\n");
    expect(&["migrate", "--no-snapshot", "--yes"], 5, "integrity");
    p.migration("postgres", "0001_a.up.sql", "CREATE TABLE a (id int);\n");
    p.migration(
        "postgres",
        "0002_b.up.sql",
        "CREATE TABLE b (id nosuchtype);\n",
    );
    expect(
        &["migrate", "--no-snapshot", "--yes"],
        6,
        "migration_failed",
    );
    std::fs::remove_file(p.path().join("migrations/svc/postgres/0002_b.up.sql")).unwrap();
    expect(
        &["deploy", "--release", "v1", "--", "false"],
        7,
        "deploy_failed",
    );
    p.write_raw_config("[environments.dev]\nstorage = 3\n");
    expect(&["status"], 2, "config");
}

#[test]
fn new_creates_the_next_pair_in_the_existing_style() {
    let p = Project::new("new");
    p.migration("postgres", "0007_x.up.sql", "SELECT 1;");
    let run = p.run(&["new", "svc", "postgres", "Add", "customer", "e-mail"]);
    run.ok();
    let dir = p.path().join("migrations/svc/postgres");
    assert!(
        dir.join("0008_add_customer_e_mail.up.sql").exists(),
        "{}",
        run.stdout
    );
    assert!(dir.join("0008_add_customer_e_mail.down.sql").exists());
    p.run(&["new", "nope", "postgres", "x"]).expect_code(2);
    // An unfilled template is refused by migrate rather than applied.
    p.run(&["migrate", "--dry-run"])
        .expect_code(2)
        .stderr_has("0008_add_customer_e_mail");
}
