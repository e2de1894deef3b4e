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
    /// A database refused a statement; `class` says what can be done.
    #[error("{what}: {message}{}", sqlstate.as_deref().map(|c| format!(" (SQLSTATE {c})")).unwrap_or_default())]
    Database {
        what: String,
        class: DbClass,
        message: String,
        sqlstate: Option<String>,
    },
    /// A local file or folder could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A restore of a service with two engines committed one and not the
    /// other: the service is between two states until it is repeated.
    #[error(
        "service {service}: {} was restored from {} but committing {} failed",
        .detail.committed,
        .detail.snapshot,
        .detail.failed
    )]
    PartialRestore {
        service: String,
        detail: Box<PartialCommit>,
        #[source]
        source: Box<Error>,
    },
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
    #[error("{what} did not get its locks within {timeout}: held by {sessions}")]
    Blocked {
        what: String,
        timeout: String,
        sessions: String,
        work: BlockedWork,
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
    /// Another release's deployment is open in the environment.
    #[error("{message}")]
    DeploymentOpen { message: String, hint: String },
    #[error("{message}")]
    NoSnapshot { message: String },
    #[error("{message}")]
    NotReady { message: String },
    /// `lint` found errors, or warnings under `--deny warnings`.
    #[error("{message}")]
    Lint { message: String },
    #[error("interrupted")]
    Interrupted,
    #[error("{message}")]
    Internal { message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Which engines of a service a restore committed, and from what.
#[derive(Debug)]
pub struct PartialCommit {
    pub committed: String,
    pub failed: String,
    pub snapshot: String,
    pub pre_restore: String,
}

/// The work the application's sessions blocked, which decides the hint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockedWork {
    /// A restore (also a deploy's database rollback): nothing was changed.
    Restore,
    /// A migration's transaction, rolled back after its last retry.
    Migration,
}

impl BlockedWork {
    pub fn hint(self) -> &'static str {
        match self {
            BlockedWork::Restore => {
                "nothing was changed; stop the application or scale it to zero, or repeat with \
                 --terminate-sessions --yes to end those sessions (their transactions roll back)"
            }
            BlockedWork::Migration => {
                "nothing of this migration was applied (files before it in this run stay applied); \
                 end or commit the blocking transactions, or run it while the application is idle, \
                 then run migrate again. The environment's migration_lock_timeout and \
                 migration_lock_retries set how long it tries"
            }
        }
    }
}

/// What an operator can do about a statement the database refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbClass {
    /// Another session held a lock, a deadlock, a serialization conflict:
    /// the same run later may succeed.
    Conflict,
    /// The configured role lacks a privilege.
    Privilege,
    /// Anything else: the statement cannot succeed as it is.
    Permanent,
}

impl DbClass {
    /// Classifies a PostgreSQL SQLSTATE.
    pub fn of_sqlstate(code: &str) -> DbClass {
        match code {
            "40001" | "40P01" | "55P03" | "55006" => DbClass::Conflict,
            "42501" => DbClass::Privilege,
            _ => DbClass::Permanent,
        }
    }
}

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

    /// A failed file operation, naming the file; a full disk is
    /// `StorageFull` (exit 3).
    pub fn io(action: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let (action, path) = (action.into(), path.into());
        if is_full(&source) {
            return Error::StorageFull {
                what: path.display().to_string(),
                message: format!("{action}: {source}"),
            };
        }
        Error::Io {
            action,
            path,
            source,
        }
    }

    /// The causes below this error that its own message does not already
    /// say, outermost first.
    pub fn causes(&self) -> Vec<String> {
        let own = self.to_string();
        let mut out = Vec::new();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !own.contains(&text) {
                out.push(text);
            }
            source = cause.source();
        }
        out
    }

    /// The message with every cause, for one-line reports (JSON).
    pub fn full_message(&self) -> String {
        std::iter::once(self.to_string())
            .chain(self.causes())
            .collect::<Vec<_>>()
            .join(": ")
    }

    /// A database or the storage cannot be reached (exit 3): transient, a
    /// later run may succeed.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, Error::Unreachable { .. } | Error::StorageFull { .. })
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
            Error::Internal { .. } | Error::Io { .. } | Error::PartialRestore { .. } => 1,
            Error::Database { class, .. } => match class {
                DbClass::Conflict => 4,
                DbClass::Privilege => 2,
                DbClass::Permanent => 1,
            },
            Error::Usage { .. } | Error::Config { .. } | Error::MigrationFile { .. } => 2,
            Error::Unreachable { .. } | Error::StorageFull { .. } => 3,
            Error::LockTimeout { .. } | Error::Blocked { .. } | Error::DeploymentOpen { .. } => 4,
            Error::Integrity { .. } | Error::Lint { .. } => 5,
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
            Error::LockTimeout { .. } | Error::Blocked { .. } => "lock_timeout",
            Error::Integrity { .. } => "integrity",
            Error::Lint { .. } => "lint",
            Error::MigrationFailed { .. } => "migration_failed",
            Error::Dirty { .. } => "dirty",
            Error::DeployFailed { .. } => "deploy_failed",
            Error::DeploymentOpen { .. } => "deployment_open",
            Error::NoSnapshot { .. } => "no_snapshot",
            Error::NotReady { .. } => "not_ready",
            Error::Interrupted => "interrupted",
            Error::Internal { .. } => "internal",
            Error::Io { .. } => "io",
            Error::PartialRestore { .. } => "partial_restore",
            Error::Database { class, .. } => match class {
                DbClass::Conflict => "database_conflict",
                DbClass::Privilege => "database_privilege",
                DbClass::Permanent => "database",
            },
        }
    }

    /// What the operator should do next.
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage { hint, .. } | Error::Integrity { hint, .. } => hint.clone(),
            Error::MigrationFailed { hint, .. } | Error::DeployFailed { hint, .. } => hint.clone(),
            Error::DeploymentOpen { hint, .. } => Some(hint.clone()),
            Error::Lint { .. } => Some(
                "write each finding the safer way it names, or accept one on purpose with a `-- valero:allow <rule> <reason>` comment above its statement"
                    .into(),
            ),
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
            Error::Blocked { work, .. } => Some(work.hint().into()),
            Error::LockTimeout { .. } => Some(
                "another valero-db run is working on this service; wait for it to finish or raise --lock-timeout"
                    .into(),
            ),
            Error::Database { class, .. } => match class {
                DbClass::Conflict => Some(
                    "another session held a lock or changed the same rows; nothing was changed, run the command again"
                        .into(),
                ),
                DbClass::Privilege => Some(
                    "grant the configured role the privilege the database names, or connect as a role that has it"
                        .into(),
                ),
                DbClass::Permanent => None,
            },
            Error::PartialRestore {
                service, detail, ..
            } => Some(format!(
                "run the same restore again for -s {service} to finish, or restore the pre-restore snapshot {} to undo",
                detail.pre_restore
            )),
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
