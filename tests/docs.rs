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
