//! The CLI reference stays complete: every command's help is in docs/cli.md.

use crate::common;

#[test]
fn cli_reference_lists_every_command() {
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/cli.md")).unwrap();
    let out = std::process::Command::new(assert_cmd::cargo::cargo_bin("valero-db"))
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() > 10, "{help}");
    for c in commands {
        assert!(
            doc.contains(&format!("## valero-db {c}")),
            "docs/cli.md lacks {c}; regenerate it"
        );
    }
}

/// Every `VALERO_DB_*` variable the code reads or sets is in the README's
/// table of environment variables.
#[test]
fn readme_lists_every_environment_variable_the_code_reads() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table: String = readme
        .split("## Environment variables")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .expect("README has an Environment variables section")
        .to_string();
    let mut names = std::collections::BTreeSet::new();
    let mut stack = vec![std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/src"
    ))];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(dir).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let code = std::fs::read_to_string(&path).unwrap_or_default();
            for (i, _) in code.match_indices("\"VALERO_DB_") {
                let name: String = code[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                names.insert(name);
            }
        }
    }
    // pg_tool("pg_dump") reads VALERO_DB_PG_DUMP through format!.
    names.remove("VALERO_DB_");
    names.insert("VALERO_DB_PG_DUMP".to_string());
    assert!(names.len() >= 7, "{names:?}");
    for name in names {
        assert!(
            table.contains(&format!("`{name}`")),
            "README's table lacks {name}"
        );
    }
}

/// The README's "operator's first hour" block, run as written by bash with
/// valero-db on PATH, against a database of its own.
#[test]
fn the_readme_first_hour_runs_as_written() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let block = readme
        .split("<!-- first-hour:begin -->")
        .nth(1)
        .and_then(|rest| rest.split("<!-- first-hour:end -->").next())
        .expect("README has the first-hour block");
    let script = block
        .trim()
        .strip_prefix("```sh")
        .and_then(|b| b.strip_suffix("```"))
        .expect("one sh code block");
    let dir = tempfile::tempdir().unwrap();
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_valero-db"))
        .parent()
        .unwrap()
        .to_path_buf();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = std::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir.path())
        .env("PATH", path)
        .env("FIBU_DATABASE_URL", common::own_database("first_hour"))
        .env_remove("VALERO_DB_CONFIG")
        .env_remove("VALERO_DB_ENV")
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stdout.contains("v1.0.1"),
        "releases lists the deployment:\n{stdout}"
    );
    assert!(
        dir.path()
            .join("migrations/fibu/postgres/0001_journal.up.sql")
            .exists(),
        "new created the migration"
    );
}
