//! `snapshot [--label]`, `snapshots list`, `snapshots verify ID|--all` and
//! `snapshots prune`. Snapshots and prune take the service's lock, so a
//! snapshot never captures a half-applied MongoDB migration and prune never
//! mistakes a running snapshot for a leftover.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::EngineKind;
use crate::context::{confirm_plan, Context};
use crate::error::{Error, Result};
use crate::output::{table, Outcome};
use crate::restore_point::{self, RestorePoint};
use crate::service::session::LockedService;
use crate::service::take::{take_service, Request};
use crate::snapshot::{self, retention, Found, MANIFEST};
use crate::storage::{self, Storage};
use crate::units::human_bytes;

pub fn summary(f: &Found) -> Value {
    json!(f.summary())
}

fn row(f: &Found) -> Vec<String> {
    let m = &f.manifest;
    let versions: Vec<String> = m
        .engines
        .iter()
        .map(|e| {
            format!(
                "{}={}",
                e.engine,
                e.schema_version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into())
            )
        })
        .collect();
    vec![
        m.id.clone(),
        m.service.clone(),
        m.consistent_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        m.reason.clone(),
        m.release.clone().unwrap_or_else(|| "-".into()),
        versions.join(" "),
        human_bytes(m.total_size()),
    ]
}

const HEADERS: [&str; 7] = [
    "ID",
    "SERVICE",
    "CONSISTENT AT",
    "REASON",
    "RELEASE",
    "VERSIONS",
    "SIZE",
];

pub async fn take(ctx: &Context, label: Option<String>) -> Outcome {
    let result = async {
        let services = ctx.services()?;
        let storage = ctx.storage().await?;
        let mut taken = Vec::new();
        for service in &services {
            let mut locked = LockedService::open(service, Vec::new(), ctx.waits()).await?;
            let req = Request {
                environment: &ctx.env.name,
                reason: "manual",
                release: None,
                label: label.clone(),
            };
            let r = take_service(storage.as_ref(), &service.name, &mut locked.engines, &req).await;
            locked.release().await;
            taken.push(r?);
        }
        Ok::<_, Error>(taken)
    }
    .await;
    match result {
        Ok(taken) => Outcome::ok(
            json!({"command": "snapshot", "environment": ctx.env.name, "snapshots": taken.iter().map(summary).collect::<Vec<_>>()}),
            table(&HEADERS, &taken.iter().map(row).collect::<Vec<_>>()),
        ),
        Err(e) => Outcome::failed(e),
    }
}

pub async fn list_all(ctx: &Context, storage: &dyn Storage) -> Result<Vec<Found>> {
    let mut all = Vec::new();
    for service in ctx.services()? {
        all.extend(
            snapshot::list_service(storage, &ctx.env.name, &service.name)
                .await?
                .0,
        );
    }
    Ok(all)
}

/// A restore point as a row beside the snapshots: its time, and the
/// snapshot it replays onto in place of a size.
fn point_row(p: &RestorePoint) -> Vec<String> {
    let versions: Vec<String> = p
        .engines
        .iter()
        .map(|e| {
            let v = e.schema_version.map(|v| v.to_string());
            format!("{}={}", e.engine, v.unwrap_or_else(|| "-".into()))
        })
        .collect();
    vec![
        p.id.clone(),
        p.service.clone(),
        p.at.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        format!("{} (restore point)", p.reason),
        p.release.clone().unwrap_or_else(|| "-".into()),
        versions.join(" "),
        format!("on {}", p.base_snapshot),
    ]
}

pub async fn list(ctx: &Context) -> Outcome {
    let result = async {
        let storage = storage::open(&ctx.env).await?;
        let all = list_all(ctx, storage.as_ref()).await?;
        let mut points = Vec::new();
        for service in ctx.services()? {
            points
                .extend(restore_point::list(storage.as_ref(), &ctx.env.name, &service.name).await?);
        }
        Ok::<_, Error>((all, points))
    }
    .await;
    match result {
        Ok((all, points)) => {
            // One table, in time order: snapshots by their consistent
            // point, restore points by theirs.
            let mut rows: Vec<(chrono::DateTime<chrono::Utc>, Vec<String>)> = all
                .iter()
                .map(|f| (f.manifest.consistent_at, row(f)))
                .chain(points.iter().map(|p| (p.at, point_row(p))))
                .collect();
            rows.sort_by_key(|(at, _)| *at);
            let rows: Vec<Vec<String>> = rows.into_iter().map(|(_, r)| r).collect();
            Outcome::ok(
                json!({"command": "snapshots list", "environment": ctx.env.name, "snapshots": all.iter().map(summary).collect::<Vec<_>>(), "restore_points": points.iter().map(RestorePoint::summary).collect::<Vec<_>>()}),
                if rows.is_empty() {
                    "no snapshots\n".into()
                } else {
                    table(&HEADERS, &rows)
                },
            )
        }
        Err(e) => Outcome::failed(e),
    }
}

