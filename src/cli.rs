//! Command-line syntax only: clap structs for every command and option of
//! the product contract. Behaviour lives in `commands`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::OutputFormat;
use crate::units::parse_duration;

#[derive(Debug, Parser)]
#[command(
    name = "valero-db",
    version,
    about = "Per-service schema migrations, verified snapshots and point-in-time restore for PostgreSQL and MongoDB",
    propagate_version = false
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Configuration file [default: ./valero-db.toml]
    #[arg(long, global = true, env = "VALERO_DB_CONFIG", value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Environment from the configuration
    #[arg(
        short = 'e',
        long = "env",
        global = true,
        env = "VALERO_DB_ENV",
        default_value = "dev"
    )]
    pub env: String,

    /// Service to work on (repeatable) [default: all services]
    #[arg(short = 's', long = "service", global = true, value_name = "NAME")]
    pub services: Vec<String>,

    /// Result format on stdout
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Human)]
    pub output: OutputFormat,

    /// No progress bars or periodic progress lines
    #[arg(long, global = true)]
    pub no_progress: bool,

    /// More log output on stderr (-v debug, -vv trace)
    #[arg(short = 'v', long = "verbose", global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors on stderr
    #[arg(short = 'q', long = "quiet", global = true)]
    pub quiet: bool,

    /// Log lines as text, or as one JSON object per event (for Loki or Elasticsearch)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "VALERO_DB_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Write Prometheus metrics to this file after the command (atomically, for node_exporter's textfile collector)
    #[arg(long, global = true, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// Also push the metrics to a Prometheus Pushgateway (http://host:9091)
    #[arg(long, global = true, value_name = "URL")]
    pub pushgateway: Option<String>,

    /// How long to wait for a service's migration lock (units required: 90s, 5m)
    #[arg(long, global = true, default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub lock_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum MaskCommand {
    /// Check this environment's masking rules against a snapshot, without restoring
    ///
    /// Reads the snapshot a refresh would load (the newest of --from-env,
    /// or --snapshot) and reports every rule that does not fit: an unknown
    /// table, column, collection or field, an output that does not fit
    /// the column's type, null on a NOT NULL column, a non-injective
    /// transformer on a unique column or index, and in strict mode every
    /// text column and string field no rule covers. Exit 2 when anything
    /// does not fit.
    Check(MaskCheckArgs),
}

#[derive(Debug, Clone, Default, Args)]
pub struct MaskCheckArgs {
    /// The environment the data comes from (default: this one)
    #[arg(long, value_name = "ENV")]
    pub from_env: Option<String>,
    /// The snapshot to check against (default: the newest one)
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// Print a few values and their stand-ins (on a terminal only, never
    /// into logs or JSON; needs the masking key)
    #[arg(long)]
    pub show_samples: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    Postgres,
    Mongodb,
}

