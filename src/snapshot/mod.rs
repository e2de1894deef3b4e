//! Snapshots: one per service per run, stored as
//! `<env>/<service>/<snapshot-id>/<objects>` plus `manifest.json`, written
//! last. Objects are zstd-compressed and sha256-hashed while they stream.
//! A snapshot without a manifest does not exist for any command.

pub mod columns;
pub mod found;
pub mod manifest;
pub mod retention;
pub mod stream;

use std::io::Write;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::storage::{ObjectWriter, Storage};
pub use found::{Found, Summary};
pub use manifest::{new_id, validate_id, Encoding, Manifest, ObjectEntry, ObjectKind};

pub const MANIFEST: &str = "manifest.json";
/// Manifests are small; anything bigger is refused as tampered.
pub const MANIFEST_LIMIT: usize = 64 << 20;

/// A name made safe as one component of an object key; unsafe bytes
/// become `+XX`.
pub fn key_component(name: &str) -> String {
    let mut out = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || (b == b'.' && !out.is_empty()) {
            out.push(b as char);
        } else {
            out.push_str(&format!("+{b:02X}"));
        }
    }
    out
}

/// Collects the objects of one snapshot as they are written, so a failure
/// can delete them all.
pub struct SnapshotWriter<'a> {
    pub storage: &'a dyn Storage,
    pub base: String,
    pub objects: Vec<ObjectEntry>,
    threads: u32,
    progress: std::sync::Arc<crate::progress::Progress>,
}

impl<'a> SnapshotWriter<'a> {
    pub fn new(storage: &'a dyn Storage, base: String) -> Self {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let label = base.split('/').nth(1).unwrap_or("snapshot").to_string();
        SnapshotWriter {
            storage,
            base,
            objects: Vec::new(),
            threads,
            progress: std::sync::Arc::new(crate::progress::Progress::bytes(format!(
                "{label}: snapshot"
            ))),
        }
    }

    /// Starts a compressed object at `rel_key` (relative to the snapshot).
    pub async fn object(
        &mut self,
        rel_key: &str,
        kind: ObjectKind,
        name: Option<&str>,
    ) -> Result<ObjectSink> {
        self.encoded_object(rel_key, kind, name, Encoding::Plain)
            .await
    }

    /// Starts a compressed object whose bytes are re-laid out first
    /// (`Encoding::CopyColumns` for a table's COPY text).
    pub async fn encoded_object(
        &mut self,
        rel_key: &str,
        kind: ObjectKind,
        name: Option<&str>,
        encoding: Encoding,
    ) -> Result<ObjectSink> {
        crate::storage::validate_key(rel_key).map_err(Error::internal)?;
        let inner = self
            .storage
            .put(&format!("{}/{rel_key}", self.base))
            .await?;
        let level = self.storage.compression().level;
        let mut encoder = zstd::stream::write::Encoder::new(Vec::with_capacity(256 << 10), level)
            .map_err(|e| Error::internal(format!("zstd: {e}")))?;
        if self.threads > 1 {
            let _ = encoder.multithread(self.threads);
        }
        self.progress.set_message(name.unwrap_or(rel_key));
        let id = self.base.rsplit('/').next().unwrap_or_default();
        let cipher = match self.storage.key()? {
            Some(key) => Some(crate::crypto::Encryptor::new(
                key,
                format!("{id}/{rel_key}"),
            )?),
            None => None,
        };
        Ok(ObjectSink {
            progress: self.progress.clone(),
            inner: Some(inner),
            encrypted: cipher.is_some(),
            cipher,
            encoder: Some(encoder),
            columns: match encoding {
                Encoding::Plain => None,
                Encoding::CopyColumns => Some(columns::ColumnEncoder::new()),
            },
            hasher: Sha256::new(),
            stored: 0,
            raw: 0,
            entry: ObjectEntry {
                key: rel_key.to_string(),
                kind,
                name: name.map(str::to_string),
                size: 0,
                sha256: String::new(),
                raw_size: 0,
                encoding,
                rows: None,
                encrypted: false,
            },
        })
    }

