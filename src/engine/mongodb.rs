//! MongoDB engine: one database; history in the `valero_schema_history`
//! collection, a lease document with expiry as the per-service lock.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::ClientOptions;
use mongodb::{Client, Collection, Database};

use crate::config::MongoTarget;
use crate::engine::{failed, Engine, EngineKind, RepairAction, RunMeta};
use crate::error::{Error, Result};
use crate::migrate::files::{Body, Migration, Script};
use crate::migrate::plan::{AppliedMigration, RowState};
use crate::redact;

pub const HISTORY: &str = "valero_schema_history";
pub const LOCKS: &str = "valero_schema_lock";
const LOCK_ID: &str = "migrate";

/// How long a lease lives without renewal. A crashed holder blocks others
/// for at most this long. `VALERO_DB_MONGO_LEASE_TTL` (seconds) overrides.
pub(crate) fn lease_ttl() -> Duration {
    std::env::var("VALERO_DB_MONGO_LEASE_TTL")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(30))
}

/// A lease document in `valero_schema_lock`: the per-service lock of
/// MongoDB (`_id: "migrate"`) and of its capture (`_id: "capture"`). A
/// holder that dies blocks others until its lease expires.
#[derive(Clone)]
pub struct Lease {
    coll: Collection<Document>,
    id: &'static str,
    token: String,
    ttl: Duration,
    service: String,
}

impl Lease {
    pub fn new(
        db: &Database,
        id: &'static str,
        service: &str,
        token: &str,
        ttl: Duration,
    ) -> Lease {
        Lease {
            coll: db.collection(LOCKS),
            id,
            token: token.to_string(),
            ttl,
            service: service.to_string(),
        }
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn what(&self) -> String {
        format!("MongoDB of service {}", self.service)
    }

    fn expiry(&self) -> bson::DateTime {
        bson::DateTime::from_millis(
            bson::DateTime::now().timestamp_millis() + self.ttl.as_millis() as i64,
        )
    }

    /// One attempt: takes the lease if it is free, expired or already
    /// ours (and extends it); false while someone else holds it.
    pub async fn try_acquire(&self) -> Result<bool> {
        let now = bson::DateTime::now();
        let filter = doc! {
            "_id": self.id,
            "$or": [{"expires_at": {"$lt": now}}, {"token": &self.token}],
        };
        let update = doc! {"$set": {
            "token": &self.token,
            "host": super::hostname(),
            "pid": std::process::id() as i64,
            "since": now,
            "expires_at": self.expiry(),
        }};
        match self
            .coll
            .find_one_and_update(filter, update)
            .upsert(true)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate_key(&e) => Ok(false),
            Err(e) => Err(classify(&self.what(), e)),
        }
    }

    /// Extends the lease only if it is still ours; false when it is not.
    pub async fn extend(&self) -> Result<bool> {
        let r = self
            .coll
            .update_one(
                doc! {"_id": self.id, "token": &self.token},
                doc! {"$set": {"expires_at": self.expiry()}},
            )
            .await
            .map_err(|e| classify(&self.what(), e))?;
        Ok(r.matched_count == 1)
    }

    /// Who else holds a live lease, for operators: host, pid, since.
    pub async fn holder(&self) -> Result<Option<String>> {
        let now = bson::DateTime::now();
        let found = self
            .coll
            .find_one(doc! {"_id": self.id, "expires_at": {"$gte": now}})
            .await
            .map_err(|e| classify(&self.what(), e))?;
        Ok(found.and_then(|d| {
            if d.get_str("token").ok() == Some(self.token.as_str()) {
                return None;
            }
            let time = |k: &str| {
                d.get_datetime(k)
                    .map(|t| t.to_chrono().format("%Y-%m-%dT%H:%M:%SZ").to_string())
                    .unwrap_or_else(|_| "?".into())
            };
            let pid = d
                .get_i64("pid")
                .map(|p| p.to_string())
                .unwrap_or_else(|_| "?".into());
            Some(format!(
                "valero-db host={} pid={pid} (since {}, lease expires {})",
                d.get_str("host").unwrap_or("?"),
                time("since"),
                time("expires_at")
            ))
        }))
    }