pub async fn verify(ctx: &Context, id: Option<String>, all: bool) -> Outcome {
    let result = async {
        if id.is_none() && !all {
            return Err(Error::usage("name a snapshot id or pass --all"));
        }
        if let Some(id) = &id {
            snapshot::validate_id(id)?;
        }
        let storage = storage::open(&ctx.env).await?;
        let mut found = Vec::new();
        let mut rejected = Vec::new();
        for service in ctx.services()? {
            let listing =
                snapshot::scan_service(storage.as_ref(), &ctx.env.name, &service.name).await?;
            found.extend(listing.found);
            rejected.extend(listing.rejected);
        }
        // A tampered manifest is a failed verification, not a missing snapshot.
        let wanted = |base: &str| all || id.as_deref() == base.rsplit('/').next();
        if let Some((_, e)) = rejected.into_iter().find(|(base, _)| wanted(base)) {
            return Err(e);
        }
        let chosen: Vec<&Found> = found.iter().filter(|f| wanted(&f.base)).collect();
        if chosen.is_empty() {
            return Err(Error::usage_hint(
                format!(
                    "no complete snapshot {} in environment {}",
                    id.clone().unwrap_or_default(),
                    ctx.env.name
                ),
                "see `valero-db snapshots list`",
            ));
        }
        let mut verified = Vec::new();
        for f in chosen {
            snapshot::verify(storage.as_ref(), f).await?;
            verified.push(f.manifest.id.clone());
        }
        Ok(verified)
    }
    .await;
    match result {
        Ok(v) => Outcome::ok(
            json!({"command": "snapshots verify", "verified": v}),
            v.iter()
                .map(|id| format!("{id}: every object verified\n"))
                .collect(),
        ),
        Err(e) => Outcome::failed(e),
    }
}

/// What `prune` removes (or would remove) and keeps.
struct Pruned {
    removed: Vec<String>,
    kept: Vec<String>,
    points_removed: Vec<String>,
    points_kept: Vec<String>,
    leftovers: Vec<String>,
    segments: Vec<String>,
}

impl Pruned {
    fn outcome(&self, dry_run: bool) -> Outcome {
        let verb = if dry_run { "would remove" } else { "removed" };
        let mut human = String::new();
        for id in &self.removed {
            human.push_str(&format!("{verb} {id}\n"));
        }
        for base in &self.leftovers {
            human.push_str(&format!("{verb} incomplete leftover {base}\n"));
        }
        if !self.segments.is_empty() {
            human.push_str(&format!(
                "{verb} {} capture segment(s) older than every kept snapshot\n",
                self.segments.len()
            ));
        }
        for id in &self.points_removed {
            human.push_str(&format!("{verb} restore point {id}\n"));
        }
        human.push_str(&format!("kept {} snapshot(s)", self.kept.len()));
        if !self.points_kept.is_empty() {
            human.push_str(&format!(
                " and {} restore point(s) with the snapshots and captured changes they replay",
                self.points_kept.len()
            ));
        }
        human.push('\n');
        Outcome::ok(
            json!({"command": "snapshots prune", "dry_run": dry_run, "removed": self.removed, "kept": self.kept, "restore_points_removed": self.points_removed, "restore_points_kept": self.points_kept, "leftovers_removed": self.leftovers, "capture_segments_removed": self.segments}),
            human,
        )
    }
}

/// `snapshots prune`: works out what goes, shows it and asks, then removes
/// it service by service under the lock.
pub async fn prune(
    ctx: &Context,
    keep_last: usize,
    keep_within: Option<Duration>,
    dry_run: bool,
    yes: bool,
) -> Outcome {
    let plan = match prune_pass(ctx, keep_last, keep_within, true).await {
        Ok(p) => p,
        Err(e) => return Outcome::failed(e),
    };
    if dry_run {
        return plan.outcome(true);
    }
    let shown = plan.outcome(true);
    if let Err(e) = confirm_plan(ctx, "prune snapshots", &shown.human, yes) {
        return shown.with_error(Some(e));
    }
    match prune_pass(ctx, keep_last, keep_within, false).await {
        Ok(done) => done.outcome(false),
        Err(e) => Outcome::failed(e),
    }
}

async fn prune_pass(
    ctx: &Context,
    keep_last: usize,
    keep_within: Option<Duration>,
    dry_run: bool,
) -> Result<Pruned> {
    let storage = ctx.storage().await?;
    let mut pruned = Pruned {
        removed: Vec::new(),
        kept: Vec::new(),
        points_removed: Vec::new(),
        points_kept: Vec::new(),
        leftovers: Vec::new(),
        segments: Vec::new(),
    };
    for service in ctx.services()? {
        let mut locked = LockedService::open(&service, Vec::new(), ctx.waits()).await?;
        let r = prune_service(
            ctx,
            storage.as_ref(),
            &service.name,
            keep_last,
            keep_within,
            dry_run,
            &mut pruned,
        )
        .await;
        locked.release().await;
        r?;
    }
    Ok(pruned)
}

