//! PostgreSQL snapshot of one schema from one repeatable-read transaction:
//! the schema's DDL split into pre-data and post-data (generated from the
//! catalog by `pg_dump --schema-only` reading the same exported snapshot),
//! each table's rows as `COPY ... TO STDOUT` text, and sequence values.

use std::path::PathBuf;
use std::process::Stdio;

use futures::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::Row;
use tokio::io::AsyncReadExt;

use super::script::Extension;
use super::sql::{classify, exec, names_in_schema, quote_ident, quote_literal, Server};
use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::redact;
use crate::snapshot::manifest::EngineInfo;
use crate::snapshot::{key_component, Encoding, ObjectKind, SnapshotWriter};

/// `pg_dump` to use: `$VALERO_DB_PG_DUMP`, else the newest under
/// /usr/lib/postgresql/*/bin, else the one on PATH. It must be at least
/// as new as the server.
pub fn pg_tool(name: &str) -> PathBuf {
    let var = format!("VALERO_DB_{}", name.to_uppercase());
    if let Ok(p) = std::env::var(&var) {
        return PathBuf::from(p);
    }
    let mut candidates: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v: u32 = e.file_name().to_string_lossy().parse().ok()?;
            let p = e.path().join("bin").join(name);
            p.exists().then_some((v, p))
        })
        .collect();
    candidates.sort();
    candidates
        .pop()
        .map(|(_, p)| p)
        .unwrap_or_else(|| PathBuf::from(name))
}

/// The version of a PostgreSQL client tool, as it prints it
/// (`pg_dump (PostgreSQL) 18.6` → (18, "18.6")).
pub async fn tool_version(tool: &std::path::Path) -> Result<(u32, String)> {
    let out = tokio::process::Command::new(tool)
        .arg("--version")
        .output()
        .await
        .map_err(|e| {
            Error::usage_hint(
                format!("{} cannot be run: {e}", tool.display()),
                "install PostgreSQL 18's client tools (they dump every supported server), or point VALERO_DB_PG_DUMP at a pg_dump",
            )
        })?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .split_whitespace()
        .nth(2)
        .unwrap_or_default()
        .to_string();
    let major = version
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .ok_or_else(|| {
            Error::usage(format!(
                "{} printed no version: {}",
                tool.display(),
                text.trim()
            ))
        })?;
    Ok((major, version))
}

/// `pg_dump` must be at least as new as the server: checked before
/// anything is written, naming both versions.
pub(super) async fn checked_pg_dump(server_major: u32, server_version: &str) -> Result<String> {
    let tool = pg_tool("pg_dump");
    let (major, version) = tool_version(&tool).await?;
    if major < server_major {
        return Err(Error::usage_hint(
            format!(
                "{} is version {version}, older than the PostgreSQL {server_version} server it must read; nothing was written",
                tool.display()
            ),
            format!(
                "install PostgreSQL {server_major}'s client tools or newer (18 serves every supported server), or point VALERO_DB_PG_DUMP at one"
            ),
        ));
    }
    Ok(version)
}

/// Splits a URL into one without the password and the password, so that
/// the password reaches pg_dump through its environment, not its argv.
pub fn libpq_url(url: &str) -> (String, Option<String>) {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let pw = u
                .password()
                .map(|p| redact::percent_decode(p).unwrap_or_else(|_| p.to_string()));
            let _ = u.set_password(None);
            (u.to_string(), pw)
        }
        Err(_) => (url.to_string(), None),
    }
}

/// The two DDL sections of a snapshot, around the data.
#[derive(Debug, Clone, Copy)]
enum Section {
    PreData,
    PostData,
}

impl Section {
    fn name(self) -> &'static str {
        match self {
            Section::PreData => "pre-data",
            Section::PostData => "post-data",
        }
    }

    fn kind(self) -> ObjectKind {
        match self {
            Section::PreData => ObjectKind::PostgresPreData,
            Section::PostData => ObjectKind::PostgresPostData,
        }
    }
}

