//! The read side of the snapshot format: one stored object streamed
//! decrypted, decompressed and decoded (column blocks back to COPY text),
//! its size and sha256 checked as it streams.

use sha2::{Digest, Sha256};

use super::columns::ColumnDecoder;
use super::manifest::{Encoding, ObjectEntry};
use crate::error::{Error, Result};
use crate::storage::{ObjectReader, Storage};

/// The most decoded bytes one `next` hands out.
pub const PIECE: usize = 256 << 10;

/// Streams one object decompressed, re-checking size and sha256 of the
/// stored bytes; the mismatch surfaces at the end, before commit.
pub struct ObjectStream {
    progress: Option<std::sync::Arc<crate::progress::Progress>>,
    reader: Box<dyn ObjectReader>,
    /// Opens the stored bytes first when the object is encrypted.
    cipher: Option<crate::crypto::Decryptor>,
    decoder: zstd::stream::write::Decoder<'static, Vec<u8>>,
    /// Turns column blocks back into COPY text, for such objects.
    columns: Option<ColumnDecoder>,
    /// Decoded bytes not handed out yet: a column block decodes to
    /// megabytes at once, handed on in pieces so the buffers between
    /// reader, converter and server stay small.
    ready: Vec<u8>,
    ready_at: usize,
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
            columns: match entry.encoding {
                Encoding::Plain => None,
                Encoding::CopyColumns => Some(ColumnDecoder::new()),
            },
            ready: Vec::new(),
            ready_at: 0,
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

    /// The next piece of decompressed data (at most [`PIECE`] bytes), or
    /// None at the end (after the checksum was confirmed).
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>> {
        loop {
            if let Some(piece) = self.take_ready() {
                return Ok(Some(piece));
            }
            if !self.fill().await? {
                return Ok(None);
            }
        }
    }

    /// The next [`PIECE`] of decoded bytes waiting in `ready`.
    fn take_ready(&mut self) -> Option<Vec<u8>> {
        if self.ready_at >= self.ready.len() {
            return None;
        }
        let end = self.ready.len().min(self.ready_at + PIECE);
        let piece = if self.ready_at == 0 && end == self.ready.len() {
            std::mem::take(&mut self.ready)
        } else {
            self.ready[self.ready_at..end].to_vec()
        };
        self.ready_at = end;
        if self.ready_at >= self.ready.len() {
            self.ready.clear();
            self.ready_at = 0;
        }
        Some(piece)
    }

    /// Reads, checks and decodes stored bytes into `ready`; false at the
    /// end, once the checksum and the decoded length were confirmed.
    async fn fill(&mut self) -> Result<bool> {
        use std::io::Write;
        loop {
            if self.done {
                return Ok(false);
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
                    let out = self.decode(out)?;
                    if !out.is_empty() {
                        if let Some(p) = &self.progress {
                            p.inc(out.len() as u64);
                        }
                        self.ready = out;
                        return Ok(true);
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
                    let out = self.decode(out)?;
                    if let Some(columns) = self.columns.take() {
                        columns.finish().map_err(|_| self.corrupt())?;
                    }
                    if let Some(p) = &self.progress {
                        p.inc(out.len() as u64);
                    }
                    self.ready = out;
                    return Ok(!self.ready.is_empty());
                }
            }
        }
    }

    /// Decompressed bytes as the engine wrote them.
    fn decode(&mut self, out: Vec<u8>) -> Result<Vec<u8>> {
        match self.columns.as_mut() {
            None => Ok(out),
            Some(columns) => match columns.push(&out) {
                Ok(rows) => Ok(rows),
                Err(_) => Err(self.corrupt()),
            },
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
