//! Continuous capture: every committed change of a service, shipped to the
//! snapshot storage in segments, so `restore --timestamp T` can replay from
//! the newest snapshot up to T.
//!
//! Layout, per environment, service and engine (docs/capture.md):
//!
//! ```text
//! <env>/.capture/<service>/<engine>/streams/<start>.json    a capture stream began (slot created)
//! <env>/.capture/<service>/<engine>/<start>-<end>/changes.zst
//! <env>/.capture/<service>/<engine>/<start>-<end>/segment.json   written last
//! <env>/.capture/<service>/<engine>/progress.json           covered up to (overwritten)
//! ```
//!
//! Positions are zero-padded hex so names sort in stream order. A segment
//! covers the changes committed between its `start` and `end` positions;
//! consecutive segments chain (`end` of one is `start` of the next), so a
//! missing segment is a visible gap.

pub mod mongodb;
pub mod pgoutput;
pub mod postgres;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::snapshot::ObjectEntry;
use crate::storage::Storage;

pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_MANIFEST: &str = "segment.json";
pub const CHANGES: &str = "changes.zst";

/// The folder of one service's captured changes for one engine.
pub fn folder(env: &str, service: &str, engine: &str) -> String {
    format!("{env}/.capture/{service}/{engine}")
}

/// A capture stream began: the replication slot was created at `start`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    pub format: u32,
    pub engine: String,
    pub slot: String,
    /// Position from which every committed change is captured.
    pub start: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
}

/// One stored segment of captured changes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Segment {
    pub format: u32,
    pub engine: String,
    pub environment: String,
    pub service: String,
    pub slot: String,
    /// Position before the first change (the slot's confirmed position).
    pub start: String,
    /// Position after the last transaction (where the slot was advanced to).
    pub end: String,
    pub first_commit: Option<chrono::DateTime<chrono::Utc>>,
    pub last_commit: Option<chrono::DateTime<chrono::Utc>>,
    /// Every transaction committed before this time is in this segment or
    /// an earlier one.
    pub covered_until: chrono::DateTime<chrono::Utc>,
    pub transactions: u64,
    pub changes: u64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub object: ObjectEntry,
    /// MongoDB: the change stream's resume token after the last event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<serde_json::Value>,
}

/// How far capture has looked, updated after every pass (also without
/// changes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    pub format: u32,
    pub slot: String,
    pub position: String,
    pub covered_until: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

fn json_err(e: serde_json::Error) -> Error {
    Error::internal(format!("capture JSON: {e}"))
}

/// Reads a segment's object back, then writes its manifest (last). On
/// failure everything written for it is removed.
pub async fn store_segment(
    storage: &dyn Storage,
    writer: &mut crate::snapshot::SnapshotWriter<'_>,
    base: &str,
    segment: &Segment,
) -> Result<()> {
    let stored = async {
        crate::snapshot::verify_object(storage, base, &segment.object).await?;
        storage
            .put_bytes(
                &format!("{base}/{SEGMENT_MANIFEST}"),
                &serde_json::to_vec_pretty(segment).map_err(json_err)?,
            )
            .await
    }
    .await;
    if stored.is_err() {
        writer.discard().await;
    }
    stored
}

/// Records how far capture has looked (overwritten every pass).
pub async fn write_progress(
    storage: &dyn Storage,
    folder: &str,
    slot: &str,
    position: &str,
    covered_until: chrono::DateTime<chrono::Utc>,
) -> Result<()> {
    let progress = Progress {
        format: FORMAT_VERSION,
        slot: slot.to_string(),
        position: position.to_string(),
        covered_until,
        updated_at: chrono::Utc::now(),
    };
    storage
        .put_bytes(
            &format!("{folder}/progress.json"),
            &serde_json::to_vec_pretty(&progress).map_err(json_err)?,
        )
        .await
}

/// A PostgreSQL LSN `X/Y` as a number.
pub fn parse_lsn(text: &str) -> Result<u64> {
    let (hi, lo) = text
        .split_once('/')
        .ok_or_else(|| Error::internal(format!("'{text}' is not an LSN")))?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| Error::internal(format!("bad LSN {text}")))?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| Error::internal(format!("bad LSN {text}")))?;
    Ok((hi << 32) | lo)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xffff_ffff)
}

/// The sortable name part of a position.
pub fn position_name(lsn: u64) -> String {
    format!("{lsn:016X}")
}

fn bad_json(what: &str, key: &str, e: impl std::fmt::Display) -> Error {
    Error::integrity(
        format!("captured changes: {what} {key} is invalid: {e}"),
        Some("restore with --snapshot-only, or remove the damaged capture objects".into()),
    )
}

/// Everything stored for one service and engine.
#[derive(Debug, Default)]
pub struct Listing {
    pub streams: Vec<Stream>,
    /// Complete segments (their manifest exists), by start position.
    pub segments: Vec<(String, Segment)>,
    pub progress: Option<Progress>,
}

impl Listing {
    /// Where the chain of stored segments that begins at `start` ends, and
    /// its last segment (None: no segment continues from `start`).
    pub fn chain_end(&self, start: u64) -> Result<(u64, Option<&Segment>)> {
        let mut end = start;
        let mut last = None;
        for (_, seg) in &self.segments {
            if parse_lsn(&seg.start)? == end {
                end = parse_lsn(&seg.end)?;
                last = Some(seg);
            }
        }
        Ok((end, last))
    }
}