/// Streams `pg_dump --schema-only --section=SECTION` into an object.
async fn dump_section(
    service: &str,
    url: &str,
    schema: &str,
    snapshot_id: &str,
    section: Section,
    out: &mut SnapshotWriter<'_>,
) -> Result<()> {
    let (url, password) = libpq_url(url);
    let tool = pg_tool("pg_dump");
    let mut cmd = tokio::process::Command::new(&tool);
    cmd.arg("--schema-only")
        .arg(format!("--section={}", section.name()))
        .arg(format!("--snapshot={snapshot_id}"))
        .arg("--schema")
        .arg(format!("\"{}\"", schema.replace('"', "\"\"")))
        .arg("--dbname")
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    let mut child = cmd.spawn().map_err(|e| {
        Error::internal(format!(
            "cannot run {} ({e}); install PostgreSQL's client tools or set VALERO_DB_PG_DUMP",
            tool.display()
        ))
    })?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| Error::internal("pg_dump without stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| Error::internal("pg_dump without stderr"))?;
    let err_task = tokio::spawn(async move {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s).await;
        s
    });
    let mut sink = out
        .object(
            &format!("postgres/{}.sql.zst", section.name()),
            section.kind(),
            None,
        )
        .await?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = match stdout.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                sink.abort().await;
                return Err(Error::internal(format!("reading pg_dump: {e}")));
            }
        };
        if n == 0 {
            break;
        }
        if let Err(e) = sink.write(&buf[..n]).await {
            sink.abort().await;
            return Err(e);
        }
    }
    let status = child
        .wait()
        .await
        .map_err(|e| Error::internal(format!("pg_dump: {e}")))?;
    let stderr = err_task.await.unwrap_or_default();
    if !status.success() {
        sink.abort().await;
        let message = format!(
            "pg_dump --section={} failed ({status}): {}",
            section.name(),
            redact::redact(stderr.trim())
        );
        return Err(if lost_connection(&stderr) {
            Error::unreachable(format!("PostgreSQL of service {service}"), message)
        } else {
            Error::internal(message)
        });
    }
    let entry = sink.finish().await?;
    out.add(entry);
    Ok(())
}

/// libpq's words for a server that went away or never answered.
fn lost_connection(stderr: &str) -> bool {
    [
        "terminating connection",
        "server closed the connection",
        "connection has been closed unexpectedly",
        "could not connect",
        "connection to server",
        "Connection refused",
        "no connection to the server",
        "the database system is shutting down",
        "the database system is starting up",
    ]
    .iter()
    .any(|needle| stderr.contains(needle))
}

pub async fn take(
    conn: &mut PgConnection,
    url: &str,
    service: &str,
    schema: &str,
    server: &Server,
    out: &mut SnapshotWriter<'_>,
) -> Result<EngineInfo> {
    let what = format!("PostgreSQL of service {service}");
    let pg_dump_version = checked_pg_dump(server.major(), &server.version).await?;
    // Read before the snapshot: every transaction the snapshot does not
    // hold commits after this position (replay of captured changes starts here).
    let lsn_before: String = sqlx::query("SELECT pg_current_wal_insert_lsn()::text")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| classify(&what, e))?
        .get(0);
    exec(conn, "BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(|e| classify(&what, e))?;
    let result = take_in_transaction(conn, url, service, schema, out, &lsn_before).await;
    let _ = exec(conn, "ROLLBACK").await;
    let mut info = result?;
    info.position["pg_dump_version"] = serde_json::json!(pg_dump_version);
    Ok(info)
}

