//! Rehearsals on PostgreSQL: a scratch database beside the live one (created
//! with a generated name, dropped at the end, leftovers of killed runs
//! dropped by the next run), and the measurements taken around each
//! migration from a second connection — the locks the migrating backend
//! holds on each table (sampled from `pg_locks`), tables rewritten
//! (`relfilenode` changed) and WAL written.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use super::sql::{classify, exec, quote_ident};
use crate::engine::scratch_prefix;
use crate::error::{Error, Result};

/// A plain session for a rehearsal's side work (creating and dropping the
/// scratch database, watching the migrating backend).
async fn connect(url: &str, what: &str, application: &str) -> Result<PgConnection> {
    let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| {
        Error::usage(format!("{what}: {}", crate::redact::redact(&e.to_string())))
    })?;
    options
        .application_name(application)
        .connect()
        .await
        .map_err(|e| classify(what, e))
}

/// A scratch database on the live server, reached through the service's
/// own URL (which only creates and drops it).
pub struct Scratch {
    admin: PgConnection,
    pub name: String,
    pub url: String,
    what: String,
}

impl Scratch {
    /// Drops the leftovers of earlier runs (a database still in use by a
    /// running rehearsal cannot be dropped without FORCE, so it stays),
    /// then creates a new scratch database.
    pub async fn create(live_url: &str, service: &str, schema: &str) -> Result<Scratch> {
        let what = format!("PostgreSQL of service {service}");
        let mut admin = connect(live_url, &what, "valero-db rehearsal").await?;
        let prefix = scratch_prefix(service, schema);
        let leftovers: Vec<String> = sqlx::query_scalar(
            "SELECT datname::text FROM pg_database WHERE starts_with(datname, $1)",
        )
        .bind(&prefix)
        .fetch_all(&mut admin)
        .await
        .map_err(|e| classify(&what, e))?;
        for name in leftovers {
            match exec(&mut admin, &format!("DROP DATABASE {}", quote_ident(&name))).await {
                Ok(()) => tracing::info!(
                    "{service}: dropped scratch database {name} left by an earlier rehearsal"
                ),
                Err(e) => {
                    tracing::debug!("{service}: scratch database {name} stays (in use?): {e}")
                }
            }
        }
        let name = format!(
            "{prefix}{}_{}",
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        exec(
            &mut admin,
            &format!("CREATE DATABASE {}", quote_ident(&name)),
        )
        .await
        .map_err(|e| classify(&what, e))?;
        let mut url =
            url::Url::parse(live_url).map_err(|e| Error::usage(format!("{what}: {e}")))?;
        url.set_path(&name);
        Ok(Scratch {
            admin,
            name,
            url: url.to_string(),
            what,
        })
    }

    /// Drops the scratch database, ending any session still on it.
    pub async fn drop(mut self) -> Result<()> {
        let sql = format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&self.name)
        );
        let dropped = exec(&mut self.admin, &sql)
            .await
            .map_err(|e| classify(&self.what, e));
        let _ = self.admin.close().await;
        dropped
    }
}

/// The strongest lock a migration held on one table, and for how long.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct HeldLock {
    pub table: String,
    pub mode: String,
    pub held_ms: u64,
    /// SHARE or stronger: the application's writes to the table wait.
    pub blocks_writes: bool,
}

/// What one migration did on the scratch copy.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Effects {
    pub locks: Vec<HeldLock>,
    /// Tables (and materialized views) whose storage was replaced.
    pub rewritten: Vec<String>,
    pub wal_bytes: i64,
}

/// Lock modes from weakest to strongest.
const MODES: &[&str] = &[
    "AccessShareLock",
    "RowShareLock",
    "RowExclusiveLock",
    "ShareUpdateExclusiveLock",
    "ShareLock",
    "ShareRowExclusiveLock",
    "ExclusiveLock",
    "AccessExclusiveLock",
];

fn strength(mode: &str) -> usize {
    MODES.iter().position(|m| *m == mode).unwrap_or(0)
}

