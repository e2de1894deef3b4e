//! Optional client-side encryption of snapshot objects, for buckets the
//! operator does not fully trust. The key (32 bytes, hex) comes from an
//! environment variable or a file and is never stored or printed; manifests
//! record only a fingerprint of it, so a wrong key is refused before
//! anything is touched.
//!
//! An encrypted object is the zstd stream sealed in chunks with AES-256-GCM
//! under a per-object key (HKDF-SHA256 of the master key and a random
//! salt). Each chunk's associated data binds the snapshot id, the object
//! key, the chunk index and whether it is the last chunk, so chunks cannot
//! be reordered, moved between objects or dropped from the end. Checksums
//! in the manifest cover the stored (encrypted) bytes: `snapshots verify`
//! needs no key. Format: docs/snapshot-format.md.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use aws_lc_rs::hkdf;

use crate::error::{Error, Result};

/// Plaintext bytes per sealed chunk.
pub const CHUNK: usize = 1 << 20;
/// Chunks larger than this are refused when reading (bounded memory).
const MAX_CHUNK: usize = 16 << 20;
const TAG: usize = 16;
const MAGIC: &[u8; 8] = b"VALERO-E";
const VERSION: u8 = 1;
const HEADER: usize = 32;
/// The name recorded in manifests.
pub const CIPHER: &str = "AES-256-GCM, HKDF-SHA256 per object, 1 MiB chunks";

/// The master key. Debug output never shows it.
#[derive(Clone)]
pub struct SnapshotKey([u8; 32]);

impl std::fmt::Debug for SnapshotKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SnapshotKey({})", self.fingerprint())
    }
}

impl SnapshotKey {
    /// Parses 64 hex digits (e.g. from `openssl rand -hex 32`); `origin`
    /// names where they came from, for the message.
    pub fn parse(text: &str, origin: &str) -> Result<SnapshotKey> {
        let text = text.trim();
        let mut key = [0u8; 32];
        if text.len() != 64 || hex::decode_to_slice(text, &mut key).is_err() {
            return Err(Error::usage_hint(
                format!(
                    "the snapshot encryption key from {origin} is not 64 hex digits ({} characters found)",
                    text.len()
                ),
                "create one with `openssl rand -hex 32`",
            ));
        }
        Ok(SnapshotKey(key))
    }

    /// A short public name of the key: HMAC-SHA256(key, label), 8 bytes.
    pub fn fingerprint(&self) -> String {
        let k = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &self.0);
        let tag = aws_lc_rs::hmac::sign(&k, b"valero-db key fingerprint v1");
        hex::encode(&tag.as_ref()[..8])
    }

    fn object_key(&self, salt: &[u8]) -> Result<LessSafeKey> {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(&self.0);
        let okm = prk
            .expand(&[b"valero-db object key v1"], &AES_256_GCM)
            .map_err(|_| Error::internal("HKDF failed"))?;
        Ok(LessSafeKey::new(UnboundKey::from(okm)))
    }
}

/// Reads the key of an environment from its source.
pub fn load_key(source: &crate::config::KeySource) -> Result<SnapshotKey> {
    use crate::config::KeySource;
    match source {
        KeySource::Env(var) => match std::env::var(var) {
            Ok(text) => SnapshotKey::parse(&text, &format!("${var}")),
            Err(_) => Err(Error::usage_hint(
                format!("the snapshot encryption key variable {var} is not set"),
                format!("export {var} with 64 hex digits (e.g. from `openssl rand -hex 32`)"),
            )),
        },
        KeySource::File(path) => match std::fs::read_to_string(path) {
            Ok(text) => SnapshotKey::parse(&text, &path.display().to_string()),
            Err(e) => Err(Error::usage(format!(
                "cannot read the snapshot encryption key file {}: {e}",
                path.display()
            ))),
        },
    }
}

