//! Masking MongoDB documents: a rule's dotted path is followed through
//! sub-documents and through every element of an array on the way, and
//! the value it reaches is replaced (or the field unset, for `null`). A
//! value the transformer cannot stand in for (e.g. `email` on a binary) is
//! refused rather than passed through.

use std::collections::BTreeSet;

use bson::{Bson, Document, RawDocumentBuf};

use super::rules::FieldRule;
use super::transform::{MaskKey, Transformer};

/// A document the rules cannot be applied to.
#[derive(Debug, thiserror::Error)]
pub enum Unmaskable {
    #[error("field {path} holds a {kind}, which {transformer} cannot mask")]
    Kind {
        path: String,
        kind: &'static str,
        transformer: String,
    },
    #[error("field {path}: {refused}")]
    Refused {
        path: String,
        refused: super::transform::Refused,
    },
    #[error("invalid BSON: {0}")]
    Bson(String),
}

/// The masked copy of `raw`. In `strict` mode, adds to `uncovered` the
/// path of every string no rule covers.
pub fn mask_document(
    raw: &RawDocumentBuf,
    rules: &[FieldRule],
    key: &MaskKey,
    uncovered: Option<&mut BTreeSet<String>>,
) -> Result<RawDocumentBuf, Unmaskable> {
    let mut doc: Document = raw
        .to_document()
        .map_err(|e| Unmaskable::Bson(e.to_string()))?;
    mask_doc(&mut doc, rules, key, uncovered)?;
    RawDocumentBuf::from_document(&doc).map_err(|e| Unmaskable::Bson(e.to_string()))
}

/// `mask_document` on a parsed document (a captured insert or replace).
pub fn mask_doc(
    doc: &mut Document,
    rules: &[FieldRule],
    key: &MaskKey,
    uncovered: Option<&mut BTreeSet<String>>,
) -> Result<(), Unmaskable> {
    for rule in rules {
        mask_in(
            doc,
            &rule.path,
            &rule.transformer,
            key,
            &rule.path.join("."),
        )?;
    }
    if let Some(out) = uncovered {
        strings_outside(doc, "", &covered(rules), out);
    }
    Ok(())
}

/// Strict mode's question without masking: every string path of `doc`
/// no rule covers, added to `out`.
pub fn uncovered_strings(doc: &Document, rules: &[FieldRule], out: &mut BTreeSet<String>) {
    strings_outside(doc, "", &covered(rules), out);
}

fn covered(rules: &[FieldRule]) -> Vec<String> {
    rules.iter().map(|r| r.path.join(".")).collect()
}

/// Masks a captured update's `updateDescription` in place. Its changed
/// fields are dotted paths that may name array positions
/// (`contacts.1.phone`): a rule reaches a changed field when the paths
/// agree without the positions — the rule's field itself (a `null` rule
/// turns the change into an unset), a field inside it, or a sub-document
/// or array that contains it.
pub fn mask_update(
    description: &mut Document,
    rules: &[FieldRule],
    key: &MaskKey,
    mut uncovered: Option<&mut BTreeSet<String>>,
) -> Result<(), Unmaskable> {
    let Ok(fields) = description.get_document_mut("updatedFields") else {
        return Ok(());
    };
    let mut unset = Vec::new();
    let names: Vec<String> = fields.keys().cloned().collect();
    for name in names {
        let changed: Vec<&str> = name.split('.').collect();
        let logical: Vec<&str> = changed
            .iter()
            .copied()
            .filter(|p| p.parse::<usize>().is_err())
            .collect();
        let Some(value) = fields.get_mut(&name) else {
            continue;
        };
        let mut reached = false;
        for rule in rules {
            let full = rule.path.join(".");
            let rule_path: Vec<&str> = rule.path.iter().map(String::as_str).collect();
            match walk(&changed, &rule_path) {
                Walk::Exact | Walk::Inside => {
                    // The rule's field, or a field inside it.
                    reached = true;
                    let exact = walk(&changed, &rule_path) == Walk::Exact;
                    if rule.transformer == Transformer::Null && exact {
                        unset.push(name.clone());
                    } else {
                        mask_value(value, &rule.transformer, key, &full)?;
                    }
                }
                Walk::Holds(depth) => {
                    // A sub-document or array that holds the rule's field.
                    descend(value, &rule.path[depth..], &rule.transformer, key, &full)?;
                }
                Walk::Apart => {}
            }
        }
        if let (Some(out), false) = (uncovered.as_deref_mut(), reached) {
            strings_in(value, &logical.join("."), &covered(rules), out);
        }
    }
    for name in &unset {
        fields.remove(name);
    }
    if !unset.is_empty() {
        let removed = description
            .entry("removedFields".to_string())
            .or_insert_with(|| Bson::Array(Vec::new()));
        if let Bson::Array(a) = removed {
            a.extend(unset.into_iter().map(Bson::String));
        }
    }
    Ok(())
}

