//! `migrate`, `rollback`, `baseline` and `repair`: every path goes through
//! the same runner, which always takes the service's locks.

use serde::Serialize;
use serde_json::json;
use tracing::Instrument;

use crate::cli::{MigrateArgs, RepairAs, RollbackArgs};
use crate::config::EngineKind;
use crate::config::Service;
use crate::context::{confirm, confirm_plan, Context};
use crate::deploy::Undo;
use crate::deploy::{self, DeployState, DeploymentRecord, OnFailure};
use crate::engine::{identity, RepairAction, RunMeta};
use crate::error::{Error, Result};
use crate::migrate::files::Migration;
use crate::migrate::plan::{plan_down, plan_up, PlanError, RollbackTargets};
use crate::output::Outcome;
use crate::restore_point::PointSummary;
use crate::service::restore_point::{self as point, Anchor};
use crate::service::session::{
    self as session, discover_service, ensure_consistent, inspect, LockedService, Step,
};
use crate::service::take::{take_service, Request};
use crate::snapshot::Summary;
use crate::storage::Storage;

#[derive(Debug, Serialize)]
pub struct EngineRun {
    pub service: String,
    pub engine: EngineKind,
    pub from_version: Option<u64>,
    pub to_version: Option<u64>,
    /// What was (or, with --dry-run, would be) applied or reverted.
    pub planned: Vec<u64>,
    pub steps: Vec<Step>,
    /// `lint`'s findings on the planned up files (migrate only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lint: Vec<crate::lint::Finding>,
}

/// Why a change started from a full snapshot instead of a restore point.
#[derive(Debug, Serialize)]
pub struct NoRestorePoint {
    pub service: String,
    pub reason: &'static str,
    pub detail: String,
}

/// What a run took before its changes: full snapshots, restore points,
/// and why a service got a full snapshot instead of a restore point.
#[derive(Default)]
pub struct Taken {
    pub snapshots: Vec<Summary>,
    pub restore_points: Vec<PointSummary>,
    pub no_restore_point: Vec<NoRestorePoint>,
}

impl Taken {
    fn record(&mut self, service: &str, anchor: &Anchor) {
        match anchor {
            Anchor::RestorePoint(p) => self.restore_points.push(p.summary()),
            Anchor::Snapshot { found, skipped } => {
                self.snapshots.push(found.summary());
                self.no_restore_point.push(NoRestorePoint {
                    service: service.to_string(),
                    reason: skipped.code(),
                    detail: skipped.to_string(),
                });
            }
        }
    }

    /// One line per anchor, for people.
    fn text(&self, reason: &str) -> String {
        let mut human = String::new();
        for p in &self.restore_points {
            human.push_str(&format!(
                "{}: {reason} restore point {} on snapshot {} (verified, {} ms)\n",
                p.service, p.id, p.base_snapshot, p.duration_ms
            ));
        }
        for s in &self.snapshots {
            human.push_str(&format!(
                "{}: {reason} snapshot {} (verified)\n",
                s.service, s.id
            ));
        }
        human
    }

    /// Into a command's JSON report.
    fn add_to(&self, o: &mut Outcome) {
        if let serde_json::Value::Object(m) = &mut o.report {
            m.insert("snapshots".into(), json!(self.snapshots));
            m.insert("restore_points".into(), json!(self.restore_points));
            m.insert("no_restore_point".into(), json!(self.no_restore_point));
        }
    }
}

type Discovered = Vec<(Service, Vec<(EngineKind, Vec<Migration>)>)>;

/// Reads every selected service's files first, so a bad file anywhere
/// stops the run before any database is touched.
fn discover_all(ctx: &Context) -> Result<Discovered> {
    let root = ctx.config.migrations_dir()?;
    ctx.services()?
        .into_iter()
        .map(|s| discover_service(&root, &s).map(|d| (s, d)))
        .collect()
}

