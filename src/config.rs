//! `valero-db.toml`: parsing, `${VAR}` / `${VAR:-default}` expansion and
//! validation of environments and services, as in the product contract.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::redact;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    migrations: Option<String>,
    #[serde(default)]
    environments: BTreeMap<String, RawEnvironment>,
    #[serde(default)]
    services: BTreeMap<String, RawService>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEnvironment {
    storage: String,
    #[serde(default)]
    protected: bool,
    #[serde(default)]
    s3: RawS3,
    encryption: Option<RawEncryption>,
    /// How long one statement of a migration may wait for a lock, e.g. "3s".
    migration_lock_timeout: Option<String>,
    /// How often a migration that ran into `migration_lock_timeout` is retried.
    migration_lock_retries: Option<u32>,
    /// Roles named in snapshots from elsewhere → the roles standing for them here.
    #[serde(default)]
    role_map: BTreeMap<String, String>,
    /// `compression = { level = N }` for the environment's snapshot objects.
    compression: Option<RawCompression>,
    /// What a refresh from another environment masks on its way in.
    masking: Option<RawMasking>,
}

/// `[environments.E.masking]`: the key's variable, strict mode and, per
/// service, `postgres = { "table.column" = "email" }` and
/// `mongodb = { "collection.field.path" = "phone" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMasking {
    key_env: String,
    #[serde(default)]
    strict: bool,
    #[serde(default)]
    services: BTreeMap<String, RawServiceMasking>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServiceMasking {
    #[serde(default)]
    postgres: BTreeMap<String, String>,
    #[serde(default)]
    mongodb: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCompression {
    level: i64,
}

/// `encryption = { key_env = "VAR" }` or `{ key_file = "path" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEncryption {
    key_env: Option<String>,
    key_file: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawS3 {
    region: Option<String>,
    endpoint: Option<String>,
    force_path_style: Option<bool>,
    sse: Option<String>,
    sse_kms_key_id: Option<String>,
    part_size: Option<String>,
    concurrency: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    postgres: Option<RawPostgres>,
    mongodb: Option<RawMongo>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPostgres {
    url: String,
    schema: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMongo {
    url: String,
    database: String,
}

/// The loaded configuration. Strings are expanded when a part of it is used,
/// so a command for one service does not need the variables of another.
#[derive(Debug)]
pub struct Config {
    pub path: PathBuf,
    pub dir: PathBuf,
    raw: RawConfig,
}

/// Where the snapshots of an environment live.
#[derive(Debug, Clone, PartialEq)]
pub enum StorageLocation {
    File(PathBuf),
    S3 { bucket: String, prefix: String },
}

#[derive(Debug, Clone, Default)]
pub struct S3Settings {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub force_path_style: bool,
    pub sse: Option<String>,
    pub sse_kms_key_id: Option<String>,
    pub part_size: Option<u64>,
    pub concurrency: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct Environment {
    pub name: String,
    pub storage: StorageLocation,
    pub protected: bool,
    pub s3: S3Settings,
    /// Where the snapshot encryption key comes from, if objects are encrypted.
    pub encryption: Option<KeySource>,
    /// How migrations wait for the application's locks.
    pub statement_locks: StatementLocks,
    /// `role_map`: a role named in a restored snapshot's ownership and
    /// privileges → the role that stands for it in this environment.
    pub role_map: BTreeMap<String, String>,
    /// How snapshot objects and capture segments are compressed.
    pub compression: Compression,
    /// What a refresh from another environment masks (`masking`).
    pub masking: Option<MaskingSettings>,
}

/// An environment's masking: where the key comes from, strict mode, and
/// the rules of every service that has some.
#[derive(Debug, Clone)]
pub struct MaskingSettings {
    /// The variable that holds the masking key (never stored).
    pub key_env: String,
    pub strict: bool,
    pub services: BTreeMap<String, crate::mask::ServiceRules>,
}

impl MaskingSettings {
    /// Whether the service has a rule (`keep` counts) for `engine`: a
    /// refresh from a protected environment needs one for every engine it
    /// restores. An empty rules table, or rules for the other engine only,
    /// are not rules for this one.
    pub fn has_rules(&self, service: &str, engine: EngineKind) -> bool {
        self.services
            .get(service)
            .is_some_and(|r| r.has_rules(engine))
    }

    /// What a restore of `service` masks, under `key`.
    pub fn for_service(
        &self,
        service: &str,
        key: std::sync::Arc<crate::mask::MaskKey>,
    ) -> crate::mask::Masking {
        crate::mask::Masking {
            key,
            rules: self.services.get(service).cloned().unwrap_or_default(),
            strict: self.strict,
        }
    }
}

/// zstd settings of an environment's snapshots (`compression = { level = N }`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compression {
    /// zstd level, 1 (fastest) to 19 (smallest).
    pub level: i32,
}

impl Compression {
    /// Chosen from `bench/bench.py --levels` on two data sets of different
    /// compressibility (README, Performance): with column blocks, level 1
    /// stores within 1 % of level 3 and of 12, is the fastest, and keeps the
    /// peak memory near 50 MiB where level 3 needs 90–150 MiB.
    pub const DEFAULT_LEVEL: i32 = 1;
    pub const LEVELS: std::ops::RangeInclusive<i32> = 1..=19;
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            level: Self::DEFAULT_LEVEL,
        }
    }
}

/// How a migration's statements wait for locks the application holds: each
/// wait is cut off after `timeout` (PostgreSQL's `lock_timeout`), so the
/// application's own queries never queue behind a migration for longer;
/// the migration's transaction is then rolled back and retried, `retries`
/// times, with a growing pause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatementLocks {
    pub timeout: std::time::Duration,
    pub retries: u32,
}

