//! A restored service is the service that was snapshotted, including what
//! production depends on around its tables: extensions installed in the
//! service's schema (recreated at their version), ownership, grants,
//! column grants and default privileges (roles renamed by `role_map`, or
//! left out with `--skip-privileges`, never silently dropped), and the
//! `public` schema's own owner and ACL. Compared with `pg_dump
//! --schema-only` *with* privileges, plus extension versions and the
//! schema's ACL (`common::oracle`).

use crate::common;

use common::oracle::{data_fingerprint_at, schema_dump_at};
use common::{ensure_role, own_database, psql, psql_at, unique, Project};

/// A PostgreSQL-only project whose service lives in `schema` (default: the
/// project's unique one) of the database at `url`; `dev_extra` goes into
/// `[environments.dev]`. `Project::schema` stays the unique name: it is what
/// the project drops from the shared database when it ends.
fn project_at(tag: &str, url: &str, schema: Option<&str>, dev_extra: &str) -> Project {
    let p = Project::new(tag);
    write_config_for(&p, url, schema.unwrap_or(&p.schema), dev_extra);
    p
}

fn write_config(p: &Project, url: &str, dev_extra: &str) {
    write_config_for(p, url, &p.schema, dev_extra);
}

fn write_config_for(p: &Project, url: &str, schema: &str, dev_extra: &str) {
    p.write_raw_config(&format!(
        "[environments.dev]\nstorage = \"file://backups\"\n{dev_extra}\n\n\
         [environments.prod]\nstorage = \"file://backups\"\nprotected = true\n\n\
         [services.svc]\npostgres = {{ url = \"{url}\", schema = \"{schema}\" }}\n"
    ));
}

fn snapshot_dir(p: &Project, env: &str, id: &str) -> std::path::PathBuf {
    p.path().join("backups").join(env).join("svc").join(id)
}

/// Rewrites one field of the PostgreSQL part's position in a snapshot's
/// manifest, as a snapshot from another server would have it.
fn set_position(p: &Project, id: &str, key: &str, value: serde_json::Value) {
    let path = snapshot_dir(p, "dev", id).join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let engines = m["engines"].as_array_mut().unwrap();
    let pg = engines
        .iter_mut()
        .find(|e| e["engine"] == "postgres")
        .unwrap();
    pg["position"][key] = value;
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

const TREE: &str = "CREATE EXTENSION ltree VERSION '1.1';\n\
CREATE EXTENSION pg_trgm;\n\
CREATE EXTENSION citext;\n\
CREATE TABLE tree (id int PRIMARY KEY, path ltree NOT NULL, name citext UNIQUE, note text);\n\
CREATE INDEX tree_path ON tree USING gist (path);\n\
CREATE INDEX tree_note_trgm ON tree USING gin (note gin_trgm_ops);\n\
INSERT INTO tree VALUES (1, 'top', 'Alpha', 'first note'), (2, 'top.science', 'beta', 'second note'), (3, 'top.science.astronomy', 'GAMMA', 'third');\n";

#[test]
fn extensions_installed_in_the_schema_are_recreated_at_their_version() {
    let url = own_database("dep_ext");
    let p = project_at("dep_ext", &url, None, "");
    p.migration("postgres", "0001_tree.up.sql", TREE);
    p.migrate_now();
    // The answer of the last statement (psql also prints SET's tag).
    let sql = |q: &str| {
        let out = psql_at(&url, &q.replace("$S", &format!("\"{}\"", p.schema)));
        out.lines().last().unwrap_or_default().to_string()
    };
    let catalog = schema_dump_at(&url, &p.schema);
    let data = data_fingerprint_at(&url, &p.schema);
    assert!(catalog.contains("ltree 1.1"), "{catalog}");
    let id = p.snapshot_in("dev");
    // Damage: rows, and the extension moved on to its newest version.
    sql("DELETE FROM $S.tree WHERE id = 3; ALTER EXTENSION ltree UPDATE");
    assert_ne!(
        sql("SELECT extversion FROM pg_extension WHERE extname = 'ltree'"),
        "1.1"
    );

    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(schema_dump_at(&url, &p.schema), catalog);
    assert_eq!(data_fingerprint_at(&url, &p.schema), data);
    assert_eq!(
        sql("SELECT extversion FROM pg_extension WHERE extname = 'ltree'"),
        "1.1"
    );
    // The extensions work on the restored data: operators, indexes, types.
    assert_eq!(
        sql("SET search_path TO $S; SELECT count(*) FROM tree WHERE path <@ 'top.science'"),
        "2"
    );
    assert_eq!(
        sql("SET search_path TO $S; SELECT id FROM tree WHERE name = 'ALPHA'"),
        "1"
    );
    assert_eq!(
        sql("SET search_path TO $S; SELECT id FROM tree WHERE note % 'secnd note' ORDER BY similarity(note, 'secnd note') DESC LIMIT 1"),
        "2"
    );
    let _ = psql(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        db_name(&url)
    ));
}

