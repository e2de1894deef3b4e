//! A complete snapshot as found in storage: where it is, its manifest, what
//! people see of it, and whether the configured key opens it.

use super::manifest::Manifest;
use crate::config::EngineKind;
use crate::crypto::SnapshotKey;
use crate::error::{Error, Result};

/// A complete snapshot as found in storage.
#[derive(Debug, Clone)]
pub struct Found {
    pub base: String,
    pub manifest: Manifest,
}

/// What people and machines see of a complete snapshot.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    pub id: String,
    pub service: String,
    pub environment: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub consistent_at: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    pub release: Option<String>,
    pub label: Option<String>,
    pub schema_versions: std::collections::BTreeMap<EngineKind, Option<u64>>,
    pub size: u64,
    pub objects: usize,
    pub status: &'static str,
}

impl Found {
    pub fn summary(&self) -> Summary {
        let m = &self.manifest;
        Summary {
            id: m.id.clone(),
            service: m.service.clone(),
            environment: m.environment.clone(),
            created_at: m.created_at,
            consistent_at: m.consistent_at,
            reason: m.reason.clone(),
            release: m.release.clone(),
            label: m.label.clone(),
            schema_versions: m
                .engines
                .iter()
                .map(|e| (e.engine, e.schema_version))
                .collect(),
            size: m.total_size(),
            objects: m.objects.len(),
            status: "complete",
        }
    }

    /// Refuses, before anything is touched, a snapshot whose objects were
    /// encrypted when no key or another key is configured.
    pub fn check_key(&self, key: Option<&SnapshotKey>) -> Result<()> {
        let base = &self.base;
        let Some(info) = &self.manifest.encryption else {
            if key.is_some() {
                return Err(Error::integrity(
                    format!("snapshot {base} is not encrypted, but its environment encrypts snapshots; it may have been planted"),
                    Some("to restore a snapshot taken before encryption was enabled, remove the environment's encryption setting for that one command".into()),
                ));
            }
            return Ok(());
        };
        match key {
            None => Err(Error::usage_hint(
                format!("snapshot {base} is encrypted (key fingerprint {}) and no encryption key is configured for its environment", info.key_fingerprint),
                "set `encryption = { key_env = \"...\" }` or `{ key_file = \"...\" }` for the environment",
            )),
            Some(k) if k.fingerprint() != info.key_fingerprint => Err(Error::usage_hint(
                format!(
                    "snapshot {base} was encrypted with the key of fingerprint {}, but the configured key has fingerprint {}",
                    info.key_fingerprint,
                    k.fingerprint()
                ),
                "configure the key this snapshot was taken with; nothing was changed",
            )),
            Some(_) => Ok(()),
        }
    }
}
