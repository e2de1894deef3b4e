//! Migration files on disk: discovery under `migrations/<service>/<engine>/`,
//! name parsing, numeric ordering, checksums and body parsing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::EngineKind;
use crate::error::{Error, Result};

/// The first line that makes a PostgreSQL file run outside a transaction.
pub const NO_TRANSACTION_MARKER: &str = "-- valero:no-transaction";

/// What a migration file does, parsed when it is discovered so that a broken
/// file stops the run before anything is changed.
#[derive(Debug, Clone)]
pub enum Body {
    Sql { sql: String, no_transaction: bool },
    Commands(Vec<bson::Document>),
}

#[derive(Debug, Clone)]
pub struct Script {
    pub path: PathBuf,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: u64,
    pub description: String,
    pub checksum: String,
    pub up: Script,
    pub down: Option<Script>,
}

impl Migration {
    /// The up file's name, as shown to operators.
    pub fn file_name(&self) -> String {
        file_name(&self.up.path)
    }
}

pub fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// sha256 of the content with a leading BOM removed and CRLF (and lone CR)
/// normalised to LF, so a checkout on Windows is not drift.
pub fn checksum(content: &[u8]) -> String {
    let content = content.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(content);
    let mut hasher = Sha256::new();
    let mut i = 0;
    let mut start = 0;
    while i < content.len() {
        if content[i] == b'\r' {
            hasher.update(&content[start..i]);
            hasher.update(b"\n");
            if content.get(i + 1) == Some(&b'\n') {
                i += 1;
            }
            start = i + 1;
        }
        i += 1;
    }
    hasher.update(&content[start.min(content.len())..]);
    hex::encode(hasher.finalize())
}

#[derive(Debug, PartialEq)]
enum Direction {
    Up,
    Down,
}

struct ParsedName {
    version: u64,
    description: String,
    direction: Direction,
}

fn parse_name(name: &str, engine: EngineKind) -> std::result::Result<ParsedName, String> {
    let ext = match engine {
        EngineKind::Postgres => "sql",
        EngineKind::Mongodb => "json",
    };
    let (stem, direction) = if let Some(s) = name.strip_suffix(&format!(".up.{ext}")) {
        (s, Direction::Up)
    } else if let Some(s) = name.strip_suffix(&format!(".down.{ext}")) {
        (s, Direction::Down)
    } else {
        return Err(format!(
            "the name must end in .up.{ext} or .down.{ext} in a {} folder",
            engine.name()
        ));
    };
    let (version, description) = stem
        .split_once('_')
        .ok_or("the name must be <version>_<description>")?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "the version '{version}' must be a positive integer"
        ));
    }
    let version: u64 = version
        .parse()
        .ok()
        .filter(|v| *v > 0 && *v <= i64::MAX as u64)
        .ok_or(format!(
            "the version '{version}' must be a positive integer below 2^63"
        ))?;
    if description.is_empty() {
        return Err("the description after the version must not be empty".into());
    }
    Ok(ParsedName {
        version,
        description: description.to_string(),
        direction,
    })
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::MigrationFile {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Reads every migration of one service and engine, sorted by version.
/// A missing folder means no migrations.
pub fn discover(root: &Path, service: &str, engine: EngineKind) -> Result<Vec<Migration>> {
    let dir = root.join(service).join(engine.name());
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(bad(&dir, format!("cannot read the folder: {e}"))),
    };
    let mut ups: BTreeMap<u64, (String, PathBuf)> = BTreeMap::new();
    let mut downs: Vec<(u64, String, PathBuf)> = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| bad(&dir, format!("cannot read the folder: {e}")))?;
        let path = entry.path();
        let name = file_name(&path);
        if name.starts_with('.') || path.is_dir() {
            continue;
        }
        let parsed = parse_name(&name, engine).map_err(|m| bad(&path, m))?;
        match parsed.direction {
            Direction::Up => {
                if let Some((_, other)) = ups.get(&parsed.version) {
                    return Err(bad(
                        &path,
                        format!(
                            "duplicate version {}: also used by {}",
                            parsed.version,
                            file_name(other)
                        ),
                    ));
                }
                ups.insert(parsed.version, (parsed.description, path));
            }
            Direction::Down => downs.push((parsed.version, parsed.description, path)),
        }
    }
    let mut down_by_version: BTreeMap<u64, PathBuf> = BTreeMap::new();
    for (version, description, path) in downs {
        match ups.get(&version) {
            Some((up_desc, _)) if *up_desc == description => {
                down_by_version.insert(version, path);
            }
            Some((_, up_path)) => {
                return Err(bad(
                    &path,
                    format!(
                        "its description does not match the up file {}",
                        file_name(up_path)
                    ),
                ))
            }
            None => {
                return Err(bad(
                    &path,
                    "a down file without an up file of the same version",
                ))
            }
        }
    }
    let mut out = Vec::with_capacity(ups.len());
    for (version, (description, up_path)) in ups {
        let (up, checksum) = load_script(&up_path, engine)?;
        let down = match down_by_version.remove(&version) {
            Some(p) => Some(load_script(&p, engine)?.0),
            None => None,
        };
        out.push(Migration {
            version,
            description,
            checksum,
            up,
            down,
        });
    }
    Ok(out)
}

