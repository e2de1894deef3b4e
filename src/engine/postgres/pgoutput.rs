//! Decoding PostgreSQL's `pgoutput` logical replication messages (protocol
//! version 1, as documented in "Logical Replication Message Formats"), and
//! turning decoded changes into SQL that replays them. Pure: no I/O.

use std::collections::HashMap;

use super::sql::quote_literal as literal;
use crate::error::{Error, Result};

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

/// A column of a relation as pgoutput describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    /// Part of the replica identity (the primary key, usually).
    pub key: bool,
    pub type_oid: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `d` default (primary key), `f` full, `i` index, `n` nothing.
    pub identity: u8,
    pub columns: Vec<Column>,
}

/// One column value of a tuple, in the type's text form.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// A TOASTed value that did not change (only in UPDATE's new tuple).
    Unchanged,
    Text(String),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    Begin {
        final_lsn: u64,
        commit_time: chrono::DateTime<chrono::Utc>,
        xid: u32,
    },
    Commit {
        commit_lsn: u64,
        end_lsn: u64,
        commit_time: chrono::DateTime<chrono::Utc>,
    },
    Relation(Relation),
    Insert {
        relation: u32,
        new: Vec<Value>,
    },
    Update {
        relation: u32,
        /// The old key ('K') or whole old row ('O'), when sent.
        old: Option<Vec<Value>>,
        new: Vec<Value>,
    },
    Delete {
        relation: u32,
        old: Vec<Value>,
    },
    Truncate {
        cascade: bool,
        restart_identity: bool,
        relations: Vec<u32>,
    },
    /// A logical decoding message (`pg_logical_emit_message`).
    Logical {
        transactional: bool,
        prefix: String,
        content: Vec<u8>,
    },
    /// Origin, Type and anything else replay does not need.
    Other(u8),
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.data.len());
        match end {
            Some(end) => {
                let s = &self.data[self.at..end];
                self.at = end;
                Ok(s)
            }
            None => Err(malformed("message ends early")),
        }
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(
            self.take(2)?.try_into().unwrap_or_default(),
        ))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(
            self.take(4)?.try_into().unwrap_or_default(),
        ))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(
            self.take(8)?.try_into().unwrap_or_default(),
        ))
    }
    fn time(&mut self) -> Result<chrono::DateTime<chrono::Utc>> {
        let us = self.u64()? as i64;
        chrono::DateTime::from_timestamp_micros(us.saturating_add(PG_EPOCH_OFFSET_US))
            .ok_or_else(|| malformed("impossible timestamp"))
    }
    fn string(&mut self) -> Result<String> {
        let rest = &self.data[self.at..];
        let len = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| malformed("unterminated string"))?;
        let s = String::from_utf8(rest[..len].to_vec()).map_err(|_| malformed("not UTF-8"))?;
        self.at += len + 1;
        Ok(s)
    }
    fn tuple(&mut self) -> Result<Vec<Value>> {
        let n = self.u16()?;
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            out.push(match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::Unchanged,
                b't' => {
                    let len = self.u32()? as usize;
                    let bytes = self.take(len)?;
                    Value::Text(
                        String::from_utf8(bytes.to_vec()).map_err(|_| malformed("not UTF-8"))?,
                    )
                }
                b'b' => return Err(malformed("binary tuple data (capture uses text)")),
                other => return Err(malformed(&format!("tuple kind {other}"))),
            });
        }
        Ok(out)
    }
}

fn malformed(what: &str) -> Error {
    Error::integrity(
        format!("a captured change is malformed: {what}"),
        Some("the capture segment is corrupt; restore with --snapshot-only".into()),
    )
}