    pub async fn release(&self) -> Result<()> {
        self.coll
            .delete_one(doc! {"_id": self.id, "token": &self.token})
            .await
            .map_err(|e| classify(&self.what(), e))?;
        Ok(())
    }
}

pub struct MongoEngine {
    service: String,
    client: Client,
    db: Database,
    lock: Lease,
    renewer: Option<tokio::task::JoinHandle<()>>,
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
fn command_error_message(e: &mongodb::error::Error) -> String {
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

fn is_connection_error(e: &mongodb::error::Error) -> bool {
    matches!(
        e.kind.as_ref(),
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    )
}

impl MongoEngine {
    pub async fn connect(service: &str, target: &MongoTarget) -> Result<Self> {
        let what = format!(
            "MongoDB of service {service} ({})",
            redact::redact_url(&target.url)
        );
        let client = connect_client(&what, &target.url).await?;
        let db = client.database(&target.database);
        db.run_command(doc! {"ping": 1})
            .await
            .map_err(|e| classify(&what, e))?;
        let lock = Lease::new(
            &db,
            LOCK_ID,
            service,
            &uuid::Uuid::new_v4().to_string(),
            lease_ttl(),
        );
        Ok(MongoEngine {
            service: service.to_string(),
            client,
            db,
            lock,
            renewer: None,
        })
    }

    fn what(&self) -> String {
        format!("MongoDB of service {}", self.service)
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    fn history_coll(&self) -> Collection<Document> {
        self.db.collection(HISTORY)
    }

    async fn history_row(
        &self,
        m: &Migration,
        meta: &RunMeta,
        state: RowState,
        ms: i64,
    ) -> Document {
        doc! {
            "_id": m.version as i64,
            "version": m.version as i64,
            "description": &m.description,
            "checksum": &m.checksum,
            "applied_at": bson::DateTime::now(),
            "execution_ms": ms,
            "applied_by": &meta.applied_by,
            "release": meta.release.clone().map(Bson::String).unwrap_or(Bson::Null),
            "state": state.as_str(),
        }
    }

    /// Runs commands in order; on failure returns the index and the message.
    async fn run_commands(
        &self,
        commands: &[Document],
        progress_of: Option<i64>,
    ) -> std::result::Result<(), (usize, String, bool)> {
        for (i, command) in commands.iter().enumerate() {
            if let Err(e) = self.db.run_command(command.clone()).await {
                return Err((i, command_error_message(&e), is_connection_error(&e)));
            }
            if let Some(version) = progress_of {
                // Progress is best effort: it helps an operator of a dirty
                // version see how far it got.
                let _ = self
                    .history_coll()
                    .update_one(
                        doc! {"_id": version},
                        doc! {"$set": {"progress": (i + 1) as i64}},
                    )
                    .await;
            }
        }
        Ok(())
    }
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
        super::hostname(),
        std::process::id()
    ));
    Client::with_options(options).map_err(|e| classify(what, e))
}

#[async_trait]
impl Engine for MongoEngine {
    async fn capture_lag(
        &mut self,
        storage: &dyn crate::storage::Storage,
        env: &str,
    ) -> Option<crate::capture::postgres::Lag> {
        crate::capture::mongodb::lag(storage, env, &self.service).await
    }

    fn kind(&self) -> EngineKind {
        EngineKind::Mongodb
    }

    fn service(&self) -> &str {
        &self.service
    }

