//! `capture [--once | --interval D [--metrics-listen ADDR]]` and
//! `capture --drop`: ships every
//! committed change of the selected services to the snapshot storage, so
//! `restore --timestamp` can replay up to any second (docs/capture.md).
//! PostgreSQL through logical decoding, MongoDB through a change stream.

use std::time::Duration;

use serde_json::json;

use crate::config::{EngineKind, StatementLocks};
use crate::context::{confirm, Context};
use crate::engine::mongodb::capture::{capture_holder, Capture as MongoCapture, LEASE_ID};
use crate::engine::mongodb::lease::{lease_ttl, Lease};
use crate::engine::mongodb::MongoEngine;
use crate::engine::postgres::capture::{slot_name, Capture};
use crate::engine::postgres::PostgresEngine;
use crate::error::{Error, Result};
use crate::metrics::listen::Exposition;
use crate::output::Outcome;
use crate::service::session::LockWait;
use crate::storage::Storage;

#[cfg(unix)]
fn signal_error(e: std::io::Error) -> Error {
    Error::internal(format!(
        "registering the SIGINT/SIGTERM handlers failed: {e}"
    ))
}

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
                term: signal(SignalKind::terminate()).map_err(signal_error)?,
                int: signal(SignalKind::interrupt()).map_err(signal_error)?,
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

struct PgSource {
    service: String,
    schema: String,
    engine: PostgresEngine,
}

impl PgSource {
    fn capture<'a>(&'a mut self, storage: &'a dyn Storage, env: &'a str) -> Capture<'a> {
        let (conn, server) = self.engine.connection_and_server();
        Capture {
            conn,
            server,
            storage,
            env,
            service: &self.service,
            schema: &self.schema,
        }
    }
}

struct MongoSource {
    service: String,
    engine: MongoEngine,
    lease: Lease,
}

impl MongoSource {
    fn capture<'a>(&'a self, storage: &'a dyn Storage, env: &'a str) -> MongoCapture<'a> {
        MongoCapture {
            db: self.engine.database(),
            storage,
            env,
            service: &self.service,
            lease: Some(&self.lease),
        }
    }
}

/// The capture leases of this process (one token for all, so a reconnect
/// takes its own lease back), released however the run ends.
struct Leases {
    token: String,
    ttl: Duration,
    taken: Vec<Lease>,
}

/// Connects every selected database. Every source takes the per-service
/// capture lock (PostgreSQL: an advisory lock; MongoDB: a lease): two
/// captures would store changes twice.
async fn open(ctx: &Context, leases: &mut Leases) -> Result<(Vec<PgSource>, Vec<MongoSource>)> {
    let mut pg_sources = Vec::new();
    let mut mongo_sources = Vec::new();
    for service in ctx.services()? {
        if let Some(m) = &service.mongodb {
            let engine = MongoEngine::connect(&service.name, m).await?;
            let lease = Lease::new(
                engine.database(),
                LEASE_ID,
                &service.name,
                &leases.token,
                leases.ttl,
            );
            let wait = LockWait::new(ctx.global.lock_timeout);
            while !lease.try_acquire().await? {
                if !wait.pause().await {
                    let holder = capture_holder(lease.holder().await?);
                    return Err(wait.timed_out(&service.name, EngineKind::Mongodb, holder));
                }
            }
            // One per service: a reconnect's lease replaces the old one
            // (and lets go of the old client).
            leases.taken.retain(|l| l.service() != service.name);
            leases.taken.push(lease.clone());
            mongo_sources.push(MongoSource {
                service: service.name.clone(),
                engine,
                lease,
            });
        }
        let Some(pg) = &service.postgres else {
            continue;
        };
        let mut engine =
            PostgresEngine::connect(&service.name, pg, StatementLocks::default()).await?;
        let slot = slot_name(&ctx.env.name, &service.name, &pg.schema);
        // Waits like migrate does: a killed capture's server session may
        // still be finishing its last read.
        let wait = LockWait::new(ctx.global.lock_timeout);
        while !engine.try_capture_lock(&slot).await? {
            if !wait.pause().await {
                let holder = "another `valero-db capture` of this service".to_string();
                return Err(wait.timed_out(&service.name, EngineKind::Postgres, holder));
            }
        }
        pg_sources.push(PgSource {
            service: service.name.clone(),
            schema: pg.schema.clone(),
            engine,
        });
    }
    Ok((pg_sources, mongo_sources))
}

/// Totals per service and engine over the whole run.
#[derive(Default)]
struct Total {
    transactions: u64,
    changes: u64,
    position: String,
    segment: Option<String>,
}

