//! One pre-deploy (or `deploy`) of an environment at a time. Opening or
//! resuming a deployment reads the environment's records and writes one;
//! two pipeline runs doing it at once would both pass and overwrite each
//! other's record. The run therefore holds a session advisory lock in the
//! database of the environment's first PostgreSQL service (by name, so every
//! run picks the same one; keyed by environment and that service's schema,
//! so other projects on the same database are not held up) from before it
//! opens the deployment until it ends: a second run waits for it (up to `--lock-timeout`) and then sees
//! the first one's record; a killed run's lock goes with its session, so a
//! retry never waits for a dead holder.

use std::time::{Duration, Instant};

use crate::config::{Service, StatementLocks};
use crate::engine::postgres::PostgresEngine;
use crate::error::{Error, Result};

/// The held lock (none when the environment has no PostgreSQL service:
/// then nothing serializes its runs, and the log says so).
pub struct DeploymentLock {
    _session: Option<PostgresEngine>,
}

impl DeploymentLock {
    /// Waits up to `wait` for the lock of `environment`.
    pub async fn take(
        services: &[Service],
        environment: &str,
        wait: Duration,
        locks: StatementLocks,
    ) -> Result<DeploymentLock> {
        let mut by_name: Vec<&Service> = services.iter().filter(|s| s.postgres.is_some()).collect();
        by_name.sort_by(|a, b| a.name.cmp(&b.name));
        let Some(service) = by_name.first() else {
            tracing::warn!(
                "environment {environment} has no PostgreSQL service: concurrent pre-deploys are not serialized"
            );
            return Ok(DeploymentLock { _session: None });
        };
        let Some(target) = service.postgres.as_ref() else {
            return Ok(DeploymentLock { _session: None });
        };
        let key = format!("{environment} {}", target.schema);
        let mut session = PostgresEngine::connect(&service.name, target, locks).await?;
        let started = Instant::now();
        let mut told = false;
        while !session.try_deployment_lock(&key).await? {
            if started.elapsed() >= wait {
                return Err(Error::LockTimeout {
                    service: service.name.clone(),
                    engine: "deployment".into(),
                    timeout: crate::units::format_duration(wait),
                    holder: format!(
                        "another pre-deploy or deploy of environment {environment} ({})",
                        session
                            .deployment_lock_holder(environment)
                            .await?
                            .unwrap_or_else(|| "gone since".into())
                    ),
                });
            }
            if !told {
                tracing::info!(
                    "waiting for another pre-deploy of environment {environment} to end"
                );
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(DeploymentLock {
            _session: Some(session),
        })
    }
}
