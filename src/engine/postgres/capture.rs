//! PostgreSQL capture through logical decoding on a normal connection: a
//! slot per service and environment with the `pgoutput` plugin, a
//! publication `FOR TABLES IN SCHEMA <schema>`, changes read with
//! `pg_logical_slot_peek_binary_changes` and the slot advanced with
//! `pg_replication_slot_advance` only after the segment holding them is
//! stored and read back. A crash between the two leaves a complete segment
//! whose start is the slot's position; the next pass finds it and advances
//! instead of capturing the changes twice.
//!
//! Replay (inside the restore's transaction) applies the captured row
//! changes committed after the snapshot and at or before the target time,
//! in commit order, skipping every transaction the snapshot already holds.

use futures::TryStreamExt;
use sqlx::postgres::PgConnection;
use sqlx::Row;

use super::pgoutput::{self, Message};
use super::sql::{classify, exec, exec_counting, quote_ident, Server};
use crate::capture::{
    self, folder, format_lsn, parse_lsn, position_name, ReplayPlan, Segment, Stream, CHANGES,
    FORMAT_VERSION,
};
use crate::capture::{Lag, ReplayStats, SequenceValues};
use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::snapshot::stream::ObjectStream;
use crate::snapshot::{ObjectKind, ObjectSink, SnapshotWriter};
use crate::storage::Storage;

/// Changes per pass; a pass always ends at a transaction boundary.
const PASS_CHANGES: i32 = 100_000;
/// Prefix of the logical decoding message a restore writes into its own
/// transaction, so capture and replay can tell restores from changes.
pub const RESTORE_MESSAGE_PREFIX: &str = "valero-db";
/// The content of a restore's message: logical messages reach every slot
/// of the database, so it names the schema it restored.
pub fn restore_message(snapshot_id: &str, schema: &str) -> String {
    format!("restore {snapshot_id} {schema}")
}

/// Whether a logical message is a restore of `schema`.
fn restores(prefix: &str, content: &[u8], schema: &str) -> bool {
    prefix == RESTORE_MESSAGE_PREFIX
        && std::str::from_utf8(content)
            .ok()
            .and_then(|c| c.strip_prefix("restore "))
            .and_then(|c| c.split_once(' '))
            .is_some_and(|(_, s)| s == schema)
}

/// Prefix of capture's own flush ticks; transactions holding only a tick
/// are not stored.
const TICK_PREFIX: &str = "valero-db-capture";

/// The slot and publication name of a service's schema in an environment:
/// slots are per cluster, where several environments or projects may meet,
/// so the environment and a hash of the schema are part of it.
pub fn slot_name(env: &str, service: &str, schema: &str) -> String {
    use sha2::{Digest, Sha256};
    let h = hex::encode(&Sha256::digest(schema.as_bytes())[..4]);
    let raw = format!("valero_{env}_{service}").to_ascii_lowercase();
    let clean: String = raw
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .take(50)
        .collect();
    format!("{clean}_{h}")
}

/// What one capture pass did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct PassReport {
    pub transactions: u64,
    pub changes: u64,
    pub segment: Option<String>,
    pub position: String,
    pub more: bool,
}

/// What one pass read: transactions with data (or a restore of this
/// schema), their commit times, and where the last one ended.
#[derive(Debug, Default)]
struct Tally {
    transactions: u64,
    changes: u64,
    first_commit: Option<chrono::DateTime<chrono::Utc>>,
    last_commit: Option<chrono::DateTime<chrono::Utc>>,
    end: Option<u64>,
    rows: i64,
    in_txn_data: bool,
    txn_commit: Option<chrono::DateTime<chrono::Utc>>,
}

impl Tally {
    fn observe(&mut self, message: &Message, schema: &str) {
        self.rows += 1;
        match message {
            Message::Begin { commit_time, .. } => {
                self.in_txn_data = false;
                self.txn_commit = Some(*commit_time);
            }
            Message::Commit { end_lsn, .. } => {
                self.end = Some(*end_lsn);
                if self.in_txn_data {
                    self.transactions += 1;
                    if self.first_commit.is_none() {
                        self.first_commit = self.txn_commit;
                    }
                    self.last_commit = self.txn_commit;
                }
            }
            Message::Insert { .. }
            | Message::Update { .. }
            | Message::Delete { .. }
            | Message::Truncate { .. } => {
                self.changes += 1;
                self.in_txn_data = true;
            }
            Message::Logical {
                prefix, content, ..
            } if restores(prefix, content, schema) => {
                self.in_txn_data = true;
            }
            _ => {}
        }
    }
}

