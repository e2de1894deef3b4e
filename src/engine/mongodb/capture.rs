//! MongoDB capture through a change stream on the service database. Each
//! segment stores the raw change events (BSON, one after another) and the
//! resume token after its last event; the next pass resumes from the last
//! stored segment's token, so the storage alone says where capture stands
//! and a crash loses or repeats nothing.
//!
//! Positions are cluster times written like PostgreSQL LSNs: `T/I` in hex
//! (seconds and increment), so the chain logic of `capture` serves both.
//!
//! Replay runs inside the MongoDB restore, on the temporary collections
//! before the commit point. Every operation is applied in a form that is
//! idempotent (upserting replaces, `$set`/`$unset`, deletes by key), so
//! events between the snapshot's starting cluster time and its actual read
//! point, which the snapshot may already hold, converge to the same state.

use std::collections::HashMap;

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::change_stream::event::ResumeToken;
use mongodb::Database;

use super::driver::{classify, collection_of, LOCKS};
use super::lease::Lease;
use crate::capture::ReplayStats;
use crate::capture::{
    self, folder, format_lsn, parse_lsn, position_name, ReplayPlan, Segment, Stream, CHANGES,
    FORMAT_VERSION,
};
use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::snapshot::{ObjectKind, SnapshotWriter};
use crate::storage::Storage;

const PASS_EVENTS: u64 = 100_000;

fn position(ts: bson::Timestamp) -> u64 {
    ((ts.time as u64) << 32) | ts.increment as u64
}

fn json_err(e: serde_json::Error) -> Error {
    Error::internal(format!("capture JSON: {e}"))
}

pub struct Capture<'a> {
    pub db: &'a Database,
    pub storage: &'a dyn Storage,
    pub env: &'a str,
    pub service: &'a str,
    /// Renewed by every pass, and checked again before a segment is stored.
    pub lease: Option<&'a Lease>,
}

/// One capture per service database at a time: a lease (`_id: "capture"`
/// beside the migration lock, left out of change streams). Renewed by the
/// passes themselves rather than by a background task, so a pass cannot
/// outlive a lease it lost: a capture whose lease was taken over (it stalled
/// longer than the lease) stops before storing.
pub const LEASE_ID: &str = "capture";

/// At the start of a pass: extends the lease, or takes it back if it
/// expired unclaimed (the pass reads the stored chain afresh); exit 4 when
/// another capture holds it.
async fn hold(lease: &Lease) -> Result<()> {
    if lease.try_acquire().await? {
        return Ok(());
    }
    Err(lost(lease).await)
}

/// Before a segment is stored: extends the lease only if it is still this
/// capture's; exit 4 otherwise.
async fn renew(lease: &Lease) -> Result<()> {
    if lease.extend().await? {
        return Ok(());
    }
    Err(lost(lease).await)
}

async fn lost(lease: &Lease) -> Error {
    let holder = match lease.holder().await {
        Ok(h) => h,
        Err(e) => return e,
    };
    Error::LockTimeout {
        service: lease.service().to_string(),
        engine: EngineKind::Mongodb.to_string(),
        timeout: format!(
            "its capture lease ({}; it expired before this capture renewed it)",
            crate::units::format_duration(lease.ttl())
        ),
        holder: capture_holder(holder),
    }
}

/// Names the other capture in a lock error.
pub fn capture_holder(holder: Option<String>) -> String {
    match holder {
        Some(h) => format!("another `valero-db capture`: {h}"),
        None => "another `valero-db capture` (its lease has just ended)".into(),
    }
}

/// What one pass did.
#[derive(Debug, Default, Clone)]
pub struct PassReport {
    pub events: u64,
    pub segment: Option<String>,
    pub position: String,
    pub more: bool,
}

