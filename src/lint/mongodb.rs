//! MongoDB migration files: commands that destroy data, block the
//! collection, or turn existing documents invalid. A collection created
//! earlier in the same file is new and empty, so building its indexes or
//! changing its validator is harmless.

use bson::{Bson, Document};

use super::{Finding, Location, Severity};

pub const RULES: &[&str] = &[
    "mongodb-drop",
    "mongodb-index-on-existing-collection",
    "mongodb-validator-on-existing-data",
    "mongodb-write-without-filter",
];

/// Lints one file's commands (locations are 1-based command numbers).
pub fn lint_file(file: &str, commands: &[Document], has_down: bool) -> Vec<Finding> {
    let mut created: Vec<String> = Vec::new();
    let mut findings = Vec::new();
    for (i, command) in commands.iter().enumerate() {
        let Some((name, target)) = command.iter().next() else {
            continue;
        };
        let collection = target.as_str().unwrap_or_default().to_string();
        let existing = !created.contains(&collection);
        let mut find = |rule: &str, message: String, help: &str| {
            findings.push(Finding {
                file: file.to_string(),
                at: Location::Command(i + 1),
                rule: rule.to_string(),
                severity: Severity::Warning,
                message,
                help: help.to_string(),
                allowed: None,
            })
        };
        match name.as_str() {
            "create" => created.push(collection),
            "drop" | "dropDatabase" => find(
                "mongodb-drop",
                format!(
                    "`{name}` deletes {} with every document in it{}",
                    if name == "drop" { format!("collection {collection}") } else { "the database".into() },
                    if has_down { "; the down file cannot bring the documents back" } else { ", and there is no down file" }
                ),
                "keep the data until a later release, or know that only the pre-migrate snapshot (`valero-db restore --snapshot <id>`) restores it",
            ),
            "createIndexes" if existing => find(
                "mongodb-index-on-existing-collection",
                format!("building an index on the existing collection {collection} reads every document and takes an exclusive lock at its start and end; a unique index fails on existing duplicates"),
                "build it in a quiet hour, check for duplicates first for unique indexes, or create the collection and its indexes in the same migration",
            ),
            "collMod" if existing && command.contains_key("validator") && rejects_invalid(command) => find(
                "mongodb-validator-on-existing-data",
                format!("a validator with validationAction \"error\" on the existing collection {collection}: documents already there that do not match cannot be updated any more"),
                "start with validationAction \"warn\" (or validationLevel \"moderate\"), fix the documents the log names, then switch to \"error\"",
            ),
            "update" | "delete" => {
                if let Some(unfiltered) = unfiltered_statement(command, name) {
                    find(
                        "mongodb-write-without-filter",
                        format!("{name} statement {unfiltered} has an empty filter: it changes every document of {collection}"),
                        "give it a filter that names the documents meant, or say so with an explicit one (e.g. {\"field\": {\"$exists\": true}})",
                    );
                }
            }
            _ => {}
        }
    }
    findings
}

/// `validationAction` is "error" unless set to "warn" (or validation off).
fn rejects_invalid(command: &Document) -> bool {
    command.get_str("validationAction").unwrap_or("error") == "error"
        && command.get_str("validationLevel").unwrap_or("strict") != "off"
}

/// The 1-based number of the first update or delete statement with an
/// empty filter (`q: {}`) that reaches more than one document.
fn unfiltered_statement(command: &Document, name: &str) -> Option<usize> {
    let list = if name == "update" {
        "updates"
    } else {
        "deletes"
    };
    let statements = command.get_array(list).ok()?;
    statements.iter().enumerate().find_map(|(i, s)| {
        let Bson::Document(s) = s else { return None };
        let empty = s.get_document("q").map(|q| q.is_empty()).unwrap_or(true);
        let many = if name == "update" {
            s.get_bool("multi").unwrap_or(false)
        } else {
            s.get_i32("limit").map(|l| l == 0).unwrap_or(true)
        };
        (empty && many).then_some(i + 1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bson::doc;

    fn rules(commands: &[Document]) -> Vec<String> {
        lint_file("f.json", commands, true)
            .into_iter()
            .map(|f| f.rule)
            .collect()
    }

    #[test]
    fn hazards_on_existing_collections_are_found_and_new_ones_are_not() {
        let index = doc! {"createIndexes": "c", "indexes": [{"key": {"a": 1}, "name": "a_1"}]};
        assert_eq!(
            rules(std::slice::from_ref(&index)),
            ["mongodb-index-on-existing-collection"]
        );
        assert!(rules(&[doc! {"create": "c"}, index]).is_empty());
        let strict = doc! {"collMod": "c", "validator": {"a": {"$exists": true}}};
        assert_eq!(rules(&[strict]), ["mongodb-validator-on-existing-data"]);
        let warn = doc! {"collMod": "c", "validator": {"a": {"$exists": true}}, "validationAction": "warn"};
        assert!(rules(&[warn]).is_empty());
        assert_eq!(rules(&[doc! {"drop": "c"}]), ["mongodb-drop"]);
        assert_eq!(rules(&[doc! {"dropDatabase": 1}]), ["mongodb-drop"]);
    }

    #[test]
    fn writes_without_a_filter_are_found() {
        let all =
            doc! {"update": "c", "updates": [{"q": {}, "u": {"$set": {"a": 1}}, "multi": true}]};
        assert_eq!(rules(&[all]), ["mongodb-write-without-filter"]);
        let one = doc! {"update": "c", "updates": [{"q": {"_id": 1}, "u": {"$set": {"a": 1}}, "multi": true}]};
        assert!(rules(&[one]).is_empty());
        let delete_all = doc! {"delete": "c", "deletes": [{"q": {}, "limit": 0}]};
        assert_eq!(rules(&[delete_all]), ["mongodb-write-without-filter"]);
    }
}