/// Watches a migrating backend from a second connection to the scratch
/// database.
pub struct Observer {
    conn: PgConnection,
    schema: String,
    what: String,
}

/// How often the locks of the migrating backend are sampled.
const SAMPLE: Duration = Duration::from_millis(20);

impl Observer {
    pub async fn connect(url: &str, service: &str, schema: &str) -> Result<Observer> {
        let what = format!("PostgreSQL of service {service} (rehearsal)");
        let conn = connect(url, &what, "valero-db rehearsal observer").await?;
        Ok(Observer {
            conn,
            schema: schema.to_string(),
            what,
        })
    }

    async fn relfilenodes(&mut self) -> Result<BTreeMap<String, u32>> {
        let rows = sqlx::query(
            "SELECT c.relname::text, c.relfilenode::int8 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND c.relkind IN ('r', 'm', 't')",
        )
        .bind(&self.schema)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| classify(&self.what, e))?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as u32))
            .collect())
    }

    async fn wal(&mut self) -> Result<String> {
        sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| classify(&self.what, e))
    }

    /// Runs `work` (the migration on the backend `pid`) while sampling its
    /// locks; answers the work's result and what it did.
    pub async fn measure<T>(
        &mut self,
        pid: i32,
        work: impl std::future::Future<Output = T>,
    ) -> Result<(T, Effects)> {
        let before = self.relfilenodes().await?;
        let wal_before = self.wal().await?;
        let mut seen: BTreeMap<String, (String, Instant, Instant)> = BTreeMap::new();
        let result = {
            tokio::pin!(work);
            loop {
                tokio::select! {
                    out = &mut work => break out,
                    _ = tokio::time::sleep(SAMPLE) => self.sample(pid, &mut seen).await?,
                }
            }
        };
        let after = self.relfilenodes().await?;
        let wal_after = self.wal().await?;
        let wal_bytes: i64 =
            sqlx::query_scalar("SELECT pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn)::int8")
                .bind(&wal_after)
                .bind(&wal_before)
                .fetch_one(&mut self.conn)
                .await
                .map_err(|e| classify(&self.what, e))?;
        let rewritten = after
            .iter()
            .filter(|(t, node)| before.get(*t).is_some_and(|b| b != *node))
            .map(|(t, _)| t.clone())
            .collect();
        let locks = seen
            .into_iter()
            .map(|(table, (mode, first, last))| HeldLock {
                blocks_writes: strength(&mode) >= strength("ShareLock"),
                held_ms: (last - first + SAMPLE).as_millis() as u64,
                table,
                mode,
            })
            .collect();
        Ok((
            result,
            Effects {
                locks,
                rewritten,
                wal_bytes,
            },
        ))
    }

    /// One look at the locks `pid` holds on the schema's relations: the
    /// strongest mode per table, from when it was first seen to last.
    async fn sample(
        &mut self,
        pid: i32,
        seen: &mut BTreeMap<String, (String, Instant, Instant)>,
    ) -> Result<()> {
        let rows = sqlx::query(
            "SELECT c.relname::text, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE l.pid = $1 AND l.granted AND n.nspname = $2 AND c.relkind IN ('r', 'p', 'm')",
        )
        .bind(pid)
        .bind(&self.schema)
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| classify(&self.what, e))?;
        let now = Instant::now();
        for r in rows {
            let (table, mode): (String, String) = (r.get(0), r.get(1));
            match seen.get_mut(&table) {
                Some(entry) if strength(&mode) > strength(&entry.0) => *entry = (mode, now, now),
                Some(entry) if mode == entry.0 => entry.2 = now,
                Some(_) => {}
                None => {
                    seen.insert(table, (mode, now, now));
                }
            }
        }
        Ok(())
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_modes_are_ordered_by_strength() {
        assert!(strength("AccessExclusiveLock") > strength("ShareLock"));
        assert!(strength("ShareLock") > strength("ShareUpdateExclusiveLock"));
    }
}
