//! The manifest: the last object of a snapshot, listing every object with
//! its size and sha256, plus what was captured, when and why. Documented in
//! docs/snapshot-format.md.

use serde::{Deserialize, Serialize};

use crate::config::EngineKind;
use crate::error::{Error, Result};

/// Written by this version. 2 added column-block table objects
/// (`encoding`); format 1 manifests are read as before.
pub const FORMAT_VERSION: u32 = 2;
/// Every format this version reads.
pub const READABLE_FORMATS: std::ops::RangeInclusive<u32> = 1..=FORMAT_VERSION;

/// A new snapshot id: UTC time (sorts by time) and a random suffix.
pub fn new_id(at: chrono::DateTime<chrono::Utc>) -> String {
    let suffix = &uuid::Uuid::new_v4().simple().to_string()[..6];
    format!("{}-{suffix}", at.format("%Y%m%dT%H%M%S%.3fZ"))
}

/// Snapshot ids come from users and manifests: a strict alphabet.
pub fn validate_id(id: &str) -> Result<()> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if ok && !id.contains("..") {
        Ok(())
    } else {
        Err(Error::usage(format!(
            "'{}' is not a snapshot id (see `valero-db snapshots list`)",
            id.escape_debug()
        )))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ObjectEntry {
    /// Relative to the snapshot folder.
    pub key: String,
    pub kind: ObjectKind,
    /// The table or collection name as in the database.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Stored (compressed) bytes.
    pub size: u64,
    /// sha256 of the stored bytes, hex.
    pub sha256: String,
    /// Uncompressed bytes (what zstd decompresses to, before decoding).
    pub raw_size: u64,
    /// How the uncompressed bytes are laid out; absent for plain.
    #[serde(default, skip_serializing_if = "Encoding::is_plain")]
    pub encoding: Encoding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u64>,
    /// Stored encrypted (see the manifest's `encryption`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub encrypted: bool,
}

/// The layout of an object's uncompressed bytes.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
pub enum Encoding {
    /// The bytes as the engine produced them.
    #[default]
    #[serde(rename = "plain")]
    Plain,
    /// COPY text regrouped column by column (`snapshot::columns`).
    #[serde(rename = "copy-columns")]
    CopyColumns,
}

impl Encoding {
    pub fn is_plain(&self) -> bool {
        *self == Encoding::Plain
    }
}

/// What a stored object holds; written as `<engine>/<what>`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum ObjectKind {
    /// The schema's DDL before the data (`pg_dump --section=pre-data`).
    #[serde(rename = "postgres/pre-data")]
    PostgresPreData,
    /// One table's rows as COPY text.
    #[serde(rename = "postgres/table")]
    PostgresTable,
    /// `setval` of every sequence.
    #[serde(rename = "postgres/sequences")]
    PostgresSequences,
    /// Indexes, constraints, triggers (`pg_dump --section=post-data`).
    #[serde(rename = "postgres/post-data")]
    PostgresPostData,
    /// A capture segment's decoded changes.
    #[serde(rename = "postgres/changes")]
    PostgresChanges,
    /// One collection's documents, BSON one after another.
    #[serde(rename = "mongodb/collection")]
    MongoCollection,
    /// One collection's options and indexes (mongodump's metadata.json).
    #[serde(rename = "mongodb/metadata")]
    MongoMetadata,
    /// A capture segment's change events.
    #[serde(rename = "mongodb/changes")]
    MongoChanges,
}

/// How the objects of a snapshot were encrypted; never the key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EncryptionInfo {
    pub cipher: String,
    /// HMAC-SHA256 of a fixed label under the key, 8 bytes hex.
    pub key_fingerprint: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EngineInfo {
    pub engine: EngineKind,
    /// Schema (PostgreSQL) or database (MongoDB).
    pub target: String,
    pub server_version: String,
    /// Highest applied migration version at the consistent point.
    pub schema_version: Option<u64>,
    pub consistent_at: chrono::DateTime<chrono::Utc>,
    /// Engine-specific position: PostgreSQL transaction snapshot and WAL
    /// LSN; MongoDB cluster time and read mode.
    pub position: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    pub id: String,
    pub environment: String,
    pub service: String,
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// The service's consistent point: the latest of its engines'.
    pub consistent_at: chrono::DateTime<chrono::Utc>,
    pub reason: String,
    pub release: Option<String>,
    pub label: Option<String>,
    pub tool_version: String,
    /// How long taking the snapshot took.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    pub engines: Vec<EngineInfo>,
    pub objects: Vec<ObjectEntry>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<EncryptionInfo>,
}

impl Manifest {
    /// A manifest with nothing in it, for unit tests of what reads one.
    #[cfg(test)]
    pub fn empty_for_test(id: &str, at: chrono::DateTime<chrono::Utc>) -> Manifest {
        Manifest {
            format: FORMAT_VERSION,
            id: id.into(),
            environment: "dev".into(),
            service: "svc".into(),
            created_at: at,
            consistent_at: at,
            reason: "manual".into(),
            release: None,
            label: None,
            tool_version: "test".into(),
            duration_ms: None,
            engines: vec![],
            objects: vec![],
            encryption: None,
        }
    }

    /// What the snapshot recorded of one engine, if it has that engine.
    pub fn engine(&self, kind: EngineKind) -> Option<&EngineInfo> {
        self.engines.iter().find(|e| e.engine == kind)
    }

    pub fn parse(bytes: &[u8]) -> Result<Manifest, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !READABLE_FORMATS.contains(&m.format) {
            return Err(format!(
                "unknown format version {} (this valero-db reads {} to {}; a newer valero-db wrote it)",
                m.format,
                READABLE_FORMATS.start(),
                READABLE_FORMATS.end()
            ));
        }
        validate_id(&m.id).map_err(|e| e.to_string())?;
        for o in &m.objects {
            crate::storage::validate_key(&o.key)?;
            if o.sha256.len() != 64 || !o.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(format!("object {} has no valid sha256", o.key));
            }
            if o.encrypted != m.encryption.is_some() {
                return Err(format!(
                    "object {} is {}encrypted, unlike the snapshot",
                    o.key,
                    if o.encrypted { "" } else { "not " }
                ));
            }
        }
        Ok(m)
    }

    pub fn total_size(&self) -> u64 {
        self.objects.iter().map(|o| o.size).sum()
    }

    pub fn schema_version(&self, engine: EngineKind) -> Option<u64> {
        self.engine(engine).and_then(|e| e.schema_version)
    }
}
