//! The MongoDB lease: a document with an expiry in `valero_schema_lock`,
//! the per-service lock of migrations and of capture.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::{Collection, Database};

use super::driver::{classify, is_duplicate_key, LOCKS};
use crate::error::Result;

/// The lease id of the migration lock.
pub const MIGRATE_LEASE: &str = "migrate";

/// How long a lease lives without renewal. A crashed holder blocks others
/// for at most this long. `VALERO_DB_MONGO_LEASE_TTL` (seconds) overrides.
pub(crate) fn lease_ttl() -> Duration {
    seconds_from_env("VALERO_DB_MONGO_LEASE_TTL", 30)
}

/// A positive number of seconds from the variable `var`, else `default`.
pub(crate) fn seconds_from_env(var: &str, default: u64) -> Duration {
    std::env::var(var)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(default))
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
            "host": crate::engine::seam::hostname(),
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
