//! `--metrics-file PATH`: the exposition (the Prometheus project's
//! `prometheus-client` registry and text encoder), written atomically after
//! any command, for node_exporter's textfile collector. Values come from
//! storage (snapshots, deployment records) and the databases (versions), so
//! every run writes the full picture, whatever the command was.

pub mod listen;
pub mod push;

pub use push::push;

use std::path::Path;
use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::family::Family as LabeledFamily;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::config::Service;
use crate::context::Context;
use crate::deploy::DeployState;
use crate::error::{Error, Result};
use crate::service::status::service_status;
use crate::storage::Storage;

/// A label value as the text format spells it: the client's encoder
/// writes values as they are given.
fn escaped(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A gauge per label set, as the Prometheus project's client keeps it.
type Gauges = LabeledFamily<Vec<(String, String)>, Gauge<f64, AtomicU64>>;

struct Family {
    name: &'static str,
    help: &'static str,
    gauges: Gauges,
}

impl Family {
    fn new(name: &'static str, help: &'static str) -> Self {
        Family {
            name,
            help,
            gauges: Gauges::default(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: f64) {
        let labels: Vec<(String, String)> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), escaped(v)))
            .collect();
        self.gauges.get_or_create(&labels).set(value);
    }
}

/// Every gauge valero-db exports, filled per service, then rendered.
struct Families {
    snap_time: Family,
    snap_size: Family,
    snap_duration: Family,
    restore_time: Family,
    version: Family,
    pending: Family,
    drift: Family,
    dirty: Family,
    up: Family,
    deploy_result: Family,
    deploy_time: Family,
    capture_lag: Family,
    capture_covered: Family,
    capture_wal: Family,
}

impl Families {
    fn new() -> Families {
        Families {
            snap_time: Family::new(
                "valero_db_snapshot_last_success_timestamp_seconds",
                "Consistent point of the newest complete snapshot.",
            ),
            snap_size: Family::new(
                "valero_db_snapshot_last_size_bytes",
                "Stored size of the newest complete snapshot.",
            ),
            snap_duration: Family::new(
                "valero_db_snapshot_last_duration_seconds",
                "How long the newest snapshot took.",
            ),
            restore_time: Family::new(
                "valero_db_restore_last_timestamp_seconds",
                "When the last restore started (its pre-restore snapshot).",
            ),
            version: Family::new(
                "valero_db_schema_version",
                "Highest applied migration version.",
            ),
            pending: Family::new(
                "valero_db_pending_migrations",
                "Migrations not yet applied.",
            ),
            drift: Family::new("valero_db_drift", "1 if an applied migration file changed."),
            dirty: Family::new("valero_db_dirty", "1 if a migration did not complete."),
            up: Family::new(
                "valero_db_database_up",
                "1 if the service's databases were reachable.",
            ),
            deploy_result: Family::new(
                "valero_db_deploy_last_success",
                "1 if the last deployment succeeded, 0 if it failed or was rolled back.",
            ),
            deploy_time: Family::new(
                "valero_db_deploy_last_timestamp_seconds",
                "When the last deployment started.",
            ),
            capture_lag: Family::new(
                "valero_db_capture_lag_seconds",
                "Seconds since the newest time up to which every change is captured.",
            ),
            capture_covered: Family::new(
                "valero_db_capture_covered_timestamp_seconds",
                "The newest time up to which every change is captured (alert on time() minus it: it ages between scrapes, and vanishes with the capture).",
            ),
            capture_wal: Family::new(
                "valero_db_capture_retained_wal_bytes",
                "WAL the service's replication slot keeps on the PostgreSQL server.",
            ),
        }
    }

    /// Newest snapshot and last restore of one service.
    async fn snapshots(&mut self, storage: &dyn Storage, env: &str, s: &str) {
        let Ok((found, _)) = crate::snapshot::list_service(storage, env, s).await else {
            return;
        };
        let labels = [("env", env), ("service", s)];
        if let Some(newest) = found.last() {
            self.snap_time
                .add(&labels, newest.manifest.consistent_at.timestamp() as f64);
            self.snap_size
                .add(&labels, newest.manifest.total_size() as f64);
            if let Some(ms) = newest.manifest.duration_ms {
                self.snap_duration.add(&labels, ms as f64 / 1000.0);
            }
        }
        let pre_restore = found
            .iter()
            .rev()
            .find(|f| f.manifest.reason == "pre-restore");
        if let Some(pre) = pre_restore {
            self.restore_time
                .add(&labels, pre.manifest.created_at.timestamp() as f64);
        }
    }

