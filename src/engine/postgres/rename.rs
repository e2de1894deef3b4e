//! A snapshot's SQL under another schema name: a refresh from another
//! environment whose service schema is named differently (`kasse_prod` →
//! `kasse_stage`) runs the snapshot's DDL, sequence values and captured
//! changes against the target's name. pg_dump qualifies every object it
//! names with its schema, so the schema appears as an identifier followed
//! by `.` (`kasse_prod.invoices`), after the keyword `SCHEMA`
//! (`CREATE SCHEMA kasse_prod`, `GRANT USAGE ON SCHEMA kasse_prod`), or
//! inside a literal cast to an object identifier type
//! (`nextval('kasse_prod.invoices_id_seq'::regclass)`). Exactly those
//! are rewritten; comments, other string literals and dollar-quoted
//! function bodies stay as they are (a function body that spells the
//! schema's name keeps it: written for one environment's name, it is the
//! application's to change).

use super::sql::quote_ident;

/// `sql` with the schema `from` renamed to `to` wherever it qualifies an
/// object or is named as a schema.
pub fn rename_schema(sql: &str, from: &str, to: &str) -> String {
    if from == to {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 64);
    let bytes = sql.as_bytes();
    let mut i = 0;
    // The last keyword-like word, upper-cased, and whether the last
    // significant character was a `.` (the identifier is itself qualified).
    let mut last_word = String::new();
    let mut after_dot = false;
    while i < bytes.len() {
        let c = bytes[i];
        let rest = &sql[i..];
        if rest.starts_with("--") {
            let end = rest.find('\n').map_or(sql.len(), |n| i + n);
            out.push_str(&sql[i..end]);
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(sql.len(), |n| i + n + 2);
            out.push_str(&sql[i..end]);
            i = end;
        } else if c == b'\'' || ((c == b'E' || c == b'e') && bytes.get(i + 1) == Some(&b'\'')) {
            let start = if c == b'\'' { i } else { i + 1 };
            let end = literal_end(bytes, start, c != b'\'');
            let literal = &sql[i..end];
            if casts_to_object(&sql[end..]) || names_sequence(&sql[..i]) {
                out.push_str(&renamed_literal(literal, from, to));
            } else {
                out.push_str(literal);
            }
            i = end;
            after_dot = false;
            last_word.clear();
        } else if c == b'$' {
            match dollar_end(sql, i) {
                Some(end) => {
                    out.push_str(&sql[i..end]);
                    i = end;
                }
                None => {
                    out.push('$');
                    i += 1;
                }
            }
        } else if c == b'"' {
            let end = quoted_end(bytes, i);
            let name = sql[i + 1..end - 1].replace("\"\"", "\"");
            let qualifier = !after_dot && next_significant(&sql[end..]) == Some('.');
            if name == from && (qualifier || last_word == "SCHEMA") {
                out.push_str(&quote_ident(to));
            } else {
                out.push_str(&sql[i..end]);
            }
            i = end;
            last_word.clear();
            after_dot = false;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let len = rest
                .char_indices()
                .find(|(_, ch)| !(ch.is_alphanumeric() || *ch == '_' || *ch == '$'))
                .map_or(rest.len(), |(n, _)| n);
            let word = &rest[..len];
            let qualifier = !after_dot && next_significant(&rest[len..]) == Some('.');
            if word.to_lowercase() == from && (qualifier || last_word == "SCHEMA") {
                out.push_str(&quote_ident(to));
            } else {
                out.push_str(word);
            }
            last_word = word.to_ascii_uppercase();
            after_dot = false;
            i += len;
        } else {
            let ch = rest.chars().next().unwrap_or(' ');
            if !ch.is_whitespace() {
                after_dot = ch == '.';
                if ch != '.' {
                    last_word.clear();
                }
            }
            out.push(ch);
            i += ch.len_utf8();
        }
    }
    out
}

/// The end (exclusive) of a string literal whose opening quote is at
/// `start`: `''` is a quote inside; with `backslashes` (E'…'), `\'` too.
fn literal_end(bytes: &[u8], start: usize, backslashes: bool) -> usize {
    let mut j = start + 1;
    while j < bytes.len() {
        match bytes[j] {
            b'\\' if backslashes => j += 2,
            b'\'' if bytes.get(j + 1) == Some(&b'\'') => j += 2,
            b'\'' => return j + 1,
            _ => j += 1,
        }
    }
    bytes.len()
}

/// The end (exclusive) of a quoted identifier starting at `start`.
fn quoted_end(bytes: &[u8], start: usize) -> usize {
    let mut j = start + 1;
    while j < bytes.len() {
        if bytes[j] == b'"' {
            if bytes.get(j + 1) == Some(&b'"') {
                j += 2;
                continue;
            }
            return j + 1;
        }
        j += 1;
    }
    bytes.len()
}

/// `$tag$ … $tag$` starting at `start`: its end (exclusive); None when
/// `$` does not open one (a positional parameter `$1`).
fn dollar_end(sql: &str, start: usize) -> Option<usize> {
    let rest = &sql[start + 1..];
    let tag_len = rest.find('$')?;
    let tag = &rest[..tag_len];
    if !tag.chars().all(|c| c.is_alphanumeric() || c == '_')
        || tag.starts_with(|c: char| c.is_ascii_digit())
    {
        return None;
    }
    let delimiter = &sql[start..start + tag_len + 2];
    let body = start + delimiter.len();
    let close = sql[body..].find(delimiter)?;
    Some(body + close + delimiter.len())
}