pub async fn list(
    storage: &dyn Storage,
    env: &str,
    service: &str,
    engine: &str,
) -> Result<Listing> {
    let base = folder(env, service, engine);
    let objects = storage.list(&format!("{base}/")).await?;
    let mut listing = Listing::default();
    for o in &objects {
        let rest = &o.key[base.len() + 1..];
        if let Some(name) = rest.strip_prefix("streams/") {
            let bytes = storage.get_bytes(&o.key, 1 << 20).await?;
            listing
                .streams
                .push(serde_json::from_slice(&bytes).map_err(|e| bad_json("stream", name, e))?);
        } else if rest == "progress.json" {
            let bytes = storage.get_bytes(&o.key, 1 << 20).await?;
            listing.progress =
                Some(serde_json::from_slice(&bytes).map_err(|e| bad_json("progress", rest, e))?);
        } else if let Some(seg) = rest.strip_suffix(&format!("/{SEGMENT_MANIFEST}")) {
            let bytes = storage.get_bytes(&o.key, 1 << 20).await?;
            let segment: Segment =
                serde_json::from_slice(&bytes).map_err(|e| bad_json("segment", seg, e))?;
            if segment.environment != env || segment.service != service {
                return Err(bad_json(
                    "segment",
                    seg,
                    "it names another service or environment",
                ));
            }
            listing.segments.push((format!("{base}/{seg}"), segment));
        }
    }
    listing
        .streams
        .sort_by_key(|s| parse_lsn(&s.start).unwrap_or(0));
    listing
        .segments
        .sort_by_key(|(_, s)| parse_lsn(&s.start).unwrap_or(0));
    Ok(listing)
}

/// What a restore to `at` replays on top of a snapshot, worked out before
/// anything is touched.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    pub at: chrono::DateTime<chrono::Utc>,
    /// Segment folder and manifest, in order.
    pub segments: Vec<(String, Segment)>,
}

/// The capture state that can be read without a database session, for a
/// service whose database is unreachable: only MongoDB's, which lives in
/// the storage alone (PostgreSQL's needs the slot).
pub async fn lag_without_database(
    storage: &dyn Storage,
    env: &str,
    service: &str,
    engine: crate::engine::EngineKind,
) -> Option<postgres::Lag> {
    match engine {
        crate::engine::EngineKind::Mongodb => mongodb::lag(storage, env, service).await,
        crate::engine::EngineKind::Postgres => None,
    }
}

/// Chooses the segments that carry a snapshot taken at position `from` up
/// to time `at`. `Ok(None)`: the service has no capture at all (snapshot
/// only). A gap — capture started after the snapshot, a missing segment,
/// changes captured only up to before `at` — is an integrity error naming it.
pub fn plan(
    listing: &Listing,
    from: u64,
    snapshot_id: &str,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<Option<ReplayPlan>> {
    if listing.streams.is_empty() {
        return Ok(None);
    }
    let gap = |message: String| {
        Err(Error::integrity(
            message,
            Some("restore an earlier time, or the snapshot alone with --snapshot-only".into()),
        ))
    };
    // The stream that was already running when the snapshot was taken.
    let Some(stream) = listing
        .streams
        .iter()
        .rev()
        .find(|s| parse_lsn(&s.start).is_ok_and(|p| p <= from))
    else {
        return gap(format!(
            "changes after snapshot {snapshot_id} were not captured: capture started at {} (position {}), after the snapshot",
            listing.streams[0].started_at.format("%Y-%m-%dT%H:%M:%SZ"),
            listing.streams[0].start
        ));
    };
    let mut position = parse_lsn(&stream.start)?;
    let mut covered = stream.started_at;
    let mut chosen = Vec::new();
    for (base, seg) in &listing.segments {
        let start = parse_lsn(&seg.start)?;
        let end = parse_lsn(&seg.end)?;
        if end <= position || start < position {
            continue; // an older stream, or already passed
        }
        if start > position && start <= from {
            // Pruned segments before the snapshot: not needed.
            position = start;
        }
        if start > position {
            if covered >= at {
                break;
            }
            return gap(format!(
                "captured changes have a gap from position {} ({}) to {} ({}): a segment is missing or capture was interrupted",
                format_lsn(position),
                covered.format("%Y-%m-%dT%H:%M:%SZ"),
                seg.start,
                seg.first_commit.unwrap_or(seg.created_at).format("%Y-%m-%dT%H:%M:%SZ"),
            ));
        }
        if covered >= at && seg.first_commit.is_some_and(|c| c > at) {
            break;
        }
        if end > from {
            chosen.push((base.clone(), seg.clone()));
        }
        position = end;
        covered = covered.max(seg.covered_until);
    }
    if let Some(p) = &listing.progress {
        if parse_lsn(&p.position).ok() == Some(position) {
            covered = covered.max(p.covered_until);
        }
    }
    if covered < at {
        return gap(format!(
            "changes are captured only up to {} (position {}); {} is later",
            covered.format("%Y-%m-%dT%H:%M:%SZ"),
            format_lsn(position),
            at.format("%Y-%m-%dT%H:%M:%SZ")
        ));
    }
    Ok(Some(ReplayPlan {
        at,
        segments: chosen,
    }))
}