fn plan_error(service: &str, engine: EngineKind, e: PlanError) -> Error {
    match e {
        PlanError::UnknownTarget(v) => Error::usage(format!(
            "service {service} ({engine}) has no migration with version {v}"
        )),
        PlanError::TargetBelowCurrent { target, current } => Error::usage_hint(
            format!("service {service} ({engine}) is already at version {current}, above --to {target}"),
            format!("use `valero-db rollback --to {target}` to go back"),
        ),
        PlanError::MissingDown(versions) => Error::usage_hint(
            format!(
                "service {service} ({engine}) cannot be rolled back: no down file for version(s) {}",
                versions.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
            ),
            "nothing was changed; add the down files, or restore a snapshot instead (`valero-db restore`)",
        ),
        PlanError::MissingFile(v) => Error::usage_hint(
            format!("service {service} ({engine}): applied version {v} has no migration file"),
            "nothing was changed; restore the file from version control, or restore a snapshot instead",
        ),
    }
}

/// `lint`'s findings on the files a run will apply; logged as warnings
/// (the dry run's report shows them too).
fn lint_planned(
    service: &str,
    engine: EngineKind,
    local: &[Migration],
    plan: &[u64],
) -> Vec<crate::lint::Finding> {
    let planned: Vec<&Migration> = local.iter().filter(|m| plan.contains(&m.version)).collect();
    let mut findings = crate::lint::lint(&planned);
    for f in findings.iter_mut() {
        f.file = format!("{service}/{engine}/{}", f.file);
        if f.counts() {
            tracing::warn!(
                "lint: {}:{} {} {}: {}",
                f.file,
                f.at,
                f.severity_name(),
                f.rule,
                f.message
            );
        }
    }
    findings
}

fn render(runs: &[EngineRun], dry_run: bool, verb: &str) -> String {
    let mut out = String::new();
    for r in runs {
        let from = r
            .from_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        let to = r
            .to_version
            .map(|v| v.to_string())
            .unwrap_or_else(|| "-".into());
        if r.planned.is_empty() {
            out.push_str(&format!(
                "{} {}: up to date at version {from}\n",
                r.service, r.engine
            ));
            continue;
        }
        if dry_run {
            out.push_str(&format!(
                "{} {}: would {verb} {} migration(s), {from} -> {to}\n",
                r.service,
                r.engine,
                r.planned.len()
            ));
            for v in &r.planned {
                out.push_str(&format!("  {verb} {v}\n"));
            }
            out.push_str(&crate::lint::render(&r.lint));
        } else {
            out.push_str(&format!("{} {}: {from} -> {to}\n", r.service, r.engine));
            for s in &r.steps {
                out.push_str(&format!("  {verb} {} ({} ms)\n", s.file, s.duration_ms));
            }
        }
    }
    out
}

fn outcome(
    ctx: &Context,
    command: &str,
    runs: Vec<EngineRun>,
    dry_run: bool,
    error: Option<Error>,
) -> Outcome {
    let verb = if command == "rollback" {
        "revert"
    } else {
        "apply"
    };
    let human = render(&runs, dry_run, verb);
    Outcome::ok(
        json!({
            "command": command,
            "environment": ctx.env.name,
            "dry_run": dry_run,
            "services": runs,
        }),
        human,
    )
    .with_error(error)
}

/// What a migrate run did: per engine, and the pre-migrate snapshots; a
/// dry run's notes (locks held by others, recovery pending).
#[derive(Default)]
pub struct MigrateResult {
    pub runs: Vec<EngineRun>,
    pub taken: Taken,
    pub notes: Vec<String>,
    pub error: Option<Error>,
}

pub async fn migrate(ctx: &Context, args: MigrateArgs) -> Outcome {
    let dry_run = args.dry_run;
    let r = run_migrate(ctx, args, None).await;
    migrate_outcome(ctx, r, dry_run)
}