impl Total {
    /// Adds one pass, logging where a segment went.
    fn add(
        &mut self,
        service: &str,
        engine: EngineKind,
        transactions: u64,
        changes: u64,
        position: String,
        segment: Option<String>,
    ) {
        if let Some(seg) = &segment {
            tracing::info!(
                "{service} ({engine}): {transactions} transactions, {changes} changes shipped to {seg}"
            );
            self.segment = segment;
        }
        self.transactions += transactions;
        self.changes += changes;
        self.position = position;
    }
}

/// Creates what capture needs (slots, publications, stream positions) for
/// every source; safe to repeat.
async fn ensure(
    ctx: &Context,
    storage: &dyn Storage,
    pg_sources: &mut [PgSource],
    mongo_sources: &mut [MongoSource],
) -> Result<()> {
    for s in pg_sources {
        s.capture(storage, &ctx.env.name).ensure().await?;
    }
    for s in mongo_sources {
        s.capture(storage, &ctx.env.name).ensure().await?;
    }
    Ok(())
}

/// After the n-th failed pass in a row: a second, doubling up to the
/// interval, and never more than five minutes.
fn retry_wait(interval: Duration, failures: u32) -> Duration {
    let doubled = Duration::from_secs(1).saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    doubled
        .min(interval.max(Duration::from_secs(1)))
        .min(Duration::from_secs(300))
}

/// One pass over every source, each repeated while it has more to ship.
async fn pass_all(
    storage: &dyn Storage,
    env: &str,
    pg_sources: &mut [PgSource],
    pg_totals: &mut [Total],
    mongo_sources: &[MongoSource],
    mongo_totals: &mut [Total],
) -> Result<()> {
    for (s, total) in pg_sources.iter_mut().zip(pg_totals.iter_mut()) {
        let mut c = s.capture(storage, env);
        loop {
            let r = c.pass().await?;
            total.add(
                c.service,
                EngineKind::Postgres,
                r.transactions,
                r.changes,
                r.position,
                r.segment,
            );
            if !r.more {
                break;
            }
        }
    }
    for (s, total) in mongo_sources.iter().zip(mongo_totals.iter_mut()) {
        let mut c = s.capture(storage, env);
        loop {
            let r = c.pass().await?;
            total.add(
                c.service,
                EngineKind::Mongodb,
                r.events,
                r.events,
                r.position,
                r.segment,
            );
            if !r.more {
                break;
            }
        }
    }
    Ok(())
}

/// `capture --drop`: removes the slot and publication of every selected
/// PostgreSQL service.
async fn drop_slots(
    ctx: &Context,
    storage: &dyn Storage,
    pg_sources: &mut [PgSource],
    yes: bool,
) -> Result<(serde_json::Value, String)> {
    if pg_sources.is_empty() {
        return Err(Error::usage("--drop removes PostgreSQL replication slots; none of the selected services has PostgreSQL"));
    }
    confirm(
        ctx,
        "dropping the capture slots (restores to later times need a new snapshot)",
        yes,
    )?;
    let mut dropped = Vec::new();
    for s in pg_sources.iter_mut() {
        let was = s.capture(storage, &ctx.env.name).drop_slot().await?;
        dropped.push((
            s.service.clone(),
            slot_name(&ctx.env.name, &s.service, &s.schema),
            was,
        ));
    }
    let human = dropped
        .iter()
        .map(|(s, slot, was)| {
            format!(
                "{s}: slot {slot} {}\n",
                if *was { "dropped" } else { "did not exist" }
            )
        })
        .collect::<String>();
    let report: Vec<_> = dropped
        .iter()
        .map(|(s, slot, was)| json!({"service": s, "slot": slot, "dropped": was}))
        .collect();
    Ok((json!({"command": "capture", "dropped": report}), human))
}

/// What the run shipped, per service and engine.
fn run_report(env: &str, rows: &[(&str, EngineKind, &Total)]) -> (serde_json::Value, String) {
    let report: Vec<_> = rows
        .iter()
        .map(|(s, e, t)| json!({"service": s, "engine": e, "transactions": t.transactions, "changes": t.changes, "position": t.position, "last_segment": t.segment}))
        .collect();
    let human = rows
        .iter()
        .map(|(s, e, t)| {
            format!(
                "{s} ({e}): {} transactions, {} changes captured; at {}\n",
                t.transactions, t.changes, t.position
            )
        })
        .collect::<String>();
    (
        json!({"command": "capture", "environment": env, "services": report}),
        human,
    )
}

/// What `capture` was asked to do.
pub enum Mode {
    /// `--once`: one pass, then exit.
    Once,
    /// `--interval D` until stopped, serving metrics if asked to.
    Every {
        interval: Duration,
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// `--drop [--yes]`: remove the PostgreSQL slots and publications.
    Drop { yes: bool },
}

impl Mode {
    fn once(&self) -> bool {
        !matches!(self, Mode::Every { .. })
    }