/// Parses one migration file from its name and bytes, as `discover` does;
/// the entry point of the fuzz targets in `fuzz/`.
pub fn parse_migration(
    name: &str,
    bytes: &[u8],
    engine: EngineKind,
) -> std::result::Result<(u64, Body), String> {
    let parsed = parse_name(name, engine)?;
    Ok((parsed.version, parse_content(bytes, engine)?))
}

/// The body of a migration file: UTF-8 (a BOM is ignored), then SQL or a
/// JSON array of commands.
pub fn parse_content(bytes: &[u8], engine: EngineKind) -> std::result::Result<Body, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "the file is not valid UTF-8")?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    match engine {
        EngineKind::Postgres => parse_sql(text),
        EngineKind::Mongodb => Ok(Body::Commands(parse_commands(text)?)),
    }
}

fn load_script(path: &Path, engine: EngineKind) -> Result<(Script, String)> {
    let bytes = std::fs::read(path).map_err(|e| bad(path, format!("cannot read: {e}")))?;
    let sum = checksum(&bytes);
    let body = parse_content(&bytes, engine).map_err(|m| bad(path, m))?;
    Ok((
        Script {
            path: path.to_path_buf(),
            body,
        },
        sum,
    ))
}

fn parse_sql(text: &str) -> std::result::Result<Body, String> {
    let no_transaction = text
        .lines()
        .next()
        .map(|l| l.trim() == NO_TRANSACTION_MARKER)
        .unwrap_or(false);
    let statements = crate::migrate::sql_split::split(text);
    if statements.is_empty() {
        return Err("the file holds no SQL statement".into());
    }
    Ok(Body::Sql {
        sql: text.to_string(),
        no_transaction,
    })
}

/// A JSON array of MongoDB Extended JSON documents (relaxed or canonical).
pub fn parse_commands(text: &str) -> std::result::Result<Vec<bson::Document>, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let serde_json::Value::Array(items) = value else {
        return Err("the file must hold a JSON array of database commands".into());
    };
    if items.is_empty() {
        return Err("the array holds no command".into());
    }
    items
        .into_iter()
        .enumerate()
        .map(|(i, item)| {
            if !item.is_object() {
                return Err(format!("element {i} is not a command document"));
            }
            match bson::Bson::try_from(item) {
                Ok(bson::Bson::Document(d)) if !d.is_empty() => Ok(d),
                Ok(bson::Bson::Document(_)) => Err(format!("element {i} is an empty document")),
                Ok(_) => Err(format!("element {i} is not a command document")),
                Err(e) => Err(format!("element {i} is not valid Extended JSON: {e}")),
            }
        })
        .collect()
}

/// The next version for `valero-db new`: timestamps continue as timestamps,
/// counters as zero-padded counters of the same width.
pub fn next_version(
    existing: &[u64],
    widths: &[usize],
    now: chrono::DateTime<chrono::Utc>,
) -> String {
    let max = existing.iter().copied().max();
    match max {
        Some(v) if v >= 10_000_000_000_000 => {
            let ts: u64 = now
                .format("%Y%m%d%H%M%S")
                .to_string()
                .parse()
                .unwrap_or(v + 1);
            ts.max(v + 1).to_string()
        }
        Some(v) => {
            let width = widths.iter().copied().max().unwrap_or(4);
            format!("{:0width$}", v + 1, width = width)
        }
        None => format!("{:04}", 1),
    }
}

/// Lower-case, `_` for anything that is not a letter or digit.
pub fn slug(description: &str) -> String {
    let mut out = String::new();
    for c in description.trim().chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') && !out.is_empty() {
            out.push('_');
        }
    }
    out.trim_end_matches('_').to_string()
}

