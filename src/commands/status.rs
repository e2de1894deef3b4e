//! `valero-db status [--check]`: per service and engine the current
//! version, pending migrations, drift, dirty state and lock holder.

use serde_json::json;

use crate::context::Context;
use crate::error::Error;
use crate::output::{error_json, table, Outcome};
use crate::service::status::{service_status, EngineStatus, NewestSnapshot};
use crate::snapshot;

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
                for kind in service.engines() {
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
            let newest =
                match snapshot::newest(storage.as_ref(), &ctx.env.name, &service.name).await {
                    Ok(found) => found.map(|f| NewestSnapshot {
                        id: f.manifest.id,
                        consistent_at: f.manifest.consistent_at,
                        reason: f.manifest.reason,
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
                    .map(|s| s.id.clone())
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