    async fn history(&mut self) -> Result<Vec<AppliedMigration>> {
        let what = self.what();
        let mut cursor = self
            .history_coll()
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .map_err(|e| classify(&what, e))?;
        let mut out = Vec::new();
        while let Some(d) = cursor.try_next().await.map_err(|e| classify(&what, e))? {
            let version = d
                .get_i64("_id")
                .or_else(|_| d.get_i32("_id").map(i64::from))
                .unwrap_or(0);
            let detail = match (d.get_str("detail").ok(), d.get_i64("progress").ok()) {
                (Some(text), Some(p)) => Some(format!("{text} (commands completed: {p})")),
                (Some(text), None) => Some(text.to_string()),
                (None, Some(p)) => Some(format!("commands completed: {p}")),
                (None, None) => None,
            };
            out.push(AppliedMigration {
                version: version as u64,
                description: d.get_str("description").unwrap_or_default().to_string(),
                checksum: d.get_str("checksum").unwrap_or_default().to_string(),
                state: RowState::parse(d.get_str("state").unwrap_or("dirty")),
                applied_at: d.get_datetime("applied_at").ok().map(|t| t.to_chrono()),
                release: d.get_str("release").ok().map(str::to_string),
                detail,
            });
        }
        Ok(out)
    }

    async fn prepare(&mut self) -> Result<()> {
        // Collections are created on first write; nothing to do.
        Ok(())
    }