impl Default for StatementLocks {
    fn default() -> Self {
        StatementLocks {
            timeout: std::time::Duration::from_secs(3),
            retries: 5,
        }
    }
}

impl StatementLocks {
    /// The pause before retry `n` (1-based): 1 s, 2 s, 4 s … at most 15 s.
    pub fn pause_before(&self, retry: u32) -> std::time::Duration {
        let secs = 1u64 << retry.saturating_sub(1).min(4);
        std::time::Duration::from_secs(secs.min(15))
    }
}

/// Where the snapshot encryption key is read from (never the key itself).
#[derive(Debug, Clone, PartialEq)]
pub enum KeySource {
    Env(String),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct PostgresTarget {
    pub url: String,
    pub schema: String,
}

#[derive(Debug, Clone)]
pub struct MongoTarget {
    pub url: String,
    pub database: String,
}

#[derive(Debug, Clone)]
pub struct Service {
    pub name: String,
    pub postgres: Option<PostgresTarget>,
    pub mongodb: Option<MongoTarget>,
}

impl Service {
    /// The engines this service has, PostgreSQL first.
    pub fn engines(&self) -> Vec<EngineKind> {
        let mut out = Vec::new();
        if self.postgres.is_some() {
            out.push(EngineKind::Postgres);
        }
        if self.mongodb.is_some() {
            out.push(EngineKind::Mongodb);
        }
        out
    }
}

/// The database engines a service's part can live in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Postgres,
    Mongodb,
}

impl EngineKind {
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Postgres => "postgres",
            EngineKind::Mongodb => "mongodb",
        }
    }

    pub fn all() -> [EngineKind; 2] {
        [EngineKind::Postgres, EngineKind::Mongodb]
    }

    pub fn parse(s: &str) -> Option<EngineKind> {
        match s {
            "postgres" | "postgresql" | "pg" => Some(EngineKind::Postgres),
            "mongodb" | "mongo" => Some(EngineKind::Mongodb),
            _ => None,
        }
    }
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the config file is looked for: `--config`, `$VALERO_DB_CONFIG`
/// (clap fills that in), else `./valero-db.toml`.
pub fn locate(explicit: Option<&Path>) -> PathBuf {
    explicit
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("valero-db.toml"))
}

