//! `restore --timestamp T | --snapshot ID [--from-env E] [--dry-run] [--yes]`:
//! choose a snapshot per service, verify every object of every chosen
//! snapshot, confirm, snapshot the current state (`pre-restore`), then load
//! each service atomically.

use std::time::Instant;

use serde_json::{json, Value};

use crate::commands::{confirm, Context};
use crate::config::Service;
use crate::error::{Error, Result};
use crate::migrate::runner::LockedService;
use crate::output::Outcome;
use crate::restore::{describe_age, parse_timestamp, select_at, RestoreStats};
use crate::snapshot::take::{human_bytes, take_service, Request};
use crate::snapshot::{self, Found};
use crate::storage::{self, Storage};

pub struct RestoreArgs {
    /// Per service, a snapshot id (deploy's rollback); limits the services.
    pub per_service: Option<std::collections::BTreeMap<String, String>>,
    pub timestamp: Option<String>,
    pub snapshot: Option<String>,
    pub from_env: Option<String>,
    /// With a timestamp: the snapshot alone, no replay of captured changes.
    pub snapshot_only: bool,
    pub dry_run: bool,
    pub yes: bool,
}

struct Choice {
    service: Service,
    found: Found,
    note: String,
    /// Captured PostgreSQL changes to replay up to the requested time.
    replay: Option<crate::capture::ReplayPlan>,
    /// Captured MongoDB change events to replay up to the requested time.
    mongo_replay: Option<crate::capture::ReplayPlan>,
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
    if let Some(id) = &args.snapshot {
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

    // Choose, per service, changing nothing.
    let mut choices = Vec::new();
    let mut missing = Vec::new();
    for service in services {
        let (found, _) =
            snapshot::list_service(source.as_ref(), &source_env.name, &service.name).await?;
        let by_service = args.per_service.as_ref().and_then(|m| m.get(&service.name));
        let chosen = match (by_service.or(args.snapshot.as_ref()), at) {
            (Some(id), _) => found
                .into_iter()
                .find(|f| &f.manifest.id == id)
                .map(|f| (f, "chosen by id".to_string())),
            (None, Some(t)) => select_at(&found, t).cloned().map(|f| {
                let age = describe_age(t - f.manifest.consistent_at);
                (f, age)
            }),
            (None, None) => return Err(Error::usage("restore needs --timestamp or --snapshot")),
        };
        match chosen {
            Some((found, note)) => choices.push(Choice {
                service,
                found,
                note,
                replay: None,
                mongo_replay: None,
            }),
            None => missing.push(service.name.clone()),
        }
    }
    if args.per_service.is_some() && !missing.is_empty() {
        return Err(Error::integrity(
            format!(
                "the pre-deploy snapshots of {} are gone",
                missing.join(", ")
            ),
            Some("see `valero-db snapshots list`".into()),
        ));
    }
    if let Some(id) = &args.snapshot {
        if choices.is_empty() {
            if let Some(e) =
                snapshot::rejection(source.as_ref(), &source_env.name, &missing, id).await?
            {
                return Err(e);
            }
            return Err(Error::usage_hint(
                format!(
                    "no complete snapshot {id} of the selected services in environment {}",
                    source_env.name
                ),
                "see `valero-db snapshots list`",
            ));
        }
    } else if !missing.is_empty() {
        return Err(Error::NoSnapshot {
            message: format!(
                "no snapshot at or before {} for: {}; nothing was changed",
                args.timestamp.as_deref().unwrap_or("?"),
                missing.join(", ")
            ),
        });
    }

    // Captured changes from each snapshot up to the time: gaps are found
    // here, before anything is touched.
    if let (Some(t), false) = (at, args.snapshot_only) {
        for c in &mut choices {
            let engines = &c.found.manifest.engines;
            let pg_from = engines
                .iter()
                .find(|e| e.engine == "postgres")
                .filter(|_| c.service.postgres.is_some())
                .map(|info| {
                    crate::capture::postgres::snapshot_position(info).map(|v| v.unwrap_or(0))
                })
                .transpose()?;
            let mongo_from = engines
                .iter()
                .find(|e| e.engine == "mongodb")
                .filter(|_| c.service.mongodb.is_some())
                .and_then(crate::capture::mongodb::snapshot_position);
            for (engine, from) in [("postgres", pg_from), ("mongodb", mongo_from)] {
                let Some(from) = from else { continue };
                let listing = crate::capture::list(
                    source.as_ref(),
                    &source_env.name,
                    &c.service.name,
                    engine,
                )
                .await?;
                let plan = crate::capture::plan(&listing, from, &c.found.manifest.id, t)
                    .map_err(|e| in_service(e, &c.service.name, engine))?;
                match engine {
                    "postgres" => c.replay = plan,
                    _ => c.mongo_replay = plan,
                }
            }
        }
    }

    // The right key for every encrypted snapshot, then every object of
    // every chosen snapshot, before the first change.
    for c in &choices {
        crate::crypto::check_key(&c.found.manifest, source.key()?, &c.found.base)?;
    }
    let verifying = std::time::Instant::now();
    for c in &choices {
        snapshot::verify(source.as_ref(), &c.found).await?;
        for (base, seg) in c
            .replay
            .iter()
            .chain(&c.mongo_replay)
            .flat_map(|p| &p.segments)
        {
            snapshot::verify_object(source.as_ref(), base, &seg.object).await?;
        }
        tracing::debug!(
            "{}: every object verified after {:.2?}",
            c.service.name,
            verifying.elapsed()
        );
        let engines: Vec<&str> = c
            .found
            .manifest
            .engines
            .iter()
            .map(|e| e.engine.as_str())
            .collect();
        for (configured, name) in [
            (c.service.postgres.is_some(), "postgres"),
            (c.service.mongodb.is_some(), "mongodb"),
        ] {
            if configured && !engines.contains(&name) {
                return Err(Error::usage(format!(
                    "snapshot {} of service {} has no {name} part, but the service has a {name} database",
                    c.found.manifest.id, c.service.name
                )));
            }
        }
    }

    for c in &choices {
        let m = &c.found.manifest;
        human.push_str(&format!(
            "{}: snapshot {} from {} consistent at {} ({}), versions {}, {} — replaces the current state of {}\n",
            c.service.name,
            m.id,
            source_env.name,
            m.consistent_at.format("%Y-%m-%dT%H:%M:%SZ"),
            c.note,
            m.engines.iter().map(|e| format!("{}={}", e.engine, e.schema_version.map(|v| v.to_string()).unwrap_or_else(|| "-".into()))).collect::<Vec<_>>().join(" "),
            human_bytes(m.total_size()),
            targets(&c.service),
        ));
        for (engine, plan) in [("PostgreSQL", &c.replay), ("MongoDB", &c.mongo_replay)] {
            let Some(plan) = plan else { continue };
            human.push_str(&format!(
                "{} ({engine}): then replays captured changes up to {} ({} segment{})\n",
                c.service.name,
                plan.at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
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
                "replaces": targets(&c.service),
            }),
        );
    }
    if args.dry_run {
        return Ok(());
    }
    let action = format!(
        "restore {} ({}) from {}",
        choices
            .iter()
            .map(|c| c.service.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        choices
            .iter()
            .map(|c| c.found.manifest.id.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        source_env.name
    );
    confirm(ctx, &action, args.yes)?;

    let target = storage::open(&ctx.env).await?;
    target.check().await?;
    for (i, c) in choices.iter().enumerate() {
        let started = Instant::now();
        let mut locked =
            LockedService::open(&c.service, Vec::new(), ctx.global.lock_timeout).await?;
        let r = restore_service(ctx, target.as_ref(), source.as_ref(), &mut locked, c).await;
        locked.release().await;
        let (pre, stats) = r?;
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
        if let Some(entry) = report["services"].get_mut(i) {
            entry["pre_restore_snapshot"] = json!(pre);
            entry["restored"] = json!(stats);
            entry["duration_ms"] = json!(started.elapsed().as_millis() as u64);
        }
    }
    Ok(())
}

/// Names the service and engine in an integrity error about captured changes.
fn in_service(e: Error, service: &str, engine: &str) -> Error {
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
async fn restore_service(
    ctx: &Context,
    target: &dyn Storage,
    source: &dyn Storage,
    locked: &mut LockedService,
    c: &Choice,
) -> Result<(String, Vec<RestoreStats>)> {
    let req = Request {
        environment: &ctx.env.name,
        reason: "pre-restore",
        release: None,
        label: Some(format!("before restoring {}", c.found.manifest.id)),
    };
    let pre = take_service(target, &c.service.name, &mut locked.slots, &req).await?;
    let mut stats = Vec::new();
    for i in 0..locked.slots.len() {
        let plan = match locked.slots[i].engine.kind() {
            crate::engine::EngineKind::Postgres => c.replay.as_ref(),
            crate::engine::EngineKind::Mongodb => c.mongo_replay.as_ref(),
        };
        match locked.slots[i]
            .engine
            .restore_prepare(source, &c.found, plan)
            .await
        {
            Ok(s) => stats.push(s),
            Err(e) => {
                for slot in locked.slots[..i].iter_mut() {
                    slot.engine.restore_abort().await;
                }
                return Err(e);
            }
        }
    }
    let mut order: Vec<usize> = (0..locked.slots.len()).collect();
    order.sort_by_key(|i| locked.slots[*i].engine.kind() != crate::engine::EngineKind::Postgres);
    let mut committed = Vec::new();
    for i in order {
        let kind = locked.slots[i].engine.kind();
        if let Err(e) = locked.slots[i].engine.restore_commit().await {
            if committed.is_empty() {
                for slot in locked.slots.iter_mut() {
                    slot.engine.restore_abort().await;
                }
                return Err(e);
            }
            return Err(Error::internal(format!(
                "service {}: {} was restored from {} but committing {kind} failed: {e}. Run the same restore again for -s {} to finish, or restore the pre-restore snapshot {} to undo",
                c.service.name,
                committed.join(", "),
                c.found.manifest.id,
                c.service.name,
                pre.manifest.id
            )));
        }
        committed.push(kind.to_string());
    }
    Ok((pre.manifest.id, stats))
}
