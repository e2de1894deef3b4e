//! MongoDB restore of one database. MongoDB cannot swap a database
//! atomically, so: every collection is loaded into a temporary collection
//! (with its options, then its indexes) while a journal document records the
//! plan; the journal then flips to `swapping` (the commit point) and the
//! temporaries are renamed over the originals. If the process dies, the
//! next valero-db command on the service calls `recover`: before the commit
//! point it drops the temporaries (old state), after it finishes the renames
//! (new state).

use bson::{doc, Bson, Document, RawDocumentBuf};
use mongodb::Database;

use super::driver::{classify, LOCKS};
use super::snapshot::command_cursor;
use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::mask::Masking;
use crate::restore::RestoreStats;
use crate::snapshot::stream::ObjectStream;
use crate::snapshot::Found;
use crate::storage::Storage;

use super::driver::{JOURNAL, TMP_PREFIX};
use super::dump::{plan, DocumentReader, Planned};
const BATCH_DOCS: usize = 1000;
const BATCH_BYTES: usize = 8 << 20;

/// Where a restore's collections come from and go to.
struct Loading<'a> {
    db: &'a Database,
    storage: &'a dyn Storage,
    found: &'a Found,
    what: &'a str,
    masking: Option<&'a Masking>,
}

async fn load_collection(
    loading: &Loading<'_>,
    p: &Planned,
    tmp: &str,
    stats: &mut RestoreStats,
) -> Result<()> {
    let Loading {
        db,
        storage,
        found,
        what,
        masking,
    } = *loading;
    let mut create = doc! {"create": tmp};
    for (k, v) in &p.options {
        create.insert(k.clone(), v.clone());
    }
    db.run_command(create)
        .await
        .map_err(|e| classify(what, e))?;
    let started = std::time::Instant::now();
    if let Some(entry) = &p.data {
        let coll = db.collection::<RawDocumentBuf>(tmp);
        let progress = std::sync::Arc::new(crate::progress::Progress::bytes(format!(
            "{} mongodb: restore",
            found.manifest.service
        )));
        let stream = ObjectStream::open(storage, &found.base, entry)
            .await?
            .with_progress(&progress);
        let mut masker = masking.map(|m| super::masking::DocumentMasker::new(m, &p.name));
        let mut reader = DocumentReader::new(stream, &found.base, &entry.key);
        let mut batch: Vec<RawDocumentBuf> = Vec::new();
        let mut batch_bytes = 0usize;
        while let Some(mut raw) = reader.next().await? {
            if let Some(masked) = masker.as_mut().map(|m| m.mask(&raw)).transpose()?.flatten() {
                raw = masked;
            }
            batch_bytes += raw.as_bytes().len();
            batch.push(raw);
            if batch.len() >= BATCH_DOCS || batch_bytes >= BATCH_BYTES {
                stats.rows += batch.len() as u64;
                coll.insert_many(std::mem::take(&mut batch))
                    .bypass_document_validation(true)
                    .await
                    .map_err(|e| classify(what, e))?;
                batch_bytes = 0;
            }
        }
        stats.bytes += reader.bytes;
        if let Some(m) = masker {
            m.finish(service_of(found))?;
        }
        if !batch.is_empty() {
            stats.rows += batch.len() as u64;
            coll.insert_many(batch)
                .bypass_document_validation(true)
                .await
                .map_err(|e| classify(what, e))?;
        }
        stats.objects += 1;
    }
    let indexes: Vec<Bson> = p
        .indexes
        .iter()
        .filter(|i| i.get_str("name").ok() != Some("_id_"))
        .map(|i| {
            let mut i = i.clone();
            i.remove("v");
            i.remove("ns");
            Bson::Document(i)
        })
        .collect();
    tracing::debug!("{what}: loading {} took {:.2?}", p.name, started.elapsed());
    if !indexes.is_empty() {
        let started = std::time::Instant::now();
        db.run_command(doc! {"createIndexes": tmp, "indexes": indexes})
            .await
            .map_err(|e| classify(what, e))?;
        tracing::debug!(
            "{what}: indexes of {} took {:.2?}",
            p.name,
            started.elapsed()
        );
    }
    Ok(())
}

fn service_of(found: &Found) -> &str {
    &found.manifest.service
}

/// The options `collMod` can set again after a rename.
fn validation_options(options: &Document) -> Document {
    let mut out = Document::new();
    for key in ["validator", "validationLevel", "validationAction"] {
        if let Some(v) = options.get(key) {
            out.insert(key, v.clone());
        }
    }
    out
}

async fn collection_names(db: &Database, what: &str) -> Result<Vec<String>> {
    let specs = command_cursor(
        db,
        what,
        doc! {"listCollections": 1, "nameOnly": true, "cursor": {}},
        "$cmd.listCollections",
    )
    .await?;
    Ok(specs
        .iter()
        .filter_map(|s| s.get_str("name").ok().map(str::to_string))
        .collect())
}

