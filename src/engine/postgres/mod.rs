//! PostgreSQL engine: one schema of one database; history in
//! `<schema>.valero_schema_history`, a session advisory lock per service.
//! Snapshots, restores and continuous capture live in the files beside
//! this one; `sql` holds the driver helpers they share.

pub mod capture;
pub mod copy_binary;
mod dump_tables;
pub mod masking;
pub mod pgoutput;
pub mod rehearse;
pub mod rename;
pub mod restore;
pub mod script;
pub mod sessions;
pub mod snapshot;
pub mod sql;
pub mod waits;

use std::time::Instant;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use sqlx::{ConnectOptions, Connection, Row};

use self::sql::{classify, exec, quote_ident, quote_literal, Server};
use crate::config::EngineKind;
use crate::config::{PostgresTarget, StatementLocks};
use crate::engine::seam::{failed, hostname, Engine, RepairAction, RunMeta};
use crate::error::{BlockedWork, Error, Result};
use crate::migrate::files::{Body, Migration, Script};
use crate::migrate::plan::{AppliedMigration, RowState};
use crate::migrate::sql_split;
use crate::redact;
use crate::units::format_duration;

/// First key of the two-key advisory lock: "VALE", so valero-db's locks are
/// recognisable in `pg_locks`.
const LOCK_CLASS: i32 = 0x5641_4c45;

pub struct PostgresEngine {
    service: String,
    schema: String,
    conn: PgConnection,
    lock_key: i32,
    /// Kept for pg_dump, which reads the same exported snapshot.
    url: String,
    server: Server,
    /// How to open a second session (to watch this one's lock waits).
    options: PgConnectOptions,
    /// This session's backend pid.
    pid: i32,
    /// See `rows_touched`.
    rows_touched: u64,
    /// How migration statements wait for the application's locks.
    locks: StatementLocks,
    /// Ends the session on the server if valero-db is interrupted.
    _registered: sessions::Registered,
}

/// The server versions valero-db is tested with and supports.
pub const SUPPORTED: std::ops::RangeInclusive<i32> = 14..=18;

/// Refuses a server outside the supported versions, naming its version.
fn supported_server(what: &str, version_num: i32, version: &str) -> Result<()> {
    if SUPPORTED.contains(&(version_num / 10000)) {
        return Ok(());
    }
    Err(Error::usage_hint(
        format!(
            "{what} runs PostgreSQL {version}; valero-db supports PostgreSQL {} to {}",
            SUPPORTED.start(),
            SUPPORTED.end()
        ),
        "upgrade the server (or use a valero-db release that supports it); nothing was changed",
    ))
}

fn lock_key_for(schema: &str) -> i32 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(format!("valero-db:{schema}").as_bytes());
    i32::from_be_bytes([digest[0] & 0x7f, digest[1], digest[2], digest[3]])
}

impl PostgresEngine {
    pub async fn connect(
        service: &str,
        target: &PostgresTarget,
        locks: StatementLocks,
    ) -> Result<Self> {
        let what = format!(
            "PostgreSQL of service {service} ({})",
            redact::redact_url(&target.url)
        );
        let options: PgConnectOptions =
            target.url.parse().map_err(|e: sqlx::Error| Error::Config {
                path: "valero-db.toml".into(),
                message: format!(
                    "services.{service}.postgres.url is not a valid PostgreSQL URL: {}",
                    redact::redact(&e.to_string())
                ),
            })?;
        let options = options
            .application_name(&format!(
                "valero-db host={} pid={}",
                hostname(),
                std::process::id()
            ))
            .log_statements(tracing::log::LevelFilter::Trace);
        let connect_timeout = std::time::Duration::from_secs(15);
        let mut conn = tokio::time::timeout(connect_timeout, options.connect())
            .await
            .map_err(|_| Error::unreachable(&what, "connection timed out after 15s"))?
            .map_err(|e| classify(&what, e))?;
        let (pid, version_num, version): (i32, i32, String) = sqlx::query_as(
            "SELECT pg_backend_pid(), current_setting('server_version_num')::int, current_setting('server_version')",
        )
        .fetch_one(&mut conn)
        .await
        .map_err(|e| classify(&what, e))?;
        supported_server(&what, version_num, &version)?;
        // A killed valero-db (kill -9, an evicted pod) is noticed by the
        // server within a second even in the middle of a long statement, so
        // its transaction rolls back and its locks go at once.
        exec(&mut conn, "SET client_connection_check_interval = '1s'")
            .await
            .map_err(|e| classify(&what, e))?;
        Ok(PostgresEngine {
            server: Server {
                num: version_num,
                version,
            },
            service: service.to_string(),
            lock_key: lock_key_for(&target.schema),
            schema: target.schema.clone(),
            conn,
            url: target.url.clone(),
            _registered: sessions::register(&options, pid),
            options,
            pid,
            locks,
            rows_touched: 0,
        })
    }