impl Capture<'_> {
    fn what(&self) -> String {
        format!("MongoDB of service {}", self.service)
    }

    fn folder(&self) -> String {
        folder(self.env, self.service, EngineKind::Mongodb)
    }

    pub async fn server_time(&self) -> Result<(bson::Timestamp, chrono::DateTime<chrono::Utc>)> {
        let hello = self
            .db
            .run_command(doc! {"hello": 1})
            .await
            .map_err(|e| classify(&self.what(), e))?;
        let ts = hello.get_timestamp("operationTime").map_err(|_| {
            Error::usage_hint(
                format!("{}: the server reports no cluster time", self.what()),
                "capture needs a replica set (change streams); a standalone mongod has none",
            )
        })?;
        let now = hello
            .get_datetime("localTime")
            .map(|d| d.to_chrono())
            .unwrap_or_else(|_| chrono::Utc::now());
        Ok((ts, now))
    }

    /// Records the start of a capture stream when there is none.
    pub async fn ensure(&mut self) -> Result<()> {
        let listing =
            capture::list(self.storage, self.env, self.service, EngineKind::Mongodb).await?;
        if !listing.streams.is_empty() {
            return Ok(());
        }
        let (ts, now) = self.server_time().await?;
        let start = format_lsn(position(ts));
        let stream = Stream {
            format: FORMAT_VERSION,
            engine: EngineKind::Mongodb,
            slot: format!("change stream on {}", self.db.name()),
            start: start.clone(),
            started_at: now,
        };
        self.storage
            .put_bytes(
                &format!(
                    "{}/streams/{}.json",
                    self.folder(),
                    position_name(position(ts))
                ),
                &serde_json::to_vec_pretty(&stream).map_err(json_err)?,
            )
            .await?;
        tracing::info!(
            "{}: MongoDB capture stream started at cluster time {}.{}",
            self.service,
            ts.time,
            ts.increment
        );
        Ok(())
    }

    /// Where this pass starts: the end of the last stored segment of the
    /// current stream, and the resume token stored with it.
    async fn resume_point(&self) -> Result<(u64, Option<ResumeToken>)> {
        let listing =
            capture::list(self.storage, self.env, self.service, EngineKind::Mongodb).await?;
        let stream_start = match listing.streams.last() {
            Some(s) => parse_lsn(&s.start)?,
            None => return Err(Error::internal("capture stream not started")),
        };
        let (chain_end, last) = listing.chain_end(stream_start)?;
        let token: Option<ResumeToken> = last
            .and_then(|seg| seg.resume_token.as_ref())
            .map(|t| {
                let invalid = |e: String| {
                    Error::integrity(format!("a stored resume token is invalid: {e}"), None)
                };
                let b = Bson::try_from(t.clone()).map_err(|e| invalid(e.to_string()))?;
                bson::from_bson::<ResumeToken>(b).map_err(|e| invalid(e.to_string()))
            })
            .transpose()?;
        Ok((chain_end, token))
    }

    /// Opens the change stream after the stored token, or at the chain's
    /// cluster time when there is none yet.
    async fn open_stream(
        &self,
        chain_end: u64,
        token: Option<ResumeToken>,
    ) -> Result<mongodb::change_stream::ChangeStream<Document>> {
        // Lease renewals are writes too; they are not the service's data.
        let watch = self
            .db
            .watch()
            .pipeline([doc! {"$match": {"ns.coll": {"$nin": [LOCKS]}}}])
            .max_await_time(std::time::Duration::from_millis(300));
        // startAfter also continues after an invalidate (a dropped database).
        let watch = match token {
            Some(t) => watch.start_after(t),
            None => watch.start_at_operation_time(bson::Timestamp {
                time: (chain_end >> 32) as u32,
                increment: chain_end as u32,
            }),
        };
        Ok(watch
            .await
            .map_err(|e| classify(&self.what(), e))?
            .with_type::<Document>())
    }

    /// Ships the events since the last stored segment as one segment.
    pub async fn pass(&mut self) -> Result<PassReport> {
        let what = self.what();
        if let Some(lease) = self.lease {
            hold(lease).await?;
        }
        let (chain_end, token) = self.resume_point().await?;
        let (_, now) = self.server_time().await?;
        let covered_until = now - chrono::Duration::seconds(1);
        let start = format_lsn(chain_end);
        let mut cs = self.open_stream(chain_end, token).await?;
        let base = format!("{}/{}", self.folder(), position_name(chain_end));
        let mut writer = SnapshotWriter::new(self.storage, base.clone());
        let mut sink = writer
            .object(CHANGES, ObjectKind::MongoChanges, None)
            .await?;
        let mut report = PassReport {
            position: start.clone(),
            ..Default::default()
        };
        let mut first = None;
        let mut last = None;
        let mut end = chain_end;
        let drained: Result<()> = async {
            while report.events < PASS_EVENTS {
                let Some(event) = cs.next_if_any().await.map_err(|e| classify(&what, e))? else {
                    break;
                };
                if let Ok(ts) = event.get_timestamp("clusterTime") {
                    end = end.max(position(ts));
                }
                let wall = event.get_datetime("wallTime").map(|d| d.to_chrono()).ok();
                first = first.or(wall);
                last = wall.or(last);
                let bytes = bson::to_vec(&event)
                    .map_err(|e| Error::internal(format!("change event: {e}")))?;
                sink.write(&bytes).await?;
                report.events += 1;
            }
            Ok(())
        }
        .await;
        if let Err(e) = drained {
            sink.abort().await;
            return Err(e);
        }
        report.more = report.events >= PASS_EVENTS;
        if report.events == 0 {
            sink.abort().await;
            self.write_progress(&start, covered_until).await?;
            return Ok(report);
        }
        let token = cs
            .resume_token()
            .map(|t| bson::to_bson(&t).map(|b| b.into_relaxed_extjson()))
            .transpose()
            .map_err(|e| Error::internal(format!("resume token: {e}")))?;
        let entry = sink.finish().await?;
        writer.add(entry.clone());
        let segment = Segment {
            format: FORMAT_VERSION,
            engine: EngineKind::Mongodb,
            environment: self.env.to_string(),
            service: self.service.to_string(),
            slot: format!("change stream on {}", self.db.name()),
            start: start.clone(),
            end: format_lsn(end),
            first_commit: first,
            last_commit: last,
            // Never earlier than the last event it holds.
            covered_until: if report.more {
                last.unwrap_or(covered_until)
            } else {
                last.map_or(covered_until, |l| l.max(covered_until))
            },
            transactions: report.events,
            changes: report.events,
            created_at: chrono::Utc::now(),
            object: entry.clone(),
            resume_token: token,
            sequences: None,
        };
        if let Some(lease) = self.lease {
            // Lost: the folder may be the new holder's now; leave it alone
            // (an object without its segment.json is not a segment).
            renew(lease).await?;
        }
        capture::store_segment(self.storage, &mut writer, &base, &segment).await?;
        self.write_progress(&segment.end, segment.covered_until)
            .await?;
        report.segment = Some(base);
        report.position = segment.end;
        Ok(report)
    }

    async fn write_progress(
        &mut self,
        position: &str,
        covered_until: chrono::DateTime<chrono::Utc>,
    ) -> Result<()> {
        let slot = &format!("change stream on {}", self.db.name());
        capture::write_progress(
            self.storage,
            &self.folder(),
            slot,
            position,
            covered_until,
            None,
        )
        .await
    }
}

