//! `deploy`, `hook pre-deploy|post-deploy`, `releases`, `check`, and the
//! release targets of `rollback --release`. Every database change goes
//! through the same migrate, rollback and restore paths as the commands of
//! those names.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cli::{DeployArgs, MigrateArgs, RestoreArgs};
use crate::commands::migrate::{apply_rollback, run_migrate};
use crate::commands::restore::run_restore;
use crate::context::Context;
use crate::deploy::attach::{self, Wanted};
use crate::deploy::{self, shell, DeployState, DeploymentRecord, Moment, OnFailure, RunEnd};
use crate::error::{Error, Result};
use crate::migrate::plan::RollbackTargets;
use crate::output::{table, Outcome};
use crate::service::deployment_lock::DeploymentLock;
use crate::service::session::{ensure_consistent, inspect, LockedService};
use crate::service::status::service_status;
use crate::service::take::{take_service, Request};
use crate::snapshot;
use crate::storage::Storage;

fn env_vars(rec: &DeploymentRecord) -> Vec<(&'static str, String)> {
    vec![
        ("VALERO_DB_RELEASE", rec.release.clone()),
        ("VALERO_DB_ENV", rec.environment.clone()),
        ("VALERO_DB_DEPLOYMENT_ID", rec.id.clone()),
    ]
}

fn report(rec: &DeploymentRecord) -> Value {
    let mut v = serde_json::to_value(rec).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("command".into(), json!("deploy"));
    }
    v
}

fn render(rec: &DeploymentRecord) -> String {
    let mut out = format!(
        "deployment {} of release {} to {}: {}\n",
        rec.id,
        rec.release,
        rec.environment,
        state_text(rec)
    );
    if let Some(s) = &rec.superseded {
        out.push_str(&format!("  superseded: {}\n", s.reason));
    }
    for s in &rec.steps {
        out.push_str(&format!(
            "  {:<18} {:<7} {:>7} ms{}\n",
            s.name,
            s.result,
            s.duration_ms,
            s.detail
                .as_deref()
                .map(|d| format!("  {d}"))
                .unwrap_or_default()
        ));
    }
    for s in &rec.services {
        let versions: Vec<String> = s
            .engines
            .iter()
            .map(|e| {
                format!(
                    "{} {} -> {}",
                    e.engine,
                    version_text(e.before),
                    version_text(e.after)
                )
            })
            .collect();
        out.push_str(&format!(
            "  {}: {}{}\n",
            s.service,
            versions.join(", "),
            s.undo()
                .map(|u| format!(" (pre-deploy {})", u.describe()))
                .unwrap_or_default()
        ));
    }
    out
}

/// A deployment's state for people: `pre-deployed (resumed 1x)`,
/// `superseded by v2.1`.
fn state_text(rec: &DeploymentRecord) -> String {
    let mut text = rec.state.to_string();
    if let Some(s) = &rec.superseded {
        text.push_str(&format!(" by {}", s.by_release));
    }
    if rec.resumed > 0 {
        text.push_str(&format!(" (resumed {}x)", rec.resumed));
    }
    text
}

