//! Whether a service's rules fit the tables they mask: every table and
//! column named exists, every transformer's output fits its column's type,
//! `null` never lands in a NOT NULL column, a unique column only gets an
//! injective transformer, and — in strict mode — no text-like column is
//! left without a rule. One answer for the restore (from the server's
//! catalog) and `mask check` (from the snapshot's DDL).

use std::collections::{BTreeMap, BTreeSet};

use super::rules::ServiceRules;
use super::transform::Transformer;

/// A column as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnShape {
    pub name: String,
    /// `pg_type.typcategory`: S string, N number, D date/time, A array,
    /// U user-defined or unknown, …
    pub category: char,
    pub type_name: String,
    pub not_null: bool,
    /// Text, varchar, char, citext, json, jsonb, xml, or an array of text.
    pub text_like: bool,
    /// Part of a unique constraint or unique index.
    pub unique: bool,
}

/// What `mask check` found in one snapshot part.
#[derive(Debug, Default)]
pub struct SnapshotCheck {
    pub problems: Vec<String>,
    /// Before/after pairs — production values: shown on a terminal only.
    pub samples: Vec<Sample>,
}

/// One value and its stand-in.
#[derive(Debug)]
pub struct Sample {
    /// `table.column` or `collection.field.path`.
    pub target: String,
    pub before: String,
    pub after: String,
}

/// Tables → their COPY columns in order.
pub type TableShapes = BTreeMap<String, Vec<ColumnShape>>;

/// Every way the rules do not fit the tables, one line each (empty: they
/// fit).
pub fn postgres_problems(tables: &TableShapes, rules: &ServiceRules, strict: bool) -> Vec<String> {
    let mut problems = Vec::new();
    for (table, columns) in &rules.postgres {
        let Some(shapes) = tables.get(table) else {
            problems.push(format!("table {table} is not in the snapshot"));
            continue;
        };
        for (column, t) in columns {
            match shapes.iter().find(|c| &c.name == column) {
                None => problems.push(format!("column {table}.{column} is not in the snapshot")),
                Some(c) => problems.extend(misfit(table, c, t)),
            }
        }
    }
    if strict {
        problems.extend(unmapped(tables, rules));
    }
    problems
}

fn misfit(table: &str, c: &ColumnShape, t: &Transformer) -> Option<String> {
    let name = format!("{table}.{}", c.name);
    if !t.fits_category(c.category) {
        return Some(format!(
            "{name} is {}; {} does not produce such values",
            c.type_name,
            t.name()
        ));
    }
    if c.not_null && *t == Transformer::Null {
        return Some(format!("{name} is NOT NULL; null cannot mask it"));
    }
    if c.unique && !t.is_injective() {
        return Some(format!(
            "{name} is unique; {} may give two rows one value (use hash, email or iban)",
            t.name()
        ));
    }
    None
}

/// Strict mode: every text-like column without a rule.
fn unmapped(tables: &TableShapes, rules: &ServiceRules) -> Vec<String> {
    let mut out = BTreeSet::new();
    for (table, columns) in tables.iter().filter(|(t, _)| !is_own(t)) {
        let named = rules.postgres.get(table);
        for c in columns.iter().filter(|c| c.text_like) {
            if named.is_none_or(|r| !r.contains_key(&c.name)) {
                out.insert(format!(
                    "strict: {table}.{} ({}) is neither masked nor kept",
                    c.name, c.type_name
                ));
            }
        }
    }
    out.into_iter().collect()
}

/// valero-db's own tables and collections (`valero_schema_history`, …):
/// migration history, never personal data.
pub fn is_own(name: &str) -> bool {
    name.starts_with("valero_")
}

/// Per table, the transformer of each COPY column (None: passed through).
pub fn column_plans(
    tables: &TableShapes,
    rules: &ServiceRules,
) -> BTreeMap<String, Vec<Option<Transformer>>> {
    tables
        .iter()
        .map(|(table, columns)| {
            let plan = columns
                .iter()
                .map(|c| rules.column(table, &c.name).cloned())
                .collect();
            (table.clone(), plan)
        })
        .collect()
}

/// The rules do not fit what is restored: exit 2 with every problem
/// listed, the same words for both engines, their replays and `mask check`.
pub fn refusal(subject: &str, problems: &[String]) -> crate::error::Error {
    crate::error::Error::usage_hint(
        format!(
            "masking {subject}: the rules do not fit the data; nothing was changed:\n  {}",
            problems.join("\n  ")
        ),
        "fix or add the service's rules (`keep` what is not personal) under [environments.<target>.masking.services]",
    )
}

/// The category PostgreSQL gives a built-in type, from its name as
/// `format_type` and pg_dump spell it; 'U' for every other type.
pub fn category_of(type_name: &str) -> char {
    let t = type_name.trim();
    if t.ends_with("[]") {
        return 'A';
    }
    let base = t.split('(').next().unwrap_or(t).trim();
    let base = base.rsplit('.').next().unwrap_or(base).trim_matches('"');
    match base {
        "text" | "character varying" | "varchar" | "character" | "char" | "bpchar" | "name"
        | "citext" => 'S',
        "smallint" | "integer" | "bigint" | "numeric" | "decimal" | "real" | "double precision"
        | "money" | "int2" | "int4" | "int8" | "float4" | "float8" => 'N',
        "date"
        | "timestamp without time zone"
        | "timestamp with time zone"
        | "timestamp"
        | "timestamptz"
        | "time without time zone"
        | "time with time zone"
        | "time" => 'D',
        _ if base.starts_with("timestamp") || base.starts_with("time ") => 'D',
        _ => 'U',
    }
}