/// Where the restore keeps each collection until the commit point, and
/// how replay adds, drops and renames entries of its journal.
pub struct ReplayTargets<'a> {
    pub db: &'a Database,
    pub journal: &'a str,
    pub token: &'a str,
    /// Collection name → temporary collection.
    pub map: HashMap<String, String>,
    pub created: usize,
}

impl ReplayTargets<'_> {
    async fn target(&mut self, name: &str, what: &str) -> Result<String> {
        if let Some(t) = self.map.get(name) {
            return Ok(t.clone());
        }
        // Created after the snapshot: a new temporary, known to the journal.
        self.created += 1;
        let tmp = format!("valero_tmp_{}_c{}", self.token, self.created);
        self.db
            .run_command(doc! {"create": &tmp})
            .await
            .map_err(|e| classify(what, e))?;
        self.adopt(name, tmp.clone(), what).await?;
        Ok(tmp)
    }

    /// The collection was dropped: its temporary goes, and the journal no
    /// longer renames or keeps it.
    async fn dropped(&mut self, name: &str, what: &str) -> Result<()> {
        if let Some(tmp) = self.map.get(name) {
            self.db
                .collection::<Document>(tmp)
                .drop()
                .await
                .map_err(|e| classify(what, e))?;
        }
        self.dropped_entry_only(name, what).await
    }

    /// The database was dropped: everything goes; what is created
    /// afterwards comes back.
    async fn dropped_database(&mut self, what: &str) -> Result<()> {
        let names: Vec<String> = self.map.keys().cloned().collect();
        for name in names {
            self.dropped(&name, what).await?;
        }
        self.db
            .collection::<Document>(self.journal)
            .update_one(doc! {"_id": "restore"}, doc! {"$set": {"keep": []}})
            .await
            .map_err(|e| classify(what, e))?;
        Ok(())
    }

    /// The journal no longer renames or keeps `name`.
    async fn dropped_entry_only(&mut self, name: &str, what: &str) -> Result<()> {
        self.map.remove(name);
        self.db
            .collection::<Document>(self.journal)
            .update_one(
                doc! {"_id": "restore"},
                doc! {"$pull": {"renames": {"name": name}, "keep": name}},
            )
            .await
            .map_err(|e| classify(what, e))?;
        Ok(())
    }

    /// `tmp` becomes the temporary of `name`, replacing any it had.
    async fn adopt(&mut self, name: &str, tmp: String, what: &str) -> Result<()> {
        if let Some(old) = self.map.remove(name) {
            let _ = self.db.collection::<Document>(&old).drop().await;
            self.dropped_entry_only(name, what).await?;
        }
        self.db
            .collection::<Document>(self.journal)
            .update_one(
                doc! {"_id": "restore"},
                doc! {"$push": {"renames": {"tmp": &tmp, "name": name, "validation": {}}, "keep": name}},
            )
            .await
            .map_err(|e| classify(what, e))?;
        self.map.insert(name.to_string(), tmp);
        Ok(())
    }
}

