//! What every command needs: the configuration, the selected environment
//! and the global options; and the one way to ask an operator to confirm.

use std::io::IsTerminal;

use crate::cli::GlobalArgs;
use crate::config::{self, Config, Environment, Service};
use crate::error::{Error, Result};
use crate::service::session::Waits;
use crate::storage::{self, Storage};

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

    /// The environment's storage, checked to be reachable.
    pub async fn storage(&self) -> Result<Box<dyn Storage>> {
        let s = storage::open(&self.env).await?;
        s.check().await?;
        Ok(s)
    }

    /// How long this run waits for another valero-db run (`--lock-timeout`)
    /// and for the application's locks (the environment's settings).
    pub fn waits(&self) -> Waits {
        Waits {
            run_lock: self.global.lock_timeout,
            statements: self.env.statement_locks,
        }
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

/// Shows the plan on a terminal, then asks like [`confirm`]. Without a
/// terminal the plan is part of the command's output.
pub fn confirm_plan(ctx: &Context, action: &str, plan: &str, yes: bool) -> Result<()> {
    if !yes && std::io::stdin().is_terminal() && std::io::stderr().is_terminal() {
        eprint!("{plan}");
    }
    confirm(ctx, action, yes)
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
    std::io::stdin()
        .read_line(&mut answer)
        .map_err(|e| Error::io("reading the answer from", "standard input", e))?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES") {
        Ok(())
    } else {
        Err(Error::usage("cancelled; nothing was changed"))
    }
}