/// The migrate path shared by `migrate`, `deploy` and `hook pre-deploy`;
/// the latter two keep their deployment record current through `journal`.
pub async fn run_migrate(
    ctx: &Context,
    args: MigrateArgs,
    mut journal: Option<&mut deploy::Journal<'_>>,
) -> MigrateResult {
    let failed = |e| MigrateResult {
        error: Some(e),
        ..MigrateResult::default()
    };
    if args.no_snapshot && !args.dry_run {
        if let Err(e) = confirm(ctx, "migrating without a pre-migrate snapshot", args.yes) {
            return failed(e);
        }
        tracing::warn!("--no-snapshot: migrating without a pre-migrate snapshot");
    }
    let discovered = match discover_all(ctx) {
        Ok(d) => d,
        Err(e) => return failed(e),
    };
    if let Some(to) = args.to {
        let known = discovered
            .iter()
            .any(|(_, d)| d.iter().any(|(_, ms)| ms.iter().any(|m| m.version == to)));
        if !known {
            return failed(Error::usage(format!(
                "--to {to}: no selected service has a migration with that version"
            )));
        }
    }
    let meta = RunMeta {
        applied_by: identity(),
        release: args.release.clone(),
    };
    // Storage must be usable before any service is touched.
    let storage = if args.dry_run || args.no_snapshot {
        None
    } else {
        match ctx.storage().await {
            Ok(s) => Some(s),
            Err(e) => return failed(e),
        }
    };
    let mut result = MigrateResult::default();
    for (service, local) in discovered {
        let run = Run {
            args: &args,
            meta: &meta,
            storage: storage.as_deref(),
            environment: &ctx.env.name,
            capture_wait: ctx.global.lock_timeout,
        };
        let journal = journal.as_deref_mut();
        if let Err(e) = migrate_service(ctx, &service, local, &run, journal, &mut result).await {
            result.error = Some(e);
            return result;
        }
    }
    result
}

/// One migrate run's settings: where the pre-migrate snapshot goes (None:
/// no snapshot, or a dry run).
struct Run<'a> {
    args: &'a MigrateArgs,
    meta: &'a RunMeta,
    storage: Option<&'a dyn Storage>,
    environment: &'a str,
    /// How long to wait for a running capture to ship up to now.
    capture_wait: std::time::Duration,
}

fn migrate_outcome(ctx: &Context, r: MigrateResult, dry_run: bool) -> Outcome {
    let mut o = outcome(ctx, "migrate", r.runs, dry_run, r.error);
    let human = r.taken.text("pre-migrate");
    o.human = human + &o.human + &notes_text(&r.notes);
    r.taken.add_to(&mut o);
    if let serde_json::Value::Object(m) = &mut o.report {
        m.insert("notes".into(), json!(r.notes));
    }
    o
}

/// A dry run's notes, one line each.
fn notes_text(notes: &[String]) -> String {
    notes.iter().map(|n| format!("note: {n}\n")).collect()
}

async fn migrate_service(
    ctx: &Context,
    service: &Service,
    local: Vec<(EngineKind, Vec<Migration>)>,
    run: &Run<'_>,
    journal: Option<&mut deploy::Journal<'_>>,
    out: &mut MigrateResult,
) -> Result<()> {
    // A dry run locks nothing and recovers nothing: it writes nothing.
    let mut locked = if run.args.dry_run {
        LockedService::open_read_only(service, local).await?
    } else {
        LockedService::open(service, local, ctx.waits()).await?
    };
    out.notes.append(&mut locked.notes);
    let result = migrate_locked(&mut locked, run, journal, out).await;
    locked.release().await;
    result
}

