//! Whether a service's rules fit the tables they mask: every table and
//! column named exists, every transformer's output fits its column's type,
//! `null` never lands in a NOT NULL column, a unique column only gets an
//! injective transformer, and — in strict mode — no text-like column is
//! left without a rule. One answer for the restore (from the server's
//! catalog) and `mask check` (from the snapshot's DDL).

use std::collections::{BTreeMap, BTreeSet};

use super::copy_text::TablePlan;
use super::rules::ServiceRules;
use super::transform::Transformer;

/// A column as the checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnShape {
    pub name: String,
    /// `pg_type.typcategory` of the column's type (of its base type, for a
    /// domain): S string, N number, D date/time, A array, U user-defined
    /// or unknown, …
    pub category: char,
    pub type_name: String,
    /// NOT NULL on the column or its domain.
    pub not_null: bool,
    /// Text, varchar, char, citext, json, jsonb, xml, or an array of text.
    pub text_like: bool,
    /// Part of a unique constraint or a unique index (expression and
    /// partial indexes included).
    pub unique: bool,
    /// The domain the column's type is, and whether it has CHECK
    /// constraints (a stand-in may not meet them).
    pub domain: Option<(String, bool)>,
}

/// What `mask check` found in one snapshot part.
#[derive(Debug, Default)]
pub struct SnapshotCheck {
    pub problems: Vec<String>,
    /// Before/after pairs — production values: shown on a terminal only.
    pub samples: Vec<Sample>,
    /// Per rule (`table.column`), the tables whose rows it masks.
    pub acts_on: Vec<(String, Vec<String>)>,
    /// What is worth knowing but refuses nothing.
    pub notes: Vec<String>,
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

/// What the masking checks know of a schema: its tables and columns, how
/// partitions hang together, and its foreign keys — read from the
/// snapshot's DDL, the same for a restore and for `mask check`.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub tables: TableShapes,
    /// A partition → the table it is attached to.
    pub parents: BTreeMap<String, String>,
    /// Partitioned tables: their rows live in their partitions.
    pub partitioned: BTreeSet<String>,
    pub foreign_keys: Vec<ForeignKey>,
}

/// `table (columns) REFERENCES referenced (referenced_columns)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignKey {
    pub table: String,
    pub columns: Vec<String>,
    pub referenced: String,
    pub referenced_columns: Vec<String>,
}

impl Catalog {
    /// `table` and the tables it is a partition of, nearest first.
    pub fn lineage<'a>(&'a self, table: &'a str) -> Vec<&'a str> {
        let mut out = vec![table];
        while let Some(parent) = out.last().and_then(|t| self.parents.get(*t)) {
            if out.contains(&parent.as_str()) {
                break;
            }
            out.push(parent);
        }
        out
    }

    /// The tables that hold rows of `table`: itself, or every partition
    /// below it at any level.
    pub fn leaves_of(&self, table: &str) -> Vec<String> {
        if !self.partitioned.contains(table) {
            return vec![table.to_string()];
        }
        self.tables
            .keys()
            .filter(|t| !self.partitioned.contains(*t) && self.lineage(t).contains(&table))
            .cloned()
            .collect()
    }
}

/// The rule that covers `table.column` — the table's own, else that of
/// the nearest table it is a partition of — `keep` included.
pub fn rule_for<'a>(
    rules: &'a ServiceRules,
    lineage: &[&str],
    column: &str,
) -> Option<&'a Transformer> {
    lineage
        .iter()
        .find_map(|t| rules.postgres.get(*t).and_then(|c| c.get(column)))
}

/// The judgement of a service's rules on a schema: every problem (empty:
/// they fit), the plan of every table that holds rows, and what each rule
/// acts on.
#[derive(Debug, Default)]
pub struct Judgement {
    pub problems: Vec<String>,
    pub plans: BTreeMap<String, TablePlan>,
    pub acts_on: Vec<(String, Vec<String>)>,
}

