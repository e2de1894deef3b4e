//! Restore converts stored COPY text to COPY binary: arbitrary text (the
//! first byte a column count of 1 to 8, then one byte per column picking its type)
//! must convert or be refused, never panic, and the answer must not depend
//! on how the text is split into pieces.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valero_db::engine::postgres::copy_binary::{fuzz_case, Converter};

fuzz_target!(|data: &[u8]| {
    let Some((kinds, text)) = fuzz_case(data) else {
        return;
    };
    let cut = text.len() / 3;
    assert_eq!(
        Converter::convert(kinds.clone(), &[text]),
        Converter::convert(kinds, &[&text[..cut], &text[cut..]])
    );
});
