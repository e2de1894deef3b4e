//! `valero-db rehearse`: each selected service's pending PostgreSQL
//! migrations applied to a restored copy of its newest snapshot (see
//! `service::rehearse`), reported per migration, with an optional budget
//! for write-blocking locks.

use std::time::Duration;

use serde_json::json;

use crate::cli::RehearseArgs;
use crate::config::{EngineKind, Service};
use crate::context::Context;
use crate::engine::{identity, RunMeta};
use crate::error::{Error, Result};
use crate::migrate::files;
use crate::output::Outcome;
use crate::restore::{Conduct, LiveSessions, Privileges};
use crate::service::rehearse::{rehearse_mongodb, rehearse_postgres, Rehearsal, Stage};
use crate::snapshot::{self, Found};
use crate::storage::{self, Storage};

pub async fn run(ctx: &Context, args: RehearseArgs) -> Outcome {
    let mut done = Vec::new();
    let mut notes = Vec::new();
    let error = rehearse_all(ctx, &args, &mut done, &mut notes).await.err();
    let error = error.or_else(|| over_budget(&done, args.budget));
    let human = render(&done, &notes);
    Outcome::ok(
        json!({
            "command": "rehearse",
            "environment": ctx.env.name,
            "budget_lock_ms": args.budget.map(|b| b.as_millis() as u64),
            "services": done,
            "notes": notes,
        }),
        human,
    )
    .with_error(error)
}

async fn rehearse_all(
    ctx: &Context,
    args: &RehearseArgs,
    done: &mut Vec<Rehearsal>,
    notes: &mut Vec<String>,
) -> Result<()> {
    if let Some(id) = &args.snapshot {
        snapshot::validate_id(id)?;
    }
    let source_env = match &args.from_env {
        Some(name) => ctx.config.environment(name)?,
        None => ctx.env.clone(),
    };
    let source = storage::open(&source_env).await?;
    source.check().await?;
    let root = ctx.config.migrations_dir()?;
    let mut maskings =
        crate::restore::masking_for(&ctx.env, &source_env, &ctx.services()?, args.no_mask)?;
    let base = Conduct {
        live: LiveSessions {
            wait: ctx.global.lock_timeout,
            terminate: false,
        },
        privileges: Privileges {
            skip: args.skip_privileges,
            role_map: ctx.env.role_map.clone(),
        },
        masking: None,
    };
    let meta = RunMeta {
        applied_by: format!("{} (rehearsal)", identity()),
        release: None,
    };
    for service in ctx.services()? {
        let found = choose(source.as_ref(), &source_env.name, &service, args).await?;
        let conduct = Conduct {
            masking: maskings.remove(&service.name),
            ..base.clone()
        };
        for engine in service.engines() {
            if !found.manifest.engines.iter().any(|e| e.engine == engine) {
                notes.push(format!(
                    "{} {engine}: snapshot {} has no {engine} part; not rehearsed",
                    service.name, found.manifest.id
                ));
                continue;
            }
            let local = files::discover(&root, &service.name, engine)?;
            let stage = Stage {
                service: &service,
                storage: source.as_ref(),
                found: &found,
                local: &local,
                conduct: &conduct,
                locks: ctx.env.statement_locks,
                meta: &meta,
            };
            let (rehearsal, failed) = match (engine, &service.postgres, &service.mongodb) {
                (EngineKind::Postgres, Some(pg), _) => rehearse_postgres(stage, pg).await?,
                (EngineKind::Mongodb, _, Some(m)) => rehearse_mongodb(stage, m).await?,
                _ => continue,
            };
            done.push(rehearsal);
            if let Some(e) = failed {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The snapshot to restore: `--snapshot`, else the newest.
async fn choose(
    storage: &dyn Storage,
    env: &str,
    service: &Service,
    args: &RehearseArgs,
) -> Result<Found> {
    let (all, _) = snapshot::list_service(storage, env, &service.name).await?;
    let chosen = match &args.snapshot {
        Some(id) => all.into_iter().find(|f| &f.manifest.id == id),
        None => all.into_iter().last(),
    };
    chosen.ok_or_else(|| Error::NoSnapshot {
        message: match &args.snapshot {
            Some(id) => format!("service {}: no snapshot {id} in environment {env}", service.name),
            None => format!(
                "service {}: no snapshot in environment {env} to rehearse on; take one with `valero-db snapshot`",
                service.name
            ),
        },
    })
}

/// A write-blocking lock held longer than the budget fails the rehearsal.
fn over_budget(done: &[Rehearsal], budget: Option<Duration>) -> Option<Error> {
    let limit = budget?.as_millis() as u64;
    let mut over = Vec::new();
    for r in done {
        for m in &r.migrations {
            let locks = m.effects.iter().flat_map(|e| e.locks.iter());
            for l in locks.filter(|l| l.blocks_writes && l.held_ms > limit) {
                over.push(format!(
                    "{} {}: {} on {} for {} ms",
                    r.service, m.file, l.mode, l.table, l.held_ms
                ));
            }
        }
    }
    (!over.is_empty()).then(|| Error::NotReady {
        message: format!(
            "the rehearsal blocked writes longer than the budget of {}: {}",
            crate::units::format_duration(Duration::from_millis(limit)),
            over.join("; ")
        ),
    })
}

fn render(done: &[Rehearsal], notes: &[String]) -> String {
    let mut out = String::new();
    for r in done {
        out.push_str(&format!(
            "{} {}: snapshot {} restored into scratch database {} (dropped)\n",
            r.service, r.engine, r.snapshot, r.scratch_database
        ));
        if r.migrations.is_empty() {
            out.push_str("  nothing pending\n");
        }
        for m in &r.migrations {
            out.push_str(&format!("  {}  {} ms", m.file, m.duration_ms));
            if let Some(rows) = m.rows {
                out.push_str(&format!("  {rows} rows"));
            }
            if let Some(e) = &m.effects {
                out.push_str(&format!(
                    "  WAL {}",
                    crate::units::human_bytes(e.wal_bytes.max(0) as u64)
                ));
                if !e.rewritten.is_empty() {
                    out.push_str(&format!("  rewrote {}", e.rewritten.join(", ")));
                }
            }
            out.push('\n');
            for l in m.effects.iter().flat_map(|e| e.locks.iter()) {
                out.push_str(&format!(
                    "    {} {} held {} ms{}\n",
                    l.table,
                    l.mode,
                    l.held_ms,
                    if l.blocks_writes {
                        " (blocks writes)"
                    } else {
                        ""
                    }
                ));
            }
            for c in &m.commands {
                out.push_str(&format!(
                    "    command {} {} {} ms\n",
                    c.command, c.name, c.duration_ms
                ));
            }
        }
    }
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}
