//! The oracles end-to-end tests compare with: `pg_dump --schema-only` for
//! the catalog, per-table checksums and sequence values for the data, and
//! the snapshot listing as the binary reports it.

use super::{psql_at, Project};

/// `pg_dump` of the PostgreSQL test server's version (`VALERO_PG_BIN`).
pub fn pg_dump_bin() -> String {
    let bin =
        std::env::var("VALERO_PG_BIN").unwrap_or_else(|_| "/usr/lib/postgresql/15/bin".into());
    format!("{bin}/pg_dump")
}

/// `pg_dump`'s output without the lines that differ on every run.
pub fn without_session_lines(dump: &str) -> String {
    dump.lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The independent oracle for the catalog: `pg_dump --schema-only` of one
/// schema with ownership and privileges (grants, column grants, default
/// privileges), without the session-bound `\restrict` lines, followed by
/// what a one-schema dump leaves out: the extensions installed in the
/// schema (name, version) and the schema's own owner and ACL.
pub fn schema_dump(schema: &str) -> String {
    schema_dump_at(&super::pg_url(), schema)
}

/// `schema_dump` of a schema in the database at `url`.
pub fn schema_dump_at(url: &str, schema: &str) -> String {
    let psql = |sql: &str| psql_at(url, sql);
    let out = std::process::Command::new(pg_dump_bin())
        .args(["--schema-only", "--schema", schema, "--dbname", url])
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut dump = without_session_lines(&String::from_utf8_lossy(&out.stdout));
    dump.push_str(&format!(
        "\n-- extensions: {}\n-- schema owner and ACL: {}\n",
        psql(&format!(
            "SELECT coalesce(string_agg(extname || ' ' || extversion, ', ' ORDER BY extname), 'none') FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace WHERE n.nspname = '{schema}'"
        )),
        psql(&format!(
            "SELECT nspowner::regrole::text || ' ' || coalesce((SELECT string_agg(x::text, ',' ORDER BY x::text) FROM aclexplode(nspacl) x), 'default') FROM pg_namespace WHERE nspname = '{schema}'"
        )),
    ));
    dump
}

/// Per-table checksums of every row (populated materialized views too,
/// and which are unpopulated), plus every sequence's state.
pub fn data_fingerprint(schema: &str) -> String {
    data_fingerprint_at(&super::pg_url(), schema)
}

/// `data_fingerprint` of a schema in the database at `url`.
pub fn data_fingerprint_at(url: &str, schema: &str) -> String {
    let psql = |sql: &str| psql_at(url, sql);
    let tables = psql(&format!(
        "SELECT string_agg(quote_ident(relname), ',' ORDER BY relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND (relkind = 'r' OR relkind = 'm' AND relispopulated)"
    ));
    let unpopulated = psql(&format!(
        "SELECT coalesce(string_agg(relname, ',' ORDER BY relname), 'none') FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND relkind = 'm' AND NOT relispopulated"
    ));
    let mut out = format!("unpopulated materialized views: {unpopulated}\n");
    for t in tables.split(',').filter(|t| !t.is_empty()) {
        let sum = psql(&format!(
            "SELECT count(*) || ':' || coalesce(md5(string_agg(x::text, '|' ORDER BY x::text)), '') FROM \"{schema}\".{t} x"
        ));
        out.push_str(&format!("{t}={sum}\n"));
    }
    let seqs = psql(&format!(
        "SELECT string_agg(sequencename || '=' || coalesce(last_value::text, 'null'), ',' ORDER BY sequencename) FROM pg_sequences WHERE schemaname = '{schema}'"
    ));
    out.push_str(&format!("sequences: {seqs}\n"));
    out
}

/// Every complete snapshot of the environment: (id, reason), oldest first.
pub fn snapshot_ids(p: &Project, env: &str) -> Vec<(String, String)> {
    let list = p.run(&["-e", env, "snapshots", "list", "--output", "json"]);
    list.ok();
    list.json()["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["reason"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// The oracle for a MongoDB database: every collection's documents as raw
/// BSON bytes, sorted by `_id` (valero-db's lock collection and system
/// collections left out).
pub async fn mongo_state(db: &mongodb::Database) -> Vec<(String, Vec<Vec<u8>>)> {
    use futures::TryStreamExt;
    let mut names: Vec<String> = db
        .list_collection_names()
        .await
        .unwrap()
        .into_iter()
        .filter(|n| !n.starts_with("valero_schema_lock") && !n.starts_with("system."))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for n in names {
        let mut c = db
            .collection::<bson::RawDocumentBuf>(&n)
            .find(bson::doc! {})
            .sort(bson::doc! {"_id": 1})
            .await
            .unwrap();
        let mut docs = Vec::new();
        while let Some(d) = c.try_next().await.unwrap() {
            docs.push(d.as_bytes().to_vec());
        }
        out.push((n, docs));
    }
    out
}