/// A version for people: `-` for none.
fn version_text(x: Option<u64>) -> String {
    x.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

/// Step 1: every database reachable, no drift, no dirty version, locks
/// obtainable, storage reachable. Changes nothing.
async fn preflight(ctx: &Context) -> Result<()> {
    let root = ctx.config.migrations_dir()?;
    for service in ctx.services()? {
        let local = crate::service::session::discover_service(&root, &service)?;
        let mut locked = LockedService::open(&service, local, ctx.waits()).await?;
        let r = async {
            for slot in locked.engines.iter_mut() {
                let (_, analysis) = inspect(slot).await?;
                ensure_consistent(&service.name, slot.engine.kind(), &analysis)?;
            }
            Ok::<_, Error>(())
        }
        .await;
        locked.release().await;
        r?;
    }
    Ok(())
}

/// Step 2: snapshot and migrate, the record saved before each service
/// changes (see `deploy::Journal`). A resumed deployment keeps the
/// snapshots and `before` versions of its first attempt.
#[tracing::instrument(skip_all, fields(deployment = %rec.id, release = %rec.release))]
async fn pre_deploy(
    ctx: &Context,
    storage: &dyn Storage,
    rec: &mut DeploymentRecord,
) -> Result<()> {
    let started = Instant::now();
    let args = MigrateArgs {
        to: None,
        dry_run: false,
        no_snapshot: false,
        release: Some(rec.release.clone()),
        yes: true,
    };
    let mut journal = deploy::Journal {
        rec: &mut *rec,
        storage,
    };
    let result = run_migrate(ctx, args, Some(&mut journal)).await;
    for r in &result.runs {
        rec.add_versions(&r.service, r.engine, r.from_version, r.to_version);
    }
    let outcome = match &result.error {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    };
    rec.step("snapshot+migrate", started, outcome);
    match result.error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Step 4: every --verify command exits 0 and every service is at the
/// versions the release expects (fully migrated, no drift).
async fn verify(ctx: &Context, rec: &mut DeploymentRecord, commands: &[String]) -> Result<()> {
    for cmd in commands {
        let started = Instant::now();
        let end = deploy::run_command(&shell(cmd), &env_vars(rec), None).await?;
        let ok = matches!(end, RunEnd::Exited(0));
        rec.step(
            "verify",
            started,
            if ok {
                Ok(())
            } else {
                Err(format!("`{cmd}` {}", end.describe()))
            },
        );
        if !ok {
            return Err(Error::DeployFailed {
                message: format!("verification `{cmd}` {}", end.describe()),
                hint: None,
            });
        }
    }
    let started = Instant::now();
    let root = ctx.config.migrations_dir()?;
    let mut problems = Vec::new();
    for service in ctx.services()? {
        match service_status(&root, &service, None).await {
            Ok(rows) => problems.extend(rows.iter().filter(|r| !r.ready).map(|r| {
                format!(
                    "{} ({}) is not at the release's versions",
                    r.service, r.engine
                )
            })),
            Err(e) => problems.push(format!("{}: {e}", service.name)),
        }
    }
    let result = if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    };
    rec.step("verify versions", started, result.clone());
    result.map_err(|m| Error::DeployFailed {
        message: m,
        hint: None,
    })
}

/// How a failed deployment is rolled back.
#[derive(Debug, Clone, Copy)]
pub struct Rollback<'a> {
    /// The service's own rollback command, run first.
    pub cmd: Option<&'a str>,
    /// What happens to the databases; `None`: what the deployment recorded.
    pub on_failure: Option<OnFailure>,
    /// A database restore ends the sessions that hold locks on the schema.
    pub terminate_sessions: bool,
}