/// Decodes one pgoutput message.
pub fn decode(data: &[u8]) -> Result<Message> {
    let mut r = Reader { data, at: 0 };
    let kind = r.u8()?;
    Ok(match kind {
        b'B' => Message::Begin {
            final_lsn: r.u64()?,
            commit_time: r.time()?,
            xid: r.u32()?,
        },
        b'C' => {
            let _flags = r.u8()?;
            Message::Commit {
                commit_lsn: r.u64()?,
                end_lsn: r.u64()?,
                commit_time: r.time()?,
            }
        }
        b'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let flags = r.u8()?;
                let name = r.string()?;
                let type_oid = r.u32()?;
                let _typmod = r.u32()?;
                columns.push(Column {
                    name,
                    key: flags & 1 == 1,
                    type_oid,
                });
            }
            Message::Relation(Relation {
                id,
                namespace,
                name,
                identity,
                columns,
            })
        }
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(malformed("INSERT without a new tuple"));
            }
            Message::Insert {
                relation,
                new: r.tuple()?,
            }
        }
        b'U' => {
            let relation = r.u32()?;
            let mut old = None;
            let mut tag = r.u8()?;
            if tag == b'K' || tag == b'O' {
                old = Some(r.tuple()?);
                tag = r.u8()?;
            }
            if tag != b'N' {
                return Err(malformed("UPDATE without a new tuple"));
            }
            Message::Update {
                relation,
                old,
                new: r.tuple()?,
            }
        }
        b'D' => {
            let relation = r.u32()?;
            let tag = r.u8()?;
            if tag != b'K' && tag != b'O' {
                return Err(malformed("DELETE without an old tuple"));
            }
            Message::Delete {
                relation,
                old: r.tuple()?,
            }
        }
        b'T' => {
            let n = r.u32()?;
            let options = r.u8()?;
            let mut relations = Vec::new();
            for _ in 0..n {
                relations.push(r.u32()?);
            }
            Message::Truncate {
                cascade: options & 1 == 1,
                restart_identity: options & 2 == 2,
                relations,
            }
        }
        b'M' => {
            let flags = r.u8()?;
            let _lsn = r.u64()?;
            let prefix = r.string()?;
            let len = r.u32()? as usize;
            Message::Logical {
                transactional: flags & 1 == 1,
                prefix,
                content: r.take(len)?.to_vec(),
            }
        }
        other => Message::Other(other),
    })
}

fn ident(name: &str) -> String {
    super::sql::quote_ident(name)
}

/// Turns decoded row changes into SQL against `schema`, keeping the
/// relation descriptions it has seen.
#[derive(Default)]
pub struct Replayer {
    relations: HashMap<u32, Relation>,
}

impl Replayer {
    pub fn relation(&self, id: u32) -> Result<&Relation> {
        self.relations
            .get(&id)
            .ok_or_else(|| malformed(&format!("a change for unknown relation {id}")))
    }

    pub fn learn(&mut self, rel: Relation) {
        self.relations.insert(rel.id, rel);
    }

    fn target(&self, schema: &str, rel: &Relation) -> String {
        format!("{}.{}", ident(schema), ident(&rel.name))
    }

    /// WHERE clause selecting one row by its identity: key columns compared
    /// with `=` (index-friendly); a full old row compared as text.
    fn matching(rel: &Relation, old: &[Value], full: bool) -> Result<String> {
        let mut parts = Vec::new();
        for (c, v) in rel.columns.iter().zip(old) {
            if !full && !c.key {
                continue;
            }
            parts.push(match v {
                Value::Null => format!("{} IS NULL", ident(&c.name)),
                Value::Text(t) if full => {
                    format!("{}::text = {}", ident(&c.name), literal(t))
                }
                Value::Text(t) => format!("{} = {}", ident(&c.name), literal(t)),
                Value::Unchanged => continue,
            });
        }
        if parts.is_empty() {
            return Err(Error::integrity(
                format!(
                    "table {} has no replica identity to find a changed row by",
                    rel.name
                ),
                Some("give the table a primary key or REPLICA IDENTITY FULL".into()),
            ));
        }
        Ok(parts.join(" AND "))
    }