/// Whether a type holds text an application may fill with personal data.
pub fn is_text_like(type_name: &str) -> bool {
    let t = type_name.trim();
    let element = t.trim_end_matches("[]");
    let base = element.split('(').next().unwrap_or(element).trim();
    let base = base.rsplit('.').next().unwrap_or(base).trim_matches('"');
    category_of(element) == 'S' || matches!(base, "json" | "jsonb" | "xml")
}

impl Transformer {
    /// The kind of PostgreSQL column (its `typcategory`) the output fits:
    /// strings take every transformer, numbers only `number_range`, dates
    /// and times only `date_shift`; `keep` and `null` fit everything.
    pub fn fits_category(&self, category: char) -> bool {
        match self {
            Transformer::Keep | Transformer::Null => true,
            Transformer::NumberRange { .. } => matches!(category, 'N' | 'S'),
            Transformer::DateShift { .. } => matches!(category, 'D' | 'S'),
            _ => category == 'S',
        }
    }

    /// Whether two different inputs always give two different outputs (up
    /// to hash collisions): only these may mask a unique column.
    pub fn is_injective(&self) -> bool {
        matches!(
            self,
            Transformer::Keep | Transformer::Hash | Transformer::Email | Transformer::Iban
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, type_name: &str, not_null: bool, unique: bool) -> ColumnShape {
        ColumnShape {
            name: name.into(),
            category: category_of(type_name),
            type_name: type_name.into(),
            not_null,
            text_like: is_text_like(type_name),
            unique,
        }
    }

    fn rules(pairs: &[(&str, &str)]) -> ServiceRules {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServiceRules::parse(&map, &BTreeMap::new()).unwrap()
    }

    fn tables() -> TableShapes {
        let mut t = TableShapes::new();
        t.insert(
            "customers".into(),
            vec![
                col("id", "integer", true, true),
                col("email", "character varying(80)", true, true),
                col("name", "text", true, false),
                col("born", "date", false, false),
                col("tags", "text[]", false, false),
                col("meta", "jsonb", false, false),
            ],
        );
        t
    }

    #[test]
    fn rules_that_fit_give_no_problem_and_a_plan_per_column() {
        let r = rules(&[
            ("customers.email", "email"),
            ("customers.name", "name"),
            ("customers.born", "date_shift(10)"),
            ("customers.tags", "null"),
            ("customers.meta", "keep"),
        ]);
        assert_eq!(postgres_problems(&tables(), &r, true), Vec::<String>::new());
        let plan = &column_plans(&tables(), &r)["customers"];
        assert_eq!(plan[0], None);
        assert_eq!(plan[1], Some(Transformer::Email));
        assert_eq!(plan[5], None, "keep passes through");
    }

    #[test]
    fn every_misfit_is_named() {
        let r = rules(&[
            ("customers.id", "email"),
            ("customers.email", "name"),
            ("customers.name", "null"),
            ("customers.nope", "text"),
            ("orders.x", "text"),
        ]);
        let p = postgres_problems(&tables(), &r, true).join("\n");
        assert!(p.contains("customers.id is integer; email"), "{p}");
        assert!(p.contains("customers.email is unique; name"), "{p}");
        assert!(p.contains("customers.name is NOT NULL"), "{p}");
        assert!(
            p.contains("column customers.nope is not in the snapshot"),
            "{p}"
        );
        assert!(p.contains("table orders is not in the snapshot"), "{p}");
        assert!(p.contains("strict: customers.tags (text[])"), "{p}");
        assert!(p.contains("strict: customers.meta (jsonb)"), "{p}");
    }

    #[test]
    fn type_names_map_to_their_categories() {
        assert_eq!(category_of("character varying(20)"), 'S');
        assert_eq!(category_of("public.citext"), 'S');
        assert_eq!(category_of("numeric(10,2)"), 'N');
        assert_eq!(category_of("timestamp(3) with time zone"), 'D');
        assert_eq!(category_of("text[]"), 'A');
        assert_eq!(category_of("mood"), 'U');
        assert!(is_text_like("text[]") && is_text_like("jsonb") && !is_text_like("integer"));
    }

    #[test]
    fn outputs_fit_their_column_kinds() {
        assert!(Transformer::Email.fits_category('S'));
        assert!(!Transformer::Email.fits_category('N'));
        assert!(Transformer::NumberRange { min: 0, max: 1 }.fits_category('N'));
        assert!(Transformer::DateShift { days: 1 }.fits_category('D'));
        assert!(!Transformer::DateShift { days: 1 }.fits_category('N'));
        assert!(Transformer::Hash.is_injective());
        assert!(!Transformer::Name.is_injective());
    }
}