/// Step 5: the rollback command, then the databases per --on-failure.
/// Returns the error to exit with (always exit 7, unless interrupted).
async fn roll_back(
    ctx: &Context,
    storage: &dyn Storage,
    rec: &mut DeploymentRecord,
    rollback: Rollback<'_>,
    cause: Error,
) -> Error {
    if let Some(cmd) = rollback.cmd {
        let started = Instant::now();
        let result = match deploy::run_command(&shell(cmd), &env_vars(rec), None).await {
            Ok(RunEnd::Exited(0)) => Ok(()),
            Ok(end) => Err(format!("`{cmd}` {}", end.describe())),
            Err(e) => Err(e.to_string()),
        };
        rec.step("rollback command", started, result);
    }
    let started = Instant::now();
    let mut blocked = false;
    let on_failure = rollback.on_failure.unwrap_or(rec.on_failure);
    let db_result: std::result::Result<String, String> = match on_failure {
        OnFailure::None => Ok("databases left as they are (--on-failure none)".into()),
        OnFailure::Restore => {
            let map: BTreeMap<String, String> = rec
                .services
                .iter()
                .filter_map(|s| s.undo().map(|u| (s.service.clone(), u.id().to_string())))
                .collect();
            if map.is_empty() {
                Ok("no service was migrated; nothing to restore".into())
            } else {
                let args = RestoreArgs {
                    per_service: Some(map.clone()),
                    yes: true,
                    terminate_sessions: rollback.terminate_sessions,
                    ..RestoreArgs::default()
                };
                let (_, _, error) = run_restore(ctx, &args).await;
                match error {
                    None => Ok(format!(
                        "restored {}",
                        map.iter()
                            .map(|(s, id)| format!("{s} to {id}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                    Some(e) => {
                        blocked = matches!(e, Error::Blocked { .. });
                        Err(e.to_string())
                    }
                }
            }
        }
        OnFailure::Down => {
            let targets = RollbackTargets::PerEngine(rec.versions(Moment::Before));
            let r = apply_rollback(ctx, &targets, false).await;
            match r.error {
                None => Ok("down migrations back to the pre-deploy versions".into()),
                Some(e) => Err(e.to_string()),
            }
        }
    };
    rec.step("database rollback", started, db_result.clone().map(|_| ()));
    rec.state = if db_result.is_ok() {
        DeployState::RolledBack
    } else {
        DeployState::RollbackFailed
    };
    rec.finished_at = Some(chrono::Utc::now());
    if let Err(e) = rec.save(storage).await {
        tracing::warn!("saving the deployment record failed: {e}");
    }
    match db_result {
        Ok(what) => Error::DeployFailed {
            message: format!("deploy {} of release {} failed: {cause}; rolled back: {what}", rec.id, rec.release),
            hint: Some("see the deployment report; `valero-db status` shows the databases' state".into()),
        },
        Err(e) => Error::DeployFailed {
            message: format!(
                "deploy {} of release {} failed: {cause}; and rolling the databases back FAILED: {e}",
                rec.id, rec.release
            ),
            hint: Some(rollback_hint(ctx, rec, blocked)),
        },
    }
}

/// What to run after a failed database rollback: restore each service's
/// pre-deploy snapshot; when the application's sessions blocked it, stop
/// the application first or let the restore end them.
fn rollback_hint(ctx: &Context, rec: &DeploymentRecord, blocked: bool) -> String {
    let commands: Vec<String> = rec
        .services
        .iter()
        .filter_map(|s| {
            s.undo().map(|u| {
                format!(
                    "`valero-db restore -e {} -s {} {} --yes`",
                    ctx.env.name,
                    s.service,
                    u.restore_option()
                )
            })
        })
        .collect();
    let restore = if commands.is_empty() {
        "there is no pre-deploy snapshot to restore".to_string()
    } else {
        format!("then run {}", commands.join(" and "))
    };
    if blocked {
        format!(
            "the application's sessions (named above) kept their locks, so nothing was restored: \
             stop the application or scale it to zero, {restore}; or add --terminate-sessions to end those sessions"
        )
    } else {
        format!("run `valero-db status` to see each service's state; {restore}")
    }
}

/// What `deploy` or `hook pre-deploy` was asked to open.
#[derive(Debug, Clone, Copy)]
pub struct Opening<'a> {
    pub release: &'a str,
    pub on_failure: OnFailure,
    pub yes: bool,
    /// Close another open deployment without a rollback, for this reason.
    pub supersede: Option<&'a str>,
    /// The pipeline's id for this deployment (`--deployment-id`).
    pub id: Option<&'a str>,
}

/// Starts a deployment, or attaches to its open one (a retried Job or
/// pipeline): a valid release tag and id, reachable storage, no other
/// deployment open (unless superseded), and the preflight (step 1),
/// recorded. A failure is the outcome to return; so is the repeated result
/// of a deployment the pipeline's id names that has already ended.
async fn begin(
    ctx: &Context,
    o: &Opening<'_>,
) -> std::result::Result<(Box<dyn Storage>, DeploymentRecord, DeploymentLock), Outcome> {
    let wanted = Wanted {
        environment: &ctx.env.name,
        release: o.release,
        id: o.id,
    };
    wanted.validate().map_err(Outcome::failed)?;
    consent(ctx, o.on_failure, o.yes).map_err(Outcome::failed)?;
    let storage = ctx.storage().await.map_err(Outcome::failed)?;
    // Held until this run ends: opening or resuming, and the work on the
    // record after it, happen for one run of the environment at a time.
    let services = ctx.services().map_err(Outcome::failed)?;
    let lock = DeploymentLock::take(
        &services,
        &ctx.env.name,
        ctx.waits().run_lock,
        ctx.env.statement_locks,
    )
    .await
    .map_err(Outcome::failed)?;
    let mut rec = attach::open_or_resume(storage.as_ref(), &wanted, o.on_failure, o.supersede)
        .await
        .map_err(Outcome::failed)?;
    if rec.state.is_final() {
        return Err(repeat_result(&rec));
    }
    rec.save(storage.as_ref()).await.map_err(Outcome::failed)?;
    let started = Instant::now();
    let pre = preflight(ctx).await;
    rec.step(
        "preflight",
        started,
        pre.as_ref().map(|_| ()).map_err(|e| e.to_string()),
    );
    match pre {
        Ok(()) => Ok((storage, rec, lock)),
        Err(e) => {
            // Nothing changed: the deployment ends as failed, so it never
            // blocks the next release; a re-run is a new attempt.
            rec.state = DeployState::Failed;
            rec.finished_at = Some(chrono::Utc::now());
            if let Err(s) = rec.save(storage.as_ref()).await {
                tracing::warn!("recording the failed preflight: {s}");
            }
            Err(Outcome::ok(report(&rec), render(&rec)).with_error(Some(e)))
        }
    }
}

/// Ends a deployment: succeeded and saved, or rolled back (exit 7).
async fn conclude(
    ctx: &Context,
    storage: &dyn Storage,
    mut rec: DeploymentRecord,
    cause: Option<Error>,
    rollback: Rollback<'_>,
) -> Outcome {
    let error = match cause {
        None => {
            rec.state = DeployState::Succeeded;
            rec.finished_at = Some(chrono::Utc::now());
            // Succeeded is on record before the post-migrate snapshots,
            // which may take long: a Job killed meanwhile leaves a
            // finished deployment, and `check` names what is missing.
            match rec.save(storage).await {
                Err(e) => Some(e),
                Ok(()) if rec.services.iter().any(|s| s.snapshot_pending) => {
                    deferred_snapshots(ctx, storage, &mut rec).await;
                    rec.save(storage).await.err()
                }
                Ok(()) => None,
            }
        }
        Some(cause) => Some(roll_back(ctx, storage, &mut rec, rollback, cause).await),
    };
    Outcome::ok(report(&rec), render(&rec)).with_error(error)
}

/// After a successful rollout and verify: the post-migrate snapshots the
/// services migrated from a restore point still need (restores to times
/// after the change start from them). A failure does not fail the
/// deployment; it is recorded, and `check` reports the service as not
/// ready until a snapshot is taken.
async fn deferred_snapshots(ctx: &Context, storage: &dyn Storage, rec: &mut DeploymentRecord) {
    let pending: Vec<String> = rec
        .services
        .iter()
        .filter(|s| s.snapshot_pending)
        .map(|s| s.service.clone())
        .collect();
    for name in pending {
        let started = Instant::now();
        let taken = async {
            let service = ctx.config.service(&name)?;
            let mut locked = LockedService::open(&service, Vec::new(), ctx.waits()).await?;
            let req = Request {
                environment: &ctx.env.name,
                reason: "post-migrate",
                release: Some(rec.release.clone()),
                label: None,
            };
            let r = take_service(storage, &name, &mut locked.engines, &req).await;
            locked.release().await;
            r
        }
        .await;
        match &taken {
            Ok(_) => {
                if let Some(s) = rec.services.iter_mut().find(|s| s.service == name) {
                    s.snapshot_pending = false;
                }
            }
            Err(e) => tracing::warn!(
                "{name}: the deployment succeeded, but the post-migrate snapshot failed: {e}; \
                 restores to later times need one (`valero-db snapshot -s {name}`)"
            ),
        }
        let step = format!("post-migrate snapshot of {name}");
        rec.step(&step, started, taken.map(|_| ()).map_err(|e| e.to_string()));
    }
}

/// A deploy into a protected environment changes its databases and, when
/// the rollout fails, rolls them back without asking: `--yes` up front is
/// the consent for both (given to `deploy` or `hook pre-deploy`; the
/// post-deploy hook acts on the deployment it opened).
fn consent(ctx: &Context, on_failure: OnFailure, yes: bool) -> Result<()> {
    if !ctx.env.protected || yes {
        return Ok(());
    }
    let rollback = match on_failure {
        OnFailure::Restore => ", and on failure restores them to the pre-deploy snapshots",
        OnFailure::Down => ", and on failure runs down migrations",
        OnFailure::None => "",
    };
    Err(Error::usage_hint(
        format!(
            "environment '{}' is protected: a deploy migrates its databases{rollback}; it needs --yes",
            ctx.env.name
        ),
        "review with `valero-db migrate --dry-run`, then repeat with --yes",
    ))
}

pub async fn deploy(ctx: &Context, args: DeployArgs) -> Outcome {
    if args.command.is_empty() {
        return Outcome::failed(Error::usage("deploy needs the rollout command after `--`"));
    }
    let opening = Opening {
        release: &args.release,
        on_failure: args.on_failure,
        yes: args.yes,
        supersede: args.supersede.as_deref(),
        id: args.deployment_id.as_deref(),
    };
    let (storage, mut rec, _lock) = match begin(ctx, &opening).await {
        Ok(started) => started,
        Err(outcome) => return outcome,
    };
    let error = async {
        pre_deploy(ctx, storage.as_ref(), &mut rec).await?;
        let started = Instant::now();
        let end = deploy::run_command(&args.command, &env_vars(&rec), args.timeout).await?;
        let ok = matches!(end, RunEnd::Exited(0));
        rec.step(
            "rollout",
            started,
            if ok { Ok(()) } else { Err(end.describe()) },
        );
        if !ok {
            return Err(Error::DeployFailed {
                message: format!("the rollout {}", end.describe()),
                hint: None,
            });
        }
        verify(ctx, &mut rec, &args.verify).await
    }
    .await
    .err();
    let rollback = Rollback {
        cmd: args.rollback_cmd.as_deref(),
        on_failure: Some(args.on_failure),
        terminate_sessions: args.terminate_sessions,
    };
    conclude(ctx, storage.as_ref(), rec, error, rollback).await
}

pub async fn hook_pre(ctx: &Context, opening: Opening<'_>) -> Outcome {
    let (storage, mut rec, _lock) = match begin(ctx, &opening).await {
        Ok(started) => started,
        Err(outcome) => return outcome,
    };
    let error = match pre_deploy(ctx, storage.as_ref(), &mut rec).await {
        Ok(()) => {
            rec.state = DeployState::PreDeployed;
            rec.save(storage.as_ref()).await.err()
        }
        Err(cause) => {
            let rollback = Rollback {
                cmd: None,
                on_failure: Some(opening.on_failure),
                terminate_sessions: false,
            };
            Some(roll_back(ctx, storage.as_ref(), &mut rec, rollback, cause).await)
        }
    };
    Outcome::ok(report(&rec), render(&rec)).with_error(error)
}

/// What `hook post-deploy` was told.
#[derive(Debug, Clone, Copy)]
pub struct Closing<'a> {
    pub release: &'a str,
    /// The pipeline's id for the deployment (`--deployment-id`).
    pub id: Option<&'a str>,
    pub success: bool,
    pub verify: &'a [String],
    pub rollback: Rollback<'a>,
}

pub async fn hook_post(ctx: &Context, c: Closing<'_>) -> Outcome {
    let wanted = Wanted {
        environment: &ctx.env.name,
        release: c.release,
        id: c.id,
    };
    let found = async {
        wanted.validate()?;
        let storage = ctx.storage().await?;
        let rec = attach::to_close(storage.as_ref(), &wanted).await?;
        Ok::<_, Error>((storage, rec))
    }
    .await;
    let (storage, mut rec) = match found {
        Ok(found) => found,
        Err(e) => return Outcome::failed(e),
    };
    if rec.state.is_final() {
        return repeat_result(&rec);
    }
    let cause = if c.success {
        verify(ctx, &mut rec, c.verify).await.err()
    } else {
        rec.step(
            "rollout",
            Instant::now(),
            Err("the pipeline reported failure".into()),
        );
        Some(Error::DeployFailed {
            message: "the rollout failed (reported by the pipeline)".into(),
            hint: None,
        })
    };
    conclude(ctx, storage.as_ref(), rec, cause, c.rollback).await
}

/// A retried post-deploy of a deployment that has ended: the same report
/// and exit code as the first time, and nothing done again.
fn repeat_result(rec: &DeploymentRecord) -> Outcome {
    let ended = rec
        .finished_at
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "earlier".into());
    tracing::warn!(
        "deployment {} of release {} already ended ({} at {ended}); nothing is done again",
        rec.id,
        rec.release,
        rec.state
    );
    let error = match rec.state {
        DeployState::Succeeded => None,
        state => Some(Error::DeployFailed {
            message: format!(
                "deployment {} of release {} already ended: {state} at {ended} (repeated, nothing done again)",
                rec.id, rec.release
            ),
            hint: Some(
                "see `valero-db releases`; a deployment whose rollback failed needs its databases checked (`valero-db status`) and a new pre-deploy with a new --deployment-id"
                    .into(),
            ),
        }),
    };
    let mut report = report(rec);
    if let Value::Object(m) = &mut report {
        m.insert("repeated".into(), json!(true));
    }
    Outcome::ok(report, render(rec)).with_error(error)
}

