//! Keeps secrets out of everything valero-db writes: passwords found in
//! configured URLs are registered here and replaced by `***` in all output.

use std::sync::{Mutex, OnceLock};

fn secrets() -> &'static Mutex<Vec<String>> {
    static SECRETS: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    SECRETS.get_or_init(|| Mutex::new(Vec::new()))
}

/// Registers a secret so that `redact` removes it from any text — also
/// in its JSON-escaped spelling, as JSON logs write it.
pub fn register_secret(secret: &str) {
    // Very short secrets would blank out ordinary words; they are still
    // removed from URLs by `redact_url`.
    if secret.len() < 3 {
        return;
    }
    if let Some(escaped) = serde_json::to_string(secret)
        .ok()
        .and_then(|q| q.strip_prefix('"')?.strip_suffix('"').map(str::to_string))
        .filter(|e| e != secret)
    {
        add_secret(&escaped);
    }
    add_secret(secret);
}

fn add_secret(secret: &str) {
    let mut list = secrets().lock().unwrap_or_else(|p| p.into_inner());
    if !list.iter().any(|s| s == secret) {
        list.push(secret.to_string());
        // Longest first, so a secret containing another is replaced whole.
        list.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// Registers the password of a URL, both as written and percent-decoded.
pub fn register_url(raw: &str) {
    if let Ok(url) = url::Url::parse(raw) {
        if let Some(password) = url.password() {
            register_secret(password);
            if let Ok(decoded) = percent_decode(password) {
                register_secret(&decoded);
            }
        }
    }
}

/// Decodes `%XX` escapes of a URL component.
pub fn percent_decode(s: &str) -> Result<String, std::string::FromUtf8Error> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out)
}

/// Replaces every registered secret, and the password part of any URL, by `***`.
pub fn redact(text: &str) -> String {
    let mut out = redact_urls_in(text);
    let list = secrets().lock().unwrap_or_else(|p| p.into_inner());
    for secret in list.iter() {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), "***");
        }
    }
    out
}

/// A URL for display: the password replaced by `***`.
pub fn redact_url(raw: &str) -> String {
    redact(raw)
}

/// Finds `scheme://user:password@` patterns and masks the password, so a URL
/// embedded by a driver in an error is safe even if it was never registered.
fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        out.push_str(head);
        // userinfo ends at the first '@' before any '/', whitespace or quote.
        let end = tail
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match (authority.rfind('@'), authority.find(':')) {
            (Some(at), Some(colon)) if colon < at => {
                out.push_str(&authority[..colon + 1]);
                out.push_str("***");
                out.push_str(&authority[at..]);
                rest = &tail[end..];
            }
            _ => rest = tail,
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_masked_without_registration() {
        assert_eq!(
            redact("failed: postgres://app:s3cr3t@db:5432/x"),
            "failed: postgres://app:***@db:5432/x"
        );
    }

    #[test]
    fn registered_secret_is_masked_anywhere() {
        register_secret("Zebra-Horse-91");
        assert_eq!(
            redact("password Zebra-Horse-91 rejected"),
            "password *** rejected"
        );
    }

    #[test]
    fn percent_encoded_password_is_registered_decoded_too() {
        register_url("mongodb://u:p%40ss%2Fword1@h/");
        assert_eq!(redact("auth p@ss/word1 failed"), "auth *** failed");
    }

    #[test]
    fn url_without_password_is_unchanged() {
        assert_eq!(redact("mongodb://h:27017/db"), "mongodb://h:27017/db");
    }
}