pub struct Capture<'a> {
    pub conn: &'a mut PgConnection,
    pub server: &'a Server,
    pub storage: &'a dyn Storage,
    pub env: &'a str,
    pub service: &'a str,
    pub schema: &'a str,
}

impl Capture<'_> {
    fn what(&self) -> String {
        format!("PostgreSQL of service {}", self.service)
    }

    fn slot(&self) -> String {
        slot_name(self.env, self.service, self.schema)
    }

    fn folder(&self) -> String {
        folder(self.env, self.service, EngineKind::Postgres)
    }

    /// Checks wal_level, then creates the publication and the slot if they
    /// are missing (recording the start of a new capture stream).
    pub async fn ensure(&mut self) -> Result<()> {
        let what = self.what();
        let level: String = sqlx::query("SELECT current_setting('wal_level')")
            .fetch_one(&mut *self.conn)
            .await
            .map_err(|e| classify(&what, e))?
            .get(0);
        if self.server.major() < 15 {
            return Err(Error::usage_hint(
                format!(
                    "{what}: continuous capture needs PostgreSQL 15 or newer (schema publications); the server runs {}",
                    self.server.major()
                ),
                "snapshots and restores work on PostgreSQL 14; upgrade the server to capture every change",
            ));
        }
        if level != "logical" {
            return Err(Error::usage_hint(
                format!("{what}: capture needs wal_level = logical, the server has wal_level = {level}"),
                "set wal_level = logical in postgresql.conf (or ALTER SYSTEM SET wal_level = logical) and restart PostgreSQL",
            ));
        }
        let slot = self.slot();
        let schema_exists: bool =
            sqlx::query("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(self.schema)
                .fetch_one(&mut *self.conn)
                .await
                .map_err(|e| classify(&what, e))?
                .get(0);
        if !schema_exists {
            return Err(Error::usage_hint(
                format!(
                    "{what}: schema {} does not exist yet; there is nothing to capture",
                    self.schema
                ),
                "run `valero-db migrate` first",
            ));
        }
        ensure_publication(self.conn, &slot, self.schema)
            .await
            .map_err(|e| classify(&what, e))?;
        let exists: bool =
            sqlx::query("SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)")
                .bind(&slot)
                .fetch_one(&mut *self.conn)
                .await
                .map_err(|e| classify(&what, e))?
                .get(0);
        let listing =
            capture::list(self.storage, self.env, self.service, EngineKind::Postgres).await?;
        if !exists || listing.streams.is_empty() {
            let start: String = if exists {
                self.confirmed().await?
            } else {
                sqlx::query(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
                )
                .bind(&slot)
                .fetch_one(&mut *self.conn)
                .await
                .map_err(|e| classify(&what, e))?
                .get(0)
            };
            let stream = Stream {
                format: FORMAT_VERSION,
                engine: EngineKind::Postgres,
                slot: slot.clone(),
                start: start.clone(),
                started_at: chrono::Utc::now(),
            };
            let key = format!(
                "{}/streams/{}.json",
                self.folder(),
                position_name(parse_lsn(&start)?)
            );
            self.storage
                .put_bytes(&key, &serde_json::to_vec_pretty(&stream).map_err(json_err)?)
                .await?;
            tracing::info!(
                "{}: capture stream started at {start} (slot {slot})",
                self.service
            );
        }
        Ok(())
    }

    async fn confirmed(&mut self) -> Result<String> {
        let what = self.what();
        let row = sqlx::query(
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(self.slot())
        .fetch_optional(&mut *self.conn)
        .await
        .map_err(|e| classify(&what, e))?;
        match row {
            Some(r) => Ok(r.get(0)),
            None => Err(Error::usage_hint(
                format!("{what}: replication slot {} is gone", self.slot()),
                "run `valero-db capture` again to start a new capture stream; restores to times before it need the old segments, after it a new snapshot",
            )),
        }
    }

    async fn advance(&mut self, to: &str) -> Result<()> {
        let what = self.what();
        sqlx::query("SELECT pg_replication_slot_advance($1, $2::pg_lsn)")
            .bind(self.slot())
            .bind(to)
            .execute(&mut *self.conn)
            .await
            .map_err(|e| classify(&what, e))?;
        Ok(())
    }

    /// Where this pass starts: where the last stored segment of the current
    /// stream ended (tick-only stretches in between hold no changes). A run
    /// that stored a segment and died before advancing the slot is finished.
    async fn resume_point(&mut self) -> Result<String> {
        let confirmed = parse_lsn(&self.confirmed().await?)?;
        let listing =
            capture::list(self.storage, self.env, self.service, EngineKind::Postgres).await?;
        let stream_start = match listing.streams.last() {
            Some(s) => parse_lsn(&s.start)?,
            None => confirmed,
        };
        let (chain_end, _) = listing.chain_end(stream_start)?;
        if confirmed < chain_end {
            tracing::info!(
                "{}: the last segment was stored by an interrupted run; advancing the slot to {}",
                self.service,
                format_lsn(chain_end)
            );
            self.advance(&format_lsn(chain_end)).await?;
        }
        Ok(format_lsn(chain_end))
    }

    /// The time every change is captured up to once this pass has read
    /// everything flushed. Decoding reads only flushed WAL: a synchronous
    /// commit of our own that wrote WAL (a tick message) flushes every
    /// commit record written before it, including asynchronous commits'.
    async fn flush_wal(&mut self) -> Result<chrono::DateTime<chrono::Utc>> {
        let what = self.what();
        let covered_until: chrono::DateTime<chrono::Utc> =
            sqlx::query("SELECT clock_timestamp() - interval '1 second'")
                .fetch_one(&mut *self.conn)
                .await
                .map_err(|e| classify(&what, e))?
                .get(0);
        exec(
            self.conn,
            &format!("SET synchronous_commit = on; SELECT pg_logical_emit_message(true, '{TICK_PREFIX}', 'flush')"),
        )
        .await
        .map_err(|e| classify(&what, e))?;
        Ok(covered_until)
    }

    /// Peeks up to PASS_CHANGES decoded changes and writes each, framed
    /// with its LSN and xid, into the segment's object.
    async fn read_changes(&mut self, sink: &mut ObjectSink) -> Result<Tally> {
        let what = self.what();
        let slot = self.slot();
        let query = format!(
            "SELECT lsn::text, xid::text, data FROM pg_logical_slot_peek_binary_changes($1, NULL, {PASS_CHANGES}, \
             'proto_version', '1', 'publication_names', $2, 'messages', 'true')"
        );
        let mut tally = Tally::default();
        let mut stream = sqlx::query(&query)
            .bind(&slot)
            .bind(&slot)
            .fetch(&mut *self.conn);
        while let Some(row) = stream.try_next().await.map_err(|e| classify(&what, e))? {
            let lsn: String = row.get(0);
            let xid: String = row.get(1);
            let data: Vec<u8> = row.get(2);
            tally.observe(&pgoutput::decode(&data)?, self.schema);
            let mut record = Vec::with_capacity(16 + data.len());
            record.extend(parse_lsn(&lsn)?.to_be_bytes());
            record.extend(xid.parse::<u32>().unwrap_or(0).to_be_bytes());
            record.extend((data.len() as u32).to_be_bytes());
            record.extend(&data);
            sink.write(&record).await?;
        }
        Ok(tally)
    }

    /// Ships the changes committed since the slot's position (up to
    /// PASS_CHANGES of them) as one segment, then advances the slot.
    pub async fn pass(&mut self) -> Result<PassReport> {
        let start = self.resume_point().await?;
        let covered_until = self.flush_wal().await?;
        let sequences = self.read_sequences().await?;
        let name = position_name(parse_lsn(&start)?);
        let base = format!("{}/{name}", self.folder());
        let mut writer = SnapshotWriter::new(self.storage, base.clone());
        let mut sink = writer
            .object(CHANGES, ObjectKind::PostgresChanges, None)
            .await?;
        let tally = match self.read_changes(&mut sink).await {
            Ok(t) => t,
            Err(e) => {
                sink.abort().await;
                return Err(e);
            }
        };
        let mut report = PassReport {
            transactions: tally.transactions,
            changes: tally.changes,
            position: start.clone(),
            more: tally.rows >= PASS_CHANGES as i64,
            segment: None,
        };
        let Some(end) = tally.end else {
            sink.abort().await;
            self.write_progress(&start, covered_until, &sequences)
                .await?;
            return Ok(report);
        };
        if report.transactions == 0 {
            // Only ticks: nothing to keep, but the slot may move on.
            sink.abort().await;
            let end = format_lsn(end);
            self.advance(&end).await?;
            // Progress names the chain's position: the next segment starts there.
            self.write_progress(&start, covered_until, &sequences)
                .await?;
            report.position = end;
            return Ok(report);
        }
        let entry = sink.finish().await?;
        writer.add(entry.clone());
        let segment = Segment {
            format: FORMAT_VERSION,
            engine: EngineKind::Postgres,
            environment: self.env.to_string(),
            service: self.service.to_string(),
            slot: self.slot(),
            start: start.clone(),
            end: format_lsn(end),
            first_commit: tally.first_commit,
            last_commit: tally.last_commit,
            // Never earlier than the last commit it holds: commits made
            // between the flush and the read are in it too.
            covered_until: if report.more {
                tally.last_commit.unwrap_or(covered_until)
            } else {
                tally
                    .last_commit
                    .map_or(covered_until, |l| l.max(covered_until))
            },
            transactions: report.transactions,
            changes: report.changes,
            created_at: chrono::Utc::now(),
            object: entry.clone(),
            resume_token: None,
            sequences: Some(sequences.clone()),
        };
        capture::store_segment(self.storage, &mut writer, &base, &segment).await?;
        // Durable and verified: only now may the slot forget these changes.
        self.advance(&segment.end).await?;
        self.write_progress(&segment.end, segment.covered_until, &sequences)
            .await?;
        report.segment = Some(base);
        report.position = segment.end;
        Ok(report)
    }

    async fn write_progress(
        &mut self,
        position: &str,
        covered_until: chrono::DateTime<chrono::Utc>,
        sequences: &SequenceValues,
    ) -> Result<()> {
        let slot = &self.slot();
        let folder = self.folder();
        capture::write_progress(
            self.storage,
            &folder,
            slot,
            position,
            covered_until,
            Some(sequences),
        )
        .await
    }

    /// Every sequence of the schema, read after `flush_wal` chose the time
    /// this pass covers up to (see `capture::SequenceValues`).
    async fn read_sequences(&mut self) -> Result<SequenceValues> {
        let what = self.what();
        let rows = sqlx::query(
            "SELECT clock_timestamp(), s.sequencename::text, s.last_value FROM (SELECT 1) one \
             LEFT JOIN pg_sequences s ON s.schemaname = $1 AND s.last_value IS NOT NULL",
        )
        .bind(self.schema)
        .fetch_all(&mut *self.conn)
        .await
        .map_err(|e| classify(&what, e))?;
        let read_at = rows
            .first()
            .map(|r| r.get(0))
            .unwrap_or_else(chrono::Utc::now);
        let values = rows
            .iter()
            .filter_map(|r| Some((r.get::<Option<String>, _>(1)?, r.get::<Option<i64>, _>(2)?)))
            .collect();
        Ok(SequenceValues { read_at, values })
    }

    /// Removes the slot and the publication (`capture --drop`). Stored
    /// segments stay: they are history.
    pub async fn drop_slot(&mut self) -> Result<bool> {
        let what = self.what();
        let slot = self.slot();
        let dropped: bool = sqlx::query(
            "SELECT count(pg_drop_replication_slot(slot_name)) > 0 FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(&slot)
        .fetch_one(&mut *self.conn)
        .await
        .map_err(|e| classify(&what, e))?
        .get(0);
        exec(
            self.conn,
            &format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&slot)),
        )
        .await
        .map_err(|e| classify(&what, e))?;
        Ok(dropped)
    }
}

