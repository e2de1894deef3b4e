//! `mask check [--from-env E] [--snapshot ID] [--show-samples]`: this
//! environment's masking rules against the snapshot a refresh would load,
//! without restoring — the same checks a masked restore makes before its
//! first row, plus fields that never occur. Samples (production values
//! and their stand-ins) go to a terminal only.

use std::io::IsTerminal;
use std::sync::Arc;

use serde_json::{json, Value};

use crate::cli::MaskCheckArgs;
use crate::config::{EngineKind, Environment, MaskingSettings, Service};
use crate::context::Context;
use crate::error::{Error, Result};
use crate::mask::check::SnapshotCheck;
use crate::mask::{MaskKey, Masking};
use crate::output::Outcome;
use crate::snapshot::{self, Found};
use crate::storage::{self, Storage};

/// Values shown per rule with `--show-samples`.
const SAMPLES: usize = 3;

pub async fn check(ctx: &Context, args: MaskCheckArgs) -> Outcome {
    let mut report = json!({"command": "mask check", "environment": ctx.env.name, "services": []});
    let mut human = String::new();
    let result = run(ctx, &args, &mut report, &mut human).await;
    Outcome::ok(report, human).with_error(result.err())
}

async fn run(
    ctx: &Context,
    args: &MaskCheckArgs,
    report: &mut Value,
    human: &mut String,
) -> Result<()> {
    let settings = ctx.env.masking.as_ref().ok_or_else(|| {
        Error::usage_hint(
            format!("environment {} has no masking rules", ctx.env.name),
            format!(
                "write them under [environments.{}.masking] (see docs/masking.md)",
                ctx.env.name
            ),
        )
    })?;
    if let Some(id) = &args.snapshot {
        snapshot::validate_id(id)?;
    }
    let source_env = match &args.from_env {
        Some(name) => ctx.config.environment(name)?,
        None => ctx.env.clone(),
    };
    let samples = sample_count(args.show_samples);
    let key = check_key(settings, args.show_samples)?;
    let source = storage::open(&source_env).await?;
    source.check().await?;
    let mut problems = 0;
    for service in ctx.services()? {
        let found = chosen(source.as_ref(), &source_env, &service, args).await?;
        found.check_key(source.key()?)?;
        let masking = settings.for_service(&service.name, key.clone());
        let mut result =
            check_service(source.as_ref(), &found, &service, &masking, samples).await?;
        let refused = source_env.protected && source_env.name != ctx.env.name;
        let without = service
            .engines()
            .into_iter()
            .filter(|e| !settings.has_rules(&service.name, *e));
        for engine in without.filter(|_| refused).rev() {
            result.problems.insert(
                0,
                format!(
                    "no {engine} rules for {}: a refresh from {} would be refused",
                    service.name, source_env.name
                ),
            );
        }
        problems += result.problems.len();
        describe(
            &service,
            &found,
            &source_env,
            &masking,
            &result,
            report,
            human,
        );
    }
    if problems > 0 {
        return Err(Error::usage(format!(
            "mask check: {problems} problem{} — a refresh with these rules would be refused",
            if problems == 1 { "" } else { "s" }
        )));
    }
    Ok(())
}

/// Samples only where a person reads them: stdout on a terminal.
fn sample_count(asked: bool) -> usize {
    match (asked, std::io::stdout().is_terminal()) {
        (true, true) => SAMPLES,
        (true, false) => {
            tracing::warn!(
                "--show-samples: stdout is not a terminal; samples hold production values and are shown on a terminal only"
            );
            0
        }
        (false, _) => 0,
    }
}

/// The masking key when samples need it; otherwise a throwaway key (the
/// checks do not depend on it).
fn check_key(settings: &MaskingSettings, samples: bool) -> Result<Arc<MaskKey>> {
    if samples {
        return crate::mask::key_from(&settings.key_env);
    }
    let secret = [
        *uuid::Uuid::new_v4().as_bytes(),
        *uuid::Uuid::new_v4().as_bytes(),
    ]
    .concat();
    MaskKey::new(&secret)
        .map(Arc::new)
        .map_err(|m| Error::internal(format!("a throwaway masking key: {m}")))
}

/// `--snapshot ID` or the newest complete snapshot of the service.
async fn chosen(
    source: &dyn Storage,
    env: &Environment,
    service: &Service,
    args: &MaskCheckArgs,
) -> Result<Found> {
    let (found, _) = snapshot::list_service(source, &env.name, &service.name).await?;
    let pick = match &args.snapshot {
        Some(id) => found.into_iter().find(|f| &f.manifest.id == id),
        None => found.into_iter().last(),
    };
    pick.ok_or_else(|| Error::NoSnapshot {
        message: format!(
            "no {} of service {} in environment {} to check the rules against",
            args.snapshot
                .as_deref()
                .map(|id| format!("complete snapshot {id}"))
                .unwrap_or_else(|| "snapshot".into()),
            service.name,
            env.name
        ),
    })
}

async fn check_service(
    source: &dyn Storage,
    found: &Found,
    service: &Service,
    masking: &Masking,
    samples: usize,
) -> Result<SnapshotCheck> {
    let mut out = SnapshotCheck::default();
    for kind in service.engines() {
        if found.manifest.engine(kind).is_none() {
            continue;
        }
        let part = match kind {
            EngineKind::Postgres => {
                crate::engine::postgres::masking::check_snapshot(source, found, masking, samples)
                    .await?
            }
            EngineKind::Mongodb => {
                crate::engine::mongodb::masking::check_snapshot(source, found, masking, samples)
                    .await?
            }
        };
        out.problems.extend(part.problems);
        out.samples.extend(part.samples);
        out.acts_on.extend(part.acts_on);
        out.notes.extend(part.notes);
    }
    Ok(out)
}

fn describe(
    service: &Service,
    found: &Found,
    source: &Environment,
    masking: &Masking,
    result: &SnapshotCheck,
    report: &mut Value,
    human: &mut String,
) {
    let rules = masking.rules.len();
    let head = format!(
        "{}: {rules} rule{} against snapshot {} from {}",
        service.name,
        if rules == 1 { "" } else { "s" },
        found.manifest.id,
        source.name
    );
    if result.problems.is_empty() {
        human.push_str(&format!("{head}: every rule fits\n"));
    } else {
        human.push_str(&format!("{head}:\n"));
        for p in &result.problems {
            human.push_str(&format!("  - {p}\n"));
        }
    }
    for n in &result.notes {
        human.push_str(&format!("  note: {n}\n"));
    }
    for (rule, tables) in &result.acts_on {
        human.push_str(&format!(
            "  rule {rule} masks {}\n",
            if tables.is_empty() {
                "nothing".to_string()
            } else {
                tables.join(", ")
            }
        ));
    }
    for s in &result.samples {
        human.push_str(&format!(
            "  sample {}: {:?} -> {:?}\n",
            s.target, s.before, s.after
        ));
    }
    if let Some(a) = report["services"].as_array_mut() {
        a.push(json!({
            "service": service.name,
            "snapshot": found.manifest.id,
            "from_environment": source.name,
            "rules": rules,
            "strict": masking.strict,
            "problems": result.problems,
            "notes": result.notes,
            "acts_on": result
                .acts_on
                .iter()
                .map(|(rule, tables)| json!({"rule": rule, "tables": tables}))
                .collect::<Vec<_>>(),
        }));
    }
}