fn db_name(url: &str) -> String {
    url::Url::parse(url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_string()
}

#[test]
fn an_extension_this_server_cannot_take_is_refused_before_anything_changes() {
    let url = own_database("dep_ext_refused");
    let p = project_at("dep_ext_refused", &url, None, "");
    p.migration("postgres", "0001_tree.up.sql", TREE);
    p.migrate_now();
    let sql = |q: &str| psql_at(&url, &q.replace("$S", &format!("\"{}\"", p.schema)));
    let id = p.snapshot_in("dev");
    sql("DELETE FROM $S.tree WHERE id = 3");
    let before = (
        schema_dump_at(&url, &p.schema),
        data_fingerprint_at(&url, &p.schema),
    );

    // A snapshot from a server whose citext is newer than this one's.
    let newer = p.snapshot_in("dev");
    set_position(
        &p,
        &newer,
        "extensions",
        serde_json::json!([{"name": "ltree", "version": "1.1"}, {"name": "citext", "version": "99.0"}]),
    );
    p.run(&["restore", "--snapshot", &newer, "--yes"])
        .expect_code(2)
        .stderr_has("extension citext 99.0 is not available on this server")
        .stderr_has("nothing was changed");
    assert_eq!(
        (
            schema_dump_at(&url, &p.schema),
            data_fingerprint_at(&url, &p.schema)
        ),
        before
    );

    // The extension installed in another schema of this database.
    sql(
        "DROP SCHEMA $S CASCADE; CREATE SCHEMA elsewhere; CREATE EXTENSION citext SCHEMA elsewhere",
    );
    p.run(&["restore", "--snapshot", &id, "--yes"])
        .expect_code(2)
        .stderr_has("extension citext is installed in schema elsewhere");
    assert_eq!(
        psql_at(
            &url,
            &format!(
                "SELECT count(*) FROM pg_namespace WHERE nspname = '{}'",
                p.schema
            )
        ),
        "0",
        "the refused restore created nothing"
    );
    let _ = psql(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        db_name(&url)
    ));
}

/// Grants of every kind to `role`, ownership by the migrating role, and
/// default privileges for tables the next migration creates.
fn granted(role: &str) -> String {
    format!(
        "CREATE TABLE journal (id bigserial PRIMARY KEY, amount numeric, memo text, secret text);\n\
         INSERT INTO journal (amount, memo, secret) VALUES (10, 'a', 'x'), (20, 'b', 'y');\n\
         CREATE FUNCTION total() RETURNS numeric LANGUAGE sql AS $$ SELECT sum(amount) FROM journal $$;\n\
         DO $$ BEGIN EXECUTE format('GRANT USAGE ON SCHEMA %I TO \"{role}\"', current_schema());\n\
           EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT ON TABLES TO \"{role}\"', current_schema()); END $$;\n\
         GRANT SELECT, INSERT ON journal TO \"{role}\";\n\
         GRANT UPDATE (memo) ON journal TO \"{role}\";\n\
         GRANT USAGE ON SEQUENCE journal_id_seq TO \"{role}\";\n\
         REVOKE EXECUTE ON FUNCTION total() FROM PUBLIC;\n\
         GRANT EXECUTE ON FUNCTION total() TO \"{role}\";\n"
    )
}

