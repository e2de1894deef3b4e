//! Taking a restore point before a schema change (docs/capture.md): when
//! every engine of the service is captured and its chain is healthy back
//! to a complete snapshot at the current schema versions, a capture pass
//! in-process ships everything committed so far, every segment since that
//! snapshot is read back, and the point is recorded — in about the time of
//! the pass, whatever the size of the database. Anything missing is a
//! [`Skipped`] with its reason, and the caller takes a full snapshot.

use std::fmt;
use std::time::Instant;

use crate::capture::{self, format_lsn, parse_lsn, Listing};
use crate::config::{EngineKind, Service, StatementLocks};
use crate::engine::mongodb::capture::{Capture as MongoCapture, LEASE_ID};
use crate::engine::mongodb::lease::{lease_ttl, Lease};
use crate::engine::mongodb::MongoEngine;
use crate::engine::postgres::capture::{slot_name, Capture as PgCapture};
use crate::engine::postgres::PostgresEngine;
use crate::error::Error;
use crate::restore_point::{self, PointEngine, RestorePoint};
use crate::snapshot::{self, Found};
use crate::storage::Storage;

/// Why a change took a full snapshot instead of a restore point.
#[derive(Debug)]
pub enum Skipped {
    /// The engine has never been captured (`valero-db capture` not set up).
    NotCaptured(EngineKind),
    /// No complete snapshot of the service exists.
    NoSnapshot,
    /// The newest snapshot was taken at other schema versions: captured
    /// changes are not replayed across a schema change.
    OtherVersions {
        snapshot: String,
        engine: EngineKind,
        snapshot_version: Option<u64>,
        current: Option<u64>,
    },
    /// Another capture (the capture Deployment) holds the capture lock and
    /// did not ship everything up to now within the wait.
    CaptureBusy(EngineKind, std::time::Duration),
    /// The chain from the snapshot has a gap, or a segment failed its read-back.
    Chain(Error),
    /// The storage or a database failed while taking it.
    Failed(Error),
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = |v: &Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
        match self {
            Skipped::NotCaptured(e) => write!(
                f,
                "{e} is not captured (`valero-db capture` was never set up)"
            ),
            Skipped::NoSnapshot => write!(
                f,
                "there is no complete snapshot to replay captured changes onto"
            ),
            Skipped::OtherVersions {
                snapshot,
                engine,
                snapshot_version,
                current,
            } => write!(
                f,
                "the newest snapshot {snapshot} has {engine} at version {}, the database is at {}",
                v(snapshot_version),
                v(current)
            ),
            Skipped::CaptureBusy(e, waited) => write!(
                f,
                "another capture holds the {e} capture lock and had not shipped the changes up to now after {}",
                crate::units::format_duration(*waited)
            ),
            Skipped::Chain(e) => write!(f, "the captured changes cannot be trusted: {e}"),
            Skipped::Failed(e) => write!(f, "taking it failed: {e}"),
        }
    }
}

impl Skipped {
    /// A short word for reports and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Skipped::NotCaptured(_) => "not_captured",
            Skipped::NoSnapshot => "no_snapshot",
            Skipped::OtherVersions { .. } => "other_versions",
            Skipped::CaptureBusy(..) => "capture_busy",
            Skipped::Chain(_) => "gap",
            Skipped::Failed(_) => "failed",
        }
    }
}

/// What the point is taken for.
pub struct Request<'a> {
    pub environment: &'a str,
    pub reason: &'a str,
    pub release: Option<String>,
    /// Each engine's schema version now (read under the service's lock).
    pub versions: &'a [(EngineKind, Option<u64>)],
    /// How long to wait for a running capture (the capture Deployment,
    /// which holds the capture lock) to ship everything up to now.
    pub wait: std::time::Duration,
}

/// How far one engine's changes were shipped for a restore point.
#[derive(Debug, Clone, Copy)]
enum Flushed {
    /// By this process's own pass: up to this position.
    Position(u64),
    /// By the running capture: every change committed up to this time
    /// (the database server's clock when the point was asked for).
    CoveredAt(chrono::DateTime<chrono::Utc>),
}

type Step<T> = std::result::Result<T, Skipped>;

fn failed(e: Error) -> Skipped {
    Skipped::Failed(e)
}

