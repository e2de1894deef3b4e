//! Pure planning: compares the migration files with the history of a
//! database and decides what is pending, drifted, dirty, or to be undone.

use serde::Serialize;

use crate::config::EngineKind;
use crate::migrate::files::Migration;

/// The state of one history row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RowState {
    Applied,
    /// Started but not known to have finished (no-transaction SQL, MongoDB).
    Dirty,
}

impl RowState {
    pub fn as_str(self) -> &'static str {
        match self {
            RowState::Applied => "applied",
            RowState::Dirty => "dirty",
        }
    }

    pub fn parse(s: &str) -> RowState {
        if s == "applied" {
            RowState::Applied
        } else {
            RowState::Dirty
        }
    }
}

/// One row of `valero_schema_history`.
#[derive(Debug, Clone, Serialize)]
pub struct AppliedMigration {
    pub version: u64,
    pub description: String,
    pub checksum: String,
    pub state: RowState,
    pub applied_at: Option<chrono::DateTime<chrono::Utc>>,
    pub release: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Drift {
    pub version: u64,
    pub file: String,
    pub applied_checksum: String,
    pub file_checksum: String,
}

/// Everything `status` and `migrate` need to know about one service engine.
#[derive(Debug, Clone, Default)]
pub struct Analysis {
    pub current: Option<u64>,
    pub pending: Vec<u64>,
    pub drift: Vec<Drift>,
    pub dirty: Option<AppliedMigration>,
    /// Applied versions whose file no longer exists.
    pub missing_files: Vec<u64>,
    /// Files older than the current version that were never applied.
    pub out_of_order: Vec<u64>,
}

impl Analysis {
    pub fn is_clean(&self) -> bool {
        self.pending.is_empty()
            && self.drift.is_empty()
            && self.dirty.is_none()
            && self.out_of_order.is_empty()
    }
}

pub fn analyze(local: &[Migration], applied: &[AppliedMigration]) -> Analysis {
    let current = applied
        .iter()
        .filter(|a| a.state == RowState::Applied)
        .map(|a| a.version)
        .max();
    let dirty = applied.iter().find(|a| a.state == RowState::Dirty).cloned();
    let mut analysis = Analysis {
        current,
        dirty,
        ..Analysis::default()
    };
    for m in local {
        match applied.iter().find(|a| a.version == m.version) {
            Some(a) if a.checksum != m.checksum => analysis.drift.push(Drift {
                version: m.version,
                file: m.file_name(),
                applied_checksum: a.checksum.clone(),
                file_checksum: m.checksum.clone(),
            }),
            Some(_) => {}
            None if current.is_some_and(|c| m.version < c) => analysis.out_of_order.push(m.version),
            None => analysis.pending.push(m.version),
        }
    }
    for a in applied {
        if !local.iter().any(|m| m.version == a.version) {
            analysis.missing_files.push(a.version);
        }
    }
    analysis
}

/// Why a plan cannot be made; the caller turns it into an error with context.
#[derive(Debug, PartialEq)]
pub enum PlanError {
    UnknownTarget(u64),
    TargetBelowCurrent { target: u64, current: u64 },
    MissingDown(Vec<u64>),
    MissingFile(u64),
}

/// The migrations to apply, in order, up to and including `to`.
pub fn plan_up<'a>(
    local: &'a [Migration],
    analysis: &Analysis,
    to: Option<u64>,
) -> Result<Vec<&'a Migration>, PlanError> {
    if let Some(target) = to {
        let known = local.iter().any(|m| m.version == target);
        if let Some(current) = analysis.current {
            if target < current {
                return Err(PlanError::TargetBelowCurrent { target, current });
            }
        }
        if !known && analysis.current != Some(target) {
            return Err(PlanError::UnknownTarget(target));
        }
    }
    Ok(local
        .iter()
        .filter(|m| analysis.pending.contains(&m.version))
        .filter(|m| to.is_none_or(|t| m.version <= t))
        .collect())
}