fn aad(context: &str, index: u32, last: bool) -> Vec<u8> {
    let mut a = Vec::with_capacity(context.len() + 16);
    a.extend_from_slice(b"valero-db/1\0");
    a.extend_from_slice(context.as_bytes());
    a.push(0);
    a.extend_from_slice(&index.to_be_bytes());
    a.push(last as u8);
    a
}

fn nonce(index: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[8..].copy_from_slice(&index.to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

/// Seals a stream: `push` plaintext, take ciphertext, `finish` once.
pub struct Encryptor {
    key: LessSafeKey,
    context: String,
    index: u32,
    pending: Vec<u8>,
    header: Option<Vec<u8>>,
}

impl Encryptor {
    /// `context` is `<snapshot id>/<object key>`.
    pub fn new(master: &SnapshotKey, context: String) -> Result<Encryptor> {
        let mut salt = [0u8; 16];
        aws_lc_rs::rand::fill(&mut salt).map_err(|_| Error::internal("no randomness"))?;
        let mut header = Vec::with_capacity(HEADER);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&[VERSION, 0, 0, 0]);
        header.extend_from_slice(&(CHUNK as u32).to_be_bytes());
        header.extend_from_slice(&salt);
        Ok(Encryptor {
            key: master.object_key(&salt)?,
            context,
            index: 0,
            pending: Vec::with_capacity(CHUNK + TAG),
            header: Some(header),
        })
    }

    fn seal(&mut self, mut chunk: Vec<u8>, last: bool, out: &mut Vec<u8>) -> Result<()> {
        if self.index == u32::MAX {
            return Err(Error::internal("object too large to encrypt"));
        }
        self.key
            .seal_in_place_append_tag(
                nonce(self.index),
                Aad::from(aad(&self.context, self.index, last)),
                &mut chunk,
            )
            .map_err(|_| Error::internal("encryption failed"))?;
        self.index += 1;
        out.extend_from_slice(&chunk);
        Ok(())
    }

    /// Takes plaintext; returns whatever ciphertext is ready.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        let mut out = self.header.take().unwrap_or_default();
        self.pending.extend_from_slice(data);
        // A full chunk is sealed only once more data follows it, so the
        // last chunk is always known to be last.
        while self.pending.len() > CHUNK {
            let rest = self.pending.split_off(CHUNK);
            let chunk = std::mem::replace(&mut self.pending, rest);
            self.seal(chunk, false, &mut out)?;
        }
        Ok(out)
    }

    /// Seals the last chunk (possibly empty).
    pub fn finish(mut self) -> Result<Vec<u8>> {
        let mut out = self.header.take().unwrap_or_default();
        let chunk = std::mem::take(&mut self.pending);
        self.seal(chunk, true, &mut out)?;
        Ok(out)
    }
}

/// Opens a stream sealed by `Encryptor`; any change, reordering or
/// truncation is an error.
pub struct Decryptor {
    master: SnapshotKey,
    key: Option<LessSafeKey>,
    chunk: usize,
    context: String,
    index: u32,
    pending: Vec<u8>,
}

impl Decryptor {
    pub fn new(master: &SnapshotKey, context: String) -> Decryptor {
        Decryptor {
            master: master.clone(),
            key: None,
            chunk: 0,
            context,
            index: 0,
            pending: Vec::new(),
        }
    }

    fn open(&mut self, len: usize, last: bool, out: &mut Vec<u8>) -> Result<()> {
        let mut sealed: Vec<u8> = self.pending.drain(..len).collect();
        let key = self
            .key
            .as_ref()
            .ok_or_else(|| Error::internal("no header"))?;
        let plain = key
            .open_in_place(
                nonce(self.index),
                Aad::from(aad(&self.context, self.index, last)),
                &mut sealed,
            )
            .map_err(|_| bad(&format!("chunk {} does not authenticate", self.index)))?;
        out.extend_from_slice(plain);
        self.index = self
            .index
            .checked_add(1)
            .ok_or_else(|| bad("too many chunks"))?;
        Ok(())
    }