fn privileges_of(p: &Project, role: &str) -> String {
    psql(&format!(
        "SELECT has_schema_privilege('{role}', '{s}', 'USAGE') || ' ' || \
                has_table_privilege('{role}', '\"{s}\".journal', 'SELECT') || ' ' || \
                has_table_privilege('{role}', '\"{s}\".journal', 'DELETE') || ' ' || \
                has_column_privilege('{role}', '\"{s}\".journal', 'memo', 'UPDATE') || ' ' || \
                has_column_privilege('{role}', '\"{s}\".journal', 'secret', 'UPDATE') || ' ' || \
                has_sequence_privilege('{role}', '\"{s}\".journal_id_seq', 'USAGE') || ' ' || \
                has_function_privilege('{role}', '\"{s}\".total()', 'EXECUTE')",
        s = p.schema
    ))
}

/// What the role may do on a table created after the restore (default
/// privileges).
fn privileges_on_a_new_table(p: &Project, role: &str) -> String {
    let table = unique("later");
    psql(&format!(
        "CREATE TABLE \"{s}\".\"{table}\" (x int); \
         SELECT has_table_privilege('{role}', '\"{s}\".\"{table}\"', 'SELECT')",
        s = p.schema
    ))
    .lines()
    .last()
    .unwrap_or_default()
    .to_string()
}

#[test]
fn privileges_survive_a_restore_and_missing_roles_are_refused_mapped_or_skipped() {
    let prod_role = unique("fibu_app_prod");
    let dev_role = unique("fibu_app");
    ensure_role(&prod_role);
    ensure_role(&dev_role);
    let p = Project::new("dep_grants");
    write_config(&p, "${VALERO_PG_URL}", "");
    p.migration("postgres", "0001_journal.up.sql", &granted(&prod_role));
    p.migrate_now();
    let granted_all = "true true false true false true true";
    assert_eq!(privileges_of(&p, &prod_role), granted_all);
    let catalog = common::oracle::schema_dump(&p.schema);

    // The same environment: every privilege comes back, as pg_dump sees it.
    let id = p.snapshot_in("dev");
    psql(&format!(
        "REVOKE ALL ON \"{s}\".journal FROM \"{r}\"; REVOKE USAGE ON SCHEMA \"{s}\" FROM \"{r}\"; \
         ALTER DEFAULT PRIVILEGES IN SCHEMA \"{s}\" REVOKE ALL ON TABLES FROM \"{r}\"",
        s = p.schema,
        r = prod_role
    ));
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(common::oracle::schema_dump(&p.schema), catalog);
    assert_eq!(privileges_of(&p, &prod_role), granted_all);
    assert_eq!(privileges_on_a_new_table(&p, &prod_role), "t");

    // From prod, whose role does not exist here: refused, nothing changed.
    let from_prod = p.snapshot_in("prod");
    psql(&format!(
        "INSERT INTO \"{}\".journal (amount) VALUES (30)",
        p.schema
    ));
    psql(&format!(
        "DROP OWNED BY \"{prod_role}\"; DROP ROLE \"{prod_role}\""
    ));
    let before = common::oracle::schema_dump(&p.schema);
    let rows = || {
        psql(&format!(
            "SELECT string_agg(amount::text, ',' ORDER BY id) FROM \"{}\".journal",
            p.schema
        ))
    };
    assert_eq!(rows(), "10,20,30");
    let from_prod_restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--from-env",
            "prod",
            "--snapshot",
            &from_prod,
            "--no-mask",
            "--yes",
        ];
        args.extend_from_slice(extra);
        p.run(&args)
    };
    from_prod_restore(&[])
        .expect_code(2)
        .stderr_has(&format!("name roles this server lacks: {prod_role}"))
        .stderr_has("role_map")
        .stderr_has("--skip-privileges");
    assert_eq!(common::oracle::schema_dump(&p.schema), before);
    assert_eq!(rows(), "10,20,30");

    // Mapped by the environment: the grants go to this environment's role.
    write_config(
        &p,
        "${VALERO_PG_URL}",
        &format!("role_map = {{ \"{prod_role}\" = \"{dev_role}\" }}"),
    );
    from_prod_restore(&[]).ok();
    assert_eq!(rows(), "10,20");
    assert_eq!(privileges_of(&p, &dev_role), granted_all);
    assert_eq!(privileges_on_a_new_table(&p, &dev_role), "t");

    // Or left out on purpose: no grants, the data restored; objects carry
    // PostgreSQL's defaults for new objects (functions: EXECUTE for PUBLIC).
    write_config(&p, "${VALERO_PG_URL}", "");
    from_prod_restore(&["--skip-privileges"]).ok();
    assert_eq!(rows(), "10,20");
    assert_eq!(
        privileges_of(&p, &dev_role),
        "false false false false false false true"
    );
    assert_eq!(
        psql(&format!(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = '{}' AND c.relacl IS NOT NULL",
            p.schema
        )),
        "0"
    );
}