/// Takes a restore point of a locked service, or says why not. Nothing
/// of the service's data is changed either way; a point exists only once
/// everything it relies on was read back.
pub async fn take(
    storage: &dyn Storage,
    service: &Service,
    req: &Request<'_>,
) -> Step<RestorePoint> {
    let started = Instant::now();
    let env = req.environment;
    let mut listings = Vec::new();
    for kind in service.engines() {
        let listing = capture::list(storage, env, &service.name, kind)
            .await
            .map_err(failed)?;
        if listing.streams.is_empty() {
            return Err(Skipped::NotCaptured(kind));
        }
        listings.push((kind, listing));
    }
    let base = snapshot::newest(storage, env, &service.name)
        .await
        .map_err(failed)?
        .ok_or(Skipped::NoSnapshot)?;
    same_versions(&base, req.versions)?;
    complete(storage, &base).await?;
    // A gap found after the pass could be hidden by it: the pass continues
    // from where the chain ends.
    for (kind, listing) in &listings {
        let (from, chain_end) = bounds(listing, &base, *kind)?;
        capture::plan_until(
            listing,
            from,
            chain_end.max(from),
            chain_end,
            &base.manifest.id,
        )
        .map_err(Skipped::Chain)?;
    }
    let at = server_clock(service).await?;
    let positions = flush(storage, env, service, req.wait).await?;
    let mut engines = Vec::new();
    for (kind, flushed) in positions {
        engines.push(read_back(storage, env, &service.name, &base, kind, flushed).await?);
    }
    let point = RestorePoint {
        format: restore_point::FORMAT_VERSION,
        id: restore_point::new_id(at),
        environment: env.to_string(),
        service: service.name.clone(),
        at,
        created_at: chrono::Utc::now(),
        reason: req.reason.to_string(),
        release: req.release.clone(),
        base_snapshot: base.manifest.id.clone(),
        engines,
        duration_ms: started.elapsed().as_millis() as u64,
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    restore_point::save(storage, &point).await.map_err(failed)?;
    tracing::info!(
        "{}: restore point {} on snapshot {} taken and verified in {:.2}s",
        service.name,
        point.id,
        point.base_snapshot,
        started.elapsed().as_secs_f64()
    );
    Ok(point)
}

/// A point's time: the database server's clock, which every capture
/// coverage is read from (never the client's, whose skew would put a point
/// after the coverage that holds it), to the microsecond as it is printed.
/// A MongoDB-only service takes the client's clock: its coverage lags a
/// second behind the server's anyway.
async fn server_clock(service: &Service) -> Step<chrono::DateTime<chrono::Utc>> {
    let now = match &service.postgres {
        Some(pg) => {
            let mut engine = PostgresEngine::connect(&service.name, pg, StatementLocks::default())
                .await
                .map_err(failed)?;
            engine.server_time().await.map_err(failed)?
        }
        None => chrono::Utc::now(),
    };
    Ok(restore_point::to_micros(now))
}

/// The snapshot must hold every engine at the version it is at now.
fn same_versions(base: &Found, versions: &[(EngineKind, Option<u64>)]) -> Step<()> {
    for (engine, current) in versions {
        let snapshot_version = base.manifest.engine(*engine).and_then(|e| e.schema_version);
        if base.manifest.engine(*engine).is_none() || snapshot_version != *current {
            return Err(Skipped::OtherVersions {
                snapshot: base.manifest.id.clone(),
                engine: *engine,
                snapshot_version,
                current: *current,
            });
        }
    }
    Ok(())
}

/// Every object of the base snapshot is still stored at its recorded
/// size (it was read back in full when it was taken; a listing finds one
/// removed or cut short without reading the whole snapshot again).
async fn complete(storage: &dyn Storage, base: &Found) -> Step<()> {
    let stored = storage
        .list(&format!("{}/", base.base))
        .await
        .map_err(failed)?;
    for o in &base.manifest.objects {
        let key = format!("{}/{}", base.base, o.key);
        if !stored.iter().any(|s| s.key == key && s.size == o.size) {
            return Err(Skipped::Chain(Error::integrity(
                format!(
                    "snapshot {}: object {} is missing or has another size",
                    base.manifest.id, o.key
                ),
                None,
            )));
        }
    }
    Ok(())
}

/// One capture pass per engine, in-process under the capture lock,
/// repeated until nothing is left: returns how far each engine's changes
/// are shipped. Where a running capture holds the lock, waits (up to
/// `wait`) until it has shipped everything committed before now.
async fn flush(
    storage: &dyn Storage,
    env: &str,
    service: &Service,
    wait: std::time::Duration,
) -> Step<Vec<(EngineKind, Flushed)>> {
    let mut flushed = Vec::new();
    if let Some(pg) = &service.postgres {
        let mut engine = PostgresEngine::connect(&service.name, pg, StatementLocks::default())
            .await
            .map_err(failed)?;
        let slot = slot_name(env, &service.name, &pg.schema);
        if !engine.try_capture_lock(&slot).await.map_err(failed)? {
            let now = engine.server_time().await.map_err(failed)?;
            drop(engine);
            let kind = EngineKind::Postgres;
            flushed.push((
                kind,
                covered_by_capture(storage, env, &service.name, kind, now, wait).await?,
            ));
        } else {
            let (conn, server) = engine.connection_and_server();
            let mut c = PgCapture {
                conn,
                server,
                storage,
                env,
                service: &service.name,
                schema: &pg.schema,
            };
            let position = loop {
                let r = c.pass().await.map_err(failed)?;
                if !r.more {
                    break r.position;
                }
            };
            // Ending the session lets go of the capture lock.
            drop(engine);
            let position = parse_lsn(&position).map_err(failed)?;
            flushed.push((EngineKind::Postgres, Flushed::Position(position)));
        }
    }
    if let Some(m) = &service.mongodb {
        flushed.push((
            EngineKind::Mongodb,
            flush_mongodb(storage, env, &service.name, m, wait).await?,
        ));
    }
    Ok(flushed)
}

/// MongoDB's part of `flush`: a pass under the capture lease, or the wait
/// for the capture that holds it.
async fn flush_mongodb(
    storage: &dyn Storage,
    env: &str,
    service: &str,
    target: &crate::config::MongoTarget,
    wait: std::time::Duration,
) -> Step<Flushed> {
    let engine = MongoEngine::connect(service, target)
        .await
        .map_err(failed)?;
    let token = uuid::Uuid::new_v4().simple().to_string();
    let lease = Lease::new(engine.database(), LEASE_ID, service, &token, lease_ttl());
    let mut c = MongoCapture {
        db: engine.database(),
        storage,
        env,
        service,
        lease: Some(&lease),
    };
    if !lease.try_acquire().await.map_err(failed)? {
        let (_, now) = c.server_time().await.map_err(failed)?;
        let kind = EngineKind::Mongodb;
        return covered_by_capture(storage, env, service, kind, now, wait).await;
    }
    let passed = async {
        loop {
            let r = c.pass().await?;
            if !r.more {
                break Ok::<_, Error>(r.position);
            }
        }
    }
    .await;
    let _ = lease.release().await;
    let position = parse_lsn(&passed.map_err(failed)?).map_err(failed)?;
    Ok(Flushed::Position(position))
}

/// Waits until the running capture has shipped every change committed
/// before `now` (its passes record how far they cover), polling the
/// storage every 250 ms for at most `wait`.
async fn covered_by_capture(
    storage: &dyn Storage,
    env: &str,
    service: &str,
    kind: EngineKind,
    now: chrono::DateTime<chrono::Utc>,
    wait: std::time::Duration,
) -> Step<Flushed> {
    let started = Instant::now();
    tracing::info!("{service}: the capture of {kind} runs elsewhere; waiting (up to {}) for it to ship the changes up to now", crate::units::format_duration(wait));
    loop {
        let listing = capture::list(storage, env, service, kind)
            .await
            .map_err(failed)?;
        if listing.covered_until().is_some_and(|c| c >= now) {
            return Ok(Flushed::CoveredAt(now));
        }
        if started.elapsed() >= wait {
            return Err(Skipped::CaptureBusy(kind, started.elapsed()));
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

/// Where the base snapshot's part of the chain starts (the snapshot's
/// position) and where the chain of the current stream ends, as the next
/// pass sees it; a chain that ends before the progress capture recorded
/// has lost its last segment.
fn bounds(listing: &Listing, base: &Found, kind: EngineKind) -> Step<(u64, u64)> {
    let info = base.manifest.engine(kind).ok_or(Skipped::NoSnapshot)?;
    let from = capture::snapshot_position(info)
        .map_err(Skipped::Chain)?
        .ok_or_else(|| {
            Skipped::Chain(Error::integrity(
                format!("snapshot {} records no {kind} position", base.manifest.id),
                None,
            ))
        })?;
    let stream = listing.streams.last().ok_or(Skipped::NotCaptured(kind))?;
    let stream_start = parse_lsn(&stream.start).map_err(Skipped::Chain)?;
    let (chain_end, _) = listing.chain_end(stream_start).map_err(Skipped::Chain)?;
    let recorded = listing.progress.as_ref().map(|p| parse_lsn(&p.position));
    if let Some(recorded) = recorded.transpose().map_err(Skipped::Chain)? {
        if recorded > chain_end {
            return Err(Skipped::Chain(Error::integrity(
                format!(
                    "{kind}: capture recorded progress up to position {}, but the stored segments end at {}: a segment is missing",
                    format_lsn(recorded),
                    format_lsn(chain_end)
                ),
                None,
            )));
        }
    }
    Ok((from, chain_end))
}

/// One engine of the restore point after the flush: the chain from the
/// base snapshot up to how far the flush shipped, every segment of the
/// plan a restore to the point will replay read back (size and sha256, as
/// a snapshot's objects).
async fn read_back(
    storage: &dyn Storage,
    env: &str,
    service: &str,
    base: &Found,
    kind: EngineKind,
    flushed: Flushed,
) -> Step<PointEngine> {
    let listing = capture::list(storage, env, service, kind)
        .await
        .map_err(failed)?;
    let (from, chain_end) = bounds(&listing, base, kind)?;
    let (position, covered_at, sequences) = match flushed {
        Flushed::Position(until) => (
            Some(format_lsn(until)),
            None,
            listing.progress.as_ref().and_then(|p| p.sequences.clone()),
        ),
        Flushed::CoveredAt(at) => (None, Some(at), listing.sequences_after(from, at)),
    };
    let mut point = PointEngine {
        engine: kind,
        schema_version: base.manifest.engine(kind).and_then(|e| e.schema_version),
        position,
        covered_at,
        chain_end: format_lsn(chain_end),
        segments: 0,
        sequences,
    };
    let plan = point
        .replay_plan(&listing, from, &base.manifest.id)
        .map_err(Skipped::Chain)?;
    for (folder, seg) in &plan.segments {
        snapshot::verify_object(storage, folder, &seg.object)
            .await
            .map_err(Skipped::Chain)?;
    }
    point.segments = plan.segments.len() as u64;
    Ok(point)
}

/// What a schema change can be undone from: a restore point, or a full
/// snapshot (with the reason no restore point was taken).
#[derive(Debug)]
pub enum Anchor {
    RestorePoint(RestorePoint),
    Snapshot { found: Box<Found>, skipped: Skipped },
}

/// The anchor before a change of a locked service: a restore point when
/// capture allows one, else a full snapshot, saying why (at info level
/// when capture was never set up, a warning otherwise).
pub async fn anchor(
    storage: &dyn Storage,
    locked: &mut crate::service::session::LockedService,
    req: &Request<'_>,
) -> crate::error::Result<Anchor> {
    let name = locked.service.name.clone();
    // A restore point needs no pg_dump, but every snapshot after the
    // change does: one that cannot read the server is refused now, before
    // anything changes, as it is without capture.
    for slot in locked.engines.iter_mut() {
        slot.engine.check_snapshot_tools().await?;
    }
    let skipped = match take(storage, &locked.service, req).await {
        Ok(point) => return Ok(Anchor::RestorePoint(point)),
        Err(skipped) => skipped,
    };
    match skipped {
        Skipped::NotCaptured(_) => tracing::info!(
            "{name}: no restore point: {skipped}; taking a full {} snapshot",
            req.reason
        ),
        _ => tracing::warn!(
            "{name}: no restore point: {skipped}; taking a full {} snapshot instead",
            req.reason
        ),
    }
    let full = crate::service::take::Request {
        environment: req.environment,
        reason: req.reason,
        release: req.release.clone(),
        label: None,
    };
    let found =
        crate::service::take::take_service(storage, &name, &mut locked.engines, &full).await?;
    Ok(Anchor::Snapshot {
        found: Box::new(found),
        skipped,
    })
}
