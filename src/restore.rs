//! Restore, the engine-independent part: choosing the snapshot for a point
//! in time (pure), what a refresh from another environment masks, and
//! what a restore reports. The atomic loads themselves
//! live with each engine (`engine::postgres::restore`: one transaction;
//! `engine::mongodb::restore`: temporary collections, a journal, renames).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::{EngineKind, Environment, Service};
use crate::error::{Error, Result};
use crate::mask::Masking;
use crate::snapshot::Found;

/// Parses `--timestamp`: RFC 3339 with an explicit offset.
pub fn parse_timestamp(text: &str) -> Result<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(text.trim())
        .map(|t| t.to_utc())
        .map_err(|e| {
            let no_zone = chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S")
                .is_ok()
                || chrono::NaiveDateTime::parse_from_str(text.trim(), "%Y-%m-%dT%H:%M:%S%.f")
                    .is_ok();
            if no_zone {
                Error::usage_hint(
                    format!(
                        "--timestamp {text} has no time zone; a restore time must be unambiguous"
                    ),
                    format!("add Z for UTC or an offset, e.g. {text}Z or {text}+02:00"),
                )
            } else {
                Error::usage_hint(
                    format!("--timestamp {text} is not an RFC 3339 time ({e})"),
                    "use e.g. 2025-06-19T08:00:00Z",
                )
            }
        })
}

/// The newest complete snapshot whose consistent point is at or before `at`.
/// `found` is oldest first.
pub fn select_at(found: &[Found], at: chrono::DateTime<chrono::Utc>) -> Option<&Found> {
    found
        .iter()
        .filter(|f| f.manifest.consistent_at <= at)
        .max_by_key(|f| f.manifest.consistent_at)
}

/// `1h 5m 3s`-style age of a snapshot relative to the requested time.
pub fn describe_age(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0) as u64;
    if ms == 0 {
        return "exactly at the requested time".into();
    }
    let shown = if ms < 1000 {
        std::time::Duration::from_millis(ms)
    } else {
        std::time::Duration::from_secs(ms / 1000)
    };
    format!(
        "{} before the requested time",
        crate::units::format_duration(shown)
    )
}

/// What a restore (or rehearsal) from `source` into `target` masks, per
/// service. Within one environment nothing is masked. From another one,
/// the target's `masking` rules apply; without rules, data from a
/// protected environment is refused unless the operator says `--no-mask`.
pub fn masking_for(
    target: &Environment,
    source: &Environment,
    services: &[Service],
    no_mask: bool,
) -> Result<BTreeMap<String, Masking>> {
    if source.name == target.name {
        return Ok(BTreeMap::new());
    }
    if no_mask {
        tracing::warn!(
            "--no-mask: the data of {} is loaded into {} as it was stored, personal data included",
            source.name,
            target.name
        );
        return Ok(BTreeMap::new());
    }
    let Some(settings) = &target.masking else {
        if source.protected {
            return Err(Error::usage_hint(
                format!(
                    "environment {} is protected and {} has no masking rules: the refresh would copy its personal data unmasked; nothing was changed",
                    source.name, target.name
                ),
                format!(
                    "write rules under [environments.{}.masking] (see docs/masking.md), or pass --no-mask to copy the data as it is",
                    target.name
                ),
            ));
        }
        return Ok(BTreeMap::new());
    };
    let without: Vec<String> = services
        .iter()
        .flat_map(|s| {
            s.engines()
                .into_iter()
                .filter(|e| !settings.has_rules(&s.name, *e))
                .map(|e| format!("{} ({e})", s.name))
        })
        .collect();
    if source.protected && !without.is_empty() {
        return Err(Error::usage_hint(
            format!(
                "environment {} is protected and {} has no masking rules for {}; nothing was changed",
                source.name,
                target.name,
                without.join(", ")
            ),
            format!(
                "add [environments.{}.masking.services.<service>.postgres / .mongodb] rules (`keep` what is not personal), or pass --no-mask",
                target.name
            ),
        ));
    }
    let key = crate::mask::key_from(&settings.key_env)?;
    Ok(services
        .iter()
        .map(|s| (s.name.clone(), settings.for_service(&s.name, key.clone())))
        .collect())
}