async fn drop_tmp(db: &Database, token: &str, what: &str) -> Result<()> {
    let prefix = format!("{TMP_PREFIX}{token}_");
    for name in collection_names(db, what).await? {
        if name.starts_with(&prefix) {
            db.collection::<Document>(&name)
                .drop()
                .await
                .map_err(|e| classify(what, e))?;
        }
    }
    Ok(())
}

/// Phase one: loads every collection into temporaries under a journal in
/// state `loading`. Returns the token that names the temporaries.
pub async fn prepare(
    db: &Database,
    storage: &dyn Storage,
    found: &Found,
    service: &str,
    replay: Option<&crate::capture::ReplayPlan>,
    masking: Option<&Masking>,
) -> Result<(String, RestoreStats)> {
    let what = format!("MongoDB of service {service}");
    recover(db, service).await?;
    let planned = plan(storage, found).await?;
    if let Some(m) = masking {
        super::masking::check_collections(m, &planned, service, replay.is_some())?;
    }
    let token = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let journal = db.collection::<Document>(JOURNAL);
    let renames: Vec<Bson> = planned
        .iter()
        .enumerate()
        .filter(|(_, p)| p.kind != "view")
        .map(|(i, p)| Bson::Document(doc! {"tmp": format!("{TMP_PREFIX}{token}_{i}"), "name": &p.name, "validation": validation_options(&p.options)}))
        .collect();
    let views: Vec<Bson> = planned
        .iter()
        .filter(|p| p.kind == "view")
        .map(|p| Bson::Document(doc! {"name": &p.name, "options": p.options.clone()}))
        .collect();
    journal
        .insert_one(doc! {
            "_id": "restore", "state": "loading", "token": &token, "snapshot": &found.manifest.id,
            "renames": renames, "views": views, "keep": planned.iter().map(|p| Bson::String(p.name.clone())).collect::<Vec<_>>(),
            "started_at": bson::DateTime::now(),
        })
        .await
        .map_err(|e| classify(&what, e))?;
    let mut stats = RestoreStats::new(EngineKind::Mongodb);
    let loaded: Result<()> = async {
        for (i, p) in planned.iter().enumerate() {
            if p.kind == "view" {
                continue;
            }
            let loading = Loading {
                db,
                storage,
                found,
                what: &what,
                masking,
            };
            load_collection(&loading, p, &format!("{TMP_PREFIX}{token}_{i}"), &mut stats).await?;
        }
        if let Some(plan) = replay {
            let info = found
                .manifest
                .engines
                .iter()
                .find(|e| e.engine == EngineKind::Mongodb);
            let from = info
                .and_then(|info| crate::capture::snapshot_position(info).ok().flatten())
                .ok_or_else(|| {
                    Error::integrity(
                        format!("snapshot {} does not record its cluster time", found.base),
                        None,
                    )
                })?;
            let mut targets = super::capture::ReplayTargets {
                db,
                journal: JOURNAL,
                token: &token,
                map: planned
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.kind != "view")
                    .map(|(i, p)| (p.name.clone(), format!("{TMP_PREFIX}{token}_{i}")))
                    .collect(),
                created: 0,
            };
            let skip =
                |c: &str| c == LOCKS || c.starts_with(TMP_PREFIX) || c.starts_with("system.");
            stats.replayed = Some(
                super::capture::replay(
                    &mut targets,
                    storage,
                    plan,
                    info.map_or(db.name(), |i| i.target.as_str()),
                    from,
                    &skip,
                    &what,
                    masking,
                )
                .await?,
            );
        }
        Ok(())
    }
    .await;
    if let Err(e) = loaded {
        abort(db, service).await;
        return Err(e);
    }
    Ok((token, stats))
}

/// Phase two: flips the journal to `swapping` (the commit point), then
/// renames. Once the flip is stored, recovery always completes the restore.
pub async fn commit(db: &Database, service: &str) -> Result<()> {
    let what = format!("MongoDB of service {service}");
    db.collection::<Document>(JOURNAL)
        .update_one(
            doc! {"_id": "restore"},
            doc! {"$set": {"state": "swapping"}},
        )
        .await
        .map_err(|e| classify(&what, e))?;
    finish_swap(db, &what).await
}

/// Undoes phase one: drops the temporaries and the journal.
pub async fn abort(db: &Database, service: &str) {
    if let Err(e) = recover(db, service).await {
        tracing::warn!("service {service}: cleaning up the aborted MongoDB restore failed: {e}; the next command retries");
    }
}

