//! The DDL scripts `pg_dump` wrote into a snapshot, read as its table of
//! contents: entries headed `-- Name: …; Type: …; Schema: …; Owner: …`.
//! Restore reshapes them before running them: roles renamed by the
//! environment's `role_map`, privileges and ownership left out with
//! `--skip-privileges`, and the extensions that live in the schema created
//! right after the schema itself. Only the statements pg_dump writes for
//! ownership and privileges are touched (the last `ALTER … OWNER TO` line
//! of an entry, and the lines of `ACL` and `DEFAULT ACL` entries), never a
//! function body.

use std::collections::{BTreeMap, BTreeSet};

use super::sql::{quote_ident, quote_literal};
use crate::error::{Error, Result};
use crate::snapshot::stream::ObjectStream;
use crate::snapshot::{Found, ObjectEntry};
use crate::storage::Storage;

/// One entry of the script: its type (`TABLE`, `ACL`, `SCHEMA`, …; empty
/// for the preamble) and its lines.
#[derive(Debug, Clone, PartialEq)]
struct Entry {
    kind: String,
    lines: Vec<String>,
}

/// A pg_dump script split into entries.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    entries: Vec<Entry>,
}

/// What a restore does with ownership and privileges.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grants {
    Keep,
    Skip,
}

/// An extension recorded in the snapshot as living in the schema.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Extension {
    pub name: String,
    pub version: String,
}

/// The roles a script names: owners it sets (the restoring role must be
/// allowed to set them) and every role it names at all.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Roles {
    pub owners: BTreeSet<String>,
    pub named: BTreeSet<String>,
}

fn entry_kind(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("-- Name: ")?;
    let after = &rest[rest.find("; Type: ")? + "; Type: ".len()..];
    Some(&after[..after.find("; Schema: ")?])
}