impl Config {
    pub fn load(path: &Path) -> Result<Config> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
            path: path.to_path_buf(),
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config> {
        let config_error = |message: String| Error::Config {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| config_error(describe_toml_error(text, &e)))?;
        for name in raw.environments.keys() {
            validate_name("environment", name).map_err(config_error)?;
        }
        for (name, service) in &raw.services {
            validate_name("service", name).map_err(config_error)?;
            if service.postgres.is_none() && service.mongodb.is_none() {
                return Err(config_error(format!(
                    "service '{name}' has neither `postgres` nor `mongodb`"
                )));
            }
        }
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let dir = absolute
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Config {
            path: path.to_path_buf(),
            dir,
            raw,
        })
    }

    fn err(&self, message: String) -> Error {
        Error::Config {
            path: self.path.clone(),
            message,
        }
    }

    /// Expands `${VAR}` references in the value of key `what`. The value a
    /// variable brings into a key that may hold a secret (`…key…`,
    /// `…password…`, `…token…`, `…secret…`) is registered for redaction,
    /// wherever the operator meant it to go.
    fn expand(&self, what: &str, value: &str) -> Result<String> {
        let secret = ["key", "password", "token", "secret"]
            .iter()
            .any(|w| what.to_ascii_lowercase().contains(w));
        expand(value, &|name| {
            let found = std::env::var(name).ok();
            if let (true, Some(v)) = (secret, &found) {
                redact::register_secret(v);
            }
            found
        })
        .map_err(|e| self.err(format!("{what}: {e}")))
    }

    pub fn migrations_dir(&self) -> Result<PathBuf> {
        let dir = match &self.raw.migrations {
            Some(m) => self.expand("migrations", m)?,
            None => "migrations".to_string(),
        };
        Ok(self.dir.join(dir))
    }

    pub fn environment_names(&self) -> Vec<String> {
        self.raw.environments.keys().cloned().collect()
    }

    pub fn service_names(&self) -> Vec<String> {
        self.raw.services.keys().cloned().collect()
    }

    pub fn environment(&self, name: &str) -> Result<Environment> {
        let raw = self.raw.environments.get(name).ok_or_else(|| {
            Error::usage_hint(
                format!("unknown environment '{name}'"),
                format!(
                    "environments in {}: {}",
                    self.path.display(),
                    join_or_none(&self.environment_names())
                ),
            )
        })?;
        let what = |key: &str| format!("environments.{name}.{key}");
        let storage_url = self.expand(&what("storage"), &raw.storage)?;
        let storage = self
            .parse_storage(&storage_url)
            .map_err(|m| self.err(format!("{}: {m}", what("storage"))))?;
        let opt = |key: &str, v: &Option<String>| -> Result<Option<String>> {
            // An empty value (e.g. `${VAR:-}`) means "not set".
            Ok(v.as_ref()
                .map(|s| self.expand(&what(key), s))
                .transpose()?
                .filter(|s| !s.is_empty()))
        };
        let part_size = match opt("s3.part_size", &raw.s3.part_size)? {
            Some(s) => Some(
                parse_size(&s).map_err(|m| self.err(format!("{}: {m}", what("s3.part_size"))))?,
            ),
            None => None,
        };
        let sse = opt("s3.sse", &raw.s3.sse)?;
        if let Some(sse) = &sse {
            if sse != "AES256" && sse != "aws:kms" {
                return Err(self.err(format!(
                    "{}: must be \"AES256\" or \"aws:kms\", not \"{sse}\"",
                    what("s3.sse")
                )));
            }
        }
        let encryption = match &raw.encryption {
            None => None,
            Some(RawEncryption {
                key_env: Some(var),
                key_file: None,
            }) => Some(KeySource::Env(
                // Expanded like every other string: `${KEY_VAR:-VALERO_KEY}`
                // picks the variable's name per deployment.
                self.expand(&what("encryption.key_env"), var)?,
            )),
            Some(RawEncryption {
                key_env: None,
                key_file: Some(path),
            }) => Some(KeySource::File(
                self.dir
                    .join(self.expand(&what("encryption.key_file"), path)?),
            )),
            Some(_) => {
                return Err(self.err(format!(
                    "{}: set exactly one of key_env (a variable name) or key_file (a path)",
                    what("encryption")
                )))
            }
        };
        let statement_locks = self.statement_locks(name, raw)?;
        let role_map = self.role_map(name, raw)?;
        let compression = self.compression(name, raw)?;
        let masking = self.masking(name, raw)?;
        Ok(Environment {
            role_map,
            compression,
            masking,
            name: name.to_string(),
            storage,
            protected: raw.protected,
            encryption,
            statement_locks,
            s3: S3Settings {
                region: opt("s3.region", &raw.s3.region)?,
                endpoint: opt("s3.endpoint", &raw.s3.endpoint)?,
                force_path_style: raw.s3.force_path_style.unwrap_or(false),
                sse,
                sse_kms_key_id: opt("s3.sse_kms_key_id", &raw.s3.sse_kms_key_id)?,
                part_size,
                concurrency: raw.s3.concurrency,
            },
        })
    }

    /// `compression` of an environment, or the default level.
    fn compression(&self, name: &str, raw: &RawEnvironment) -> Result<Compression> {
        let Some(RawCompression { level }) = raw.compression else {
            return Ok(Compression::default());
        };
        match i32::try_from(level) {
            Ok(level) if Compression::LEVELS.contains(&level) => Ok(Compression { level }),
            _ => Err(self.err(format!(
                "environments.{name}.compression.level: {level} is outside {}..{} (zstd: 1 fastest, 19 smallest)",
                Compression::LEVELS.start(),
                Compression::LEVELS.end()
            ))),
        }
    }

    /// `masking` of an environment: every rule parsed, every service known.
    fn masking(&self, name: &str, raw: &RawEnvironment) -> Result<Option<MaskingSettings>> {
        let Some(m) = &raw.masking else {
            return Ok(None);
        };
        let key = format!("environments.{name}.masking");
        // `key_env = "${VAR}"` (as every other secret of the file is
        // written) names the variable VAR, not the variable VAR's value
        // would name.
        let key_env = match whole_reference(&m.key_env) {
            Some(var) => var.to_string(),
            None => self.expand(&format!("{key}.key_env"), &m.key_env)?,
        };
        if key_env.is_empty() || !is_variable_name(&key_env) {
            return Err(self.err(format!(
                "{key}.key_env: name the variable that holds the masking key (its name, e.g. VALERO_DB_MASK_KEY)"
            )));
        }
        let mut services = BTreeMap::new();
        for (service, rules) in &m.services {
            if !self.raw.services.contains_key(service) {
                return Err(self.err(format!(
                    "{key}.services.{service}: no such service (services: {})",
                    join_or_none(&self.service_names())
                )));
            }
            let parsed = crate::mask::ServiceRules::parse(&rules.postgres, &rules.mongodb)
                .map_err(|m| self.err(format!("{key}.services.{service}.{m}")))?;
            services.insert(service.clone(), parsed);
        }
        Ok(Some(MaskingSettings {
            key_env,
            strict: m.strict,
            services,
        }))
    }

    /// `role_map` of an environment: role names as the server spells them,
    /// never empty (a role name is at most 63 bytes).
    fn role_map(&self, name: &str, raw: &RawEnvironment) -> Result<BTreeMap<String, String>> {
        let key = format!("environments.{name}.role_map");
        let mut map = BTreeMap::new();
        for (from, to) in &raw.role_map {
            let to = self.expand(&format!("{key}.{from}"), to)?;
            for role in [from.as_str(), to.as_str()] {
                if role.is_empty() || role.len() > 63 || role == "PUBLIC" {
                    return Err(self.err(format!(
                        "{key}: \"{role}\" is not a role name (1 to 63 bytes, not PUBLIC)"
                    )));
                }
            }
            map.insert(from.clone(), to);
        }
        Ok(map)
    }

    /// `migration_lock_timeout` (at least 10ms, at most 10 minutes) and
    /// `migration_lock_retries` of an environment, or their defaults.
    fn statement_locks(&self, name: &str, raw: &RawEnvironment) -> Result<StatementLocks> {
        let mut locks = StatementLocks::default();
        if let Some(text) = &raw.migration_lock_timeout {
            let key = format!("environments.{name}.migration_lock_timeout");
            let text = self.expand(&key, text)?;
            let timeout =
                crate::units::parse_duration(&text).map_err(|m| self.err(format!("{key}: {m}")))?;
            if timeout < std::time::Duration::from_millis(10)
                || timeout > std::time::Duration::from_secs(600)
            {
                return Err(self.err(format!(
                    "{key}: {text} is outside 10ms..10m; the application's queries wait up to this long behind a migration"
                )));
            }
            locks.timeout = timeout;
        }
        if let Some(retries) = raw.migration_lock_retries {
            if retries > 100 {
                return Err(self.err(format!(
                    "environments.{name}.migration_lock_retries: {retries} is more than 100"
                )));
            }
            locks.retries = retries;
        }
        Ok(locks)
    }

    fn parse_storage(&self, url: &str) -> std::result::Result<StorageLocation, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// needs a folder, e.g. file://backups/dev".into());
            }
            return Ok(StorageLocation::File(self.dir.join(path)));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.len() < 3 {
                return Err(format!(
                    "S3 bucket name '{bucket}' must have at least 3 characters"
                ));
            }
            return Ok(StorageLocation::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        Err(format!(
            "'{}' is neither file://PATH nor s3://BUCKET/PREFIX",
            redact::redact(url)
        ))
    }

    /// The selected services (all when `selected` is empty), expanded.
    pub fn services(&self, selected: &[String]) -> Result<Vec<Service>> {
        let names: Vec<String> = if selected.is_empty() {
            self.service_names()
        } else {
            selected.to_vec()
        };
        names.iter().map(|n| self.service(n)).collect()
    }

    pub fn service(&self, name: &str) -> Result<Service> {
        let raw = self.raw.services.get(name).ok_or_else(|| {
            Error::usage_hint(
                format!("unknown service '{name}'"),
                format!(
                    "services in {}: {}",
                    self.path.display(),
                    join_or_none(&self.service_names())
                ),
            )
        })?;
        let postgres = match &raw.postgres {
            Some(pg) => {
                let url = self.expand(&format!("services.{name}.postgres.url"), &pg.url)?;
                redact::register_url(&url);
                let schema =
                    self.expand(&format!("services.{name}.postgres.schema"), &pg.schema)?;
                if schema.is_empty() || schema.len() > 63 || schema.starts_with("pg_") {
                    return Err(self.err(format!(
                        "services.{name}.postgres.schema: '{schema}' is not a usable schema name"
                    )));
                }
                Some(PostgresTarget { url, schema })
            }
            None => None,
        };
        let mongodb = match &raw.mongodb {
            Some(m) => {
                let url = self.expand(&format!("services.{name}.mongodb.url"), &m.url)?;
                redact::register_url(&url);
                let database =
                    self.expand(&format!("services.{name}.mongodb.database"), &m.database)?;
                if database.is_empty()
                    || database.len() > 63
                    || database.contains(['/', '\\', '.', ' ', '"', '$', '\0'])
                {
                    return Err(self.err(format!(
                        "services.{name}.mongodb.database: '{database}' is not a valid MongoDB database name"
                    )));
                }
                Some(MongoTarget { url, database })
            }
            None => None,
        };
        Ok(Service {
            name: name.to_string(),
            postgres,
            mongodb,
        })
    }
}

