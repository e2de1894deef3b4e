//! `valero-db status [--check]`: per service and engine the current
//! version, pending migrations, drift, dirty state and lock holder.

use serde::Serialize;
use serde_json::json;

use crate::commands::Context;
use crate::config::Service;
use crate::engine::{connect_service, EngineKind};
use crate::error::{Error, Result};
use crate::migrate::plan::{analyze, Drift};
use crate::migrate::runner::discover_service;
use crate::output::{error_json, table, Outcome};

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
    pub newest_snapshot: Option<serde_json::Value>,
    /// Continuous capture (PostgreSQL): lag and WAL kept by the slot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capture: Option<crate::capture::postgres::Lag>,
    pub ready: bool,
    pub error: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct DirtyInfo {
    pub version: u64,
    pub description: String,
    pub detail: Option<String>,
}

pub async fn run(ctx: &Context, check: bool) -> Outcome {
    let services = match ctx.services() {
        Ok(s) => s,
        Err(e) => return Outcome::failed(e),
    };
    let root = match ctx.config.migrations_dir() {
        Ok(r) => r,
        Err(e) => return Outcome::failed(e),
    };
    // Storage trouble is reported, not fatal: status is about databases.
    let storage = crate::storage::open(&ctx.env)
        .await
        .inspect_err(|e| tracing::warn!("snapshot storage: {e}"))
        .ok();
    let capture = storage.as_deref().map(|s| (s, ctx.env.name.as_str()));
    let mut rows = Vec::new();
    let mut first_error: Option<Error> = None;
    for service in &services {
        match service_status(&root, service, capture).await {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                for kind in engines_of(service) {
                    let lag = match capture {
                        Some((storage, env)) => {
                            crate::capture::lag_without_database(storage, env, &service.name, kind)
                                .await
                        }
                        None => None,
                    };
                    rows.push(EngineStatus {
                        service: service.name.clone(),
                        engine: kind,
                        current_version: None,
                        pending: vec![],
                        drift: vec![],
                        dirty: None,
                        out_of_order: vec![],
                        missing_files: vec![],
                        lock_holder: None,
                        newest_snapshot: None,
                        capture: lag,
                        ready: false,
                        error: Some(error_json(&e)),
                    });
                }
                // Unreachable databases outrank "not ready".
                if first_error.as_ref().is_none_or(|f| f.exit_code() == 9) {
                    first_error = Some(e);
                }
            }
        }
    }
    // Newest snapshot per service.
    if let Some(storage) = &storage {
        for service in &services {
            let newest = match crate::snapshot::list_service(storage.as_ref(), &ctx.env.name, &service.name).await {
                Ok((found, _)) => found.last().map(|f| {
                    json!({"id": f.manifest.id, "consistent_at": f.manifest.consistent_at, "reason": f.manifest.reason})
                }),
                Err(e) => {
                    tracing::warn!("listing snapshots of {}: {e}", service.name);
                    None
                }
            };
            for r in rows.iter_mut().filter(|r| r.service == service.name) {
                r.newest_snapshot = newest.clone();
            }
        }
    }
    let ready = rows.iter().all(|r| r.ready);
    if check && !ready && first_error.is_none() {
        let names: Vec<String> = rows
            .iter()
            .filter(|r| !r.ready)
            .map(|r| format!("{} ({})", r.service, r.engine))
            .collect();
        first_error = Some(Error::NotReady {
            message: format!("not ready: {}", names.join(", ")),
        });
    }
    let report = json!({
        "command": "status",
        "environment": ctx.env.name,
        "ready": ready,
        "services": rows,
    });
    Outcome::ok(report, render(&rows)).with_error(first_error)
}

pub(crate) fn engines_of(service: &Service) -> Vec<EngineKind> {
    let mut out = Vec::new();
    if service.postgres.is_some() {
        out.push(EngineKind::Postgres);
    }
    if service.mongodb.is_some() {
        out.push(EngineKind::Mongodb);
    }
    out
}

/// Every engine of a service: versions, pending, drift, dirty, lock; with
/// `capture` (storage, environment) also capture lag, read through the same
/// sessions.
pub async fn service_status(
    root: &std::path::Path,
    service: &Service,
    capture: Option<(&dyn crate::storage::Storage, &str)>,
) -> Result<Vec<EngineStatus>> {
    let mut local = discover_service(root, service)?;
    let mut engines = connect_service(service).await?;
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

fn render(rows: &[EngineStatus]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let state = if r.error.is_some() {
                "unreachable".to_string()
            } else if let Some(d) = &r.dirty {
                format!("DIRTY at {}", d.version)
            } else if !r.drift.is_empty() {
                format!(
                    "DRIFT in {}",
                    r.drift
                        .iter()
                        .map(|d| d.file.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            } else if !r.out_of_order.is_empty() {
                "OUT OF ORDER".to_string()
            } else if !r.pending.is_empty() {
                "pending".to_string()
            } else {
                "up to date".to_string()
            };
            vec![
                r.service.clone(),
                r.engine.to_string(),
                r.current_version
                    .map(|v| v.to_string())
                    .unwrap_or_else(|| "-".into()),
                r.pending.len().to_string(),
                state,
                r.lock_holder.clone().unwrap_or_else(|| "-".into()),
                r.newest_snapshot
                    .as_ref()
                    .and_then(|s| s["id"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "-".into()),
                r.capture
                    .as_ref()
                    .map(|c| match c.lag_seconds {
                        Some(s) => format!("{s}s behind"),
                        None => "slot, nothing shipped".into(),
                    })
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "SERVICE",
            "ENGINE",
            "VERSION",
            "PENDING",
            "STATE",
            "LOCK",
            "NEWEST SNAPSHOT",
            "CAPTURE",
        ],
        &cells,
    );
    for r in rows {
        if let Some(e) = &r.error {
            out.push_str(&format!(
                "{} ({}): {}\n",
                r.service,
                r.engine,
                e["message"].as_str().unwrap_or("error")
            ));
        }
        if let Some(d) = &r.dirty {
            out.push_str(&format!(
                "{} ({}): version {} ({}) is dirty: {}\n",
                r.service,
                r.engine,
                d.version,
                d.description,
                d.detail.as_deref().unwrap_or("interrupted")
            ));
        }
        if !r.missing_files.is_empty() {
            out.push_str(&format!(
                "{} ({}): applied versions without a file: {:?}\n",
                r.service, r.engine, r.missing_files
            ));
        }
    }
    out
}