    /// The server process of this session (what a rehearsal watches).
    pub fn backend_pid(&self) -> i32 {
        self.pid
    }

    /// Rows the last migration applied inserted, updated, deleted, copied
    /// or returned.
    pub fn rows_touched(&self) -> u64 {
        self.rows_touched
    }

    fn what(&self) -> String {
        format!("PostgreSQL of service {}", self.service)
    }

    /// `fibu: 0002_index.up.sql`, how waits and retries name a file.
    fn label(&self, script: &Script) -> String {
        format!(
            "{}: {}",
            self.service,
            crate::migrate::files::file_name(&script.path)
        )
    }

    fn history_table(&self) -> String {
        format!("{}.valero_schema_history", quote_ident(&self.schema))
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    pub fn connection(&mut self) -> &mut PgConnection {
        &mut self.conn
    }

    /// The session and the server's version, borrowed together (capture
    /// works through the one and checks the other).
    pub fn connection_and_server(&mut self) -> (&mut PgConnection, &Server) {
        (&mut self.conn, &self.server)
    }

    /// One attempt at the capture lock of a replication slot: a session
    /// advisory lock, so a killed capture's lock goes with its session.
    pub async fn try_capture_lock(&mut self, slot: &str) -> Result<bool> {
        let got: bool =
            sqlx::query("SELECT pg_try_advisory_lock(hashtext('valero-db capture ' || $1))")
                .bind(slot)
                .fetch_one(&mut self.conn)
                .await
                .map_err(|e| classify(&format!("PostgreSQL of service {}", self.service), e))?
                .get(0);
        Ok(got)
    }

    /// One attempt at the deployment lock `key` (an environment and a
    /// schema, see `service::deployment_lock`): a session advisory lock, so
    /// a killed run's lock goes with its session.
    pub async fn try_deployment_lock(&mut self, key: &str) -> Result<bool> {
        let got: bool =
            sqlx::query("SELECT pg_try_advisory_lock(hashtext('valero-db deployment ' || $1))")
                .bind(key)
                .fetch_one(&mut self.conn)
                .await
                .map_err(|e| classify(&format!("PostgreSQL of service {}", self.service), e))?
                .get(0);
        Ok(got)
    }

    /// Who holds the deployment lock `key`: application, client, server
    /// pid and since when.
    pub async fn deployment_lock_holder(&mut self, key: &str) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT coalesce(a.application_name, ''), coalesce(host(a.client_addr), 'local'), a.pid, \
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND ((l.classid::bigint << 32) | l.objid::bigint) = hashtext('valero-db deployment ' || $1)::bigint \
               AND a.pid <> pg_backend_pid() LIMIT 1",
        )
        .bind(key)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(|e| classify(&format!("PostgreSQL of service {}", self.service), e))?;
        Ok(row.map(|r| {
            let (app, addr, pid, since): (String, String, i32, String) =
                (r.get(0), r.get(1), r.get(2), r.get(3));
            format!("{app}, client {addr}, server pid {pid}, since {since}")
        }))
    }

    /// The server's clock now (capture's coverage is in its time).
    pub async fn server_time(&mut self) -> Result<chrono::DateTime<chrono::Utc>> {
        let now: chrono::DateTime<chrono::Utc> = sqlx::query("SELECT clock_timestamp()")
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| classify(&format!("PostgreSQL of service {}", self.service), e))?
            .get(0);
        Ok(now)
    }

    async fn history_exists(&mut self) -> Result<bool> {
        let row = sqlx::query(
            "SELECT to_regclass(format('%I.valero_schema_history', $1::text)) IS NOT NULL",
        )
        .bind(&self.schema)
        .fetch_one(&mut self.conn)
        .await
        .map_err(|e| classify(&self.what(), e))?;
        Ok(row.get::<bool, _>(0))
    }

    async fn insert_row(
        conn: &mut PgConnection,
        table: &str,
        m: &Migration,
        meta: &RunMeta,
        state: RowState,
        elapsed_ms: i64,
    ) -> std::result::Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO {table} (version, description, checksum, applied_at, execution_ms, applied_by, release, state) \
             VALUES ($1, $2, $3, now(), $4, $5, $6, $7)"
        ))
        .bind(m.version as i64)
        .bind(&m.description)
        .bind(&m.checksum)
        .bind(elapsed_ms)
        .bind(&meta.applied_by)
        .bind(&meta.release)
        .bind(state.as_str())
        .execute(conn)
        .await
        .map(|_| ())
    }

    fn db_error_message(e: &sqlx::Error) -> String {
        match e {
            sqlx::Error::Database(db) => {
                let pg = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
                let mut msg = format!(
                    "{} (SQLSTATE {})",
                    db.message(),
                    db.code().unwrap_or_default()
                );
                if let Some(pg) = pg {
                    if let Some(detail) = pg.detail() {
                        msg.push_str(&format!("; detail: {detail}"));
                    }
                    if let Some(hint) = pg.hint() {
                        msg.push_str(&format!("; hint: {hint}"));
                    }
                }
                msg
            }
            other => other.to_string(),
        }
    }

    /// Runs a script in one transaction together with the history change
    /// (`history_sql`). Every lock wait is cut off after the environment's
    /// `migration_lock_timeout`, so the application never queues behind
    /// the migration for longer; the transaction then rolls back and is
    /// retried after a growing pause, `migration_lock_retries` times, before
    /// the sessions that blocked it are reported (exit 4).
    async fn run_in_transaction(
        &mut self,
        script: &Script,
        sql: &str,
        history_sql: (String, Vec<HistoryArg>),
    ) -> Result<()> {
        let file = crate::migrate::files::file_name(&script.path);
        let mut retry = 0;
        loop {
            let Some(mut blockers) = self.attempt(script, sql, &history_sql).await? else {
                return Ok(());
            };
            if blockers.is_empty() {
                // Gone before the watch looked: name who holds locks now.
                let what = self.what();
                blockers = waits::holding_locks_in(&mut self.conn, &what, &self.schema)
                    .await
                    .unwrap_or_default();
            }
            let held_by = waits::describe_all(&blockers);
            if retry == self.locks.retries {
                return Err(Error::Blocked {
                    what: format!("migration {file} of service {} (postgres)", self.service),
                    timeout: format!(
                        "{} in each of {} attempts",
                        format_duration(self.locks.timeout),
                        retry + 1
                    ),
                    sessions: held_by,
                    work: BlockedWork::Migration,
                });
            }
            retry += 1;
            let pause = self.locks.pause_before(retry);
            tracing::warn!(
                "{} waited {} for a lock and was rolled back, nothing applied; \
                 retry {retry} of {} in {}; blocked by {held_by}",
                self.label(script),
                format_duration(self.locks.timeout),
                self.locks.retries,
                format_duration(pause)
            );
            tokio::time::sleep(pause).await;
        }
    }

    /// One attempt of `run_in_transaction`: `None` once committed, the
    /// blockers the watch saw after a lock timeout (rolled back).
    async fn attempt(
        &mut self,
        script: &Script,
        sql: &str,
        history_sql: &(String, Vec<HistoryArg>),
    ) -> Result<Option<Vec<waits::Blocker>>> {
        let what = self.what();
        let service = self.service.clone();
        let settings = format!(
            "SET LOCAL search_path TO {}; SET LOCAL lock_timeout = '{}ms'",
            quote_ident(&self.schema),
            self.locks.timeout.as_millis()
        );
        let label = self.label(script);
        self.rows_touched = 0;
        let mut tx = self.conn.begin().await.map_err(|e| classify(&what, e))?;
        exec(&mut tx, &settings)
            .await
            .map_err(|e| classify(&what, e))?;
        let watch = waits::Watch::start(self.options.clone(), self.pid, label);
        let outcome = sql::exec_counting(&mut tx, sql).await;
        let blockers = watch.stop().await;
        if let Err(e) = outcome {
            if matches!(e, sqlx::Error::Io(_)) {
                return Err(classify(&what, e));
            }
            // Dropping `tx` rolls back DDL and data alike.
            let _ = tx.rollback().await;
            if sql::is_lock_timeout(&e) {
                return Ok(Some(blockers));
            }
            return Err(failed(
                &service,
                EngineKind::Postgres,
                &script.path,
                Self::db_error_message(&e),
                Some("the transaction was rolled back; nothing of this migration was applied. Fix the file and run migrate again".into()),
            ));
        }
        let rows = outcome.unwrap_or_default();
        let (q, args) = history_sql;
        bind_all(sqlx::query(q), args)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(&what, e))?;
        tx.commit().await.map_err(|e| classify(&what, e))?;
        self.rows_touched = rows;
        Ok(None)
    }

    /// Runs a script statement by statement, outside a transaction.
    async fn run_without_transaction(&mut self, script: &Script, sql: &str) -> Result<()> {
        let what = self.what();
        exec(
            &mut self.conn,
            &format!("SET search_path TO {}", quote_ident(&self.schema)),
        )
        .await
        .map_err(|e| classify(&what, e))?;
        let mut result = Ok(());
        let label = self.label(script);
        self.rows_touched = 0;
        for (i, statement) in sql_split::split(sql).iter().enumerate() {
            // No lock_timeout here: `CREATE INDEX CONCURRENTLY` waits for
            // old transactions by design, and cut off it would leave an
            // invalid index. The wait is reported instead.
            let watch = waits::Watch::start(self.options.clone(), self.pid, label.clone());
            let outcome = sql::exec_counting(&mut self.conn, statement).await;
            watch.stop().await;
            match outcome {
                Ok(rows) => self.rows_touched += rows,
                Err(e) => {
                    result = Err((i, Self::db_error_message(&e)));
                    break;
                }
            }
        }
        let _ = exec(&mut self.conn, "RESET search_path").await;
        result.map_err(|(i, msg)| {
            failed(
                &self.service,
                EngineKind::Postgres,
                &script.path,
                format!("statement {} failed: {msg}", i + 1),
                None,
            )
        })
    }
}