    pub fn add(&mut self, entry: ObjectEntry) {
        self.objects.push(entry);
    }

    /// Removes every object written so far (a failed snapshot).
    pub async fn discard(&mut self) {
        for o in self.objects.drain(..) {
            let _ = self
                .storage
                .delete(&format!("{}/{}", self.base, o.key))
                .await;
        }
    }
}

/// One object being streamed: raw bytes in, zstd + sha256 + size out.
pub struct ObjectSink {
    progress: std::sync::Arc<crate::progress::Progress>,
    inner: Option<Box<dyn ObjectWriter>>,
    /// Seals the compressed stream when the environment encrypts snapshots.
    cipher: Option<crate::crypto::Encryptor>,
    encrypted: bool,
    encoder: Option<zstd::stream::write::Encoder<'static, Vec<u8>>>,
    /// Regroups a table's COPY text into column blocks before zstd.
    columns: Option<columns::ColumnEncoder>,
    hasher: Sha256,
    stored: u64,
    raw: u64,
    pub entry: ObjectEntry,
}

const FLUSH_AT: usize = 1 << 20;

impl ObjectSink {
    pub async fn write(&mut self, data: &[u8]) -> Result<()> {
        self.progress.inc(data.len() as u64);
        match self.columns.take() {
            Some(mut columns) => {
                let result = self.compress(columns.push(data)).await;
                self.columns = Some(columns);
                result
            }
            None => self.compress(data).await,
        }
    }

    /// Uncompressed bytes (after any re-layout) into zstd.
    /// Fed in pieces of at most FLUSH_AT, so the compressed buffer stays
    /// small whatever size of block arrives.
    async fn compress(&mut self, data: &[u8]) -> Result<()> {
        self.raw += data.len() as u64;
        for piece in data.chunks(FLUSH_AT) {
            let enc = self
                .encoder
                .as_mut()
                .ok_or_else(|| Error::internal("write after finish"))?;
            enc.write_all(piece)
                .map_err(|e| Error::internal(format!("zstd: {e}")))?;
            if enc.get_ref().len() >= FLUSH_AT {
                let out = std::mem::take(enc.get_mut());
                self.emit(&out).await?;
            }
        }
        Ok(())
    }

    /// Compressed bytes out of zstd: sealed if encrypting, then stored.
    async fn emit(&mut self, out: &[u8]) -> Result<()> {
        match self.cipher.as_mut() {
            Some(c) => {
                let sealed = c.push(out)?;
                self.store(&sealed).await
            }
            None => self.store(out).await,
        }
    }

    /// Stored bytes: hashed and counted as they go to the storage.
    async fn store(&mut self, out: &[u8]) -> Result<()> {
        if out.is_empty() {
            return Ok(());
        }
        self.hasher.update(out);
        self.stored += out.len() as u64;
        match self.inner.as_mut() {
            Some(w) => w.write(out).await,
            None => Err(Error::internal("object already closed")),
        }
    }

    pub fn raw_bytes(&self) -> u64 {
        self.raw
    }

    /// Completes the object; on failure nothing remains under its key.
    pub async fn finish(mut self) -> Result<ObjectEntry> {
        if let Err(e) = self.flush_tail().await {
            self.abort().await;
            return Err(e);
        }
        let inner = self
            .inner
            .take()
            .ok_or_else(|| Error::internal("finish twice"))?;
        inner.finish().await?;
        let mut entry = self.entry.clone();
        entry.size = self.stored;
        entry.raw_size = self.raw;
        entry.encrypted = self.encrypted;
        entry.sha256 = hex::encode(std::mem::take(&mut self.hasher).finalize());
        Ok(entry)
    }