fn join_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "(none)".into()
    } else {
        names.join(", ")
    }
}

/// Service and environment names become parts of storage paths and lock
/// keys, so they are restricted to a safe alphabet.
pub fn validate_name(what: &str, name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{what} name '{}' is invalid: use 1-64 characters of a-z, 0-9, '_' and '-'",
            name.escape_debug()
        ))
    }
}

/// toml's messages carry line and column; unknown keys are also named.
fn describe_toml_error(_text: &str, e: &toml::de::Error) -> String {
    // toml renders "TOML parse error at line L, column C" plus a snippet;
    // keep it whole but on fewer lines.
    let rendered = e.to_string();
    let lines: Vec<&str> = rendered.lines().filter(|l| !l.trim().is_empty()).collect();
    let mut out = lines.join("\n  ");
    if !out.contains("line") {
        out = format!("{} ", e.message());
    }
    redact::redact(&out)
}

/// Parses sizes like `8MiB`, `64MB`, `16777216`.
pub fn parse_size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("'{t}' is not a size like 16MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("'{t}' has unknown size unit '{other}'")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{t}' is too large"))
}

/// `${VAR}` and nothing else → VAR.
fn whole_reference(text: &str) -> Option<&str> {
    let name = text.trim().strip_prefix("${")?.strip_suffix('}')?;
    is_variable_name(name).then_some(name)
}