    /// Versions, pending, drift, dirty and capture lag of one service; a
    /// service whose databases are unreachable is down, and only what the
    /// storage alone says of its capture is shown.
    async fn status(&mut self, root: &Path, storage: &dyn Storage, env: &str, service: &Service) {
        let s = service.name.as_str();
        let mut lags = Vec::new();
        match service_status(root, service, Some((storage, env))).await {
            Ok(rows) => {
                self.up.add(&[("env", env), ("service", s)], 1.0);
                for r in rows {
                    let labels = [("env", env), ("service", s), ("engine", r.engine.name())];
                    self.version
                        .add(&labels, r.current_version.unwrap_or(0) as f64);
                    self.pending.add(&labels, r.pending.len() as f64);
                    self.drift
                        .add(&labels, if r.drift.is_empty() { 0.0 } else { 1.0 });
                    self.dirty
                        .add(&labels, if r.dirty.is_some() { 1.0 } else { 0.0 });
                    lags.extend(r.capture.map(|l| (r.engine, l)));
                }
            }
            Err(_) => {
                self.up.add(&[("env", env), ("service", s)], 0.0);
                for engine in service.engines() {
                    let lag = crate::capture::lag_without_database(storage, env, s, engine);
                    lags.extend(lag.await.map(|l| (engine, l)));
                }
            }
        }
        for (engine, lag) in lags {
            let labels = [("env", env), ("service", s), ("engine", engine.name())];
            if let Some(l) = lag.lag_seconds {
                self.capture_lag.add(&labels, l as f64);
            }
            if let Some(c) = lag.covered_until {
                self.capture_covered
                    .add(&labels, c.timestamp_millis() as f64 / 1000.0);
            }
            if let Some(b) = lag.retained_wal_bytes {
                self.capture_wal.add(&labels, b as f64);
            }
        }
    }

    /// How the environment's last finished deployment ended.
    async fn deployments(&mut self, storage: &dyn Storage, env: &str) {
        let Ok(records) = crate::deploy::list(storage, env).await else {
            return;
        };
        if let Some(last) = records.iter().rev().find(|r| r.state.is_final()) {
            let labels = [("env", env), ("release", last.release.as_str())];
            let ok = last.state == DeployState::Succeeded;
            self.deploy_result.add(&labels, if ok { 1.0 } else { 0.0 });
            self.deploy_time
                .add(&labels, last.started_at.timestamp() as f64);
        }
    }

    /// The exposition of every family (OpenMetrics text, which
    /// Prometheus, the Pushgateway and node_exporter's textfile collector
    /// read).
    fn render(self) -> String {
        let mut registry = Registry::default();
        for f in [
            self.snap_time,
            self.snap_size,
            self.snap_duration,
            self.restore_time,
            self.version,
            self.pending,
            self.drift,
            self.dirty,
            self.up,
            self.deploy_result,
            self.deploy_time,
            self.capture_lag,
            self.capture_covered,
            self.capture_wal,
        ] {
            // The encoder ends every help text with a full stop.
            registry.register(f.name, f.help.trim_end_matches('.'), f.gauges);
        }
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

pub async fn render(ctx: &Context) -> Result<String> {
    let env = ctx.env.name.as_str();
    let storage = crate::storage::open(&ctx.env).await?;
    let root = ctx.config.migrations_dir()?;
    let mut families = Families::new();
    for service in ctx.services()? {
        families
            .snapshots(storage.as_ref(), env, &service.name)
            .await;
        families
            .status(&root, storage.as_ref(), env, &service)
            .await;
    }
    families.deployments(storage.as_ref(), env).await;
    Ok(families.render())
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

/// The exposition with every registered secret replaced, as it leaves
/// the process (pushed or served).
pub async fn redacted(ctx: &Context) -> Result<String> {
    Ok(crate::redact::redact(&render(ctx).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_render_with_help_type_labels_and_escaped_values() {
        let mut f = Families::new();
        f.up.add(&[("env", "prod"), ("service", "fibu")], 1.0);
        f.deploy_result
            .add(&[("env", "prod"), ("release", "v1 \"quoted\" \\ x")], 0.0);
        let text = f.render();
        assert!(
            text.contains(
                "# HELP valero_db_database_up 1 if the service's databases were reachable.\n"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE valero_db_database_up gauge\n"),
            "{text}"
        );
        assert!(
            text.contains("valero_db_database_up{env=\"prod\",service=\"fibu\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("release=\"v1 \\\"quoted\\\" \\\\ x\"}"),
            "{text}"
        );
    }
}
