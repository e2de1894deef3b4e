//! PostgreSQL migration files: squawk's lock and rewrite rules on its own
//! parse tree, valero-db's rules about how it runs a file (one transaction
//! unless `-- valero:no-transaction`; down files), and the inline
//! `-- valero:allow <rule> <reason>` comments that silence one finding.

use squawk_linter::{Linter, Rule};
use squawk_syntax::ast::{self, AstNode};
use squawk_syntax::{SourceFile, SyntaxKind, SyntaxNode};

use super::{line_of, Finding, Location, Severity};

/// squawk's rules about locks, rewrites and changes that break the running
/// release. Style rules (types, `IF NOT EXISTS`) are left out, and so is its
/// concurrent-index-in-transaction rule: valero-db's own
/// `concurrently-in-transaction` covers every `CONCURRENTLY`.
const SQUAWK_RULES: &[Rule] = &[
    Rule::RequireConcurrentIndexCreation,
    Rule::RequireConcurrentIndexDeletion,
    Rule::ConstraintMissingNotValid,
    Rule::AddingFieldWithDefault,
    Rule::AddingForeignKeyConstraint,
    Rule::ChangingColumnType,
    Rule::AddingNotNullableField,
    Rule::AddingSerialPrimaryKeyField,
    Rule::AddingRequiredField,
    Rule::RenamingColumn,
    Rule::RenamingTable,
    Rule::DisallowedUniqueConstraint,
    Rule::BanDropDatabase,
    Rule::BanDropColumn,
    Rule::BanDropTable,
    Rule::BanDropNotNull,
    Rule::BanTruncateCascade,
    Rule::RequireConcurrentReindex,
    Rule::RequireConcurrentPartitionDetach,
    Rule::TransactionNesting,
];

/// Rules whose finding means data goes away with the migration.
const DESTRUCTIVE: &[Rule] = &[Rule::BanDropTable, Rule::BanDropColumn];

/// valero-db's own rule names, for allow comments and the docs.
pub const OWN_RULES: &[&str] = &[
    "concurrently-in-transaction",
    "no-transaction-several-statements",
    "vacuum-in-transaction",
    "vacuum-full",
    "cluster",
    "lock-table",
    "destructive-without-down",
    "down-loses-data",
    "allow-without-reason",
    "allow-unknown-rule",
    "syntax-error",
    "squawk-ignore",
];

/// Every rule name an allow comment may name.
pub fn known_rule(name: &str) -> bool {
    OWN_RULES.contains(&name)
        || SQUAWK_RULES.iter().any(|r| r.to_string() == name)
        || super::mongodb::RULES.contains(&name)
}

