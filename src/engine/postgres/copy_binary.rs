//! COPY text → COPY binary, for restore.
//!
//! Snapshots store rows as `COPY ... TO STDOUT` text: compact after zstd and
//! readable by `psql`. Parsing that text costs the server most of a restore
//! (timestamps and numerics above all), while the binary format is close to
//! the on-disk form. So restore converts the text to binary on the client —
//! on the other core, while the server loads — for tables whose every
//! column has a type converted here.
//!
//! The converter is strict: it accepts exactly what PostgreSQL's output
//! functions print (with sqlx's session settings: ISO dates, UTC) and
//! answers [`Unconvertible`] for anything else, after which the caller loads
//! the table as text, as before. A value is never guessed.

use std::fmt;

/// A column type the converter handles, from its built-in type OID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int2,
    Int4,
    Int8,
    Float4,
    Float8,
    Numeric,
    /// text, varchar, bpchar, json: the binary form is the text itself.
    Text,
    Jsonb,
    Bytea,
    Uuid,
    Date,
    Timestamp,
    Timestamptz,
}

impl Kind {
    pub const ALL: [Kind; 14] = [
        Kind::Bool,
        Kind::Int2,
        Kind::Int4,
        Kind::Int8,
        Kind::Float4,
        Kind::Float8,
        Kind::Numeric,
        Kind::Text,
        Kind::Jsonb,
        Kind::Bytea,
        Kind::Uuid,
        Kind::Date,
        Kind::Timestamp,
        Kind::Timestamptz,
    ];

    /// Built-in type OIDs are fixed across PostgreSQL versions; domains,
    /// enums, arrays and composites have other OIDs and stay text.
    pub fn from_oid(oid: u32) -> Option<Kind> {
        Some(match oid {
            16 => Kind::Bool,
            21 => Kind::Int2,
            23 => Kind::Int4,
            20 => Kind::Int8,
            700 => Kind::Float4,
            701 => Kind::Float8,
            1700 => Kind::Numeric,
            25 | 1043 | 1042 | 114 => Kind::Text,
            3802 => Kind::Jsonb,
            17 => Kind::Bytea,
            2950 => Kind::Uuid,
            1082 => Kind::Date,
            1114 => Kind::Timestamp,
            1184 => Kind::Timestamptz,
            _ => return None,
        })
    }
}

/// The input format of the `copy_text` fuzz target and its CI twin in
/// `tests/it/parser_robustness.rs`: a column count (1 to 8), one byte per
/// column picking its kind, then COPY text.
#[doc(hidden)]
pub fn fuzz_case(data: &[u8]) -> Option<(Vec<Kind>, &[u8])> {
    let (&n, rest) = data.split_first()?;
    let n = n as usize % 9;
    let picks = rest.get(..n).filter(|p| !p.is_empty())?;
    let kinds = picks
        .iter()
        .map(|p| Kind::ALL[*p as usize % Kind::ALL.len()])
        .collect();
    Some((kinds, &rest[n..]))
}

/// Why a row could not be converted; the table is then loaded as text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unconvertible(pub String);

impl fmt::Display for Unconvertible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Conv<T> = std::result::Result<T, Unconvertible>;

fn bad<T>(what: &str) -> Conv<T> {
    Err(Unconvertible(what.to_string()))
}

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";

/// Converts a stream of COPY text, fed in arbitrary pieces, to one COPY
/// binary stream.
pub struct Converter {
    kinds: Vec<Kind>,
    /// The start of a row whose newline has not arrived yet.
    partial: Vec<u8>,
    started: bool,
    rows: u64,
    /// Unescaped field text, reused.
    scratch: Vec<u8>,
}

