//! Restore: choosing the snapshot for a point in time (pure), reading its
//! objects back with their checksums re-checked while they stream, and the
//! engine-specific atomic loads (`postgres`: one transaction; `mongodb`:
//! temporary collections, a journal, and renames).

pub mod copy_binary;
pub mod mongodb;
pub mod postgres;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::snapshot::{Found, ObjectEntry};
use crate::storage::{ObjectReader, Storage};

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
        crate::duration::format_duration(shown)
    )
}

/// What a restore of one engine did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestoreStats {
    pub engine: String,
    pub objects: u64,
    /// Rows (PostgreSQL) or documents (MongoDB).
    pub rows: u64,
    /// Uncompressed bytes loaded.
    pub bytes: u64,
    /// Captured changes replayed on top of the snapshot.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replayed: Option<crate::capture::postgres::ReplayStats>,
}

/// Streams one object decompressed, re-checking size and sha256 of the
/// stored bytes; the mismatch surfaces at the end, before commit.
pub struct ObjectStream {
    progress: Option<std::sync::Arc<crate::progress::Progress>>,
    reader: Box<dyn ObjectReader>,
    /// Opens the stored bytes first when the object is encrypted.
    cipher: Option<crate::crypto::Decryptor>,
    decoder: zstd::stream::write::Decoder<'static, Vec<u8>>,
    hasher: Sha256,
    size: u64,
    /// Decompressed bytes so far, checked against the manifest's raw_size.
    raw: u64,
    entry: ObjectEntry,
    base: String,
    done: bool,
}

impl ObjectStream {
    pub async fn open(
        storage: &dyn Storage,
        base: &str,
        entry: &ObjectEntry,
    ) -> Result<ObjectStream> {
        crate::storage::validate_key(&entry.key).map_err(|m| Error::integrity(m, None))?;
        let reader = storage.get(&format!("{base}/{}", entry.key)).await?;
        let decoder = zstd::stream::write::Decoder::new(Vec::with_capacity(1 << 20))
            .map_err(|e| Error::internal(format!("zstd: {e}")))?;
        let cipher = match (entry.encrypted, storage.key()?) {
            (false, _) => None,
            (true, Some(key)) => {
                let id = base.rsplit('/').next().unwrap_or_default();
                Some(crate::crypto::Decryptor::new(
                    key,
                    format!("{id}/{}", entry.key),
                ))
            }
            (true, None) => {
                return Err(Error::usage(format!(
                    "snapshot {base}: object {} is encrypted and no encryption key is configured",
                    entry.key
                )))
            }
        };
        Ok(ObjectStream {
            progress: None,
            reader,
            cipher,
            decoder,
            hasher: Sha256::new(),
            size: 0,
            raw: 0,
            entry: entry.clone(),
            base: base.to_string(),
            done: false,
        })
    }

    /// Reports the decompressed bytes to a progress bar.
    pub fn with_progress(mut self, progress: &std::sync::Arc<crate::progress::Progress>) -> Self {
        progress.set_message(self.entry.name.as_deref().unwrap_or(&self.entry.key));
        self.progress = Some(progress.clone());
        self
    }

    /// The next piece of decompressed data, or None at the end (after the
    /// checksum was confirmed).
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        use std::io::Write;
        loop {
            if self.done {
                return Ok(None);
            }
            match self.reader.next_chunk().await? {
                Some(chunk) => {
                    self.size += chunk.len() as u64;
                    self.hasher.update(&chunk);
                    if self.size > self.entry.size {
                        return Err(self.corrupt());
                    }
                    let plain = match self.cipher.as_mut() {
                        Some(c) => c.push(&chunk)?,
                        None => chunk.to_vec(),
                    };
                    self.decoder.write_all(&plain).map_err(|_| self.corrupt())?;
                    let out = std::mem::take(self.decoder.get_mut());
                    self.raw += out.len() as u64;
                    if self.raw > self.entry.raw_size {
                        return Err(self.corrupt());
                    }
                    if !out.is_empty() {
                        if let Some(p) = &self.progress {
                            p.inc(out.len() as u64);
                        }
                        return Ok(Some(out));
                    }
                }
                None => {
                    self.done = true;
                    let sha = hex::encode(std::mem::take(&mut self.hasher).finalize());
                    if self.size != self.entry.size || sha != self.entry.sha256 {
                        return Err(self.corrupt());
                    }
                    if let Some(c) = self.cipher.take() {
                        let plain = c.finish()?;
                        self.decoder.write_all(&plain).map_err(|_| self.corrupt())?;
                    }
                    self.decoder.flush().map_err(|_| self.corrupt())?;
                    let out = std::mem::take(self.decoder.get_mut());
                    // A truncated zstd frame decodes to fewer bytes than were
                    // written: caught even if the stored hash matched.
                    if self.raw + out.len() as u64 != self.entry.raw_size {
                        return Err(self.corrupt());
                    }
                    self.raw += out.len() as u64;
                    if !out.is_empty() {
                        return Ok(Some(out));
                    }
                    return Ok(None);
                }
            }
        }
    }

    /// Reads the whole (small) object.
    pub async fn read_all(mut self) -> Result<Vec<u8>> {
        let mut all = Vec::new();
        while let Some(part) = self.next().await? {
            all.extend_from_slice(&part);
        }
        Ok(all)
    }

    fn corrupt(&self) -> Error {
        Error::integrity(
            format!("snapshot {}: object {} does not match its manifest (size or sha256) or is not valid zstd; the object is corrupt", self.base, self.entry.key),
            Some("nothing was changed; pick another snapshot with `valero-db snapshots list`".into()),
        )
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
            manifest: Manifest {
                format: 1,
                id: id.into(),
                environment: "dev".into(),
                service: "svc".into(),
                created_at: t,
                consistent_at: t,
                reason: "manual".into(),
                release: None,
                label: None,
                tool_version: "0".into(),
                duration_ms: None,
                engines: vec![],
                objects: vec![],
                encryption: None,
            },
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
