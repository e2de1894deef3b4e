//! The CLI reference stays complete: every command's help is in docs/cli.md.

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
