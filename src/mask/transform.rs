//! The transformers. Each output is derived from HMAC-SHA256(key, name of
//! the transformer, value), so it depends on the value and the key only:
//! the same e-mail gives the same stand-in in PostgreSQL and MongoDB, joins
//! and foreign keys on masked columns still match, and a different key
//! gives different data. Injective transformers (`hash`, `email`, `iban`
//! up to their length) keep unique columns unique with overwhelming
//! probability; `name`, `phone`'s short numbers, `text`, `number_range`,
//! `date_shift` and `constant` may map two values to one.

use aws_lc_rs::hmac;
use chrono::Datelike;

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

    /// As many pseudo-random bytes as asked, for (`purpose`, `value`): the
    /// keyed HMAC once, then SHA-256 of it and a block counter for every
    /// further 32 bytes (one HMAC per value, however long: the masked
    /// refresh's hot path).
    fn stream(&self, purpose: &str, value: &str, len: usize) -> Vec<u8> {
        use aws_lc_rs::digest;
        let seed = self.derive(purpose, value);
        let mut out = Vec::with_capacity(len + 32);
        out.extend_from_slice(&seed);
        let mut block = 1u32;
        while out.len() < len {
            let mut ctx = digest::Context::new(&digest::SHA256);
            ctx.update(&seed);
            ctx.update(&block.to_le_bytes());
            out.extend_from_slice(ctx.finish().as_ref());
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
    /// Hex of the same length (at least 16: 64 bits).
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
    /// A date (or the date of a timestamp) moved by 1 to `days` days, either
    /// way; other values (a time of day, `infinity`, text not in ISO form)
    /// are refused.
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

/// Why a transformer cannot stand in for a value. The value itself is
/// never part of it: it is personal data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{transformer} cannot stand in for {what}")]
pub struct Refused {
    pub transformer: &'static str,
    /// The kind of value, e.g. "a value that is not an ISO date".
    pub what: &'static str,
}

/// How many derivations a transformer tries before it refuses a value its
/// stand-in keeps equal to (each is a fresh HMAC, so one is almost always
/// enough; the rounds keep the output deterministic).
const ROUNDS: u32 = 8;

impl Transformer {
    /// The stand-in for `value`; `Ok(None)` means NULL (or unset), and only
    /// `null` gives it. Every transformer but `keep` (and `constant`, whose
    /// output is the constant by definition) returns a value that differs
    /// from the input, or refuses it: a value never passes through.
    pub fn apply(&self, key: &MaskKey, value: &str) -> Result<Option<String>, Refused> {
        let refused = |what| Refused {
            transformer: self.name(),
            what,
        };
        let stand_in = match self {
            Transformer::Keep => return Ok(Some(value.to_string())),
            Transformer::Null => return Ok(None),
            Transformer::Constant(c) => return Ok(Some(c.clone())),
            Transformer::DateShift { days } => return date_shift(key, value, *days).map(Some),
            Transformer::NumberRange { min, max } => {
                return number_in_range(key, value, *min, *max)
                    .map(Some)
                    .ok_or_else(|| refused("the only number of its range"))
            }
            _ => distinct(value, |round| self.derive(key, value, round)),
        };
        stand_in
            .map(Some)
            .ok_or_else(|| refused("a value its stand-ins keep equal to"))
    }

    /// The `round`th stand-in of the string transformers.
    fn derive(&self, key: &MaskKey, value: &str, round: u32) -> String {
        let purpose = |name: &'static str| -> std::borrow::Cow<'static, str> {
            if round == 0 {
                name.into()
            } else {
                format!("{name}#{round}").into()
            }
        };
        match self {
            Transformer::Hash => hex_of(key, &purpose("hash"), value, hash_width(value)),
            Transformer::Email => format!(
                "u{}@example.invalid",
                hex_of(key, &purpose("email"), value, 16)
            ),
            Transformer::Name => {
                let r = key.derive(&purpose("name"), value);
                format!("{} {}", FIRST[r[0] as usize % 16], LAST[r[1] as usize % 16])
            }
            Transformer::Phone => phone(key, &purpose("phone"), value),
            Transformer::Iban => iban(key, &purpose("iban"), value),
            _ => text(key, &purpose("text"), value),
        }
    }

    /// The most characters the stand-in of a value of `chars` characters
    /// has (None: as many as the value, so whatever fits the value fits).
    pub fn output_width(&self, chars: Option<usize>) -> Option<usize> {
        match self {
            Transformer::Keep | Transformer::Null => None,
            Transformer::Hash => chars.map(|n| n.max(HASH_MIN_WIDTH)),
            Transformer::Email => Some(EMAIL_WIDTH),
            Transformer::Name => Some(NAME_WIDTH),
            Transformer::Phone => chars.map(|n| n.max(PHONE_WIDTH)),
            Transformer::Iban => chars.map(|n| n.clamp(15, 34)),
            Transformer::Text => chars.map(|n| n.max(TEXT_EMPTY_WIDTH)),
            Transformer::NumberRange { min, max } => {
                Some(min.to_string().len().max(max.to_string().len()))
            }
            Transformer::DateShift { .. } => None,
            Transformer::Constant(c) => Some(c.chars().count()),
        }
    }
}

/// `hash`'s output is never shorter than this many hex digits (64 bits):
/// short values stay unique with overwhelming probability.
pub const HASH_MIN_WIDTH: usize = 16;
/// `u` + 16 hex digits + `@example.invalid`.
pub const EMAIL_WIDTH: usize = 33;
/// The longest first name, a space and the longest last name.
const NAME_WIDTH: usize = 13;
/// A phone value without digits becomes as many digits (one, if empty).
const PHONE_WIDTH: usize = 1;
/// An empty text becomes one letter.
const TEXT_EMPTY_WIDTH: usize = 1;

fn hash_width(value: &str) -> usize {
    value.chars().count().max(HASH_MIN_WIDTH)
}

/// The first of up to `ROUNDS` stand-ins that differs from `value`.
fn distinct(value: &str, mut derive: impl FnMut(u32) -> String) -> Option<String> {
    (0..ROUNDS).map(&mut derive).find(|s| s != value)
}

fn hex_of(key: &MaskKey, purpose: &str, value: &str, len: usize) -> String {
    let bytes = key.stream(purpose, value, len.div_ceil(2));
    let mut hex = hex::encode(bytes);
    hex.truncate(len);
    hex
}

/// Digits replaced one for one; a leading `+` and the two digits after it
/// (the country code) and every separator kept. A value with no digit to
/// replace becomes as many digits (one, if it is empty).
fn phone(key: &MaskKey, purpose: &str, value: &str) -> String {
    let kept = if value.starts_with('+') { 3 } else { 0 };
    let replaceable = value.chars().skip(kept).any(|c| c.is_ascii_digit());
    if !replaceable {
        let len = value.chars().count().max(PHONE_WIDTH);
        let random = key.stream(purpose, value, len);
        return random.iter().map(|r| char::from(b'0' + r % 10)).collect();
    }
    let random = key.stream(purpose, value, value.chars().count());
    value
        .chars()
        .zip(random)
        .enumerate()
        .map(|(i, (c, r))| {
            if i >= kept && c.is_ascii_digit() {
                char::from(b'0' + r % 10)
            } else {
                c
            }
        })
        .collect()
}

/// Same length and character classes: letters for letters (case kept),
/// digits for digits, everything else as it was. A value with no letter
/// or digit has each character replaced by a letter; an empty value
/// becomes one letter.
fn text(key: &MaskKey, purpose: &str, value: &str) -> String {
    if value.is_empty() {
        let random = key.stream(purpose, value, TEXT_EMPTY_WIDTH);
        return random.iter().map(|r| char::from(b'a' + r % 26)).collect();
    }
    let random = key.stream(purpose, value, value.chars().count());
    let plain = !value.chars().any(char::is_alphanumeric);
    value
        .chars()
        .zip(random)
        .map(|(c, r)| match c {
            _ if plain => char::from(b'a' + r % 26),
            'A'..='Z' | 'Ä' | 'Ö' | 'Ü' => char::from(b'A' + r % 26),
            '0'..='9' => char::from(b'0' + r % 10),
            c if c.is_alphabetic() => char::from(b'a' + r % 26),
            c if c.is_numeric() => char::from(b'0' + r % 10),
            c => c,
        })
        .collect()
}

/// An IBAN of the same country and length whose check digits are valid
/// (ISO 13616, mod 97). Spaces in the input are dropped.
fn iban(key: &MaskKey, purpose: &str, value: &str) -> String {
    let compact: String = value.chars().filter(|c| !c.is_whitespace()).collect();
    let country: String = match compact.get(..2) {
        Some(cc) if cc.chars().all(|c| c.is_ascii_uppercase()) => cc.to_string(),
        _ => "DE".to_string(),
    };
    let length = compact.chars().count().clamp(15, 34);
    let random = key.stream(purpose, &compact, length - 4);
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

/// A number of min..=max picked by the value; the next one (wrapping)
/// when the pick is the value itself. None for a range of one number that
/// is the value.
fn number_in_range(key: &MaskKey, value: &str, min: i64, max: i64) -> Option<String> {
    let r = key.derive("number", value);
    let span = (max as i128 - min as i128 + 1) as u128;
    let pick = u128::from_le_bytes(r[..16].try_into().unwrap_or_default()) % span;
    let same = |n: i128| value.trim().parse::<i128>().ok() == Some(n);
    let mut n = min as i128 + pick as i128;
    if same(n) {
        if span == 1 {
            return None;
        }
        n = min as i128 + ((pick + 1) % span) as i128;
    }
    Some(n.to_string())
}

/// `YYYY-MM-DD…` (a date, a timestamp in PostgreSQL's or ISO 8601's form,
/// with or without a zone, BC kept) with the date moved by a deterministic
/// −days..=days, never 0; the rest of the string (the time) kept. Anything
/// else is refused: a text that is not an ISO date, `infinity`, a time of
/// day.
fn date_shift(key: &MaskKey, value: &str, days: u32) -> Result<String, Refused> {
    let refused = |what| Refused {
        transformer: "date_shift",
        what,
    };
    if value.trim_start_matches(['-', '+']) == "infinity" {
        return Err(refused("infinity"));
    }
    let (date, rest) = match (value.get(..10), value.get(10..)) {
        (Some(date), Some(rest)) if rest.is_empty() || rest.starts_with([' ', 'T', 't']) => {
            (date, rest)
        }
        _ => return Err(refused("a value that is not an ISO date (YYYY-MM-DD…)")),
    };
    let parsed = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
        .ok()
        .filter(|_| date.as_bytes()[4] == b'-' && date.as_bytes()[7] == b'-')
        .ok_or_else(|| refused("a value that is not an ISO date (YYYY-MM-DD…)"))?;
    let r = key.derive("date", value);
    let magnitude = 1 + u32::from_le_bytes([r[0], r[1], r[2], r[3]]) % days.max(1);
    let shift = if r[4] & 1 == 0 {
        i64::from(magnitude)
    } else {
        -i64::from(magnitude)
    };
    let moved = parsed
        .checked_add_signed(chrono::Duration::days(shift))
        .filter(|d| (1..=9999).contains(&d.year()))
        .ok_or_else(|| refused("a date at the end of the calendar"))?;
    Ok(format!("{}{rest}", moved.format("%Y-%m-%d")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> MaskKey {
        MaskKey::new(format!("{k:-<32}").as_bytes()).unwrap()
    }

    fn masked(t: &Transformer, k: &MaskKey, v: &str) -> String {
        t.apply(k, v).unwrap().unwrap()
    }

    /// Every transformer a rule can name, with arguments that matter.
    fn every_transformer() -> Vec<Transformer> {
        vec![
            Transformer::Keep,
            Transformer::Null,
            Transformer::Hash,
            Transformer::Email,
            Transformer::Name,
            Transformer::Phone,
            Transformer::Iban,
            Transformer::Text,
            Transformer::NumberRange { min: -5, max: 5 },
            Transformer::NumberRange { min: 7, max: 7 },
            Transformer::NumberRange {
                min: i64::MIN,
                max: i64::MAX,
            },
            Transformer::DateShift { days: 1 },
            Transformer::DateShift { days: 36_500 },
            Transformer::Constant("Muster GmbH".into()),
        ]
    }

    /// xorshift64*: deterministic, so a failure repeats.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Values of every class a column or field can hand a transformer:
    /// edge cases by hand, then random strings, numbers, dates, timestamps
    /// and times.
    fn values(rng: &mut Rng, n: usize) -> Vec<String> {
        let mut out: Vec<String> = [
            "",
            " ",
            "a",
            "7",
            "-",
            "--",
            "ä",
            "ß",
            "日本",
            "😀",
            "+4",
            "+49",
            "+49 ",
            "0",
            "-0",
            "infinity",
            "-infinity",
            "+infinity",
            "04.03.1975",
            "10:03:00",
            "10:03:00+02",
            "1975-03-04",
            "1975-03-04 10:03:00",
            "1975-03-04T10:03:00Z",
            "0001-01-01",
            "9999-12-31",
            "2024-02-29 BC",
            "1975-3-4",
            "19750304",
            "1975-03-04x",
            "Anna Albers",
            "u0000000000000000@example.invalid",
            "DE89370400440532013000",
            "9223372036854775807",
            "-9223372036854775808",
            "3.5",
            "NaN",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        const ALPHABET: &[char] = &[
            'a', 'Z', '0', '9', ' ', '-', '.', '@', '+', ':', 'ä', 'Ö', 'ß', 'é', '日', '😀', '\t',
            '\\', '\'', '"',
        ];
        for _ in 0..n {
            let v = match rng.below(5) {
                0 => (0..rng.below(24))
                    .map(|_| ALPHABET[rng.below(ALPHABET.len() as u64) as usize])
                    .collect(),
                1 => (rng.next() as i64 >> rng.below(63)).to_string(),
                2 => format!(
                    "{:04}-{:02}-{:02}",
                    1 + rng.below(9999),
                    1 + rng.below(12),
                    1 + rng.below(28)
                ),
                3 => format!(
                    "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}+{:02}",
                    1900 + rng.below(200),
                    1 + rng.below(12),
                    1 + rng.below(28),
                    rng.below(24),
                    rng.below(60),
                    rng.below(60),
                    rng.below(1000),
                    rng.below(13)
                ),
                _ => format!(
                    "{:02}:{:02}:{:02}",
                    rng.below(24),
                    rng.below(60),
                    rng.below(60)
                ),
            };
            out.push(v);
        }
        out
    }

    #[test]
    fn every_transformer_stands_in_or_refuses_for_every_value_and_never_blanks_one() {
        let k = key("property");
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for v in values(&mut rng, 5_000) {
            for t in every_transformer() {
                match (t.apply(&k, &v), &t) {
                    (Ok(None), Transformer::Null) => {}
                    (Ok(None), _) => panic!("{t:?} blanked {v:?}"),
                    (Ok(Some(out)), Transformer::Keep) => assert_eq!(out, v),
                    (Ok(Some(out)), Transformer::Constant(c)) => assert_eq!(&out, c),
                    (Ok(Some(out)), _) => assert_ne!(out, v, "{t:?} passed {v:?} through"),
                    (Err(refused), _) => assert_eq!(refused.transformer, t.name()),
                }
                if let (Ok(Some(out)), Some(width)) =
                    (t.apply(&k, &v), t.output_width(Some(v.chars().count())))
                {
                    assert!(out.chars().count() <= width, "{t:?} on {v:?}: {out:?}");
                }
            }
        }
    }

    #[test]
    fn date_shift_moves_dates_and_timestamps_and_refuses_everything_else() {
        let k = key("d");
        let t = Transformer::DateShift { days: 30 };
        for v in [
            "1975-03-04",
            "1975-03-04 10:03:00",
            "1975-03-04 10:03:00.5+02",
            "1975-03-04T10:03:00Z",
            "0044-03-15 BC",
        ] {
            let out = masked(&t, &k, v);
            assert_eq!(out[10..], v[10..], "the time is kept");
            let (a, b) = (
                chrono::NaiveDate::parse_from_str(&v[..10], "%Y-%m-%d").unwrap(),
                chrono::NaiveDate::parse_from_str(&out[..10], "%Y-%m-%d").unwrap(),
            );
            assert!((1..=30).contains(&(a - b).num_days().abs()), "{v} → {out}");
        }
        for v in [
            "04.03.1975",
            "10:03:00",
            "infinity",
            "-infinity",
            "",
            "1975-3-4",
            "1975-03-04x",
            "not a date",
        ] {
            assert!(t.apply(&k, v).is_err(), "{v}");
        }
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
        }
    }

    #[test]
    fn emails_and_hashes_stay_unique_over_many_values() {
        let k = key("u");
        let mut emails = std::collections::HashSet::new();
        let mut hashes = std::collections::HashSet::new();
        for i in 0..20_000 {
            let v = format!("kunde{i}@example.de");
            assert!(emails.insert(masked(&Transformer::Email, &k, &v)));
            assert!(hashes.insert(masked(&Transformer::Hash, &k, &v)));
        }
        // Short values too: their hashes have 64 bits, not 32.
        let mut short = std::collections::HashSet::new();
        for i in 0..100_000u32 {
            assert!(short.insert(masked(&Transformer::Hash, &k, &i.to_string())));
        }
    }

    #[test]
    fn a_hash_keeps_the_length_of_long_values_and_is_hex() {
        let h = masked(&Transformer::Hash, &key("h"), "Müller-Lüdenscheidt");
        assert_eq!(h.chars().count(), "Müller-Lüdenscheidt".chars().count());
        assert!(h.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(masked(&Transformer::Hash, &key("h"), "x").len(), 16);
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
            let m = masked(&Transformer::Iban, &k, v);
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
        let v = "Bitte an Frau Özdemir, Tel. 0221-12345";
        let t = masked(&Transformer::Text, &k, v);
        assert_eq!(t.chars().count(), v.chars().count());
        assert_eq!(t.matches(' ').count(), 5);
        let p = masked(&Transformer::Phone, &k, "+49 221 1234567");
        assert!(p.starts_with("+49 "), "{p}");
        assert_eq!(p.len(), "+49 221 1234567".len());
        assert_ne!(p, "+49 221 1234567");
        let none = masked(&Transformer::Phone, &k, "unbekannt");
        assert!(none.len() == 9 && none.bytes().all(|b| b.is_ascii_digit()));
    }

    #[test]
    fn numbers_stay_in_range_and_differ_from_the_value() {
        let k = key("n");
        for i in -5..=5 {
            let n: i64 = masked(
                &Transformer::NumberRange { min: -5, max: 5 },
                &k,
                &i.to_string(),
            )
            .parse()
            .unwrap();
            assert!((-5..=5).contains(&n) && n != i);
        }
        let one = Transformer::NumberRange { min: 7, max: 7 };
        assert!(one.apply(&k, "7").is_err());
        assert_eq!(masked(&one, &k, "8"), "7");
    }

    #[test]
    fn keep_null_constant_and_short_keys() {
        let k = key("c");
        assert_eq!(
            Transformer::Keep.apply(&k, "x").unwrap().as_deref(),
            Some("x")
        );
        assert_eq!(Transformer::Null.apply(&k, "x").unwrap(), None);
        assert_eq!(masked(&Transformer::Constant("-".into()), &k, "x"), "-");
        assert!(masked(&Transformer::Name, &k, "Anna Albers").contains(' '));
        assert!(MaskKey::new(b"short").is_err());
    }
}
