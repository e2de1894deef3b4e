//! MongoDB driver helpers every part of the engine shares: connecting,
//! the names of valero-db's own collections, and mapping driver errors to
//! the exit-code contract.

use std::time::Duration;

use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::error::{Error, Result};
use crate::redact;

/// The history collection: one document per applied version.
pub const HISTORY: &str = "valero_schema_history";
/// The lease documents (migration lock, capture lock).
pub const LOCKS: &str = "valero_schema_lock";
/// The journal of a restore in progress (see `restore`).
pub const JOURNAL: &str = "valero_restore_journal";
/// Name prefix of a restore's temporary collections.
pub const TMP_PREFIX: &str = "valero_tmp_";

/// The collection a change event is about ("" for database events).
pub fn collection_of(event: &bson::Document) -> &str {
    event
        .get_document("ns")
        .ok()
        .and_then(|n| n.get_str("coll").ok())
        .unwrap_or_default()
}

/// Maps a driver error: server selection and I/O are exit 3.
pub fn classify(what: &str, e: mongodb::error::Error) -> Error {
    let text = redact::redact(&e.to_string());
    match e.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. }
        | ErrorKind::DnsResolve { .. }
        | ErrorKind::Authentication { .. } => Error::unreachable(what, text),
        ErrorKind::InvalidArgument { .. } => Error::usage(format!("{what}: {text}")),
        _ => Error::internal(format!("{what}: {text}")),
    }
}

/// The server's own words for a failed command.
pub(crate) fn command_error_message(e: &mongodb::error::Error) -> String {
    let text = match e.kind.as_ref() {
        ErrorKind::Command(c) => format!("{} (code {} {})", c.message, c.code, c.code_name),
        ErrorKind::Write(WriteFailure::WriteError(w)) => format!("{} (code {})", w.message, w.code),
        _ => e.to_string(),
    };
    redact::redact(&text)
}

pub(crate) fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match e.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => e.to_string().contains("E11000"),
    }
}

pub(crate) fn is_connection_error(e: &mongodb::error::Error) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    )
}

/// Builds a client that fails fast when the server is not there.
pub async fn connect_client(what: &str, url: &str) -> Result<Client> {
    let mut options = ClientOptions::parse(url).await.map_err(|e| {
        if matches!(e.kind.as_ref(), ErrorKind::InvalidArgument { .. }) {
            Error::usage(format!(
                "{what}: not a valid MongoDB URL: {}",
                redact::redact(&e.to_string())
            ))
        } else {
            classify(what, e)
        }
    })?;
    if options.server_selection_timeout.is_none() {
        options.server_selection_timeout = Some(Duration::from_secs(10));
    }
    if options.connect_timeout.is_none() {
        options.connect_timeout = Some(Duration::from_secs(10));
    }
    options.app_name = Some(format!(
        "valero-db host={} pid={}",
        crate::engine::seam::hostname(),
        std::process::id()
    ));
    Client::with_options(options).map_err(|e| classify(what, e))
}