    /// Everything still buffered, stored: the last column blocks, the end
    /// of the zstd frame and the last sealed chunk.
    async fn flush_tail(&mut self) -> Result<()> {
        if let Some(mut columns) = self.columns.take() {
            self.compress(columns.finish()?).await?;
        }
        let encoder = self
            .encoder
            .take()
            .ok_or_else(|| Error::internal("finish twice"))?;
        let tail = encoder
            .finish()
            .map_err(|e| Error::internal(format!("zstd: {e}")))?;
        self.emit(&tail).await?;
        if let Some(cipher) = self.cipher.take() {
            let sealed = cipher.finish()?;
            self.store(&sealed).await?;
        }
        Ok(())
    }

    pub async fn abort(mut self) {
        if let Some(w) = self.inner.take() {
            w.abort().await;
        }
    }
}

/// Reads an object back and checks its size and sha256 against the entry.
pub async fn verify_object(storage: &dyn Storage, base: &str, entry: &ObjectEntry) -> Result<()> {
    crate::storage::validate_key(&entry.key).map_err(|m| {
        Error::integrity(
            format!("snapshot {base}: manifest lists an unsafe object: {m}"),
            None,
        )
    })?;
    let key = format!("{base}/{}", entry.key);
    let mut reader = storage.get(&key).await.map_err(|e| match e {
        Error::Integrity { .. } => Error::integrity(
            format!("snapshot {base}: object {} is missing", entry.key),
            Some(
                "the snapshot is incomplete; pick another one with `valero-db snapshots list`"
                    .into(),
            ),
        ),
        other => other,
    })?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    while let Some(chunk) = reader.next_chunk().await? {
        size += chunk.len() as u64;
        if size > entry.size {
            break;
        }
        hasher.update(&chunk);
    }
    let sha = hex::encode(hasher.finalize());
    if size != entry.size || sha != entry.sha256 {
        return Err(Error::integrity(
            format!(
                "snapshot {base}: object {} has {}size {size} and sha256 {sha}, expected size {} and sha256 {}; the object is corrupt",
                entry.key,
                if size > entry.size { "at least " } else { "" },
                entry.size,
                entry.sha256
            ),
            Some("pick an older snapshot with `valero-db snapshots list`".into()),
        ));
    }
    Ok(())
}

/// What the snapshot folder of one service holds.
#[derive(Debug, Default)]
pub struct Listing {
    /// Complete snapshots, oldest first.
    pub found: Vec<Found>,
    /// Folders without a manifest: taken by a run that did not finish.
    pub incomplete: Vec<String>,
    /// Folders whose manifest cannot be trusted, with the reason.
    pub rejected: Vec<(String, Error)>,
}

/// All complete snapshots of a service in an environment, oldest first.
/// Folders without a manifest are incomplete and not returned.
pub async fn list_service(
    storage: &dyn Storage,
    env: &str,
    service: &str,
) -> Result<(Vec<Found>, Vec<String>)> {
    let listing = scan_service(storage, env, service).await?;
    for (base, e) in &listing.rejected {
        tracing::warn!("ignoring snapshot {base}: {e}");
    }
    Ok((listing.found, listing.incomplete))
}

/// Sorts the folders of a service into complete, incomplete and rejected.
/// The newest complete snapshot of a service, if any.
pub async fn newest(storage: &dyn Storage, env: &str, service: &str) -> Result<Option<Found>> {
    Ok(list_service(storage, env, service).await?.0.pop())
}

pub async fn scan_service(storage: &dyn Storage, env: &str, service: &str) -> Result<Listing> {
    let prefix = format!("{env}/{service}/");
    let objects = storage.list(&prefix).await?;
    let mut ids: Vec<String> = Vec::new();
    let mut with_manifest = Vec::new();
    for o in &objects {
        let rest = &o.key[prefix.len()..];
        if let Some((id, tail)) = rest.split_once('/') {
            if ids.last().map(String::as_str) != Some(id) && !ids.iter().any(|i| i == id) {
                ids.push(id.to_string());
            }
            if tail == MANIFEST {
                with_manifest.push(id.to_string());
            }
        }
    }
    let mut listing = Listing::default();
    for id in ids {
        let base = format!("{prefix}{id}");
        if !with_manifest.contains(&id) {
            listing.incomplete.push(base);
            continue;
        }
        match read_checked(storage, env, service, &id).await {
            Ok(m) => listing.found.push(Found { base, manifest: m }),
            Err(e @ Error::Unreachable { .. }) => return Err(e),
            Err(e) => listing.rejected.push((base, e)),
        }
    }
    listing
        .found
        .sort_by(|a, b| a.manifest.id.cmp(&b.manifest.id));
    Ok(listing)
}

