//! Which deployment a hook or `deploy` works on, so that pipelines may
//! retry: a deployment is environment + release, or the pipeline's own
//! `--deployment-id`; at most one is open per environment. A retry attaches
//! to the open one (`resume`); a deployment that failed or was rolled back
//! starts a new attempt (a pipeline's re-run), one that has ended otherwise
//! is handed back as it ended (its result is repeated, nothing done
//! again); and another deployment waits unless the operator supersedes the
//! open one.

use std::time::Instant;

use super::{list, open_deployment, DeployState, DeploymentRecord, OnFailure, Supersession};
use crate::error::{Error, Result};
use crate::storage::Storage;

/// The deployment asked for.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    pub environment: &'a str,
    pub release: &'a str,
    /// The pipeline's id for it (`--deployment-id`).
    pub id: Option<&'a str>,
}

impl Wanted<'_> {
    /// A release tag and an id usable in storage keys and labels.
    pub fn validate(&self) -> Result<()> {
        super::validate_release(self.release)?;
        if let Some(id) = self.id {
            super::validate_deployment_id(id)?;
        }
        Ok(())
    }
}

/// The record to work on. With a pipeline's id: that deployment, resumed
/// while open, as it ended otherwise. Without: this release's open
/// deployment, resumed. Else a new one — after superseding another open
/// deployment when the operator said so, refused (exit 4) when not.
pub async fn open_or_resume(
    storage: &dyn Storage,
    w: &Wanted<'_>,
    on_failure: OnFailure,
    supersede_reason: Option<&str>,
) -> Result<DeploymentRecord> {
    let records = list(storage, w.environment).await?;
    let known = w.id.and_then(|id| records.iter().find(|r| r.named(id)));
    if let Some(known) = known {
        same_release(known, w.release)?;
        if !known.state.is_final() {
            return Ok(resume(known.clone()));
        }
        if !known.may_try_again() {
            return Ok(known.clone());
        }
    }
    let new = || match known {
        Some(ended) => {
            let next = ended.clone().next_attempt();
            tracing::warn!(
                "deployment {} of release {} ended {}: starting attempt {}",
                next.id,
                next.release,
                ended.state,
                next.attempts.len() + 1
            );
            next
        }
        None => DeploymentRecord::new(w.environment, w.release, on_failure, w.id),
    };
    let Some(open) = open_deployment(&records).cloned() else {
        return Ok(new());
    };
    if open.release == w.release {
        // The same release under another id (a new Helm revision of it,
        // after a killed pre-deploy): the open deployment, resumed, known
        // by both ids from now on.
        let mut open = open;
        if let Some(id) = w.id.filter(|id| !open.named(id)) {
            open.aliases.push(id.to_string());
        }
        return Ok(resume(open));
    }
    let Some(reason) = supersede_reason else {
        return Err(Error::DeploymentOpen {
            message: format!(
                "deployment {} of release {} is still open in environment {} ({}); release {} waits for it",
                open.id, open.release, w.environment, open.state, w.release
            ),
            hint: format!(
                "end it first: `valero-db hook post-deploy -e {} --deployment-id {} --release {} --result success|failure`, \
                 or pass --supersede \"REASON\" to close it without a rollback",
                w.environment, open.id, open.release
            ),
        });
    };
    supersede(storage, open, w.release, reason).await?;
    Ok(new())
}

/// A retried pre-deploy or deploy attaches to its open deployment: what is
/// done stays, the pre-deploy snapshots and versions are kept.
fn resume(mut rec: DeploymentRecord) -> DeploymentRecord {
    rec.resumed += 1;
    rec.state = DeployState::Running;
    rec.step("resume", Instant::now(), Ok(()));
    tracing::warn!(
        "resuming deployment {} of release {} (attempt {}): what is done stays, the pre-deploy snapshots are kept",
        rec.id,
        rec.release,
        rec.resumed + 1
    );
    rec
}

/// Closes an open deployment without a rollback, recording who and why.
async fn supersede(
    storage: &dyn Storage,
    mut old: DeploymentRecord,
    by_release: &str,
    reason: &str,
) -> Result<()> {
    let reason = crate::redact::redact(reason);
    old.state = DeployState::Superseded;
    old.finished_at = Some(chrono::Utc::now());
    old.superseded = Some(Supersession {
        by_release: by_release.to_string(),
        reason: reason.clone(),
        at: chrono::Utc::now(),
    });
    old.save(storage).await?;
    tracing::warn!(
        "deployment {} of release {} superseded by release {by_release}: {reason}",
        old.id,
        old.release
    );
    Ok(())
}

/// A deployment id names one release's deployment; another release under
/// the same id is a mistake in the pipeline (exit 2, nothing done).
fn same_release(rec: &DeploymentRecord, release: &str) -> Result<()> {
    if rec.release == release {
        return Ok(());
    }
    Err(Error::usage_hint(
        format!(
            "deployment {} is of release {}, not {release}",
            rec.id, rec.release
        ),
        "pass each release its own --deployment-id; `valero-db releases --output json` lists them",
    ))
}

/// The deployment a post-deploy closes: the one the pipeline's id names,
/// else the release's newest — open (also one whose pre-deploy was
/// killed), or ended, whose result is then repeated.
pub async fn to_close(storage: &dyn Storage, w: &Wanted<'_>) -> Result<DeploymentRecord> {
    let records = list(storage, w.environment).await?;
    let found = match w.id {
        Some(id) => records.into_iter().find(|r| r.named(id)),
        None => records.into_iter().rev().find(|r| r.release == w.release),
    };
    let Some(rec) = found else {
        return Err(Error::usage_hint(
            format!(
                "no deployment {} in environment {}",
                w.id.map_or_else(|| format!("of release {}", w.release), str::to_string),
                w.environment
            ),
            "run `valero-db hook pre-deploy --release TAG` first; `valero-db releases` lists deployments",
        ));
    };
    same_release(&rec, w.release)?;
    Ok(rec)
}