async fn prune_service(
    ctx: &Context,
    storage: &dyn Storage,
    service: &str,
    keep_last: usize,
    keep_within: Option<Duration>,
    dry_run: bool,
    pruned: &mut Pruned,
) -> Result<()> {
    let env = &ctx.env.name;
    let (found, incomplete) = snapshot::list_service(storage, env, service).await?;
    let now = chrono::Utc::now();
    let mut keep = retention::keep(&found, keep_last, keep_within, now);
    // Restore points are kept by the same rules; a kept one keeps its base
    // snapshot (and so the captured changes after it).
    let points = restore_point::list(storage, env, service).await?;
    let times: Vec<_> = points.iter().map(|p| p.at).collect();
    let keep_points = retention::keep_times(&times, keep_last, keep_within, now);
    for (p, k) in points.iter().zip(&keep_points) {
        if !k {
            pruned.points_removed.push(p.id.clone());
            if !dry_run {
                restore_point::delete(storage, p).await?;
            }
            continue;
        }
        pruned.points_kept.push(p.id.clone());
        for (f, kf) in found.iter().zip(keep.iter_mut()) {
            *kf |= f.manifest.id == p.base_snapshot;
        }
    }
    let segments = prune_segments(storage, env, service, &found, &keep, dry_run).await?;
    pruned.segments.extend(segments);
    for (f, k) in found.iter().zip(keep) {
        if k {
            pruned.kept.push(f.manifest.id.clone());
            continue;
        }
        pruned.removed.push(f.manifest.id.clone());
        if !dry_run {
            delete_snapshot(storage, &f.base).await?;
        }
    }
    // Under the lock no snapshot is running: folders without a manifest
    // are leftovers of interrupted ones.
    for base in incomplete {
        pruned.leftovers.push(base.clone());
        if !dry_run {
            delete_snapshot(storage, &base).await?;
        }
    }
    Ok(())
}

/// Captured changes are needed only from the oldest kept snapshot on:
/// segments that end before its position can never be replayed. Every
/// segment a restore to any time in the retention window needs stays.
async fn prune_segments(
    storage: &dyn Storage,
    env: &str,
    service: &str,
    found: &[Found],
    keep: &[bool],
    dry_run: bool,
) -> Result<Vec<String>> {
    let from = |f: &Found, kind: EngineKind| {
        crate::capture::snapshot_position(f.manifest.engine(kind)?)
            .ok()
            .flatten()
    };
    let kept: Vec<&Found> = found
        .iter()
        .zip(keep)
        .filter(|(_, k)| **k)
        .map(|(f, _)| f)
        .collect();
    let mut removed = Vec::new();
    for engine in EngineKind::all() {
        // Every kept snapshot must say where it stands, else keep everything.
        let Some(oldest) = kept
            .iter()
            .map(|f| from(f, engine))
            .collect::<Option<Vec<u64>>>()
            .and_then(|v| v.into_iter().min())
        else {
            continue;
        };
        let listing = crate::capture::list(storage, env, service, engine).await?;
        let mut going = Vec::new();
        for (base, seg) in &listing.segments {
            let end = crate::capture::parse_lsn(&seg.end)?;
            if end <= oldest {
                going.push((base.clone(), end));
            }
        }
        let Some(until) = going.iter().map(|(_, end)| *end).max() else {
            continue;
        };
        removed.extend(going.iter().map(|(base, _)| base.clone()));
        if dry_run {
            continue;
        }
        // Recorded first, so the next capture pass and restores go on from
        // the first segment left instead of taking the removed ones for a
        // gap (also when the prune is interrupted half-way).
        let folder = crate::capture::folder(env, service, engine);
        crate::capture::write_pruned(storage, &folder, until, listing.pruned_until).await?;
        for (base, _) in &going {
            storage
                .delete(&format!("{base}/{}", crate::capture::SEGMENT_MANIFEST))
                .await?;
            for o in storage.list(&format!("{base}/")).await? {
                storage.delete(&o.key).await?;
            }
        }
    }
    Ok(removed)
}

/// Deletes the manifest first, so a half-deleted snapshot is never complete.
async fn delete_snapshot(storage: &dyn Storage, base: &str) -> Result<()> {
    storage.delete(&format!("{base}/{MANIFEST}")).await?;
    for o in storage.list(&format!("{base}/")).await? {
        storage.delete(&o.key).await?;
    }
    Ok(())
}