impl Script {
    pub fn parse(sql: &str) -> Script {
        let mut entries = vec![Entry {
            kind: String::new(),
            lines: Vec::new(),
        }];
        for line in sql.lines() {
            if let Some(kind) = entry_kind(line) {
                entries.push(Entry {
                    kind: kind.to_string(),
                    lines: Vec::new(),
                });
            }
            if let Some(last) = entries.last_mut() {
                last.lines.push(line.to_string());
            }
        }
        Script { entries }
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            for l in &e.lines {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Every statement line about ownership or privileges, with the index
    /// of its entry and line.
    fn grant_lines(&self) -> Vec<(usize, usize, Statement)> {
        let mut found = Vec::new();
        for (i, e) in self.entries.iter().enumerate() {
            let acl = e.kind == "ACL" || e.kind == "DEFAULT ACL";
            let last_statement = e
                .lines
                .iter()
                .rposition(|l| !l.trim().is_empty() && !l.starts_with("--"));
            for (j, l) in e.lines.iter().enumerate() {
                let statement = if acl {
                    Statement::parse(l)
                } else if Some(j) == last_statement && l.starts_with("ALTER ") {
                    Statement::parse(l).filter(|s| matches!(s, Statement::Owner { .. }))
                } else {
                    None
                };
                if let Some(s) = statement {
                    found.push((i, j, s));
                }
            }
        }
        found
    }

    /// The roles named by ownership and privilege statements.
    pub fn roles(&self) -> Roles {
        let mut roles = Roles::default();
        for (_, _, s) in self.grant_lines() {
            for (role, sets_owner) in s.roles() {
                if role == "PUBLIC" {
                    continue;
                }
                if sets_owner {
                    roles.owners.insert(role.clone());
                }
                roles.named.insert(role);
            }
        }
        roles
    }

    /// Renames roles by `map`, or (Grants::Skip) drops every ownership and
    /// privilege statement.
    pub fn reshape(&mut self, grants: Grants, map: &BTreeMap<String, String>) {
        for (i, j, s) in self.grant_lines() {
            let line = &mut self.entries[i].lines[j];
            match grants {
                Grants::Skip => line.clear(),
                Grants::Keep => *line = s.renamed(map),
            }
        }
    }

    /// Adds `CREATE EXTENSION … WITH SCHEMA … VERSION …` right after the
    /// entry that creates the schema (or at the start of the objects when
    /// the script has none).
    pub fn create_extensions_after_schema(&mut self, schema: &str, extensions: &[Extension]) {
        if extensions.is_empty() {
            return;
        }
        let lines: Vec<String> = extensions
            .iter()
            .map(|e| {
                format!(
                    "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {} VERSION {};",
                    quote_ident(&e.name),
                    quote_ident(schema),
                    quote_literal(&e.version)
                )
            })
            .collect();
        let at = self
            .entries
            .iter()
            .position(|e| e.kind == "SCHEMA")
            .map(|i| i + 1)
            .unwrap_or(1.min(self.entries.len()));
        self.entries.insert(
            at,
            Entry {
                kind: "EXTENSION".into(),
                lines,
            },
        );
    }
}

/// An ownership or privilege statement as pg_dump writes it, one per line.
#[derive(Debug, Clone, PartialEq)]
enum Statement {
    /// `ALTER … OWNER TO role;`
    Owner { head: String, role: String },
    /// `GRANT … TO role[ WITH GRANT OPTION];`, `REVOKE … FROM role;`,
    /// optionally under `ALTER DEFAULT PRIVILEGES FOR ROLE r …`.
    Acl {
        for_role: Option<String>,
        head: String,
        keyword: &'static str,
        role: String,
        tail: &'static str,
    },
    /// `SET SESSION AUTHORIZATION role;` (a grant made by another grantor).
    Session { role: String },
}

const FOR_ROLE: &str = "ALTER DEFAULT PRIVILEGES FOR ROLE ";
const SESSION: &str = "SET SESSION AUTHORIZATION ";
const GRANT_OPTION: &str = " WITH GRANT OPTION";

impl Statement {
    fn parse(line: &str) -> Option<Statement> {
        let body = line.strip_suffix(';')?;
        if let Some(rest) = body.strip_prefix(SESSION) {
            let (before, role) = trailing_ident(rest)?;
            return before.is_empty().then_some(Statement::Session { role });
        }
        if line.starts_with("ALTER ") && !line.starts_with(FOR_ROLE) {
            let (head, role) = trailing_ident(body)?;
            let head = head.strip_suffix(" OWNER TO ")?;
            return Some(Statement::Owner {
                head: head.to_string(),
                role,
            });
        }
        let (for_role, rest) = match body.strip_prefix(FOR_ROLE) {
            Some(rest) => {
                let (role, rest) = leading_ident(rest)?;
                (Some(role), rest.strip_prefix(' ')?)
            }
            None => (None, body),
        };
        let (rest, tail) = match rest.strip_suffix(GRANT_OPTION) {
            Some(r) => (r, GRANT_OPTION),
            None => (rest, ""),
        };
        let (head, role) = trailing_ident(rest)?;
        let (head, keyword) = if let Some(h) = head.strip_suffix(" TO ") {
            (h, " TO ")
        } else {
            (head.strip_suffix(" FROM ")?, " FROM ")
        };
        if !(head.contains("GRANT ") || head.contains("REVOKE ")) {
            return None;
        }
        Some(Statement::Acl {
            for_role,
            head: head.to_string(),
            keyword,
            role,
            tail,
        })
    }

    /// Each role named, and whether the statement makes it an owner (or
    /// acts as it, which needs the same right).
    fn roles(&self) -> Vec<(String, bool)> {
        match self {
            Statement::Owner { role, .. } | Statement::Session { role } => {
                vec![(role.clone(), true)]
            }
            Statement::Acl { for_role, role, .. } => {
                let mut v = vec![(role.clone(), false)];
                if let Some(r) = for_role {
                    v.push((r.clone(), true));
                }
                v
            }
        }
    }

    fn renamed(&self, map: &BTreeMap<String, String>) -> String {
        let name = |role: &str| -> String {
            if role == "PUBLIC" {
                return role.to_string();
            }
            quote_ident(map.get(role).map(String::as_str).unwrap_or(role))
        };
        match self {
            Statement::Owner { head, role } => format!("{head} OWNER TO {};", name(role)),
            Statement::Session { role } => format!("{SESSION}{};", name(role)),
            Statement::Acl {
                for_role,
                head,
                keyword,
                role,
                tail,
            } => {
                let prefix = for_role
                    .as_ref()
                    .map(|r| format!("{FOR_ROLE}{} ", name(r)))
                    .unwrap_or_default();
                format!("{prefix}{head}{keyword}{}{tail};", name(role))
            }
        }
    }
}

fn plain_ident_char(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '$' || !c.is_ascii()
}

/// Splits `text` into what precedes its last identifier and that
/// identifier (unquoted). `PUBLIC` is answered as is.
fn trailing_ident(text: &str) -> Option<(&str, String)> {
    if let Some(inner) = text.strip_suffix('"') {
        let bytes = inner.as_bytes();
        let mut i = bytes.len();
        loop {
            let q = inner[..i].rfind('"')?;
            if q > 0 && bytes[q - 1] == b'"' {
                i = q - 1;
                continue;
            }
            let name = inner[q + 1..].replace("\"\"", "\"");
            return Some((&text[..q], name));
        }
    }
    if let Some(head) = text.strip_suffix("PUBLIC") {
        if head.ends_with(' ') {
            return Some((head, "PUBLIC".into()));
        }
    }
    let start = text
        .char_indices()
        .rev()
        .take_while(|(_, c)| plain_ident_char(*c))
        .last()
        .map(|(i, _)| i)?;
    let head = &text[..start];
    (head.is_empty() || head.ends_with(' ')).then(|| (head, text[start..].to_string()))
}

/// The identifier `text` starts with (unquoted) and the rest.
fn leading_ident(text: &str) -> Option<(String, &str)> {
    if let Some(inner) = text.strip_prefix('"') {
        let mut name = String::new();
        let mut chars = inner.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if c == '"' {
                if chars.peek().map(|(_, n)| *n) == Some('"') {
                    chars.next();
                    name.push('"');
                    continue;
                }
                return Some((name, &inner[i + 1..]));
            }
            name.push(c);
        }
        return None;
    }
    let end = text
        .char_indices()
        .find(|(_, c)| !plain_ident_char(*c))
        .map(|(i, _)| i)
        .unwrap_or(text.len());
    (end > 0).then(|| (text[..end].to_string(), &text[end..]))
}

/// Reads a SQL object of the snapshot (verified while it streams), without
/// psql meta-commands.
pub async fn read_sql(storage: &dyn Storage, found: &Found, entry: &ObjectEntry) -> Result<String> {
    let bytes = ObjectStream::open(storage, &found.base, entry)
        .await?
        .read_all()
        .await?;
    let sql = String::from_utf8(bytes).map_err(|_| {
        Error::integrity(
            format!("snapshot {}: {} is not UTF-8 SQL", found.base, entry.key),
            None,
        )
    })?;
    Ok(strip_psql_meta(&sql))
}

/// pg_dump (since 15.14/16.10/17.6) wraps its script in psql's
/// `\restrict KEY` / `\unrestrict KEY` meta-commands, which are not SQL.
pub fn strip_psql_meta(sql: &str) -> String {
    sql.lines()
        .filter(|l| !(l.starts_with("\\restrict ") || l.starts_with("\\unrestrict ")))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = r#"SET statement_timeout = 0;
--
-- Name: xp; Type: SCHEMA; Schema: -; Owner: valero
--

CREATE SCHEMA xp;


ALTER SCHEMA xp OWNER TO valero;

--
-- Name: f(); Type: FUNCTION; Schema: xp; Owner: "Odd ""Owner"""
--

CREATE FUNCTION xp.f() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
GRANT SELECT ON xp.t TO somebody;
ALTER TABLE xp.t OWNER TO somebody;
END $$;


ALTER FUNCTION xp.f() OWNER TO "Odd ""Owner""";

--
-- Name: TABLE "a TO b"; Type: ACL; Schema: xp; Owner: valero
--

GRANT SELECT ON TABLE xp."a TO b" TO fibu_app_prod;
GRANT UPDATE(e) ON TABLE xp."a TO b" TO "App Role" WITH GRANT OPTION;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SET SESSION AUTHORIZATION fibu_app_prod;
GRANT SELECT ON TABLE xp."a TO b" TO reporting;
RESET SESSION AUTHORIZATION;

--
-- Name: DEFAULT PRIVILEGES FOR TABLES; Type: DEFAULT ACL; Schema: xp; Owner: valero
--

ALTER DEFAULT PRIVILEGES FOR ROLE valero IN SCHEMA xp GRANT SELECT ON TABLES  TO fibu_app_prod;
"#;

    fn map() -> BTreeMap<String, String> {
        [("fibu_app_prod".to_string(), "fibu_app".to_string())]
            .into_iter()
            .collect()
    }

    #[test]
    fn a_script_is_the_same_text_after_parsing() {
        assert_eq!(Script::parse(DUMP).text(), DUMP);
    }

    #[test]
    fn roles_are_read_from_ownership_and_privilege_statements_only() {
        let roles = Script::parse(DUMP).roles();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        assert_eq!(
            roles.owners,
            set(&["valero", "Odd \"Owner\"", "fibu_app_prod"])
        );
        assert_eq!(
            roles.named,
            set(&[
                "valero",
                "Odd \"Owner\"",
                "fibu_app_prod",
                "App Role",
                "reporting"
            ])
        );
        assert!(!roles.named.contains("somebody"), "a function body is code");
    }

    #[test]
    fn mapped_roles_are_renamed_where_they_are_named() {
        let mut s = Script::parse(DUMP);
        s.reshape(Grants::Keep, &map());
        let text = s.text();
        assert!(text.contains("GRANT SELECT ON TABLE xp.\"a TO b\" TO \"fibu_app\";\n"));
        assert!(text.contains("TO \"App Role\" WITH GRANT OPTION;\n"));
        assert!(text.contains("REVOKE ALL ON SCHEMA public FROM PUBLIC;\n"));
        assert!(text.contains("SET SESSION AUTHORIZATION \"fibu_app\";\n"));
        assert!(text.contains(
            "ALTER DEFAULT PRIVILEGES FOR ROLE \"valero\" IN SCHEMA xp GRANT SELECT ON TABLES  TO \"fibu_app\";"
        ));
        assert!(text.contains("ALTER FUNCTION xp.f() OWNER TO \"Odd \"\"Owner\"\"\";"));
        // The function body is untouched.
        assert!(
            text.contains("GRANT SELECT ON xp.t TO somebody;\nALTER TABLE xp.t OWNER TO somebody;")
        );
        assert!(!text.contains("fibu_app_prod;"));
    }

    #[test]
    fn skipping_privileges_leaves_no_grant_or_owner_statement() {
        let mut s = Script::parse(DUMP);
        s.reshape(Grants::Skip, &BTreeMap::new());
        let text = s.text();
        assert!(!text.contains(" OWNER TO valero"));
        assert!(!text.contains("GRANT SELECT ON TABLE"));
        assert!(!text.contains("DEFAULT PRIVILEGES FOR ROLE"));
        assert!(text.contains("CREATE SCHEMA xp;"));
        assert!(text.contains("GRANT SELECT ON xp.t TO somebody;"));
        assert!(s.roles().named.is_empty());
    }

    #[test]
    fn extensions_are_created_right_after_the_schema() {
        let mut s = Script::parse(DUMP);
        s.create_extensions_after_schema(
            "xp",
            &[Extension {
                name: "ltree".into(),
                version: "1.2".into(),
            }],
        );
        let text = s.text();
        let ext = text
            .find("CREATE EXTENSION IF NOT EXISTS \"ltree\" WITH SCHEMA \"xp\" VERSION '1.2';")
            .unwrap();
        assert!(text.find("ALTER SCHEMA xp OWNER TO valero;").unwrap() < ext);
        assert!(ext < text.find("CREATE FUNCTION").unwrap());
    }

    #[test]
    fn identifiers_are_split_off_the_end_and_the_start() {
        assert_eq!(
            trailing_ident("GRANT x TO \"a\"\"b\""),
            Some(("GRANT x TO ", "a\"b".to_string()))
        );
        assert_eq!(
            trailing_ident("GRANT x TO \"\"\"\""),
            Some(("GRANT x TO ", "\"".to_string()))
        );
        assert_eq!(
            trailing_ident("TO app_1"),
            Some(("TO ", "app_1".to_string()))
        );
        assert_eq!(trailing_ident("TO Upper"), None);
        assert_eq!(
            leading_ident("\"r \"\"x\"\"\" IN SCHEMA"),
            Some(("r \"x\"".to_string(), " IN SCHEMA"))
        );
    }

    #[test]
    fn psql_restrict_lines_are_removed() {
        let sql = "\\restrict abc\nCREATE TABLE t ();\n\\unrestrict abc\n";
        assert_eq!(super::strip_psql_meta(sql), "CREATE TABLE t ();");
    }
}
