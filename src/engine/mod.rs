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
