//! Tables, columns and unique keys read from the DDL `pg_dump` writes into
//! a snapshot (pre-data: `CREATE TABLE s.t (` with one column per line;
//! post-data: `ALTER TABLE ONLY s.t ADD CONSTRAINT … UNIQUE (…)` and
//! `CREATE UNIQUE INDEX … ON s.t USING btree (…)`). Enough for the
//! masking checks, which need names, types, NOT NULL and uniqueness
//! without a server.

use std::collections::{BTreeMap, BTreeSet};

use crate::mask::check::{category_of, is_text_like, ColumnShape, TableShapes};

/// Every table of the pre-data DDL with its COPY columns (generated
/// columns left out), uniqueness taken from the post-data DDL.
pub fn table_shapes(pre: &str, post: &str) -> TableShapes {
    let mut tables = TableShapes::new();
    let mut current: Option<(String, Vec<ColumnShape>)> = None;
    for line in pre.lines() {
        if let Some((_, columns)) = &mut current {
            if line.starts_with(')') {
                if let Some(done) = current.take() {
                    tables.insert(done.0, done.1);
                }
                continue;
            }
            columns.extend(column(line));
            continue;
        }
        if let Some(name) = created_table(line) {
            current = Some((name, Vec::new()));
        }
    }
    mark_unique(&mut tables, post);
    tables
}

/// Marks every column of a unique constraint or index in the post-data
/// DDL (which, during a restore, has not run yet when the rules are
/// checked).
pub fn mark_unique(tables: &mut TableShapes, post: &str) {
    let unique = unique_columns(post);
    for (table, columns) in tables.iter_mut() {
        let keys = unique.get(table);
        for c in columns.iter_mut() {
            c.unique = keys.is_some_and(|k| k.contains(&c.name));
        }
    }
}

/// `CREATE [UNLOGGED] TABLE schema.name (` → name; partitions and typed
/// tables (`PARTITION OF`, `OF type`) have no column list of their own.
fn created_table(line: &str) -> Option<String> {
    let rest = line
        .strip_prefix("CREATE TABLE ")
        .or_else(|| line.strip_prefix("CREATE UNLOGGED TABLE "))?;
    let qualified = rest.strip_suffix(" (")?;
    Some(unqualified(qualified))
}

/// One column line of a CREATE TABLE: `    name type [COLLATE …]
/// [DEFAULT …] [NOT NULL] [GENERATED …],`. Constraint lines give None.
fn column(line: &str) -> Option<ColumnShape> {
    let body = line.strip_prefix("    ")?.trim_end_matches(',');
    if body.starts_with("CONSTRAINT ") {
        return None;
    }
    let (name, rest) = split_identifier(body)?;
    if rest.contains(" GENERATED ALWAYS AS (") || rest.starts_with("GENERATED ALWAYS AS (") {
        return None;
    }
    let end = [
        " COLLATE ",
        " DEFAULT ",
        " NOT NULL",
        " GENERATED ",
        " CONSTRAINT ",
    ]
    .iter()
    .filter_map(|k| rest.find(k))
    .min()
    .unwrap_or(rest.len());
    let type_name = rest[..end].trim().to_string();
    Some(ColumnShape {
        name,
        category: category_of(&type_name),
        text_like: is_text_like(&type_name),
        not_null: rest.contains(" NOT NULL"),
        type_name,
        unique: false,
    })
}

/// A leading identifier (quoted or not) and what follows it.
fn split_identifier(text: &str) -> Option<(String, &str)> {
    if let Some(quoted) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = quoted.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|(_, n)| *n) == Some('"') {
                    name.push('"');
                    chars.next();
                    continue;
                }
                return Some((name, quoted[i + 1..].trim_start()));
            }
            name.push(c);
        }
        return None;
    }
    let (name, rest) = text.split_once(' ')?;
    Some((name.to_string(), rest))
}