/// Applies the planned change events to the restore's temporaries.
///
/// `source_db` is the snapshot's database, whose name the captured events
/// carry (another environment's may differ from the target's); an event
/// of another database cannot be placed and ends the replay (exit 5).
#[allow(clippy::too_many_arguments)]
pub async fn replay(
    targets: &mut ReplayTargets<'_>,
    storage: &dyn Storage,
    plan: &ReplayPlan,
    source_db: &str,
    from: u64,
    skip: &(dyn Fn(&str) -> bool + Sync),
    what: &str,
    masking: Option<&crate::mask::Masking>,
) -> Result<ReplayStats> {
    let mut stats = ReplayStats::default();
    let mut uncovered = std::collections::BTreeSet::new();
    let mut inserts = Inserts::default();
    'segments: for (base, seg) in &plan.segments {
        let mut stream =
            crate::snapshot::stream::ObjectStream::open(storage, base, &seg.object).await?;
        let mut buf: Vec<u8> = Vec::new();
        let mut done = false;
        while !done {
            match stream.next().await? {
                Some(part) => buf.extend_from_slice(&part),
                None => done = true,
            }
            let mut at = 0;
            while buf.len() - at >= 4 {
                let len = i32::from_le_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]);
                if len < 5 {
                    return Err(Error::integrity(
                        format!("captured segment {base} holds invalid BSON"),
                        None,
                    ));
                }
                let len = len as usize;
                if buf.len() - at < len {
                    break;
                }
                let event: Document = RawDocumentBuf::from_bytes(buf[at..at + len].to_vec())
                    .ok()
                    .and_then(|r| r.to_document().ok())
                    .ok_or_else(|| {
                        Error::integrity(
                            format!("captured segment {base} holds invalid BSON"),
                            None,
                        )
                    })?;
                at += len;
                let ts = event
                    .get_timestamp("clusterTime")
                    .map(position)
                    .unwrap_or(0);
                let wall = event.get_datetime("wallTime").map(|d| d.to_chrono()).ok();
                if wall.is_some_and(|w| w > plan.at) || plan.until.is_some_and(|u| ts > u) {
                    break 'segments;
                }
                if ts < from {
                    continue;
                }
                let event = match masking {
                    Some(m) if !skip(collection_of(&event)) => {
                        super::masking::mask_event(m, event, &mut uncovered)?
                    }
                    _ => event,
                };
                if apply(targets, &mut inserts, &event, source_db, skip, what).await? {
                    stats.changes += 1;
                    stats.transactions += 1;
                }
                stats.reached = wall.or(stats.reached);
            }
            buf.drain(..at);
        }
        if !buf.is_empty() {
            return Err(Error::integrity(
                format!("captured segment {base} ends inside an event"),
                None,
            ));
        }
    }
    inserts.flush(targets, what).await?;
    if !uncovered.is_empty() {
        let problems = super::masking::strict_problems(uncovered);
        return Err(crate::mask::check::refusal(
            &format!("the captured changes of {what}"),
            &problems,
        ));
    }
    Ok(stats)
}

