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

use serde::{Deserialize, Serialize};

use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::snapshot::manifest::EngineInfo;
use crate::snapshot::ObjectEntry;
use crate::storage::Storage;

pub const FORMAT_VERSION: u32 = 1;
pub const SEGMENT_MANIFEST: &str = "segment.json";
pub const CHANGES: &str = "changes.zst";

/// The folder of one service's captured changes for one engine.
pub fn folder(env: &str, service: &str, engine: EngineKind) -> String {
    format!("{env}/.capture/{service}/{engine}")
}

/// A capture stream began: the replication slot was created at `start`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Stream {
    pub format: u32,
    pub engine: EngineKind,
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
    pub engine: EngineKind,
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
    /// PostgreSQL: every sequence's value, read after `covered_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequences: Option<SequenceValues>,
}

/// The values of a schema's sequences, read at one moment. Logical
/// decoding does not carry sequences; a value read at or after a time `T`
/// is at least as high as any value handed out before `T` (sequences only
/// move up between restores), so a restore to `T` sets each sequence to
/// the first values read at or after `T`: gaps, never reuse.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SequenceValues {
    pub read_at: chrono::DateTime<chrono::Utc>,
    /// Sequence name → its last value (sequences never used are absent).
    pub values: std::collections::BTreeMap<String, i64>,
}

/// How far capture has looked, updated after every pass (also without
/// changes).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CoveredUntil {
    pub format: u32,
    pub slot: String,
    pub position: String,
    pub covered_until: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequences: Option<SequenceValues>,
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
    sequences: Option<&SequenceValues>,
) -> Result<()> {
    let progress = CoveredUntil {
        format: FORMAT_VERSION,
        slot: slot.to_string(),
        position: position.to_string(),
        covered_until,
        updated_at: chrono::Utc::now(),
        sequences: sequences.cloned(),
    };
    storage
        .put_bytes(
            &format!("{folder}/progress.json"),
            &serde_json::to_vec_pretty(&progress).map_err(json_err)?,
        )
        .await
}

/// A PostgreSQL LSN `X/Y` as a number.
/// Parses a position written like a PostgreSQL LSN (`16/B374D848`); a
/// malformed one in a stored record is an integrity failure.
pub fn parse_lsn(text: &str) -> Result<u64> {
    let bad = || Error::integrity(format!("'{text}' is not a capture position (an LSN)"), None);
    let (hi, lo) = text.split_once('/').ok_or_else(bad)?;
    let hi = u64::from_str_radix(hi, 16).map_err(|_| bad())?;
    let lo = u64::from_str_radix(lo, 16).map_err(|_| bad())?;
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
    pub progress: Option<CoveredUntil>,
    /// Segments ending at or before this position were removed by
    /// `snapshots prune` (no kept snapshot needs them).
    pub pruned_until: Option<u64>,
}

/// What `snapshots prune` removed: every segment ending at or before
/// `until`. The chain goes on from the first segment left.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Pruned {
    pub format: u32,
    pub until: String,
}

pub const PRUNED: &str = "pruned.json";

/// Records that segments up to `until` were removed (kept the highest).
pub async fn write_pruned(
    storage: &dyn Storage,
    folder: &str,
    until: u64,
    before: Option<u64>,
) -> Result<()> {
    let pruned = Pruned {
        format: FORMAT_VERSION,
        until: format_lsn(until.max(before.unwrap_or(0))),
    };
    storage
        .put_bytes(
            &format!("{folder}/{PRUNED}"),
            &serde_json::to_vec_pretty(&pruned).map_err(json_err)?,
        )
        .await
}