fn json_err(e: serde_json::Error) -> Error {
    Error::internal(format!("capture JSON: {e}"))
}

/// Creates the publication for the schema, or adds the schema back to it
/// (a restore drops and recreates the schema, which removes it).
pub async fn ensure_publication(
    conn: &mut PgConnection,
    name: &str,
    schema: &str,
) -> std::result::Result<(), sqlx::Error> {
    let row = sqlx::query(
        "SELECT p.oid IS NOT NULL, EXISTS (SELECT 1 FROM pg_publication_namespace pn JOIN pg_namespace n ON n.oid = pn.pnnspid \
         WHERE pn.pnpubid = p.oid AND n.nspname = $2) \
         FROM (SELECT 1) one LEFT JOIN pg_publication p ON p.pubname = $1",
    )
    .bind(name)
    .bind(schema)
    .fetch_one(&mut *conn)
    .await?;
    let (exists, member): (bool, bool) =
        (row.get(0), row.get::<Option<bool>, _>(1).unwrap_or(false));
    if !exists {
        exec(
            conn,
            &format!(
                "CREATE PUBLICATION {} FOR TABLES IN SCHEMA {}",
                quote_ident(name),
                quote_ident(schema)
            ),
        )
        .await?;
    } else if !member {
        exec(
            conn,
            &format!(
                "ALTER PUBLICATION {} ADD TABLES IN SCHEMA {}",
                quote_ident(name),
                quote_ident(schema)
            ),
        )
        .await?;
    }
    Ok(())
}

