//! `valero-db lint`: what a migration will do to a running production
//! database, read from its text before it runs. PostgreSQL files are parsed
//! by squawk's parser and checked by its rule set for lock and rewrite
//! hazards (`postgres`), plus valero-db's own rules about how it runs files
//! (transactions, down files); MongoDB command files are checked for
//! destructive and blocking commands (`mongodb`). Pure: no database.

pub mod mongodb;
pub mod postgres;

use serde::Serialize;

use crate::migrate::files::{Body, Migration};

/// How bad a finding is: an error will fail or lose data for certain; a
/// warning is a hazard under load or for the running release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Warning,
    Error,
}

/// Where in a file a finding is: a line (SQL) or a command (MongoDB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Line(usize),
    Command(usize),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Command(n) => write!(f, "command {n}"),
        }
    }
}

/// One finding: where, which rule, why it matters, how to write it safely.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub file: String,
    pub at: Location,
    pub rule: String,
    pub severity: Severity,
    pub message: String,
    pub help: String,
    /// The reason of the `-- valero:allow <rule> <reason>` comment that
    /// silences this finding, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allowed: Option<String>,
}

impl Finding {
    /// Whether it counts: not silenced by an allow comment.
    pub fn counts(&self) -> bool {
        self.allowed.is_none()
    }

    pub fn severity_name(&self) -> &'static str {
        match self.severity {
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Findings for people: one block per finding, allowed ones with their
/// recorded reason.
pub fn render(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let status = match &f.allowed {
            Some(reason) => format!("allowed ({reason})"),
            None => f.severity_name().to_string(),
        };
        out.push_str(&format!(
            "  {}:{}  {status}  {}\n      {}\n      safer: {}\n",
            f.file,
            match f.at {
                Location::Line(n) => format!("{n}"),
                Location::Command(n) => format!("command {n}"),
            },
            f.rule,
            f.message,
            f.help
        ));
    }
    out
}

/// Lints the up file (and what it means for the down file) of each
/// migration, in order.
pub fn lint(migrations: &[&Migration]) -> Vec<Finding> {
    let mut findings = Vec::new();
    for m in migrations {
        let file = m.file_name();
        match &m.up.body {
            Body::Sql {
                sql,
                no_transaction,
            } => findings.extend(postgres::lint_file(
                &file,
                sql,
                *no_transaction,
                m.down.is_some(),
            )),
            Body::Commands(commands) => {
                findings.extend(mongodb::lint_file(&file, commands, m.down.is_some()))
            }
        }
    }
    findings
}

/// The counts a report and the exit code are made of.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Tally {
    pub errors: usize,
    pub warnings: usize,
    pub allowed: usize,
}

pub fn tally(findings: &[Finding]) -> Tally {
    let mut t = Tally::default();
    for f in findings {
        match (f.counts(), f.severity) {
            (false, _) => t.allowed += 1,
            (true, Severity::Error) => t.errors += 1,
            (true, Severity::Warning) => t.warnings += 1,
        }
    }
    t
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