impl Listing {
    /// Where the chain of stored segments that begins at `start` ends, and
    /// its last segment (None: no segment continues from `start`). Where
    /// `snapshots prune` removed the first segments, the chain goes on from
    /// the first one left.
    pub fn chain_end(&self, start: u64) -> Result<(u64, Option<&Segment>)> {
        let mut end = start;
        let mut last = None;
        let pruned = self.pruned_until.unwrap_or(start);
        for (_, seg) in &self.segments {
            let seg_start = parse_lsn(&seg.start)?;
            if seg_start == end || (seg_start > end && seg_start <= pruned) {
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
    engine: EngineKind,
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
        } else if rest == PRUNED {
            let bytes = storage.get_bytes(&o.key, 1 << 20).await?;
            let pruned: Pruned =
                serde_json::from_slice(&bytes).map_err(|e| bad_json("prune record", rest, e))?;
            listing.pruned_until = Some(parse_lsn(&pruned.until)?);
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

/// Whether any engine of a service has ever been captured (a stream began);
/// a storage that cannot be read counts as not captured.
pub async fn is_captured(storage: &dyn Storage, env: &str, service: &str) -> bool {
    for engine in EngineKind::all() {
        if let Ok(l) = list(storage, env, service, engine).await {
            if !l.streams.is_empty() {
                return true;
            }
        }
    }
    false
}

/// What a restore to `at` replays on top of a snapshot, worked out before
/// anything is touched.
#[derive(Debug, Clone)]
pub struct ReplayPlan {
    pub at: chrono::DateTime<chrono::Utc>,
    /// A restore point's position (None: up to `at` alone). PostgreSQL:
    /// transactions whose commit record starts before it; MongoDB: events
    /// at or before it.
    pub until: Option<u64>,
    /// Segment folder and manifest, in order.
    pub segments: Vec<(String, Segment)>,
    /// The first sequence values read at or after `at` (PostgreSQL).
    pub sequences: Option<SequenceValues>,
}

/// The capture state of a service as `status` and metrics show it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lag {
    pub slot: String,
    /// The newest time every change is captured up to.
    pub covered_until: Option<chrono::DateTime<chrono::Utc>>,
    /// Seconds since then.
    pub lag_seconds: Option<i64>,
    /// WAL the slot keeps on the server's disk.
    pub retained_wal_bytes: Option<i64>,
}

/// What a replay applied.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ReplayStats {
    pub transactions: u64,
    pub changes: u64,
    /// Commit time of the last transaction applied: the exact point reached.
    pub reached: Option<chrono::DateTime<chrono::Utc>>,
}

impl Listing {
    /// The newest time every change is captured up to.
    pub fn covered_until(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        self.progress
            .as_ref()
            .map(|p| p.covered_until)
            .or_else(|| self.segments.last().map(|(_, s)| s.covered_until))
    }

    /// Lag as of now under the given slot name.
    pub fn lag(&self, slot: String, retained_wal_bytes: Option<i64>) -> Lag {
        Lag {
            slot,
            covered_until: self.covered_until(),
            lag_seconds: self
                .covered_until()
                .map(|c| (chrono::Utc::now() - c).num_seconds()),
            retained_wal_bytes,
        }
    }
}

/// The capture state that can be read without a database session, for a
/// service whose database is unreachable: only MongoDB's, which lives in
/// the storage alone (PostgreSQL's needs the slot).
pub async fn lag_without_database(
    storage: &dyn Storage,
    env: &str,
    service: &str,
    engine: EngineKind,
) -> Option<Lag> {
    if engine == EngineKind::Postgres {
        return None;
    }
    let listing = match list(storage, env, service, engine).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!("{service}: {engine} capture state: {e}");
            return None;
        }
    };
    let slot = listing.streams.last()?.slot.clone();
    Some(listing.lag(slot, None))
}

/// Where replay of captured changes starts for a snapshot, as a position of
/// its engine: PostgreSQL's WAL position read before its transaction
/// snapshot (older snapshots: the one read with it), MongoDB's starting
/// cluster time. None when the snapshot records none; an error when the
/// recorded one is malformed.
pub fn snapshot_position(info: &EngineInfo) -> Result<Option<u64>> {
    match info.engine {
        EngineKind::Postgres => info
            .position
            .get("wal_lsn_before")
            .or_else(|| info.position.get("wal_lsn"))
            .and_then(|v| v.as_str())
            .map(parse_lsn)
            .transpose(),
        EngineKind::Mongodb => Ok(info.position.get("cluster_time").and_then(|ct| {
            let t = ct.get("t")?.as_u64()?;
            let i = ct.get("i")?.as_u64()?;
            Some((t << 32) | i)
        })),
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
        until: None,
        segments: chosen,
        sequences: listing.sequences_after(from, at),
    }))
}

/// Chooses the segments that carry a snapshot taken at position `from` up
/// to a restore point's position `until`: every segment of the chain from
/// the stream that was running at the snapshot that starts before `until`.
/// The restore point was recorded only after a capture pass had shipped
/// everything up to `until`, so a segment missing on the way is a gap (an
/// integrity error naming it), as is a chain that stops short of
/// `chain_end`, where the stored segments ended when the point was taken.
pub fn plan_until(
    listing: &Listing,
    from: u64,
    until: u64,
    chain_end: u64,
    restore_point: &str,
) -> Result<ReplayPlan> {
    let gap = |message: String| {
        Error::integrity(
            format!("restore point {restore_point}: {message}"),
            Some("restore a snapshot instead (`valero-db snapshots list`)".into()),
        )
    };
    let stream = listing
        .streams
        .iter()
        .rev()
        .find(|s| parse_lsn(&s.start).is_ok_and(|p| p <= from))
        .ok_or_else(|| gap("no capture stream was running at its base snapshot".into()))?;
    let mut position = parse_lsn(&stream.start)?;
    let mut chosen = Vec::new();
    for (base, seg) in &listing.segments {
        let (start, end) = (parse_lsn(&seg.start)?, parse_lsn(&seg.end)?);
        if end <= position || start < position || start >= until {
            continue;
        }
        if start > position && start <= from {
            position = start; // pruned before the snapshot: not needed
        }
        if start > position {
            return Err(gap(format!(
                "the captured changes have a gap from position {} to {}",
                format_lsn(position),
                seg.start
            )));
        }
        if end > from {
            chosen.push((base.clone(), seg.clone()));
        }
        position = end;
    }
    if chain_end > from && position < chain_end {
        return Err(gap(format!(
            "the captured changes end at position {}, before {} where they ended when it was taken",
            format_lsn(position),
            format_lsn(chain_end)
        )));
    }
    Ok(ReplayPlan {
        at: chrono::DateTime::<chrono::Utc>::MAX_UTC,
        until: Some(until),
        segments: chosen,
        sequences: None,
    })
}

