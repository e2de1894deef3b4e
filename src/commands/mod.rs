//! One module per command: each turns parsed arguments into an `Outcome`
//! (report + human text + error). Shared setup lives in `Context`.

pub mod capture;
pub mod deploy;
pub mod migrate;
pub mod new;
pub mod restore;
pub mod snapshot;
pub mod status;

use std::io::IsTerminal;

use crate::cli::{Cli, Command, DeployResult, GlobalArgs, HookCommand, SnapshotsCommand};
use crate::config::{self, Config, Environment, Service};
use crate::error::{Error, Result};
use crate::output::Outcome;

/// What every command needs: the configuration, the environment and the
/// global options.
pub struct Context {
    pub config: Config,
    pub env: Environment,
    pub global: GlobalArgs,
}

impl Context {
    pub fn load(global: GlobalArgs) -> Result<Context> {
        let path = config::locate(global.config.as_deref());
        let config = Config::load(&path)?;
        let env = config.environment(&global.env)?;
        Ok(Context {
            config,
            env,
            global,
        })
    }

    pub fn services(&self) -> Result<Vec<Service>> {
        let services = self.config.services(&self.global.services)?;
        if services.is_empty() {
            return Err(Error::usage_hint(
                format!(
                    "no services are configured in {}",
                    self.config.path.display()
                ),
                "add a [services.NAME] section",
            ));
        }
        Ok(services)
    }
}

/// Asks on a terminal; without one, `--yes` is required. Protected
/// environments always need `--yes`.
pub fn confirm(ctx: &Context, action: &str, yes: bool) -> Result<()> {
    if yes {
        return Ok(());
    }
    if ctx.env.protected {
        return Err(Error::usage_hint(
            format!(
                "environment '{}' is protected: {action} needs --yes",
                ctx.env.name
            ),
            "review the plan with --dry-run, then repeat the command with --yes",
        ));
    }
    if !std::io::stdin().is_terminal() || !std::io::stderr().is_terminal() {
        return Err(Error::usage_hint(
            format!("{action} changes data and needs confirmation, but no terminal is attached"),
            "repeat the command with --yes",
        ));
    }
    eprint!(
        "{action} in environment '{}'. Continue? [y/N] ",
        ctx.env.name
    );
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
        Ok(())
    } else {
        Err(Error::usage("cancelled; nothing was changed"))
    }
}

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
        Command::Deploy {
            release,
            verify,
            rollback_cmd,
            on_failure,
            timeout,
            command,
        } => {
            deploy::deploy(
                ctx,
                deploy::DeployArgs {
                    release,
                    verify,
                    rollback_cmd,
                    on_failure,
                    timeout,
                    command,
                },
            )
            .await
        }
        Command::Hook {
            command:
                HookCommand::PreDeploy {
                    release,
                    on_failure,
                },
        } => deploy::hook_pre(ctx, &release, on_failure).await,
        Command::Hook {
            command:
                HookCommand::PostDeploy {
                    release,
                    result,
                    verify,
                    rollback_cmd,
                    on_failure,
                },
        } => {
            deploy::hook_post(
                ctx,
                &release,
                result == DeployResult::Success,
                &verify,
                rollback_cmd.as_deref(),
                on_failure,
            )
            .await
        }
        Command::Releases => deploy::releases(ctx).await,
        Command::Check { max_age } => deploy::check(ctx, max_age).await,
        Command::Completions { .. } => unreachable!("handled before loading the configuration"),
        Command::Status { check } => status::run(ctx, check).await,
        Command::Migrate {
            to,
            dry_run,
            no_snapshot,
            release,
            yes,
        } => {
            migrate::migrate(
                ctx,
                migrate::MigrateArgs {
                    to,
                    dry_run,
                    no_snapshot,
                    release,
                    yes,
                },
            )
            .await
        }
        Command::Rollback {
            to,
            release,
            dry_run,
            yes,
        } => migrate::rollback(ctx, to, release, dry_run, yes).await,
        Command::Baseline {
            baseline_version,
            engine,
        } => migrate::baseline(ctx, baseline_version, engine.map(Into::into)).await,
        Command::Repair {
            engine,
            repair_version,
            as_,
        } => migrate::repair(ctx, engine.into(), repair_version, as_).await,
        Command::Restore {
            timestamp,
            snapshot,
            from_env,
            snapshot_only,
            dry_run,
            yes,
        } => {
            restore::run(
                ctx,
                restore::RestoreArgs {
                    per_service: None,
                    timestamp,
                    snapshot,
                    from_env,
                    snapshot_only,
                    dry_run,
                    yes,
                },
            )
            .await
        }
        Command::Capture {
            once,
            interval,
            drop_slot,
            yes,
        } => capture::run(ctx, once, interval, drop_slot, yes).await,
        Command::Snapshot { label } => snapshot::take(ctx, label).await,
        Command::Snapshots { command } => match command {
            SnapshotsCommand::List => snapshot::list(ctx).await,
            SnapshotsCommand::Verify { id, all } => snapshot::verify(ctx, id, all).await,
            SnapshotsCommand::Prune {
                keep_last,
                keep_within,
                dry_run,
                yes,
            } => snapshot::prune(ctx, keep_last.unwrap_or(1), keep_within, dry_run, yes).await,
        },
        Command::New { .. } => unreachable!("handled above"),
    }
}
