//! The storage seam: where snapshot objects live. A local folder (`file://`)
//! and S3 (`s3://`) implement the same narrow trait: streamed put with an
//! explicit finish or abort, get, list, delete.

pub mod local;
pub mod s3;

use async_trait::async_trait;

use crate::config::{Environment, StorageLocation};
use crate::error::{Error, Result};

/// An object being written. Nothing is visible under its key until
/// `finish` returns; `abort` (or an error) leaves nothing behind.
#[async_trait]
pub trait ObjectWriter: Send {
    async fn write(&mut self, chunk: &[u8]) -> Result<()>;
    async fn finish(self: Box<Self>) -> Result<()>;
    async fn abort(self: Box<Self>);
}

/// An object being read, chunk by chunk; `None` at the end.
#[async_trait]
pub trait ObjectReader: Send {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>>;
}

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

#[async_trait]
pub trait Storage: Send + Sync {
    /// For messages: `file:///abs/path` or `s3://bucket/prefix`.
    fn describe(&self) -> String;

    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>>;

    async fn get(&self, key: &str) -> Result<Box<dyn ObjectReader>>;

    /// Every object whose key starts with `prefix`, sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;

    async fn delete(&self, key: &str) -> Result<()>;

    /// Checks that the storage can be reached (and written to) before work starts.
    async fn check(&self) -> Result<()>;

    /// The key snapshot objects are encrypted with, if the environment
    /// encrypts them; an error if it does but the key cannot be loaded.
    fn key(&self) -> Result<Option<&crate::crypto::SnapshotKey>> {
        Ok(None)
    }

    /// Convenience: a whole small object.
    async fn put_bytes(&self, key: &str, bytes: &[u8]) -> Result<()> {
        let mut w = self.put(key).await?;
        if let Err(e) = w.write(bytes).await {
            w.abort().await;
            return Err(e);
        }
        w.finish().await
    }

    /// Convenience: a whole small object, refusing more than `limit` bytes.
    async fn get_bytes(&self, key: &str, limit: usize) -> Result<Vec<u8>> {
        let mut r = self.get(key).await?;
        let mut out = Vec::new();
        while let Some(chunk) = r.next_chunk().await? {
            out.extend_from_slice(&chunk);
            if out.len() > limit {
                return Err(Error::integrity(
                    format!(
                        "object {key} in {} is larger than {limit} bytes",
                        self.describe()
                    ),
                    None,
                ));
            }
        }
        Ok(out)
    }
}

/// Opens the storage of an environment (with its encryption key, if any).
pub async fn open(env: &Environment) -> Result<Box<dyn Storage>> {
    let inner: Box<dyn Storage> = match &env.storage {
        StorageLocation::File(path) => Box::new(local::LocalStorage::new(path.clone())),
        StorageLocation::S3 { bucket, prefix } => Box::new(
            s3::S3Storage::new(bucket, prefix, &env.s3)
                .await?
                .scoped(&env.name),
        ),
    };
    match &env.encryption {
        None => Ok(inner),
        Some(source) => Ok(Box::new(Keyed {
            inner,
            key: crate::crypto::load_key(source).ok(),
            source: source.clone(),
        })),
    }
}

/// A storage whose environment encrypts snapshot objects: the same objects,
/// plus the key for the snapshot code to seal and open them with.
/// The key is loaded when the storage opens, but only commands that seal or
/// open objects need it: `snapshots list|verify|prune` work without it.
struct Keyed {
    inner: Box<dyn Storage>,
    key: Option<crate::crypto::SnapshotKey>,
    source: crate::config::KeySource,
}

#[async_trait]
impl Storage for Keyed {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        self.inner.put(key).await
    }
    async fn get(&self, key: &str) -> Result<Box<dyn ObjectReader>> {
        self.inner.get(key).await
    }
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.inner.list(prefix).await
    }
    async fn delete(&self, key: &str) -> Result<()> {
        self.inner.delete(key).await
    }
    async fn check(&self) -> Result<()> {
        self.key()?;
        self.inner.check().await
    }
    fn key(&self) -> Result<Option<&crate::crypto::SnapshotKey>> {
        match &self.key {
            Some(k) => Ok(Some(k)),
            None => Err(crate::crypto::load_key(&self.source)
                .err()
                .unwrap_or_else(|| Error::internal("the encryption key became readable late"))),
        }
    }
}

/// Object keys come from manifests, which may have been tampered with:
/// only relative, normalised keys of a safe alphabet are accepted.
pub fn validate_key(key: &str) -> std::result::Result<(), String> {
    let ok_chars = key
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-' | b'+' | b'='));
    if key.is_empty()
        || key.len() > 900
        || !ok_chars
        || key.starts_with('/')
        || key
            .split('/')
            .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return Err(format!(
            "object key '{}' is not a safe relative key",
            key.escape_debug()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::validate_key;

    #[test]
    fn keys_that_escape_are_rejected() {
        assert!(validate_key("dev/fibu/20250101T000000Z-ab12/manifest.json").is_ok());
        for bad in [
            "../x",
            "a/../b",
            "/etc/passwd",
            "a//b",
            "",
            "a/./b",
            "a b",
            "a\\b",
        ] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }
}