pub async fn lag(
    conn: &mut PgConnection,
    storage: &dyn Storage,
    env: &str,
    service: &str,
    schema: &str,
) -> Result<Option<Lag>> {
    let slot = slot_name(env, service, schema);
    let retained: Option<i64> = sqlx::query(
        "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
    )
    .bind(&slot)
    .fetch_optional(&mut *conn)
    .await
    .map_err(|e| classify(&format!("PostgreSQL of service {service}"), e))?
    .and_then(|r| r.get(0));
    let listing = capture::list(storage, env, service, EngineKind::Postgres).await?;
    if retained.is_none() && listing.streams.is_empty() {
        return Ok(None);
    }
    let covered = listing
        .progress
        .map(|p| p.covered_until)
        .or_else(|| listing.segments.last().map(|(_, s)| s.covered_until));
    Ok(Some(Lag {
        slot,
        covered_until: covered,
        lag_seconds: covered.map(|c| (chrono::Utc::now() - c).num_seconds()),
        retained_wal_bytes: retained,
    }))
}

/// Above this much WAL kept for a slot, `status` and metrics warn: an
/// abandoned slot keeps WAL until the server's disk is full.
pub const RETAINED_WAL_WARN: i64 = 1 << 30;

/// The capture state of a service's PostgreSQL database through an open
/// session, or None when it is not captured (or cannot be read; logged).
/// Warns when the slot keeps more WAL than is healthy.
pub async fn reported_lag(
    conn: &mut PgConnection,
    storage: &dyn Storage,
    env: &str,
    service: &str,
    schema: &str,
) -> Option<Lag> {
    match lag(conn, storage, env, service, schema).await {
        Ok(Some(l)) => {
            if l.retained_wal_bytes.is_some_and(|b| b > RETAINED_WAL_WARN) {
                tracing::warn!(
                    "{service}: replication slot {} keeps {} of WAL on the server; run `valero-db capture`, or remove the slot with `valero-db capture --drop -s {service}`",
                    l.slot,
                    crate::units::human_bytes(l.retained_wal_bytes.unwrap_or(0) as u64),
                );
            }
            Some(l)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("{service}: capture state: {e}");
            None
        }
    }
}

