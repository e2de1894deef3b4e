//! A masked refresh on MongoDB: the rules' collections checked against
//! the snapshot before anything changes, every loaded document masked
//! before it is inserted, and replayed change events (inserts, replaces,
//! updates) masked the same way. Strict mode collects every string field
//! no rule covers and refuses the restore when there is one.

use std::collections::BTreeSet;

use bson::{Document, RawDocumentBuf};

use super::driver::collection_of;
use super::dump::{DocumentReader, Planned};
use crate::error::{Error, Result};
use crate::mask::check::{refusal, Sample, SnapshotCheck};
use crate::mask::Masking;
use crate::snapshot::stream::ObjectStream;
use crate::snapshot::Found;
use crate::storage::Storage;

/// Every collection a rule names must be in the snapshot (a rule for a
/// renamed collection would otherwise mask nothing) — unless captured
/// changes are replayed, which may create it after the snapshot (their
/// documents are masked by its rules like any other) — and a unique index
/// on a masked field needs an injective transformer.
pub(super) fn check_collections(
    masking: &Masking,
    planned: &[Planned],
    service: &str,
    replaying: bool,
) -> Result<()> {
    let mut problems = collection_problems(masking, planned);
    if replaying {
        problems.retain(|p| !p.ends_with(NOT_IN_SNAPSHOT));
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(refusal(service, &problems))
}

const NOT_IN_SNAPSHOT: &str = " is not in the snapshot";

fn collection_problems(masking: &Masking, planned: &[Planned]) -> Vec<String> {
    let mut problems = Vec::new();
    for (collection, rules) in &masking.rules.mongodb {
        let Some(p) = planned
            .iter()
            .find(|p| p.kind != "view" && &p.name == collection)
        else {
            problems.push(format!("collection {collection}{NOT_IN_SNAPSHOT}"));
            continue;
        };
        for rule in rules.iter().filter(|r| !r.transformer.is_injective()) {
            let field = rule.path.join(".");
            let unique = p.indexes.iter().any(|i| {
                i.get_bool("unique").unwrap_or(false)
                    && i.get_document("key").is_ok_and(|k| k.contains_key(&field))
            });
            if unique {
                problems.push(format!(
                    "{collection}.{field} has a unique index; {} may give two documents one value (use hash, email or iban)",
                    rule.transformer.name()
                ));
            }
        }
    }
    problems
}

/// The masking of one collection's documents, and in strict mode the
/// string fields no rule covers.
pub struct DocumentMasker<'a> {
    masking: &'a Masking,
    rules: &'a [crate::mask::FieldRule],
    collection: String,
    /// Strict mode, for a collection of the application's.
    strict: bool,
    uncovered: std::collections::BTreeSet<String>,
}

