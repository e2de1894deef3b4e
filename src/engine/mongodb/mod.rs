//! MongoDB engine: one database; history in the `valero_schema_history`
//! collection, a lease document with expiry as the per-service lock.
//! Snapshots, restores and continuous capture live in the files beside
//! this one; `driver` and `lease` hold what they share.

pub mod capture;
pub mod driver;
pub mod dump;
pub mod lease;
pub mod masking;
pub mod rehearse;
pub mod restore;
pub mod snapshot;

use std::time::Instant;

use async_trait::async_trait;
use bson::{doc, Bson, Document};
use futures::TryStreamExt;
use mongodb::{Client, Collection, Database};

use self::driver::{classify, command_error_message, connect_client, is_connection_error, HISTORY};
use self::lease::{lease_ttl, Lease, MIGRATE_LEASE};
use crate::config::{EngineKind, MongoTarget};
use crate::engine::seam::{failed, Engine, RepairAction, RunMeta};
use crate::error::{Error, Result};
use crate::migrate::files::{Body, Migration, Script};
use crate::migrate::plan::{AppliedMigration, RowState};
use crate::redact;

pub struct MongoEngine {
    service: String,
    client: Client,
    db: Database,
    lock: Lease,
    renewer: Option<tokio::task::JoinHandle<()>>,
    /// How long each command of the last migration applied took (ms).
    command_ms: Vec<u64>,
}

impl MongoEngine {
    /// How long each command of the last migration applied took, in ms.
    pub fn command_durations(&self) -> &[u64] {
        &self.command_ms
    }

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
            MIGRATE_LEASE,
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
            command_ms: Vec::new(),
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

    /// Notes on a dirty version's history row why it failed; best effort,
    /// the error itself is reported anyway.
    async fn note_failure(&self, version: u64, message: &str) {
        let _ = self
            .history_coll()
            .update_one(
                doc! {"_id": version as i64},
                doc! {"$set": {"detail": message}},
            )
            .await;
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
        &mut self,
        commands: &[Document],
        progress_of: Option<i64>,
    ) -> std::result::Result<(), (usize, String, bool)> {
        self.command_ms.clear();
        for (i, command) in commands.iter().enumerate() {
            let started = Instant::now();
            if let Err(e) = self.db.run_command(command.clone()).await {
                return Err((i, command_error_message(&e), is_connection_error(&e)));
            }
            self.command_ms.push(started.elapsed().as_millis() as u64);
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

#[async_trait]
impl Engine for MongoEngine {
    async fn capture_lag(
        &mut self,
        storage: &dyn crate::storage::Storage,
        env: &str,
    ) -> Option<crate::capture::Lag> {
        crate::capture::lag_without_database(storage, env, &self.service, EngineKind::Mongodb).await
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
                self.note_failure(m.version, &message).await;
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
            self.note_failure(m.version, &message).await;
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
        snapshot::take(&self.client, &self.db, &self.service, out).await
    }

    async fn restore_prepare(
        &mut self,
        storage: &dyn crate::storage::Storage,
        found: &crate::snapshot::Found,
        replay: Option<&crate::capture::ReplayPlan>,
        conduct: &crate::restore::Conduct,
    ) -> Result<crate::restore::RestoreStats> {
        if !found
            .manifest
            .engines
            .iter()
            .any(|e| e.engine == EngineKind::Mongodb)
        {
            return Err(Error::usage(format!(
                "snapshot {} has no MongoDB part for service {}",
                found.manifest.id, self.service
            )));
        }
        let (_, stats) = restore::prepare(
            &self.db,
            storage,
            found,
            &self.service,
            replay,
            conduct.masking.as_ref(),
        )
        .await?;
        Ok(stats)
    }

    async fn restore_commit(&mut self) -> Result<()> {
        restore::commit(&self.db, &self.service).await
    }

    async fn restore_abort(&mut self) {
        restore::abort(&self.db, &self.service).await
    }

    async fn recover(&mut self) -> Result<()> {
        restore::recover(&self.db, &self.service).await.map(|_| ())
    }

    async fn pending_recovery(&mut self) -> Result<Option<String>> {
        restore::pending_recovery(&self.db, &self.service).await
    }
}

impl Drop for MongoEngine {
    fn drop(&mut self) {
        if let Some(r) = self.renewer.take() {
            r.abort();
        }
    }
}