/// A snapshot's transaction snapshot, `xmin:xmax:xip,...` (64-bit ids).
struct Visibility {
    xmin: u64,
    xmax: u64,
    xip: Vec<u64>,
}

impl Visibility {
    fn parse(text: &str) -> Result<Visibility> {
        let bad = || {
            Error::integrity(
                format!("snapshot position '{text}' is not a transaction snapshot"),
                None,
            )
        };
        let mut parts = text.split(':');
        let xmin = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xmax = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
        let xip = parts
            .next()
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().map_err(|_| bad()))
            .collect::<Result<Vec<u64>>>()?;
        Ok(Visibility { xmin, xmax, xip })
    }

    /// Whether the snapshot already holds the effects of transaction `xid`
    /// (32-bit, compared modulo 2^32 against the 64-bit bounds).
    fn holds(&self, xid: u32) -> bool {
        let precedes = |a: u32, b: u64| (a.wrapping_sub(b as u32) as i32) < 0;
        if precedes(xid, self.xmin) {
            return true;
        }
        precedes(xid, self.xmax) && !self.xip.iter().any(|x| *x as u32 == xid)
    }
}

/// Where a replay's changes come from and go to: the snapshot's schema
/// (whose name every captured change carries; another environment's may
/// differ) and the schema being restored.
#[derive(Debug, Clone, Copy)]
pub struct ReplayNames<'a> {
    pub schema: &'a str,
    pub source: &'a str,
}