impl From<EngineArg> for crate::config::EngineKind {
    fn from(e: EngineArg) -> Self {
        match e {
            EngineArg::Postgres => crate::config::EngineKind::Postgres,
            EngineArg::Mongodb => crate::config::EngineKind::Mongodb,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RepairAs {
    /// The migration was finished by hand
    Applied,
    /// The migration was undone by hand; it runs again on the next migrate
    Pending,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotsCommand {
    /// List complete snapshots of the selected services
    List,
    /// Re-read every object and check its size and sha256
    Verify {
        /// Snapshot id (see `snapshots list`)
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        id: Option<String>,
        /// Every snapshot of the selected services
        #[arg(long)]
        all: bool,
    },
    /// Apply retention; never removes the newest complete snapshot of a service
    #[command(group = clap::ArgGroup::new("policy").required(true).multiple(true).args(["keep_last", "keep_within"]))]
    Prune {
        /// Keep the N newest snapshots per service
        #[arg(long, value_name = "N")]
        keep_last: Option<usize>,
        /// Keep every snapshot younger than this (units required: 30d, 12h)
        #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
        keep_within: Option<Duration>,
        /// Show what would be removed
        #[arg(long)]
        dry_run: bool,
        /// Confirm (required when not interactive or in a protected environment)
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeployResult {
    Success,
    Failure,
}

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Check, snapshot and migrate; records the deployment
    PreDeploy {
        #[arg(long, value_name = "TAG")]
        release: String,
        /// What post-deploy --result failure does with the databases
        /// (`restore`, the default, discards what was written during the rollout)
        #[arg(long, value_enum, default_value = "restore")]
        on_failure: crate::deploy::OnFailure,
        /// Confirm a deploy into a protected environment, the rollback of
        /// post-deploy --result failure included
        #[arg(long)]
        yes: bool,
        /// Close another release's open deployment without rolling it back,
        /// recording why (otherwise this pre-deploy is refused)
        #[arg(long, value_name = "REASON")]
        supersede: Option<String>,
        /// The pipeline's id for this deployment (e.g. its run id), the same
        /// for pre-deploy, its retries and post-deploy; default: the open
        /// deployment of the release
        #[arg(long, value_name = "ID")]
        deployment_id: Option<String>,
    },
    /// Close the deployment; on failure roll the databases back
    PostDeploy {
        #[arg(long, value_name = "TAG")]
        release: String,
        #[arg(long, value_enum)]
        result: DeployResult,
        /// Command that must exit 0 (repeatable), on success
        #[arg(long, value_name = "CMD")]
        verify: Vec<String>,
        /// Command run first on failure (e.g. the service rollback script)
        #[arg(long, value_name = "CMD")]
        rollback_cmd: Option<String>,
        /// Override the choice made at pre-deploy
        #[arg(long, value_enum)]
        on_failure: Option<crate::deploy::OnFailure>,
        /// If the databases are restored: end the application's sessions
        /// that hold locks on a service's schema instead of waiting for them
        #[arg(long)]
        terminate_sessions: bool,
        /// The pipeline's id for this deployment (e.g. its run id), the same
        /// for pre-deploy, its retries and post-deploy; default: the open
        /// deployment of the release
        #[arg(long, value_name = "ID")]
        deployment_id: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Debug, Clone, Args)]
pub struct DeployArgs {
    #[arg(long, value_name = "TAG")]
    pub release: String,
    /// Command that must exit 0 after the rollout (repeatable)
    #[arg(long, value_name = "CMD")]
    pub verify: Vec<String>,
    /// Command run first when the deploy fails (e.g. the service rollback script)
    #[arg(long, value_name = "CMD")]
    pub rollback_cmd: Option<String>,
    /// What happens to the databases when the deploy fails (`restore`, the
    /// default, discards what was written during the rollout)
    #[arg(long, value_enum, default_value = "restore")]
    pub on_failure: crate::deploy::OnFailure,
    /// Limit for the rollout command (units required: 10m)
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub timeout: Option<Duration>,
    /// Confirm a deploy into a protected environment, its automatic
    /// database rollback included
    #[arg(long)]
    pub yes: bool,
    /// If the databases are restored: end the application's sessions that
    /// hold locks on a service's schema instead of waiting for them (needs --yes)
    #[arg(long, requires = "yes")]
    pub terminate_sessions: bool,
    /// Close another release's open deployment without rolling it back,
    /// recording why (otherwise this deploy is refused)
    #[arg(long, value_name = "REASON")]
    pub supersede: Option<String>,
    /// The pipeline's id for this deployment (e.g. its run id), the same for
    /// a rerun; default: the open deployment of the release
    #[arg(long, value_name = "ID")]
    pub deployment_id: Option<String>,
    /// The rollout command, after `--`
    #[arg(last = true, required = true, value_name = "ROLLOUT")]
    pub command: Vec<String>,
}

#[derive(Debug, Clone, Default, Args)]
#[command(group = clap::ArgGroup::new("source").required(true).args(["timestamp", "snapshot", "restore_point"]))]
pub struct RestoreArgs {
    /// RFC 3339 time with a zone, e.g. 2025-06-19T08:00:00Z
    #[arg(long, value_name = "TIME")]
    pub timestamp: Option<String>,
    /// A snapshot id from `snapshots list`
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// A restore point id from `snapshots list` (rp-...): the state right
    /// before the schema change it was taken for
    #[arg(long, value_name = "ID", conflicts_with = "from_env")]
    pub restore_point: Option<String>,
    /// Take the snapshot from another environment (e.g. refresh staging from prod)
    #[arg(long, value_name = "ENV")]
    pub from_env: Option<String>,
    /// With --timestamp: restore the snapshot alone, without replaying
    /// captured changes up to the time
    #[arg(long, requires = "timestamp")]
    pub snapshot_only: bool,
    /// Show what would be restored and replaced
    #[arg(long)]
    pub dry_run: bool,
    /// End the application's sessions that hold locks on the service's
    /// schema instead of waiting for them (needs --yes)
    #[arg(long, requires = "yes")]
    pub terminate_sessions: bool,
    /// Leave the snapshot's ownership and privileges out: every object is
    /// owned by the restoring role and carries no grants
    #[arg(long)]
    pub skip_privileges: bool,
    /// With --from-env: load the other environment's data unmasked, even
    /// from a protected environment or with masking rules configured
    #[arg(long, requires = "from_env")]
    pub no_mask: bool,
    /// Confirm (required when not interactive or in a protected environment)
    #[arg(long)]
    pub yes: bool,
    /// Per service, a snapshot id (deploy's rollback); limits the services.
    #[arg(skip)]
    pub per_service: Option<std::collections::BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Args)]
pub struct RehearseArgs {
    /// The snapshot to restore (default: the newest one)
    #[arg(long, value_name = "ID")]
    pub snapshot: Option<String>,
    /// Take the snapshot from another environment (its data on this
    /// environment's server)
    #[arg(long, value_name = "ENV")]
    pub from_env: Option<String>,
    /// `lock=DURATION`: fail (exit 9) when a migration blocks writes to a
    /// table for longer
    #[arg(long, value_parser = parse_budget, value_name = "lock=DURATION")]
    pub budget: Option<Duration>,
    /// Restore the copy without the snapshot's ownership and privileges
    #[arg(long)]
    pub skip_privileges: bool,
    /// With --from-env: restore the copy unmasked, even from a protected
    /// environment or with masking rules configured
    #[arg(long, requires = "from_env")]
    pub no_mask: bool,
}

/// `lock=5s` → 5 s.
fn parse_budget(text: &str) -> Result<Duration, String> {
    let value = text
        .strip_prefix("lock=")
        .ok_or_else(|| format!("{text}: write the budget as lock=DURATION, e.g. lock=5s"))?;
    crate::units::parse_duration(value)
}

#[derive(Debug, Clone, Default, Args)]
pub struct MigrateArgs {
    /// Stop at this version
    #[arg(long, value_name = "VERSION")]
    pub to: Option<u64>,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Skip the pre-migrate snapshot (needs --yes without a terminal or in a protected environment)
    #[arg(long)]
    pub no_snapshot: bool,
    /// Release tag recorded with each applied migration
    #[arg(long, value_name = "TAG")]
    pub release: Option<String>,
    /// Confirm destructive or unsafe options
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Clone, Default, Args)]
pub struct RollbackArgs {
    /// Version to go back to (0 undoes everything)
    #[arg(
        long,
        value_name = "VERSION",
        required_unless_present = "release",
        conflicts_with = "release"
    )]
    pub to: Option<u64>,
    /// Go back to the versions a release was deployed with
    #[arg(long, value_name = "TAG")]
    pub release: Option<String>,
    /// Print the plan and change nothing
    #[arg(long)]
    pub dry_run: bool,
    /// Skip the pre-rollback snapshot (needs --yes)
    #[arg(long)]
    pub no_snapshot: bool,
    /// Confirm (required when not interactive or in a protected environment)
    #[arg(long)]
    pub yes: bool,
}

/// What `lint --deny` fails on besides errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Deny {
    Warnings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check, snapshot, migrate, run the rollout, verify; roll the databases back on failure
    Deploy(DeployArgs),
    /// Pipeline hooks: the deploy split in two around a rollout run elsewhere
    Hook {
        #[command(subcommand)]
        command: HookCommand,
    },
    /// Releases deployed to the environment, with versions and snapshots
    Releases,
    /// The go-live check: reachable, migrated, no drift, a fresh verified snapshot
    Check {
        /// Newest snapshot must be younger than this
        #[arg(long, value_parser = parse_duration, default_value = "24h", value_name = "DURATION")]
        max_age: Duration,
    },
    /// Shell completions
    Completions {
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Ship committed changes to the storage, for restores to any second
    Capture {
        /// Ship everything committed up to now, then exit (cron, tests)
        #[arg(long)]
        once: bool,
        /// Without --once: ship at least this often, until stopped
        #[arg(long, value_parser = parse_duration, default_value = "10s", value_name = "DURATION")]
        interval: Duration,
        /// Remove the PostgreSQL replication slot and publication of the selected services
        #[arg(long = "drop", conflicts_with = "once")]
        drop_slot: bool,
        /// Confirm --drop without a prompt
        #[arg(long)]
        yes: bool,
        /// Serve metrics for Prometheus at http://ADDR/metrics while capturing (e.g. 0.0.0.0:9187)
        #[arg(long, value_name = "ADDR", conflicts_with_all = ["once", "drop_slot"])]
        metrics_listen: Option<std::net::SocketAddr>,
    },
    /// Take a snapshot of the selected services now
    Snapshot {
        /// Free text recorded in the manifest
        #[arg(long)]
        label: Option<String>,
    },
    /// Restore each selected service to its state as of a time, or to a snapshot
    Restore(RestoreArgs),
    /// Masking rules of refreshes from another environment
    Mask {
        #[command(subcommand)]
        command: MaskCommand,
    },
    /// Inspect, verify and prune snapshots
    Snapshots {
        #[command(subcommand)]
        command: SnapshotsCommand,
    },
    /// Per service and engine: version, pending migrations, drift, dirty state, lock holder
    Status {
        /// Exit 9 if anything is pending, dirty or drifted
        #[arg(long)]
        check: bool,
    },
    /// Apply pending migrations (after a verified snapshot)
    Migrate(MigrateArgs),
    /// Rehearse the pending migrations on a restored copy, measuring locks and time
    ///
    /// Restores the newest snapshot (or --snapshot, or one of --from-env)
    /// into a scratch database on the service's PostgreSQL server, applies
    /// the pending migrations there as `migrate` would, reports per
    /// migration its time, the locks it held on each table and for how
    /// long, tables rewritten and WAL written, and drops the scratch
    /// database. The live service is never touched. A migration that fails
    /// on the copy is exit 6; --budget lock=D makes a write-blocking lock
    /// held longer than D exit 9.
    Rehearse(RehearseArgs),
    /// Check pending migrations for lock hazards, rewrites and data loss
    ///
    /// Exit 0 with warnings; 5 for errors, or for warnings with --deny
    /// warnings. `-- valero:allow <rule> <reason>` above a statement accepts
    /// one finding on purpose. Rules: docs/lint.md.
    Lint {
        /// Every migration file, not only the pending ones (no database needed)
        #[arg(long)]
        all: bool,
        /// `warnings`: warnings fail the lint as well
        #[arg(long, value_enum, value_name = "LEVEL")]
        deny: Option<Deny>,
    },
    /// Run down migrations back to a version
    Rollback(RollbackArgs),
    /// Create the next migration file pair
    New {
        /// Service from the configuration
        service: String,
        /// Engine the migration is for
        #[arg(value_enum)]
        engine: EngineArg,
        /// What the migration does (becomes part of the file name)
        #[arg(required = true, num_args = 1..)]
        description: Vec<String>,
    },
    /// Adopt an existing database: mark versions up to V as applied without running them
    Baseline {
        /// Highest version to mark as applied
        #[arg(
            long = "version",
            value_name = "VERSION",
            required_unless_present = "release"
        )]
        baseline_version: Option<u64>,
        /// Record the versions (after marking, or as they are) as this
        /// release, deployed before valero-db: `rollback --release` can go
        /// back to it
        #[arg(long, value_name = "TAG")]
        release: Option<String>,
        /// Only this engine
        #[arg(long, value_enum)]
        engine: Option<EngineArg>,
    },
    /// Clear the dirty mark of a version after fixing it by hand
    Repair {
        #[arg(long, value_enum)]
        engine: EngineArg,
        #[arg(long = "version", value_name = "VERSION")]
        repair_version: u64,
        /// What was done by hand
        #[arg(long = "as", value_enum)]
        as_: RepairAs,
    },
}

/// How log lines on stderr are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}
