//! `capture [--once | --interval D]` and `capture --drop`: ships every
//! committed change of the selected services to the snapshot storage, so
//! `restore --timestamp` can replay up to any second (docs/capture.md).
//! PostgreSQL only so far; MongoDB services are reported as not captured.

use std::time::Duration;

use serde_json::json;
use sqlx::Row;

use crate::capture::postgres::{slot_name, Capture, PassReport};
use crate::commands::snapshot::open_storage;
use crate::commands::{confirm, Context};
use crate::engine::postgres::{classify, PostgresEngine};
use crate::error::{Error, Result};
use crate::output::Outcome;

/// SIGINT and SIGTERM, registered up front.
struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Signals {
                term: signal(SignalKind::terminate())?,
                int: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Signals {})
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    }
}

struct Source {
    service: String,
    schema: String,
    engine: PostgresEngine,
}

/// Connects and takes the per-service capture lock: two captures of one
/// service would store the same changes twice.
async fn open(ctx: &Context) -> Result<Vec<Source>> {
    let mut out = Vec::new();
    for service in ctx.services()? {
        let Some(pg) = &service.postgres else {
            tracing::warn!(
                "{}: MongoDB capture is not implemented yet; this service is not captured",
                service.name
            );
            continue;
        };
        let mut engine = PostgresEngine::connect(&service.name, pg).await?;
        let slot = slot_name(&ctx.env.name, &service.name, &pg.schema);
        // Waits like migrate does: a killed capture's server session may
        // still be finishing its last read.
        let deadline = std::time::Instant::now() + ctx.global.lock_timeout;
        loop {
            let got: bool =
                sqlx::query("SELECT pg_try_advisory_lock(hashtext('valero-db capture ' || $1))")
                    .bind(&slot)
                    .fetch_one(engine.connection())
                    .await
                    .map_err(|e| classify(&format!("PostgreSQL of service {}", service.name), e))?
                    .get(0);
            if got {
                break;
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::LockTimeout {
                    service: service.name.clone(),
                    engine: "postgres".into(),
                    timeout: crate::duration::format_duration(ctx.global.lock_timeout),
                    holder: "another `valero-db capture` of this service".into(),
                });
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        out.push(Source {
            service: service.name.clone(),
            schema: pg.schema.clone(),
            engine,
        });
    }
    if out.is_empty() {
        return Err(Error::usage(
            "none of the selected services has a PostgreSQL database to capture",
        ));
    }
    Ok(out)
}

pub async fn run(ctx: &Context, once: bool, interval: Duration, drop: bool, yes: bool) -> Outcome {
    let result = async {
        let storage = open_storage(ctx).await?;
        let mut sources = open(ctx).await?;
        if drop {
            confirm(ctx, "dropping the capture slots (restores to later times need a new snapshot)", yes)?;
            let mut dropped = Vec::new();
            for s in &mut sources {
                let mut c = Capture {
                    conn: s.engine.connection(),
                    storage: storage.as_ref(),
                    env: &ctx.env.name,
                    service: &s.service,
                    schema: &s.schema,
                };
                let was = c.drop_slot().await?;
                dropped.push(json!({"service": s.service, "slot": slot_name(&ctx.env.name, &s.service, &s.schema), "dropped": was}));
            }
            return Ok((json!({"command": "capture", "dropped": dropped}), dropped.iter().map(|d| format!("{}: slot {} {}\n", d["service"].as_str().unwrap_or(""), d["slot"].as_str().unwrap_or(""), if d["dropped"] == true { "dropped" } else { "did not exist" })).collect::<String>()));
        }
        let mut totals: Vec<PassReport> = Vec::new();
        for s in &mut sources {
            let mut c = Capture {
                conn: s.engine.connection(),
                storage: storage.as_ref(),
                env: &ctx.env.name,
                service: &s.service,
                schema: &s.schema,
            };
            c.ensure().await?;
            totals.push(PassReport::default());
        }
        // Registered now, so a signal during a pass waits for its end.
        let mut signals = Signals::new()?;
        loop {
            for (s, total) in sources.iter_mut().zip(totals.iter_mut()) {
                let mut c = Capture {
                    conn: s.engine.connection(),
                    storage: storage.as_ref(),
                    env: &ctx.env.name,
                    service: &s.service,
                    schema: &s.schema,
                };
                loop {
                    let r = c.pass().await?;
                    if let Some(seg) = &r.segment {
                        tracing::info!(
                            "{}: {} transactions, {} changes shipped to {seg}",
                            s.service,
                            r.transactions,
                            r.changes
                        );
                    }
                    total.transactions += r.transactions;
                    total.changes += r.changes;
                    total.position = r.position.clone();
                    if let Some(seg) = r.segment {
                        total.segment = Some(seg);
                    }
                    if !r.more {
                        break;
                    }
                }
            }
            if once {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = signals.next() => break,
            }
        }
        let report: Vec<_> = sources
            .iter()
            .zip(&totals)
            .map(|(s, t)| json!({"service": s.service, "slot": slot_name(&ctx.env.name, &s.service, &s.schema), "transactions": t.transactions, "changes": t.changes, "position": t.position, "last_segment": t.segment}))
            .collect();
        let human = sources
            .iter()
            .zip(&totals)
            .map(|(s, t)| format!("{}: {} transactions, {} changes captured; slot at {}\n", s.service, t.transactions, t.changes, t.position))
            .collect::<String>();
        Ok((json!({"command": "capture", "environment": ctx.env.name, "services": report}), human))
    }
    .await;
    match result {
        Ok((report, human)) => Outcome::ok(report, human),
        Err(e) => Outcome::failed(e),
    }
}