#[tracing::instrument(skip_all, fields(service = %locked.service.name))]
async fn migrate_locked(
    locked: &mut LockedService,
    run: &Run<'_>,
    mut journal: Option<&mut deploy::Journal<'_>>,
    out: &mut MigrateResult,
) -> Result<()> {
    let (args, meta) = (run.args, run.meta);
    let runs = &mut out.runs;
    let name = locked.service.name.clone();
    // Plan every engine before changing any.
    let mut plans: Vec<Vec<u64>> = Vec::new();
    for slot in locked.engines.iter_mut() {
        let kind = slot.engine.kind();
        let (_, analysis) = inspect(slot).await?;
        ensure_consistent(&name, kind, &analysis)?;
        // --to names a version of one engine; other engines of the service
        // apply what is at or below it.
        let has_target = args
            .to
            .is_some_and(|t| slot.local.iter().any(|m| m.version == t));
        let plan: Vec<u64> = plan_up(
            &slot.local,
            &analysis,
            if has_target { args.to } else { None },
        )
        .map_err(|e| plan_error(&name, kind, e))?
        .iter()
        .map(|m| m.version)
        .filter(|v| args.to.is_none_or(|t| *v <= t))
        .collect();
        let lint = lint_planned(&name, kind, &slot.local, &plan);
        runs.push(EngineRun {
            service: name.clone(),
            engine: kind,
            from_version: analysis.current,
            to_version: plan.last().copied().or(analysis.current),
            planned: plan.clone(),
            steps: vec![],
            lint,
        });
        plans.push(plan);
    }
    if args.dry_run || plans.iter().all(Vec::is_empty) {
        return Ok(());
    }
    let first_run = out.runs.len() - plans.len();
    let versions: Vec<_> = out.runs[first_run..]
        .iter()
        .map(|r| (r.engine, r.from_version))
        .collect();
    let deferred = match run.storage {
        Some(storage) => {
            let anchoring = Anchoring {
                storage,
                run,
                versions: &versions,
            };
            anchoring
                .take(locked, journal.as_deref_mut(), &mut out.taken)
                .await?
        }
        None => false,
    };
    for (i, (slot, plan)) in locked.engines.iter_mut().zip(plans.iter()).enumerate() {
        if plan.is_empty() {
            continue;
        }
        let span = tracing::info_span!("engine", engine = %slot.engine.kind());
        let (steps, error) = session::apply_up(slot, plan, meta).instrument(span).await;
        let run = &mut out.runs[first_run + i];
        run.to_version = steps.last().map(|s| s.version).or(run.from_version);
        run.steps = steps;
        if let Some(j) = journal.as_deref_mut() {
            j.changed(&name, run.engine, run.to_version).await;
        }
        if let Some(e) = error {
            return Err(e);
        }
    }
    match run.storage {
        Some(_) if deferred => tracing::info!(
            "{name}: the post-migrate snapshot is taken once the deployment succeeded; until then restores to later times are refused"
        ),
        Some(storage) => {
            let after = After {
                storage,
                environment: run.environment,
                reason: "post-migrate",
                release: args.release.clone(),
                capture_wait: run.capture_wait,
            };
            after.snapshot(&name, locked).await;
        }
        None => {}
    }
    Ok(())
}

/// Where one service's migration starts from.
struct Anchoring<'a> {
    storage: &'a dyn Storage,
    run: &'a Run<'a>,
    /// Each engine's version now.
    versions: &'a [(EngineKind, Option<u64>)],
}

impl Anchoring<'_> {
    /// A verified restore point or snapshot of the whole service before
    /// anything changes (a resumed deployment keeps the one its first
    /// attempt took), in the deployment record before the first migration
    /// starts. Answers whether the post-migrate snapshot waits for the
    /// deployment to succeed (it does when a deployment migrates from a
    /// restore point).
    async fn take(
        &self,
        locked: &mut LockedService,
        journal: Option<&mut deploy::Journal<'_>>,
        taken: &mut Taken,
    ) -> Result<bool> {
        let name = locked.service.name.clone();
        let kept = journal.as_ref().and_then(|j| j.rec.undo_of(&name));
        let undo = match kept {
            Some(undo) => {
                tracing::info!(
                    "{name}: keeping the pre-deploy {} of the first attempt",
                    undo.describe()
                );
                undo
            }
            None => {
                let req = point::Request {
                    environment: self.run.environment,
                    reason: "pre-migrate",
                    release: self.run.args.release.clone(),
                    versions: self.versions,
                    wait: self.run.capture_wait,
                };
                let anchor = point::anchor(self.storage, locked, &req).await?;
                taken.record(&name, &anchor);
                Undo::of(&anchor)
            }
        };
        let deferred = journal.is_some() && matches!(undo, Undo::RestorePoint(_));
        if let Some(j) = journal {
            j.before_change(&name, self.versions, &undo, deferred)
                .await?;
        }
        Ok(deferred)
    }
}

/// The snapshot after a schema change (a migration or a rollback).
struct After<'a> {
    storage: &'a dyn Storage,
    environment: &'a str,
    reason: &'static str,
    release: Option<String>,
    /// How long a restore point waits for a running capture.
    capture_wait: std::time::Duration,
}

