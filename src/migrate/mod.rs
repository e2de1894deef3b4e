//! Migrations: files on disk (`files`), pure planning (`plan`), and the one
//! runner (`runner`) that every command uses, always under the lock.

pub mod files;
pub mod plan;
pub mod runner;
pub mod sql_split;