/// Applies the planned changes inside the caller's open transaction.
pub async fn replay(
    conn: &mut PgConnection,
    storage: &dyn Storage,
    plan: &ReplayPlan,
    names: ReplayNames<'_>,
    transaction_snapshot: &str,
    what: &str,
    masking: Option<&crate::mask::Masking>,
) -> Result<ReplayStats> {
    // Triggers and foreign-key checks already ran when the changes were made.
    exec(conn, "SET LOCAL session_replication_role = replica")
        .await
        .map_err(|e| classify(what, e))?;
    // Replayed rows carry the values identity columns generated then.
    let schema = names.schema;
    let identities = IdentityColumns::always(conn, schema, what).await?;
    identities.generate(conn, what, "BY DEFAULT").await?;
    let mut replay = Replay {
        conn: &mut *conn,
        schema,
        source: names.source,
        lineages: Default::default(),
        what,
        at: plan.at,
        until: plan.until,
        visible: Visibility::parse(transaction_snapshot)?,
        stats: ReplayStats::default(),
        replayer: pgoutput::Replayer::default(),
        checked: std::collections::HashSet::new(),
        applying: false,
        masking,
    };
    for (base, seg) in &plan.segments {
        if replay.segment(storage, base, seg).await? == Flow::Stop {
            break;
        }
    }
    let stats = replay.stats;
    identities.generate(conn, what, "ALWAYS").await?;
    exec(conn, "SET LOCAL session_replication_role = origin")
        .await
        .map_err(|e| classify(what, e))?;
    bump_sequences(conn, schema, what).await?;
    if let Some(recorded) = &plan.sequences {
        raise_sequences(conn, schema, recorded, what).await?;
    }
    Ok(stats)
}

/// The schema's `GENERATED ALWAYS AS IDENTITY` columns (of tables that are
/// not partitions: a partition's identity follows its parent's). Replay
/// makes them `BY DEFAULT` while it inserts and updates the captured
/// values, and `ALWAYS` again before the restore commits.
struct IdentityColumns(Vec<(String, String)>);

impl IdentityColumns {
    async fn always(conn: &mut PgConnection, schema: &str, what: &str) -> Result<IdentityColumns> {
        let rows = sqlx::query(
            "SELECT format('%I.%I', n.nspname, c.relname), quote_ident(a.attname) \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = $1 AND a.attidentity = 'a' AND NOT a.attisdropped AND NOT c.relispartition \
             ORDER BY c.oid, a.attnum",
        )
        .bind(schema)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| classify(what, e))?;
        Ok(IdentityColumns(
            rows.iter().map(|r| (r.get(0), r.get(1))).collect(),
        ))
    }

    async fn generate(&self, conn: &mut PgConnection, what: &str, how: &str) -> Result<()> {
        for (table, column) in &self.0 {
            exec(
                conn,
                &format!("ALTER TABLE {table} ALTER COLUMN {column} SET GENERATED {how}"),
            )
            .await
            .map_err(|e| classify(what, e))?;
        }
        Ok(())
    }
}

/// Moves each sequence up to the value capture read at or after the
/// restore's time: at least as high as any it had handed out by then, so
/// no number is issued twice (a receipt number, an invoice number).
async fn raise_sequences(
    conn: &mut PgConnection,
    schema: &str,
    recorded: &SequenceValues,
    what: &str,
) -> Result<()> {
    for (name, value) in &recorded.values {
        sqlx::query(
            "SELECT setval(format('%I.%I', s.schemaname, s.sequencename)::regclass, $3) FROM pg_sequences s \
             WHERE s.schemaname = $1 AND s.sequencename = $2 AND coalesce(s.last_value < $3, true)",
        )
        .bind(schema)
        .bind(name)
        .bind(value)
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| classify(what, e))?;
    }
    Ok(())
}

/// Whether replay goes on after a message.
#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// A transaction committed after the target time: the end.
    Stop,
}

/// Replay's state across segments: which transaction is being applied, and
/// which relations have been checked against the restored tables.
struct Replay<'a> {
    conn: &'a mut PgConnection,
    schema: &'a str,
    /// The snapshot's schema name, which captured relations carry.
    source: &'a str,
    /// Per relation, its table and the tables it is a partition of
    /// (masking looks rules up along it).
    lineages: std::collections::HashMap<u32, Vec<String>>,
    what: &'a str,
    at: chrono::DateTime<chrono::Utc>,
    /// A restore point's position: transactions committed from it on stay out.
    until: Option<u64>,
    visible: Visibility,
    stats: ReplayStats,
    replayer: pgoutput::Replayer,
    checked: std::collections::HashSet<u32>,
    applying: bool,
    /// A masked refresh masks replayed values as it masked the snapshot's.
    masking: Option<&'a crate::mask::Masking>,
}

