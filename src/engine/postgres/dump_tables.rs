//! Tables, columns, domains, partitions, unique keys and foreign keys read
//! from the DDL `pg_dump` writes into a snapshot (pre-data: `CREATE DOMAIN
//! s.d AS type` with its constraints, `CREATE TABLE s.t (` with one column
//! per line and `) PARTITION BY …` for a partitioned table, `ALTER TABLE
//! ONLY s.parent ATTACH PARTITION s.t …`; post-data: `ALTER TABLE ONLY s.t
//! ADD CONSTRAINT … UNIQUE (…)` / `PRIMARY KEY (…)` / `FOREIGN KEY (…)
//! REFERENCES s.p(…)` and `CREATE UNIQUE INDEX … ON s.t USING btree (…)`).
//! Enough for the masking checks, which judge the same DDL for a restore
//! and for `mask check`, without a server.

use std::collections::{BTreeMap, BTreeSet};

use crate::mask::check::{
    category_of, is_text_like, Catalog, ColumnShape, ForeignKey, TableShapes,
};

/// The catalog the masking checks judge: every table of the pre-data DDL
/// with its COPY columns (generated columns left out, domains resolved to
/// their base types), how partitions hang together, uniqueness and
/// foreign keys from the post-data DDL.
pub fn catalog(pre: &str, post: &str) -> Catalog {
    let domains = domains(pre);
    let mut catalog = Catalog::default();
    let mut current: Option<(String, Vec<ColumnShape>)> = None;
    // The table whose `)` came last: `PARTITION BY` may follow on a line
    // of its own.
    let mut closed: Option<String> = None;
    for line in pre.lines() {
        if let Some((_, columns)) = &mut current {
            if line.starts_with(')') {
                if let Some((name, columns)) = current.take() {
                    if line.contains("PARTITION BY ") {
                        catalog.partitioned.insert(name.clone());
                    }
                    catalog.tables.insert(name.clone(), columns);
                    closed = Some(name);
                }
                continue;
            }
            columns.extend(column(line).map(|c| resolved(c, &domains)));
            continue;
        }
        if let (true, Some(name)) = (line.starts_with("PARTITION BY "), closed.take()) {
            catalog.partitioned.insert(name);
        }
        closed = None;
        if let Some(name) = created_table(line) {
            current = Some((name, Vec::new()));
        }
        if let Some((parent, partition)) = attached(line) {
            catalog.parents.insert(partition, parent);
        }
    }
    mark_unique(&mut catalog.tables, post);
    catalog.foreign_keys = foreign_keys(post);
    catalog
}

/// A domain: its base type, NOT NULL, whether it has CHECK constraints.
struct Domain {
    base: String,
    not_null: bool,
    checks: bool,
}

/// `CREATE DOMAIN s.d AS type` and the constraint lines that follow it,
/// up to the statement's `;`.
fn domains(pre: &str) -> BTreeMap<String, Domain> {
    let mut out = BTreeMap::new();
    let mut current: Option<(String, Domain)> = None;
    for line in pre.lines() {
        if let Some((_, d)) = &mut current {
            d.checks |= line.contains(" CHECK ");
            d.not_null |= line.contains("NOT NULL");
        } else if let Some(rest) = line.strip_prefix("CREATE DOMAIN ") {
            let Some((name, base)) = rest.split_once(" AS ") else {
                continue;
            };
            let end = [
                " COLLATE ",
                " DEFAULT ",
                " NOT NULL",
                " CONSTRAINT ",
                " CHECK ",
                ";",
            ]
            .iter()
            .filter_map(|k| base.find(k))
            .min()
            .unwrap_or(base.len());
            current = Some((
                unqualified(name),
                Domain {
                    base: base[..end].trim().to_string(),
                    not_null: base.contains("NOT NULL"),
                    checks: base.contains(" CHECK "),
                },
            ));
        }
        if line.trim_end().ends_with(';') {
            if let Some((name, d)) = current.take() {
                out.insert(name, d);
            }
        }
    }
    out
}

/// A column whose type is a domain, judged by the domain's base type.
fn resolved(mut c: ColumnShape, domains: &BTreeMap<String, Domain>) -> ColumnShape {
    let Some(d) = domains.get(&unqualified(&c.type_name)) else {
        return c;
    };
    c.domain = Some((unqualified(&c.type_name), d.checks));
    c.category = category_of(&d.base);
    c.text_like = is_text_like(&d.base);
    c.not_null |= d.not_null;
    c.type_name = d.base.clone();
    c
}

/// `ALTER TABLE ONLY s.parent ATTACH PARTITION s.child FOR VALUES …` →
/// (parent, child).
fn attached(line: &str) -> Option<(String, String)> {
    let rest = line
        .strip_prefix("ALTER TABLE ONLY ")
        .or_else(|| line.strip_prefix("ALTER TABLE "))?;
    let (parent, rest) = rest.split_once(" ATTACH PARTITION ")?;
    let child = rest
        .split_once(" FOR VALUES")
        .or_else(|| rest.split_once(" DEFAULT"))
        .map_or(rest, |(c, _)| c);
    Some((
        unqualified(parent),
        unqualified(child.trim().trim_end_matches(';')),
    ))
}