/// Consecutive inserts into one collection, sent as one batch. A document
/// the snapshot already holds (inserted between the snapshot's starting
/// cluster time and its read point) is a duplicate key and is left as the
/// snapshot has it; the events after it bring it up to date.
#[derive(Default)]
struct Inserts {
    target: String,
    docs: Vec<Document>,
}

impl Inserts {
    async fn flush(&mut self, targets: &ReplayTargets<'_>, what: &str) -> Result<()> {
        if self.docs.is_empty() {
            return Ok(());
        }
        let docs = std::mem::take(&mut self.docs);
        let r = targets
            .db
            .collection::<Document>(&self.target)
            .insert_many(docs)
            .ordered(false)
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) if only_duplicates(&e) => Ok(()),
            Err(e) => Err(classify(what, e)),
        }
    }
}

/// Applies an update event's description: truncated arrays, then `$set`
/// and `$unset` of the changed fields (idempotent, so events the snapshot
/// already holds converge).
async fn apply_update(
    c: &mongodb::Collection<Document>,
    key: Document,
    event: &Document,
    what: &str,
) -> Result<()> {
    let err = |e| classify(what, e);
    let desc = event
        .get_document("updateDescription")
        .cloned()
        .unwrap_or_default();
    if let Ok(truncated) = desc.get_array("truncatedArrays") {
        for t in truncated.iter().filter_map(Bson::as_document) {
            if let (Ok(field), Some(size)) =
                (t.get_str("field"), t.get("newSize").and_then(Bson::as_i32))
            {
                c.update_one(
                    key.clone(),
                    doc! {"$push": {field: {"$each": [], "$slice": size}}},
                )
                .await
                .map_err(err)?;
            }
        }
    }
    let mut update = Document::new();
    if let Ok(set) = desc.get_document("updatedFields") {
        if !set.is_empty() {
            update.insert("$set", set.clone());
        }
    }
    if let Ok(removed) = desc.get_array("removedFields") {
        if !removed.is_empty() {
            let unset: Document = removed
                .iter()
                .filter_map(Bson::as_str)
                .map(|f| (f.to_string(), Bson::String(String::new())))
                .collect();
            update.insert("$unset", unset);
        }
    }
    if !update.is_empty() {
        c.update_one(key, update).await.map_err(err)?;
    }
    Ok(())
}