impl Listing {
    /// The earliest sequence values read at or after `at` by a pass that
    /// came after the snapshot (position `from`).
    pub fn sequences_after(
        &self,
        from: u64,
        at: chrono::DateTime<chrono::Utc>,
    ) -> Option<SequenceValues> {
        let after_snapshot = |end: &str| parse_lsn(end).is_ok_and(|e| e > from);
        self.segments
            .iter()
            .filter(|(_, s)| after_snapshot(&s.end))
            .filter_map(|(_, s)| s.sequences.as_ref())
            .chain(self.progress.iter().filter_map(|p| p.sequences.as_ref()))
            .filter(|v| v.read_at >= at)
            .min_by_key(|v| v.read_at)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ObjectKind;

    fn t(minute: u32) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::parse_from_rfc3339(&format!("2025-06-19T08:{minute:02}:00Z"))
            .unwrap()
            .to_utc()
    }

    fn stream(start: u64, minute: u32) -> Stream {
        Stream {
            format: FORMAT_VERSION,
            engine: EngineKind::Postgres,
            slot: "slot".into(),
            start: format_lsn(start),
            started_at: t(minute),
        }
    }

    /// A segment from `start` to `end` whose commits happened in minutes
    /// `first..=last`, covering everything up to minute `covered`.
    fn segment(start: u64, end: u64, first: u32, last: u32, covered: u32) -> (String, Segment) {
        let seg = Segment {
            format: FORMAT_VERSION,
            engine: EngineKind::Postgres,
            environment: "dev".into(),
            service: "svc".into(),
            slot: "slot".into(),
            start: format_lsn(start),
            end: format_lsn(end),
            first_commit: Some(t(first)),
            last_commit: Some(t(last)),
            covered_until: t(covered),
            transactions: 1,
            changes: 1,
            created_at: t(covered),
            object: ObjectEntry {
                key: CHANGES.into(),
                kind: ObjectKind::PostgresChanges,
                name: None,
                size: 0,
                sha256: String::new(),
                raw_size: 0,
                encoding: Default::default(),
                rows: None,
                encrypted: false,
            },
            resume_token: None,
            sequences: None,
        };
        (
            format!("dev/.capture/svc/postgres/{}", position_name(start)),
            seg,
        )
    }

    fn chosen(plan: &ReplayPlan) -> Vec<String> {
        plan.segments.iter().map(|(_, s)| s.start.clone()).collect()
    }

    #[test]
    fn a_service_never_captured_has_no_plan() {
        let listing = Listing::default();
        assert!(plan(&listing, 100, "snap", t(30)).unwrap().is_none());
    }

    #[test]
    fn the_plan_takes_the_segments_after_the_snapshot_up_to_the_time() {
        let listing = Listing {
            streams: vec![stream(10, 0)],
            segments: vec![
                segment(10, 20, 1, 2, 3),
                segment(20, 30, 4, 5, 6),
                segment(30, 40, 7, 8, 9),
                segment(40, 50, 20, 21, 22),
            ],
            progress: None,
            pruned_until: None,
        };
        // Snapshot at position 25 (inside the second segment), time minute
        // 9: covered exactly by the third; the fourth starts later.
        let p = plan(&listing, 25, "snap", t(9)).unwrap().unwrap();
        assert_eq!(chosen(&p), [format_lsn(20), format_lsn(30)]);
        // Minute 10 is not covered by the third: the fourth may hold it.
        let p = plan(&listing, 25, "snap", t(10)).unwrap().unwrap();
        assert_eq!(chosen(&p), [format_lsn(20), format_lsn(30), format_lsn(40)]);
    }

    #[test]
    fn capture_started_after_the_snapshot_is_a_gap() {
        let listing = Listing {
            streams: vec![stream(50, 5)],
            segments: vec![segment(50, 60, 6, 7, 8)],
            progress: None,
            pruned_until: None,
        };
        let e = plan(&listing, 40, "snap", t(7)).unwrap_err();
        assert_eq!(e.exit_code(), 5);
        assert!(e.to_string().contains("capture started at"), "{e}");
    }

