//! Migrations: files on disk (`files`), pure planning (`plan`), and the
//! statement splitter (`sql_split`). The runner that applies plans under
//! the lock is `service::session`.

pub mod files;
pub mod plan;
pub mod sql_split;
