//! Local folder storage: each object is written to a temporary name in its
//! folder, fsynced, renamed into place, and the folder fsynced.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::seam::{validate_key, ObjectInfo, ObjectReader, ObjectWriter, Storage};
use crate::error::{Error, Result};

pub struct LocalStorage {
    root: PathBuf,
}

const TMP_MARK: &str = ".tmp-";

impl LocalStorage {
    pub fn new(root: PathBuf) -> Self {
        LocalStorage { root }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        validate_key(key).map_err(|m| Error::integrity(m, None))?;
        Ok(self.root.join(key))
    }

    fn io(&self, what: &str, path: &Path, e: std::io::Error) -> Error {
        if crate::error::is_full(&e) {
            return Error::StorageFull {
                what: format!("storage {}", self.describe()),
                message: format!("{what} {}: {e}", path.display()),
            };
        }
        match e.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::NotFound => {
                Error::unreachable(
                    format!("storage {}", self.describe()),
                    format!("{what} {}: {e}", path.display()),
                )
            }
            _ => Error::Internal {
                message: format!(
                    "storage {}: {what} {}: {e}",
                    self.describe(),
                    path.display()
                ),
            },
        }
    }
}

struct LocalWriter {
    describe: String,
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
    dest: PathBuf,
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, chunk: &[u8]) -> Result<()> {
        let Some(f) = self.file.as_mut() else {
            return Err(Error::internal("write after finish"));
        };
        if let Err(e) = f.write_all(chunk).await {
            return Err(self.failed("writing", e));
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        let Some(mut f) = self.file.take() else {
            return Err(Error::internal("finish twice"));
        };
        let result = async {
            f.flush().await?;
            f.sync_all().await?;
            drop(f);
            tokio::fs::rename(&self.tmp, &self.dest).await?;
            if let Some(dir) = self.dest.parent() {
                // The rename is durable only once the folder is synced.
                if let Ok(d) = tokio::fs::File::open(dir).await {
                    let _ = d.sync_all().await;
                }
            }
            Ok::<(), std::io::Error>(())
        }
        .await;
        if let Err(e) = result {
            let _ = tokio::fs::remove_file(&self.tmp).await;
            return Err(self.failed("storing", e));
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        self.file.take();
        let _ = tokio::fs::remove_file(&self.tmp).await;
    }
}

impl LocalWriter {
    fn failed(&self, what: &str, e: std::io::Error) -> Error {
        if crate::error::is_full(&e) {
            Error::StorageFull {
                what: format!("storage {}", self.describe),
                message: format!("{what} {}: {e}", self.dest.display()),
            }
        } else {
            Error::internal(format!("{what} {}: {e}", self.dest.display()))
        }
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

struct LocalReader {
    file: tokio::fs::File,
    buf: Vec<u8>,
}

#[async_trait]
impl ObjectReader for LocalReader {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        let n = self
            .file
            .read(&mut self.buf)
            .await
            .map_err(|e| Error::internal(format!("reading a snapshot object: {e}")))?;
        Ok((n > 0).then(|| bytes::Bytes::copy_from_slice(&self.buf[..n])))
    }
}

#[async_trait]
impl Storage for LocalStorage {
    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        let dest = self.path(key)?;
        let dir = dest
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| self.io("creating", &dir, e))?;
        let name = dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = dir.join(format!(
            ".{name}{TMP_MARK}{}",
            uuid::Uuid::new_v4().simple()
        ));
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| self.io("creating", &tmp, e))?;
        Ok(Box::new(LocalWriter {
            describe: self.describe(),
            file: Some(file),
            tmp,
            dest,
        }))
    }

    async fn get(&self, key: &str) -> Result<Box<dyn ObjectReader>> {
        let path = self.path(key)?;
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::integrity(
                    format!("object {key} is missing from {}", self.describe()),
                    None,
                )
            } else {
                self.io("opening", &path, e)
            }
        })?;
        Ok(Box::new(LocalReader {
            file,
            buf: vec![0; 1 << 20],
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        let mut stack = vec![self.root.clone()];
        while let Some(dir) = stack.pop() {
            let mut entries = match tokio::fs::read_dir(&dir).await {
                Ok(e) => e,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(self.io("listing", &dir, e)),
            };
            while let Some(entry) = entries
                .next_entry()
                .await
                .map_err(|e| self.io("listing", &dir, e))?
            {
                let path = entry.path();
                let meta = entry
                    .metadata()
                    .await
                    .map_err(|e| self.io("reading", &path, e))?;
                if meta.is_dir() {
                    stack.push(path);
                    continue;
                }
                let Ok(rel) = path.strip_prefix(&self.root) else {
                    continue;
                };
                let key = rel.to_string_lossy().replace('\\', "/");
                if key.starts_with(prefix) {
                    out.push(ObjectInfo {
                        key,
                        size: meta.len(),
                    });
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        // Leftover temporary files have names outside the key alphabet rules
        // only by their leading dot, which validate_key accepts.
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("deleting", &path, e)),
        }
        // Remove folders left empty, up to the root.
        let mut dir = path.parent().map(Path::to_path_buf);
        while let Some(d) = dir {
            if d == self.root || tokio::fs::remove_dir(&d).await.is_err() {
                break;
            }
            dir = d.parent().map(Path::to_path_buf);
        }
        Ok(())
    }

    async fn check(&self) -> Result<()> {
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(|e| self.io("creating", &self.root, e))?;
        let probe = self
            .root
            .join(format!(".probe{TMP_MARK}{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&probe, b"ok")
            .await
            .map_err(|e| self.io("writing to", &self.root, e))?;
        let _ = tokio::fs::remove_file(&probe).await;
        Ok(())
    }
}