/// What a restore does about the application's sessions that hold locks
/// on the service's data.
#[derive(Debug, Clone, Copy)]
pub struct LiveSessions {
    /// How long to keep trying to take the locks (`--lock-timeout`); every
    /// attempt waits at most `ATTEMPT`, so the application never queues
    /// behind the restore for longer.
    pub wait: std::time::Duration,
    /// End the sessions that hold locks on the schema (`--terminate-sessions`).
    pub terminate: bool,
}

impl LiveSessions {
    /// The longest one attempt to take the locks waits.
    pub const ATTEMPT: std::time::Duration = std::time::Duration::from_secs(2);
}

/// What a restore does with the ownership and privileges a snapshot
/// records (PostgreSQL).
#[derive(Debug, Clone, Default)]
pub struct Privileges {
    /// `--skip-privileges`: every object is owned by the restoring role and
    /// carries no grants.
    pub skip: bool,
    /// The target environment's `role_map`: a role named in the snapshot →
    /// the role that stands for it here.
    pub role_map: std::collections::BTreeMap<String, String>,
}

/// How a restore behaves towards what lives outside the snapshot: the
/// application's sessions and the server's roles.
#[derive(Debug, Clone)]
pub struct Conduct {
    pub live: LiveSessions,
    pub privileges: Privileges,
    /// The masking a refresh from another environment applies while the
    /// data streams (None: the data is loaded as it was stored).
    pub masking: Option<crate::mask::Masking>,
}

/// What a restore of one engine did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreStats {
    pub engine: EngineKind,
    pub objects: u64,
    /// Rows (PostgreSQL) or documents (MongoDB).
    pub rows: u64,
    /// Uncompressed bytes loaded.
    pub bytes: u64,
    /// Captured changes replayed on top of the snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<crate::capture::ReplayStats>,
    /// Sessions ended because they held locks (`--terminate-sessions`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub terminated_sessions: Vec<String>,
}

impl RestoreStats {
    pub fn new(engine: EngineKind) -> RestoreStats {
        RestoreStats {
            engine,
            objects: 0,
            rows: 0,
            bytes: 0,
            replayed: None,
            terminated_sessions: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::manifest::Manifest;

    fn found(id: &str, at: &str) -> Found {
        let t = chrono::DateTime::parse_from_rfc3339(at).unwrap().to_utc();
        Found {
            base: format!("dev/svc/{id}"),
            manifest: Manifest::empty_for_test(id, t),
        }
    }

    #[test]
    fn picks_the_newest_snapshot_at_or_before_the_time() {
        let all = vec![
            found("a", "2025-06-19T07:00:00Z"),
            found("b", "2025-06-19T08:00:00Z"),
            found("c", "2025-06-19T09:00:00Z"),
        ];
        let at = |s: &str| parse_timestamp(s).unwrap();
        assert_eq!(
            select_at(&all, at("2025-06-19T08:30:00Z"))
                .unwrap()
                .manifest
                .id,
            "b"
        );
        assert_eq!(
            select_at(&all, at("2025-06-19T08:00:00Z"))
                .unwrap()
                .manifest
                .id,
            "b"
        );
        assert_eq!(
            select_at(&all, at("2025-06-19T10:00:00+02:00"))
                .unwrap()
                .manifest
                .id,
            "b"
        );
        assert!(select_at(&all, at("2025-06-19T06:59:59Z")).is_none());
    }

    #[test]
    fn age_is_never_rounded_to_exactly() {
        assert_eq!(
            describe_age(chrono::Duration::milliseconds(0)),
            "exactly at the requested time"
        );
        assert_eq!(
            describe_age(chrono::Duration::milliseconds(730)),
            "730ms before the requested time"
        );
        assert_eq!(
            describe_age(chrono::Duration::seconds(3661)),
            "1h1m1s before the requested time"
        );
    }

    #[test]
    fn timestamps_need_a_zone() {
        let e = parse_timestamp("2025-06-19T08:00:00").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.hint().unwrap().contains("2025-06-19T08:00:00Z"));
        assert!(parse_timestamp("yesterday").is_err());
        assert!(parse_timestamp("2025-06-19T08:00:00+02:00").is_ok());
    }
}
