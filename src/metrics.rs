//! `--metrics-file PATH`: Prometheus text format, written atomically after
//! any command, for node_exporter's textfile collector. Values come from
//! storage (snapshots, deployment records) and the databases (versions), so
//! every run writes the full picture, whatever the command was.

use std::fmt::Write as _;
use std::path::Path;

use crate::commands::status::{engines_of, service_status};
use crate::commands::Context;
use crate::error::{Error, Result};

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family {
    name: &'static str,
    help: &'static str,
    samples: Vec<(String, f64)>,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let l: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        self.samples.push((l.join(","), value));
    }
}

pub async fn render(ctx: &Context) -> Result<String> {
    let env = ctx.env.name.as_str();
    let mut snap_time = Family::new(
        "valero_db_snapshot_last_success_timestamp_seconds",
        "Consistent point of the newest complete snapshot.",
    );
    let mut snap_size = Family::new(
        "valero_db_snapshot_last_size_bytes",
        "Stored size of the newest complete snapshot.",
    );
    let mut snap_duration = Family::new(
        "valero_db_snapshot_last_duration_seconds",
        "How long the newest snapshot took.",
    );
    let mut restore_time = Family::new(
        "valero_db_restore_last_timestamp_seconds",
        "When the last restore started (its pre-restore snapshot).",
    );
    let mut version = Family::new(
        "valero_db_schema_version",
        "Highest applied migration version.",
    );
    let mut pending = Family::new(
        "valero_db_pending_migrations",
        "Migrations not yet applied.",
    );
    let mut drift = Family::new("valero_db_drift", "1 if an applied migration file changed.");
    let mut dirty = Family::new("valero_db_dirty", "1 if a migration did not complete.");
    let mut up = Family::new(
        "valero_db_database_up",
        "1 if the service's databases were reachable.",
    );
    let mut deploy_result = Family::new(
        "valero_db_deploy_last_success",
        "1 if the last deployment succeeded, 0 if it failed or was rolled back.",
    );
    let mut deploy_time = Family::new(
        "valero_db_deploy_last_timestamp_seconds",
        "When the last deployment started.",
    );

    let mut capture_lag = Family::new(
        "valero_db_capture_lag_seconds",
        "Seconds since the newest time up to which every change is captured.",
    );
    let mut capture_wal = Family::new(
        "valero_db_capture_retained_wal_bytes",
        "WAL the service's replication slot keeps on the PostgreSQL server.",
    );

    let storage = crate::storage::open(&ctx.env).await?;
    let root = ctx.config.migrations_dir()?;
    for service in ctx.services()? {
        let s = service.name.as_str();
        if let Ok((found, _)) = crate::snapshot::list_service(storage.as_ref(), env, s).await {
            if let Some(newest) = found.last() {
                let labels = [("env", env), ("service", s)];
                snap_time.add(&labels, newest.manifest.consistent_at.timestamp() as f64);
                snap_size.add(&labels, newest.manifest.total_size() as f64);
                if let Some(ms) = newest.manifest.duration_ms {
                    snap_duration.add(&labels, ms as f64 / 1000.0);
                }
            }
            if let Some(pre) = found
                .iter()
                .rev()
                .find(|f| f.manifest.reason == "pre-restore")
            {
                restore_time.add(
                    &[("env", env), ("service", s)],
                    pre.manifest.created_at.timestamp() as f64,
                );
            }
        }
        let lags = match service_status(&root, &service, Some((storage.as_ref(), env))).await {
            Ok(rows) => {
                up.add(&[("env", env), ("service", s)], 1.0);
                let mut lags = Vec::new();
                for r in rows {
                    let engine = r.engine.to_string();
                    let labels = [("env", env), ("service", s), ("engine", engine.as_str())];
                    version.add(&labels, r.current_version.unwrap_or(0) as f64);
                    pending.add(&labels, r.pending.len() as f64);
                    drift.add(&labels, if r.drift.is_empty() { 0.0 } else { 1.0 });
                    dirty.add(&labels, if r.dirty.is_some() { 1.0 } else { 0.0 });
                    lags.extend(r.capture.map(|l| (r.engine, l)));
                }
                lags
            }
            Err(_) => {
                up.add(&[("env", env), ("service", s)], 0.0);
                let mut lags = Vec::new();
                for engine in engines_of(&service) {
                    let lag =
                        crate::capture::lag_without_database(storage.as_ref(), env, s, engine);
                    lags.extend(lag.await.map(|l| (engine, l)));
                }
                lags
            }
        };
        for (engine, lag) in lags {
            let labels = [("env", env), ("service", s), ("engine", engine.name())];
            if let Some(l) = lag.lag_seconds {
                capture_lag.add(&labels, l as f64);
            }
            if let Some(b) = lag.retained_wal_bytes {
                capture_wal.add(&labels, b as f64);
            }
        }
    }
    if let Ok(records) = crate::deploy::list(storage.as_ref(), env).await {
        if let Some(last) = records
            .iter()
            .rev()
            .find(|r| r.state != "running" && r.state != "pre-deployed")
        {
            let labels = [("env", env), ("release", last.release.as_str())];
            deploy_result.add(&labels, if last.state == "succeeded" { 1.0 } else { 0.0 });
            deploy_time.add(&labels, last.started_at.timestamp() as f64);
        }
    }
    let mut out = String::new();
    for f in [
        snap_time,
        snap_size,
        snap_duration,
        restore_time,
        version,
        pending,
        drift,
        dirty,
        up,
        deploy_result,
        deploy_time,
        capture_lag,
        capture_wal,
    ] {
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} gauge", f.name);
        for (labels, value) in f.samples {
            let _ = writeln!(out, "{}{{{labels}}} {value}", f.name);
        }
    }
    Ok(out)
}

/// Writes to a temporary file beside `path` and renames it into place, so a
/// scraper never reads half a file.
pub async fn write(ctx: &Context, path: &Path) -> Result<()> {
    let text = render(ctx).await?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        std::process::id()
    ));
    std::fs::write(&tmp, crate::redact::redact(&text))
        .map_err(|e| Error::internal(format!("writing {}: {e}", tmp.display())))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::internal(format!("renaming to {}: {e}", path.display()))
    })
}

/// Pushes the same metrics to a Prometheus Pushgateway (`PUT
/// /metrics/job/valero-db/env/<env>`). Plain HTTP, as a Pushgateway next to
/// the cluster is usually reached; for HTTPS use the textfile collector.
pub async fn push(ctx: &Context, gateway: &str) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let url = url::Url::parse(gateway)
        .map_err(|e| Error::usage(format!("--pushgateway {gateway}: {e}")))?;
    if url.scheme() != "http" {
        return Err(Error::usage(format!(
            "--pushgateway supports http:// URLs, not {}",
            url.scheme()
        )));
    }
    let host = url
        .host_str()
        .ok_or_else(|| Error::usage("--pushgateway needs a host"))?
        .to_string();
    let port = url.port_or_known_default().unwrap_or(9091);
    let path = format!(
        "{}/metrics/job/valero-db/env/{}",
        url.path().trim_end_matches('/'),
        ctx.env.name
    );
    let body = crate::redact::redact(&render(ctx).await?);
    let what = format!("Pushgateway {host}:{port}");
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    .map_err(|_| Error::unreachable(&what, "connection timed out"))?
    .map_err(|e| Error::unreachable(&what, e))?;
    let request = format!(
        "PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| Error::unreachable(&what, e))?;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await;
    let status = String::from_utf8_lossy(&response)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string();
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if (200..300).contains(&code) {
        Ok(())
    } else {
        Err(Error::internal(format!("{what} answered '{status}'")))
    }
}
