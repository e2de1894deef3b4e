//! The oracles end-to-end tests compare with: `pg_dump --schema-only` for
//! the catalog, per-table checksums and sequence values for the data, and
//! the snapshot listing as the binary reports it.

use super::{psql, Project};

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
/// schema (ownership and privileges left out), without the session-bound
/// `\restrict` lines.
pub fn schema_dump(schema: &str) -> String {
    let out = std::process::Command::new(pg_dump_bin())
        .args([
            "--schema-only",
            "--no-owner",
            "--no-privileges",
            "--schema",
            schema,
            "--dbname",
            &super::pg_url(),
        ])
        .output()
        .expect("pg_dump");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    without_session_lines(&String::from_utf8_lossy(&out.stdout))
}

/// Per-table checksums of every row, plus every sequence's state.
pub fn data_fingerprint(schema: &str) -> String {
    let tables = psql(&format!(
        "SELECT string_agg(quote_ident(relname), ',' ORDER BY relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = '{schema}' AND relkind IN ('r', 'm')"
    ));
    let mut out = String::new();
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
