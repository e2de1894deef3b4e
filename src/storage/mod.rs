//! The storage seam: where snapshot objects live. A local folder (`file://`)
//! and S3 (`s3://`) implement the same narrow trait: streamed put with an
//! explicit finish or abort, get, list, delete.

pub mod local;
pub mod s3;
pub mod seam;

pub use seam::{validate_key, ObjectInfo, ObjectReader, ObjectWriter, Storage};

use async_trait::async_trait;

use crate::config::{Compression, Environment, StorageLocation};
use crate::error::{Error, Result};

/// Opens the storage of an environment, with how it stores snapshot
/// objects: its compression level and encryption key, if any.
pub async fn open(env: &Environment) -> Result<Box<dyn Storage>> {
    let inner: Box<dyn Storage> = match &env.storage {
        StorageLocation::File(path) => Box::new(local::LocalStorage::new(path.clone())),
        StorageLocation::S3 { bucket, prefix } => Box::new(
            s3::S3Storage::new(bucket, prefix, &env.s3)
                .await?
                .scoped(&env.name),
        ),
    };
    Ok(Box::new(Settled {
        inner,
        key: env
            .encryption
            .as_ref()
            .and_then(|source| crate::crypto::load_key(source).ok()),
        source: env.encryption.clone(),
        compression: env.compression,
    }))
}

/// An environment's storage: the same objects, plus how the snapshot code
/// writes them — the compression level and, if the environment encrypts
/// snapshot objects, the key to seal and open them with. The key is loaded
/// when the storage opens, but only commands that seal or open objects need
/// it: `snapshots list|verify|prune` work without it.
struct Settled {
    inner: Box<dyn Storage>,
    key: Option<crate::crypto::SnapshotKey>,
    source: Option<crate::config::KeySource>,
    compression: Compression,
}

#[async_trait]
impl Storage for Settled {
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
        match (&self.key, &self.source) {
            (_, None) => Ok(None),
            (Some(k), Some(_)) => Ok(Some(k)),
            (None, Some(source)) => Err(crate::crypto::load_key(source)
                .err()
                .unwrap_or_else(|| Error::internal("the encryption key became readable late"))),
        }
    }
    fn compression(&self) -> Compression {
        self.compression
    }
}