enum HistoryArg {
    I64(i64),
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    args: &'q [HistoryArg],
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    for a in args {
        q = match a {
            HistoryArg::I64(v) => q.bind(*v),
        };
    }
    q
}

#[async_trait]
impl Engine for PostgresEngine {
    async fn check_snapshot_tools(&mut self) -> Result<()> {
        snapshot::checked_pg_dump(self.server.major(), &self.server.version)
            .await
            .map(|_| ())
    }

    async fn capture_lag(
        &mut self,
        storage: &dyn crate::storage::Storage,
        env: &str,
    ) -> Option<crate::capture::Lag> {
        capture::reported_lag(&mut self.conn, storage, env, &self.service, &self.schema).await
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Postgres
    }

    fn service(&self) -> &str {
        &self.service
    }

    async fn history(&mut self) -> Result<Vec<AppliedMigration>> {
        if !self.history_exists().await? {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(&format!(
            "SELECT version, description, checksum, state, applied_at, release, detail FROM {} ORDER BY version",
            self.history_table()
        ))
        .fetch_all(&mut self.conn)
        .await
        .map_err(|e| classify(&self.what(), e))?;
        Ok(rows
            .iter()
            .map(|r| AppliedMigration {
                version: r.get::<i64, _>(0) as u64,
                description: r.get(1),
                checksum: r.get(2),
                state: RowState::parse(r.get::<&str, _>(3)),
                applied_at: r.get(4),
                release: r.get(5),
                detail: r.get(6),
            })
            .collect())
    }

    async fn prepare(&mut self) -> Result<()> {
        let schema = quote_ident(&self.schema);
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {table} (
                 version      bigint PRIMARY KEY,
                 description  text NOT NULL,
                 checksum     text NOT NULL,
                 applied_at   timestamptz NOT NULL DEFAULT now(),
                 execution_ms bigint NOT NULL DEFAULT 0,
                 applied_by   text NOT NULL,
                 release      text,
                 state        text NOT NULL DEFAULT 'applied' CHECK (state IN ('applied', 'dirty')),
                 detail       text
             );",
            table = self.history_table()
        );
        exec(&mut self.conn, &sql)
            .await
            .map_err(|e| classify(&self.what(), e))?;
        Ok(())
    }

