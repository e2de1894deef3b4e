//! One module per command: each turns parsed arguments into an `Outcome`
//! (report + human text + error). Shared setup lives in `Context`.

pub mod capture;
pub mod deploy;
pub mod lint;
pub mod mask;
pub mod migrate;
pub mod new;
pub mod rehearse;
pub mod restore;
pub mod snapshot;
pub mod status;

use crate::cli::{Cli, Command, DeployResult, HookCommand, SnapshotsCommand};
use crate::context::Context;
use crate::output::Outcome;

fn completions(shell: crate::cli::Shell) -> Outcome {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut buf = Vec::new();
    let sh = match shell {
        crate::cli::Shell::Bash => clap_complete::Shell::Bash,
        crate::cli::Shell::Zsh => clap_complete::Shell::Zsh,
        crate::cli::Shell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(sh, &mut cmd, "valero-db", &mut buf);
    Outcome::ok(
        serde_json::Value::Null,
        String::from_utf8_lossy(&buf).into_owned(),
    )
}

pub async fn dispatch(cli: Cli) -> Outcome {
    let Cli { global, command } = cli;
    if let Command::Completions { shell } = &command {
        return completions(*shell);
    }
    if let Command::New {
        service,
        engine,
        description,
    } = &command
    {
        return new::run(&global, service, (*engine).into(), description);
    }
    let ctx = match Context::load(global) {
        Ok(c) => c,
        Err(e) => return Outcome::failed(e),
    };
    let ctx = &ctx;
    let outcome = run_command(ctx, command).await;
    if let Some(path) = &ctx.global.metrics_file {
        if let Err(e) = crate::metrics::write(ctx, path).await {
            tracing::warn!("writing metrics to {} failed: {e}", path.display());
        }
    }
    if let Some(url) = &ctx.global.pushgateway {
        if let Err(e) = crate::metrics::push(ctx, url).await {
            tracing::warn!("pushing metrics failed: {e}");
        }
    }
    outcome
}

async fn run_command(ctx: &Context, command: Command) -> Outcome {
    match command {
        Command::Deploy(args) => deploy::deploy(ctx, args).await,
        Command::Hook { command } => hook(ctx, command).await,
        Command::Releases => deploy::releases(ctx).await,
        Command::Check { max_age } => deploy::check(ctx, max_age).await,
        Command::Status { check } => status::run(ctx, check).await,
        Command::Migrate(args) => migrate::migrate(ctx, args).await,
        Command::Lint { all, deny } => lint::run(ctx, all, deny).await,
        Command::Rehearse(args) => rehearse::run(ctx, args).await,
        Command::Rollback(args) => migrate::rollback(ctx, args).await,
        Command::Baseline {
            baseline_version,
            release,
            engine,
        } => {
            let engine = engine.map(Into::into);
            migrate::baseline(ctx, baseline_version, release, engine).await
        }
        Command::Repair {
            engine,
            repair_version,
            as_,
        } => migrate::repair(ctx, engine.into(), repair_version, as_).await,
        Command::Restore(args) => restore::run(ctx, args).await,
        Command::Capture {
            once,
            interval,
            drop_slot,
            yes,
            metrics_listen,
        } => {
            let mode = if drop_slot {
                capture::Mode::Drop { yes }
            } else if once {
                capture::Mode::Once
            } else {
                capture::Mode::Every {
                    interval,
                    metrics_listen,
                }
            };
            capture::run(ctx, mode).await
        }
        Command::Snapshot { label } => snapshot::take(ctx, label).await,
        Command::Snapshots { command } => snapshots(ctx, command).await,
        Command::Mask {
            command: crate::cli::MaskCommand::Check(args),
        } => mask::check(ctx, args).await,
        Command::Completions { .. } | Command::New { .. } => {
            unreachable!("handled before loading the configuration")
        }
    }
}

async fn hook(ctx: &Context, command: HookCommand) -> Outcome {
    match command {
        HookCommand::PreDeploy {
            release,
            on_failure,
            yes,
            supersede,
            deployment_id,
        } => {
            let opening = deploy::Opening {
                release: &release,
                on_failure,
                yes,
                supersede: supersede.as_deref(),
                id: deployment_id.as_deref(),
            };
            deploy::hook_pre(ctx, opening).await
        }
        HookCommand::PostDeploy {
            release,
            result,
            verify,
            rollback_cmd,
            on_failure,
            terminate_sessions,
            deployment_id,
        } => {
            let closing = deploy::Closing {
                release: &release,
                id: deployment_id.as_deref(),
                success: result == DeployResult::Success,
                verify: &verify,
                rollback: deploy::Rollback {
                    cmd: rollback_cmd.as_deref(),
                    on_failure,
                    terminate_sessions,
                },
            };
            deploy::hook_post(ctx, closing).await
        }
    }
}

async fn snapshots(ctx: &Context, command: SnapshotsCommand) -> Outcome {
    match command {
        SnapshotsCommand::List => snapshot::list(ctx).await,
        SnapshotsCommand::Verify { id, all } => snapshot::verify(ctx, id, all).await,
        SnapshotsCommand::Prune {
            keep_last,
            keep_within,
            dry_run,
            yes,
        } => snapshot::prune(ctx, keep_last.unwrap_or(1), keep_within, dry_run, yes).await,
    }
}