    fn interval(&self) -> Duration {
        match self {
            Mode::Every { interval, .. } => *interval,
            _ => Duration::ZERO,
        }
    }
}

/// `--metrics-listen`: starts serving (an address that cannot be bound
/// ends the command before anything is captured).
async fn serve_metrics(mode: &Mode) -> Result<Option<Exposition>> {
    let Mode::Every {
        metrics_listen: Some(addr),
        ..
    } = mode
    else {
        return Ok(None);
    };
    let exposition = Exposition::default();
    crate::metrics::listen::serve(*addr, exposition.clone()).await?;
    Ok(Some(exposition))
}

/// Renews what `--metrics-listen` serves: the full picture, as after any
/// command, read after each pass.
async fn refresh_metrics(ctx: &Context, exposition: &Option<Exposition>) {
    let Some(exposition) = exposition else {
        return;
    };
    match crate::metrics::redacted(ctx).await {
        Ok(text) => exposition.set(text),
        Err(e) => tracing::warn!("metrics not refreshed: {e}"),
    }
}

pub async fn run(ctx: &Context, mode: Mode) -> Outcome {
    let (once, interval) = (mode.once(), mode.interval());
    let mut leases = Leases {
        token: uuid::Uuid::new_v4().simple().to_string(),
        // Passes renew it; it must outlive the wait between two of them.
        ttl: lease_ttl() + if once { Duration::ZERO } else { interval * 2 },
        taken: Vec::new(),
    };
    let result = async {
        let exposition = serve_metrics(&mode).await?;
        let storage = ctx.storage().await?;
        let (mut pg_sources, mut mongo_sources) = open(ctx, &mut leases).await?;
        if let Mode::Drop { yes } = mode {
            return drop_slots(ctx, storage.as_ref(), &mut pg_sources, yes).await;
        }
        ensure(ctx, storage.as_ref(), &mut pg_sources, &mut mongo_sources).await?;
        let mut pg_totals: Vec<Total> = pg_sources.iter().map(|_| Total::default()).collect();
        let mut mongo_totals: Vec<Total> = mongo_sources.iter().map(|_| Total::default()).collect();
        // Registered now, so a signal during a pass waits for its end.
        let mut signals = Signals::new()?;
        let pg_names: Vec<String> = pg_sources.iter().map(|s| s.service.clone()).collect();
        let mongo_names: Vec<String> = mongo_sources.iter().map(|s| s.service.clone()).collect();
        let mut failures = 0u32;
        let mut connected = true;
        loop {
            let passed = async {
                if !connected {
                    // Fresh sessions (and locks): the old ones may be dead.
                    let (mut pg, mut mongo) = open(ctx, &mut leases).await?;
                    ensure(ctx, storage.as_ref(), &mut pg, &mut mongo).await?;
                    (pg_sources, mongo_sources, connected) = (pg, mongo, true);
                }
                let env = &ctx.env.name;
                pass_all(storage.as_ref(), env, &mut pg_sources, &mut pg_totals, &mongo_sources, &mut mongo_totals).await
            }
            .await;
            refresh_metrics(ctx, &exposition).await;
            match passed {
                Ok(()) => failures = 0,
                // A database or the storage away for a while: the loop
                // keeps going (a pass is safe to repeat, see docs/capture.md);
                // anything else ends it.
                Err(e) if !once && e.is_unreachable() => {
                    failures += 1;
                    let wait = retry_wait(interval, failures);
                    tracing::warn!(
                        "capture pass failed ({e}); reconnecting in {} (failure {failures} in a row)",
                        crate::units::format_duration(wait)
                    );
                    pg_sources.clear();
                    mongo_sources.clear();
                    connected = false;
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = signals.next() => break,
                    }
                    continue;
                }
                Err(e) => return Err(e),
            }
            if once {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = signals.next() => break,
            }
        }
        let rows: Vec<(&str, EngineKind, &Total)> = pg_names
            .iter()
            .zip(&pg_totals)
            .map(|(s, t)| (s.as_str(), EngineKind::Postgres, t))
            .chain(mongo_names.iter().zip(&mongo_totals).map(|(s, t)| (s.as_str(), EngineKind::Mongodb, t)))
            .collect();
        Ok(run_report(&ctx.env.name, &rows))
    }
    .await;
    // Best effort: an unreleased lease expires on its own.
    for lease in &leases.taken {
        let _ = lease.release().await;
    }
    match result {
        Ok((report, human)) => Outcome::ok(report, human),
        Err(e) => Outcome::failed(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_double_from_a_second_up_to_the_interval_and_five_minutes() {
        let secs = |interval: u64, n: u32| retry_wait(Duration::from_secs(interval), n).as_secs();
        assert_eq!(
            (1..=5).map(|n| secs(10, n)).collect::<Vec<_>>(),
            [1, 2, 4, 8, 10]
        );
        assert_eq!(secs(3600, 40), 300);
        assert_eq!(secs(0, 3), 1);
    }
}