/// Widths of the version prefixes on disk, to keep `0007` style numbering.
pub fn version_widths(root: &Path, service: &str, engine: EngineKind) -> Vec<usize> {
    let dir = root.join(service).join(engine.name());
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.split_once('_').map(|(v, _)| v.len())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crlf_and_bom_do_not_change_the_checksum() {
        let lf = checksum(b"CREATE TABLE a();\nSELECT 1;\n");
        assert_eq!(lf, checksum(b"CREATE TABLE a();\r\nSELECT 1;\r\n"));
        assert_eq!(
            lf,
            checksum(b"\xEF\xBB\xBFCREATE TABLE a();\r\nSELECT 1;\r\n")
        );
        assert_ne!(lf, checksum(b"CREATE TABLE b();\nSELECT 1;\n"));
    }

    #[test]
    fn names_parse_with_leading_zeros() {
        let p = parse_name("0007_add_index.up.sql", EngineKind::Postgres).unwrap();
        assert_eq!(p.version, 7);
        assert_eq!(p.description, "add_index");
        assert!(parse_name("7_x.up.json", EngineKind::Postgres).is_err());
        assert!(parse_name("abc_x.up.sql", EngineKind::Postgres).is_err());
        assert!(parse_name("0_x.up.sql", EngineKind::Postgres).is_err());
        assert!(parse_name("5_.up.sql", EngineKind::Postgres).is_err());
        assert!(parse_name("5.up.sql", EngineKind::Postgres).is_err());
    }

    #[test]
    fn discovery_orders_numerically_and_rejects_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let pg = dir.path().join("svc/postgres");
        std::fs::create_dir_all(&pg).unwrap();
        std::fs::write(pg.join("10_b.up.sql"), "SELECT 1;").unwrap();
        std::fs::write(pg.join("9_a.up.sql"), "SELECT 1;").unwrap();
        std::fs::write(pg.join("9_a.down.sql"), "SELECT 2;").unwrap();
        let found = discover(dir.path(), "svc", EngineKind::Postgres).unwrap();
        assert_eq!(
            found.iter().map(|m| m.version).collect::<Vec<_>>(),
            vec![9, 10]
        );
        assert!(found[0].down.is_some());
        std::fs::write(pg.join("0010_c.up.sql"), "SELECT 1;").unwrap();
        let e = discover(dir.path(), "svc", EngineKind::Postgres).unwrap_err();
        assert!(e.to_string().contains("duplicate version 10"), "{e}");
    }

    #[test]
    fn down_without_up_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let pg = dir.path().join("svc/postgres");
        std::fs::create_dir_all(&pg).unwrap();
        std::fs::write(pg.join("3_x.down.sql"), "SELECT 1;").unwrap();
        let e = discover(dir.path(), "svc", EngineKind::Postgres).unwrap_err();
        assert!(e.to_string().contains("3_x.down.sql"), "{e}");
    }

    #[test]
    fn empty_sql_and_empty_json_are_rejected() {
        assert!(parse_sql("-- only a comment\n").is_err());
        assert!(parse_commands("[]").is_err());
        assert!(parse_commands("{}").is_err());
        assert!(parse_commands("[{\"create\": \"x\"}, 3]").is_err());
    }

    #[test]
    fn extended_json_relaxed_and_canonical_parse() {
        let cmds = parse_commands(
            r#"[{"insert": "c", "documents": [{"n": {"$numberLong": "5"}, "d": {"$date": "2025-01-01T00:00:00Z"}, "x": 1.5}]}]"#,
        )
        .unwrap();
        let docs = cmds[0].get_array("documents").unwrap();
        let d = docs[0].as_document().unwrap();
        assert_eq!(d.get_i64("n").unwrap(), 5);
        assert!(d.get_datetime("d").is_ok());
    }

    #[test]
    fn next_version_follows_the_existing_style() {
        let now = chrono::DateTime::parse_from_rfc3339("2025-06-19T08:00:00Z")
            .unwrap()
            .to_utc();
        assert_eq!(next_version(&[], &[], now), "0001");
        assert_eq!(next_version(&[1, 2], &[4, 4], now), "0003");
        assert_eq!(
            next_version(&[20250101000000], &[14], now),
            "20250619080000"
        );
    }

    #[test]
    fn slug_is_safe() {
        assert_eq!(slug("Add Customer e-mail!"), "add_customer_e_mail");
    }
}
