//! valero-db: per-service schema migrations, verified snapshots and
//! point-in-time restore for PostgreSQL and MongoDB.
//!
//! `main.rs` parses arguments and calls [`run`]; everything else lives here
//! so that tests can call it.

pub mod capture;
pub mod cli;
pub mod commands;
pub mod config;
pub mod context;
pub mod copy_text;
pub mod crypto;
pub mod deploy;
pub mod engine;
pub mod error;
pub mod lint;
pub mod mask;
pub mod metrics;
pub mod migrate;
pub mod output;
pub mod progress;
pub mod redact;
pub mod restore;
pub mod restore_point;
pub mod service;
pub mod snapshot;
pub mod storage;
pub mod units;

use cli::Cli;
use error::Error;
use output::Outcome;

/// Runs one command to completion, or until SIGINT/SIGTERM (exit 130).
pub async fn run(cli: Cli) -> Outcome {
    use tracing::Instrument;
    // Every log event carries the environment (a field of JSON logs).
    let span = tracing::info_span!("valero_db", environment = %cli.global.env);
    // deploy forwards signals to its rollout and then rolls back itself;
    // capture finishes the pass it is in and stops cleanly.
    if matches!(
        cli.command,
        cli::Command::Deploy { .. } | cli::Command::Capture { .. }
    ) {
        return commands::dispatch(cli).instrument(span).await;
    }
    tokio::select! {
        outcome = commands::dispatch(cli).instrument(span) => outcome,
        // Dropping the command's future closes its connections, but a
        // backend busy with a long statement notices only when it ends: the
        // sessions are ended on the server first (while the command's
        // future still holds them), so the open transaction rolls back and
        // the locks go now.
        _ = async {
            termination().await;
            engine::postgres::sessions::terminate_all().await;
        } => Outcome::failed(Error::Interrupted),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