/// Lints one up file. `no_transaction`: it starts with the marker;
/// `has_down`: a down file exists beside it.
pub fn lint_file(file: &str, sql: &str, no_transaction: bool, has_down: bool) -> Vec<Finding> {
    // squawk's own ignore comments would silence findings without a
    // reason and without showing them as allowed: squawk lints a copy in
    // which they say nothing (same length, so every offset holds), and
    // each one is a finding of its own.
    let (linted, ignores) = defanged(sql);
    let parse = SourceFile::parse(&linted);
    let tree = parse.tree();
    let mut linter = Linter::from(SQUAWK_RULES.iter().copied());
    linter.settings.assume_in_transaction = !no_transaction;
    let at = |offset: usize| Location::Line(line_of(sql, offset));
    let mut findings: Vec<Finding> = Vec::new();
    for error in parse.errors() {
        findings.push(Finding {
            file: file.to_string(),
            at: at(usize::from(error.range().start())),
            rule: "syntax-error".into(),
            severity: Severity::Error,
            message: format!("the file does not parse here: {}; nothing after it was checked", error.message()),
            help: "fix the SQL (PostgreSQL would refuse it too, or the linter misreads it: then run the statement once by hand to see)".into(),
            allowed: None,
        });
    }
    for offset in ignores {
        findings.push(Finding {
            file: file.to_string(),
            at: at(offset),
            rule: "squawk-ignore".into(),
            severity: Severity::Warning,
            message: "squawk's ignore comments silence nothing in valero-db: findings are silenced with a reason only".into(),
            help: "write `-- valero:allow <rule> <reason>` before the statement instead".into(),
            allowed: None,
        });
    }
    let mut destructive = None;
    for v in linter.lint(&parse, &linted) {
        let offset = usize::from(v.text_range.start());
        if DESTRUCTIVE.contains(&v.code) && destructive.is_none() {
            destructive = Some(offset);
        }
        findings.push(Finding {
            file: file.to_string(),
            at: at(offset),
            rule: v.code.to_string(),
            severity: squawk_severity(v.code),
            message: v.message,
            help: v
                .help
                .unwrap_or_else(|| "see the rule's page at squawkhq.com".into()),
            allowed: None,
        });
    }
    let mut own = Own {
        file,
        sql,
        findings: &mut findings,
    };
    let statements: Vec<ast::Stmt> = tree.stmts().collect();
    for stmt in &statements {
        own.statement(stmt, no_transaction);
    }
    if no_transaction && statements.len() > 1 {
        let second = usize::from(statements[1].syntax().text_range().start());
        own.push(
            second,
            "no-transaction-several-statements",
            Severity::Warning,
            "this file runs outside a transaction and has more than one statement: a failure after the first leaves it half applied (the version is marked dirty)",
            "put each statement that needs to run outside a transaction (CREATE INDEX CONCURRENTLY) in a file of its own",
        );
    }
    if let Some(offset) = destructive {
        own.destructive(offset, has_down);
    }
    apply_allows(file, sql, tree.syntax(), &statements, &mut findings);
    findings.sort_by_key(|f| match f.at {
        Location::Line(n) | Location::Command(n) => n,
    });
    findings
}

/// squawk's comment directives: each silences findings without a reason.
const SQUAWK_DIRECTIVES: &[&str] = &["squawk-disable-assume-in-transaction", "squawk-ignore"];

/// `sql` with squawk's comment directives spelled so squawk does not see
/// them (`squawk-ignore` → `squawk_ignore`, same length), and where each
/// was.
fn defanged(sql: &str) -> (String, Vec<usize>) {
    let mut text = sql.to_string();
    let mut at = Vec::new();
    for directive in SQUAWK_DIRECTIVES {
        let spelled = directive.replace('-', "_");
        while let Some(i) = text.find(directive) {
            text.replace_range(i..i + directive.len(), &spelled);
            at.push(i);
        }
    }
    at.sort_unstable();
    (text, at)
}

fn squawk_severity(rule: Rule) -> Severity {
    match rule {
        // A COMMIT inside a migration ends valero-db's transaction: the
        // rest runs unprotected and the history row is not atomic with it.
        Rule::TransactionNesting => Severity::Error,
        _ => Severity::Warning,
    }
}

/// valero-db's own rules on one file's statements.
struct Own<'a> {
    file: &'a str,
    sql: &'a str,
    findings: &'a mut Vec<Finding>,
}