/// Judges the rules against the catalog: one answer for the restore and
/// `mask check`.
pub fn judge(catalog: &Catalog, rules: &ServiceRules, strict: bool) -> Judgement {
    let mut out = Judgement::default();
    for (table, columns) in &rules.postgres {
        let Some(shapes) = catalog.tables.get(table) else {
            out.problems
                .push(format!("table {table} is not in the snapshot"));
            continue;
        };
        let leaves = catalog.leaves_of(table);
        for column in columns.keys() {
            if !shapes.iter().any(|c| &c.name == column) {
                out.problems
                    .push(format!("column {table}.{column} is not in the snapshot"));
            } else if leaves.is_empty() {
                out.problems.push(format!(
                    "rule {table}.{column} acts on nothing: the partitioned table {table} has no partitions"
                ));
            }
            out.acts_on
                .push((format!("{table}.{column}"), leaves.clone()));
        }
    }
    let mut misfits = BTreeSet::new();
    for (table, columns) in catalog.tables.iter() {
        let lineage = catalog.lineage(table);
        let transformers: Vec<Option<Transformer>> = columns
            .iter()
            .map(|c| rule_for(rules, &lineage, &c.name).cloned())
            .collect();
        for (c, t) in columns.iter().zip(&transformers) {
            if let Some(t) = t {
                misfits.extend(misfit(table, c, t));
            } else if strict
                && c.text_like
                && !is_own(table)
                && !catalog.partitioned.contains(table)
            {
                misfits.insert(format!(
                    "strict: {table}.{} ({}) is neither masked nor kept",
                    c.name, c.type_name
                ));
            }
        }
        if catalog.partitioned.contains(table) {
            continue;
        }
        let plan = TablePlan {
            columns: columns.iter().map(|c| c.name.clone()).collect(),
            transformers: transformers
                .into_iter()
                .map(|t| t.filter(|t| *t != Transformer::Keep))
                .collect(),
        };
        out.plans.insert(table.clone(), plan);
    }
    out.problems.extend(misfits);
    out.problems.extend(key_problems(catalog, rules));
    out
}

/// Every foreign key whose two sides would not match after masking: both
/// must be masked by the same transformer (every transformer is
/// deterministic), or the referencing side set to NULL.
fn key_problems(catalog: &Catalog, rules: &ServiceRules) -> Vec<String> {
    let masked = |table: &str, column: &str| {
        rule_for(rules, &catalog.lineage(table), column).filter(|t| **t != Transformer::Keep)
    };
    let mut out = Vec::new();
    for fk in &catalog.foreign_keys {
        for (c, r) in fk.columns.iter().zip(&fk.referenced_columns) {
            let (mine, theirs) = (masked(&fk.table, c), masked(&fk.referenced, r));
            if mine == theirs || mine == Some(&Transformer::Null) {
                continue;
            }
            let name = |t: Option<&Transformer>| t.map_or("no rule", Transformer::name);
            out.push(format!(
                "{}.{c} references {}.{r}: both must be masked by the same transformer (they are: {} and {})",
                fk.table,
                fk.referenced,
                name(mine),
                name(theirs)
            ));
        }
    }
    out
}

