//! `valero-db new SERVICE ENGINE DESCRIPTION`: writes the next migration
//! file pair with the version style already used by the service.

use serde_json::json;

use crate::cli::GlobalArgs;
use crate::config::EngineKind;
use crate::config::{self, Config};
use crate::error::{Error, Result};
use crate::migrate::files;
use crate::output::Outcome;

pub fn run(
    global: &GlobalArgs,
    service: &str,
    engine: EngineKind,
    description: &[String],
) -> Outcome {
    match create(global, service, engine, description) {
        Ok((up, down)) => Outcome::ok(
            json!({"command": "new", "service": service, "engine": engine, "up": up, "down": down}),
            format!("created {up}\ncreated {down}\n"),
        ),
        Err(e) => Outcome::failed(e),
    }
}

fn create(
    global: &GlobalArgs,
    service: &str,
    engine: EngineKind,
    description: &[String],
) -> Result<(String, String)> {
    let config = Config::load(&config::locate(global.config.as_deref()))?;
    let svc = config.service(service)?;
    let has_engine = match engine {
        EngineKind::Postgres => svc.postgres.is_some(),
        EngineKind::Mongodb => svc.mongodb.is_some(),
    };
    if !has_engine {
        return Err(Error::usage(format!(
            "service '{service}' has no {engine} database in the configuration"
        )));
    }
    let slug = files::slug(&description.join(" "));
    if slug.is_empty() {
        return Err(Error::usage(
            "the description needs at least one letter or digit",
        ));
    }
    let root = config.migrations_dir()?;
    let existing: Vec<u64> = files::discover(&root, service, engine)?
        .iter()
        .map(|m| m.version)
        .collect();
    let widths = files::version_widths(&root, service, engine);
    let version = files::next_version(&existing, &widths, chrono::Utc::now());
    let dir = root.join(service).join(engine.name());
    std::fs::create_dir_all(&dir).map_err(|e| Error::io("creating", &dir, e))?;
    let (ext, up_body, down_body) = match engine {
        EngineKind::Postgres => (
            "sql",
            format!("-- {slug}: runs in one transaction with search_path set to the service schema.\n-- Put `-- valero:no-transaction` on the first line for CREATE INDEX CONCURRENTLY.\n\n"),
            format!("-- Undo {slug}.\n\n"),
        ),
        EngineKind::Mongodb => (
            "json",
            "[\n]\n".to_string(),
            "[\n]\n".to_string(),
        ),
    };
    let up = dir.join(format!("{version}_{slug}.up.{ext}"));
    let down = dir.join(format!("{version}_{slug}.down.{ext}"));
    for p in [&up, &down] {
        if p.exists() {
            return Err(Error::usage(format!("{} already exists", p.display())));
        }
    }
    std::fs::write(&up, up_body).map_err(|e| Error::io("writing", &up, e))?;
    std::fs::write(&down, down_body).map_err(|e| Error::io("writing", &down, e))?;
    Ok((up.display().to_string(), down.display().to_string()))
}