    async fn try_lock(&mut self) -> Result<bool> {
        if !self.lock.try_acquire().await? {
            return Ok(false);
        }
        // Renew well before expiry while the work goes on.
        let lease = self.lock.clone();
        if let Some(old) = self.renewer.take() {
            old.abort();
        }
        self.renewer = Some(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease.ttl() / 3).await;
                match lease.extend().await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::error!(
                            service = lease.service(),
                            "the MongoDB migration lease was lost"
                        );
                        return;
                    }
                    Err(e) => tracing::warn!(
                        service = lease.service(),
                        "renewing the MongoDB lease failed: {e}"
                    ),
                }
            }
        }));
        Ok(true)
    }

    async fn lock_holder(&mut self) -> Result<Option<String>> {
        self.lock.holder().await
    }

    async fn unlock(&mut self) -> Result<()> {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
        self.lock.release().await
    }

    async fn apply_up(&mut self, m: &Migration, meta: &RunMeta) -> Result<()> {
        let Body::Commands(commands) = &m.up.body else {
            return Err(Error::internal("a MongoDB migration without commands"));
        };
        let what = self.what();
        let started = Instant::now();
        // MongoDB commands are not transactional: mark the attempt first so
        // a crash in the middle is visible as dirty.
        let row = self.history_row(m, meta, RowState::Dirty, 0).await;
        self.history_coll()
            .insert_one(row)
            .await
            .map_err(|e| classify(&what, e))?;
        match self.run_commands(commands, Some(m.version as i64)).await {
            Ok(()) => {
                self.history_coll()
                    .update_one(
                        doc! {"_id": m.version as i64},
                        doc! {"$set": {"state": "applied", "execution_ms": started.elapsed().as_millis() as i64}, "$unset": {"progress": ""}},
                    )
                    .await
                    .map_err(|e| classify(&what, e))?;
                Ok(())
            }
            Err((index, message, connection)) => {
                let message = format!("command {index} failed: {message}");
                if index == 0 && !connection {
                    // Nothing was applied: forget the attempt.
                    let _ = self
                        .history_coll()
                        .delete_one(doc! {"_id": m.version as i64})
                        .await;
                    return Err(failed(
                        &self.service,
                        EngineKind::Mongodb,
                        &m.up.path,
                        message,
                        Some(
                            "no command of this file was applied; fix it and run migrate again"
                                .into(),
                        ),
                    ));
                }
                let _ = self
                    .history_coll()
                    .update_one(
                        doc! {"_id": m.version as i64},
                        doc! {"$set": {"detail": &message}},
                    )
                    .await;
                Err(failed(
                    &self.service,
                    EngineKind::Mongodb,
                    &m.up.path,
                    message,
                    Some(format!(
                        "commands 0..{index} of this file were applied and stay applied (MongoDB commands are not transactional); \
                         version {v} is marked dirty. Finish or undo them by hand, then run \
                         `valero-db repair -s {s} --engine mongodb --version {v} --as applied|pending`",
                        v = m.version,
                        s = self.service
                    )),
                ))
            }
        }
    }

    async fn apply_down(&mut self, m: &Migration, down: &Script) -> Result<()> {
        let Body::Commands(commands) = &down.body else {
            return Err(Error::internal("a MongoDB migration without commands"));
        };
        let what = self.what();
        self.history_coll()
            .update_one(
                doc! {"_id": m.version as i64},
                doc! {"$set": {"state": "dirty", "detail": "down migration started"}},
            )
            .await
            .map_err(|e| classify(&what, e))?;
        if let Err((index, message, _)) = self.run_commands(commands, None).await {
            let message = format!("command {index} of the down file failed: {message}");
            let _ = self
                .history_coll()
                .update_one(
                    doc! {"_id": m.version as i64},
                    doc! {"$set": {"detail": &message}},
                )
                .await;
            return Err(failed(
                &self.service,
                EngineKind::Mongodb,
                &down.path,
                message,
                None,
            ));
        }
        self.history_coll()
            .delete_one(doc! {"_id": m.version as i64})
            .await
            .map_err(|e| classify(&what, e))?;
        Ok(())
    }

    async fn baseline(&mut self, migrations: &[&Migration], meta: &RunMeta) -> Result<()> {
        let what = self.what();
        for m in migrations {
            let row = self.history_row(m, meta, RowState::Applied, 0).await;
            self.history_coll()
                .insert_one(row)
                .await
                .map_err(|e| classify(&what, e))?;
        }
        Ok(())
    }

    async fn repair(&mut self, version: u64, action: RepairAction) -> Result<()> {
        let what = self.what();
        let filter = doc! {"_id": version as i64, "state": "dirty"};
        let affected = match action {
            RepairAction::MarkApplied => self
                .history_coll()
                .update_one(filter, doc! {"$set": {"state": "applied", "detail": "repaired by hand"}, "$unset": {"progress": ""}})
                .await
                .map(|r| r.matched_count)
                .map_err(|e| classify(&what, e))?,
            RepairAction::MarkPending => self
                .history_coll()
                .delete_one(filter)
                .await
                .map(|r| r.deleted_count)
                .map_err(|e| classify(&what, e))?,
        };
        if affected == 0 {
            return Err(Error::usage(format!(
                "service {} (mongodb) has no dirty version {version}",
                self.service
            )));
        }
        Ok(())
    }

    async fn snapshot(
        &mut self,
        out: &mut crate::snapshot::SnapshotWriter<'_>,
    ) -> Result<crate::snapshot::manifest::EngineInfo> {
        crate::snapshot::mongodb::take(&self.client, &self.db, &self.service, out).await
    }

    async fn restore_prepare(
        &mut self,
        storage: &dyn crate::storage::Storage,
        found: &crate::snapshot::Found,
        replay: Option<&crate::capture::ReplayPlan>,
    ) -> Result<crate::restore::RestoreStats> {
        if !found.manifest.engines.iter().any(|e| e.engine == "mongodb") {
            return Err(Error::usage(format!(
                "snapshot {} has no MongoDB part for service {}",
                found.manifest.id, self.service
            )));
        }
        let (_, stats) =
            crate::restore::mongodb::prepare(&self.db, storage, found, &self.service, replay)
                .await?;
        Ok(stats)
    }

    async fn restore_commit(&mut self) -> Result<()> {
        crate::restore::mongodb::commit(&self.db, &self.service).await
    }

    async fn restore_abort(&mut self) {
        crate::restore::mongodb::abort(&self.db, &self.service).await
    }

    async fn recover(&mut self) -> Result<()> {
        crate::restore::mongodb::recover(&self.db, &self.service)
            .await
            .map(|_| ())
    }
}

impl Drop for MongoEngine {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}
