//! Masking rules as the configuration writes them: per service, PostgreSQL
//! columns as `table.column` and MongoDB fields as `collection.field.path`
//! (through arrays), each naming a transformer — `email`,
//! `number_range(0, 1000)`, `date_shift(30)`, `constant(Muster GmbH)`.

use std::collections::BTreeMap;

use super::transform::Transformer;

/// The rules of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceRules {
    /// table → column → transformer.
    pub postgres: BTreeMap<String, BTreeMap<String, Transformer>>,
    /// collection → field path (split at dots) → transformer.
    pub mongodb: BTreeMap<String, Vec<FieldRule>>,
}

/// One MongoDB rule: the path below the collection and its transformer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldRule {
    pub path: Vec<String>,
    pub transformer: Transformer,
}

impl ServiceRules {
    /// Parses the `postgres` and `mongodb` tables of one service; an
    /// error names the rule.
    pub fn parse(
        postgres: &BTreeMap<String, String>,
        mongodb: &BTreeMap<String, String>,
    ) -> Result<ServiceRules, String> {
        let mut rules = ServiceRules::default();
        for (target, text) in postgres {
            let (table, column) = target
                .split_once('.')
                .filter(|(t, c)| !t.is_empty() && !c.is_empty() && !c.contains('.'))
                .ok_or_else(|| {
                    format!("postgres.\"{target}\": write the column as table.column")
                })?;
            let t = Transformer::parse(text).map_err(|m| format!("postgres.\"{target}\": {m}"))?;
            rules
                .postgres
                .entry(table.to_string())
                .or_default()
                .insert(column.to_string(), t);
        }
        for (target, text) in mongodb {
            let mut parts = target.split('.').map(str::to_string);
            let collection = parts.next().unwrap_or_default();
            let path: Vec<String> = parts.collect();
            if collection.is_empty() || path.is_empty() || path.iter().any(String::is_empty) {
                return Err(format!(
                    "mongodb.\"{target}\": write the field as collection.field (dots for nested fields)"
                ));
            }
            if path.first().map(String::as_str) == Some("_id") {
                return Err(format!(
                    "mongodb.\"{target}\": _id cannot be masked (documents are found by it)"
                ));
            }
            let transformer =
                Transformer::parse(text).map_err(|m| format!("mongodb.\"{target}\": {m}"))?;
            rules
                .mongodb
                .entry(collection)
                .or_default()
                .push(FieldRule { path, transformer });
        }
        Ok(rules)
    }

    pub fn is_empty(&self) -> bool {
        self.postgres.is_empty() && self.mongodb.is_empty()
    }

    /// Whether there is a rule (`keep` counts) for `engine`.
    pub fn has_rules(&self, engine: crate::config::EngineKind) -> bool {
        match engine {
            crate::config::EngineKind::Postgres => !self.postgres.is_empty(),
            crate::config::EngineKind::Mongodb => !self.mongodb.is_empty(),
        }
    }

    /// How many rules there are, over both engines.
    pub fn len(&self) -> usize {
        self.postgres.values().map(BTreeMap::len).sum::<usize>()
            + self.mongodb.values().map(Vec::len).sum::<usize>()
    }

    /// What masks `table.column`: None when nothing does or it is `keep`.
    pub fn column(&self, table: &str, column: &str) -> Option<&Transformer> {
        self.postgres
            .get(table)?
            .get(column)
            .filter(|t| **t != Transformer::Keep)
    }

    /// The rules of one collection (none: an empty slice).
    pub fn fields(&self, collection: &str) -> &[FieldRule] {
        self.mongodb
            .get(collection)
            .map(Vec::as_slice)
            .unwrap_or_default()
    }
}