pub async fn releases(ctx: &Context) -> Outcome {
    let result = async {
        let storage = crate::storage::open(&ctx.env).await?;
        deploy::list(storage.as_ref(), &ctx.env.name).await
    }
    .await;
    match result {
        Ok(records) => {
            let rows: Vec<Vec<String>> = records
                .iter()
                .rev()
                .map(|r| {
                    vec![
                        r.release.clone(),
                        if r.attempts.is_empty() {
                            state_text(r)
                        } else {
                            format!(
                                "{} (attempt {}; before: {})",
                                state_text(r),
                                r.attempts.len() + 1,
                                r.attempts
                                    .iter()
                                    .map(|a| a.state.name())
                                    .collect::<Vec<_>>()
                                    .join(", ")
                            )
                        },
                        r.started_at.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        r.services
                            .iter()
                            .map(|s| {
                                format!(
                                    "{}:{}",
                                    s.service,
                                    s.engines
                                        .iter()
                                        .map(|e| format!("{}={}", e.engine, version_text(e.after)))
                                        .collect::<Vec<_>>()
                                        .join("/")
                                )
                            })
                            .collect::<Vec<_>>()
                            .join(" "),
                        r.services
                            .iter()
                            .filter_map(|s| s.snapshot.clone())
                            .collect::<Vec<_>>()
                            .join(" "),
                    ]
                })
                .collect();
            Outcome::ok(
                json!({"command": "releases", "environment": ctx.env.name, "deployments": records.iter().rev().collect::<Vec<_>>()}),
                if rows.is_empty() {
                    "no deployments\n".into()
                } else {
                    table(
                        &["RELEASE", "STATE", "DEPLOYED AT", "VERSIONS", "SNAPSHOTS"],
                        &rows,
                    )
                },
            )
        }
        Err(e) => Outcome::failed(e),
    }
}

