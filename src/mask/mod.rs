//! Masking for refreshes from another environment: transformers that turn
//! a personal value into a stand-in, deterministic under a key the operator
//! keeps outside valero-db (so one customer masks to the same stand-in in
//! every table, both engines and every refresh), the rules that say which
//! column or field gets which, and their application to COPY text rows
//! and BSON documents while a restore streams them into the target.

pub mod check;
pub mod copy_text;
pub mod document;
pub mod rules;
pub mod transform;

use std::sync::Arc;

pub use rules::{FieldRule, ServiceRules};
pub use transform::{MaskKey, Transformer};

/// What a restore of one service masks, and with which key.
#[derive(Clone)]
pub struct Masking {
    pub key: Arc<MaskKey>,
    pub rules: ServiceRules,
    /// Refuse when a text-like column or string field is neither masked
    /// nor explicitly kept.
    pub strict: bool,
}

impl Masking {
    /// Whether strict mode covers `name`: valero-db's own tables and
    /// collections hold migration history, never personal data.
    pub fn strict_for(&self, name: &str) -> bool {
        self.strict && !check::is_own(name)
    }
}

impl std::fmt::Debug for Masking {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key never appears, not even in debug output.
        f.debug_struct("Masking")
            .field("rules", &self.rules)
            .field("strict", &self.strict)
            .finish_non_exhaustive()
    }
}

/// The masking key from the variable `key_env` names: set, and at least
/// 16 bytes. The value never appears in an error.
pub fn key_from(var: &str) -> crate::error::Result<Arc<MaskKey>> {
    use crate::error::Error;
    let value = std::env::var(var).unwrap_or_default();
    if value.is_empty() {
        return Err(Error::usage_hint(
            format!("the masking key variable {var} is not set; nothing was changed"),
            "set it to a secret of at least 16 bytes, the same for every refresh that must mask alike",
        ));
    }
    crate::redact::register_secret(&value);
    MaskKey::new(value.as_bytes())
        .map(Arc::new)
        .map_err(|m| Error::usage(format!("{var}: {m}; nothing was changed")))
}
