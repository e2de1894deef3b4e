//! A rehearsal of one service's pending PostgreSQL migrations: its snapshot
//! restored into a scratch database beside the live one, the migrations
//! applied there exactly as `migrate` applies them, each measured (wall
//! time, locks held per table and for how long, tables rewritten, WAL), the
//! scratch database dropped at the end whatever happened. The live service
//! is never touched.

use std::time::Instant;

use serde::Serialize;

use crate::config::{PostgresTarget, Service, StatementLocks};
use crate::engine::postgres::rehearse::{Effects, Observer, Scratch};
use crate::engine::postgres::PostgresEngine;
use crate::engine::{Engine, RunMeta};
use crate::error::{Error, Result};
use crate::migrate::files::Migration;
use crate::migrate::plan::{analyze, plan_up};
use crate::restore::Conduct;
use crate::snapshot::Found;
use crate::storage::Storage;

/// One migration as it ran on the copy.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    pub version: u64,
    pub file: String,
    pub duration_ms: u64,
    #[serde(flatten)]
    pub effects: Effects,
}

/// What the rehearsal of one service found.
#[derive(Debug, Clone, Serialize)]
pub struct Rehearsal {
    pub service: String,
    pub snapshot: String,
    pub scratch_database: String,
    pub migrations: Vec<Measured>,
}

/// Where and what to rehearse.
pub struct Stage<'a> {
    pub service: &'a Service,
    pub target: &'a PostgresTarget,
    pub storage: &'a dyn Storage,
    pub found: &'a Found,
    pub local: &'a [Migration],
    pub conduct: &'a Conduct,
    pub locks: StatementLocks,
    pub meta: &'a RunMeta,
}

/// Runs the rehearsal; the report holds what ran even when a migration
/// failed (that error is returned beside it, as `migrate` would report it).
pub async fn rehearse_postgres(stage: Stage<'_>) -> Result<(Rehearsal, Option<Error>)> {
    let Stage {
        service, target, ..
    } = stage;
    let scratch = Scratch::create(&target.url, &service.name, &target.schema).await?;
    tracing::info!(
        "{}: rehearsing on scratch database {}",
        service.name,
        scratch.name
    );
    let mut report = Rehearsal {
        service: service.name.clone(),
        snapshot: stage.found.manifest.id.clone(),
        scratch_database: scratch.name.clone(),
        migrations: Vec::new(),
    };
    let ran = on_the_copy(&stage, &scratch.url, &mut report).await;
    let dropped = scratch.drop().await;
    match (ran, dropped) {
        (Err(e), _) => Err(e),
        (Ok(failed), Ok(())) => Ok((report, failed)),
        (Ok(_), Err(e)) => Err(e),
    }
}

/// Restores the snapshot into the scratch database and applies the
/// pending migrations one by one under observation.
async fn on_the_copy(
    stage: &Stage<'_>,
    scratch_url: &str,
    report: &mut Rehearsal,
) -> Result<Option<Error>> {
    let name = &stage.service.name;
    let copy = PostgresTarget {
        url: scratch_url.to_string(),
        schema: stage.target.schema.clone(),
    };
    let mut engine = PostgresEngine::connect(name, &copy, stage.locks).await?;
    engine
        .restore_prepare(stage.storage, stage.found, None, stage.conduct)
        .await?;
    engine.restore_commit().await?;
    let applied = engine.history().await?;
    let analysis = analyze(stage.local, &applied);
    let plan = plan_up(stage.local, &analysis, None).map_err(|e| {
        Error::usage(format!(
            "service {name}: the snapshot's history does not fit the migration files: {e:?}"
        ))
    })?;
    let mut observer = Observer::connect(scratch_url, name, &stage.target.schema).await?;
    engine.prepare().await?;
    let mut failed = None;
    for m in plan {
        tracing::info!("{name} postgres: rehearsing {}", m.file_name());
        let started = Instant::now();
        let pid = engine.backend_pid();
        let (result, effects) = observer
            .measure(pid, engine.apply_up(m, stage.meta))
            .await?;
        report.migrations.push(Measured {
            version: m.version,
            file: m.file_name(),
            duration_ms: started.elapsed().as_millis() as u64,
            effects,
        });
        if let Err(e) = result {
            failed = Some(e);
            break;
        }
    }
    observer.close().await;
    Ok(failed)
}
