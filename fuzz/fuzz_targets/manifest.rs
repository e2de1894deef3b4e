//! A manifest comes from storage the operator may not fully trust: parsing
//! arbitrary bytes must return a value or an error, never panic, and an
//! accepted manifest only names object keys inside the snapshot folder.
#![no_main]

use libfuzzer_sys::fuzz_target;
use valero_db::snapshot::Manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::parse(data) {
        for o in &m.objects {
            assert!(valero_db::storage::validate_key(&o.key).is_ok());
        }
        let _ = m.total_size();
    }
});