impl<'a> DocumentMasker<'a> {
    pub fn new(masking: &'a Masking, collection: &str) -> DocumentMasker<'a> {
        DocumentMasker {
            masking,
            rules: masking.rules.fields(collection),
            collection: collection.to_string(),
            strict: masking.strict_for(collection),
            uncovered: Default::default(),
        }
    }

    /// The masked document; None when no rule applies to the collection.
    pub fn mask(&mut self, raw: &RawDocumentBuf) -> Result<Option<RawDocumentBuf>> {
        if self.rules.is_empty() && !self.strict {
            return Ok(None);
        }
        let uncovered = self.strict.then_some(&mut self.uncovered);
        crate::mask::document::mask_document(raw, self.rules, &self.masking.key, uncovered)
            .map(Some)
            .map_err(|e| {
                Error::usage(format!(
                    "masking collection {}: {e}; nothing was changed",
                    self.collection
                ))
            })
    }

    /// Strict mode: refuses when a string field went unmasked.
    pub fn finish(self, service: &str) -> Result<()> {
        if self.uncovered.is_empty() {
            return Ok(());
        }
        let fields: Vec<String> = self
            .uncovered
            .iter()
            .map(|f| format!("{}.{f}", self.collection))
            .collect();
        Err(refusal(service, &strict_problems(fields)))
    }
}

/// A captured change event with the collection's rules applied: the full
/// document of an insert or replace, the changed fields of an update.
/// Strict mode adds the strings no rule covers to `uncovered`.
pub fn mask_event(
    masking: &Masking,
    mut event: Document,
    uncovered: &mut BTreeSet<String>,
) -> Result<Document> {
    let op = event
        .get_str("operationType")
        .unwrap_or_default()
        .to_string();
    let coll = collection_of(&event).to_string();
    let rules = masking.rules.fields(&coll);
    let mut found = BTreeSet::new();
    let strict = masking.strict_for(&coll).then_some(&mut found);
    let masked = match op.as_str() {
        "insert" | "replace" => match event.get_document_mut("fullDocument") {
            Ok(full) => crate::mask::document::mask_doc(full, rules, &masking.key, strict),
            Err(_) => Ok(()),
        },
        "update" => match event.get_document_mut("updateDescription") {
            Ok(d) => crate::mask::document::mask_update(d, rules, &masking.key, strict),
            Err(_) => Ok(()),
        },
        _ => Ok(()),
    };
    masked.map_err(|e| {
        Error::usage(format!(
            "masking a captured {op} on {coll}: {e}; nothing was changed"
        ))
    })?;
    uncovered.extend(found.into_iter().map(|f| format!("{coll}.{f}")));
    Ok(event)
}

/// `mask check` on one snapshot's MongoDB part: the collection checks,
/// then every document of every collection a rule names (or, strict,
/// every collection) masked in memory — a rule whose field never occurs,
/// a value its transformer cannot stand in for, and strict mode's
/// uncovered strings are problems; `samples` before/after pairs per rule.
pub async fn check_snapshot(
    storage: &dyn Storage,
    found: &Found,
    masking: &Masking,
    samples: usize,
) -> Result<SnapshotCheck> {
    let planned = super::dump::plan(storage, found).await?;
    let (notes, problems) = collection_problems(masking, &planned)
        .into_iter()
        .partition(|p| p.ends_with(NOT_IN_SNAPSHOT));
    let mut out = SnapshotCheck {
        problems,
        notes: notes
            .into_iter()
            .map(|n: String| {
                format!("{n}: its rules apply to the documents captured changes bring (a restore without them refuses it)")
            })
            .collect(),
        ..SnapshotCheck::default()
    };
    let mut uncovered = BTreeSet::new();
    for p in planned.iter().filter(|p| p.kind != "view") {
        let rules = masking.rules.fields(&p.name);
        let strict = masking.strict_for(&p.name);
        if rules.is_empty() && !strict {
            continue;
        }
        let mut seen = vec![0usize; rules.len()];
        let mut failed = BTreeSet::new();
        let mut documents = 0u64;
        if let Some(entry) = &p.data {
            let stream = ObjectStream::open(storage, &found.base, entry).await?;
            let mut reader = DocumentReader::new(stream, &found.base, &entry.key);
            while let Some(raw) = reader.next().await? {
                documents += 1;
                let doc = raw
                    .to_document()
                    .map_err(|e| Error::integrity(format!("snapshot {}: {e}", found.base), None))?;
                // The rules one after another on one copy, as a restore
                // applies them, so a failure names its rule.
                let mut masked = doc.clone();
                for (i, rule) in rules.iter().enumerate() {
                    let Some(before) = crate::mask::document::first_at(&doc, &rule.path) else {
                        continue;
                    };
                    seen[i] += 1;
                    let one = std::slice::from_ref(rule);
                    match crate::mask::document::mask_doc(&mut masked, one, &masking.key, None) {
                        Err(e) => {
                            if failed.insert(i) {
                                out.problems.push(format!("{}: {e}", p.name));
                            }
                        }
                        Ok(()) if seen[i] <= samples => out.samples.push(Sample {
                            target: format!("{}.{}", p.name, rule.path.join(".")),
                            before: shown(Some(before)),
                            after: shown(crate::mask::document::first_at(&masked, &rule.path)),
                        }),
                        Ok(()) => {}
                    }
                }
                if strict {
                    let mut found = BTreeSet::new();
                    crate::mask::document::uncovered_strings(&doc, rules, &mut found);
                    uncovered.extend(found.into_iter().map(|f| format!("{}.{f}", p.name)));
                }
            }
        }
        for (i, rule) in rules.iter().enumerate() {
            if seen[i] == 0 {
                out.problems.push(format!(
                    "field {}.{} occurs in none of the snapshot's {documents} documents",
                    p.name,
                    rule.path.join(".")
                ));
            }
        }
    }
    out.problems.extend(strict_problems(uncovered));
    Ok(out)
}

/// Strict mode's problem lines for string fields no rule covers
/// (`collection.field.path`).
pub fn strict_problems(fields: impl IntoIterator<Item = String>) -> Vec<String> {
    fields
        .into_iter()
        .map(|f| format!("strict: {f} is a string field neither masked nor kept"))
        .collect()
}

/// A BSON value as a sample shows it.
fn shown(value: Option<&bson::Bson>) -> String {
    match value {
        None => "(unset)".into(),
        Some(bson::Bson::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}