fn only_duplicates(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        mongodb::error::ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors
                    .as_ref()
                    .is_some_and(|w| w.iter().all(|x| x.code == 11000))
        }
        _ => false,
    }
}

/// Applies one change event to the restore's temporaries; false when it
/// concerns valero-db's own collections (locks, temporaries, `system.`),
/// which a replay leaves alone.
async fn apply(
    targets: &mut ReplayTargets<'_>,
    inserts: &mut Inserts,
    event: &Document,
    source_db: &str,
    skip: &(dyn Fn(&str) -> bool + Sync),
    what: &str,
) -> Result<bool> {
    let op = event.get_str("operationType").unwrap_or_default();
    let ns = event.get_document("ns").ok();
    if let Some(db) = ns
        .and_then(|n| n.get_str("db").ok())
        .filter(|d| *d != source_db)
    {
        return Err(Error::integrity(
            format!(
                "{what}: a captured {op} in database {db} does not belong to the snapshot's database {source_db}; it cannot be placed"
            ),
            None,
        ));
    }
    let coll = ns
        .and_then(|n| n.get_str("coll").ok())
        .unwrap_or_default()
        .to_string();
    if coll == targets.journal && op == "insert" {
        return Err(Error::integrity(
            format!("{what}: a restore ran between the snapshot and the requested time; changes across it cannot be replayed"),
            Some("restore a time before that restore, or a snapshot taken after it".into()),
        ));
    }
    if coll.is_empty() && op != "dropDatabase" || skip(&coll) {
        return Ok(false);
    }
    let key = event
        .get_document("documentKey")
        .cloned()
        .unwrap_or_default();
    let err = |e| classify(what, e);
    if op == "insert" {
        let tmp = targets.target(&coll, what).await?;
        if tmp != inserts.target || inserts.docs.len() >= 1000 {
            inserts.flush(targets, what).await?;
            inserts.target = tmp;
        }
        let full = event.get_document("fullDocument").map_err(|_| {
            Error::integrity(
                format!("{what}: a captured insert on {coll} has no document"),
                None,
            )
        })?;
        inserts.docs.push(full.clone());
        return Ok(true);
    }
    inserts.flush(targets, what).await?;
    match op {
        "insert" | "replace" => {
            let tmp = targets.target(&coll, what).await?;
            let full = event.get_document("fullDocument").map_err(|_| {
                Error::integrity(
                    format!("{what}: a captured {op} on {coll} has no document"),
                    None,
                )
            })?;
            targets
                .db
                .collection::<Document>(&tmp)
                .replace_one(key, full.clone())
                .upsert(true)
                .await
                .map_err(err)?;
        }
        "update" => {
            let tmp = targets.target(&coll, what).await?;
            let c = targets.db.collection::<Document>(&tmp);
            apply_update(&c, key, event, what).await?;
        }
        "delete" => {
            let tmp = targets.target(&coll, what).await?;
            targets
                .db
                .collection::<Document>(&tmp)
                .delete_one(key)
                .await
                .map_err(err)?;
        }
        "drop" => targets.dropped(&coll, what).await?,
        "rename" => {
            let to = event
                .get_document("to")
                .ok()
                .and_then(|t| t.get_str("coll").ok())
                .unwrap_or_default()
                .to_string();
            let tmp = targets.target(&coll, what).await?;
            targets.dropped_entry_only(&coll, what).await?;
            targets.adopt(&to, tmp, what).await?;
        }
        "dropDatabase" => targets.dropped_database(what).await?,
        // Events without data (index builds, `create`): nothing to apply.
        _ => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_times_order_like_positions() {
        let a = position(bson::Timestamp {
            time: 10,
            increment: 5,
        });
        let b = position(bson::Timestamp {
            time: 11,
            increment: 1,
        });
        assert!(a < b);
        assert_eq!(parse_lsn(&format_lsn(a)).unwrap(), a);
    }
}