#[test]
fn an_owner_the_restoring_role_may_not_set_is_refused_before_anything_changes() {
    let restorer = unique("restorer");
    let owner = unique("owner");
    psql(&format!(
        "CREATE ROLE \"{restorer}\" LOGIN PASSWORD 'restorer-pw'; CREATE ROLE \"{owner}\" NOLOGIN; \
         GRANT CREATE ON DATABASE \"{db}\" TO \"{restorer}\"",
        db = db_name(&common::pg_url())
    ));
    let p = Project::new("dep_owner");
    let mut url = url::Url::parse(&common::pg_url()).unwrap();
    url.set_username(&restorer).unwrap();
    url.set_password(Some("restorer-pw")).unwrap();
    write_config(&p, url.as_str(), "");
    // The restoring role owns the schema; one table belongs to another role
    // (set by an administrator), which the restoring role may use.
    psql(&format!(
        "CREATE SCHEMA \"{s}\" AUTHORIZATION \"{restorer}\"; \
         CREATE TABLE \"{s}\".ledger (v int); INSERT INTO \"{s}\".ledger VALUES (1); \
         ALTER TABLE \"{s}\".ledger OWNER TO \"{owner}\"; GRANT ALL ON \"{s}\".ledger TO \"{restorer}\"",
        s = p.schema
    ));
    let id = p.snapshot_in("dev");
    psql(&format!("INSERT INTO \"{}\".ledger VALUES (2)", p.schema));
    p.run(&["restore", "--snapshot", &id, "--yes"])
        .expect_code(2)
        .stderr_has(&format!("may not make {owner} the owner"))
        .stderr_has("nothing was changed");
    assert_eq!(
        psql(&format!(
            "SELECT string_agg(v::text, ',' ORDER BY v) FROM \"{}\".ledger",
            p.schema
        )),
        "1,2"
    );
    // With --skip-privileges the restoring role owns what it restores.
    p.run(&["restore", "--snapshot", &id, "--skip-privileges", "--yes"])
        .ok();
    assert_eq!(
        psql(&format!(
            "SELECT relowner::regrole::text FROM pg_class WHERE oid = '\"{}\".ledger'::regclass",
            p.schema
        )),
        restorer
    );
}

#[test]
fn the_public_schema_keeps_its_owner_and_its_usage_for_everyone() {
    let url = own_database("dep_public");
    ensure_role("valero_app");
    let p = project_at("dep_public", &url, Some("public"), "");
    p.migration(
        "postgres",
        "0001_t.up.sql",
        "CREATE TABLE artist (id int PRIMARY KEY, name text);\n\
         INSERT INTO artist VALUES (1, 'AC/DC'), (2, 'Accept');\n\
         GRANT SELECT ON artist TO valero_app;\n",
    );
    p.migrate_now();
    let sql = |q: &str| psql_at(&url, q);
    let schema_state = || {
        sql("SELECT nspowner::regrole::text || ' ' || has_schema_privilege('valero_app', 'public', 'USAGE') \
             || ' ' || has_schema_privilege('valero_app', 'public', 'CREATE') FROM pg_namespace WHERE nspname = 'public'")
    };
    let owner_and_usage = schema_state();
    let catalog = schema_dump_at(&url, "public");
    let id = p.snapshot_in("dev");
    sql("DELETE FROM public.artist");
    p.run(&["restore", "--snapshot", &id, "--yes"]).ok();
    assert_eq!(schema_state(), owner_and_usage);
    assert_eq!(schema_dump_at(&url, "public"), catalog);
    assert!(
        sql("SET ROLE valero_app; SELECT count(*) FROM public.artist").ends_with("\n2"),
        "the application role reads the restored table"
    );
    let _ = psql(&format!(
        "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
        db_name(&url)
    ));
}
