//! MongoDB snapshot of one database in mongodump's layout:
//! `<collection>.bson` (concatenated BSON documents, as read) and
//! `<collection>.metadata.json` (options incl. validators, indexes, type,
//! uuid), each zstd-compressed. Collections are read in one snapshot
//! session (`readConcern: snapshot`) where the server supports it; otherwise
//! each collection is read on its own and the manifest says so.

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::{ClientSession, Database};

use super::driver::{classify, HISTORY, LOCKS};
use crate::config::EngineKind;
use crate::error::{Error, Result};
use crate::snapshot::manifest::EngineInfo;
use crate::snapshot::{key_component, ObjectKind, ObjectSink, SnapshotWriter};

/// The documents of a command's reply cursor (first batch and getMores).
pub async fn command_cursor(
    db: &Database,
    what: &str,
    command: Document,
    coll_for_more: &str,
) -> Result<Vec<Document>> {
    let reply = db
        .run_command(command)
        .await
        .map_err(|e| classify(what, e))?;
    let cursor = reply
        .get_document("cursor")
        .map_err(|_| Error::internal(format!("{what}: reply without cursor")))?;
    let mut docs: Vec<Document> = cursor
        .get_array("firstBatch")
        .map(|a| a.iter().filter_map(|b| b.as_document().cloned()).collect())
        .unwrap_or_default();
    let mut id = cursor.get_i64("id").unwrap_or(0);
    while id != 0 {
        let more = db
            .run_command(doc! {"getMore": id, "collection": coll_for_more})
            .await
            .map_err(|e| classify(what, e))?;
        let c = more
            .get_document("cursor")
            .map_err(|_| Error::internal(format!("{what}: reply without cursor")))?;
        docs.extend(
            c.get_array("nextBatch")
                .map(|a| {
                    a.iter()
                        .filter_map(|b| b.as_document().cloned())
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default(),
        );
        id = c.get_i64("id").unwrap_or(0);
    }
    Ok(docs)
}

async fn stream_collection(
    db: &Database,
    name: &str,
    session: Option<&mut ClientSession>,
    sink: &mut ObjectSink,
) -> std::result::Result<u64, mongodb::error::Error> {
    let coll = db.collection::<RawDocumentBuf>(name);
    let mut count = 0u64;
    match session {
        Some(s) => {
            let mut cursor = coll.find(doc! {}).session(&mut *s).await?;
            let mut stream = cursor.stream(s);
            while let Some(d) = stream.try_next().await? {
                count += 1;
                sink.write(d.as_bytes())
                    .await
                    .map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
            }
        }
        None => {
            let mut cursor = coll.find(doc! {}).await?;
            while let Some(d) = cursor.try_next().await? {
                count += 1;
                sink.write(d.as_bytes())
                    .await
                    .map_err(|e| mongodb::error::Error::custom(e.to_string()))?;
            }
        }
    }
    Ok(count)
}

pub async fn take(
    client: &mongodb::Client,
    db: &Database,
    service: &str,
    out: &mut SnapshotWriter<'_>,
) -> Result<EngineInfo> {
    let what = format!("MongoDB of service {service}");
    let hello = db
        .run_command(doc! {"hello": 1})
        .await
        .map_err(|e| classify(&what, e))?;
    let build = db
        .run_command(doc! {"buildInfo": 1})
        .await
        .map_err(|e| classify(&what, e))?;
    let server_version = build.get_str("version").unwrap_or("unknown").to_string();
    let cluster_time = hello.get_timestamp("operationTime").ok();
    let consistent_at = hello
        .get_datetime("localTime")
        .map(|d| d.to_chrono())
        .unwrap_or_else(|_| chrono::Utc::now());

    let mut specs = command_cursor(
        db,
        &what,
        doc! {"listCollections": 1, "cursor": {}},
        "$cmd.listCollections",
    )
    .await?;
    specs.sort_by(|a, b| {
        a.get_str("name")
            .unwrap_or("")
            .cmp(b.get_str("name").unwrap_or(""))
    });

    let mut reader = Reader {
        db,
        what: &what,
        session: match client.start_session().snapshot(true).await {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::debug!("no snapshot session: {e}");
                None
            }
        },
    };
    let mut schema_version: Option<u64> = None;
    for spec in &specs {
        let name = spec.get_str("name").unwrap_or_default().to_string();
        if name.is_empty() || name == LOCKS || name.starts_with("system.") {
            continue;
        }
        let is_view = spec.get_str("type").unwrap_or("collection") == "view";
        write_metadata(db, &what, spec, &name, out).await?;
        if is_view {
            continue;
        }
        reader.write_documents(service, &name, out).await?;
        if name == HISTORY {
            schema_version = history_version(db).await;
        }
    }
    let read_mode = if reader.session.is_some() {
        "snapshot session"
    } else {
        "per collection"
    };
    Ok(EngineInfo {
        engine: EngineKind::Mongodb,
        target: db.name().to_string(),
        server_version,
        schema_version,
        consistent_at,
        position: serde_json::json!({
            "cluster_time": cluster_time.map(|t| serde_json::json!({"t": t.time, "i": t.increment})),
            "read_mode": read_mode,
        }),
    })
}

/// One collection's options, indexes and uuid, in mongodump's layout.
async fn write_metadata(
    db: &Database,
    what: &str,
    spec: &Document,
    name: &str,
    out: &mut SnapshotWriter<'_>,
) -> Result<()> {
    let kind = spec.get_str("type").unwrap_or("collection").to_string();
    let options = spec.get_document("options").cloned().unwrap_or_default();
    let uuid = match spec.get_document("info").ok().and_then(|i| i.get("uuid")) {
        Some(Bson::Binary(b)) => hex::encode(&b.bytes),
        _ => String::new(),
    };
    let indexes = if kind == "view" {
        Vec::new()
    } else {
        command_cursor(db, what, doc! {"listIndexes": name, "cursor": {}}, name).await?
    };
    let metadata = doc! {
        "options": options,
        "indexes": indexes.into_iter().map(Bson::Document).collect::<Vec<_>>(),
        "uuid": uuid,
        "collectionName": name,
        "type": &kind,
    };
    let json = serde_json::to_vec_pretty(&Bson::Document(metadata).into_relaxed_extjson())
        .map_err(|e| Error::internal(format!("metadata of {name}: {e}")))?;
    let mut sink = out
        .object(
            &format!("mongodb/{}.metadata.json.zst", key_component(name)),
            ObjectKind::MongoMetadata,
            Some(name),
        )
        .await?;
    sink.write(&json).await?;
    let entry = sink.finish().await?;
    out.add(entry);
    Ok(())
}

/// Reads collections through one snapshot session while the server allows
/// it, else collection by collection.
struct Reader<'a> {
    db: &'a Database,
    what: &'a str,
    session: Option<ClientSession>,
}

