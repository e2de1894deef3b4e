//! The transformers. Each output is derived from HMAC-SHA256(key, name of
//! the transformer, value), so it depends on the value and the key only:
//! the same e-mail gives the same stand-in in PostgreSQL and MongoDB, joins
//! and foreign keys on masked columns still match, and a different key
//! gives different data. Injective transformers (`hash`, `email`, `iban`
//! up to their length) keep unique columns unique with overwhelming
//! probability; `name`, `phone`'s short numbers, `text`, `number_range`,
//! `date_shift` and `constant` may map two values to one.

use aws_lc_rs::hmac;

/// The masking key: 32 bytes or more from the environment (`key_env`),
/// never stored or printed.
pub struct MaskKey(hmac::Key);

impl MaskKey {
    pub fn new(secret: &[u8]) -> Result<MaskKey, String> {
        if secret.len() < 16 {
            return Err("a masking key needs at least 16 bytes".into());
        }
        Ok(MaskKey(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// 32 pseudo-random bytes for (`purpose`, `value`).
    fn derive(&self, purpose: &str, value: &str) -> [u8; 32] {
        let mut ctx = hmac::Context::with_key(&self.0);
        ctx.update(purpose.as_bytes());
        ctx.update(&[0]);
        ctx.update(value.as_bytes());
        let mut out = [0u8; 32];
        out.copy_from_slice(ctx.sign().as_ref());
        out
    }

    /// As many pseudo-random bytes as asked, for (`purpose`, `value`).
    fn stream(&self, purpose: &str, value: &str, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 32);
        let mut block = 0u32;
        while out.len() < len {
            out.extend_from_slice(&self.derive(&format!("{purpose}/{block}"), value));
            block += 1;
        }
        out.truncate(len);
        out
    }
}

/// What a masking rule does to a value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transformer {
    Keep,
    /// NULL in PostgreSQL, the field unset in MongoDB.
    Null,
    /// Hex of the same length (at least 8).
    Hash,
    Email,
    Name,
    /// The same number of digits, the leading `+` and country code kept.
    Phone,
    /// Same country and length, valid check digits.
    Iban,
    /// Same length, letters for letters, digits for digits, the rest kept.
    Text,
    NumberRange {
        min: i64,
        max: i64,
    },
    /// A date (or the date of a timestamp) moved by up to ± `days`.
    DateShift {
        days: u32,
    },
    Constant(String),
}

const FIRST: [&str; 16] = [
    "Anna", "Ben", "Clara", "David", "Emma", "Felix", "Greta", "Hannes", "Ida", "Jonas", "Karla",
    "Lukas", "Mia", "Noah", "Olga", "Paul",
];
const LAST: [&str; 16] = [
    "Albers", "Brandt", "Conrad", "Dietz", "Engel", "Fuchs", "Graf", "Haas", "Imhof", "Jung",
    "Kranz", "Lang", "Moser", "Nagel", "Otto", "Pohl",
];

impl Transformer {
    /// The stand-in for `value`; None means NULL (or unset).
    pub fn apply(&self, key: &MaskKey, value: &str) -> Option<String> {
        match self {
            Transformer::Keep => Some(value.to_string()),
            Transformer::Null => None,
            Transformer::Hash => Some(hex_of(key, "hash", value, value.chars().count().max(8))),
            Transformer::Email => Some(format!(
                "u{}@example.invalid",
                hex_of(key, "email", value, 16)
            )),
            Transformer::Name => {
                let r = key.derive("name", value);
                Some(format!(
                    "{} {}",
                    FIRST[r[0] as usize % 16],
                    LAST[r[1] as usize % 16]
                ))
            }
            Transformer::Phone => Some(phone(key, value)),
            Transformer::Iban => Some(iban(key, value)),
            Transformer::Text => Some(text(key, value)),
            Transformer::NumberRange { min, max } => {
                let r = key.derive("number", value);
                let span = (*max as i128 - *min as i128 + 1) as u128;
                let pick = u128::from_le_bytes(r[..16].try_into().unwrap_or_default()) % span;
                Some((*min as i128 + pick as i128).to_string())
            }
            Transformer::DateShift { days } => date_shift(key, value, *days),
            Transformer::Constant(c) => Some(c.clone()),
        }
    }
}

fn hex_of(key: &MaskKey, purpose: &str, value: &str, len: usize) -> String {
    let bytes = key.stream(purpose, value, len.div_ceil(2));
    let mut hex = hex::encode(bytes);
    hex.truncate(len);
    hex
}

/// Digits replaced one for one; a leading `+` and the two digits after it
/// (the country code) and every separator kept.
fn phone(key: &MaskKey, value: &str) -> String {
    let random = key.stream("phone", value, value.len());
    let mut kept = if value.starts_with('+') { 3 } else { 0 };
    value
        .chars()
        .zip(random)
        .map(|(c, r)| {
            if kept > 0 {
                kept -= 1;
                c
            } else if c.is_ascii_digit() {
                char::from(b'0' + r % 10)
            } else {
                c
            }
        })
        .collect()
}

/// Same length and character classes: letters for letters (case kept),
/// digits for digits, everything else as it was.
fn text(key: &MaskKey, value: &str) -> String {
    let random = key.stream("text", value, value.chars().count());
    value
        .chars()
        .zip(random)
        .map(|(c, r)| match c {
            'a'..='z' | 'ä' | 'ö' | 'ü' | 'ß' => char::from(b'a' + r % 26),
            'A'..='Z' | 'Ä' | 'Ö' | 'Ü' => char::from(b'A' + r % 26),
            '0'..='9' => char::from(b'0' + r % 10),
            c if c.is_alphabetic() => char::from(b'a' + r % 26),
            c => c,
        })
        .collect()
}

/// An IBAN of the same country and length whose check digits are valid
/// (ISO 13616, mod 97). Spaces in the input are dropped.
fn iban(key: &MaskKey, value: &str) -> String {
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    let country: String = match compact.get(..2) {
        Some(cc) if cc.chars().all(|c| c.is_ascii_uppercase()) => cc.to_string(),
        _ => "DE".to_string(),
    };
    let length = compact.chars().count().clamp(15, 34);
    let random = key.stream("iban", &compact, length - 4);
    let bban: String = random.iter().map(|r| char::from(b'0' + r % 10)).collect();
    let check = 98 - mod97(&format!("{bban}{country}00"));
    format!("{country}{check:02}{bban}")
}

/// The number an IBAN's letters and digits spell (A = 10 … Z = 35), mod 97.
fn mod97(text: &str) -> u32 {
    text.chars().fold(0u32, |acc, c| {
        let digits = match c.to_digit(36) {
            Some(d) => d,
            None => return acc,
        };
        if digits >= 10 {
            (acc * 100 + digits) % 97
        } else {
            (acc * 10 + digits) % 97
        }
    })
}

/// `YYYY-MM-DD…` with the date moved by a deterministic −days..=days
/// (never 0 when days > 0); the rest of the string (a time) kept. A value
/// that does not start with a date is left as it is.
fn date_shift(key: &MaskKey, value: &str, days: u32) -> Option<String> {
    let (date, rest) = (value.get(..10)?, value.get(10..).unwrap_or_default());
    let Ok(parsed) = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d") else {
        return Some(value.to_string());
    };
    if days == 0 {
        return Some(value.to_string());
    }
    let r = key.derive("date", value);
    let magnitude = 1 + u32::from_le_bytes([r[0], r[1], r[2], r[3]]) % days;
    let shift = if r[4] & 1 == 0 {
        i64::from(magnitude)
    } else {
        -i64::from(magnitude)
    };
    let moved = parsed.checked_add_signed(chrono::Duration::days(shift))?;
    Some(format!("{}{rest}", moved.format("%Y-%m-%d")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> MaskKey {
        MaskKey::new(format!("{k:-<32}").as_bytes()).unwrap()
    }

    #[test]
    fn the_same_value_masks_the_same_under_one_key_and_differently_under_another() {
        let (a, b) = (key("a"), key("b"));
        for t in [
            Transformer::Hash,
            Transformer::Email,
            Transformer::Iban,
            Transformer::Text,
            Transformer::Phone,
        ] {
            let v = "Anna.Albers@kunde.de, 0221 1234567";
            assert_eq!(t.apply(&a, v), t.apply(&a, v), "{t:?}");
            assert_ne!(t.apply(&a, v), t.apply(&b, v), "{t:?}");
            assert_ne!(t.apply(&a, v).as_deref(), Some(v), "{t:?}");
        }
    }

    #[test]
    fn emails_and_hashes_stay_unique_over_many_values() {
        let k = key("u");
        let mut emails = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for i in 0..20_000 {
            let v = format!("kunde{i}@example.de");
            assert!(emails.insert(Transformer::Email.apply(&k, &v).unwrap()));
            assert!(hashes.insert(Transformer::Hash.apply(&k, &v).unwrap()));
        }
    }

    #[test]
    fn a_hash_keeps_the_length_and_is_hex() {
        let h = Transformer::Hash
            .apply(&key("h"), "Müller-Lüdenscheidt")
            .unwrap();
        assert_eq!(h.chars().count(), "Müller-Lüdenscheidt".chars().count());
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(Transformer::Hash.apply(&key("h"), "x").unwrap().len(), 8);
    }

    #[test]
    fn ibans_keep_country_and_length_and_have_valid_check_digits() {
        let k = key("i");
        for v in [
            "DE89 3704 0044 0532 0130 00",
            "AT611904300234573201",
            "GB29NWBK60161331926819",
            "junk",
        ] {
            let m = Transformer::Iban.apply(&k, v).unwrap();
            let compact: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            if v != "junk" {
                assert_eq!(&m[..2], &compact[..2]);
                assert_eq!(m.len(), compact.len());
            }
            // Valid: the rearranged number is 1 mod 97.
            assert_eq!(mod97(&format!("{}{}", &m[4..], &m[..4])), 1, "{m}");
            assert_ne!(m, compact);
        }
        // The standard's own example passes the same check.
        assert_eq!(mod97("370400440532013000DE89"), 1);
    }

    #[test]
    fn text_and_phone_keep_shape() {
        let k = key("t");
        let t = Transformer::Text
            .apply(&k, "Bitte an Frau Özdemir, Tel. 0221-12345")
            .unwrap();
        assert_eq!(
            t.chars().count(),
            "Bitte an Frau Özdemir, Tel. 0221-12345".chars().count()
        );
        assert_eq!(t.matches(' ').count(), 5);
        let p = Transformer::Phone.apply(&k, "+49 221 1234567").unwrap();
        assert!(p.starts_with("+49 "), "{p}");
        assert_eq!(p.len(), "+49 221 1234567".len());
        assert_ne!(p, "+49 221 1234567");
    }

    #[test]
    fn numbers_stay_in_range_and_dates_move_within_the_window() {
        let k = key("n");
        for i in 0..1000 {
            let n: i64 = Transformer::NumberRange { min: -5, max: 5 }
                .apply(&k, &i.to_string())
                .unwrap()
                .parse()
                .unwrap();
            assert!((-5..=5).contains(&n));
            let d = Transformer::DateShift { days: 30 }
                .apply(&k, &format!("1980-02-{:02} 10:00:00+00", 1 + i % 28))
                .unwrap();
            assert!(d.ends_with(" 10:00:00+00"), "{d}");
            let moved = chrono::NaiveDate::parse_from_str(&d[..10], "%Y-%m-%d").unwrap();
            let from = chrono::NaiveDate::from_ymd_opt(1980, 2, 1 + i % 28).unwrap();
            let days = (moved - from).num_days().abs();
            assert!((1..=30).contains(&days), "{d}");
        }
        assert_eq!(
            Transformer::DateShift { days: 5 }
                .apply(&k, "not a date")
                .as_deref(),
            Some("not a date")
        );
    }

    #[test]
    fn keep_null_constant_and_short_keys() {
        let k = key("c");
        assert_eq!(Transformer::Keep.apply(&k, "x").as_deref(), Some("x"));
        assert_eq!(Transformer::Null.apply(&k, "x"), None);
        assert_eq!(
            Transformer::Constant("-".into()).apply(&k, "x").as_deref(),
            Some("-")
        );
        assert!(Transformer::Name
            .apply(&k, "Anna Albers")
            .unwrap()
            .contains(' '));
        assert!(MaskKey::new(b"short").is_err());
    }
}
