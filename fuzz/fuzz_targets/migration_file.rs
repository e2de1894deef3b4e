//! Migration files are written by people: any name and content must parse
//! or be refused with a message, never panic. The first byte picks the
//! engine, the bytes up to the first newline are the file name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valero_db::config::EngineKind;
use valero_db::migrate::files::parse_migration;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let engine = if first % 2 == 0 {
        EngineKind::Postgres
    } else {
        EngineKind::Mongodb
    };
    let (name, body) = match rest.iter().position(|&b| b == b'\n') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, &[][..]),
    };
    let name = String::from_utf8_lossy(name);
    if let Ok((version, _)) = parse_migration(&name, body, engine) {
        assert!(version > 0);
    }
});