impl Own<'_> {
    fn push(&mut self, offset: usize, rule: &str, severity: Severity, message: &str, help: &str) {
        self.findings.push(Finding {
            file: self.file.to_string(),
            at: Location::Line(line_of(self.sql, offset)),
            rule: rule.to_string(),
            severity,
            message: message.to_string(),
            help: help.to_string(),
            allowed: None,
        });
    }

    fn statement(&mut self, stmt: &ast::Stmt, no_transaction: bool) {
        let node = stmt.syntax();
        let start = usize::from(node.text_range().start());
        if !no_transaction {
            if let Some(token) = token_of(node, SyntaxKind::CONCURRENTLY_KW) {
                self.push(
                    token,
                    "concurrently-in-transaction",
                    Severity::Error,
                    "CONCURRENTLY cannot run inside a transaction block, and valero-db runs this file in one: the migration will fail",
                    "move the statement into a file of its own whose first line is `-- valero:no-transaction`",
                );
            }
        }
        match stmt {
            ast::Stmt::Vacuum(_) => {
                if !no_transaction {
                    self.push(
                        start,
                        "vacuum-in-transaction",
                        Severity::Error,
                        "VACUUM cannot run inside a transaction block, and valero-db runs this file in one: the migration will fail",
                        "run VACUUM from a file whose first line is `-- valero:no-transaction`, or leave it to autovacuum",
                    );
                }
                if token_of(node, SyntaxKind::FULL_KW).is_some() {
                    self.push(
                        start,
                        "vacuum-full",
                        Severity::Warning,
                        "VACUUM FULL rewrites the table under an ACCESS EXCLUSIVE lock: reads and writes wait until it is done",
                        "use pg_repack (or REPACK CONCURRENTLY on PostgreSQL 19) outside the migration; plain VACUUM does not block",
                    );
                }
            }
            ast::Stmt::Cluster(_) => self.push(
                start,
                "cluster",
                Severity::Warning,
                "CLUSTER rewrites the table under an ACCESS EXCLUSIVE lock: reads and writes wait until it is done",
                "use pg_repack outside the migration, or leave the physical order alone",
            ),
            ast::Stmt::Lock(_) => self.push(
                start,
                "lock-table",
                Severity::Warning,
                "LOCK TABLE holds the lock until the migration's transaction ends: the application's queries queue behind it for the whole migration",
                "let each statement take the lock it needs; valero-db already cuts lock waits at migration_lock_timeout and retries",
            ),
            _ => {}
        }
    }

    /// A table or column dropped: without a down file there is no way
    /// back; with one, the way back recreates it empty.
    fn destructive(&mut self, offset: usize, has_down: bool) {
        if has_down {
            self.push(
                offset,
                "down-loses-data",
                Severity::Warning,
                "this migration drops a table or column: its down file can recreate the structure but not the data that was in it",
                "to get the data back, restore the pre-migrate snapshot (`valero-db restore --snapshot <id>`) instead of rolling back; or keep the column until a later release",
            );
        } else {
            self.push(
                offset,
                "destructive-without-down",
                Severity::Warning,
                "this migration drops a table or column and has no down file: `rollback` cannot undo it",
                "add a down file that recreates what is dropped, and know that only the pre-migrate snapshot brings the data back",
            );
        }
    }
}

/// The offset of the first token of `kind` inside `node`.
fn token_of(node: &SyntaxNode, kind: SyntaxKind) -> Option<usize> {
    node.descendants_with_tokens()
        .filter_map(|e| e.into_token())
        .find(|t| t.kind() == kind)
        .map(|t| usize::from(t.text_range().start()))
}

const ALLOW: &str = "valero:allow";