impl Replay<'_> {
    /// Applies one segment's framed records (LSN, xid, length, pgoutput
    /// message) in order.
    async fn segment(&mut self, storage: &dyn Storage, base: &str, seg: &Segment) -> Result<Flow> {
        let mut stream = ObjectStream::open(storage, base, &seg.object).await?;
        let mut buf: Vec<u8> = Vec::new();
        let mut done = false;
        while !done {
            match stream.next().await? {
                Some(part) => buf.extend_from_slice(&part),
                None => done = true,
            }
            let mut at = 0;
            while buf.len() - at >= 16 {
                let len = u32::from_be_bytes(buf[at + 12..at + 16].try_into().unwrap_or_default())
                    as usize;
                if buf.len() - at - 16 < len {
                    break;
                }
                let message = pgoutput::decode(&buf[at + 16..at + 16 + len])?;
                at += 16 + len;
                if self.message(message).await? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            buf.drain(..at);
        }
        if !buf.is_empty() {
            return Err(Error::integrity(
                format!("captured segment {base} ends inside a change"),
                None,
            ));
        }
        Ok(Flow::Continue)
    }

    async fn message(&mut self, message: Message) -> Result<Flow> {
        match message {
            Message::Begin {
                commit_time,
                xid,
                final_lsn,
            } => {
                if commit_time > self.at || self.until.is_some_and(|u| final_lsn >= u) {
                    return Ok(Flow::Stop);
                }
                self.applying = !self.visible.holds(xid);
                if self.applying {
                    self.stats.transactions += 1;
                    self.stats.reached = Some(commit_time);
                }
            }
            Message::Commit { .. } => self.applying = false,
            Message::Relation(rel) => {
                // Checked when a change to it is applied: changes the
                // snapshot already holds may predate a migration.
                self.checked.remove(&rel.id);
                self.replayer.learn(rel);
            }
            Message::Logical {
                prefix, content, ..
            } if self.applying && restores(&prefix, &content, self.source) => {
                return Err(Error::integrity(
                    format!(
                        "{}: a restore ran at {} between the snapshot and the requested time; changes across it cannot be replayed",
                        self.what,
                        self.stats.reached.map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string()).unwrap_or_default()
                    ),
                    Some("restore a time before that restore, or a snapshot taken after it".into()),
                ));
            }
            change if self.applying => self.change(change).await?,
            _ => {}
        }
        Ok(Flow::Continue)
    }

    /// Applies one row change (or truncate) of a transaction the snapshot
    /// does not hold, checking each relation once against the table.
    async fn change(&mut self, msg: Message) -> Result<()> {
        let used: Vec<u32> = match &msg {
            Message::Insert { relation, .. }
            | Message::Update { relation, .. }
            | Message::Delete { relation, .. } => vec![*relation],
            Message::Truncate { relations, .. } => relations.clone(),
            _ => vec![],
        };
        for id in used {
            if self.checked.insert(id) {
                let relation = self.replayer.relation(id)?;
                if relation.namespace != self.source {
                    return Err(Error::integrity(
                        format!(
                            "{}: a captured change to {}.{} does not belong to the snapshot's schema {}; it cannot be placed",
                            self.what, relation.namespace, relation.name, self.source
                        ),
                        None,
                    ));
                }
                check_relation(self.conn, self.schema, relation, self.what).await?;
                if self.masking.is_some() {
                    let lineage =
                        lineage(self.conn, self.schema, &relation.name, self.what).await?;
                    self.lineages.insert(id, lineage);
                }
            }
        }
        let msg = match (self.masking, changed_relation(&msg)) {
            (Some(m), Some(id)) => {
                let lineage: Vec<&str> = self
                    .lineages
                    .get(&id)
                    .map(|l| l.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                super::masking::mask_change(m, &self.replayer, &lineage, msg)?
            }
            _ => msg,
        };
        let Some(sql) = self.replayer.sql(self.schema, &msg)? else {
            return Ok(());
        };
        let table = match changed_relation(&msg) {
            Some(id) => self
                .replayer
                .relation(id)
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            None => "several tables".into(),
        };
        let single_row = matches!(msg, Message::Update { .. } | Message::Delete { .. });
        let affected = exec_counting(self.conn, &sql).await.map_err(|e| {
            Error::integrity(
                format!(
                    "{}: replaying a change to table {table} committed at {} failed: {}",
                    self.what,
                    self.stats.reached.map(|t| t.to_rfc3339()).unwrap_or_default(),
                    crate::redact::redact(&e.to_string())
                ),
                Some("the table was changed outside valero-db; restore with --snapshot-only or an earlier time".into()),
            )
        })?;
        // An UPDATE or DELETE finds exactly the row it changed then; one
        // that finds none could not be placed, and the state would not be
        // the one asked for.
        if single_row && affected != 1 {
            return Err(Error::integrity(
                format!(
                    "{}: a captured change to table {table} committed at {} found no row to apply to",
                    self.what,
                    self.stats.reached.map(|t| t.to_rfc3339()).unwrap_or_default(),
                ),
                Some("the table was changed outside valero-db; restore with --snapshot-only or an earlier time".into()),
            ));
        }
        self.stats.changes += 1;
        Ok(())
    }
}