/// A restore point newer than the newest snapshot: a schema change whose
/// post-change snapshot does not exist yet, so restores to times after it
/// are refused.
async fn pending_post_change(
    storage: &dyn Storage,
    env: &str,
    newest: &crate::snapshot::Found,
) -> Option<String> {
    let service = &newest.manifest.service;
    let points = match crate::restore_point::list(storage, env, service).await {
        Ok(p) => p,
        Err(e) => return Some(format!("restore points: {e}")),
    };
    let p = points
        .last()
        .filter(|p| p.at > newest.manifest.consistent_at)?;
    Some(format!(
        "no snapshot since restore point {} ({}): restores to later times are refused until one is taken (`valero-db snapshot -s {service}`)",
        p.id,
        p.at.format("%Y-%m-%dT%H:%M:%SZ")
    ))
}

/// The go-live check: reachable, fully migrated, no drift or dirty version,
/// and a verified snapshot younger than `max_age` for every service.
pub async fn check(ctx: &Context, max_age: Duration) -> Outcome {
    let services = match ctx.services() {
        Ok(s) => s,
        Err(e) => return Outcome::failed(e),
    };
    let root = match ctx.config.migrations_dir() {
        Ok(r) => r,
        Err(e) => return Outcome::failed(e),
    };
    let storage = crate::storage::open(&ctx.env).await;
    let mut rows = Vec::new();
    let mut entries = Vec::new();
    let mut all_ready = true;
    for service in &services {
        let mut problems = Vec::new();
        match service_status(&root, service, None).await {
            Ok(st) => {
                for r in st.iter().filter(|r| !r.ready) {
                    let what = if r.dirty.is_some() {
                        "dirty".to_string()
                    } else if !r.drift.is_empty() {
                        "drift".to_string()
                    } else {
                        format!("{} pending", r.pending.len())
                    };
                    problems.push(format!("{}: {what}", r.engine));
                }
            }
            Err(e) => problems.push(format!("unreachable: {e}")),
        }
        let mut snap_info = json!(null);
        match &storage {
            Ok(storage) => {
                match snapshot::newest(storage.as_ref(), &ctx.env.name, &service.name).await {
                    Ok(found) => match &found {
                        Some(newest) => {
                            let age = chrono::Utc::now()
                                .signed_duration_since(newest.manifest.consistent_at)
                                .to_std()
                                .unwrap_or_default();
                            let verified = snapshot::verify(storage.as_ref(), newest).await;
                            if let Err(e) = &verified {
                                problems.push(format!("newest snapshot fails verification: {e}"));
                            }
                            if age > max_age {
                                problems.push(format!(
                                    "newest snapshot is {} old (max {})",
                                    crate::units::format_duration(Duration::from_secs(
                                        age.as_secs()
                                    )),
                                    crate::units::format_duration(max_age)
                                ));
                            }
                            if let Some(p) =
                                pending_post_change(storage.as_ref(), &ctx.env.name, newest).await
                            {
                                problems.push(p);
                            }
                            snap_info = json!({"id": newest.manifest.id, "age_seconds": age.as_secs(), "verified": verified.is_ok()});
                        }
                        None => problems.push("no snapshot".into()),
                    },
                    Err(e) => problems.push(format!("storage: {e}")),
                }
            }
            Err(e) => problems.push(format!("storage: {e}")),
        }
        let ready = problems.is_empty();
        all_ready &= ready;
        rows.push(vec![
            service.name.clone(),
            if ready {
                "ready".into()
            } else {
                "NOT READY".into()
            },
            snap_info["id"].as_str().unwrap_or("-").to_string(),
            problems.join("; "),
        ]);
        entries.push(json!({"service": service.name, "ready": ready, "problems": problems, "snapshot": snap_info}));
    }
    let error = (!all_ready).then(|| Error::NotReady {
        message: "the go-live check found services that are not ready".into(),
    });
    Outcome::ok(
        json!({"command": "check", "environment": ctx.env.name, "ready": all_ready, "max_age_seconds": max_age.as_secs(), "services": entries}),
        table(&["SERVICE", "STATE", "NEWEST SNAPSHOT", "PROBLEMS"], &rows),
    )
    .with_error(error)
}
