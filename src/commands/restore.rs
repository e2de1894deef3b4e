//! `restore --timestamp T | --snapshot ID [--from-env E] [--dry-run] [--yes]`:
//! choose a snapshot per service, verify every object of every chosen
//! snapshot, confirm, snapshot the current state (`pre-restore`), then load
//! each service atomically.

use std::collections::BTreeMap;
use std::time::Instant;
use tracing::Instrument;

use serde_json::{json, Value};

use crate::capture::ReplayPlan;
use crate::cli::RestoreArgs;
use crate::config::{EngineKind, Service};
use crate::context::{confirm, Context};
use crate::error::{Error, PartialCommit, Result};
use crate::mask::Masking;
use crate::output::Outcome;
use crate::restore::{
    describe_age, masking_for, parse_timestamp, select_at, Conduct, LiveSessions, Privileges,
    RestoreStats,
};
use crate::restore_point::{self, is_restore_point_id, RestorePoint};
use crate::service::session::LockedService;
use crate::service::take::{take_service, Request};
use crate::snapshot::{self, Found};
use crate::storage::{self, Storage};
use crate::units::human_bytes;

struct Choice {
    service: Service,
    found: Found,
    /// The restore point this restore returns to (its base is `found`).
    point: Option<RestorePoint>,
    /// Every restore point of the service (a later restore to a time must
    /// not cross one).
    points: Vec<RestorePoint>,
    note: String,
    /// Captured changes to replay up to the requested time, per engine.
    replays: BTreeMap<EngineKind, ReplayPlan>,
    /// What a refresh from another environment masks on the way in.
    masking: Option<Masking>,
}

pub async fn run(ctx: &Context, args: RestoreArgs) -> Outcome {
    let (report, human, error) = run_restore(ctx, &args).await;
    Outcome::ok(report, human).with_error(error)
}

/// The restore path shared by `restore` and deploy's rollback.
pub async fn run_restore(ctx: &Context, args: &RestoreArgs) -> (Value, String, Option<Error>) {
    let mut report = json!({"command": "restore", "environment": ctx.env.name, "dry_run": args.dry_run, "services": []});
    let mut human = String::new();
    let result = restore(ctx, args, &mut report, &mut human).await;
    (report, human, result.err())
}

async fn restore(
    ctx: &Context,
    args: &RestoreArgs,
    report: &mut Value,
    human: &mut String,
) -> Result<()> {
    let at = args.timestamp.as_deref().map(parse_timestamp).transpose()?;
    for id in args.snapshot.iter().chain(&args.restore_point) {
        snapshot::validate_id(id)?;
    }
    let source_env = match &args.from_env {
        Some(name) => ctx.config.environment(name)?,
        None => ctx.env.clone(),
    };
    let mut services = ctx.services()?;
    if let Some(map) = &args.per_service {
        services.retain(|s| map.contains_key(&s.name));
    }
    let source = storage::open(&source_env).await?;
    source.check().await?;

    // Choose, plan the replays and verify everything, changing nothing.
    let mut maskings = masking_for(&ctx.env, &source_env, &services, args.no_mask)?;
    let mut choices = choose(source.as_ref(), &source_env.name, services, args, at).await?;
    for c in &mut choices {
        c.masking = maskings.remove(&c.service.name);
    }
    for c in &mut choices {
        c.replays = match (&c.point, at) {
            (Some(point), _) => plan_point(source.as_ref(), &source_env.name, c, point).await?,
            (None, Some(t)) if !args.snapshot_only => {
                no_change_between(c, t)?;
                plan_replays(source.as_ref(), &source_env.name, c, t).await?
            }
            (None, _) => BTreeMap::new(),
        };
    }
    verify_choices(source.as_ref(), &choices).await?;
    for c in &choices {
        describe_choice(c, &source_env.name, report, human);
    }
    if args.dry_run {
        return Ok(());
    }
    confirm(ctx, &restore_action(&choices, &source_env.name), args.yes)?;

    let target = ctx.storage().await?;
    for (i, c) in choices.iter().enumerate() {
        let started = Instant::now();
        let mut locked = LockedService::open(&c.service, Vec::new(), ctx.waits()).await?;
        let r = restore_service(ctx, target.as_ref(), source.as_ref(), &mut locked, c, args).await;
        locked.release().await;
        let (pre, stats) = r?;
        describe_restored(c, &pre, &stats, started, human);
        if let Some(entry) = report["services"].get_mut(i) {
            entry["pre_restore_snapshot"] = json!(pre);
            entry["restored"] = json!(stats);
            entry["duration_ms"] = json!(started.elapsed().as_millis() as u64);
        }
    }
    Ok(())
}