    /// The statement replaying a row change, or None for other messages.
    pub fn sql(&self, schema: &str, msg: &Message) -> Result<Option<String>> {
        Ok(Some(match msg {
            Message::Insert { relation, new } => {
                let rel = self.relation(*relation)?;
                let cols: Vec<String> = rel.columns.iter().map(|c| ident(&c.name)).collect();
                let vals: Vec<String> = new
                    .iter()
                    .map(|v| match v {
                        Value::Text(t) => literal(t),
                        _ => "NULL".into(),
                    })
                    .collect();
                format!(
                    "INSERT INTO {} ({}) VALUES ({})",
                    self.target(schema, rel),
                    cols.join(", "),
                    vals.join(", ")
                )
            }
            Message::Update { relation, old, new } => {
                let rel = self.relation(*relation)?;
                let sets: Vec<String> = rel
                    .columns
                    .iter()
                    .zip(new)
                    .filter_map(|(c, v)| match v {
                        Value::Unchanged => None,
                        Value::Null => Some(format!("{} = NULL", ident(&c.name))),
                        Value::Text(t) => Some(format!("{} = {}", ident(&c.name), literal(t))),
                    })
                    .collect();
                let (identity, full) = match old {
                    Some(o) => (o.as_slice(), rel.identity == b'f'),
                    None => (new.as_slice(), false),
                };
                format!(
                    "UPDATE {t} SET {} WHERE ctid = (SELECT ctid FROM {t} WHERE {} LIMIT 1)",
                    sets.join(", "),
                    Self::matching(rel, identity, full)?,
                    t = self.target(schema, rel),
                )
            }
            Message::Delete { relation, old } => {
                let rel = self.relation(*relation)?;
                format!(
                    "DELETE FROM {t} WHERE ctid = (SELECT ctid FROM {t} WHERE {} LIMIT 1)",
                    Self::matching(rel, old, rel.identity == b'f')?,
                    t = self.target(schema, rel),
                )
            }
            Message::Truncate {
                cascade,
                restart_identity,
                relations,
            } => {
                let names = relations
                    .iter()
                    .map(|r| self.relation(*r).map(|rel| self.target(schema, rel)))
                    .collect::<Result<Vec<_>>>()?;
                format!(
                    "TRUNCATE {}{}{}",
                    names.join(", "),
                    if *restart_identity {
                        " RESTART IDENTITY"
                    } else {
                        ""
                    },
                    if *cascade { " CASCADE" } else { "" }
                )
            }
            _ => return Ok(None),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(t: &str) -> Vec<u8> {
        let mut v = t.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn relation_msg() -> Vec<u8> {
        let mut m = vec![b'R'];
        m.extend(16384u32.to_be_bytes());
        m.extend(s("fibu"));
        m.extend(s("Journal"));
        m.push(b'd');
        m.extend(2u16.to_be_bytes());
        m.push(1);
        m.extend(s("id"));
        m.extend(23u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        m.push(0);
        m.extend(s("note"));
        m.extend(25u32.to_be_bytes());
        m.extend((-1i32).to_be_bytes());
        m
    }

    fn tuple(vals: &[Option<&str>]) -> Vec<u8> {
        let mut m = (vals.len() as u16).to_be_bytes().to_vec();
        for v in vals {
            match v {
                None => m.push(b'n'),
                Some(t) => {
                    m.push(b't');
                    m.extend((t.len() as u32).to_be_bytes());
                    m.extend(t.as_bytes());
                }
            }
        }
        m
    }

    #[test]
    fn relation_insert_update_delete_become_sql() {
        let mut r = Replayer::default();
        match decode(&relation_msg()).unwrap() {
            Message::Relation(rel) => {
                assert!(rel.columns[0].key);
                r.learn(rel)
            }
            other => panic!("{other:?}"),
        }
        let mut ins = vec![b'I'];
        ins.extend(16384u32.to_be_bytes());
        ins.push(b'N');
        ins.extend(tuple(&[Some("1"), Some("it's")]));
        assert_eq!(
            r.sql("restored", &decode(&ins).unwrap()).unwrap().unwrap(),
            "INSERT INTO \"restored\".\"Journal\" (\"id\", \"note\") VALUES ('1', 'it''s')"
        );
        let mut upd = vec![b'U'];
        upd.extend(16384u32.to_be_bytes());
        upd.push(b'N');
        upd.extend(tuple(&[Some("1"), None]));
        let sql = r.sql("restored", &decode(&upd).unwrap()).unwrap().unwrap();
        assert!(
            sql.contains("SET \"id\" = '1', \"note\" = NULL") && sql.contains("WHERE \"id\" = '1'"),
            "{sql}"
        );
        let mut del = vec![b'D'];
        del.extend(16384u32.to_be_bytes());
        del.push(b'K');
        del.extend(tuple(&[Some("1"), None]));
        let sql = r.sql("restored", &decode(&del).unwrap()).unwrap().unwrap();
        assert!(
            sql.starts_with("DELETE FROM \"restored\".\"Journal\"") && sql.contains("\"id\" = '1'"),
            "{sql}"
        );
    }

    #[test]
    fn begin_and_commit_carry_times_and_positions() {
        let mut b = vec![b'B'];
        b.extend(0x1234u64.to_be_bytes());
        b.extend(0u64.to_be_bytes());
        b.extend(77u32.to_be_bytes());
        match decode(&b).unwrap() {
            Message::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                assert_eq!((final_lsn, xid), (0x1234, 77));
                assert_eq!(commit_time.to_rfc3339(), "2000-01-01T00:00:00+00:00");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn truncated_messages_are_integrity_errors_not_panics() {
        let full = relation_msg();
        for cut in 0..full.len() {
            assert!(decode(&full[..cut]).is_err() || cut == 0 && full.is_empty());
        }
        assert!(decode(&[]).is_err());
    }
}
