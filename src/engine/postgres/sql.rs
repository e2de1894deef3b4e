//! PostgreSQL driver helpers every part of the engine shares: running a
//! script, listing names in a schema, quoting, and mapping driver errors to
//! the exit-code contract.

use futures::future::BoxFuture;
use sqlx::postgres::PgConnection;

use crate::error::{DbClass, Error};
use crate::redact;

/// The server's version, read once when valero-db connects.
#[derive(Debug, Clone)]
pub struct Server {
    /// `server_version_num`, e.g. 170002.
    pub num: i32,
    /// `server_version` as the server prints it, e.g. `17.2`.
    pub version: String,
}

impl Server {
    pub fn major(&self) -> u32 {
        (self.num / 10000) as u32
    }
}

/// Runs a multi-statement script: a plain `&str` without arguments goes
/// over the simple query protocol. (`sqlx::raw_sql`'s future is not provably
/// `Send` inside an `async_trait` method.)
pub fn exec<'a>(
    conn: &'a mut PgConnection,
    sql: &'a str,
) -> BoxFuture<'a, std::result::Result<(), sqlx::Error>> {
    Box::pin(async move { sqlx::Executor::execute(conn, sql).await.map(|_| ()) })
}

/// `exec`, answering the rows the statements inserted, updated, deleted,
/// copied or returned (the sum of their command tags).
pub fn exec_counting<'a>(
    conn: &'a mut PgConnection,
    sql: &'a str,
) -> BoxFuture<'a, std::result::Result<u64, sqlx::Error>> {
    Box::pin(async move {
        sqlx::Executor::execute(conn, sql)
            .await
            .map(|r| r.rows_affected())
    })
}

/// The text of the first column of every row `sql` returns for `schema`
/// (its `$1`): the names of a schema's tables, views, publications.
pub async fn names_in_schema(
    conn: &mut PgConnection,
    what: &str,
    sql: &str,
    schema: &str,
) -> crate::error::Result<Vec<String>> {
    sqlx::query_scalar(sql)
        .bind(schema)
        .fetch_all(conn)
        .await
        .map_err(|e| classify(what, e))
}

/// Quotes an identifier for SQL.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a string literal for SQL.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// Maps a driver error to the contract: connection trouble is exit 3.
pub fn classify(what: &str, e: sqlx::Error) -> Error {
    match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Configuration(_)
        | sqlx::Error::Protocol(_) => Error::unreachable(what, redact::redact(&e.to_string())),
        sqlx::Error::Database(db) if is_connection_class(db.code().as_deref()) => {
            Error::unreachable(what, redact::redact(&e.to_string()))
        }
        sqlx::Error::Database(db) => {
            let code = db.code().map(|c| c.to_string());
            Error::Database {
                what: what.to_string(),
                class: code
                    .as_deref()
                    .map(DbClass::of_sqlstate)
                    .unwrap_or(DbClass::Permanent),
                message: redact::redact(db.message()),
                sqlstate: code,
            }
        }
        _ => Error::internal(format!("{what}: {}", redact::redact(&e.to_string()))),
    }
}

/// A statement cut off by `lock_timeout` (SQLSTATE 55P03, lock_not_available).
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03"))
}

/// SQLSTATE classes 08 (connection), 28 (authorization), 3D (no database),
/// 53 (insufficient resources: too many connections, disk full) and 57P0x
/// (shutdown) mean the database is not usable now.
fn is_connection_class(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        c.starts_with("08")
            || c.starts_with("28")
            || c.starts_with("53")
            || c == "3D000"
            || c.starts_with("57P0")
    })
}
