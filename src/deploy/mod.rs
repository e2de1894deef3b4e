//! The rollout wrapper's parts: the deployment record stored next to the
//! snapshots, which deployment a retried hook works on (`attach`), and
//! running the rollout, verify and rollback commands.

pub mod attach;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::storage::Storage;

/// What a deploy does to the databases when the rollout or verify fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OnFailure {
    /// Restore the pre-deploy snapshots of the services the deploy migrated
    Restore,
    /// Run down migrations back to the pre-deploy versions
    Down,
    /// Leave the databases as they are
    None,
}

/// Where a deployment stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeployState {
    /// `deploy` or `hook pre-deploy` is working.
    Running,
    /// `hook pre-deploy` finished; the pipeline's rollout is next.
    PreDeployed,
    Succeeded,
    RolledBack,
    RollbackFailed,
    Failed,
    /// Ended by the next release's pre-deploy (`--supersede REASON`),
    /// without rolling anything back.
    Superseded,
}

impl DeployState {
    /// Whether the deployment has ended (no hook will act on it again).
    pub fn is_final(self) -> bool {
        !matches!(self, DeployState::Running | DeployState::PreDeployed)
    }

    pub fn name(self) -> &'static str {
        match self {
            DeployState::Running => "running",
            DeployState::PreDeployed => "pre-deployed",
            DeployState::Succeeded => "succeeded",
            DeployState::RolledBack => "rolled-back",
            DeployState::RollbackFailed => "rollback-failed",
            DeployState::Failed => "failed",
            DeployState::Superseded => "superseded",
        }
    }
}

impl std::fmt::Display for DeployState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// How one step of a deployment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StepResult {
    Ok,
    Failed,
    Skipped,
}