/// The migrations to undo, newest first, to get back to version `to`
/// (0 undoes everything). Refuses if any of them lacks a down file.
pub fn plan_down<'a>(
    local: &'a [Migration],
    applied: &[AppliedMigration],
    to: u64,
) -> Result<Vec<&'a Migration>, PlanError> {
    if to != 0 && !applied.iter().any(|a| a.version == to) {
        return Err(PlanError::UnknownTarget(to));
    }
    let mut undo: Vec<&AppliedMigration> = applied.iter().filter(|a| a.version > to).collect();
    undo.sort_by_key(|a| std::cmp::Reverse(a.version));
    let mut plan = Vec::with_capacity(undo.len());
    let mut missing_down = Vec::new();
    for a in undo {
        match local.iter().find(|m| m.version == a.version) {
            Some(m) if m.down.is_some() => plan.push(m),
            Some(m) => missing_down.push(m.version),
            None => return Err(PlanError::MissingFile(a.version)),
        }
    }
    if !missing_down.is_empty() {
        return Err(PlanError::MissingDown(missing_down));
    }
    Ok(plan)
}

/// Where a rollback goes: one version for every engine, or per service and
/// engine (the versions a release was deployed with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RollbackTargets {
    All(u64),
    PerEngine(std::collections::BTreeMap<(String, EngineKind), u64>),
}

impl RollbackTargets {
    /// The version one engine of one service goes back to, if any.
    pub fn get(&self, service: &str, engine: EngineKind) -> Option<u64> {
        match self {
            RollbackTargets::All(v) => Some(*v),
            RollbackTargets::PerEngine(m) => m.get(&(service.to_string(), engine)).copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrate::files::{Body, Script};

    fn m(version: u64, checksum: &str, down: bool) -> Migration {
        let script = |p: &str| Script {
            path: p.into(),
            body: Body::Sql {
                sql: "SELECT 1".into(),
                no_transaction: false,
            },
        };
        Migration {
            version,
            description: format!("m{version}"),
            checksum: checksum.into(),
            up: script(&format!("{version}_m.up.sql")),
            down: down.then(|| script(&format!("{version}_m.down.sql"))),
        }
    }

    fn a(version: u64, checksum: &str) -> AppliedMigration {
        AppliedMigration {
            version,
            description: format!("m{version}"),
            checksum: checksum.into(),
            state: RowState::Applied,
            applied_at: None,
            release: None,
            detail: None,
        }
    }

    #[test]
    fn fresh_database_has_everything_pending() {
        let local = vec![m(1, "a", true), m(2, "b", true)];
        let an = analyze(&local, &[]);
        assert_eq!(an.pending, vec![1, 2]);
        assert_eq!(an.current, None);
    }

    #[test]
    fn changed_checksum_is_drift() {
        let local = vec![m(1, "a", true), m(2, "b", true)];
        let an = analyze(&local, &[a(1, "zzz")]);
        assert_eq!(an.drift.len(), 1);
        assert_eq!(an.drift[0].version, 1);
        assert_eq!(an.pending, vec![2]);
    }

    #[test]
    fn a_new_file_below_the_current_version_is_out_of_order() {
        let local = vec![m(1, "a", true), m(2, "b", true), m(3, "c", true)];
        let an = analyze(&local, &[a(1, "a"), a(3, "c")]);
        assert_eq!(an.out_of_order, vec![2]);
        assert!(an.pending.is_empty());
    }

    #[test]
    fn plan_up_stops_at_target() {
        let local = vec![m(1, "a", true), m(2, "b", true), m(3, "c", true)];
        let an = analyze(&local, &[a(1, "a")]);
        let plan = plan_up(&local, &an, Some(2)).unwrap();
        assert_eq!(plan.iter().map(|m| m.version).collect::<Vec<_>>(), vec![2]);
        assert_eq!(
            plan_up(&local, &an, Some(9)).unwrap_err(),
            PlanError::UnknownTarget(9)
        );
        let an = analyze(&local, &[a(1, "a"), a(2, "b")]);
        assert!(matches!(
            plan_up(&local, &an, Some(1)),
            Err(PlanError::TargetBelowCurrent { .. })
        ));
    }

    #[test]
    fn plan_down_goes_newest_first_and_refuses_missing_down_files() {
        let local = vec![m(1, "a", true), m(2, "b", false), m(3, "c", true)];
        let applied = vec![a(1, "a"), a(2, "b"), a(3, "c")];
        let plan = plan_down(&local, &applied, 2).unwrap();
        assert_eq!(plan.iter().map(|m| m.version).collect::<Vec<_>>(), vec![3]);
        assert_eq!(
            plan_down(&local, &applied, 1).unwrap_err(),
            PlanError::MissingDown(vec![2])
        );
        assert_eq!(
            plan_down(&local, &applied, 7).unwrap_err(),
            PlanError::UnknownTarget(7)
        );
    }
}
