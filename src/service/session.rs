//! The locked service session shared by `migrate`, `rollback`, `baseline`,
//! `repair`, dry runs, snapshots, restores and deploy: connects a service's
//! engines, takes their locks, checks history against the files, and
//! applies plans.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::config::EngineKind;
use crate::config::{Service, StatementLocks};
use crate::engine::{connect_service, Engine, RunMeta};
use crate::error::{Error, Result};
use crate::migrate::files::{self, Migration};
use crate::migrate::plan::{analyze, Analysis, AppliedMigration};
use crate::units::format_duration;

/// One engine of a locked service, with its migration files.
pub struct LockedEngine {
    pub engine: Box<dyn Engine>,
    pub local: Vec<Migration>,
}

/// A service whose engines are connected and locked — or, for a dry run,
/// connected only: a dry run writes nothing, not even a lease.
pub struct LockedService {
    pub service: Service,
    pub engines: Vec<LockedEngine>,
    /// What a dry run found instead of acting: locks held by others,
    /// interrupted restores the next real run would recover.
    pub notes: Vec<String>,
    locked: bool,
}

/// Reads the migration files of every engine a service has.
pub fn discover_service(
    root: &Path,
    service: &Service,
) -> Result<Vec<(EngineKind, Vec<Migration>)>> {
    service
        .engines()
        .into_iter()
        .map(|kind| Ok((kind, files::discover(root, &service.name, kind)?)))
        .collect()
}

/// Pairs each connected engine with its migration files.
fn with_files(
    connected: Vec<Box<dyn Engine>>,
    mut local: Vec<(EngineKind, Vec<Migration>)>,
) -> Vec<LockedEngine> {
    connected
        .into_iter()
        .map(|engine| {
            let idx = local.iter().position(|(k, _)| *k == engine.kind());
            let files = idx.map(|i| local.swap_remove(i).1).unwrap_or_default();
            LockedEngine {
                engine,
                local: files,
            }
        })
        .collect()
}

/// How long a run waits for others: for the service's own lock
/// (`--lock-timeout`, another valero-db run), and in migration statements
/// for the application's locks (the environment's `migration_lock_*`).
#[derive(Debug, Clone, Copy)]
pub struct Waits {
    pub run_lock: Duration,
    pub statements: StatementLocks,
}

/// Waiting for a lock: polls every 250 ms up to `--lock-timeout`, the same
/// for migration locks, capture locks and leases.
pub struct LockWait {
    timeout: Duration,
    deadline: Instant,
}

impl LockWait {
    pub fn new(timeout: Duration) -> LockWait {
        LockWait {
            timeout,
            deadline: Instant::now() + timeout,
        }
    }

    /// Sleeps until the next attempt; false once the time is up.
    pub async fn pause(&self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep((self.deadline - now).min(Duration::from_millis(250))).await;
        true
    }

    pub fn timed_out(&self, service: &str, engine: EngineKind, holder: String) -> Error {
        Error::LockTimeout {
            service: service.to_string(),
            engine: engine.to_string(),
            timeout: format_duration(self.timeout),
            holder,
        }
    }
}

/// Waits for the lock, naming the holder once, up to `timeout`.
pub async fn acquire(engine: &mut dyn Engine, timeout: Duration) -> Result<()> {
    let wait = LockWait::new(timeout);
    let mut announced = false;
    while !engine.try_lock().await? {
        let holder = engine
            .lock_holder()
            .await?
            .unwrap_or_else(|| "another valero-db run".into());
        if !announced {
            tracing::warn!(
                "service {} ({}) is locked by {holder}; waiting up to {}",
                engine.service(),
                engine.kind(),
                format_duration(timeout)
            );
            announced = true;
        }
        if !wait.pause().await {
            return Err(wait.timed_out(engine.service(), engine.kind(), holder));
        }
    }
    Ok(())
}

impl LockedService {
    /// Connects every engine of the service and takes all of their locks;
    /// on any failure the locks already taken are released.
    pub async fn open(
        service: &Service,
        local: Vec<(EngineKind, Vec<Migration>)>,
        waits: Waits,
    ) -> Result<LockedService> {
        let unlocked = with_files(connect_service(service, waits.statements).await?, local);
        let mut locked = LockedService {
            service: service.clone(),
            engines: Vec::new(),
            notes: Vec::new(),
            locked: true,
        };
        for mut part in unlocked {
            if let Err(e) = acquire(part.engine.as_mut(), waits.run_lock).await {
                locked.release().await;
                return Err(e);
            }
            locked.engines.push(part);
        }
        // An interrupted restore is finished or undone before anything else.
        for i in 0..locked.engines.len() {
            if let Err(e) = locked.engines[i].engine.recover().await {
                locked.release().await;
                return Err(e);
            }
        }
        Ok(locked)
    }

