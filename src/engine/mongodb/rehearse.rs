//! Scratch databases for MongoDB rehearsals, on the service's own server.
//! MongoDB has no sessions bound to a database, so a running rehearsal
//! proves it is alive with a heartbeat document renewed every few seconds;
//! a scratch database whose heartbeat is older than `stale_after()` was
//! left by a killed run and is dropped by the next one.

use std::time::Duration;

use bson::doc;
use mongodb::{Client, Database};

use super::driver::{classify, connect_client};
use super::lease::seconds_from_env;
use crate::engine::scratch_prefix;
use crate::error::Result;

const HEARTBEAT: &str = "valero_rehearsal";
const BEAT: Duration = Duration::from_secs(2);

/// How old a heartbeat may be before its scratch database counts as left
/// behind: `$VALERO_DB_REHEARSE_STALE` seconds, default 30.
fn stale_after() -> Duration {
    seconds_from_env("VALERO_DB_REHEARSE_STALE", 30)
}

pub struct MongoScratch {
    client: Client,
    pub database: String,
    heartbeat: tokio::task::JoinHandle<()>,
}

impl MongoScratch {
    /// Drops leftovers of killed rehearsals, then names a new scratch
    /// database and starts its heartbeat.
    pub async fn create(live_url: &str, service: &str, database: &str) -> Result<MongoScratch> {
        let what = format!("MongoDB of service {service}");
        let client = connect_client(&what, live_url).await?;
        let prefix = scratch_prefix(service, database);
        let names = client
            .list_database_names()
            .await
            .map_err(|e| classify(&what, e))?;
        for name in names.iter().filter(|n| n.starts_with(&prefix)) {
            if is_stale(&client.database(name)).await {
                client
                    .database(name)
                    .drop()
                    .await
                    .map_err(|e| classify(&what, e))?;
                tracing::info!(
                    "{service}: dropped scratch database {name} left by an earlier rehearsal"
                );
            }
        }
        let name = format!(
            "{prefix}{}_{}",
            chrono::Utc::now().format("%Y%m%d%H%M%S"),
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let db = client.database(&name);
        beat(&db).await.map_err(|e| classify(&what, e))?;
        let renewing = db.clone();
        let heartbeat = tokio::spawn(async move {
            loop {
                tokio::time::sleep(BEAT).await;
                let _ = beat(&renewing).await;
            }
        });
        Ok(MongoScratch {
            client,
            database: name,
            heartbeat,
        })
    }

    pub async fn drop(self) -> Result<()> {
        self.heartbeat.abort();
        let what = format!("MongoDB scratch database {}", self.database);
        self.client
            .database(&self.database)
            .drop()
            .await
            .map_err(|e| classify(&what, e))
    }
}

async fn beat(db: &Database) -> mongodb::error::Result<()> {
    db.collection::<bson::Document>(HEARTBEAT)
        .update_one(
            doc! {"_id": "heartbeat"},
            doc! {"$set": {"at": bson::DateTime::now(), "pid": std::process::id() as i64}},
        )
        .upsert(true)
        .await
        .map(|_| ())
}

/// No heartbeat, or one older than `stale_after()`.
async fn is_stale(db: &Database) -> bool {
    let found = db
        .collection::<bson::Document>(HEARTBEAT)
        .find_one(doc! {"_id": "heartbeat"})
        .await;
    let at = match found {
        Ok(Some(d)) => d.get_datetime("at").ok().copied(),
        _ => None,
    };
    let Some(at) = at else { return true };
    let age = bson::DateTime::now().timestamp_millis() - at.timestamp_millis();
    age > stale_after().as_millis() as i64
}
