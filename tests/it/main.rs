//! The end-to-end and integration tests, one module per scenario file,
//! linked into one test binary (one link of the dependency graph instead
//! of one per file). A single test is still one `cargo test NAME` away;
//! a file's tests are `cargo test --test it FILE::`.

mod common;

mod altered_snapshots;
mod capture;
mod capture_mongodb;
mod cli_errors;
mod delivery;
mod deploy;
mod deploy_retries;
mod docs;
mod encryption;
mod faults;
mod lint;
mod live_traffic;
mod masking;
mod masking_leaks;
mod migrate_mongodb;
mod migrate_postgres;
mod monitoring;
mod parser_robustness;
mod pg_versions;
mod pipeline;
mod rehearse;
mod restore;
mod restore_dependencies;
mod restore_points;
mod secrets;
mod snapshots;
mod tls;