    /// Connects every engine without locking or recovering anything (dry
    /// runs): who holds a lock and what recovery is pending become notes.
    pub async fn open_read_only(
        service: &Service,
        local: Vec<(EngineKind, Vec<Migration>)>,
    ) -> Result<LockedService> {
        let mut session = LockedService {
            service: service.clone(),
            engines: with_files(
                connect_service(service, StatementLocks::default()).await?,
                local,
            ),
            notes: Vec::new(),
            locked: false,
        };
        for part in session.engines.iter_mut() {
            let kind = part.engine.kind();
            if let Some(holder) = part.engine.lock_holder().await? {
                session.notes.push(format!(
                    "{} ({kind}) is locked by {holder}; a real run waits for it up to --lock-timeout",
                    service.name
                ));
            }
            if let Some(pending) = part.engine.pending_recovery().await? {
                session
                    .notes
                    .push(format!("{} ({kind}): {pending}", service.name));
            }
        }
        Ok(session)
    }

    /// Releases every lock; errors are logged, not raised, because the
    /// database releases a dead session's lock (PostgreSQL) or the lease
    /// expires (MongoDB) anyway.
    pub async fn release(&mut self) {
        if !self.locked {
            return;
        }
        for slot in &mut self.engines {
            if let Err(e) = slot.engine.unlock().await {
                tracing::warn!(
                    "releasing the lock of service {} ({}) failed: {e}",
                    self.service.name,
                    slot.engine.kind()
                );
            }
        }
    }
}

/// Refuses to work on a database whose history disagrees with the files.
pub fn ensure_consistent(service: &str, engine: EngineKind, analysis: &Analysis) -> Result<()> {
    if let Some(d) = &analysis.dirty {
        return Err(Error::Dirty {
            service: service.to_string(),
            engine: engine.to_string(),
            version: d.version,
            description: d.description.clone(),
            detail: d
                .detail
                .clone()
                .unwrap_or_else(|| "it was interrupted or failed".into()),
        });
    }
    if let Some(d) = analysis.drift.first() {
        let more = if analysis.drift.len() > 1 {
            format!(" (and {} more drifted files)", analysis.drift.len() - 1)
        } else {
            String::new()
        };
        return Err(Error::integrity(
            format!(
                "drift in service {service} ({engine}): {} was changed after it was applied: applied checksum {}, file checksum {}{more}",
                d.file, d.applied_checksum, d.file_checksum
            ),
            Some("an applied migration must not change: restore the file as it was applied (e.g. from version control) and put the change into a new migration (`valero-db new`)".into()),
        ));
    }
    if !analysis.out_of_order.is_empty() {
        let list: Vec<String> = analysis.out_of_order.iter().map(u64::to_string).collect();
        return Err(Error::integrity(
            format!(
                "service {service} ({engine}) has unapplied migrations older than its current version {}: {}",
                analysis.current.unwrap_or(0),
                list.join(", ")
            ),
            Some("give these migrations versions above the current one, or roll back first".into()),
        ));
    }
    Ok(())
}

/// Reads the history and checks it against the files.
pub async fn inspect(slot: &mut LockedEngine) -> Result<(Vec<AppliedMigration>, Analysis)> {
    let applied = slot.engine.history().await?;
    let analysis = analyze(&slot.local, &applied);
    Ok((applied, analysis))
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub version: u64,
    pub description: String,
    pub file: String,
    pub duration_ms: u64,
}

/// Applies the given versions in order; returns the steps that completed
/// and the error that stopped the run, if any.
pub async fn apply_up(
    slot: &mut LockedEngine,
    versions: &[u64],
    meta: &RunMeta,
) -> (Vec<Step>, Option<Error>) {
    let mut steps = Vec::new();
    if let Err(e) = slot.engine.prepare().await {
        return (steps, Some(e));
    }
    for v in versions {
        let Some(m) = slot.local.iter().find(|m| m.version == *v) else {
            continue;
        };
        tracing::info!(
            "{} {}: applying {}",
            slot.engine.service(),
            slot.engine.kind(),
            m.file_name()
        );
        let started = Instant::now();
        if let Err(e) = slot.engine.apply_up(m, meta).await {
            return (steps, Some(e));
        }
        steps.push(Step {
            version: m.version,
            description: m.description.clone(),
            file: m.file_name(),
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }
    (steps, None)
}

/// Runs down migrations for the given versions, newest first as given.
pub async fn apply_down(slot: &mut LockedEngine, versions: &[u64]) -> (Vec<Step>, Option<Error>) {
    let mut steps = Vec::new();
    for v in versions {
        let Some(m) = slot.local.iter().find(|m| m.version == *v) else {
            continue;
        };
        let Some(down) = &m.down else { continue };
        tracing::info!(
            "{} {}: reverting {}",
            slot.engine.service(),
            slot.engine.kind(),
            files::file_name(&down.path)
        );
        let started = Instant::now();
        if let Err(e) = slot.engine.apply_down(m, down).await {
            return (steps, Some(e));
        }
        steps.push(Step {
            version: m.version,
            description: m.description.clone(),
            file: files::file_name(&down.path),
            duration_ms: started.elapsed().as_millis() as u64,
        });
    }
    (steps, None)
}