/// How a changed field's dotted path (`contacts.1.phone`, `years.2024.email`)
/// meets a rule's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    /// The changed field is the rule's field.
    Exact,
    /// The changed field lies inside the rule's field.
    Inside,
    /// The changed field holds the rule's field: the rule's path goes on
    /// from this many of its segments.
    Holds(usize),
    Apart,
}

/// Matches a changed path against a rule's path: each changed segment is
/// the rule's next field name, or — when it is a number — an array
/// position the rule does not spell. A numeric field name (`2024`) is
/// tried as a name first, then as a position.
fn walk(changed: &[&str], rule: &[&str]) -> Walk {
    match (changed.split_first(), rule.split_first()) {
        (None, None) => Walk::Exact,
        (Some(_), None) => Walk::Inside,
        (None, Some(_)) => Walk::Holds(0),
        (Some((c, c_rest)), Some((r, r_rest))) => {
            let as_name = if c == r {
                match walk(c_rest, r_rest) {
                    Walk::Holds(depth) => Walk::Holds(depth + 1),
                    other => other,
                }
            } else {
                Walk::Apart
            };
            if as_name != Walk::Apart || c.parse::<usize>().is_err() {
                return as_name;
            }
            walk(c_rest, rule)
        }
    }
}

/// The first value a path reaches (through sub-documents and arrays), if
/// any document part has it.
pub fn first_at<'a>(doc: &'a Document, path: &[String]) -> Option<&'a Bson> {
    let (first, rest) = path.split_first()?;
    let value = doc.get(first)?;
    if rest.is_empty() {
        return match value {
            Bson::Array(items) => items.iter().find(|v| !matches!(v, Bson::Null)),
            Bson::Null => None,
            v => Some(v),
        };
    }
    first_below(value, rest)
}

fn first_below<'a>(value: &'a Bson, rest: &[String]) -> Option<&'a Bson> {
    match value {
        Bson::Document(d) => first_at(d, rest),
        Bson::Array(items) => items.iter().find_map(|i| first_below(i, rest)),
        _ => None,
    }
}

fn mask_in(
    doc: &mut Document,
    path: &[String],
    t: &Transformer,
    key: &MaskKey,
    full: &str,
) -> Result<(), Unmaskable> {
    let Some((first, rest)) = path.split_first() else {
        return Ok(());
    };
    if rest.is_empty() && *t == Transformer::Null {
        doc.remove(first);
        return Ok(());
    }
    let Some(value) = doc.get_mut(first) else {
        return Ok(());
    };
    if rest.is_empty() {
        return mask_value(value, t, key, full);
    }
    descend(value, rest, t, key, full)
}