impl std::fmt::Display for StepResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StepResult::Ok => "ok",
            StepResult::Failed => "failed",
            StepResult::Skipped => "skipped",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineVersions {
    pub engine: EngineKind,
    pub before: Option<u64>,
    pub after: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceVersions {
    pub service: String,
    pub engines: Vec<EngineVersions>,
    /// The pre-migrate snapshot, when the deployment migrated the service
    /// from one.
    pub snapshot: Option<String>,
    /// The pre-migrate restore point, when it migrated from one instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_point: Option<String>,
    /// The post-migrate snapshot waits for the deployment to succeed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub snapshot_pending: bool,
}

/// What a service's change in a deployment is undone from.
#[derive(Debug, Clone, PartialEq)]
pub enum Undo {
    Snapshot(String),
    RestorePoint(String),
}

impl Undo {
    pub fn of(anchor: &crate::service::restore_point::Anchor) -> Undo {
        use crate::service::restore_point::Anchor;
        match anchor {
            Anchor::RestorePoint(p) => Undo::RestorePoint(p.id.clone()),
            Anchor::Snapshot { found, .. } => Undo::Snapshot(found.manifest.id.clone()),
        }
    }

    pub fn id(&self) -> &str {
        match self {
            Undo::Snapshot(id) | Undo::RestorePoint(id) => id,
        }
    }

    /// `snapshot ID` / `restore point ID`.
    pub fn describe(&self) -> String {
        match self {
            Undo::Snapshot(id) => format!("snapshot {id}"),
            Undo::RestorePoint(id) => format!("restore point {id}"),
        }
    }

    /// The restore option that returns to it.
    pub fn restore_option(&self) -> String {
        match self {
            Undo::Snapshot(id) => format!("--snapshot {id}"),
            Undo::RestorePoint(id) => format!("--restore-point {id}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepRecord {
    pub name: String,
    pub result: StepResult,
    pub duration_ms: u64,
    pub detail: Option<String>,
}

impl ServiceVersions {
    /// What this service's change is undone from.
    pub fn undo(&self) -> Option<Undo> {
        match (&self.snapshot, &self.restore_point) {
            (Some(id), _) => Some(Undo::Snapshot(id.clone())),
            (None, Some(id)) => Some(Undo::RestorePoint(id.clone())),
            (None, None) => None,
        }
    }
}

/// One deployment: what it changed, each step's result, and how it ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeploymentRecord {
    pub id: String,
    pub environment: String,
    pub release: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub state: DeployState,
    pub on_failure: OnFailure,
    pub services: Vec<ServiceVersions>,
    pub steps: Vec<StepRecord>,
    pub tool_version: String,
    /// How often a retried pre-deploy or deploy attached to this
    /// deployment to finish it.
    #[serde(default)]
    pub resumed: u32,
    /// Who ended this deployment without a result, and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub superseded: Option<Supersession>,
    /// Earlier attempts of this deployment that ended in failure, oldest
    /// first: a pipeline's re-run of a failed pre-deploy (the same
    /// `--deployment-id`) starts a new attempt and keeps them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// Further ids that name this deployment: a new Helm revision of the
    /// same release (whose hook Jobs' id contains the revision) resumed it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

impl DeploymentRecord {
    /// Whether `id` names this deployment (its id or an alias).
    pub fn named(&self, id: &str) -> bool {
        self.id == id || self.aliases.iter().any(|a| a == id)
    }
}

/// One earlier attempt of a deployment: when, how it ended, and its steps.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Attempt {
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub state: DeployState,
    pub steps: Vec<StepRecord>,
}

impl DeploymentRecord {
    /// Whether a new pre-deploy of this deployment starts a new attempt:
    /// it failed before changing anything, or its change was rolled back.
    /// A succeeded deployment repeats its success; one whose rollback
    /// failed (the databases' state is unknown) or that was superseded
    /// repeats its end.
    pub fn may_try_again(&self) -> bool {
        matches!(self.state, DeployState::Failed | DeployState::RolledBack)
    }

    /// Keeps this attempt in `attempts` and starts the next one from
    /// nothing: its snapshots and versions are taken anew (the last attempt
    /// was rolled back or changed nothing).
    pub fn next_attempt(mut self) -> DeploymentRecord {
        self.attempts.push(Attempt {
            started_at: self.started_at,
            finished_at: self.finished_at,
            state: self.state,
            steps: std::mem::take(&mut self.steps),
        });
        self.started_at = chrono::Utc::now();
        self.finished_at = None;
        self.state = DeployState::Running;
        self.services.clear();
        self.resumed = 0;
        self
    }
}

/// The end of an open deployment by the next release's pre-deploy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Supersession {
    pub by_release: String,
    pub reason: String,
    pub at: chrono::DateTime<chrono::Utc>,
}

pub const FOLDER: &str = ".deployments";

/// Release tags end up in keys and metrics labels: a safe alphabet.
pub fn validate_release(tag: &str) -> Result<()> {
    validate_name("release tag", tag)
}

/// A deployment id a pipeline passes (`--deployment-id`) names the
/// record's key: the same alphabet as release tags.
pub fn validate_deployment_id(id: &str) -> Result<()> {
    validate_name("deployment id", id)
}

fn validate_name(what: &str, tag: &str) -> Result<()> {
    let ok = !tag.is_empty()
        && tag.len() <= 64
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'))
        && !tag.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "{what} '{}' must be 1-64 characters of A-Z a-z 0-9 . _ - + (not starting with .)",
            tag.escape_debug()
        )))
    }
}

impl DeploymentRecord {
    /// A new deployment; its id is the pipeline's (`--deployment-id`) or
    /// a fresh one.
    pub fn new(environment: &str, release: &str, on_failure: OnFailure, id: Option<&str>) -> Self {
        let now = chrono::Utc::now();
        DeploymentRecord {
            id: id.map_or_else(|| crate::snapshot::new_id(now), str::to_string),
            environment: environment.to_string(),
            release: release.to_string(),
            started_at: now,
            finished_at: None,
            state: DeployState::Running,
            on_failure,
            services: Vec::new(),
            steps: Vec::new(),
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            resumed: 0,
            superseded: None,
            attempts: Vec::new(),
            aliases: Vec::new(),
        }
    }

    pub fn key(&self) -> String {
        format!("{}/{FOLDER}/{}.json", self.environment, self.id)
    }

    pub fn step(&mut self, name: &str, started: Instant, result: std::result::Result<(), String>) {
        let (result, detail) = match result {
            Ok(()) => (StepResult::Ok, None),
            Err(d) => (StepResult::Failed, Some(crate::redact::redact(&d))),
        };
        self.steps.push(StepRecord {
            name: name.into(),
            result,
            duration_ms: started.elapsed().as_millis() as u64,
            detail,
        });
    }