/// `schema.name` or `"schema"."name"` → name.
fn unqualified(qualified: &str) -> String {
    let last = match qualified.rfind("\".\"") {
        Some(i) => &qualified[i + 2..],
        None => qualified.rsplit('.').next().unwrap_or(qualified),
    };
    last.trim_matches('"').replace("\"\"", "\"")
}

/// Table → the columns that belong to a unique constraint or index
/// (primary keys included).
fn unique_columns(post: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // pg_dump's comments (`-- Name: t c; Type: CONSTRAINT; …`) hold
    // semicolons too.
    let code: String = post
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    for statement in code.split(';') {
        let s = statement.split_whitespace().collect::<Vec<_>>().join(" ");
        let found = alter_unique(&s).or_else(|| index_unique(&s));
        if let Some((table, columns)) = found {
            out.entry(table).or_default().extend(columns);
        }
    }
    out
}

fn alter_unique(s: &str) -> Option<(String, Vec<String>)> {
    let rest = s
        .strip_prefix("ALTER TABLE ONLY ")
        .or_else(|| s.strip_prefix("ALTER TABLE "))?;
    let (table, rest) = rest.split_once(" ADD CONSTRAINT ")?;
    let list = rest
        .split_once(" UNIQUE (")
        .or_else(|| rest.split_once(" UNIQUE NULLS NOT DISTINCT ("))
        .or_else(|| rest.split_once(" PRIMARY KEY ("))?
        .1;
    Some((unqualified(table), column_list(list)))
}

fn index_unique(s: &str) -> Option<(String, Vec<String>)> {
    let rest = s.strip_prefix("CREATE UNIQUE INDEX ")?;
    let (_, rest) = rest.split_once(" ON ")?;
    let rest = rest.strip_prefix("ONLY ").unwrap_or(rest);
    let (table, rest) = rest.split_once(' ')?;
    let list = rest.split_once(" (")?.1;
    Some((unqualified(table), column_list(list)))
}

/// `email, "Name") …` → the plain column names before the closing paren.
fn column_list(list: &str) -> Vec<String> {
    let inner = list.split(')').next().unwrap_or_default();
    inner
        .split(',')
        .map(|c| c.trim().trim_matches('"').to_string())
        .filter(|c| !c.is_empty() && !c.contains('('))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRE: &str = r#"
CREATE TABLE t_x.customers (
    id integer NOT NULL,
    "E-Mail" character varying(80) COLLATE pg_catalog."C" NOT NULL,
    name text DEFAULT 'x'::text,
    born date,
    full_name text GENERATED ALWAYS AS (upper(name)) STORED,
    CONSTRAINT positive CHECK ((id > 0))
);

CREATE UNLOGGED TABLE "t_x"."Orders" (
    id bigint NOT NULL,
    ref text
);
"#;

    const POST: &str = r#"
--
-- Name: customers customers_pkey; Type: CONSTRAINT; Schema: t_x; Owner: valero
--

ALTER TABLE ONLY t_x.customers
    ADD CONSTRAINT customers_pkey PRIMARY KEY (id);

CREATE UNIQUE INDEX customers_mail ON t_x.customers USING btree ("E-Mail");

CREATE UNIQUE INDEX orders_ref ON ONLY "t_x"."Orders" USING btree (lower(ref));
"#;

    #[test]
    fn tables_columns_and_unique_keys_are_read_from_pg_dump_ddl() {
        let t = table_shapes(PRE, POST);
        let c = &t["customers"];
        let names: Vec<&str> = c.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(
            names,
            vec!["id", "E-Mail", "name", "born"],
            "generated left out"
        );
        assert!(c[0].unique && c[0].not_null && c[0].category == 'N');
        assert!(c[1].unique && c[1].not_null && c[1].text_like);
        assert_eq!(c[1].type_name, "character varying(80)");
        assert!(!c[2].unique && !c[2].not_null && c[2].category == 'S');
        assert_eq!(c[3].category, 'D');
        let o = &t["Orders"];
        assert_eq!(o.len(), 2);
        assert!(
            !o[1].unique,
            "an expression index does not make the column unique"
        );
    }
}