impl After<'_> {
    /// Captured changes cannot be replayed across a schema change: with
    /// capture running for the service, a snapshot right after the change is
    /// where restores to later times start. A failure here does not undo the
    /// change; it is reported, and restores to times after the change are
    /// refused until a snapshot is taken.
    async fn snapshot(&self, name: &str, locked: &mut LockedService) {
        let (storage, environment) = (self.storage, self.environment);
        if !crate::capture::is_captured(storage, environment, name).await {
            return;
        }
        let req = Request {
            environment,
            reason: self.reason,
            release: self.release.clone(),
            label: None,
        };
        if let Err(e) = take_service(storage, name, &mut locked.engines, &req).await {
            tracing::warn!(
                "{name}: the schema change is applied, but the {} snapshot failed: {e}; \
                 restores to later times need a snapshot taken after it (`valero-db snapshot -s {name}`)",
                self.reason
            );
        }
    }
}

/// `rollback`: plans every service, shows the plan, asks, then takes a
/// verified pre-rollback snapshot of each service it changes and runs the
/// down migrations.
pub async fn rollback(ctx: &Context, args: RollbackArgs) -> Outcome {
    let targets = match (args.to, &args.release) {
        (Some(v), _) => RollbackTargets::All(v),
        (None, Some(tag)) => match release_targets(ctx, tag).await {
            Ok(t) => t,
            Err(e) => return Outcome::failed(e),
        },
        (None, None) => return Outcome::failed(Error::usage("rollback needs --to or --release")),
    };
    let mut planned = plan_rollback(ctx, &targets).await;
    if args.dry_run || planned.error.is_some() {
        return rollback_outcome(ctx, planned, true);
    }
    if planned.runs.iter().all(|r| r.planned.is_empty()) {
        return rollback_outcome(ctx, planned, false);
    }
    let plan = render(&planned.runs, true, "revert");
    let mut action = String::from("rollback");
    if args.no_snapshot {
        action.push_str(" without a pre-rollback snapshot");
    }
    if let Err(e) = confirm_plan(ctx, &action, &plan, args.yes) {
        planned.error = Some(e);
        return rollback_outcome(ctx, planned, true);
    }
    let r = apply_rollback(ctx, &targets, args.no_snapshot).await;
    rollback_outcome(ctx, r, false)
}

/// The outcome of a rollback (or its plan), with its pre-rollback
/// snapshots and notes.
fn rollback_outcome(ctx: &Context, r: RollbackResult, plan_only: bool) -> Outcome {
    let mut o = outcome(ctx, "rollback", r.runs, plan_only, r.error);
    let taken = r.taken.text("pre-rollback");
    o.human = taken + &o.human + &notes_text(&r.notes);
    r.taken.add_to(&mut o);
    if let serde_json::Value::Object(m) = &mut o.report {
        m.insert("notes".into(), json!(r.notes));
    }
    o
}

/// The versions a release was deployed with, per service and engine.
async fn release_targets(ctx: &Context, release: &str) -> Result<RollbackTargets> {
    let storage = ctx.storage().await?;
    let versions = deploy::release_versions(storage.as_ref(), &ctx.env.name, release).await?;
    Ok(RollbackTargets::PerEngine(versions))
}

/// What an applied rollback did: per engine, and the pre-rollback
/// snapshots.
#[derive(Default)]
pub struct RollbackResult {
    pub runs: Vec<EngineRun>,
    pub taken: Taken,
    /// A plan's notes (locks held by others, recovery pending).
    pub notes: Vec<String>,
    pub error: Option<Error>,
}

/// Plans every service (changing nothing), so a missing down file anywhere
/// stops the rollback before any service is changed.
pub async fn plan_rollback(ctx: &Context, targets: &RollbackTargets) -> RollbackResult {
    let mut out = RollbackResult::default();
    rollback_pass(ctx, targets, &RollbackPass::Plan, &mut out).await;
    out
}

