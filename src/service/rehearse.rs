//! A rehearsal of one service's pending migrations, per engine: its
//! snapshot restored into a scratch database beside the live one, the
//! migrations applied there exactly as `migrate` applies them, each
//! measured (PostgreSQL: wall time, rows, locks held per table and for how
//! long, tables rewritten, WAL; MongoDB: each command's time), the scratch
//! database dropped at the end whatever happened. The live service is
//! never touched.

use std::time::Instant;

use serde::Serialize;

use crate::config::{EngineKind, MongoTarget, PostgresTarget, Service, StatementLocks};
use crate::engine::mongodb::rehearse::MongoScratch;
use crate::engine::mongodb::MongoEngine;
use crate::engine::postgres::rehearse::{Effects, Observer, Scratch};
use crate::engine::postgres::PostgresEngine;
use crate::engine::{Engine, RunMeta};
use crate::error::{Error, Result};
use crate::migrate::files::{Body, Migration};
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
    /// PostgreSQL: rows the migration's statements inserted, updated,
    /// deleted, copied or returned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// PostgreSQL: locks, rewrites, WAL.
    #[serde(flatten)]
    pub effects: Option<Effects>,
    /// MongoDB: each command's time.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub commands: Vec<CommandTime>,
}

/// One command of a MongoDB migration as it ran on the copy.
#[derive(Debug, Clone, Serialize)]
pub struct CommandTime {
    /// 1-based, as `lint` counts them.
    pub command: usize,
    pub name: String,
    pub duration_ms: u64,
}

/// What the rehearsal of one service found.
#[derive(Debug, Clone, Serialize)]
pub struct Rehearsal {
    pub service: String,
    pub engine: EngineKind,
    pub snapshot: String,
    pub scratch_database: String,
    pub migrations: Vec<Measured>,
}

/// Where and what to rehearse.
pub struct Stage<'a> {
    pub service: &'a Service,
    pub storage: &'a dyn Storage,
    pub found: &'a Found,
    /// The engine's migration files.
    pub local: &'a [Migration],
    pub conduct: &'a Conduct,
    pub locks: StatementLocks,
    pub meta: &'a RunMeta,
}

/// Runs the rehearsal; the report holds what ran even when a migration
/// failed (that error is returned beside it, as `migrate` would report it).
pub async fn rehearse_postgres(
    stage: Stage<'_>,
    target: &PostgresTarget,
) -> Result<(Rehearsal, Option<Error>)> {
    let service = stage.service;
    let scratch = Scratch::create(&target.url, &service.name, &target.schema).await?;
    tracing::info!(
        "{}: rehearsing on scratch database {}",
        service.name,
        scratch.name
    );
    let mut report = Rehearsal::new(&stage, EngineKind::Postgres, &scratch.name);
    let ran = on_the_copy(&stage, target, &scratch.url, &mut report).await;
    finish(report, ran, scratch.drop().await)
}

impl Rehearsal {
    fn new(stage: &Stage<'_>, engine: EngineKind, scratch: &str) -> Rehearsal {
        Rehearsal {
            service: stage.service.name.clone(),
            engine,
            snapshot: stage.found.manifest.id.clone(),
            scratch_database: scratch.to_string(),
            migrations: Vec::new(),
        }
    }
}

/// The report, once the scratch database is gone: an error of the run
/// comes first, then one of the drop.
fn finish(
    report: Rehearsal,
    ran: Result<Option<Error>>,
    dropped: Result<()>,
) -> Result<(Rehearsal, Option<Error>)> {
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
    target: &PostgresTarget,
    scratch_url: &str,
    report: &mut Rehearsal,
) -> Result<Option<Error>> {
    let name = &stage.service.name;
    let copy = PostgresTarget {
        url: scratch_url.to_string(),
        schema: target.schema.clone(),
    };
    let mut engine = PostgresEngine::connect(name, &copy, stage.locks).await?;
    let plan = restore_and_plan(stage, &mut engine).await?;
    let mut observer = Observer::connect(scratch_url, name, &target.schema).await?;
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
            rows: Some(engine.rows_touched()),
            effects: Some(effects),
            commands: Vec::new(),
        });
        if let Err(e) = result {
            failed = Some(e);
            break;
        }
    }
    observer.close().await;
    Ok(failed)
}

/// Restores the snapshot into the scratch copy the engine is connected
/// to, and answers the migrations the copy has not applied.
async fn restore_and_plan<'a>(
    stage: &Stage<'a>,
    engine: &mut dyn Engine,
) -> Result<Vec<&'a Migration>> {
    engine
        .restore_prepare(stage.storage, stage.found, None, stage.conduct)
        .await?;
    engine.restore_commit().await?;
    let applied = engine.history().await?;
    let analysis = analyze(stage.local, &applied);
    plan_up(stage.local, &analysis, None).map_err(|e| {
        Error::usage(format!(
            "service {}: the snapshot's history does not fit the migration files: {e:?}",
            stage.service.name
        ))
    })
}

/// The MongoDB part: the same on a scratch database on the service's
/// MongoDB server, each command timed.
pub async fn rehearse_mongodb(
    stage: Stage<'_>,
    target: &MongoTarget,
) -> Result<(Rehearsal, Option<Error>)> {
    let name = &stage.service.name;
    let scratch = MongoScratch::create(&target.url, name, &target.database).await?;
    tracing::info!(
        "{name}: rehearsing MongoDB on scratch database {}",
        scratch.database
    );
    let mut report = Rehearsal::new(&stage, EngineKind::Mongodb, &scratch.database);
    let copy = MongoTarget {
        url: target.url.clone(),
        database: scratch.database.clone(),
    };
    let ran = mongodb_on_the_copy(&stage, &copy, &mut report).await;
    finish(report, ran, scratch.drop().await)
}

async fn mongodb_on_the_copy(
    stage: &Stage<'_>,
    copy: &MongoTarget,
    report: &mut Rehearsal,
) -> Result<Option<Error>> {
    let name = &stage.service.name;
    let mut engine = MongoEngine::connect(name, copy).await?;
    let plan = restore_and_plan(stage, &mut engine).await?;
    engine.prepare().await?;
    for m in plan {
        tracing::info!("{name} mongodb: rehearsing {}", m.file_name());
        let started = Instant::now();
        let result = engine.apply_up(m, stage.meta).await;
        let names: Vec<String> = match &m.up.body {
            Body::Commands(c) => c
                .iter()
                .map(|d| d.keys().next().cloned().unwrap_or_default())
                .collect(),
            Body::Sql { .. } => Vec::new(),
        };
        report.migrations.push(Measured {
            version: m.version,
            file: m.file_name(),
            duration_ms: started.elapsed().as_millis() as u64,
            rows: None,
            effects: None,
            commands: engine
                .command_durations()
                .iter()
                .enumerate()
                .map(|(i, ms)| CommandTime {
                    command: i + 1,
                    name: names.get(i).cloned().unwrap_or_default(),
                    duration_ms: *ms,
                })
                .collect(),
        });
        if let Err(e) = result {
            return Ok(Some(e));
        }
    }
    Ok(None)
}
