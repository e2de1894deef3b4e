//! Restore points: the anchor a schema change takes instead of a full
//! snapshot when the service is under continuous capture (docs/capture.md).
//! A restore point names a complete snapshot taken at the service's
//! current schema versions and, per engine, the capture position up to
//! which every change committed before the point was shipped and read back.
//! A restore to it is "that snapshot + the captured changes up to those
//! positions", exactly.
//!
//! Layout: one object per point, written after everything it relies on
//! was verified, so an interrupted attempt leaves no point at all:
//!
//! ```text
//! <env>/.restore-points/<service>/<id>.json
//! ```

use serde::{Deserialize, Serialize};

use crate::capture::{self, parse_lsn, Listing, ReplayPlan, SequenceValues};
use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::storage::Storage;

pub const FORMAT_VERSION: u32 = 1;
/// Restore point ids start with this, so they never read as snapshot ids.
pub const ID_PREFIX: &str = "rp-";
const RECORD_LIMIT: usize = 1 << 20;

/// One engine of a restore point.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PointEngine {
    pub engine: EngineKind,
    /// The schema version, equal to the base snapshot's.
    pub schema_version: Option<u64>,
    /// Where replay stops when this process flushed the capture itself.
    /// PostgreSQL: the slot's position after the flush (transactions whose
    /// commit record starts here or later stay out); MongoDB: the last
    /// captured event's position (later events stay out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
    /// When the running capture (the capture Deployment) shipped the
    /// changes instead: replay takes every change committed up to this
    /// time (the database server's clock when the point was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covered_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Where the stored segments ended when the point was taken: a replay
    /// that cannot reach it has lost a segment.
    pub chain_end: String,
    /// Segments between the base snapshot and the point, each read back.
    pub segments: u64,
    /// PostgreSQL: every sequence's value, read after the flush (or the
    /// first read at or after `covered_at`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sequences: Option<SequenceValues>,
}

impl PointEngine {
    pub fn chain_end(&self) -> Result<u64> {
        parse_lsn(&self.chain_end)
    }

    /// The captured changes a restore to this point replays onto a
    /// snapshot taken at position `from`: up to the position, or up to
    /// the time the running capture covered; with the sequence values
    /// recorded. The same plan whose segments were read back when the
    /// point was taken. `point` names it in errors.
    pub fn replay_plan(&self, listing: &Listing, from: u64, point: &str) -> Result<ReplayPlan> {
        let mut plan = match (&self.position, self.covered_at) {
            (Some(position), _) => capture::plan_until(
                listing,
                from,
                parse_lsn(position)?,
                self.chain_end()?,
                point,
            )?,
            (None, Some(at)) => capture::plan(listing, from, point, at)?.ok_or_else(|| {
                Error::integrity(
                    format!("restore point {point}: the service is no longer captured"),
                    None,
                )
            })?,
            (None, None) => {
                return Err(Error::integrity(
                    format!(
                        "restore point {point} records neither a position nor a time for {}",
                        self.engine
                    ),
                    None,
                ))
            }
        };
        plan.sequences = self.sequences.clone();
        Ok(plan)
    }
}

/// A restore point as stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RestorePoint {
    pub format: u32,
    pub id: String,
    pub environment: String,
    pub service: String,
    /// The moment it stands for: the flush, after the service's lock was
    /// taken and before its change began.
    pub at: chrono::DateTime<chrono::Utc>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// `pre-migrate`, `pre-rollback`.
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// The complete snapshot the captured changes are replayed onto.
    pub base_snapshot: String,
    pub engines: Vec<PointEngine>,
    /// How long taking it took, flush and read-back included.
    pub duration_ms: u64,
    pub tool_version: String,
}

impl RestorePoint {
    pub fn engine(&self, kind: EngineKind) -> Option<&PointEngine> {
        self.engines.iter().find(|e| e.engine == kind)
    }
}

/// A new restore point id for a point taken at `at`.
/// A point's time at the precision it is printed and PostgreSQL keeps
/// (microseconds): a time copied from `snapshots list` names the point.
pub fn to_micros(t: chrono::DateTime<chrono::Utc>) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