/// Plans every service first, then per service under its lock: a verified pre-rollback
/// snapshot (unless `no_snapshot`), the down migrations, and the
/// post-rollback snapshot of captured services. Without usable storage
/// nothing is changed, as for `migrate`.
pub async fn apply_rollback(
    ctx: &Context,
    targets: &RollbackTargets,
    no_snapshot: bool,
) -> RollbackResult {
    let planned = plan_rollback(ctx, targets).await;
    if planned.error.is_some() {
        return planned;
    }
    let storage = if no_snapshot {
        tracing::warn!("--no-snapshot: rolling back without a pre-rollback snapshot");
        None
    } else {
        match ctx.storage().await {
            Ok(s) => Some(s),
            Err(e) => {
                return RollbackResult {
                    error: Some(e),
                    ..RollbackResult::default()
                }
            }
        }
    };
    let snapshot_to = storage.as_deref().map(|storage| After {
        storage,
        environment: &ctx.env.name,
        reason: "post-rollback",
        release: None,
        capture_wait: ctx.global.lock_timeout,
    });
    let pass = RollbackPass::Apply(snapshot_to);
    let mut out = RollbackResult::default();
    rollback_pass(ctx, targets, &pass, &mut out).await;
    out
}

/// What a rollback pass does: plan only (a dry run), or apply with the
/// pre- and post-rollback snapshots going to this storage (None: none).
enum RollbackPass<'a> {
    Plan,
    Apply(Option<After<'a>>),
}

/// One pass over every service; the first error ends it (in `out.error`).
async fn rollback_pass(
    ctx: &Context,
    targets: &RollbackTargets,
    pass: &RollbackPass<'_>,
    out: &mut RollbackResult,
) {
    let discovered = match discover_all(ctx) {
        Ok(d) => d,
        Err(e) => {
            out.error = Some(e);
            return;
        }
    };
    for (service, local) in discovered {
        let result = async {
            // A plan locks nothing and recovers nothing: it writes nothing.
            let mut locked = match pass {
                RollbackPass::Plan => LockedService::open_read_only(&service, local).await?,
                RollbackPass::Apply(_) => LockedService::open(&service, local, ctx.waits()).await?,
            };
            out.notes.append(&mut locked.notes);
            let r = rollback_locked(&mut locked, targets, pass, out).await;
            locked.release().await;
            r
        }
        .await;
        if let Err(e) = result {
            out.error = Some(e);
            return;
        }
    }
}

async fn rollback_locked(
    locked: &mut LockedService,
    targets: &RollbackTargets,
    pass: &RollbackPass<'_>,
    out: &mut RollbackResult,
) -> Result<()> {
    let runs = &mut out.runs;
    let name = locked.service.name.clone();
    let mut plans = Vec::new();
    let mut applied_versions = Vec::new();
    for slot in locked.engines.iter_mut() {
        let kind = slot.engine.kind();
        let (applied, analysis) = inspect(slot).await?;
        ensure_consistent(&name, kind, &analysis)?;
        // An engine without a target stays where it is.
        let to = targets.get(&name, kind).unwrap_or(u64::MAX);
        let plan: Vec<u64> = if analysis.current.is_none_or(|c| c <= to) {
            Vec::new()
        } else {
            plan_down(&slot.local, &applied, to)
                .map_err(|e| plan_error(&name, kind, e))?
                .iter()
                .map(|m| m.version)
                .collect()
        };
        let target = applied.iter().map(|a| a.version).filter(|v| *v <= to).max();
        applied_versions.push(applied.iter().map(|a| a.version).collect::<Vec<_>>());
        runs.push(EngineRun {
            service: name.clone(),
            engine: kind,
            from_version: analysis.current,
            to_version: if plan.is_empty() {
                analysis.current
            } else {
                target
            },
            planned: plan.clone(),
            steps: vec![],
            lint: vec![],
        });
        plans.push(plan);
    }
    let RollbackPass::Apply(after) = pass else {
        return Ok(());
    };
    if plans.iter().all(Vec::is_empty) {
        return Ok(());
    }
    // A down migration drops what it undoes: a verified restore point or
    // snapshot first.
    let first_run = out.runs.len() - plans.len();
    if let Some(to) = after {
        let versions: Vec<_> = out.runs[first_run..]
            .iter()
            .map(|r| (r.engine, r.from_version))
            .collect();
        let req = point::Request {
            environment: to.environment,
            reason: "pre-rollback",
            release: None,
            versions: &versions,
            wait: to.capture_wait,
        };
        let anchor = point::anchor(to.storage, locked, &req).await?;
        out.taken.record(&name, &anchor);
    }
    for (i, (slot, plan)) in locked.engines.iter_mut().zip(plans.iter()).enumerate() {
        if plan.is_empty() {
            continue;
        }
        let (steps, error) = session::apply_down(slot, plan).await;
        let run = &mut out.runs[first_run + i];
        if error.is_some() {
            // Where the engine really stands: the newest version not reverted.
            run.to_version = applied_versions[i]
                .iter()
                .copied()
                .filter(|v| !steps.iter().any(|s| s.version == *v))
                .max();
        }
        run.steps = steps;
        if let Some(e) = error {
            return Err(e);
        }
    }
    if let Some(after) = after {
        after.snapshot(&name, locked).await;
    }
    Ok(())
}