impl Reader<'_> {
    /// One collection's documents, raw BSON one after another.
    async fn write_documents(
        &mut self,
        service: &str,
        name: &str,
        out: &mut SnapshotWriter<'_>,
    ) -> Result<()> {
        let mut sink = out
            .object(
                &format!("mongodb/{}.bson.zst", key_component(name)),
                ObjectKind::MongoCollection,
                Some(name),
            )
            .await?;
        let mut result = stream_collection(self.db, name, self.session.as_mut(), &mut sink).await;
        if result.is_err() && self.session.is_some() && sink.raw_bytes() == 0 {
            // The server refused snapshot reads: fall back, and say so.
            tracing::warn!("service {service}: MongoDB snapshot reads are not available; reading collection by collection");
            self.session = None;
            result = stream_collection(self.db, name, None, &mut sink).await;
        }
        let count = match result {
            Ok(c) => c,
            Err(e) => {
                sink.abort().await;
                return Err(classify(self.what, e));
            }
        };
        let mut entry = sink.finish().await?;
        entry.rows = Some(count);
        out.add(entry);
        Ok(())
    }
}

async fn history_version(db: &Database) -> Option<u64> {
    let coll = db.collection::<Document>(HISTORY);
    let d = coll
        .find_one(doc! {"state": "applied"})
        .sort(doc! {"_id": -1})
        .await
        .ok()??;
    d.get_i64("_id").ok().map(|v| v as u64)
}