    async fn try_lock(&mut self) -> Result<bool> {
        let row = sqlx::query("SELECT pg_try_advisory_lock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(self.lock_key)
            .fetch_one(&mut self.conn)
            .await
            .map_err(|e| classify(&self.what(), e))?;
        Ok(row.get::<bool, _>(0))
    }

    async fn lock_holder(&mut self) -> Result<Option<String>> {
        let row = sqlx::query(
            "SELECT a.application_name, coalesce(host(a.client_addr), 'local'), a.pid, \
                    to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND l.classid = $1::int8::oid AND l.objid = $2::int8::oid \
               AND a.pid <> pg_backend_pid() LIMIT 1",
        )
        .bind(LOCK_CLASS as i64)
        .bind(self.lock_key as i64)
        .fetch_optional(&mut self.conn)
        .await
        .map_err(|e| classify(&self.what(), e))?;
        Ok(row.map(|r| {
            let app: String = r.get(0);
            let addr: String = r.get(1);
            let pid: i32 = r.get(2);
            let since: String = r.get(3);
            let who = if app.starts_with("valero-db") {
                app
            } else {
                format!("'{app}'")
            };
            format!("{who} (client {addr}, server pid {pid}, since {since})")
        }))
    }

    async fn unlock(&mut self) -> Result<()> {
        sqlx::query("SELECT pg_advisory_unlock($1, $2)")
            .bind(LOCK_CLASS)
            .bind(self.lock_key)
            .execute(&mut self.conn)
            .await
            .map_err(|e| classify(&self.what(), e))?;
        Ok(())
    }

    async fn apply_up(&mut self, m: &Migration, meta: &RunMeta) -> Result<()> {
        let Body::Sql {
            sql,
            no_transaction,
        } = &m.up.body
        else {
            return Err(Error::internal("a PostgreSQL migration without SQL"));
        };
        let table = self.history_table();
        let started = Instant::now();
        if !no_transaction {
            // The history row's execution time is filled in by the same
            // transaction, just before commit.
            let q = format!(
                "INSERT INTO {table} (version, description, checksum, applied_at, execution_ms, applied_by, release, state) \
                 VALUES ($1, {}, {}, now(), (extract(epoch FROM clock_timestamp() - now()) * 1000)::bigint, {}, {}, 'applied')",
                quote_literal(&m.description),
                quote_literal(&m.checksum),
                quote_literal(&meta.applied_by),
                meta.release.as_deref().map(quote_literal).unwrap_or_else(|| "NULL".into()),
            );
            return self
                .run_in_transaction(&m.up, sql, (q, vec![HistoryArg::I64(m.version as i64)]))
                .await;
        }
        // Outside a transaction: record the attempt as dirty first, so a
        // failure or a crash in the middle leaves a visible mark.
        let what = self.what();
        Self::insert_row(&mut self.conn, &table, m, meta, RowState::Dirty, 0)
            .await
            .map_err(|e| classify(&what, e))?;
        let outcome = self.run_without_transaction(&m.up, sql).await;
        let elapsed = started.elapsed().as_millis() as i64;
        match outcome {
            Ok(()) => {
                sqlx::query(&format!(
                    "UPDATE {table} SET state = 'applied', execution_ms = $2, detail = NULL WHERE version = $1"
                ))
                .bind(m.version as i64)
                .bind(elapsed)
                .execute(&mut self.conn)
                .await
                .map_err(|e| classify(&what, e))?;
                Ok(())
            }
            Err(Error::MigrationFailed {
                service,
                engine,
                file,
                message,
                ..
            }) => {
                let _ = sqlx::query(&format!(
                    "UPDATE {table} SET detail = $2 WHERE version = $1"
                ))
                .bind(m.version as i64)
                .bind(&message)
                .execute(&mut self.conn)
                .await;
                Err(Error::MigrationFailed {
                    hint: Some(format!(
                        "this file ran outside a transaction, so statements before the failing one stay applied; \
                         version {} is marked dirty. Finish or undo it by hand, then run \
                         `valero-db repair -s {service} --engine postgres --version {} --as applied|pending`",
                        m.version, m.version
                    )),
                    service,
                    engine,
                    file,
                    message,
                })
            }
            Err(other) => Err(other),
        }
    }

    async fn apply_down(&mut self, m: &Migration, down: &Script) -> Result<()> {
        let Body::Sql {
            sql,
            no_transaction,
        } = &down.body
        else {
            return Err(Error::internal("a PostgreSQL migration without SQL"));
        };
        let table = self.history_table();
        let delete = format!("DELETE FROM {table} WHERE version = $1");
        if !no_transaction {
            return self
                .run_in_transaction(down, sql, (delete, vec![HistoryArg::I64(m.version as i64)]))
                .await;
        }
        let what = self.what();
        sqlx::query(&format!("UPDATE {table} SET state = 'dirty', detail = 'down migration started' WHERE version = $1"))
            .bind(m.version as i64)
            .execute(&mut self.conn)
            .await
            .map_err(|e| classify(&what, e))?;
        self.run_without_transaction(down, sql).await?;
        sqlx::query(&delete)
            .bind(m.version as i64)
            .execute(&mut self.conn)
            .await
            .map_err(|e| classify(&what, e))?;
        Ok(())
    }

    async fn baseline(&mut self, migrations: &[&Migration], meta: &RunMeta) -> Result<()> {
        let what = self.what();
        let table = self.history_table();
        let mut tx = self.conn.begin().await.map_err(|e| classify(&what, e))?;
        for m in migrations {
            Self::insert_row(&mut tx, &table, m, meta, RowState::Applied, 0)
                .await
                .map_err(|e| classify(&what, e))?;
        }
        tx.commit().await.map_err(|e| classify(&what, e))?;
        Ok(())
    }

    async fn repair(&mut self, version: u64, action: RepairAction) -> Result<()> {
        let table = self.history_table();
        let sql = match action {
            RepairAction::MarkApplied => {
                format!("UPDATE {table} SET state = 'applied', detail = 'repaired by hand' WHERE version = $1 AND state = 'dirty'")
            }
            RepairAction::MarkPending => {
                format!("DELETE FROM {table} WHERE version = $1 AND state = 'dirty'")
            }
        };
        let done = sqlx::query(&sql)
            .bind(version as i64)
            .execute(&mut self.conn)
            .await
            .map_err(|e| classify(&self.what(), e))?;
        if done.rows_affected() == 0 {
            return Err(Error::usage(format!(
                "service {} (postgres) has no dirty version {version}",
                self.service
            )));
        }
        Ok(())
    }

    async fn snapshot(
        &mut self,
        out: &mut crate::snapshot::SnapshotWriter<'_>,
    ) -> Result<crate::snapshot::manifest::EngineInfo> {
        let (url, service, schema) = (&self.url, &self.service, &self.schema);
        snapshot::take(&mut self.conn, url, service, schema, &self.server, out).await
    }

    async fn restore_prepare(
        &mut self,
        storage: &dyn crate::storage::Storage,
        found: &crate::snapshot::Found,
        replay: Option<&crate::capture::ReplayPlan>,
        conduct: &crate::restore::Conduct,
    ) -> Result<crate::restore::RestoreStats> {
        let info = found
            .manifest
            .engines
            .iter()
            .find(|e| e.engine == EngineKind::Postgres)
            .cloned()
            .ok_or_else(|| {
                Error::usage(format!(
                    "snapshot {} has no PostgreSQL part for service {}",
                    found.manifest.id, self.service
                ))
            })?;
        let target = restore::Target {
            service: &self.service,
            schema: &self.schema,
            server: &self.server,
        };
        let ddl = restore::preflight(
            &mut self.conn,
            storage,
            found,
            target,
            &info,
            &conduct.privileges,
        )
        .await?;
        restore::prepare(
            &mut self.conn,
            storage,
            found,
            &info,
            &self.service,
            &self.schema,
            restore::Around {
                replay,
                live: conduct.live,
                ddl,
                masking: conduct.masking.as_ref(),
            },
        )
        .await
    }

    async fn restore_commit(&mut self) -> Result<()> {
        restore::commit(&mut self.conn, &self.service).await
    }

    async fn restore_abort(&mut self) {
        restore::abort(&mut self.conn).await
    }
}

#[cfg(test)]
mod tests {
    use super::supported_server;

    #[test]
    fn servers_outside_14_to_18_are_refused_naming_their_version() {
        for (num, text) in [(140_023, "14.23"), (150_018, "15.18"), (180_004, "18.4")] {
            assert!(supported_server("PostgreSQL of service x", num, text).is_ok());
        }
        for (num, text) in [(130_020, "13.20"), (90_624, "9.6.24"), (190_000, "19devel")] {
            let e = supported_server("PostgreSQL of service x", num, text).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(text), "{e}");
            assert!(e.to_string().contains("14 to 18"), "{e}");
        }
    }
}