    /// Records one engine's versions before and after the deployment. A
    /// resumed deployment keeps the version recorded first as `before`.
    pub fn add_versions(
        &mut self,
        service: &str,
        engine: EngineKind,
        before: Option<u64>,
        after: Option<u64>,
    ) {
        let entry = self.service_entry(service);
        match entry.engines.iter_mut().find(|e| e.engine == engine) {
            Some(known) => known.after = after,
            None => entry.engines.push(EngineVersions {
                engine,
                before,
                after,
            }),
        }
    }

    /// Records what a service's change is undone from; the first stays.
    pub fn add_undo(&mut self, service: &str, undo: &Undo) {
        let entry = self.service_entry(service);
        if entry.snapshot.is_some() || entry.restore_point.is_some() {
            return;
        }
        match undo {
            Undo::Snapshot(id) => entry.snapshot = Some(id.clone()),
            Undo::RestorePoint(id) => entry.restore_point = Some(id.clone()),
        }
    }

    /// What a service's change is undone from, if it was taken already.
    pub fn undo_of(&self, service: &str) -> Option<Undo> {
        self.services
            .iter()
            .find(|s| s.service == service)
            .and_then(ServiceVersions::undo)
    }

    fn service_entry(&mut self, service: &str) -> &mut ServiceVersions {
        let at = match self.services.iter().position(|s| s.service == service) {
            Some(i) => i,
            None => {
                self.services.push(ServiceVersions {
                    service: service.to_string(),
                    engines: Vec::new(),
                    snapshot: None,
                    restore_point: None,
                    snapshot_pending: false,
                });
                self.services.len() - 1
            }
        };
        &mut self.services[at]
    }

    /// The version of every engine of every service the deployment
    /// touched, before or after it.
    pub fn versions(&self, moment: Moment) -> BTreeMap<(String, EngineKind), u64> {
        let mut out = BTreeMap::new();
        for s in &self.services {
            for e in &s.engines {
                let v = match moment {
                    Moment::Before => e.before,
                    Moment::After => e.after,
                };
                out.insert((s.service.clone(), e.engine), v.unwrap_or(0));
            }
        }
        out
    }

    pub async fn save(&self, storage: &dyn Storage) -> Result<()> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| Error::internal(format!("deployment record: {e}")))?;
        storage.put_bytes(&self.key(), &json).await
    }
}

/// The deployment record kept current while its pre-deploy migrates, so
/// that a kill between any two steps leaves a record from which a retry
/// or a rollback finds the right state: a service's versions and its
/// pre-deploy snapshot are saved before its first migration starts.
pub struct Journal<'a> {
    pub rec: &'a mut DeploymentRecord,
    pub storage: &'a dyn Storage,
}

impl Journal<'_> {
    /// Saved before a service changes: its versions now, and the snapshot
    /// to restore it from. Without this record saved nothing may change.
    /// `deferred`: the post-change snapshot waits for the deployment to
    /// succeed.
    pub async fn before_change(
        &mut self,
        service: &str,
        versions: &[(EngineKind, Option<u64>)],
        undo: &Undo,
        deferred: bool,
    ) -> Result<()> {
        for (engine, now) in versions {
            self.rec.add_versions(service, *engine, *now, *now);
        }
        self.rec.add_undo(service, undo);
        if deferred {
            self.rec.service_entry(service).snapshot_pending = true;
        }
        self.rec.save(self.storage).await
    }

    /// Saved after an engine's migrations ran; a failure to save is only
    /// logged, since `before_change` already recorded the way back.
    pub async fn changed(&mut self, service: &str, engine: EngineKind, now: Option<u64>) {
        self.rec.add_versions(service, engine, now, now);
        if let Err(e) = self.rec.save(self.storage).await {
            tracing::warn!("saving the deployment record failed: {e}");
        }
    }
}

/// Every deployment record of an environment, oldest first.
pub async fn list(storage: &dyn Storage, environment: &str) -> Result<Vec<DeploymentRecord>> {
    let mut out = Vec::new();
    for o in storage.list(&format!("{environment}/{FOLDER}/")).await? {
        if !o.key.ends_with(".json") || o.key.rsplit('/').next().is_some_and(|n| n.starts_with('.'))
        {
            continue;
        }
        let bytes = storage.get_bytes(&o.key, 16 << 20).await?;
        match serde_json::from_slice::<DeploymentRecord>(&bytes) {
            Ok(r) => out.push(r),
            Err(e) => tracing::warn!("ignoring deployment record {}: {e}", o.key),
        }
    }
    // Oldest first by start: ids a pipeline chose do not sort by time.
    out.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
    Ok(out)
}