/// Every `FOREIGN KEY (…) REFERENCES s.t(…)` of the post-data DDL.
fn foreign_keys(post: &str) -> Vec<ForeignKey> {
    statements(post)
        .iter()
        .filter_map(|s| {
            let rest = s
                .strip_prefix("ALTER TABLE ONLY ")
                .or_else(|| s.strip_prefix("ALTER TABLE "))?;
            let (table, rest) = rest.split_once(" ADD CONSTRAINT ")?;
            let (_, rest) = rest.split_once(" FOREIGN KEY (")?;
            let (columns, rest) = rest.split_once(')')?;
            let rest = rest.trim_start().strip_prefix("REFERENCES ")?;
            let (referenced, rest) = rest.split_once('(')?;
            Some(ForeignKey {
                table: unqualified(table),
                columns: column_list(columns),
                referenced: unqualified(referenced.trim()),
                referenced_columns: column_list(rest),
            })
        })
        .collect()
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
        domain: None,
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
    for s in statements(post) {
        let found = alter_unique(&s).or_else(|| index_unique(&s));
        if let Some((table, columns)) = found {
            out.entry(table).or_default().extend(columns);
        }
    }
    out
}

/// The statements of a DDL script, whitespace folded. pg_dump's comments
/// (`-- Name: t c; Type: CONSTRAINT; …`) hold semicolons too.
fn statements(ddl: &str) -> Vec<String> {
    let code: String = ddl
        .lines()
        .filter(|l| !l.starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
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
    // Every column named in the index — plain, inside an expression
    // (`lower((email)::text)`) or its WHERE — may make two masked rows
    // collide.
    let list = rest.split_once(" (")?.1;
    let list = list.split(" WHERE ").next().unwrap_or(list);
    Some((unqualified(table), identifiers(list)))
}

/// Every identifier-like word of an index definition (functions and
/// keywords included: only the table's columns among them matter).
fn identifiers(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut quoted = false;
    for c in text.chars() {
        match c {
            '"' => {
                if quoted {
                    out.push(std::mem::take(&mut word));
                }
                quoted = !quoted;
            }
            c if quoted || c.is_alphanumeric() || c == '_' => word.push(c),
            _ if !word.is_empty() => out.push(std::mem::take(&mut word)),
            _ => {}
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
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
        let t = catalog(PRE, POST).tables;
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
            o[1].unique,
            "a unique expression on the column makes it unique"
        );
    }

    #[test]
    fn partitions_domains_and_foreign_keys_are_read_from_pg_dump_ddl() {
        let pre = r#"
CREATE DOMAIN ptest.mail AS character varying(40)
	CONSTRAINT mail_check CHECK (((VALUE)::text ~~ '%@%'::text));
CREATE TABLE ptest.invoices (
    id integer,
    email ptest.mail
)
PARTITION BY LIST (region);
CREATE TABLE ptest.inv_at (
    id integer,
    email ptest.mail
)
PARTITION BY RANGE (id);
CREATE TABLE ptest.inv_at_1 (
    id integer,
    email ptest.mail
);
ALTER TABLE ONLY ptest.invoices ATTACH PARTITION ptest.inv_at FOR VALUES IN ('at');
ALTER TABLE ONLY ptest.inv_at ATTACH PARTITION ptest.inv_at_1 FOR VALUES FROM (0) TO (100);
"#;
        let post = r#"
CREATE UNIQUE INDEX child_pid_idx ON ptest.inv_at_1 USING btree (id) WHERE (email IS NOT NULL);
ALTER TABLE ONLY ptest.child
    ADD CONSTRAINT child_pcode_fkey FOREIGN KEY (pcode, x) REFERENCES ptest.parent(code, "Y");
"#;
        let c = catalog(pre, post);
        assert_eq!(
            c.partitioned,
            ["inv_at".to_string(), "invoices".to_string()].into()
        );
        assert_eq!(
            c.lineage("inv_at_1"),
            vec!["inv_at_1", "inv_at", "invoices"]
        );
        assert_eq!(c.leaves_of("invoices"), vec!["inv_at_1".to_string()]);
        let email = &c.tables["inv_at_1"][1];
        assert_eq!(email.type_name, "character varying(40)");
        assert_eq!(email.category, 'S');
        assert_eq!(email.domain, Some(("mail".to_string(), true)));
        assert!(
            !email.unique,
            "a partial index's WHERE does not make a column unique"
        );
        assert!(c.tables["inv_at_1"][0].unique);
        assert_eq!(
            c.foreign_keys,
            vec![ForeignKey {
                table: "child".into(),
                columns: vec!["pcode".into(), "x".into()],
                referenced: "parent".into(),
                referenced_columns: vec!["code".into(), "Y".into()],
            }]
        );
    }
}
