//! The engine seam: the trait every database engine implements (history,
//! lock, apply, snapshot, restore), and the facts passed across it.

use async_trait::async_trait;

use crate::capture::{Lag, ReplayPlan};
use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::migrate::files::{Migration, Script};
use crate::migrate::plan::AppliedMigration;
use crate::restore::{Conduct, RestoreStats};
use crate::snapshot::manifest::EngineInfo;
use crate::snapshot::{Found, SnapshotWriter};
use crate::storage::Storage;

/// Facts recorded with each history row.
#[derive(Debug, Clone)]
pub struct RunMeta {
    pub applied_by: String,
    pub release: Option<String>,
}

/// What `repair` does with a dirty row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RepairAction {
    /// The operator finished the migration by hand.
    MarkApplied,
    /// The operator undid it by hand; it runs again next time.
    MarkPending,
}

/// One service's database in one engine. Every method that changes the
/// database is only called while the lock is held.
#[async_trait]
pub trait Engine: Send {
    fn kind(&self) -> EngineKind;

    /// The service this engine belongs to.
    fn service(&self) -> &str;

    /// Reads the history; an absent history table means nothing is applied.
    /// Never changes anything.
    async fn history(&mut self) -> Result<Vec<AppliedMigration>>;

    /// Creates the schema and the history table or collection if missing.
    async fn prepare(&mut self) -> Result<()>;

    /// One attempt to take the per-service migration lock.
    async fn try_lock(&mut self) -> Result<bool>;

    /// Who holds the lock, for operators: host, pid, since.
    async fn lock_holder(&mut self) -> Result<Option<String>>;

    async fn unlock(&mut self) -> Result<()>;

    /// Runs the up script and records it in the history.
    async fn apply_up(&mut self, migration: &Migration, meta: &RunMeta) -> Result<()>;

    /// Runs the down script and removes the history row.
    async fn apply_down(&mut self, migration: &Migration, down: &Script) -> Result<()>;

    /// Records migrations as applied without running them.
    async fn baseline(&mut self, migrations: &[&Migration], meta: &RunMeta) -> Result<()>;

    /// Clears the dirty mark of a version.
    async fn repair(&mut self, version: u64, action: RepairAction) -> Result<()>;

    /// Restore, phase one: load the snapshot without making it visible
    /// (PostgreSQL: an open transaction; MongoDB: temporary collections).
    async fn restore_prepare(
        &mut self,
        _storage: &dyn Storage,
        _found: &Found,
        _replay: Option<&ReplayPlan>,
        _conduct: &Conduct,
    ) -> Result<RestoreStats> {
        Err(Error::internal(format!(
            "restore of {} is not supported",
            self.kind()
        )))
    }

    /// Restore, phase two: make the loaded state the current one.
    async fn restore_commit(&mut self) -> Result<()> {
        Ok(())
    }

    /// Drops what `restore_prepare` loaded; the old state stays.
    async fn restore_abort(&mut self) {}

    /// Finishes or undoes an interrupted restore; called before any work.
    async fn recover(&mut self) -> Result<()> {
        Ok(())
    }

    /// What `recover` would do, read without changing anything (dry runs);
    /// None when nothing is pending.
    async fn pending_recovery(&mut self) -> Result<Option<String>> {
        Ok(None)
    }

    /// Continuous capture's state here (lag, WAL kept), or None when the
    /// service is not captured; read through this engine's own session.
    async fn capture_lag(&mut self, _storage: &dyn Storage, _env: &str) -> Option<Lag> {
        None
    }

    /// Whether a snapshot could be taken here now (its tools can read this
    /// server): checked before a change whose way back is a restore point,
    /// so the snapshots after it cannot fail for a reason known up front.
    async fn check_snapshot_tools(&mut self) -> Result<()> {
        Ok(())
    }

    /// Writes a consistent snapshot of everything the service owns here.
    async fn snapshot(&mut self, _out: &mut SnapshotWriter<'_>) -> Result<EngineInfo> {
        Err(Error::internal(format!(
            "snapshots of {} are not supported",
            self.kind()
        )))
    }
}

/// `user@host`, recorded as `applied_by`.
pub fn identity() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("USERNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("{user}@{}", hostname())
}

pub fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown-host".into())
}

pub(crate) fn failed(
    service: &str,
    engine: EngineKind,
    file: &std::path::Path,
    message: impl Into<String>,
    hint: Option<String>,
) -> Error {
    Error::MigrationFailed {
        service: service.to_string(),
        engine: engine.name().to_string(),
        file: crate::migrate::files::file_name(file),
        message: crate::redact::redact(&message.into()),
        hint,
    }
}