async fn take_in_transaction(
    conn: &mut PgConnection,
    url: &str,
    service: &str,
    schema: &str,
    out: &mut SnapshotWriter<'_>,
    lsn_before: &str,
) -> Result<EngineInfo> {
    let what = format!("PostgreSQL of service {service}");
    let row = sqlx::query(
        "SELECT pg_export_snapshot(), now(), pg_current_snapshot()::text, \
                current_setting('server_version'), pg_current_wal_lsn()::text",
    )
    .fetch_one(&mut *conn)
    .await
    .map_err(|e| classify(&what, e))?;
    let snapshot_id: String = row.get(0);
    let txid_snapshot: String = row.get(2);
    let lsn: String = row.get(4);
    let mut info = EngineInfo {
        engine: EngineKind::Postgres,
        target: schema.to_string(),
        server_version: row.get(3),
        schema_version: None,
        consistent_at: row.get(1),
        position: serde_json::json!({
            "transaction_snapshot": txid_snapshot,
            "wal_lsn": lsn,
            "wal_lsn_before": lsn_before,
            "isolation": "repeatable read",
        }),
    };

    let exists: bool = sqlx::query("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| classify(&what, e))?
        .get(0);
    if !exists {
        // A service before its first migration: the snapshot records that
        // the schema did not exist, which restore reproduces.
        info.position["schema_exists"] = serde_json::json!(false);
        return Ok(info);
    }
    info.schema_version = schema_version(conn, schema)
        .await
        .map_err(|e| classify(&what, e))?;
    let requirements = requirements(conn, schema)
        .await
        .map_err(|e| classify(&what, e))?;
    info.position["requires"] = serde_json::json!(requirements);
    let inside = Inside::read(conn, schema)
        .await
        .map_err(|e| classify(&what, e))?;
    inside.record(&mut info.position);

    dump_section(service, url, schema, &snapshot_id, Section::PreData, out).await?;
    copy_tables(conn, &what, schema, out).await?;
    write_sequences(conn, &what, schema, out).await?;
    dump_section(service, url, schema, &snapshot_id, Section::PostData, out).await?;
    Ok(info)
}

/// The highest applied version in the schema's history, if it has one.
async fn schema_version(
    conn: &mut PgConnection,
    schema: &str,
) -> std::result::Result<Option<u64>, sqlx::Error> {
    let has_history: bool =
        sqlx::query("SELECT to_regclass(format('%I.valero_schema_history', $1::text)) IS NOT NULL")
            .bind(schema)
            .fetch_one(&mut *conn)
            .await?
            .get(0);
    if !has_history {
        return Ok(None);
    }
    let v: Option<i64> = sqlx::query(&format!(
        "SELECT max(version) FROM {}.valero_schema_history WHERE state = 'applied'",
        quote_ident(schema)
    ))
    .fetch_one(&mut *conn)
    .await?
    .get(0);
    Ok(v.map(|v| v as u64))
}

/// One COPY text object per table, stored as column blocks. Leaf tables
/// hold the rows; partitioned parents have none of their own.
async fn copy_tables(
    conn: &mut PgConnection,
    what: &str,
    schema: &str,
    out: &mut SnapshotWriter<'_>,
) -> Result<()> {
    let sql =
        "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'r' ORDER BY c.relname";
    let tables = names_in_schema(conn, what, sql, schema).await?;
    for (i, table) in tables.iter().enumerate() {
        let key = format!("postgres/data/{i:05}-{}.columns.zst", key_component(table));
        let mut sink = out
            .encoded_object(
                &key,
                ObjectKind::PostgresTable,
                Some(table),
                Encoding::CopyColumns,
            )
            .await?;
        let copy = format!(
            "COPY {}.{} TO STDOUT",
            quote_ident(schema),
            quote_ident(table)
        );
        let mut rows = 0u64;
        let result: Result<()> = async {
            let mut stream = conn
                .copy_out_raw(&copy)
                .await
                .map_err(|e| classify(what, e))?;
            while let Some(chunk) = stream.try_next().await.map_err(|e| classify(what, e))? {
                rows += chunk.iter().filter(|b| **b == b'\n').count() as u64;
                sink.write(&chunk).await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            sink.abort().await;
            return Err(e);
        }
        let mut entry = sink.finish().await?;
        entry.rows = Some(rows);
        out.add(entry);
    }
    Ok(())
}

/// Sequence values are data, not DDL: restore sets them after the load.
async fn write_sequences(
    conn: &mut PgConnection,
    what: &str,
    schema: &str,
    out: &mut SnapshotWriter<'_>,
) -> Result<()> {
    let sequences = sqlx::query(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relkind = 'S' ORDER BY c.relname",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify(what, e))?;
    let mut setvals = String::new();
    for r in &sequences {
        let name: String = r.get(0);
        let qualified = format!("{}.{}", quote_ident(schema), quote_ident(&name));
        let v = sqlx::query(&format!("SELECT last_value, is_called FROM {qualified}"))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| classify(what, e))?;
        let last: i64 = v.get(0);
        let called: bool = v.get(1);
        setvals.push_str(&format!(
            "SELECT pg_catalog.setval({}, {last}, {called});\n",
            quote_literal(&qualified)
        ));
    }
    let mut sink = out
        .object(
            "postgres/sequences.sql.zst",
            ObjectKind::PostgresSequences,
            None,
        )
        .await?;
    sink.write(setvals.as_bytes()).await?;
    let entry = sink.finish().await?;
    out.add(entry);
    Ok(())
}

/// What a restore recreates beside pg_dump's DDL: the extensions that live
/// in the schema (pg_dump leaves them out of a one-schema dump, and dropping
/// the schema drops them), the schema's own ACL (pg_dump compares the
/// `public` schema's with the one initdb made, which a restored schema no
/// longer has), and which materialized views hold no data.
#[derive(Debug, Default, PartialEq)]
pub struct Inside {
    pub extensions: Vec<Extension>,
    pub schema_acl: Option<Vec<SchemaGrant>>,
    pub unpopulated_views: Vec<String>,
}

/// One entry of the schema's ACL: `grantee` is a role name or `PUBLIC`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct SchemaGrant {
    pub grantee: String,
    pub privilege: String,
    pub grantable: bool,
}

impl SchemaGrant {
    /// The schema's ACL entries, sorted; with `effective`, the default ACL
    /// (owner only) when the schema has none of its own.
    pub async fn of_schema(
        conn: &mut PgConnection,
        schema: &str,
        effective: bool,
    ) -> std::result::Result<Vec<SchemaGrant>, sqlx::Error> {
        let rows: Vec<(String, String, bool)> = sqlx::query_as(
            "SELECT coalesce(r.rolname::text, 'PUBLIC'), a.privilege_type, a.is_grantable \
             FROM pg_namespace n, \
                  aclexplode(CASE WHEN $2 THEN coalesce(n.nspacl, acldefault('n', n.nspowner)) ELSE n.nspacl END) a \
             LEFT JOIN pg_roles r ON r.oid = a.grantee WHERE n.nspname = $1",
        )
        .bind(schema)
        .bind(effective)
        .fetch_all(conn)
        .await?;
        let mut grants: Vec<SchemaGrant> = rows
            .into_iter()
            .map(|(grantee, privilege, grantable)| SchemaGrant {
                grantee,
                privilege,
                grantable,
            })
            .collect();
        grants.sort();
        Ok(grants)
    }

    /// The grantee as SQL names it: `PUBLIC`, or a quoted role.
    pub fn grantee_sql(&self) -> String {
        if self.grantee == "PUBLIC" {
            self.grantee.clone()
        } else {
            quote_ident(&self.grantee)
        }
    }
}

impl Inside {
    async fn read(
        conn: &mut PgConnection,
        schema: &str,
    ) -> std::result::Result<Inside, sqlx::Error> {
        let extensions = sqlx::query(
            "SELECT e.extname::text, e.extversion FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace WHERE n.nspname = $1 ORDER BY e.oid",
        )
        .bind(schema)
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| Extension {
            name: r.get(0),
            version: r.get(1),
        })
        .collect();
        let own_acl: bool =
            sqlx::query_scalar("SELECT nspacl IS NOT NULL FROM pg_namespace WHERE nspname = $1")
                .bind(schema)
                .fetch_one(&mut *conn)
                .await?;
        let schema_acl = if own_acl {
            Some(SchemaGrant::of_schema(conn, schema, false).await?)
        } else {
            None
        };
        let unpopulated_views = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind = 'm' AND NOT c.relispopulated ORDER BY c.relname",
        )
        .bind(schema)
        .fetch_all(&mut *conn)
        .await?;
        Ok(Inside {
            extensions,
            schema_acl,
            unpopulated_views,
        })
    }

    fn record(&self, position: &mut serde_json::Value) {
        position["extensions"] = serde_json::json!(self.extensions);
        position["schema_acl"] = serde_json::json!(self.schema_acl);
        position["unpopulated_views"] = serde_json::json!(self.unpopulated_views);
    }

    /// What a snapshot recorded; snapshots older than this record have
    /// none of it (and their views were all refreshed).
    pub fn recorded(position: &serde_json::Value) -> Inside {
        let field = |key: &str| position.get(key).cloned().unwrap_or_default();
        Inside {
            extensions: serde_json::from_value(field("extensions")).unwrap_or_default(),
            schema_acl: serde_json::from_value(field("schema_acl")).unwrap_or_default(),
            unpopulated_views: serde_json::from_value(field("unpopulated_views"))
                .unwrap_or_default(),
        }
    }
}