/// The deployment of an environment that has not ended, if any: at most
/// one is open at a time.
pub fn open_deployment(records: &[DeploymentRecord]) -> Option<&DeploymentRecord> {
    records.iter().rev().find(|r| !r.state.is_final())
}

/// The versions a release was deployed with (its newest successful
/// deployment), per service and engine.
pub async fn release_versions(
    storage: &dyn Storage,
    environment: &str,
    release: &str,
) -> Result<BTreeMap<(String, EngineKind), u64>> {
    validate_release(release)?;
    let records = list(storage, environment).await?;
    let rec = records
        .into_iter()
        .rev()
        .find(|r| r.release == release && r.state == DeployState::Succeeded)
        .ok_or_else(|| {
            Error::usage_hint(
                format!(
                    "no successful deployment of release {release} in environment {environment}"
                ),
                format!(
                    "`valero-db releases` lists the deployments; a release deployed before valero-db \
                     is recorded with `valero-db baseline --release {release}` while the databases are at its versions"
                ),
            )
        })?;
    Ok(rec.versions(Moment::After))
}

/// Before or after a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    Before,
    After,
}

/// How a command run by valero-db ended.
#[derive(Debug)]
pub enum RunEnd {
    Exited(i32),
    Signalled(String),
    TimedOut,
    Interrupted,
}

impl RunEnd {
    pub fn describe(&self) -> String {
        match self {
            RunEnd::Exited(c) => format!("exited with {c}"),
            RunEnd::Signalled(s) => format!("killed by {s}"),
            RunEnd::TimedOut => "timed out".into(),
            RunEnd::Interrupted => "interrupted (SIGINT/SIGTERM forwarded)".into(),
        }
    }
}

/// Runs a command (argv, or `sh -c` for a string) with the deployment's
/// variables. Its stdout goes to our stderr so that stdout holds only
/// valero-db's result. SIGINT and SIGTERM are forwarded; `timeout` kills it.
pub async fn run_command(
    argv: &[String],
    env: &[(&str, String)],
    timeout: Option<Duration>,
) -> Result<RunEnd> {
    let Some((program, args)) = argv.split_first() else {
        return Err(Error::usage("empty command"));
    };
    let stdout_to_stderr = std::io::stderr()
        .as_fd()
        .try_clone_to_owned()
        .map(Stdio::from)
        .unwrap_or_else(|_| Stdio::inherit());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(stdout_to_stderr)
        .stderr(Stdio::inherit())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::usage(format!("cannot run {program}: {e}")))?;
    let pid = child.id().map(|p| p as i32);
    let forward = |sig: i32| {
        if let Some(pid) = pid {
            // SAFETY: kill(2) on the pid of a child we spawned and still own.
            unsafe {
                libc::kill(pid, sig);
            }
        }
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::internal(format!("signal handler: {e}")))?;
    let deadline = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending::<()>().await,
        }
    };
    tokio::pin!(deadline);
    let end = tokio::select! {
        status = child.wait() => {
            let status = status.map_err(|e| Error::internal(format!("waiting for {program}: {e}")))?;
            return Ok(exit_of(status));
        }
        _ = &mut deadline => RunEnd::TimedOut,
        _ = tokio::signal::ctrl_c() => { forward(libc::SIGINT); RunEnd::Interrupted }
        _ = term.recv() => { forward(libc::SIGTERM); RunEnd::Interrupted }
    };
    if matches!(end, RunEnd::TimedOut) {
        forward(libc::SIGTERM);
    }
    // Give it a grace period to stop on its own, then kill it.
    if tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .is_err()
    {
        let _ = child.kill().await;
    }
    Ok(end)
}

fn exit_of(status: std::process::ExitStatus) -> RunEnd {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => RunEnd::Exited(c),
        (None, Some(s)) => RunEnd::Signalled(format!("signal {s}")),
        _ => RunEnd::Exited(-1),
    }
}

/// `sh -c CMD` as argv.
pub fn shell(cmd: &str) -> Vec<String> {
    vec!["sh".into(), "-c".into(), cmd.into()]
}