/// The row change's relation (a truncate has several and no values).
fn changed_relation(msg: &Message) -> Option<u32> {
    match msg {
        Message::Insert { relation, .. }
        | Message::Update { relation, .. }
        | Message::Delete { relation, .. } => Some(*relation),
        _ => None,
    }
}

/// `table` and the tables it is a partition of, nearest first, in the
/// restored schema.
async fn lineage(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
    what: &str,
) -> Result<Vec<String>> {
    let rows = sqlx::query(
        "SELECT c.relname::text FROM pg_partition_ancestors(format('%I.%I', $1::text, $2::text)::regclass) a \
         JOIN pg_class c ON c.oid = a.relid",
    )
    .bind(schema)
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify(what, e))?;
    // A table that is no partition has no ancestors, not even itself.
    if rows.is_empty() {
        return Ok(vec![table.to_string()]);
    }
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Captured changes carry the table's columns; the restored table must
/// have the same ones, or the table was changed outside valero-db.
async fn check_relation(
    conn: &mut PgConnection,
    schema: &str,
    rel: &pgoutput::Relation,
    what: &str,
) -> Result<()> {
    let cols: Vec<String> = sqlx::query(
        "SELECT a.attname FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace \
         WHERE n.nspname = $1 AND c.relname = $2 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' ORDER BY a.attnum",
    )
    .bind(schema)
    .bind(&rel.name)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify(what, e))?
    .iter()
    .map(|r| r.get(0))
    .collect();
    let captured: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
    if cols != captured {
        return Err(Error::integrity(
            format!(
                "{what}: table {} was changed outside valero-db migrations: captured changes have columns ({}), the restored table {}",
                rel.name,
                captured.join(", "),
                if cols.is_empty() {
                    "does not exist".to_string()
                } else {
                    format!("has ({})", cols.join(", "))
                }
            ),
            Some("replay stopped; restore with --snapshot-only, or to a time before the change".into()),
        ));
    }
    Ok(())
}

/// Sequences are not part of logical decoding: move every sequence owned
/// by a column up to that column's largest value, so new rows after the
/// restore do not collide with replayed ones.
async fn bump_sequences(conn: &mut PgConnection, schema: &str, what: &str) -> Result<()> {
    let owned: Vec<(String, String, String)> = sqlx::query(
        "SELECT s.oid::regclass::text, t.oid::regclass::text, quote_ident(a.attname) \
         FROM pg_class s JOIN pg_namespace n ON n.oid = s.relnamespace \
         JOIN pg_depend d ON d.objid = s.oid AND d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass AND d.deptype IN ('a', 'i') \
         JOIN pg_class t ON t.oid = d.refobjid JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid \
         WHERE s.relkind = 'S' AND n.nspname = $1",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| classify(what, e))?
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2)))
    .collect();
    for (seq, table, column) in owned {
        exec(
            conn,
            &format!(
                "SELECT setval('{seq}', m) FROM (SELECT max({column})::bigint AS m FROM {table}) x \
                 WHERE m IS NOT NULL AND m > (SELECT last_value FROM {seq})"
            ),
        )
        .await
        .map_err(|e| classify(what, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_names_are_safe_and_bounded() {
        assert!(slot_name("prod", "fibu", "fibu").starts_with("valero_prod_fibu_"));
        assert!(slot_name("Dev-1", "crm", "crm").starts_with("valero_dev_1_crm_"));
        assert_ne!(slot_name("dev", "svc", "a"), slot_name("dev", "svc", "b"));
        let long = slot_name(&"e".repeat(40), &"s".repeat(40), "x");
        assert!(long.len() <= 63);
    }

    #[test]
    fn restore_messages_name_their_schema() {
        let m = restore_message("20250101T000000.000Z-abcdef", "fibu");
        assert!(restores(RESTORE_MESSAGE_PREFIX, m.as_bytes(), "fibu"));
        assert!(!restores(RESTORE_MESSAGE_PREFIX, m.as_bytes(), "crm"));
        assert!(!restores(TICK_PREFIX, m.as_bytes(), "fibu"));
    }

    #[test]
    fn visibility_follows_the_transaction_snapshot() {
        let v = Visibility::parse("100:105:101,103").unwrap();
        assert!(v.holds(99));
        assert!(v.holds(100) && v.holds(102) && v.holds(104));
        assert!(!v.holds(101) && !v.holds(103));
        assert!(!v.holds(105) && !v.holds(200));
    }
}