    /// Takes ciphertext; returns whatever plaintext is authenticated.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<u8>> {
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        if self.key.is_none() {
            if self.pending.len() < HEADER {
                return Ok(out);
            }
            let header: Vec<u8> = self.pending.drain(..HEADER).collect();
            if &header[..8] != MAGIC || header[8] != VERSION {
                return Err(bad("not an encrypted valero-db object (bad header)"));
            }
            let chunk = u32::from_be_bytes([header[12], header[13], header[14], header[15]]);
            if chunk == 0 || chunk as usize > MAX_CHUNK {
                return Err(bad("impossible chunk size in the header"));
            }
            self.chunk = chunk as usize;
            self.key = Some(self.master.object_key(&header[16..32])?);
        }
        while self.pending.len() > self.chunk + TAG {
            self.open(self.chunk + TAG, false, &mut out)?;
        }
        Ok(out)
    }

    /// Opens the last chunk; a stream cut short fails here.
    pub fn finish(mut self) -> Result<Vec<u8>> {
        if self.key.is_none() || self.pending.len() < TAG {
            return Err(bad("the object ends early"));
        }
        let mut out = Vec::new();
        let len = self.pending.len();
        self.open(len, true, &mut out)?;
        Ok(out)
    }
}

fn bad(what: &str) -> Error {
    Error::integrity(
        format!("decryption failed: {what}; the object was altered or truncated"),
        Some("nothing was changed; pick another snapshot with `valero-db snapshots list`".into()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SnapshotKey {
        SnapshotKey([b; 32])
    }

    fn seal(k: &SnapshotKey, ctx: &str, data: &[u8], piece: usize) -> Vec<u8> {
        let mut e = Encryptor::new(k, ctx.into()).unwrap();
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(e.push(p).unwrap());
        }
        out.extend(e.finish().unwrap());
        out
    }

    fn open(k: &SnapshotKey, ctx: &str, data: &[u8], piece: usize) -> Result<Vec<u8>> {
        let mut d = Decryptor::new(k, ctx.into());
        let mut out = Vec::new();
        for p in data.chunks(piece.max(1)) {
            out.extend(d.push(p)?);
        }
        out.extend(d.finish()?);
        Ok(out)
    }

    #[test]
    fn round_trips_at_every_chunk_boundary() {
        let k = key(7);
        for len in [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK, 2 * CHUNK + 5] {
            let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
            let sealed = seal(&k, "id/obj", &data, 300_000);
            assert_eq!(open(&k, "id/obj", &sealed, 77_777).unwrap(), data, "{len}");
        }
    }

    #[test]
    fn wrong_key_context_truncation_and_flips_are_refused() {
        let data = vec![42u8; 2 * CHUNK + 10];
        let sealed = seal(&key(1), "a/x", &data, CHUNK);
        assert!(open(&key(2), "a/x", &sealed, CHUNK).is_err());
        assert!(open(&key(1), "b/x", &sealed, CHUNK).is_err());
        // Dropping the last chunk leaves a full chunk not marked last.
        let cut = HEADER + 2 * (CHUNK + TAG);
        assert!(open(&key(1), "a/x", &sealed[..cut], CHUNK).is_err());
        assert!(open(&key(1), "a/x", &sealed[..HEADER + 3], CHUNK).is_err());
        let mut flipped = sealed.clone();
        flipped[HEADER + 5] ^= 1;
        assert!(open(&key(1), "a/x", &flipped, CHUNK).is_err());
        assert_eq!(open(&key(1), "a/x", &sealed, 1 << 16).unwrap(), data);
    }

    #[test]
    fn keys_are_64_hex_digits_and_never_shown() {
        let text = "ab".repeat(32);
        let k = SnapshotKey::parse(&format!("{text}\n"), "test").unwrap();
        assert!(!format!("{k:?}").contains("abab"));
        assert_eq!(k.fingerprint().len(), 16);
        let e = SnapshotKey::parse("abc", "VAR").unwrap_err();
        assert!(e.to_string().contains("VAR") && !e.to_string().contains("abc"));
        assert!(SnapshotKey::parse(&"zz".repeat(32), "x").is_err());
    }
}
