//! Splits a SQL script into statements, respecting quotes, dollar quotes and
//! comments, for files that must run statement by statement outside a
//! transaction (`CREATE INDEX CONCURRENTLY` refuses a multi-statement query).

/// Returns the non-empty statements of `sql`, without their final `;`.
pub fn split(sql: &str) -> Vec<String> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
    let mut has_code = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                continue;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest in PostgreSQL.
                let mut depth = 0;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        i += 1;
                    }
                }
                continue;
            }
            b'\'' | b'"' => {
                has_code = true;
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == c {
                        if bytes.get(i + 1) == Some(&c) {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                continue;
            }
            b'$' => {
                if let Some(tag_len) = dollar_tag(&bytes[i..]) {
                    has_code = true;
                    let tag = &bytes[i..i + tag_len];
                    i += tag_len;
                    while i < bytes.len() && !bytes[i..].starts_with(tag) {
                        i += 1;
                    }
                    i = (i + tag_len).min(bytes.len());
                    continue;
                }
                has_code = true;
            }
            b';' => {
                if has_code {
                    out.push(sql[start..i].trim().to_string());
                }
                has_code = false;
                start = i + 1;
            }
            c if !c.is_ascii_whitespace() => has_code = true,
            _ => {}
        }
        i += 1;
    }
    if has_code {
        let tail = sql[start.min(sql.len())..].trim();
        if !tail.is_empty() {
            out.push(tail.to_string());
        }
    }
    out
}

/// Length of a `$tag$` opener at the start of `s`, if it is one.
fn dollar_tag(s: &[u8]) -> Option<usize> {
    let mut j = 1;
    while j < s.len() {
        let b = s[j];
        if b == b'$' {
            return Some(j + 1);
        }
        let ok = b.is_ascii_alphabetic() || b == b'_' || (j > 1 && b.is_ascii_digit());
        if !ok {
            return None;
        }
        j += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn splits_plain_statements() {
        assert_eq!(split("SELECT 1; SELECT 2;\n"), vec!["SELECT 1", "SELECT 2"]);
    }

    #[test]
    fn keeps_semicolons_in_quotes_comments_and_dollar_bodies() {
        let sql = "-- a; comment\nINSERT INTO t VALUES ('a;b', \"c;d\");\n/* x; /* y; */ */\nCREATE FUNCTION f() RETURNS int AS $body$ SELECT 1; $body$ LANGUAGE sql;\nSELECT $1";
        let parts = split(sql);
        assert_eq!(parts.len(), 3, "{parts:?}");
        assert!(parts[1].contains("$body$ SELECT 1; $body$"));
        assert_eq!(parts[2], "SELECT $1");
    }

    #[test]
    fn comment_only_script_is_empty() {
        assert!(split("-- nothing here\n/* nor here */\n;;").is_empty());
    }
}