/// `baseline`: adopts existing databases (marks versions up to `version`
/// as applied), and with `--release` records the versions they are at as
/// that release, so `rollback --release` can go back to a release deployed
/// before valero-db.
pub async fn baseline(
    ctx: &Context,
    version: Option<u64>,
    release: Option<String>,
    only: Option<EngineKind>,
) -> Outcome {
    let discovered = match discover_all(ctx) {
        Ok(d) => d,
        Err(e) => return Outcome::failed(e),
    };
    if let Some(tag) = &release {
        if let Err(e) = deploy::validate_release(tag) {
            return Outcome::failed(e);
        }
    }
    let mut runs = Vec::new();
    for (service, mut local) in discovered {
        if let Some(k) = only {
            local.retain(|(kind, _)| *kind == k);
        }
        let result = match version {
            Some(v) => baseline_service(ctx, &service, local, v, only, &mut runs).await,
            None => current_versions(&service, local, only, &mut runs).await,
        };
        if let Err(e) = result {
            return outcome(ctx, "baseline", runs, false, Some(e));
        }
    }
    let recorded = match &release {
        Some(tag) => Some(record_release(ctx, tag, &runs).await),
        None => None,
    };
    let mut o = outcome(ctx, "baseline", runs, false, None);
    match (release, recorded) {
        (Some(tag), Some(Ok(id))) => o.human.push_str(&format!(
            "recorded release {tag} at these versions (deployment {id}); `valero-db rollback --release {tag}` goes back to them\n"
        )),
        (_, Some(Err(e))) => return o.with_error(Some(e)),
        _ => {}
    }
    o
}

/// Marks the versions up to `version` of one service as applied.
async fn baseline_service(
    ctx: &Context,
    service: &Service,
    local: Vec<(EngineKind, Vec<Migration>)>,
    version: u64,
    only: Option<EngineKind>,
    runs: &mut Vec<EngineRun>,
) -> Result<()> {
    if local.is_empty() {
        let k = only.map(|k| k.to_string()).unwrap_or_default();
        return Err(Error::usage(format!(
            "service {} has no {k} database",
            service.name
        )));
    }
    for (kind, files) in &local {
        if !files.iter().any(|m| m.version == version) {
            let hint = if only.is_none() && local.len() > 1 {
                "; pick the engine with --engine"
            } else {
                ""
            };
            return Err(Error::usage(format!(
                "service {} ({kind}) has no migration file with version {version}{hint}",
                service.name
            )));
        }
    }
    let meta = RunMeta {
        applied_by: format!("{} (baseline)", identity()),
        release: None,
    };
    let mut locked = LockedService::open(service, local, ctx.waits()).await?;
    locked
        .engines
        .retain(|s| only.is_none_or(|k| s.engine.kind() == k));
    let r = baseline_locked(&mut locked, version, &meta, runs).await;
    locked.release().await;
    r
}