/// Reads the manifest of `<env>/<service>/<id>` and checks that it names
/// the folder it was found in: a manifest copied from another snapshot,
/// service or environment is refused.
pub async fn read_checked(
    storage: &dyn Storage,
    env: &str,
    service: &str,
    id: &str,
) -> Result<Manifest> {
    let base = format!("{env}/{service}/{id}");
    let m = read_manifest(storage, &base).await?;
    let mismatch = if m.id != id {
        Some(format!("snapshot id {}", m.id))
    } else if m.service != service {
        Some(format!("service {}", m.service))
    } else if m.environment != env {
        Some(format!("environment {}", m.environment))
    } else {
        None
    };
    match mismatch {
        Some(what) => Err(Error::integrity(
            format!(
                "snapshot {base}: the manifest names {}, not the folder it is in; it was moved or altered",
                what.escape_debug()
            ),
            Some(
                "the snapshot cannot be trusted; pick another one with `valero-db snapshots list`"
                    .into(),
            ),
        )),
        None => Ok(m),
    }
}

/// Why snapshot `id` of the services is not usable, if a folder by that
/// name exists but was rejected or is incomplete (both integrity failures).
pub async fn rejection(
    storage: &dyn Storage,
    env: &str,
    services: &[String],
    id: &str,
) -> Result<Option<Error>> {
    for service in services {
        let listing = scan_service(storage, env, service).await?;
        let wanted = format!("{env}/{service}/{id}");
        if let Some((_, e)) = listing.rejected.into_iter().find(|(b, _)| *b == wanted) {
            return Ok(Some(e));
        }
        if listing.incomplete.contains(&wanted) {
            return Ok(Some(Error::integrity(
                format!("snapshot {id} of service {service} is incomplete: it has no manifest (an interrupted snapshot)"),
                Some("nothing was changed; pick a complete one with `valero-db snapshots list`; `snapshots prune` removes leftovers".into()),
            )));
        }
    }
    Ok(None)
}

pub async fn read_manifest(storage: &dyn Storage, base: &str) -> Result<Manifest> {
    let bytes = storage
        .get_bytes(&format!("{base}/{MANIFEST}"), MANIFEST_LIMIT)
        .await?;
    Manifest::parse(&bytes).map_err(|m| {
        Error::integrity(
            format!("snapshot {base}: the manifest is invalid: {m}"),
            Some(
                "the snapshot cannot be trusted; pick another one with `valero-db snapshots list`"
                    .into(),
            ),
        )
    })
}

/// Verifies every object of a snapshot.
pub async fn verify(storage: &dyn Storage, found: &Found) -> Result<u64> {
    let mut bytes = 0;
    for entry in &found.manifest.objects {
        verify_object(storage, &found.base, entry).await?;
        bytes += entry.size;
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_sort_by_time_and_are_safe() {
        let a = new_id(
            chrono::DateTime::parse_from_rfc3339("2025-06-19T08:00:00Z")
                .unwrap()
                .to_utc(),
        );
        let b = new_id(
            chrono::DateTime::parse_from_rfc3339("2025-06-19T08:00:01Z")
                .unwrap()
                .to_utc(),
        );
        assert!(a < b);
        validate_id(&a).unwrap();
        assert!(validate_id("../x").is_err());
        assert!(validate_id("a/b").is_err());
    }

    #[test]
    fn key_components_escape_unsafe_bytes() {
        assert_eq!(key_component("journal_lines"), "journal_lines");
        assert_eq!(key_component("Mixed Case/x"), "Mixed+20Case+2Fx");
        assert_eq!(key_component("..x"), "+2E.x");
    }
}
