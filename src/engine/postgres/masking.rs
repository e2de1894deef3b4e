//! A masked refresh on PostgreSQL: the rules checked against the tables
//! the snapshot just created (inside the restore's transaction, so a
//! refusal leaves everything as it was), then, per table, the transformer
//! of every COPY column for the row masker. Replayed captured changes are
//! masked the same way, old row images included, so a replayed UPDATE
//! finds the masked row the snapshot's masking left. `mask check` runs the
//! same checks on the snapshot's DDL without a server.

use std::collections::BTreeMap;

use sqlx::{PgConnection, Row};

use super::pgoutput::{Message, Replayer, Value};
use crate::error::{Error, Result};
use crate::mask::check::{self, ColumnShape, Sample, SnapshotCheck, TableShapes};
use crate::mask::copy_text::unescape;
use crate::mask::{Masking, Transformer};
use crate::snapshot::stream::ObjectStream;
use crate::snapshot::{Found, ObjectEntry, ObjectKind};
use crate::storage::Storage;

/// Per table, the transformer of each COPY column in order.
pub type TablePlans = BTreeMap<String, Vec<Option<Transformer>>>;

/// Checks the rules against the restored schema (uniqueness from the
/// snapshot's post-data DDL, which has not run yet) and plans every table:
/// any problem `mask::check` finds ends the restore (exit 2) before a row
/// is loaded.
pub async fn plan(
    conn: &mut PgConnection,
    schema: &str,
    masking: &Masking,
    service: &str,
    post: Option<&str>,
) -> Result<TablePlans> {
    let mut tables = columns_of(conn, schema).await.map_err(|e| {
        Error::usage(format!(
            "masking {service}: reading the columns of {schema} failed: {e}"
        ))
    })?;
    super::dump_tables::mark_unique(&mut tables, post.unwrap_or_default());
    let problems = check::postgres_problems(&tables, &masking.rules, masking.strict);
    if !problems.is_empty() {
        return Err(check::refusal(service, &problems));
    }
    Ok(check::column_plans(&tables, &masking.rules))
}

/// The COPY columns (live, not generated, in order) of every table.
async fn columns_of(
    conn: &mut PgConnection,
    schema: &str,
) -> std::result::Result<TableShapes, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT c.relname::text, a.attname::text, t.typcategory::text, format_type(a.atttypid, a.atttypmod), \
                a.attnotnull, \
                (t.typcategory = 'S' OR t.typname IN ('json', 'jsonb', 'xml') \
                 OR (t.typcategory = 'A' AND EXISTS (SELECT 1 FROM pg_type e WHERE e.oid = t.typelem AND e.typcategory = 'S'))) \
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = '' \
         JOIN pg_type t ON t.oid = a.atttypid \
         WHERE n.nspname = $1 AND c.relkind IN ('r', 'p') ORDER BY c.relname, a.attnum",
    )
    .bind(schema)
    .fetch_all(conn)
    .await?;
    let mut out = TableShapes::new();
    for r in rows {
        let category: String = r.get(2);
        out.entry(r.get(0)).or_default().push(ColumnShape {
            name: r.get(1),
            category: category.chars().next().unwrap_or('X'),
            type_name: r.get(3),
            not_null: r.get(4),
            text_like: r.get(5),
            unique: false,
        });
    }
    Ok(out)
}

/// A captured row change with its values masked as the snapshot's rows
/// were (the transformers are deterministic, so an old key masks to the
/// value the restored row holds).
pub fn mask_change(masking: &Masking, replayer: &Replayer, msg: Message) -> Result<Message> {
    let relation = match &msg {
        Message::Insert { relation, .. }
        | Message::Update { relation, .. }
        | Message::Delete { relation, .. } => *relation,
        _ => return Ok(msg),
    };
    let rel = replayer.relation(relation)?;
    if !masking.rules.postgres.contains_key(&rel.name) {
        return Ok(msg);
    }
    let plan: Vec<Option<&Transformer>> = rel
        .columns
        .iter()
        .map(|c| masking.rules.column(&rel.name, &c.name))
        .collect();
    let mask = |values: Vec<Value>| -> Vec<Value> {
        values
            .into_iter()
            .zip(plan.iter().chain(std::iter::repeat(&None)))
            .map(|(v, t)| match (v, t) {
                (Value::Text(text), Some(t)) => match t.apply(&masking.key, &text) {
                    Some(masked) => Value::Text(masked),
                    None => Value::Null,
                },
                (v, _) => v,
            })
            .collect()
    };
    Ok(match msg {
        Message::Insert { relation, new } => Message::Insert {
            relation,
            new: mask(new),
        },
        Message::Update { relation, old, new } => Message::Update {
            relation,
            old: old.map(&mask),
            new: mask(new),
        },
        Message::Delete { relation, old } => Message::Delete {
            relation,
            old: mask(old),
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
    let tables = super::dump_tables::table_shapes(&pre, &post);
    let mut out = SnapshotCheck {
        problems: check::postgres_problems(&tables, &masking.rules, masking.strict),
        samples: Vec::new(),
    };
    if samples == 0 || !out.problems.is_empty() {
        return Ok(out);
    }
    for (table, plan) in check::column_plans(&tables, &masking.rules) {
        if plan.iter().all(Option::is_none) {
            continue;
        }
        let columns = &tables[&table];
        let entry = found
            .manifest
            .objects
            .iter()
            .find(|o| o.kind == ObjectKind::PostgresTable && o.name.as_deref() == Some(&table));
        if let Some(entry) = entry {
            let rows = first_rows(storage, found, entry, samples).await?;
            out.samples
                .extend(samples_of(&table, columns, &plan, &rows, masking, samples));
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
            let after = t
                .apply(&masking.key, &before)
                .unwrap_or_else(|| "NULL".into());
            out.push(Sample {
                target: format!("{table}.{}", columns[i].name),
                before,
                after,
            });
        }
    }
    out
}