/// Applies each `-- valero:allow <rule> <reason>` comment to one finding of
/// that rule in the statement the comment ends (a trailing comment) or,
/// else, the next statement. An allow without a reason or with an unknown
/// rule is itself a finding.
fn apply_allows(
    file: &str,
    sql: &str,
    root: &SyntaxNode,
    statements: &[ast::Stmt],
    findings: &mut Vec<Finding>,
) {
    let comments: Vec<(usize, String)> = root
        .descendants_with_tokens()
        .filter_map(|e| e.into_token())
        .filter(|t| t.kind() == SyntaxKind::COMMENT)
        .filter_map(|t| {
            let text = t.text().trim_start_matches('-').trim();
            let rest = text.strip_prefix(ALLOW)?;
            Some((usize::from(t.text_range().start()), rest.trim().to_string()))
        })
        .collect();
    let ranges: Vec<(usize, usize)> = statements
        .iter()
        .map(|s| {
            let r = s.syntax().text_range();
            (line_of(sql, r.start().into()), line_of(sql, r.end().into()))
        })
        .collect();
    for (offset, rest) in comments {
        let line = line_of(sql, offset);
        let (rule, reason) = match rest.split_once(char::is_whitespace) {
            Some((rule, reason)) => (rule.to_string(), reason.trim().to_string()),
            None => (rest.clone(), String::new()),
        };
        let problem = if !known_rule(&rule) {
            Some((
                "allow-unknown-rule",
                format!("`-- valero:allow {rule}` names no rule valero-db knows"),
            ))
        } else if reason.is_empty() {
            Some((
                "allow-without-reason",
                format!("`-- valero:allow {rule}` gives no reason; the reason is the record of why the hazard is accepted"),
            ))
        } else {
            None
        };
        if let Some((name, message)) = problem {
            findings.push(Finding {
                file: file.to_string(),
                at: Location::Line(line),
                rule: name.to_string(),
                severity: Severity::Error,
                message,
                help: "write `-- valero:allow <rule> <why this is safe here>` (rules: `valero-db lint --help`, docs/lint.md)".into(),
                allowed: None,
            });
            continue;
        }
        let target = ranges
            .iter()
            .find(|(_, end)| *end == line)
            .or_else(|| ranges.iter().find(|(start, _)| *start > line));
        let Some(&(first, last)) = target else {
            continue;
        };
        if let Some(f) = findings.iter_mut().find(|f| {
            f.rule == rule
                && f.allowed.is_none()
                && matches!(f.at, Location::Line(n) if n >= first && n <= last)
        }) {
            f.allowed = Some(reason);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(sql: &str, no_transaction: bool, has_down: bool) -> Vec<String> {
        lint_file("f.sql", sql, no_transaction, has_down)
            .into_iter()
            .filter(|f| f.counts())
            .map(|f| f.rule)
            .collect()
    }

    /// Every rule: (rule, a file that makes it fire, its safe form). A
    /// `-- valero:no-transaction` first line runs the file outside a
    /// transaction; `# no down` lints it without a down file beside it.
    const CASES: &[(&str, &str, &str)] = &[
        (
            "require-concurrent-index-creation",
            "CREATE INDEX i ON t (a);",
            "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);",
        ),
        (
            "require-concurrent-index-deletion",
            "DROP INDEX i;",
            "-- valero:no-transaction\nDROP INDEX CONCURRENTLY i;",
        ),
        (
            "constraint-missing-not-valid",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0);",
            "ALTER TABLE t ADD CONSTRAINT c CHECK (a > 0) NOT VALID;",
        ),
        (
            "adding-foreign-key-constraint",
            "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id);",
            "ALTER TABLE t ADD CONSTRAINT f FOREIGN KEY (a) REFERENCES u (id) NOT VALID;",
        ),
        (
            "adding-not-nullable-field",
            "ALTER TABLE t ALTER COLUMN a SET NOT NULL;",
            "ALTER TABLE t ADD CONSTRAINT a_nn CHECK (a IS NOT NULL) NOT VALID;",
        ),
        (
            "adding-required-field",
            "ALTER TABLE t ADD COLUMN b int NOT NULL;",
            "ALTER TABLE t ADD COLUMN b int NOT NULL DEFAULT 0;",
        ),
        (
            "adding-field-with-default",
            "ALTER TABLE t ADD COLUMN b uuid DEFAULT gen_random_uuid();",
            "ALTER TABLE t ADD COLUMN b int DEFAULT 0;",
        ),
        (
            "adding-serial-primary-key-field",
            "ALTER TABLE t ADD PRIMARY KEY (id);",
            "ALTER TABLE t ADD CONSTRAINT t_pkey PRIMARY KEY USING INDEX t_id_idx;",
        ),
        (
            "disallowed-unique-constraint",
            "ALTER TABLE t ADD CONSTRAINT u UNIQUE (a);",
            "ALTER TABLE t ADD CONSTRAINT u UNIQUE USING INDEX t_a_idx;",
        ),
        (
            "changing-column-type",
            "ALTER TABLE t ALTER COLUMN a TYPE bigint;",
            "ALTER TABLE t ADD COLUMN b bigint;",
        ),
        (
            "renaming-column",
            "ALTER TABLE t RENAME COLUMN a TO b;",
            "ALTER TABLE t ADD COLUMN b int;",
        ),
        (
            "renaming-table",
            "ALTER TABLE t RENAME TO u;",
            "CREATE TABLE u (a int);",
        ),
        ("ban-drop-column", "ALTER TABLE t DROP COLUMN a;", "ALTER TABLE t ADD COLUMN a int;"),
        ("ban-drop-table", "DROP TABLE t;", "CREATE TABLE t (a int);"),
        (
            "ban-drop-not-null",
            "ALTER TABLE t ALTER COLUMN a DROP NOT NULL;",
            "ALTER TABLE t ALTER COLUMN a SET DEFAULT 0;",
        ),
        ("ban-drop-database", "DROP DATABASE d;", "SELECT 1;"),
        ("ban-truncate-cascade", "TRUNCATE t CASCADE;", "TRUNCATE t;"),
        (
            "require-concurrent-reindex",
            "REINDEX INDEX i;",
            "-- valero:no-transaction\nREINDEX INDEX CONCURRENTLY i;",
        ),
        (
            "require-concurrent-partition-detach",
            "ALTER TABLE t DETACH PARTITION p;",
            "-- valero:no-transaction\nALTER TABLE t DETACH PARTITION p CONCURRENTLY;",
        ),
        ("transaction-nesting", "BEGIN;\nCREATE TABLE t (a int);\nCOMMIT;", "CREATE TABLE t (a int);"),
        (
            "concurrently-in-transaction",
            "CREATE INDEX CONCURRENTLY i ON t (a);",
            "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);",
        ),
        (
            "no-transaction-several-statements",
            "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);\nCREATE INDEX CONCURRENTLY j ON t (b);",
            "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);",
        ),
        ("vacuum-in-transaction", "VACUUM t;", "-- valero:no-transaction\nVACUUM t;"),
        ("vacuum-full", "-- valero:no-transaction\nVACUUM FULL t;", "-- valero:no-transaction\nVACUUM t;"),
        ("cluster", "CLUSTER t USING t_pkey;", "ANALYZE t;"),
        ("lock-table", "LOCK TABLE t;", "SELECT 1;"),
        (
            "destructive-without-down",
            "# no down\nALTER TABLE t DROP COLUMN a;",
            "ALTER TABLE t DROP COLUMN a;",
        ),
        ("down-loses-data", "ALTER TABLE t DROP COLUMN a;", "# no down\nALTER TABLE t ADD COLUMN a int;"),
        (
            "allow-without-reason",
            "-- valero:allow lock-table\nLOCK TABLE t;",
            "-- valero:allow lock-table the nightly job is stopped during releases\nLOCK TABLE t;",
        ),
        (
            "allow-unknown-rule",
            "-- valero:allow lock-tables the job is stopped\nLOCK TABLE t;",
            "-- valero:allow lock-table the job is stopped\nLOCK TABLE t;",
        ),
        ("syntax-error", "CREATE TABEL t (a int);", "CREATE TABLE t (a int);"),
        (
            "squawk-ignore",
            "-- squawk-ignore ban-drop-column\nALTER TABLE t DROP COLUMN a;",
            "-- valero:allow ban-drop-column the column is unused since v3\nALTER TABLE t DROP COLUMN a;",
        ),
    ];

    /// The rules of a case's file, after its directives.
    fn case_rules(file: &str) -> Vec<String> {
        let no_down = file.starts_with("# no down\n");
        let sql = file.trim_start_matches("# no down\n");
        rules(sql, sql.starts_with("-- valero:no-transaction"), !no_down)
    }

    #[test]
    fn every_documented_rule_fires_on_its_hazard_and_not_on_its_safe_form() {
        for (rule, hazard, safe) in CASES {
            let found = case_rules(hazard);
            assert!(
                found.contains(&rule.to_string()),
                "{rule} not found in {hazard:?}: {found:?}"
            );
            let found = case_rules(safe);
            assert!(
                !found.contains(&rule.to_string()),
                "{rule} found in the safe form {safe:?}: {found:?}"
            );
        }
        let covered: Vec<&str> = CASES.iter().map(|c| c.0).collect();
        let squawk: Vec<String> = SQUAWK_RULES.iter().map(|r| r.to_string()).collect();
        for rule in OWN_RULES
            .iter()
            .copied()
            .chain(squawk.iter().map(String::as_str))
        {
            assert!(covered.contains(&rule), "rule {rule} has no case");
            let doc = include_str!("../../docs/lint.md");
            assert!(
                doc.contains(&format!("`{rule}`")),
                "rule {rule} is not in docs/lint.md"
            );
        }
    }

    #[test]
    fn squawk_ignore_comments_silence_nothing_and_parse_errors_are_errors() {
        for directive in [
            "-- squawk-ignore ban-drop-column\nALTER TABLE t DROP COLUMN a;",
            "-- squawk-ignore-file\nALTER TABLE t DROP COLUMN a;",
            "ALTER TABLE t DROP COLUMN a; -- squawk-ignore ban-drop-column",
        ] {
            let found = rules(directive, false, true);
            assert!(
                found.contains(&"ban-drop-column".to_string()),
                "{directive}: {found:?}"
            );
            assert!(
                found.contains(&"squawk-ignore".to_string()),
                "{directive}: {found:?}"
            );
        }
        // Assuming no transaction would hide the CONCURRENTLY error.
        let found = rules(
            "-- squawk-disable-assume-in-transaction\nCREATE INDEX CONCURRENTLY i ON t (a);",
            false,
            true,
        );
        assert!(
            found.contains(&"concurrently-in-transaction".to_string()),
            "{found:?}"
        );
        let e = lint_file("f.sql", "SELECT 1;\nCREATE TABEL t (a int);", false, true);
        let syntax = e
            .iter()
            .find(|f| f.rule == "syntax-error")
            .expect("a syntax finding");
        assert_eq!(syntax.severity, Severity::Error);
        assert_eq!(syntax.at, Location::Line(2));
    }

    #[test]
    fn concurrently_inside_the_transaction_is_an_error() {
        let f = lint_file("f.sql", "DROP INDEX CONCURRENTLY i;", false, true);
        let e = f
            .iter()
            .find(|f| f.rule == "concurrently-in-transaction")
            .unwrap();
        assert_eq!(e.severity, Severity::Error);
        assert!(rules("DROP INDEX CONCURRENTLY i;", true, true).is_empty());
    }

    #[test]
    fn a_no_transaction_file_with_two_statements_could_half_apply() {
        let sql = "-- valero:no-transaction\nCREATE INDEX CONCURRENTLY a ON t (a);\nCREATE INDEX CONCURRENTLY b ON t (b);\n";
        let f = lint_file("f.sql", sql, true, true);
        let w = f
            .iter()
            .find(|f| f.rule == "no-transaction-several-statements")
            .unwrap();
        assert_eq!(w.at, Location::Line(3));
    }

    #[test]
    fn drops_say_what_a_rollback_cannot_bring_back() {
        let sql = "ALTER TABLE t DROP COLUMN c;";
        assert!(rules(sql, false, false).contains(&"destructive-without-down".to_string()));
        assert!(rules(sql, false, true).contains(&"down-loses-data".to_string()));
    }

    #[test]
    fn an_allow_comment_silences_one_finding_with_its_reason() {
        let sql = "CREATE TABLE t (a int);\n-- valero:allow lock-table the table is new and empty\nLOCK TABLE t;\nLOCK TABLE t;\n";
        let f = lint_file("f.sql", sql, false, true);
        let locks: Vec<&Finding> = f.iter().filter(|f| f.rule == "lock-table").collect();
        assert_eq!(locks.len(), 2);
        assert_eq!(
            locks[0].allowed.as_deref(),
            Some("the table is new and empty")
        );
        assert_eq!(locks[0].at, Location::Line(3));
        assert!(locks[1].counts(), "one comment silences one finding");
        // Trailing on the statement's own line.
        let f = lint_file(
            "f.sql",
            "LOCK TABLE t; -- valero:allow lock-table short\n",
            false,
            true,
        );
        assert!(f.iter().all(|f| !f.counts()), "{f:?}");
    }

    #[test]
    fn an_allow_without_reason_or_with_an_unknown_rule_is_an_error() {
        let f = lint_file(
            "f.sql",
            "-- valero:allow lock-table\nLOCK TABLE t;\n",
            false,
            true,
        );
        assert!(f
            .iter()
            .any(|f| f.rule == "allow-without-reason" && f.severity == Severity::Error));
        assert!(f.iter().any(|f| f.rule == "lock-table" && f.counts()));
        let f = lint_file(
            "f.sql",
            "-- valero:allow lock-tabel typo\nLOCK TABLE t;\n",
            false,
            true,
        );
        assert!(f.iter().any(|f| f.rule == "allow-unknown-rule"));
    }
}