impl Converter {
    pub fn new(kinds: Vec<Kind>) -> Converter {
        Converter {
            kinds,
            partial: Vec::new(),
            started: false,
            rows: 0,
            scratch: Vec::new(),
        }
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The whole binary stream for text that arrives in `pieces`.
    pub fn convert(kinds: Vec<Kind>, pieces: &[&[u8]]) -> Conv<Vec<u8>> {
        let mut c = Converter::new(kinds);
        let mut out = Vec::new();
        for piece in pieces {
            c.push(piece, &mut out)?;
        }
        c.finish(&mut out)?;
        Ok(out)
    }

    /// Appends the binary form of every row completed by `input` to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Conv<()> {
        if !self.started {
            out.extend_from_slice(SIGNATURE);
            out.extend_from_slice(&0u32.to_be_bytes()); // flags
            out.extend_from_slice(&0u32.to_be_bytes()); // header extension
            self.started = true;
        }
        if !self.partial.is_empty() {
            let Some(end) = memchr::memchr(b'\n', input) else {
                self.partial.extend_from_slice(input);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&input[..end]);
            self.row(&line, out)?;
            line.clear();
            self.partial = line;
            input = &input[end + 1..];
        }
        while let Some(end) = memchr::memchr(b'\n', input) {
            self.row(&input[..end], out)?;
            input = &input[end + 1..];
        }
        self.partial.extend_from_slice(input);
        Ok(())
    }

    /// Ends the binary stream; text that did not end in a newline is refused.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Conv<()> {
        if !self.partial.is_empty() {
            return bad("the data does not end with a newline");
        }
        if !self.started {
            self.push(&[], out)?;
        }
        out.extend_from_slice(&(-1i16).to_be_bytes());
        Ok(())
    }

    fn row(&mut self, line: &[u8], out: &mut Vec<u8>) -> Conv<()> {
        if line.contains(&b'\r') || line == b"\\." {
            return bad("a carriage return or end-of-data marker in the text");
        }
        out.extend_from_slice(&(self.kinds.len() as i16).to_be_bytes());
        let mut fields = line.split(|b| *b == b'\t');
        for i in 0..self.kinds.len() {
            let Some(raw) = fields.next() else {
                return bad("a row with fewer columns than the table");
            };
            if raw == b"\\N" {
                out.extend_from_slice(&(-1i32).to_be_bytes());
                continue;
            }
            let text: &[u8] = if memchr::memchr(b'\\', raw).is_some() {
                crate::copy_text::unescape(raw, &mut self.scratch);
                &self.scratch
            } else {
                raw
            };
            let at = out.len();
            out.extend_from_slice(&[0; 4]);
            value(self.kinds[i], text, out)?;
            let len = (out.len() - at - 4) as u32;
            if len > i32::MAX as u32 {
                return bad("a value too large");
            }
            out[at..at + 4].copy_from_slice(&len.to_be_bytes());
        }
        if fields.next().is_some() {
            return bad("a row with more columns than the table");
        }
        self.rows += 1;
        Ok(())
    }
}

/// The binary form of one non-NULL value.
fn value(kind: Kind, text: &[u8], out: &mut Vec<u8>) -> Conv<()> {
    match kind {
        Kind::Text => out.extend_from_slice(text),
        Kind::Jsonb => {
            out.push(1); // jsonb binary format version
            out.extend_from_slice(text);
        }
        Kind::Bool => out.push(match text {
            b"t" => 1,
            b"f" => 0,
            _ => return bad("a boolean other than t or f"),
        }),
        Kind::Int2 => out.extend_from_slice(&integer::<i16>(text)?.to_be_bytes()),
        Kind::Int4 => out.extend_from_slice(&integer::<i32>(text)?.to_be_bytes()),
        Kind::Int8 => out.extend_from_slice(&integer::<i64>(text)?.to_be_bytes()),
        Kind::Float4 => out.extend_from_slice(&float::<f32>(text)?.to_bits().to_be_bytes()),
        Kind::Float8 => out.extend_from_slice(&float::<f64>(text)?.to_bits().to_be_bytes()),
        Kind::Numeric => numeric(text, out)?,
        Kind::Bytea => {
            let Some(hex) = text.strip_prefix(b"\\x") else {
                return bad("bytea not in hex output format");
            };
            if hex.len() % 2 != 0 || !hex.iter().all(|b| b.is_ascii_hexdigit()) {
                return bad("malformed bytea hex");
            }
            out.extend(hex.chunks(2).map(|p| {
                crate::copy_text::hex_digit(p[0]) * 16 + crate::copy_text::hex_digit(p[1])
            }));
        }
        Kind::Uuid => {
            if text.len() != 36 {
                return bad("malformed uuid");
            }
            let mut digits = Vec::with_capacity(32);
            for (i, b) in text.iter().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    if *b != b'-' {
                        return bad("malformed uuid");
                    }
                } else if b.is_ascii_hexdigit() {
                    digits.push(crate::copy_text::hex_digit(*b));
                } else {
                    return bad("malformed uuid");
                }
            }
            out.extend(digits.chunks(2).map(|p| p[0] * 16 + p[1]));
        }
        Kind::Date => {
            let days: i32 = match text {
                b"infinity" => i32::MAX,
                b"-infinity" => i32::MIN,
                _ => {
                    let mut p = Cursor::new(text);
                    p.date()?;
                    let days = p.era()?;
                    p.end()?;
                    i32::try_from(days).or_else(|_| bad("a date out of range"))?
                }
            };
            out.extend_from_slice(&days.to_be_bytes());
        }
        Kind::Timestamp | Kind::Timestamptz => {
            let micros: i64 = match text {
                b"infinity" => i64::MAX,
                b"-infinity" => i64::MIN,
                _ => timestamp(text, kind == Kind::Timestamptz)?,
            };
            out.extend_from_slice(&micros.to_be_bytes());
        }
    }
    Ok(())
}

