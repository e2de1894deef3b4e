//! The storage seam: where snapshot objects live. A local folder (`file://`)
//! and S3 (`s3://`) implement the same narrow trait: streamed put with an
//! explicit finish or abort, get, list, delete.

pub mod local;
pub mod s3;
pub mod seam;

pub use seam::{validate_key, ObjectInfo, ObjectReader, ObjectWriter, Storage};

use async_trait::async_trait;

use crate::config::{Environment, StorageLocation};
use crate::error::{Error, Result};

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