/// Completes a restore whose journal says `swapping`: renames what is still
/// temporary, drops collections the snapshot did not have, recreates views,
/// deletes the journal. Idempotent, so it can be repeated after a crash.
async fn finish_swap(db: &Database, what: &str) -> Result<()> {
    let journal = db.collection::<Document>(JOURNAL);
    let Some(j) = journal
        .find_one(doc! {"_id": "restore"})
        .await
        .map_err(|e| classify(what, e))?
    else {
        return Ok(());
    };
    let existing = collection_names(db, what).await?;
    let db_name = db.name().to_string();
    let admin = db.client().database("admin");
    for r in j
        .get_array("renames")
        .map(|a| a.to_vec())
        .unwrap_or_default()
    {
        let Some(r) = r.as_document() else { continue };
        let (tmp, name) = (
            r.get_str("tmp").unwrap_or_default(),
            r.get_str("name").unwrap_or_default(),
        );
        if existing.iter().any(|e| e == tmp) {
            admin
                .run_command(doc! {"renameCollection": format!("{db_name}.{tmp}"), "to": format!("{db_name}.{name}"), "dropTarget": true})
                .await
                .map_err(|e| classify(what, e))?;
        }
        // MongoDB keeps a collection's options across a rename; some
        // wire-compatible servers drop them. Re-asserting the validation
        // settings is a no-op where they were kept.
        if let Ok(validation) = r.get_document("validation") {
            if !validation.is_empty() {
                let mut coll_mod = doc! {"collMod": name};
                coll_mod.extend(validation.clone());
                db.run_command(coll_mod)
                    .await
                    .map_err(|e| classify(what, e))?;
            }
        }
    }
    let keep: Vec<String> = j
        .get_array("keep")
        .map(|a| {
            a.iter()
                .filter_map(|b| b.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let token = j.get_str("token").unwrap_or_default().to_string();
    for name in collection_names(db, what).await? {
        let ours = name == LOCKS || name == JOURNAL || name.starts_with("system.");
        let views: Vec<&str> = j
            .get_array("views")
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_document()?.get_str("name").ok())
                    .collect()
            })
            .unwrap_or_default();
        if !ours && (!keep.contains(&name) || views.contains(&name.as_str())) {
            db.collection::<Document>(&name)
                .drop()
                .await
                .map_err(|e| classify(what, e))?;
        }
    }
    for v in j.get_array("views").map(|a| a.to_vec()).unwrap_or_default() {
        let Some(v) = v.as_document() else { continue };
        let mut create = doc! {"create": v.get_str("name").unwrap_or_default()};
        for (k, val) in v.get_document("options").cloned().unwrap_or_default() {
            create.insert(k, val);
        }
        db.run_command(create)
            .await
            .map_err(|e| classify(what, e))?;
    }
    drop_tmp(db, &token, what).await?;
    journal.drop().await.map_err(|e| classify(what, e))?;
    Ok(())
}

/// The journal of an interrupted restore, if there is one.
async fn interrupted(db: &Database, what: &str) -> Result<Option<Document>> {
    db.collection::<Document>(JOURNAL)
        .find_one(doc! {"_id": "restore"})
        .await
        .map_err(|e| classify(what, e))
}

/// What `recover` would do, read without changing anything: None when no
/// restore was interrupted.
pub async fn pending_recovery(db: &Database, service: &str) -> Result<Option<String>> {
    let what = format!("MongoDB of service {service}");
    let Some(j) = interrupted(db, &what).await? else {
        return Ok(None);
    };
    let snapshot = j.get_str("snapshot").unwrap_or("?");
    let verb = if j.get_str("state").ok() == Some("swapping") {
        "complete"
    } else {
        "undo"
    };
    Ok(Some(format!(
        "an interrupted restore of snapshot {snapshot} is pending; the next command that takes the lock will {verb} it"
    )))
}

/// Finishes or undoes a restore that was interrupted; `None` when there was
/// none. Called before any command works on the service.
pub async fn recover(db: &Database, service: &str) -> Result<Option<&'static str>> {
    let what = format!("MongoDB of service {service}");
    let journal = db.collection::<Document>(JOURNAL);
    let Some(j) = interrupted(db, &what).await? else {
        return Ok(None);
    };
    let snapshot = j.get_str("snapshot").unwrap_or("?").to_string();
    if j.get_str("state").ok() == Some("swapping") {
        tracing::warn!(
            "service {service}: completing the interrupted restore of snapshot {snapshot}"
        );
        finish_swap(db, &what).await?;
        Ok(Some("completed"))
    } else {
        tracing::warn!("service {service}: undoing the interrupted restore of snapshot {snapshot} (it had not reached its commit point)");
        drop_tmp(db, j.get_str("token").unwrap_or("none"), &what).await?;
        journal.drop().await.map_err(|e| classify(&what, e))?;
        Ok(Some("undone"))
    }
}