fn integer<T: std::str::FromStr>(text: &[u8]) -> Conv<T> {
    let digits = text.strip_prefix(b"-").unwrap_or(text);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return bad("malformed integer");
    }
    // ASCII checked above.
    let s = std::str::from_utf8(text).or_else(|_| bad("malformed integer"))?;
    s.parse().or_else(|_| bad("integer out of range"))
}

/// Rust's float parsing is correctly rounded, as is PostgreSQL's
/// `strtod`/`strtof`, so both read the same decimal to the same bits.
fn float<T: std::str::FromStr + Copy + Into<f64>>(text: &[u8]) -> Conv<T> {
    // PostgreSQL's spellings of the special values, which Rust reads too.
    let special = matches!(text, b"NaN" | b"Infinity" | b"-Infinity");
    // Otherwise only digits, point, sign and exponent: no other "inf" or
    // "nan" spellings.
    if !special
        && (!text.iter().any(u8::is_ascii_digit)
            || !text
                .iter()
                .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'+' | b'-')))
    {
        return bad("malformed float");
    }
    let s = std::str::from_utf8(text).or_else(|_| bad("malformed float"))?;
    let v: T = s.parse().or_else(|_| bad("malformed float"))?;
    if !special && !v.into().is_finite() {
        return bad("float out of range");
    }
    Ok(v)
}

const NUMERIC_POS: u16 = 0x0000;
const NUMERIC_NEG: u16 = 0x4000;
const NUMERIC_NAN: u16 = 0xC000;
const NUMERIC_PINF: u16 = 0xD000;
const NUMERIC_NINF: u16 = 0xF000;