fn misfit(table: &str, c: &ColumnShape, t: &Transformer) -> Option<String> {
    let name = format!("{table}.{}", c.name);
    if *t == Transformer::Keep {
        return None;
    }
    if !t.fits_category(c.category)
        || (is_time_of_day(&c.type_name) && matches!(t, Transformer::DateShift { .. }))
    {
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
    if let Some((domain, true)) = &c.domain {
        if *t != Transformer::Null {
            return Some(format!(
                "{name} is of domain {domain}, whose CHECK constraints {} may not meet (keep or null only)",
                t.name()
            ));
        }
    }
    if let (Some(limit), Some(width)) = (
        char_limit(&c.type_name),
        t.output_width(char_limit(&c.type_name)),
    ) {
        if width > limit {
            return Some(format!(
                "{name} is {}; {} writes up to {width} characters",
                c.type_name,
                t.name()
            ));
        }
    }
    if let Transformer::NumberRange { min, max } = t {
        if let Some((lo, hi)) = number_bounds(&c.type_name) {
            if i128::from(*min) < lo || i128::from(*max) > hi {
                return Some(format!(
                    "{name} is {}; number_range({min}, {max}) goes beyond it",
                    c.type_name
                ));
            }
        }
    }
    None
}

/// `time` and `time with time zone`: a time of day, which `date_shift`
/// cannot move.
fn is_time_of_day(type_name: &str) -> bool {
    let base = type_name.split('(').next().unwrap_or(type_name).trim();
    base == "time"
        || base.starts_with("time without")
        || base.starts_with("time with")
        || base == "timetz"
}

/// The character limit of `character varying(N)` / `character(N)`.
pub fn char_limit(type_name: &str) -> Option<usize> {
    let t = type_name.trim();
    if t.ends_with("[]") {
        return None;
    }
    let (base, rest) = t.split_once('(')?;
    let base = base.trim();
    if !matches!(
        base,
        "character varying" | "varchar" | "character" | "char" | "bpchar"
    ) {
        return None;
    }
    rest.strip_suffix(')')?.trim().parse().ok()
}

/// The whole numbers a numeric column holds: the integer types' ranges,
/// `numeric(p, s)`'s p − s digits.
pub fn number_bounds(type_name: &str) -> Option<(i128, i128)> {
    let t = type_name.trim();
    match t {
        "smallint" | "int2" => return Some((i16::MIN.into(), i16::MAX.into())),
        "integer" | "int4" | "int" => return Some((i32::MIN.into(), i32::MAX.into())),
        "bigint" | "int8" => return Some((i64::MIN.into(), i64::MAX.into())),
        _ => {}
    }
    let rest = t
        .strip_prefix("numeric(")
        .or_else(|| t.strip_prefix("decimal("))?
        .strip_suffix(')')?;
    let (p, s) = match rest.split_once(',') {
        Some((p, s)) => (p.trim().parse::<i64>().ok()?, s.trim().parse::<i64>().ok()?),
        None => (rest.trim().parse::<i64>().ok()?, 0),
    };
    let digits = u32::try_from((p - s).clamp(0, 30)).ok()?;
    let max = 10i128.pow(digits) - 1;
    Some((-max, max))
}

/// valero-db's own tables and collections (`valero_schema_history`, …):
/// migration history, never personal data.
pub fn is_own(name: &str) -> bool {
    name.starts_with("valero_")
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
            domain: None,
        }
    }

    fn rules(pairs: &[(&str, &str)]) -> ServiceRules {
        let map = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ServiceRules::parse(&map, &BTreeMap::new()).unwrap()
    }

    fn catalog() -> Catalog {
        let mut c = Catalog::default();
        c.tables.insert(
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
        c
    }

    fn problems(c: &Catalog, r: &ServiceRules, strict: bool) -> String {
        judge(c, r, strict).problems.join("\n")
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
        let j = judge(&catalog(), &r, true);
        assert_eq!(j.problems, Vec::<String>::new());
        let plan = &j.plans["customers"];
        assert_eq!(plan.transformers[0], None);
        assert_eq!(plan.transformers[1], Some(Transformer::Email));
        assert_eq!(plan.transformers[5], None, "keep passes through");
        assert_eq!(plan.columns[1], "email");
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
        let p = problems(&catalog(), &r, true);
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
    fn widths_number_ranges_times_and_domains_are_judged() {
        let mut c = Catalog::default();
        let mut domain = col("mail", "text", false, false);
        domain.domain = Some(("mail_address".into(), true));
        c.tables.insert(
            "t".into(),
            vec![
                col("short", "character varying(20)", false, false),
                col("code", "character varying(12)", false, false),
                col("small", "smallint", false, false),
                col("price", "numeric(5,2)", false, false),
                col("opens", "time without time zone", false, false),
                col("initials", "character varying(2)", false, false),
                domain,
            ],
        );
        let p = problems(
            &c,
            &rules(&[
                ("t.short", "email"),
                ("t.code", "hash"),
                ("t.small", "number_range(0, 40000)"),
                ("t.price", "number_range(0, 1000)"),
                ("t.opens", "date_shift(3)"),
                ("t.initials", "text"),
                ("t.mail", "email"),
            ]),
            false,
        );
        assert!(
            p.contains("t.short is character varying(20); email writes up to 33"),
            "{p}"
        );
        assert!(
            p.contains("t.code is character varying(12); hash writes up to 16"),
            "{p}"
        );
        assert!(
            p.contains("t.small is smallint; number_range(0, 40000)"),
            "{p}"
        );
        assert!(
            p.contains("t.price is numeric(5,2); number_range(0, 1000)"),
            "{p}"
        );
        assert!(
            p.contains("t.opens is time without time zone; date_shift"),
            "{p}"
        );
        assert!(p.contains("t.mail is of domain mail_address"), "{p}");
        assert!(!p.contains("t.initials"), "text keeps the length: {p}");
    }

    #[test]
    fn a_rule_on_a_partitioned_table_covers_every_partition_at_every_level() {
        let mut c = Catalog::default();
        for t in ["invoices", "inv_de", "inv_at", "inv_at_1"] {
            c.tables.insert(
                t.into(),
                vec![
                    col("id", "integer", false, false),
                    col("email", "text", false, false),
                ],
            );
        }
        c.partitioned
            .extend(["invoices".to_string(), "inv_at".to_string()]);
        c.parents.insert("inv_de".into(), "invoices".into());
        c.parents.insert("inv_at".into(), "invoices".into());
        c.parents.insert("inv_at_1".into(), "inv_at".into());
        let j = judge(&c, &rules(&[("invoices.email", "email")]), true);
        assert_eq!(j.problems, Vec::<String>::new());
        assert_eq!(
            j.acts_on,
            vec![(
                "invoices.email".to_string(),
                vec!["inv_at_1".to_string(), "inv_de".to_string()]
            )]
        );
        assert_eq!(
            j.plans.keys().collect::<Vec<_>>(),
            vec!["inv_at_1", "inv_de"]
        );
        assert!(j
            .plans
            .values()
            .all(|p| p.transformers[1] == Some(Transformer::Email)));
        // A partition's own rule wins over its parent's.
        let j = judge(
            &c,
            &rules(&[("invoices.email", "email"), ("inv_de.email", "hash")]),
            false,
        );
        assert_eq!(j.plans["inv_de"].transformers[1], Some(Transformer::Hash));
        assert_eq!(
            j.plans["inv_at_1"].transformers[1],
            Some(Transformer::Email)
        );
        // A partitioned table without partitions: the rule acts on nothing.
        c.tables.retain(|t, _| t == "invoices");
        c.parents.clear();
        let p = problems(&c, &rules(&[("invoices.email", "email")]), false);
        assert!(p.contains("acts on nothing"), "{p}");
    }

    #[test]
    fn both_sides_of_a_foreign_key_are_masked_alike() {
        let mut c = catalog();
        c.tables.insert(
            "orders".into(),
            vec![
                col("id", "integer", true, true),
                col("email", "text", false, false),
            ],
        );
        c.foreign_keys.push(ForeignKey {
            table: "orders".into(),
            columns: vec!["email".into()],
            referenced: "customers".into(),
            referenced_columns: vec!["email".into()],
        });
        let one_side = problems(&c, &rules(&[("customers.email", "email")]), false);
        assert!(
            one_side.contains("orders.email references customers.email"),
            "{one_side}"
        );
        let other = problems(
            &c,
            &rules(&[("customers.email", "email"), ("orders.email", "hash")]),
            false,
        );
        assert!(
            other.contains("email and hash") || other.contains("hash and email"),
            "{other}"
        );
        for fine in [
            rules(&[("customers.email", "email"), ("orders.email", "email")]),
            rules(&[("customers.email", "email"), ("orders.email", "null")]),
            rules(&[]),
        ] {
            assert_eq!(problems(&c, &fine, false), "");
        }
    }

    #[test]
    fn type_names_map_to_their_categories_limits_and_bounds() {
        assert_eq!(category_of("character varying(20)"), 'S');
        assert_eq!(category_of("public.citext"), 'S');
        assert_eq!(category_of("numeric(10,2)"), 'N');
        assert_eq!(category_of("timestamp(3) with time zone"), 'D');
        assert_eq!(category_of("text[]"), 'A');
        assert_eq!(category_of("mood"), 'U');
        assert!(is_text_like("text[]") && is_text_like("jsonb") && !is_text_like("integer"));
        assert_eq!(char_limit("character varying(20)"), Some(20));
        assert_eq!(char_limit("character(3)"), Some(3));
        assert_eq!(char_limit("text"), None);
        assert_eq!(char_limit("character varying(20)[]"), None);
        assert_eq!(number_bounds("numeric(5,2)"), Some((-999, 999)));
        assert_eq!(number_bounds("smallint"), Some((-32768, 32767)));
        assert_eq!(number_bounds("numeric"), None);
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