fn next_significant(text: &str) -> Option<char> {
    text.chars().find(|c| !c.is_whitespace())
}

/// Whether a literal after `before` is the sequence argument of
/// `setval(`, `nextval(` or `currval(` (a `regclass` by the function's
/// signature, without a cast).
fn names_sequence(before: &str) -> bool {
    let b = before.trim_end();
    let Some(b) = b.strip_suffix('(') else {
        return false;
    };
    let b = b.trim_end();
    ["setval", "nextval", "currval"].iter().any(|f| {
        b.strip_suffix(f)
            .is_some_and(|r| !r.ends_with(|c: char| c.is_alphanumeric() || c == '_'))
    })
}

/// Whether the literal just before `after` is cast to an object
/// identifier type (`'s.t'::regclass`), whose text names a schema.
fn casts_to_object(after: &str) -> bool {
    let rest = after.trim_start();
    let Some(cast) = rest.strip_prefix("::") else {
        return false;
    };
    let cast = cast.trim_start().trim_start_matches("pg_catalog.");
    [
        "regclass",
        "regproc",
        "regprocedure",
        "regtype",
        "regoper",
        "regoperator",
        "regnamespace",
        "regconfig",
        "regdictionary",
        "regcollation",
    ]
    .iter()
    .any(|t| {
        cast.strip_prefix(t)
            .is_some_and(|r| !r.starts_with(|c: char| c.is_alphanumeric() || c == '_'))
    })
}

/// A literal naming `from.object` (or `from` itself) renamed.
fn renamed_literal(literal: &str, from: &str, to: &str) -> String {
    let (prefix, body) = match literal.strip_prefix('E') {
        Some(b) => ("E", b),
        None => ("", literal),
    };
    let inner = &body[1..body.len().saturating_sub(1).max(1)];
    let text = inner.replace("''", "'");
    let renamed = rename_schema(&text, from, to);
    // `regnamespace`: the literal is the schema's name alone.
    let renamed = if text == from || text == quote_ident(from) {
        quote_ident(to)
    } else {
        renamed
    };
    format!("{prefix}'{}'", renamed.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qualified_names_schema_statements_and_object_literals_are_renamed() {
        let sql = r#"CREATE SCHEMA kasse_prod;
ALTER SCHEMA kasse_prod OWNER TO app;
GRANT USAGE ON SCHEMA kasse_prod TO reader;
CREATE TABLE kasse_prod.invoices (
    id bigint DEFAULT nextval('kasse_prod.invoices_id_seq'::regclass) NOT NULL,
    note text DEFAULT 'kasse_prod.x'::text
);
CREATE VIEW kasse_prod.v AS
 SELECT invoices.id FROM kasse_prod.invoices;
CREATE FUNCTION kasse_prod.f() RETURNS int LANGUAGE sql BEGIN ATOMIC
 SELECT count(*) FROM kasse_prod.invoices;
END;
CREATE FUNCTION kasse_prod.g() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT 1 FROM kasse_prod.invoices); END $$;
-- kasse_prod.invoices in a comment
SELECT pg_catalog.setval('kasse_prod.invoices_id_seq', 42, true);
ALTER TABLE ONLY "kasse_prod".invoices ADD CONSTRAINT kasse_prod PRIMARY KEY (id);
"#;
        let out = rename_schema(sql, "kasse_prod", "kasse_stage");
        let expected = r#"CREATE SCHEMA "kasse_stage";
ALTER SCHEMA "kasse_stage" OWNER TO app;
GRANT USAGE ON SCHEMA "kasse_stage" TO reader;
CREATE TABLE "kasse_stage".invoices (
    id bigint DEFAULT nextval('"kasse_stage".invoices_id_seq'::regclass) NOT NULL,
    note text DEFAULT 'kasse_prod.x'::text
);
CREATE VIEW "kasse_stage".v AS
 SELECT invoices.id FROM "kasse_stage".invoices;
CREATE FUNCTION "kasse_stage".f() RETURNS int LANGUAGE sql BEGIN ATOMIC
 SELECT count(*) FROM "kasse_stage".invoices;
END;
CREATE FUNCTION "kasse_stage".g() RETURNS int LANGUAGE plpgsql AS $$ BEGIN RETURN (SELECT 1 FROM kasse_prod.invoices); END $$;
-- kasse_prod.invoices in a comment
SELECT pg_catalog.setval('"kasse_stage".invoices_id_seq', 42, true);
ALTER TABLE ONLY "kasse_stage".invoices ADD CONSTRAINT kasse_prod PRIMARY KEY (id);
"#;
        assert_eq!(out, expected);
    }

    #[test]
    fn quoted_and_odd_names_are_renamed_and_nothing_else_moves() {
        let sql = "CREATE TABLE \"Kasse Prod\".t (a int);\nSELECT pg_catalog.setval('\"Kasse Prod\".s'::regclass, 1);\n";
        assert_eq!(
            rename_schema(sql, "Kasse Prod", "kasse"),
            "CREATE TABLE \"kasse\".t (a int);\nSELECT pg_catalog.setval('\"kasse\".s'::regclass, 1);\n"
        );
        assert_eq!(rename_schema(sql, "Kasse Prod", "Kasse Prod"), sql);
        let other = "SELECT x.kasse_prod FROM kasse_prodx.t, t.kasse_prod;";
        assert_eq!(rename_schema(other, "kasse_prod", "s"), other);
    }
}