/// numeric's binary form: base-10000 digits around the decimal point.
fn numeric(text: &[u8], out: &mut Vec<u8>) -> Conv<()> {
    let special = |sign: u16, out: &mut Vec<u8>| {
        for v in [0u16, 0, sign, 0] {
            out.extend_from_slice(&v.to_be_bytes());
        }
    };
    match text {
        b"NaN" => {
            special(NUMERIC_NAN, out);
            return Ok(());
        }
        b"Infinity" => {
            special(NUMERIC_PINF, out);
            return Ok(());
        }
        b"-Infinity" => {
            special(NUMERIC_NINF, out);
            return Ok(());
        }
        _ => {}
    }
    let (negative, unsigned) = match text.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int, frac) = match memchr::memchr(b'.', unsigned) {
        Some(dot) => (&unsigned[..dot], &unsigned[dot + 1..]),
        None => (unsigned, &b""[..]),
    };
    let has_dot = int.len() != unsigned.len();
    if int.is_empty()
        || (has_dot && frac.is_empty())
        || !int.iter().all(u8::is_ascii_digit)
        || !frac.iter().all(u8::is_ascii_digit)
    {
        return bad("malformed numeric");
    }
    let dscale = u16::try_from(frac.len())
        .ok()
        .filter(|s| *s <= 0x3FFF)
        .ok_or_else(|| Unconvertible("numeric scale out of range".into()))?;
    let first = int.iter().position(|b| *b != b'0').unwrap_or(int.len());
    let int = &int[first..];
    // Group the digits in fours around the point: pad the integer part on
    // the left and the fraction on the right.
    let lead = (4 - int.len() % 4) % 4;
    let int_groups = (int.len() + lead) / 4;
    let mut digits: Vec<i16> = Vec::with_capacity(int_groups + frac.len().div_ceil(4));
    let mut group = 0i16;
    let mut filled = lead;
    for d in int.iter().chain(frac.iter()) {
        group = group * 10 + (d - b'0') as i16;
        filled += 1;
        if filled == 4 {
            digits.push(group);
            group = 0;
            filled = 0;
        }
    }
    if filled > 0 {
        while filled < 4 {
            group *= 10;
            filled += 1;
        }
        digits.push(group);
    }
    let mut weight = int_groups as i64 - 1;
    let leading = digits.iter().take_while(|d| **d == 0).count();
    weight -= leading as i64;
    let trailing = digits[leading..]
        .iter()
        .rev()
        .take_while(|d| **d == 0)
        .count();
    let digits = &digits[leading..digits.len() - trailing];
    let (weight, sign) = if digits.is_empty() {
        (0, NUMERIC_POS)
    } else if negative {
        (weight, NUMERIC_NEG)
    } else {
        (weight, NUMERIC_POS)
    };
    let weight = i16::try_from(weight).or_else(|_| bad("numeric out of range"))?;
    let ndigits = i16::try_from(digits.len()).or_else(|_| bad("numeric out of range"))?;
    out.extend_from_slice(&ndigits.to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&sign.to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Ok(())
}

const MICROS_PER_SECOND: i64 = 1_000_000;
const SECONDS_PER_DAY: i64 = 86_400;
/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i64 = 10_957;

/// `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM[:SS]]][ BC]` → microseconds since
/// 2000-01-01 00:00 (UTC for timestamptz).
fn timestamp(text: &[u8], zoned: bool) -> Conv<i64> {
    let mut p = Cursor::new(text);
    p.date()?;
    p.expect(b' ')?;
    let hour = p.number(2, 2)?;
    p.expect(b':')?;
    let minute = p.number(2, 2)?;
    p.expect(b':')?;
    let second = p.number(2, 2)?;
    if hour > 23 || minute > 59 || second > 59 {
        return bad("a time out of range");
    }
    let mut micros = 0i64;
    if p.peek() == Some(b'.') {
        p.pos += 1;
        let start = p.pos;
        let fraction = p.number(1, 6)?;
        micros = fraction * 10i64.pow(6 - (p.pos - start) as u32);
    }
    let mut offset = 0i64;
    if zoned {
        let sign = match p.peek() {
            Some(b'+') => 1,
            Some(b'-') => -1,
            _ => return bad("a timestamptz without an offset"),
        };
        p.pos += 1;
        let mut seconds = p.number(2, 2)? * 3600;
        if p.peek() == Some(b':') {
            p.pos += 1;
            seconds += p.number(2, 2)? * 60;
            if p.peek() == Some(b':') {
                p.pos += 1;
                seconds += p.number(2, 2)?;
            }
        }
        offset = sign * seconds;
    }
    let days = p.era()?;
    p.end()?;
    let seconds = (days * SECONDS_PER_DAY + hour * 3600 + minute * 60 + second) - offset;
    seconds
        .checked_mul(MICROS_PER_SECOND)
        .and_then(|s| s.checked_add(micros))
        .ok_or_else(|| Unconvertible("a timestamp out of range".into()))
}

struct Cursor<'a> {
    text: &'a [u8],
    pos: usize,
    /// The year of the date read, for the BC adjustment.
    year: i64,
    month: i64,
    day: i64,
}

