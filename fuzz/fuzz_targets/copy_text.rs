//! Restore converts stored COPY text to COPY binary: arbitrary text (the
//! first byte a column count of 1 to 8, then one byte per column picking its type)
//! must convert or be refused, never panic, and the answer must not depend
//! on how the text is split into pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valero_db::restore::copy_binary::{Converter, Kind};

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = n as usize % 9;
    let Some(picks) = rest.get(..n).filter(|p| !p.is_empty()) else {
        return;
    };
    let text = &rest[n..];
    let kinds: Vec<Kind> = picks
        .iter()
        .map(|p| Kind::ALL[*p as usize % Kind::ALL.len()])
        .collect();
    let convert = |pieces: &[&[u8]]| {
        let mut c = Converter::new(kinds.clone());
        let mut out = Vec::new();
        for piece in pieces {
            c.push(piece, &mut out)?;
        }
        c.finish(&mut out).map(|()| out)
    };
    let cut = text.len() / 3;
    assert_eq!(convert(&[text]), convert(&[&text[..cut], &text[cut..]]));
});