/// Letters, digits and `_`: what a `${VAR}` reference may name.
fn is_variable_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Expands `${VAR}` and `${VAR:-default}` (the default is expanded too).
/// `$$` stands for a literal `$`. An unset variable without default is an
/// error naming the variable, never a value.
pub fn expand(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> std::result::Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let end = matching_brace(body_start)
            .ok_or_else(|| format!("unclosed '${{' in \"{}\"", redact::redact(text)))?;
        let body = &body_start[..end];
        let (name, default) = match body.find(":-") {
            Some(i) => (&body[..i], Some(&body[i + 2..])),
            None => (body, None),
        };
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("'${{{name}}}' is not a valid variable reference"));
        }
        match (lookup(name).filter(|v| !v.is_empty() || default.is_none()), default) {
            (Some(v), _) => out.push_str(&v),
            (None, Some(d)) => out.push_str(&expand(d, lookup)?),
            (None, None) => {
                return Err(format!(
                    "environment variable {name} is not set (and no default is given with ${{{name}:-default}})"
                ))
            }
        }
        rest = &body_start[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn matching_brace(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => return Some(i),
            '}' => depth -= 1,
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "HOST" => Some("db.internal".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_variables_and_defaults() {
        assert_eq!(
            expand("pg://${HOST}/x", &env).unwrap(),
            "pg://db.internal/x"
        );
        assert_eq!(expand("${NOPE:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("${EMPTY:-fallback}", &env).unwrap(), "fallback");
        assert_eq!(expand("${NOPE:-${HOST}}", &env).unwrap(), "db.internal");
        assert_eq!(expand("cost $$5 and $x", &env).unwrap(), "cost $5 and $x");
    }

    #[test]
    fn unset_variable_is_named() {
        let e = expand("${FIBU_DATABASE_URL}", &env).unwrap_err();
        assert!(e.contains("FIBU_DATABASE_URL"), "{e}");
    }

    #[test]
    fn unclosed_reference_is_an_error() {
        assert!(expand("${HOST", &env).is_err());
    }

    #[test]
    fn unknown_key_names_key_and_line() {
        let text = "[environments.dev]\nstorage = \"file://b\"\nstorrage = 1\n";
        let e = Config::parse(Path::new("v.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("storrage"), "{e}");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn service_names_that_could_escape_a_path_are_rejected() {
        let text = "[services.\"../x\"]\npostgres = { url = \"u\", schema = \"s\" }\n";
        let e = Config::parse(Path::new("v.toml"), text)
            .unwrap_err()
            .to_string();
        assert!(e.contains("../x"), "{e}");
    }

    #[test]
    fn storage_urls_are_parsed() {
        let text = "[environments.a]\nstorage = \"s3://bucket-x/pre/fix/\"\n[environments.b]\nstorage = \"ftp://x\"\n";
        let c = Config::parse(Path::new("/tmp/v.toml"), text).unwrap();
        assert_eq!(
            c.environment("a").unwrap().storage,
            StorageLocation::S3 {
                bucket: "bucket-x".into(),
                prefix: "pre/fix".into()
            }
        );
        assert!(c.environment("b").is_err());
        assert!(c.environment("zzz").is_err());
    }

    #[test]
    fn encryption_key_env_is_expanded_like_every_string() {
        let text = "[environments.a]\nstorage = \"file://b\"\nencryption = { key_env = \"${VALERO_TEST_UNSET_KEY_NAME:-SNAPSHOT_KEY_A}\" }\n";
        let c = Config::parse(Path::new("/tmp/v.toml"), text).unwrap();
        assert_eq!(
            c.environment("a").unwrap().encryption,
            Some(KeySource::Env("SNAPSHOT_KEY_A".into()))
        );
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("8MiB").unwrap(), 8 << 20);
        assert!(parse_size("8 parsecs").is_err());
    }

    fn dev_with(extra: &str) -> Result<Environment> {
        let text = format!("[environments.dev]\nstorage = \"file://b\"\n{extra}");
        Config::parse(Path::new("valero-db.toml"), &text)?.environment("dev")
    }

    #[test]
    fn compression_level_defaults_and_is_bounded() {
        assert_eq!(dev_with("").unwrap().compression.level, 1);
        let set = dev_with("compression = { level = 9 }\n").unwrap();
        assert_eq!(set.compression.level, 9);
        for bad in ["0", "20", "-1", "99999999999"] {
            let e = dev_with(&format!("compression = {{ level = {bad} }}\n")).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad}");
            assert!(e.to_string().contains("compression.level"), "{e}");
        }
        assert!(dev_with("compression = { level = 3, long = true }\n").is_err());
    }

    #[test]
    fn migration_lock_settings_default_to_3s_and_5_retries_and_are_bounded() {
        assert_eq!(
            dev_with("").unwrap().statement_locks,
            StatementLocks::default()
        );
        let set =
            dev_with("migration_lock_timeout = \"500ms\"\nmigration_lock_retries = 0\n").unwrap();
        assert_eq!(
            set.statement_locks.timeout,
            std::time::Duration::from_millis(500)
        );
        assert_eq!(set.statement_locks.retries, 0);
        for bad in [
            "migration_lock_timeout = \"1ms\"",
            "migration_lock_timeout = \"11m\"",
            "migration_lock_timeout = \"3\"",
            "migration_lock_retries = 101",
        ] {
            let e = dev_with(bad).unwrap_err().to_string();
            assert!(e.contains("environments.dev.migration_lock_"), "{bad}: {e}");
        }
    }

    #[test]
    fn pauses_between_migration_lock_retries_double_up_to_15s() {
        let secs: Vec<u64> = (1..=7)
            .map(|n| StatementLocks::default().pause_before(n).as_secs())
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 15, 15, 15]);
    }
}
