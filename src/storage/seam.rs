//! The storage trait every backend implements: streamed put with an
//! explicit finish or abort, get, list, delete; and the rule every object
//! key obeys.

use async_trait::async_trait;

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

    /// How the environment compresses snapshot objects.
    fn compression(&self) -> crate::config::Compression {
        crate::config::Compression::default()
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
