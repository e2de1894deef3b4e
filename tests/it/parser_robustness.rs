//! The fuzz targets of `fuzz/` in miniature, run on every build: the
//! manifest, migration-file and COPY text parsers get the seed corpus plus thousands of
//! deterministic mutations of it, and must accept or refuse each input
//! without panicking. (cargo-fuzz itself needs nightly; see fuzz/README.md.)

use std::path::Path;

use valero_db::config::EngineKind;
use valero_db::engine::postgres::copy_binary::{fuzz_case, Converter};
use valero_db::migrate::files::parse_migration;
use valero_db::snapshot::Manifest;

const ROUNDS: usize = 100_000;

/// xorshift64*: deterministic, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Bytes that make parsers stumble: structure, escapes, big numbers.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"\\",
    b"\\u0000",
    b"..",
    b"/",
    b"\0",
    b"\xff",
    b"18446744073709551616",
    b"-1",
    b"1e999",
    b"null",
    b"$$",
    b"'",
    b";",
    b"--",
    b"/*",
    b"*/",
    b"\r\n",
    b"\xef\xbb\xbf",
    b"{\"$date\":",
    b"{\"$numberLong\":\"9",
    b"\xf0\x9f\x8e",
];

fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut data = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let at = rng.below(data.len() + 1);
        match rng.below(5) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                data.splice(at..at, t.iter().copied());
            }
            2 if !data.is_empty() => {
                let end = (at + rng.below(32)).min(data.len());
                data.drain(at..end);
            }
            3 => data.truncate(at),
            _ => {
                let from = rng.below(data.len());
                let end = (from + rng.below(64)).min(data.len());
                let chunk = data[from..end].to_vec();
                data.splice(at..at, chunk);
            }
        }
    }
    data
}

fn corpus(kind: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(kind);
    let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn migration(data: &[u8]) -> Result<u64, String> {
    let (&first, rest) = data.split_first().ok_or("empty")?;
    let engine = if first % 2 == 0 {
        EngineKind::Postgres
    } else {
        EngineKind::Mongodb
    };
    let (name, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    parse_migration(&String::from_utf8_lossy(name), body, engine).map(|(v, _)| v)
}

#[test]
fn the_manifest_parser_refuses_mutated_manifests_without_panicking() {
    let seeds = corpus("manifest");
    for seed in &seeds {
        Manifest::parse(seed).expect("every seed is a valid manifest");
    }
    let mut rng = Rng(0x5eed_0001);
    let mut refused = 0;
    for _ in 0..ROUNDS {
        let pick = rng.below(seeds.len());
        let data = mutate(&mut rng, &seeds[pick]);
        match Manifest::parse(&data) {
            Ok(m) => {
                for o in &m.objects {
                    assert!(
                        valero_db::storage::validate_key(&o.key).is_ok(),
                        "accepted an unsafe key {:?}",
                        o.key
                    );
                }
            }
            Err(message) => {
                assert!(!message.is_empty());
                refused += 1;
            }
        }
    }
    assert!(refused > ROUNDS / 2, "mutations barely changed anything");
}

#[test]
fn the_migration_file_parser_refuses_mutated_files_without_panicking() {
    let seeds = corpus("migration");
    for seed in &seeds {
        migration(seed).expect("every seed is a valid migration file");
    }
    let mut rng = Rng(0x5eed_0002);
    for _ in 0..ROUNDS {
        let pick = rng.below(seeds.len());
        let data = mutate(&mut rng, &seeds[pick]);
        if let Ok(version) = migration(&data) {
            assert!(version > 0);
        }
    }
}

/// A `copy_text` fuzz input (see `copy_binary::fuzz_case`), converted
/// whole and in two pieces split at `cut`; both must give the same answer.
fn copy_text(data: &[u8], cut: usize) -> Option<Vec<u8>> {
    let (kinds, text) = fuzz_case(data)?;
    let cut = cut.min(text.len());
    let whole = Converter::convert(kinds.clone(), &[text]);
    let split = Converter::convert(kinds, &[&text[..cut], &text[cut..]]);
    assert_eq!(whole, split, "pieces changed the conversion of {text:?}");
    whole.ok()
}

#[test]
fn the_copy_text_converter_refuses_mutated_rows_without_panicking() {
    let seeds = corpus("copy_text");
    for seed in &seeds {
        assert!(
            copy_text(seed, seed.len() / 2).is_some(),
            "seed {:?} does not convert",
            String::from_utf8_lossy(seed)
        );
    }
    let mut rng = Rng(0x5eed_0003);
    let mut converted = 0;
    for _ in 0..ROUNDS {
        let pick = rng.below(seeds.len());
        let data = mutate(&mut rng, &seeds[pick]);
        let cut = rng.below(data.len() + 1);
        if copy_text(&data, cut).is_some() {
            converted += 1;
        }
    }
    assert!(converted > 0, "no mutation converted");
}
