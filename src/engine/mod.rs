//! The database engines: the seam every engine implements (`seam`), and
//! one folder per engine with its migrations, snapshots, restores and
//! continuous capture.

pub mod mongodb;
pub mod postgres;
pub mod seam;

pub use seam::{identity, Engine, RepairAction, RunMeta};

use crate::config::{Service, StatementLocks};
use crate::error::Result;

/// Connects to every engine a service has, in a fixed order; `locks` is
/// how PostgreSQL migration statements wait for the application's locks.
pub async fn connect_service(
    service: &Service,
    locks: StatementLocks,
) -> Result<Vec<Box<dyn Engine>>> {
    let mut engines: Vec<Box<dyn Engine>> = Vec::new();
    if let Some(pg) = &service.postgres {
        engines.push(Box::new(
            postgres::PostgresEngine::connect(&service.name, pg, locks).await?,
        ));
    }
    if let Some(m) = &service.mongodb {
        engines.push(Box::new(
            mongodb::MongoEngine::connect(&service.name, m).await?,
        ));
    }
    Ok(engines)
}

/// Every scratch database a rehearsal of one service's schema or database
/// creates starts with this; the rest is the time and a random part.
pub fn scratch_prefix(service: &str, schema: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(schema.as_bytes());
    let service: String = service
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(20)
        .collect();
    format!("valero_rehearse_{service}_{}_", hex::encode(&digest[..4]))
}

#[cfg(test)]
mod scratch_tests {
    use super::scratch_prefix;

    #[test]
    fn scratch_names_are_per_service_and_target_and_fit_a_database_name() {
        let a = scratch_prefix("fibu", "fibu");
        assert!(a.starts_with("valero_rehearse_fibu_"));
        assert_ne!(a, scratch_prefix("fibu", "fibu_staging"));
        assert!(a.len() + 14 + 1 + 6 <= 63, "{a}");
    }
}
