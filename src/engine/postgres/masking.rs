//! A masked refresh on PostgreSQL: the rules judged against the
//! snapshot's DDL (inside the restore's transaction, before a row is
//! loaded, so a refusal leaves everything as it was), then, per table that
//! holds rows (a partitioned table's rules cover its partitions), the
//! transformer of every COPY column for the row masker. Replayed captured changes are
//! masked the same way, old row images included, so a replayed UPDATE
//! finds the masked row the snapshot's masking left. `mask check` runs the
//! same checks on the snapshot's DDL without a server.

use std::collections::BTreeMap;

use super::pgoutput::{Message, Replayer, Value};
use crate::error::{Error, Result};
use crate::mask::check::{self, ColumnShape, Sample, SnapshotCheck};
use crate::mask::copy_text::{unescape, TablePlan};
use crate::mask::{Masking, Transformer};
use crate::snapshot::stream::ObjectStream;
use crate::snapshot::{Found, ObjectEntry, ObjectKind};
use crate::storage::Storage;

/// Per table that holds rows, its COPY columns and their transformers.
pub type TablePlans = BTreeMap<String, TablePlan>;

/// Judges the rules against the snapshot's DDL (the same judgement as
/// `mask check`) and plans every table: any problem ends the restore
/// (exit 2) before a row is loaded.
pub fn plan(masking: &Masking, service: &str, pre: &str, post: Option<&str>) -> Result<TablePlans> {
    let catalog = super::dump_tables::catalog(pre, post.unwrap_or_default());
    let judgement = check::judge(&catalog, &masking.rules, masking.strict);
    if !judgement.problems.is_empty() {
        return Err(check::refusal(service, &judgement.problems));
    }
    Ok(judgement.plans)
}

/// A captured row change with its values masked as the snapshot's rows
/// were (the transformers are deterministic, so an old key masks to the
/// value the restored row holds).
///
/// `lineage` is the changed table and the tables it is a partition of,
/// nearest first (a change to a partition arrives under its own name; the
/// rules of the partitioned table cover it).
pub fn mask_change(
    masking: &Masking,
    replayer: &Replayer,
    lineage: &[&str],
    msg: Message,
) -> Result<Message> {
    let relation = match &msg {
        Message::Insert { relation, .. }
        | Message::Update { relation, .. }
        | Message::Delete { relation, .. } => *relation,
        _ => return Ok(msg),
    };
    let rel = replayer.relation(relation)?;
    let plan: Vec<Option<&Transformer>> = rel
        .columns
        .iter()
        .map(|c| {
            check::rule_for(&masking.rules, lineage, &c.name).filter(|t| **t != Transformer::Keep)
        })
        .collect();
    if plan.iter().all(Option::is_none) {
        return Ok(msg);
    }
    let mask = |values: Vec<Value>| -> Result<Vec<Value>> {
        values
            .into_iter()
            .zip(plan.iter().chain(std::iter::repeat(&None)))
            .zip(
                rel.columns
                    .iter()
                    .map(|c| c.name.as_str())
                    .chain(std::iter::repeat("")),
            )
            .map(|((v, t), column)| match (v, t) {
                (Value::Text(text), Some(t)) => match t.apply(&masking.key, &text) {
                    Ok(Some(masked)) => Ok(Value::Text(masked)),
                    Ok(None) => Ok(Value::Null),
                    Err(refused) => Err(Error::usage(format!(
                        "masking a captured change to {}.{column}: {refused}; nothing was changed",
                        rel.name
                    ))),
                },
                (v, _) => Ok(v),
            })
            .collect()
    };
    Ok(match msg {
        Message::Insert { relation, new } => Message::Insert {
            relation,
            new: mask(new)?,
        },
        Message::Update { relation, old, new } => Message::Update {
            relation,
            old: old.map(&mask).transpose()?,
            new: mask(new)?,
        },
        Message::Delete { relation, old } => Message::Delete {
            relation,
            old: mask(old)?,
        },
        other => other,
    })
}

/// `mask check` on one snapshot's PostgreSQL part: the rules against the
/// tables its DDL creates, and `samples` before/after pairs per masked
/// column from the first rows of its table.
pub async fn check_snapshot(
    storage: &dyn Storage,
    found: &Found,
    masking: &Masking,
    samples: usize,
) -> Result<SnapshotCheck> {
    let sql = |kind: ObjectKind| async move {
        match found.manifest.objects.iter().find(|o| o.kind == kind) {
            Some(entry) => super::script::read_sql(storage, found, entry)
                .await
                .map(Some),
            None => Ok(None),
        }
    };
    let pre = sql(ObjectKind::PostgresPreData).await?.unwrap_or_default();
    let post = sql(ObjectKind::PostgresPostData).await?.unwrap_or_default();
    let catalog = super::dump_tables::catalog(&pre, &post);
    let judgement = check::judge(&catalog, &masking.rules, masking.strict);
    let mut out = SnapshotCheck {
        problems: judgement.problems,
        samples: Vec::new(),
        acts_on: judgement.acts_on,
        notes: Vec::new(),
    };
    if samples == 0 || !out.problems.is_empty() {
        return Ok(out);
    }
    for (table, plan) in judgement.plans {
        if !plan.masks() {
            continue;
        }
        let columns = &catalog.tables[&table];
        let entry = found
            .manifest
            .objects
            .iter()
            .find(|o| o.kind == ObjectKind::PostgresTable && o.name.as_deref() == Some(&table));
        if let Some(entry) = entry {
            let rows = first_rows(storage, found, entry, samples).await?;
            out.samples.extend(samples_of(
                &table,
                columns,
                &plan.transformers,
                &rows,
                masking,
                samples,
            ));
        }
    }
    Ok(out)
}

/// How many rows of a table `mask check` reads for its samples.
const FIRST_ROWS: usize = 10_000;

/// The first rows of a table's COPY text, where the samples' values come
/// from (at least `n`, at most `FIRST_ROWS` unless `n` is larger).
async fn first_rows(
    storage: &dyn Storage,
    found: &Found,
    entry: &ObjectEntry,
    n: usize,
) -> Result<Vec<Vec<u8>>> {
    let wanted = FIRST_ROWS.max(n);
    let mut stream = ObjectStream::open(storage, &found.base, entry).await?;
    let (mut text, mut rows) = (Vec::new(), 0);
    while let Some(piece) = stream.next().await? {
        rows += memchr::memchr_iter(b'\n', &piece).count();
        text.extend_from_slice(&piece);
        if rows >= wanted {
            break;
        }
    }
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .take(wanted)
        .map(<[u8]>::to_vec)
        .collect())
}

fn samples_of(
    table: &str,
    columns: &[ColumnShape],
    plan: &[Option<Transformer>],
    rows: &[Vec<u8>],
    masking: &Masking,
    n: usize,
) -> Vec<Sample> {
    let mut out = Vec::new();
    for (i, t) in plan.iter().enumerate() {
        let Some(t) = t else { continue };
        let values = rows
            .iter()
            .filter_map(|r| r.split(|b| *b == b'\t').nth(i))
            .filter(|f| *f != b"\\N")
            .take(n);
        for field in values {
            let before = String::from_utf8_lossy(&unescape(field)).into_owned();
            let after = match t.apply(&masking.key, &before) {
                Ok(Some(after)) => after,
                Ok(None) => "NULL".into(),
                Err(refused) => format!("(refused: {refused})"),
            };
            out.push(Sample {
                target: format!("{table}.{}", columns[i].name),
                before,
                after,
            });
        }
    }
    out
}