/// Follows the rest of a path into a sub-document or every element of an
/// array; other values do not have the path and stay as they are.
fn descend(
    value: &mut Bson,
    rest: &[String],
    t: &Transformer,
    key: &MaskKey,
    full: &str,
) -> Result<(), Unmaskable> {
    match value {
        Bson::Document(d) => mask_in(d, rest, t, key, full),
        Bson::Array(items) => {
            for item in items {
                descend(item, rest, t, key, full)?;
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Replaces the value a path reached (every element, for an array).
fn mask_value(
    value: &mut Bson,
    t: &Transformer,
    key: &MaskKey,
    full: &str,
) -> Result<(), Unmaskable> {
    let refuse = |kind: &'static str| Unmaskable::Kind {
        path: full.to_string(),
        kind,
        transformer: t.name().to_string(),
    };
    let replaced = match (&*value, t) {
        (_, Transformer::Keep) | (Bson::Null, _) => return Ok(()),
        (_, Transformer::Null) => Bson::Null,
        (Bson::Array(_), _) => {
            if let Bson::Array(items) = value {
                for item in items {
                    mask_value(item, t, key, full)?;
                }
            }
            return Ok(());
        }
        (Bson::String(s), _) => match t.apply(key, s) {
            Ok(Some(masked)) => Bson::String(masked),
            Ok(None) => Bson::Null,
            Err(refused) => {
                return Err(Unmaskable::Refused {
                    path: full.to_string(),
                    refused,
                })
            }
        },
        (_, Transformer::Constant(c)) => Bson::String(c.clone()),
        (Bson::Int32(n), Transformer::NumberRange { .. }) => number(t, key, &n.to_string())
            .map(|m| i32::try_from(m).map(Bson::Int32).unwrap_or(Bson::Int64(m)))
            .ok_or_else(|| refuse("number"))?,
        (Bson::Int64(n), Transformer::NumberRange { .. }) => number(t, key, &n.to_string())
            .map(Bson::Int64)
            .ok_or_else(|| refuse("number"))?,
        (Bson::Double(n), Transformer::NumberRange { .. }) => number(t, key, &n.to_string())
            .map(|m| Bson::Double(m as f64))
            .ok_or_else(|| refuse("number"))?,
        (Bson::DateTime(d), Transformer::DateShift { .. }) => {
            shifted(t, key, *d).ok_or_else(|| refuse("date"))?
        }
        (other, _) => return Err(refuse(kind_of(other))),
    };
    *value = replaced;
    Ok(())
}

fn number(t: &Transformer, key: &MaskKey, value: &str) -> Option<i64> {
    t.apply(key, value).ok()??.parse().ok()
}

/// A BSON date moved like a PostgreSQL timestamp: by whole days.
fn shifted(t: &Transformer, key: &MaskKey, d: bson::DateTime) -> Option<Bson> {
    let text = d.to_chrono().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
    let moved = t.apply(key, &text).ok()??;
    let parsed = chrono::DateTime::parse_from_rfc3339(&moved).ok()?;
    Some(Bson::DateTime(bson::DateTime::from_chrono(
        parsed.with_timezone(&chrono::Utc),
    )))
}

fn kind_of(value: &Bson) -> &'static str {
    match value {
        Bson::Document(_) => "document",
        Bson::Boolean(_) => "boolean",
        Bson::Int32(_) | Bson::Int64(_) | Bson::Double(_) | Bson::Decimal128(_) => "number",
        Bson::DateTime(_) | Bson::Timestamp(_) => "date",
        Bson::Binary(_) => "binary value",
        Bson::ObjectId(_) => "ObjectId",
        _ => "value of another BSON type",
    }
}

/// Every path (array positions left out) that holds a string and is
/// neither covered by a rule nor `_id`.
fn strings_outside(doc: &Document, prefix: &str, covered: &[String], out: &mut BTreeSet<String>) {
    for (name, value) in doc {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        if path == "_id" || covered.iter().any(|c| c == &path) {
            continue;
        }
        strings_in(value, &path, covered, out);
    }
}

fn strings_in(value: &Bson, path: &str, covered: &[String], out: &mut BTreeSet<String>) {
    match value {
        Bson::String(_) => {
            out.insert(path.to_string());
        }
        Bson::Document(d) => strings_outside(d, path, covered, out),
        Bson::Array(items) => {
            for item in items {
                strings_in(item, path, covered, out);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn rule(path: &str, transformer: Transformer) -> FieldRule {
        FieldRule {
            path: path.split('.').map(str::to_string).collect(),
            transformer,
        }
    }

    fn key() -> MaskKey {
        MaskKey::new(&[3u8; 32]).unwrap()
    }

    #[test]
    fn paths_reach_through_sub_documents_and_arrays() {
        let raw = RawDocumentBuf::from_document(&doc! {
            "_id": 1, "email": "anna@kunde.de", "note": "ruft an",
            "contacts": [{"phone": "+49 221 1234567", "kind": "mobil"}, {"phone": "0221 7654321"}, "loose"],
            "tags": ["anna", "vip"], "age": 41, "born": bson::DateTime::from_millis(0),
        })
        .unwrap();
        let rules = [
            rule("email", Transformer::Email),
            rule("contacts.phone", Transformer::Phone),
            rule("tags", Transformer::Hash),
            rule("note", Transformer::Null),
            rule("age", Transformer::NumberRange { min: 18, max: 90 }),
            rule("born", Transformer::DateShift { days: 10 }),
        ];
        let mut uncovered = BTreeSet::new();
        let masked = mask_document(&raw, &rules, &key(), Some(&mut uncovered))
            .unwrap()
            .to_document()
            .unwrap();
        assert!(masked
            .get_str("email")
            .unwrap()
            .ends_with("@example.invalid"));
        assert!(!masked.contains_key("note"), "null unsets the field");
        let contacts = masked.get_array("contacts").unwrap();
        let first = contacts[0].as_document().unwrap();
        assert_ne!(first.get_str("phone").unwrap(), "+49 221 1234567");
        assert!(first.get_str("phone").unwrap().starts_with("+49"));
        assert_eq!(contacts[2].as_str(), Some("loose"));
        assert_ne!(masked.get_array("tags").unwrap()[0].as_str(), Some("anna"));
        assert!((18..=90).contains(&masked.get_i32("age").unwrap()));
        assert_ne!(masked.get_datetime("born").unwrap().timestamp_millis(), 0);
        assert_eq!(
            uncovered.into_iter().collect::<Vec<_>>(),
            vec!["contacts".to_string(), "contacts.kind".to_string()]
        );
    }

    #[test]
    fn captured_updates_are_masked_at_every_depth_the_rules_reach() {
        let rules = [
            rule("email", Transformer::Email),
            rule("contacts.phone", Transformer::Phone),
            rule("notes", Transformer::Null),
            rule("address", Transformer::Text),
        ];
        let mut desc = doc! {"updatedFields": {
            "email": "anna@kunde.de",
            "contacts.1.phone": "0221 1234567",
            "contacts": [{"phone": "0170 7654321", "kind": "mobil"}],
            "notes": "ruft an",
            "address.city": "Köln",
            "score": 5,
        }, "removedFields": []};
        let mut uncovered = BTreeSet::new();
        mask_update(&mut desc, &rules, &key(), Some(&mut uncovered)).unwrap();
        let set = desc.get_document("updatedFields").unwrap();
        let whole = MaskKey::new(&[3u8; 32]).unwrap();
        assert_eq!(
            set.get_str("email").unwrap(),
            Transformer::Email
                .apply(&whole, "anna@kunde.de")
                .unwrap()
                .unwrap(),
            "an update masks like the snapshot"
        );
        assert_ne!(set.get_str("contacts.1.phone").unwrap(), "0221 1234567");
        let array = set.get_array("contacts").unwrap();
        assert_ne!(
            array[0].as_document().unwrap().get_str("phone").unwrap(),
            "0170 7654321"
        );
        assert_ne!(set.get_str("address.city").unwrap(), "Köln");
        assert!(!set.contains_key("notes"));
        assert_eq!(
            desc.get_array("removedFields").unwrap(),
            &vec![Bson::String("notes".into())]
        );
        assert_eq!(set.get_i32("score").unwrap(), 5);
        assert_eq!(
            uncovered.into_iter().collect::<Vec<_>>(),
            vec!["contacts.kind".to_string()]
        );
    }

    #[test]
    fn a_value_the_transformer_cannot_stand_in_for_is_refused() {
        let raw = RawDocumentBuf::from_document(&doc! {"_id": 1, "email": true}).unwrap();
        let e = mask_document(&raw, &[rule("email", Transformer::Email)], &key(), None);
        assert!(e
            .unwrap_err()
            .to_string()
            .contains("field email holds a boolean"));
    }

    #[test]
    fn a_numeric_field_name_in_a_captured_update_is_a_name_before_a_position() {
        let rules = [
            rule("years.2024.email", Transformer::Email),
            rule("contacts.phone", Transformer::Phone),
        ];
        let mut d = doc! {"updatedFields": {
            "years.2024.email": "anna@kunde.de",
            "years.2024": {"email": "bob@kunde.de"},
            "contacts.1.phone": "0221 7654321",
            "years.2025.email": "kept@kunde.de",
        }};
        mask_update(&mut d, &rules, &key(), None).unwrap();
        let f = d.get_document("updatedFields").unwrap();
        assert!(f
            .get_str("years.2024.email")
            .unwrap()
            .ends_with("@example.invalid"));
        assert!(f
            .get_document("years.2024")
            .unwrap()
            .get_str("email")
            .unwrap()
            .ends_with("@example.invalid"));
        assert_ne!(f.get_str("contacts.1.phone").unwrap(), "0221 7654321");
        assert_eq!(f.get_str("years.2025.email").unwrap(), "kept@kunde.de");
        assert_eq!(walk(&["a", "0", "b"], &["a", "b"]), Walk::Exact);
        assert_eq!(walk(&["a"], &["a", "b"]), Walk::Holds(1));
        assert_eq!(walk(&["a", "b", "c"], &["a", "b"]), Walk::Inside);
        assert_eq!(walk(&["x"], &["a"]), Walk::Apart);
    }

    #[test]
    fn a_value_the_transformer_refuses_ends_the_masking_naming_the_field() {
        let raw = RawDocumentBuf::from_document(&doc! {"_id": 1, "born": "04.03.1975"}).unwrap();
        let rules = [rule("born", Transformer::DateShift { days: 10 })];
        let e = mask_document(&raw, &rules, &key(), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("field born: date_shift cannot stand in"), "{e}");
        assert!(!e.contains("1975"), "the value is never shown: {e}");
    }
}
