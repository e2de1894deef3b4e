//! Masking for refreshes from another environment (the masking issue):
//! transformers that turn a personal value into a stand-in, deterministic
//! under a key the operator keeps outside valero-db, so one customer masks
//! to the same stand-in in every table, both engines and every refresh.
//!
//! Only the transformers exist so far; rules in the configuration and
//! their application while a restore streams are still to come.

pub mod transform;

pub use transform::{MaskKey, Transformer};
