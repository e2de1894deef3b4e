//! The COPY text format's escapes, as `COPY FROM` reads them and as a
//! value is written back: the restore's binary converter and the masking
//! of rows both read fields with it.

/// COPY text escapes, as `COPY FROM` reads them.
pub fn unescape(raw: &[u8], out: &mut Vec<u8>) {
    out.clear();
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' || i == raw.len() {
            out.push(b);
            continue;
        }
        let c = raw[i];
        i += 1;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = (c - b'0') as u32;
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + (d - b'0') as u32;
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(|d| d.is_ascii_hexdigit()) => {
                let mut v = hex_digit(raw[i]) as u32;
                i += 1;
                if let Some(d) = raw.get(i).filter(|d| d.is_ascii_hexdigit()) {
                    v = v * 16 + hex_digit(*d) as u32;
                    i += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
}

/// The value of a hexadecimal digit (the caller checked it is one).
pub fn hex_digit(b: u8) -> u8 {
    match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        _ => b - b'A' + 10,
    }
}

/// A value as a COPY text field (`\N` is the caller's).
pub fn escape(value: &[u8], out: &mut Vec<u8>) {
    for &b in value {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_round_trip() {
        for v in [&b"a\\b\tc\nd\re"[..], b"plain", b"", b"\\N as text"] {
            let mut field = Vec::new();
            escape(v, &mut field);
            assert!(!field.contains(&b'\t') && !field.contains(&b'\n'));
            let mut back = Vec::new();
            unescape(&field, &mut back);
            assert_eq!(back, v);
        }
        let mut out = Vec::new();
        unescape(b"\\101\\x42\\v", &mut out);
        assert_eq!(out, b"AB\x0b");
    }
}