/// Picks the snapshot of every selected service: by id (`--snapshot`, or
/// deploy's pre-deploy snapshots) or the newest at or before `at`. A
/// service without one ends the restore before anything is touched.
async fn choose(
    source: &dyn Storage,
    source_env: &str,
    services: Vec<Service>,
    args: &RestoreArgs,
    at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<Choice>> {
    let mut choices = Vec::new();
    let mut missing = Vec::new();
    for service in services {
        let (found, _) = snapshot::list_service(source, source_env, &service.name).await?;
        let points = restore_point::list(source, source_env, &service.name).await?;
        let by_service = args.per_service.as_ref().and_then(|m| m.get(&service.name));
        let by_id = by_service
            .or(args.snapshot.as_ref())
            .or(args.restore_point.as_ref());
        let chosen = match (by_id, at) {
            (Some(id), _) if is_restore_point_id(id) => {
                at_point(&service.name, id, &points, &found)?
            }
            (Some(id), _) => found
                .into_iter()
                .find(|f| &f.manifest.id == id)
                .map(|f| (f, "chosen by id".to_string(), None)),
            // `--timestamp` at a restore point's exact time means that point.
            (None, Some(t)) => match points
                .iter()
                .find(|p| crate::restore_point::same_instant(p.at, t))
            {
                Some(p) => at_point(&service.name, &p.id, &points, &found)?,
                None => select_at(&found, t).cloned().map(|f| {
                    let age = describe_age(t - f.manifest.consistent_at);
                    (f, age, None)
                }),
            },
            (None, None) => {
                return Err(Error::usage(
                    "restore needs --timestamp, --snapshot or --restore-point",
                ))
            }
        };
        match chosen {
            Some((found, note, point)) => choices.push(Choice {
                service,
                found,
                point,
                points,
                note,
                replays: BTreeMap::new(),
                masking: None,
            }),
            None => missing.push(service.name.clone()),
        }
    }
    if missing.is_empty() {
        return Ok(choices);
    }
    if args.per_service.is_some() {
        return Err(Error::integrity(
            format!(
                "the pre-deploy snapshots of {} are gone",
                missing.join(", ")
            ),
            Some("see `valero-db snapshots list`".into()),
        ));
    }
    if let Some(id) = &args.restore_point {
        if !choices.is_empty() {
            return Ok(choices);
        }
        return Err(Error::usage_hint(
            format!("no restore point {id} of the selected services in environment {source_env}"),
            "see `valero-db snapshots list`",
        ));
    }
    match &args.snapshot {
        Some(_) if !choices.is_empty() => Ok(choices),
        Some(id) => {
            if let Some(e) = snapshot::rejection(source, source_env, &missing, id).await? {
                return Err(e);
            }
            Err(Error::usage_hint(
                format!(
                    "no complete snapshot {id} of the selected services in environment {source_env}"
                ),
                "see `valero-db snapshots list`",
            ))
        }
        None => Err(Error::NoSnapshot {
            message: format!(
                "no snapshot at or before {} for: {}; nothing was changed",
                args.timestamp.as_deref().unwrap_or("?"),
                missing.join(", ")
            ),
        }),
    }
}

/// A restore point of a service by id and its base snapshot (None: no
/// such point). A point whose base snapshot is gone is an integrity error.
fn at_point(
    service: &str,
    id: &str,
    points: &[RestorePoint],
    found: &[Found],
) -> Result<Option<(Found, String, Option<RestorePoint>)>> {
    let Some(point) = points.iter().find(|p| p.id == id) else {
        return Ok(None);
    };
    let Some(base) = found.iter().find(|f| f.manifest.id == point.base_snapshot) else {
        return Err(Error::integrity(
            format!(
                "restore point {id} of service {service} needs snapshot {}, which is gone",
                point.base_snapshot
            ),
            Some("pick another restore point or snapshot with `valero-db snapshots list`".into()),
        ));
    };
    let note = format!(
        "restore point {id} taken {} ({})",
        point.at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
        point.reason
    );
    Ok(Some((base.clone(), note, Some(point.clone()))))
}

/// Captured changes are not replayed across a schema change: a restore
/// point between the chosen snapshot and `at` marks one whose
/// post-change snapshot does not exist (yet), so the restore is refused.
fn no_change_between(c: &Choice, at: chrono::DateTime<chrono::Utc>) -> Result<()> {
    let Some(p) = c
        .points
        .iter()
        .find(|p| p.at > c.found.manifest.consistent_at && p.at < at)
    else {
        return Ok(());
    };
    Err(Error::integrity(
        format!(
            "service {}: a schema change began at {} (restore point {}) and no snapshot was taken after it yet; captured changes are not replayed across a schema change",
            c.service.name,
            p.at.format("%Y-%m-%dT%H:%M:%S%.6fZ"),
            p.id
        ),
        Some(format!(
            "restore the state before the change with `--restore-point {}`, or a time before it; for later times take a snapshot (`valero-db snapshot -s {}`) and use times after it",
            p.id, c.service.name
        )),
    ))
}

/// The captured changes each engine replays up to a restore point's
/// positions, with the sequence values read after its flush.
async fn plan_point(
    source: &dyn Storage,
    env: &str,
    c: &Choice,
    point: &RestorePoint,
) -> Result<BTreeMap<EngineKind, ReplayPlan>> {
    let mut replays = BTreeMap::new();
    for kind in c.service.engines() {
        let (Some(info), Some(pe)) = (c.found.manifest.engine(kind), point.engine(kind)) else {
            return Err(Error::integrity(
                format!(
                    "restore point {} of service {} has no {kind} part",
                    point.id, c.service.name
                ),
                None,
            ));
        };
        let from = crate::capture::snapshot_position(info)?.unwrap_or(0);
        let listing = crate::capture::list(source, env, &c.service.name, kind).await?;
        let plan = pe
            .replay_plan(&listing, from, &point.id)
            .map_err(|e| in_service(e, &c.service.name, kind))?;
        replays.insert(kind, plan);
    }
    Ok(replays)
}

/// The right key for every encrypted snapshot, then every object of every
/// chosen snapshot and segment, and a part for every engine the service
/// has — all before the first change.
async fn verify_choices(source: &dyn Storage, choices: &[Choice]) -> Result<()> {
    for c in choices {
        c.found.check_key(source.key()?)?;
    }
    let verifying = std::time::Instant::now();
    for c in choices {
        snapshot::verify(source, &c.found).await?;
        for (base, seg) in c.replays.values().flat_map(|p| &p.segments) {
            snapshot::verify_object(source, base, &seg.object).await?;
        }
        tracing::debug!(
            "{}: every object verified after {:.2?}",
            c.service.name,
            verifying.elapsed()
        );
        for kind in c.service.engines() {
            if c.found.manifest.engine(kind).is_none() {
                return Err(Error::usage(format!(
                    "snapshot {} of service {} has no {kind} part, but the service has a {kind} database",
                    c.found.manifest.id, c.service.name
                )));
            }
        }
    }
    Ok(())
}

/// The plan of one service, for people and for the report.
fn describe_choice(c: &Choice, source_env: &str, report: &mut Value, human: &mut String) {
    let m = &c.found.manifest;
    let versions = m
        .engines
        .iter()
        .map(|e| {
            let v = e.schema_version.map(|v| v.to_string());
            format!("{}={}", e.engine, v.unwrap_or_else(|| "-".into()))
        })
        .collect::<Vec<_>>()
        .join(" ");
    human.push_str(&format!(
        "{}: snapshot {} from {source_env} consistent at {} ({}), versions {versions}, {} — replaces the current state of {}\n",
        c.service.name,
        m.id,
        m.consistent_at.format("%Y-%m-%dT%H:%M:%SZ"),
        c.note,
        human_bytes(m.total_size()),
        targets(&c.service),
    ));
    let masked: serde_json::Map<String, serde_json::Value> = c
        .service
        .engines()
        .into_iter()
        .map(|e| {
            let on = c
                .masking
                .as_ref()
                .is_some_and(|m| m.rules.has_rules(e) || m.strict);
            (e.name().to_string(), json!(on))
        })
        .collect();
    if let Some(m) = &c.masking {
        let rules = m.rules.len();
        let unmasked: Vec<&str> = masked
            .iter()
            .filter(|(_, on)| **on == json!(false))
            .map(|(e, _)| e.as_str())
            .collect();
        human.push_str(&format!(
            "{}: masked on the way in by {rules} rule{}{}{}\n",
            c.service.name,
            if rules == 1 { "" } else { "s" },
            if m.strict { " (strict)" } else { "" },
            if unmasked.is_empty() {
                String::new()
            } else {
                format!("; {} copied unmasked (no rules)", unmasked.join(", "))
            }
        ));
    }
    for (engine, plan) in &c.replays {
        let to = match &c.point {
            Some(p) => format!("restore point {}", p.id),
            None => plan.at.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        };
        human.push_str(&format!(
            "{} ({engine}): then replays captured changes up to {to} ({} segment{})\n",
            c.service.name,
            plan.segments.len(),
            if plan.segments.len() == 1 { "" } else { "s" }
        ));
    }
    push_service(
        report,
        json!({
            "service": c.service.name,
            "snapshot": crate::commands::snapshot::summary(&c.found),
            "selection": c.note,
            "restore_point": c.point.as_ref().map(|p| p.summary()),
            "masked": c.masking.is_some() && masked.values().all(|on| *on == json!(true)),
            "masked_engines": masked,
            "replaces": targets(&c.service),
        }),
    );
}

/// What the operator confirms: services, snapshots, source environment.
fn restore_action(choices: &[Choice], source_env: &str) -> String {
    let names: Vec<&str> = choices.iter().map(|c| c.service.name.as_str()).collect();
    let ids: Vec<&str> = choices
        .iter()
        .map(|c| c.found.manifest.id.as_str())
        .collect();
    format!(
        "restore {} ({}) from {source_env}",
        names.join(", "),
        ids.join(", ")
    )
}

/// What a finished restore of one service did, and how to undo it.
fn describe_restored(
    c: &Choice,
    pre: &str,
    stats: &[RestoreStats],
    started: Instant,
    human: &mut String,
) {
    human.push_str(&format!(
        "{}: restored {} ({} rows/documents, {}) in {:.1}s; undo with `valero-db restore -s {} --snapshot {}`\n",
        c.service.name,
        c.found.manifest.id,
        stats.iter().map(|s| s.rows).sum::<u64>(),
        human_bytes(stats.iter().map(|s| s.bytes).sum()),
        started.elapsed().as_secs_f64(),
        c.service.name,
        pre
    ));
    for ended in stats.iter().flat_map(|s| &s.terminated_sessions) {
        human.push_str(&format!(
            "{}: ended the session that held a lock: {ended}\n",
            c.service.name
        ));
    }
    for r in stats.iter().filter_map(|s| s.replayed.as_ref()) {
        human.push_str(&format!(
            "{}: replayed {} transactions ({} changes); the state is exactly as of {}\n",
            c.service.name,
            r.transactions,
            r.changes,
            r.reached
                .map(|t| format!("the commit at {}", t.format("%Y-%m-%dT%H:%M:%S%.6fZ")))
                .unwrap_or_else(|| "the snapshot (no change to replay)".into())
        ));
    }
}

/// The captured changes each engine of a chosen snapshot replays up to
/// `at`; a gap is an integrity error naming the service and engine.
async fn plan_replays(
    source: &dyn Storage,
    source_env: &str,
    c: &Choice,
    at: chrono::DateTime<chrono::Utc>,
) -> Result<BTreeMap<EngineKind, ReplayPlan>> {
    let mut replays = BTreeMap::new();
    for kind in c.service.engines() {
        let Some(info) = c.found.manifest.engine(kind) else {
            continue;
        };
        // A PostgreSQL snapshot from before positions were recorded starts
        // at the beginning of every stream; MongoDB's cannot be placed.
        let from = match (crate::capture::snapshot_position(info)?, kind) {
            (Some(p), _) => p,
            (None, EngineKind::Postgres) => 0,
            (None, EngineKind::Mongodb) => continue,
        };
        let listing = crate::capture::list(source, source_env, &c.service.name, kind).await?;
        let plan = crate::capture::plan(&listing, from, &c.found.manifest.id, at)
            .map_err(|e| in_service(e, &c.service.name, kind))?;
        if let Some(plan) = plan {
            replays.insert(kind, plan);
        }
    }
    Ok(replays)
}

/// Names the service and engine in an integrity error about captured changes.
fn in_service(e: Error, service: &str, engine: EngineKind) -> Error {
    match e {
        Error::Integrity { message, hint } => Error::Integrity {
            message: format!("service {service} ({engine}): {message}"),
            hint,
        },
        other => other,
    }
}

fn targets(s: &Service) -> String {
    let mut out = Vec::new();
    if let Some(pg) = &s.postgres {
        out.push(format!("PostgreSQL schema {}", pg.schema));
    }
    if let Some(m) = &s.mongodb {
        out.push(format!("MongoDB database {}", m.database));
    }
    out.join(" and ")
}

fn push_service(report: &mut Value, entry: Value) {
    if let Some(a) = report["services"].as_array_mut() {
        a.push(entry);
    }
}

/// Pre-restore snapshot, then both phases on every engine. PostgreSQL
/// commits first (its commit can still fail, e.g. on deferred
/// constraints); MongoDB's commit point comes after, and recovery always
/// completes it.
#[tracing::instrument(skip_all, fields(service = %c.service.name, snapshot = %c.found.manifest.id))]
async fn restore_service(
    ctx: &Context,
    target: &dyn Storage,
    source: &dyn Storage,
    locked: &mut LockedService,
    c: &Choice,
    args: &RestoreArgs,
) -> Result<(String, Vec<RestoreStats>)> {
    let req = Request {
        environment: &ctx.env.name,
        reason: "pre-restore",
        release: None,
        label: Some(format!("before restoring {}", c.found.manifest.id)),
    };
    let pre = take_service(target, &c.service.name, &mut locked.engines, &req).await?;
    let conduct = Conduct {
        live: LiveSessions {
            wait: ctx.global.lock_timeout,
            terminate: args.terminate_sessions,
        },
        privileges: Privileges {
            skip: args.skip_privileges,
            role_map: ctx.env.role_map.clone(),
        },
        masking: c.masking.clone(),
    };
    let mut stats = Vec::new();
    for i in 0..locked.engines.len() {
        let kind = locked.engines[i].engine.kind();
        let plan = c.replays.get(&kind);
        match locked.engines[i]
            .engine
            .restore_prepare(source, &c.found, plan, &conduct)
            .instrument(tracing::info_span!("engine", engine = %kind))
            .await
        {
            Ok(s) => stats.push(s),
            Err(e) => {
                for slot in locked.engines[..i].iter_mut() {
                    slot.engine.restore_abort().await;
                }
                return Err(e);
            }
        }
    }
    let mut order: Vec<usize> = (0..locked.engines.len()).collect();
    order.sort_by_key(|i| locked.engines[*i].engine.kind() != crate::config::EngineKind::Postgres);
    let mut committed = Vec::new();
    for i in order {
        let kind = locked.engines[i].engine.kind();
        if let Err(e) = locked.engines[i].engine.restore_commit().await {
            if committed.is_empty() {
                for slot in locked.engines.iter_mut() {
                    slot.engine.restore_abort().await;
                }
                return Err(e);
            }
            return Err(Error::PartialRestore {
                service: c.service.name.clone(),
                detail: Box::new(PartialCommit {
                    committed: committed.join(", "),
                    failed: kind.to_string(),
                    snapshot: c.found.manifest.id.clone(),
                    pre_restore: pre.manifest.id.clone(),
                }),
                source: Box::new(e),
            });
        }
        committed.push(kind.to_string());
    }
    Ok((pre.manifest.id, stats))
}
