//! `valero-db lint [--all] [--deny warnings]`: the pending migrations of
//! the selected services (every file with `--all`, without a database)
//! checked for lock hazards, rewrites and data loss (`crate::lint`).

use serde_json::json;

use crate::cli::Deny;
use crate::config::{EngineKind, Service};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::lint::{self, Finding};
use crate::migrate::files::{self, Migration};
use crate::output::Outcome;

pub async fn run(ctx: &Context, all: bool, deny: Option<Deny>) -> Outcome {
    let mut findings = Vec::new();
    let mut files_read = 0;
    let services = match ctx.services() {
        Ok(s) => s,
        Err(e) => return Outcome::failed(e),
    };
    for service in &services {
        match lint_service(ctx, service, all).await {
            Ok((mut f, n)) => {
                findings.append(&mut f);
                files_read += n;
            }
            Err(e) => return Outcome::failed(e),
        }
    }
    let tally = lint::tally(&findings);
    let human = format!(
        "{}{} error(s), {} warning(s), {} allowed in {files_read} file(s){}\n",
        lint::render(&findings),
        tally.errors,
        tally.warnings,
        tally.allowed,
        if all { "" } else { " pending" }
    );
    let failed = tally.errors > 0 || (deny == Some(Deny::Warnings) && tally.warnings > 0);
    let error = failed.then(|| Error::Lint {
        message: format!(
            "lint: {} error(s) and {} warning(s){} in the {} migrations",
            tally.errors,
            tally.warnings,
            if deny.is_some() {
                " (warnings denied)"
            } else {
                ""
            },
            if all { "" } else { "pending" }
        ),
    });
    Outcome::ok(
        json!({
            "command": "lint",
            "environment": ctx.env.name,
            "all": all,
            "files": files_read,
            "errors": tally.errors,
            "warnings": tally.warnings,
            "allowed": tally.allowed,
            "findings": findings,
        }),
        human,
    )
    .with_error(error)
}

/// One service's findings and how many files were read.
async fn lint_service(
    ctx: &Context,
    service: &Service,
    all: bool,
) -> Result<(Vec<Finding>, usize)> {
    let root = ctx.config.migrations_dir()?;
    let pending = if all {
        None
    } else {
        Some(pending_versions(&root, service).await?)
    };
    let mut findings = Vec::new();
    let mut read = 0;
    for engine in service.engines() {
        let local = files::discover(&root, &service.name, engine)?;
        let chosen: Vec<&Migration> = local
            .iter()
            .filter(|m| {
                pending
                    .as_ref()
                    .is_none_or(|p| p.contains(&(engine, m.version)))
            })
            .collect();
        read += chosen.len();
        for mut f in lint::lint(&chosen) {
            f.file = format!("{}/{engine}/{}", service.name, f.file);
            findings.push(f);
        }
    }
    Ok((findings, read))
}

/// The versions each engine of the service has not applied yet, read from
/// its databases.
async fn pending_versions(
    root: &std::path::Path,
    service: &Service,
) -> Result<Vec<(EngineKind, u64)>> {
    let status = crate::service::status::service_status(root, service, None)
        .await
        .map_err(|e| match e {
            Error::Unreachable { what, message } => Error::Unreachable {
                what,
                message: format!("{message} (`lint --all` lints every file without a database)"),
            },
            other => other,
        })?;
    Ok(status
        .iter()
        .flat_map(|s| s.pending.iter().map(move |v| (s.engine, *v)))
        .collect())
}