/// What the schema uses from outside itself: types of other schemas used
/// by its columns (with the extension that owns them, if any), and
/// extensions its functions or types depend on. Restore checks these exist.
async fn requirements(
    conn: &mut PgConnection,
    schema: &str,
) -> std::result::Result<Vec<serde_json::Value>, sqlx::Error> {
    let rows = sqlx::query(
        "WITH used AS ( \
           SELECT CASE WHEN t.typelem <> 0 AND t.typlen = -1 THEN t.typelem ELSE t.oid END AS typ \
           FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
           JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid \
           WHERE n.nspname = $1 AND a.attnum > 0 AND NOT a.attisdropped) \
         SELECT DISTINCT tn.nspname::text, t.typname::text, e.extname::text \
         FROM used u JOIN pg_type t ON t.oid = u.typ JOIN pg_namespace tn ON tn.oid = t.typnamespace \
         LEFT JOIN pg_depend d ON d.classid = 'pg_type'::regclass AND d.objid = t.oid AND d.deptype = 'e' \
         LEFT JOIN pg_extension e ON e.oid = d.refobjid \
         WHERE tn.nspname NOT IN ($1, 'pg_catalog', 'information_schema') \
         UNION \
         SELECT DISTINCT NULL, NULL, e.extname::text FROM pg_depend d \
         JOIN pg_extension e ON e.oid = d.refobjid AND d.refclassid = 'pg_extension'::regclass \
         JOIN pg_proc p ON d.classid = 'pg_proc'::regclass AND p.oid = d.objid \
         JOIN pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = $1 AND e.extnamespace <> n.oid \
         ORDER BY 3, 1, 2",
    )
    .bind(schema)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let type_schema: Option<String> = r.get(0);
            let type_name: Option<String> = r.get(1);
            let extension: Option<String> = r.get(2);
            serde_json::json!({"type_schema": type_schema, "type": type_name, "extension": extension})
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::libpq_url;

    #[test]
    fn password_is_taken_out_of_the_url() {
        let (u, p) = libpq_url("postgres://app:p%40ss@db:5432/x?sslmode=require");
        assert_eq!(u, "postgres://app@db:5432/x?sslmode=require");
        assert_eq!(p.as_deref(), Some("p@ss"));
    }
}