impl Transformer {
    /// `email`, `number_range(MIN, MAX)`, `date_shift(DAYS)`,
    /// `constant(TEXT)`, …
    pub fn parse(text: &str) -> Result<Transformer, String> {
        let text = text.trim();
        let (name, argument) = match text.split_once('(') {
            Some((name, rest)) => {
                let argument = rest
                    .strip_suffix(')')
                    .ok_or_else(|| format!("\"{text}\": the argument list has no closing ')'"))?;
                (name.trim(), Some(argument))
            }
            None => (text, None),
        };
        let t = match (name, argument) {
            ("keep", None) => Transformer::Keep,
            ("null", None) => Transformer::Null,
            ("hash", None) => Transformer::Hash,
            ("email", None) => Transformer::Email,
            ("name", None) => Transformer::Name,
            ("phone", None) => Transformer::Phone,
            ("iban", None) => Transformer::Iban,
            ("text", None) => Transformer::Text,
            ("number_range", Some(a)) => {
                let (min, max) = a
                    .split_once(',')
                    .and_then(|(lo, hi)| {
                        Some((lo.trim().parse::<i64>().ok()?, hi.trim().parse::<i64>().ok()?))
                    })
                    .filter(|(lo, hi)| lo <= hi)
                    .ok_or_else(|| {
                        format!("\"{text}\": write number_range(MIN, MAX) with whole numbers, MIN ≤ MAX")
                    })?;
                Transformer::NumberRange { min, max }
            }
            ("date_shift", Some(a)) => {
                let days = a.trim().parse::<u32>().ok().filter(|d| (1..=36_500).contains(d));
                let days = days.ok_or_else(|| {
                    format!("\"{text}\": write date_shift(DAYS) with 1 to 36500 days")
                })?;
                Transformer::DateShift { days }
            }
            ("constant", Some(a)) => Transformer::Constant(a.to_string()),
            _ => {
                return Err(format!(
                    "\"{text}\" is not a transformer: keep, null, hash, email, name, phone, iban, text, \
                     number_range(MIN, MAX), date_shift(DAYS), constant(TEXT)"
                ))
            }
        };
        Ok(t)
    }

    /// The name a rule spells it with.
    pub fn name(&self) -> &'static str {
        match self {
            Transformer::Keep => "keep",
            Transformer::Null => "null",
            Transformer::Hash => "hash",
            Transformer::Email => "email",
            Transformer::Name => "name",
            Transformer::Phone => "phone",
            Transformer::Iban => "iban",
            Transformer::Text => "text",
            Transformer::NumberRange { .. } => "number_range",
            Transformer::DateShift { .. } => "date_shift",
            Transformer::Constant(_) => "constant",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn transformers_parse_with_and_without_arguments() {
        assert_eq!(Transformer::parse(" email ").unwrap(), Transformer::Email);
        assert_eq!(
            Transformer::parse("number_range(-5, 10)").unwrap(),
            Transformer::NumberRange { min: -5, max: 10 }
        );
        assert_eq!(
            Transformer::parse("date_shift(30)").unwrap(),
            Transformer::DateShift { days: 30 }
        );
        assert_eq!(
            Transformer::parse("constant(Muster GmbH)").unwrap(),
            Transformer::Constant("Muster GmbH".into())
        );
        for bad in [
            "mail",
            "number_range(5, 1)",
            "number_range(1)",
            "date_shift(0)",
            "date_shift(30",
            "email(1)",
        ] {
            assert!(Transformer::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rules_split_tables_columns_collections_and_paths() {
        let rules = ServiceRules::parse(
            &map(&[("customers.email", "email"), ("customers.iban", "iban")]),
            &map(&[("people.contacts.phone", "phone")]),
        )
        .unwrap();
        assert_eq!(rules.postgres["customers"].len(), 2);
        assert_eq!(rules.mongodb["people"][0].path, vec!["contacts", "phone"]);
        for (pg, mongo) in [
            (map(&[("email", "email")]), map(&[])),
            (map(&[("a.b.c", "email")]), map(&[])),
            (map(&[]), map(&[("people", "email")])),
            (map(&[]), map(&[("people._id", "hash")])),
            (map(&[("a.b", "nonsense")]), map(&[])),
        ] {
            assert!(
                ServiceRules::parse(&pg, &mongo).is_err(),
                "{pg:?} {mongo:?}"
            );
        }
    }
}
