//! The status of one service: per engine its current version, pending
//! migrations, drift, dirty state, lock holder and capture lag, read
//! through one session per engine without taking the lock.

use serde::Serialize;

use crate::capture::Lag;
use crate::config::{EngineKind, Service};
use crate::engine::connect_service;
use crate::error::Result;
use crate::migrate::plan::{analyze, Drift};
use crate::service::session::discover_service;
use crate::storage::Storage;

#[derive(Debug, Serialize)]
pub struct EngineStatus {
    pub service: String,
    pub engine: EngineKind,
    pub current_version: Option<u64>,
    pub pending: Vec<u64>,
    pub drift: Vec<Drift>,
    pub dirty: Option<DirtyInfo>,
    pub out_of_order: Vec<u64>,
    pub missing_files: Vec<u64>,
    pub lock_holder: Option<String>,
    /// The service's newest complete snapshot in this environment.
    pub newest_snapshot: Option<NewestSnapshot>,
    /// Continuous capture (PostgreSQL): lag and WAL kept by the slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<Lag>,
    pub ready: bool,
    pub error: Option<serde_json::Value>,
}

/// Which snapshot a restore would start from today.
#[derive(Debug, Clone, Serialize)]
pub struct NewestSnapshot {
    pub id: String,
    pub consistent_at: chrono::DateTime<chrono::Utc>,
    pub reason: String,
}

#[derive(Debug, Serialize)]
pub struct DirtyInfo {
    pub version: u64,
    pub description: String,
    pub detail: Option<String>,
}

/// Every engine of a service: versions, pending, drift, dirty, lock; with
/// `capture` (storage, environment) also capture lag, read through the same
/// sessions.
pub async fn service_status(
    root: &std::path::Path,
    service: &Service,
    capture: Option<(&dyn Storage, &str)>,
) -> Result<Vec<EngineStatus>> {
    let mut local = discover_service(root, service)?;
    let mut engines = connect_service(service, crate::config::StatementLocks::default()).await?;
    let mut out = Vec::new();
    for engine in engines.iter_mut() {
        let files = local
            .iter()
            .position(|(k, _)| *k == engine.kind())
            .map(|i| local.swap_remove(i).1)
            .unwrap_or_default();
        let applied = engine.history().await?;
        let analysis = analyze(&files, &applied);
        let lock_holder = engine.lock_holder().await?;
        let lag = match capture {
            Some((storage, env)) => engine.capture_lag(storage, env).await,
            None => None,
        };
        out.push(EngineStatus {
            service: service.name.clone(),
            engine: engine.kind(),
            current_version: analysis.current,
            ready: analysis.is_clean(),
            pending: analysis.pending.clone(),
            drift: analysis.drift.clone(),
            dirty: analysis.dirty.as_ref().map(|d| DirtyInfo {
                version: d.version,
                description: d.description.clone(),
                detail: d.detail.clone(),
            }),
            out_of_order: analysis.out_of_order.clone(),
            missing_files: analysis.missing_files.clone(),
            lock_holder,
            newest_snapshot: None,
            capture: lag,
            error: None,
        });
    }
    Ok(out)
}