impl<'a> Cursor<'a> {
    fn new(text: &'a [u8]) -> Cursor<'a> {
        Cursor {
            text,
            pos: 0,
            year: 0,
            month: 0,
            day: 0,
        }
    }

    fn peek(&self) -> Option<u8> {
        self.text.get(self.pos).copied()
    }

    fn expect(&mut self, b: u8) -> Conv<()> {
        if self.peek() != Some(b) {
            return bad("malformed date or time");
        }
        self.pos += 1;
        Ok(())
    }

    fn number(&mut self, min: usize, max: usize) -> Conv<i64> {
        let start = self.pos;
        while self.pos - start < max && self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        if self.pos - start < min {
            return bad("malformed date or time");
        }
        Ok(self.text[start..self.pos]
            .iter()
            .fold(0i64, |v, d| v * 10 + (d - b'0') as i64))
    }

    /// `YYYY-MM-DD` (four or more year digits); remembers the parts and
    /// answers nothing yet: the era comes at the end of the text.
    fn date(&mut self) -> Conv<()> {
        self.year = self.number(4, 9)?;
        self.expect(b'-')?;
        self.month = self.number(2, 2)?;
        self.expect(b'-')?;
        self.day = self.number(2, 2)?;
        Ok(())
    }

    /// Reads an optional ` BC` and answers days since 2000-01-01 of the
    /// date read by `date`.
    fn era(&mut self) -> Conv<i64> {
        let mut year = self.year;
        if self.text[self.pos..] == *b" BC" {
            self.pos += 3;
            if year == 0 {
                return bad("year 0 BC");
            }
            // 1 BC is astronomical year 0.
            year = 1 - year;
        } else if year == 0 {
            return bad("year 0");
        }
        if !(1..=12).contains(&self.month)
            || self.day < 1
            || self.day > days_in_month(year, self.month)
        {
            return bad("a date out of range");
        }
        Ok(days_from_civil(year, self.month, self.day) - PG_EPOCH_DAYS)
    }

    fn end(&self) -> Conv<()> {
        if self.pos != self.text.len() {
            return bad("trailing text after a date or time");
        }
        Ok(())
    }
}

fn leap(year: i64) -> bool {
    year.rem_euclid(4) == 0 && (year.rem_euclid(100) != 0 || year.rem_euclid(400) == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if leap(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (astronomical year).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(kinds: &[Kind], text: &[u8]) -> Conv<Vec<u8>> {
        Converter::convert(kinds.to_vec(), &[text])
    }

    /// The bytes of the single value of a one-row, one-column stream.
    fn one(kind: Kind, text: &str) -> Conv<Vec<u8>> {
        let out = convert(&[kind], format!("{text}\n").as_bytes())?;
        let body = &out[19..out.len() - 2];
        assert_eq!(&body[..2], &1i16.to_be_bytes());
        let len = i32::from_be_bytes(body[2..6].try_into().unwrap());
        assert_eq!(len as usize, body.len() - 6);
        Ok(body[6..].to_vec())
    }

    fn be16(v: &[i16]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_be_bytes()).collect()
    }

    #[test]
    fn stream_has_header_rows_nulls_and_trailer() {
        let out = convert(&[Kind::Int4, Kind::Text], b"1\tx\n\\N\t\\N\n").unwrap();
        let mut want = SIGNATURE.to_vec();
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&2i16.to_be_bytes());
        want.extend_from_slice(&4i32.to_be_bytes());
        want.extend_from_slice(&1i32.to_be_bytes());
        want.extend_from_slice(&1i32.to_be_bytes());
        want.push(b'x');
        want.extend_from_slice(&2i16.to_be_bytes());
        want.extend_from_slice(&(-1i32).to_be_bytes());
        want.extend_from_slice(&(-1i32).to_be_bytes());
        want.extend_from_slice(&(-1i16).to_be_bytes());
        assert_eq!(out, want);
    }

    #[test]
    fn rows_split_across_pieces_convert_as_whole_rows() {
        let text = b"1\tabc\n22\t\\\\d\\te\n333\t\n";
        let whole = convert(&[Kind::Int8, Kind::Text], text).unwrap();
        for cut in 0..text.len() {
            for cut2 in cut..text.len() {
                let mut c = Converter::new(vec![Kind::Int8, Kind::Text]);
                let mut out = Vec::new();
                c.push(&text[..cut], &mut out).unwrap();
                c.push(&text[cut..cut2], &mut out).unwrap();
                c.push(&text[cut2..], &mut out).unwrap();
                c.finish(&mut out).unwrap();
                assert_eq!(out, whole, "cut at {cut}/{cut2}");
                assert_eq!(c.rows(), 3);
            }
        }
    }

    #[test]
    fn copy_escapes_are_undone() {
        assert_eq!(
            one(Kind::Text, r"a\tb\nc\\d\re\bf\fg\vh\101\x41\q").unwrap(),
            b"a\tb\nc\\d\re\x08f\x0cg\x0bhAAq"
        );
        assert_eq!(one(Kind::Text, "").unwrap(), b"");
        assert_eq!(
            one(Kind::Jsonb, r#"{"a": "\\n"}"#).unwrap(),
            b"\x01{\"a\": \"\\n\"}"
        );
    }

    #[test]
    fn wrong_column_counts_and_odd_lines_are_unconvertible() {
        assert!(convert(&[Kind::Int4, Kind::Int4], b"1\n").is_err());
        assert!(convert(&[Kind::Int4], b"1\t2\n").is_err());
        assert!(convert(&[Kind::Int4], b"1").is_err());
        assert!(convert(&[Kind::Text], b"a\r\n").is_err());
        assert!(convert(&[Kind::Text], b"\\.\n").is_err());
    }

    #[test]
    fn integers_and_booleans() {
        assert_eq!(
            one(Kind::Int2, "-32768").unwrap(),
            (-32768i16).to_be_bytes()
        );
        assert_eq!(
            one(Kind::Int4, "2147483647").unwrap(),
            i32::MAX.to_be_bytes()
        );
        assert_eq!(
            one(Kind::Int8, "-9223372036854775808").unwrap(),
            i64::MIN.to_be_bytes()
        );
        for bad in ["32768", "+1", " 1", "1.0", "", "-", "0x10"] {
            assert!(one(Kind::Int2, bad).is_err(), "{bad}");
        }
        assert_eq!(one(Kind::Bool, "t").unwrap(), [1]);
        assert_eq!(one(Kind::Bool, "f").unwrap(), [0]);
        assert!(one(Kind::Bool, "true").is_err());
    }

    #[test]
    fn floats_keep_every_bit() {
        let f8 = |s: &str| {
            f64::from_bits(u64::from_be_bytes(
                one(Kind::Float8, s).unwrap().try_into().unwrap(),
            ))
        };
        assert_eq!(f8("0.1"), 0.1);
        assert_eq!(f8("-0").to_bits(), (-0.0f64).to_bits());
        assert_eq!(f8("1e-320").to_bits(), 1e-320f64.to_bits());
        assert_eq!(f8("1.7976931348623157e+308"), f64::MAX);
        assert_eq!(f8("Infinity"), f64::INFINITY);
        assert_eq!(f8("-Infinity"), f64::NEG_INFINITY);
        assert!(f8("NaN").is_nan());
        let f4 = one(Kind::Float4, "3.4e+38").unwrap();
        assert_eq!(
            f32::from_bits(u32::from_be_bytes(f4.try_into().unwrap())),
            3.4e38f32
        );
        // Read as f32 directly, not rounded twice through f64.
        let f4 = one(Kind::Float4, "1.00000005960464477539062500001").unwrap();
        assert_eq!(
            u32::from_be_bytes(f4.try_into().unwrap()),
            1.0000001f32.to_bits()
        );
        for bad in ["inf", "nan", "infinity", "1e999", "", "e", "0x1p3"] {
            assert!(one(Kind::Float8, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn numerics_group_digits_in_base_10000() {
        let header = |n: i16, w: i16, s: u16, d: u16| {
            let mut v = be16(&[n, w]);
            v.extend_from_slice(&s.to_be_bytes());
            v.extend_from_slice(&d.to_be_bytes());
            v
        };
        let with = |h: Vec<u8>, d: &[i16]| [h, be16(d)].concat();
        assert_eq!(one(Kind::Numeric, "0").unwrap(), header(0, 0, 0, 0));
        assert_eq!(one(Kind::Numeric, "0.00").unwrap(), header(0, 0, 0, 2));
        assert_eq!(
            one(Kind::Numeric, "12345.678").unwrap(),
            with(header(3, 1, 0, 3), &[1, 2345, 6780])
        );
        assert_eq!(
            one(Kind::Numeric, "-0.0001").unwrap(),
            with(header(1, -1, 0x4000, 4), &[1])
        );
        assert_eq!(
            one(Kind::Numeric, "0.00000000015").unwrap(),
            with(header(1, -3, 0, 11), &[150])
        );
        assert_eq!(
            one(Kind::Numeric, "10000").unwrap(),
            with(header(1, 1, 0, 0), &[1])
        );
        assert_eq!(
            one(Kind::Numeric, "100.10").unwrap(),
            with(header(2, 0, 0, 2), &[100, 1000])
        );
        assert_eq!(one(Kind::Numeric, "NaN").unwrap(), header(0, 0, 0xC000, 0));
        assert_eq!(
            one(Kind::Numeric, "-Infinity").unwrap(),
            header(0, 0, 0xF000, 0)
        );
        for bad in ["", "-", ".5", "1.", "1e5", "+1", "1.2.3", "nan"] {
            assert!(one(Kind::Numeric, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn dates_and_timestamps_count_from_2000() {
        let i32v = |s: &str| i32::from_be_bytes(one(Kind::Date, s).unwrap().try_into().unwrap());
        let i64v = |k: Kind, s: &str| i64::from_be_bytes(one(k, s).unwrap().try_into().unwrap());
        assert_eq!(i32v("2000-01-01"), 0);
        assert_eq!(i32v("1999-12-31"), -1);
        assert_eq!(i32v("2024-03-01"), 8826);
        assert_eq!(i32v("0001-01-01 BC"), -730485);
        assert_eq!(i32v("10000-01-01"), 2921940);
        assert_eq!(i32v("infinity"), i32::MAX);
        assert_eq!(i32v("-infinity"), i32::MIN);
        assert_eq!(i64v(Kind::Timestamp, "2000-01-01 00:00:01.5"), 1_500_000);
        assert_eq!(
            i64v(Kind::Timestamp, "2000-01-02 00:00:00.000001"),
            86_400_000_001
        );
        assert_eq!(i64v(Kind::Timestamptz, "2000-01-01 01:00:00+01"), 0);
        assert_eq!(
            i64v(Kind::Timestamptz, "2000-01-01 00:00:00-00:53:28"),
            3208 * 1_000_000
        );
        assert_eq!(
            i64v(Kind::Timestamptz, "0044-03-15 00:00:00+00 BC"),
            -746_117 * 86_400_000_000
        );
        assert_eq!(i64v(Kind::Timestamptz, "infinity"), i64::MAX);
        for bad in [
            "2024-02-30",
            "2023-02-29",
            "0000-01-01",
            "24-01-01",
            "2024-1-01",
            "2024-01-01 BC AD",
            "01/02/2024",
            "2024-01-01 ",
        ] {
            assert!(one(Kind::Date, bad).is_err(), "{bad}");
        }
        for bad in [
            "2024-01-01 24:00:00",
            "2024-01-01 00:60:00",
            "2024-01-01 00:00:00.1234567",
            "2024-01-01T00:00:00",
            "2024-01-01 00:00:00 UTC",
        ] {
            assert!(one(Kind::Timestamp, bad).is_err(), "{bad}");
        }
        assert!(one(Kind::Timestamptz, "2024-01-01 00:00:00").is_err());
        assert!(one(Kind::Timestamp, "2024-01-01 00:00:00+00").is_err());
    }

    #[test]
    fn bytea_and_uuid() {
        assert_eq!(one(Kind::Bytea, r"\\x00ff10").unwrap(), [0, 255, 16]);
        assert_eq!(one(Kind::Bytea, r"\\x").unwrap(), b"");
        assert!(one(Kind::Bytea, r"\\001").is_err());
        assert!(one(Kind::Bytea, r"\\x0").is_err());
        assert_eq!(
            one(Kind::Uuid, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11").unwrap(),
            [
                0xa0, 0xee, 0xbc, 0x99, 0x9c, 0x0b, 0x4e, 0xf8, 0xbb, 0x6d, 0x6b, 0xb9, 0xbd, 0x38,
                0x0a, 0x11
            ]
        );
        assert!(one(Kind::Uuid, "a0eebc999c0b4ef8bb6d6bb9bd380a11").is_err());
    }
}