/// The versions one service is at now (for `baseline --release` alone).
async fn current_versions(
    service: &Service,
    local: Vec<(EngineKind, Vec<Migration>)>,
    only: Option<EngineKind>,
    runs: &mut Vec<EngineRun>,
) -> Result<()> {
    let mut session = LockedService::open_read_only(service, local).await?;
    for part in session.engines.iter_mut() {
        let kind = part.engine.kind();
        if only.is_some_and(|k| k != kind) {
            continue;
        }
        let (_, analysis) = inspect(part).await?;
        ensure_consistent(&service.name, kind, &analysis)?;
        runs.push(EngineRun {
            service: service.name.clone(),
            engine: kind,
            from_version: analysis.current,
            to_version: analysis.current,
            planned: Vec::new(),
            steps: Vec::new(),
            lint: Vec::new(),
        });
    }
    Ok(())
}

/// Stores a successful deployment record of `tag` at the versions the
/// baseline left the engines at.
async fn record_release(ctx: &Context, tag: &str, runs: &[EngineRun]) -> Result<String> {
    let storage = ctx.storage().await?;
    let started = std::time::Instant::now();
    let mut rec = DeploymentRecord::new(&ctx.env.name, tag, OnFailure::None, None);
    for r in runs {
        rec.add_versions(&r.service, r.engine, r.to_version, r.to_version);
    }
    rec.step("baseline (deployed before valero-db)", started, Ok(()));
    rec.state = DeployState::Succeeded;
    rec.finished_at = Some(chrono::Utc::now());
    rec.save(storage.as_ref()).await?;
    Ok(rec.id)
}

async fn baseline_locked(
    locked: &mut LockedService,
    version: u64,
    meta: &RunMeta,
    runs: &mut Vec<EngineRun>,
) -> Result<()> {
    let name = locked.service.name.clone();
    for slot in locked.engines.iter_mut() {
        let kind = slot.engine.kind();
        let applied = slot.engine.history().await?;
        if !applied.is_empty() {
            return Err(Error::usage_hint(
                format!("service {name} ({kind}) already has a migration history; baseline only adopts databases without one"),
                "use `valero-db status` to see its versions",
            ));
        }
        let marked: Vec<&Migration> = slot.local.iter().filter(|m| m.version <= version).collect();
        slot.engine.prepare().await?;
        slot.engine.baseline(&marked, meta).await?;
        runs.push(EngineRun {
            service: name.clone(),
            engine: kind,
            from_version: None,
            to_version: Some(version),
            planned: marked.iter().map(|m| m.version).collect(),
            steps: marked
                .iter()
                .map(|m| Step {
                    version: m.version,
                    description: m.description.clone(),
                    file: m.file_name(),
                    duration_ms: 0,
                })
                .collect(),
            lint: Vec::new(),
        });
    }
    Ok(())
}

pub async fn repair(ctx: &Context, engine: EngineKind, version: u64, as_: RepairAs) -> Outcome {
    if ctx.global.services.len() != 1 {
        return Outcome::failed(Error::usage(
            "repair works on exactly one service: pass -s NAME",
        ));
    }
    let service = match ctx.config.service(&ctx.global.services[0]) {
        Ok(s) => s,
        Err(e) => return Outcome::failed(e),
    };
    let action = match as_ {
        RepairAs::Applied => RepairAction::MarkApplied,
        RepairAs::Pending => RepairAction::MarkPending,
    };
    let result = async {
        let mut locked = LockedService::open(&service, Vec::new(), ctx.waits()).await?;
        let r = match locked
            .engines
            .iter_mut()
            .find(|s| s.engine.kind() == engine)
        {
            Some(slot) => slot.engine.repair(version, action).await,
            None => Err(Error::usage(format!(
                "service {} has no {engine} database",
                service.name
            ))),
        };
        locked.release().await;
        r
    }
    .await;
    let state = match action {
        RepairAction::MarkApplied => "applied",
        RepairAction::MarkPending => "pending",
    };
    let report = json!({"command": "repair", "service": service.name, "engine": engine, "version": version, "marked": state});
    match result {
        Ok(()) => Outcome::ok(
            report,
            format!(
                "{} {engine}: version {version} marked {state}\n",
                service.name
            ),
        ),
        Err(e) => Outcome::failed(e),
    }
}