/// Whether `t` (as an operator typed it) is the time of a point recorded
/// as `at`: equal to the microsecond.
pub fn same_instant(at: chrono::DateTime<chrono::Utc>, t: chrono::DateTime<chrono::Utc>) -> bool {
    at.timestamp_micros() == t.timestamp_micros()
}

pub fn new_id(at: chrono::DateTime<chrono::Utc>) -> String {
    format!("{ID_PREFIX}{}", crate::snapshot::new_id(at))
}

pub fn is_restore_point_id(id: &str) -> bool {
    id.starts_with(ID_PREFIX)
}

fn folder(env: &str, service: &str) -> String {
    format!("{env}/.restore-points/{service}")
}

pub fn key(env: &str, service: &str, id: &str) -> String {
    format!("{}/{id}.json", folder(env, service))
}

fn invalid(key: &str, why: impl std::fmt::Display) -> Error {
    Error::integrity(
        format!("restore point {key} cannot be trusted: {why}"),
        Some("restore a snapshot instead (`valero-db snapshots list`)".into()),
    )
}

/// Stores a restore point and reads it back; a point that does not read
/// back as written is removed again and is an error.
pub async fn save(storage: &dyn Storage, point: &RestorePoint) -> Result<()> {
    let key = key(&point.environment, &point.service, &point.id);
    let json = serde_json::to_vec_pretty(point)
        .map_err(|e| Error::internal(format!("restore point: {e}")))?;
    storage.put_bytes(&key, &json).await?;
    let back = read(storage, &point.environment, &point.service, &point.id).await;
    if back.as_ref().ok() != Some(point) {
        let _ = storage.delete(&key).await;
        return Err(back
            .err()
            .unwrap_or_else(|| invalid(&key, "the stored record differs from the one written")));
    }
    Ok(())
}

/// Reads one restore point, checking that it names the place it was found.
pub async fn read(
    storage: &dyn Storage,
    env: &str,
    service: &str,
    id: &str,
) -> Result<RestorePoint> {
    let key = key(env, service, id);
    let bytes = storage.get_bytes(&key, RECORD_LIMIT).await?;
    let point: RestorePoint = serde_json::from_slice(&bytes).map_err(|e| invalid(&key, e))?;
    if point.id != id || point.service != service || point.environment != env {
        return Err(invalid(&key, "it names another id, service or environment"));
    }
    Ok(point)
}

/// Every restore point of a service, oldest first. One that cannot be
/// read is logged and left out (it cannot be restored from).
pub async fn list(storage: &dyn Storage, env: &str, service: &str) -> Result<Vec<RestorePoint>> {
    let prefix = format!("{}/", folder(env, service));
    let mut points = Vec::new();
    for o in storage.list(&prefix).await? {
        let Some(id) = o.key[prefix.len()..].strip_suffix(".json") else {
            continue;
        };
        match read(storage, env, service, id).await {
            Ok(p) => points.push(p),
            Err(e @ Error::Unreachable { .. }) => return Err(e),
            Err(e) => tracing::warn!("ignoring restore point {}: {e}", o.key),
        }
    }
    points.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(points)
}

pub async fn delete(storage: &dyn Storage, point: &RestorePoint) -> Result<()> {
    storage
        .delete(&key(&point.environment, &point.service, &point.id))
        .await
}

/// A short form for reports and `snapshots list`.
#[derive(Debug, Clone, Serialize)]
pub struct PointSummary {
    pub id: String,
    pub service: String,
    pub at: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    pub release: Option<String>,
    pub base_snapshot: String,
    pub versions: Vec<(EngineKind, Option<u64>)>,
    pub duration_ms: u64,
}

impl RestorePoint {
    pub fn summary(&self) -> PointSummary {
        PointSummary {
            id: self.id.clone(),
            service: self.service.clone(),
            at: self.at,
            reason: self.reason.clone(),
            release: self.release.clone(),
            base_snapshot: self.base_snapshot.clone(),
            versions: self
                .engines
                .iter()
                .map(|e| (e.engine, e.schema_version))
                .collect(),
            duration_ms: self.duration_ms,
        }
    }
}
