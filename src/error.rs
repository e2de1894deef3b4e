//! Typed errors for every failure valero-db can report, and the one table that
//! maps them to the exit codes of the product contract.

use std::path::PathBuf;

/// Every error carries enough context (service, engine, file, version) to be
/// read on its own at 3 a.m.; `hint()` says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{message}")]
    Usage {
        message: String,
        hint: Option<String>,
    },
    #[error("configuration error in {path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("bad migration file {path}: {message}")]
    MigrationFile { path: PathBuf, message: String },
    #[error("{what} is unreachable: {message}")]
    Unreachable { what: String, message: String },
    #[error("{what} is full: {message}")]
    StorageFull { what: String, message: String },
    #[error(
        "lock for service {service} ({engine}) not acquired within {timeout}: held by {holder}"
    )]
    LockTimeout {
        service: String,
        engine: String,
        timeout: String,
        holder: String,
    },
    #[error("{message}")]
    Integrity {
        message: String,
        hint: Option<String>,
    },
    #[error("migration {file} of service {service} ({engine}) failed: {message}")]
    MigrationFailed {
        service: String,
        engine: String,
        file: String,
        message: String,
        hint: Option<String>,
    },
    #[error("service {service} ({engine}) is dirty: version {version} ({description}) did not complete: {detail}")]
    Dirty {
        service: String,
        engine: String,
        version: u64,
        description: String,
        detail: String,
    },
    #[error("{message}")]
    DeployFailed {
        message: String,
        hint: Option<String>,
    },
    #[error("{message}")]
    NoSnapshot { message: String },
    #[error("{message}")]
    NotReady { message: String },
    #[error("interrupted")]
    Interrupted,
    #[error("{message}")]
    Internal { message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint: None,
        }
    }

    pub fn usage_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        Error::Usage {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Error::Internal {
            message: message.into(),
        }
    }

    pub fn unreachable(what: impl Into<String>, message: impl std::fmt::Display) -> Self {
        Error::Unreachable {
            what: what.into(),
            message: message.to_string(),
        }
    }

    pub fn integrity(message: impl Into<String>, hint: Option<String>) -> Self {
        Error::Integrity {
            message: message.into(),
            hint,
        }
    }

    /// The exit code table of PRODUCT.md, in one place.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Internal { .. } => 1,
            Error::Usage { .. } | Error::Config { .. } | Error::MigrationFile { .. } => 2,
            Error::Unreachable { .. } | Error::StorageFull { .. } => 3,
            Error::LockTimeout { .. } => 4,
            Error::Integrity { .. } => 5,
            Error::MigrationFailed { .. } | Error::Dirty { .. } => 6,
            Error::DeployFailed { .. } => 7,
            Error::NoSnapshot { .. } => 8,
            Error::NotReady { .. } => 9,
            Error::Interrupted => 130,
        }
    }

    /// A short machine-readable name of the error class, used in JSON output.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Usage { .. } => "usage",
            Error::Config { .. } => "config",
            Error::MigrationFile { .. } => "migration_file",
            Error::Unreachable { .. } => "unreachable",
            Error::StorageFull { .. } => "storage_full",
            Error::LockTimeout { .. } => "lock_timeout",
            Error::Integrity { .. } => "integrity",
            Error::MigrationFailed { .. } => "migration_failed",
            Error::Dirty { .. } => "dirty",
            Error::DeployFailed { .. } => "deploy_failed",
            Error::NoSnapshot { .. } => "no_snapshot",
            Error::NotReady { .. } => "not_ready",
            Error::Interrupted => "interrupted",
            Error::Internal { .. } => "internal",
        }
    }

    /// What the operator should do next.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { hint, .. } | Error::Integrity { hint, .. } => hint.clone(),
            Error::MigrationFailed { hint, .. } | Error::DeployFailed { hint, .. } => hint.clone(),
            Error::Config { .. } => {
                Some("fix the configuration file; `valero-db --help` lists the options".into())
            }
            Error::MigrationFile { .. } => Some(
                "migration files are named <version>_<description>.up.sql|.down.sql (postgres) \
                 or .up.json|.down.json (mongodb); `valero-db new` creates a correct pair"
                    .into(),
            ),
            Error::Unreachable { .. } => Some(
                "check that the server is running and that the URL, network and credentials are right"
                    .into(),
            ),
            Error::StorageFull { .. } => Some(
                "free space on the storage or remove old snapshots with `valero-db snapshots prune`; \
                 the incomplete snapshot was removed and nothing was migrated"
                    .into(),
            ),
            Error::LockTimeout { .. } => Some(
                "another valero-db run is working on this service; wait for it to finish or raise --lock-timeout"
                    .into(),
            ),
            Error::Dirty {
                service,
                engine,
                version,
                ..
            } => Some(format!(
                "inspect the database and finish or undo the migration by hand, then clear the mark with \
                 `valero-db repair -s {service} --engine {engine} --version {version} --as applied` \
                 (finished by hand) or `--as pending` (undone by hand, so it runs again)"
            )),
            _ => None,
        }
    }
}

/// Whether an I/O error means the disk or a quota is full.
pub fn is_full(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSPC) | Some(libc::EDQUOT) | Some(libc::EFBIG)
    )
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::internal(format!("I/O error: {e}"))
    }
}