    #[test]
    fn a_missing_segment_is_a_gap() {
        let listing = Listing {
            streams: vec![stream(10, 0)],
            segments: vec![segment(10, 20, 1, 2, 3), segment(30, 40, 7, 8, 9)],
            progress: None,
            pruned_until: None,
        };
        let e = plan(&listing, 10, "snap", t(8)).unwrap_err();
        assert_eq!(e.exit_code(), 5);
        assert!(e.to_string().contains("gap"), "{e}");
    }

    #[test]
    fn a_time_after_the_coverage_is_refused_and_progress_extends_it() {
        let mut listing = Listing {
            streams: vec![stream(10, 0)],
            segments: vec![segment(10, 20, 1, 2, 3)],
            progress: None,
            pruned_until: None,
        };
        let e = plan(&listing, 10, "snap", t(30)).unwrap_err();
        assert!(e.to_string().contains("captured only up to"), "{e}");
        // A pass that found nothing new still moves the coverage on.
        listing.progress = Some(CoveredUntil {
            format: FORMAT_VERSION,
            slot: "slot".into(),
            position: format_lsn(20),
            covered_until: t(40),
            updated_at: t(40),
            sequences: None,
        });
        let p = plan(&listing, 10, "snap", t(30)).unwrap().unwrap();
        assert_eq!(chosen(&p), [format_lsn(10)]);
    }

    #[test]
    fn progress_at_another_position_does_not_extend_the_coverage() {
        let listing = Listing {
            streams: vec![stream(10, 0)],
            segments: vec![segment(10, 20, 1, 2, 3)],
            pruned_until: None,
            progress: Some(CoveredUntil {
                format: FORMAT_VERSION,
                slot: "slot".into(),
                position: format_lsn(99),
                covered_until: t(40),
                updated_at: t(40),
                sequences: None,
            }),
        };
        assert!(plan(&listing, 10, "snap", t(30)).is_err());
    }

    #[test]
    fn segments_pruned_before_the_snapshot_are_not_needed() {
        let listing = Listing {
            streams: vec![stream(10, 0)],
            // 10..20 was pruned; the snapshot is at 25.
            segments: vec![segment(20, 30, 4, 5, 6), segment(30, 40, 7, 8, 9)],
            progress: None,
            pruned_until: None,
        };
        let p = plan(&listing, 25, "snap", t(9)).unwrap().unwrap();
        assert_eq!(chosen(&p), [format_lsn(20), format_lsn(30)]);
    }

    #[test]
    fn a_restore_to_a_time_takes_the_first_sequence_values_read_after_it() {
        let values = |minute: u32, v: i64| SequenceValues {
            read_at: t(minute),
            values: [("account_id_seq".to_string(), v)].into_iter().collect(),
        };
        let mut listing = Listing {
            streams: vec![stream(100, 0)],
            segments: vec![
                segment(100, 200, 1, 2, 3),
                segment(200, 300, 4, 5, 6),
                segment(300, 400, 7, 8, 9),
            ],
            progress: None,
            pruned_until: None,
        };
        for (i, (minute, v)) in [(3, 10), (6, 20), (9, 30)].into_iter().enumerate() {
            listing.segments[i].1.sequences = Some(values(minute, v));
        }
        let seq_at = |listing: &Listing, minute| {
            listing
                .sequences_after(100, t(minute))
                .map(|s| s.values["account_id_seq"])
        };
        let at = |minute| seq_at(&listing, minute);
        assert_eq!(at(2), Some(10));
        assert_eq!(at(3), Some(10), "read exactly at the time counts");
        assert_eq!(at(4), Some(20));
        assert_eq!(at(10), None, "nothing read after the time");
        // A segment before the snapshot's position is not used.
        assert_eq!(
            listing
                .sequences_after(200, t(2))
                .map(|s| s.values["account_id_seq"]),
            Some(20)
        );
        listing.progress = Some(CoveredUntil {
            format: FORMAT_VERSION,
            slot: "slot".into(),
            position: format_lsn(400),
            covered_until: t(11),
            updated_at: t(12),
            sequences: Some(values(12, 31)),
        });
        assert_eq!(
            seq_at(&listing, 10),
            Some(31),
            "the progress record reads after the last segment"
        );
    }

    #[test]
    fn lsns_round_trip_through_their_text_form() {
        for lsn in [0u64, 1, 0x16_B374_D848, u64::MAX] {
            assert_eq!(parse_lsn(&format_lsn(lsn)).unwrap(), lsn);
        }
        assert!(parse_lsn("not an lsn").is_err());
    }
}
