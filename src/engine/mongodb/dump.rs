//! Reading a MongoDB snapshot's dump (mongodump's layout): which
//! collections it holds, with their options and indexes, and their
//! documents one by one, verified while they stream. Shared by the restore
//! and by `mask check`.

use bson::{Bson, Document, RawDocumentBuf};

use super::driver::{JOURNAL, LOCKS, TMP_PREFIX};
use crate::error::{Error, Result};
use crate::snapshot::stream::ObjectStream;
use crate::snapshot::{Found, ObjectKind};
use crate::storage::Storage;

/// One collection of a snapshot: its metadata and its data object.
pub(super) struct Planned {
    pub name: String,
    pub kind: String,
    pub options: Document,
    pub indexes: Vec<Document>,
    pub data: Option<crate::snapshot::ObjectEntry>,
}

/// A collection object's documents one by one, however the stream splits
/// them; anything that is not a whole BSON document is an integrity error.
pub(super) struct DocumentReader {
    stream: ObjectStream,
    pending: Vec<u8>,
    offset: usize,
    ended: bool,
    /// Bytes read so far.
    pub bytes: u64,
    what: String,
}

impl DocumentReader {
    pub fn new(stream: ObjectStream, base: &str, key: &str) -> DocumentReader {
        DocumentReader {
            stream,
            pending: Vec::new(),
            offset: 0,
            ended: false,
            bytes: 0,
            what: format!("snapshot {base}: {key}"),
        }
    }

    pub async fn next(&mut self) -> Result<Option<RawDocumentBuf>> {
        loop {
            let available = self.pending.len() - self.offset;
            if available >= 4 {
                let at = self.offset;
                let len = i32::from_le_bytes([
                    self.pending[at],
                    self.pending[at + 1],
                    self.pending[at + 2],
                    self.pending[at + 3],
                ]);
                if len < 5 {
                    return Err(self.corrupt());
                }
                let len = len as usize;
                if available >= len {
                    let raw = RawDocumentBuf::from_bytes(self.pending[at..at + len].to_vec())
                        .map_err(|_| self.corrupt())?;
                    self.offset += len;
                    return Ok(Some(raw));
                }
            }
            if self.ended {
                if available > 0 {
                    return Err(self.corrupt());
                }
                return Ok(None);
            }
            self.pending.drain(..self.offset);
            self.offset = 0;
            match self.stream.next().await? {
                Some(buf) => {
                    self.bytes += buf.len() as u64;
                    self.pending.extend_from_slice(&buf);
                }
                None => self.ended = true,
            }
        }
    }

    fn corrupt(&self) -> Error {
        Error::integrity(format!("{} holds invalid BSON", self.what), None)
    }
}

fn parse_metadata(bytes: &[u8], base: &str, key: &str) -> Result<Document> {
    let bad = |m: String| Error::integrity(format!("snapshot {base}: {key}: {m}"), None);
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
    match Bson::try_from(value).map_err(|e| bad(e.to_string()))? {
        Bson::Document(d) => Ok(d),
        _ => Err(bad("metadata is not a document".into())),
    }
}

/// Every collection of a snapshot, read from its metadata objects; a name
/// valero-db uses for itself is an integrity error.
pub(super) async fn plan(storage: &dyn Storage, found: &Found) -> Result<Vec<Planned>> {
    let mut out = Vec::new();
    for meta in found
        .manifest
        .objects
        .iter()
        .filter(|o| o.kind == ObjectKind::MongoMetadata)
    {
        let bytes = ObjectStream::open(storage, &found.base, meta)
            .await?
            .read_all()
            .await?;
        let d = parse_metadata(&bytes, &found.base, &meta.key)?;
        let name = d.get_str("collectionName").unwrap_or_default().to_string();
        if name.is_empty()
            || name.starts_with("system.")
            || name == LOCKS
            || name == JOURNAL
            || name.starts_with(TMP_PREFIX)
        {
            return Err(Error::integrity(
                format!(
                    "snapshot {}: {} names an unusable collection '{name}'",
                    found.base, meta.key
                ),
                None,
            ));
        }
        let data = found
            .manifest
            .objects
            .iter()
            .find(|o| {
                o.kind == ObjectKind::MongoCollection && o.name.as_deref() == Some(name.as_str())
            })
            .cloned();
        out.push(Planned {
            kind: d.get_str("type").unwrap_or("collection").to_string(),
            options: d.get_document("options").cloned().unwrap_or_default(),
            indexes: d
                .get_array("indexes")
                .map(|a| a.iter().filter_map(|i| i.as_document().cloned()).collect())
                .unwrap_or_default(),
            name,
            data,
        });
    }
    Ok(out)
}
