//! MongoDB snapshot of one database in mongodump's layout:
//! `<collection>.bson` (concatenated BSON documents, as read) and
//! `<collection>.metadata.json` (options incl. validators, indexes, type,
//! uuid), each zstd-compressed. Collections are read in one snapshot
//! session (`readConcern: snapshot`) where the server supports it; otherwise
//! each collection is read on its own and the manifest says so.

use bson::{doc, Bson, Document, RawDocumentBuf};
use futures::TryStreamExt;
use mongodb::{ClientSession, Database};

use super::manifest::EngineInfo;
use super::{key_component, SnapshotWriter};
use crate::engine::mongodb::{classify, HISTORY, LOCKS};
use crate::error::{Error, Result};

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
    sink: &mut super::ObjectSink,
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

    let mut session = match client.start_session().snapshot(true).await {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!("no snapshot session: {e}");
            None
        }
    };
    let mut read_mode = if session.is_some() {
        "snapshot session"
    } else {
        "per collection"
    };
    let mut schema_version: Option<u64> = None;

    for spec in &specs {
        let name = spec.get_str("name").unwrap_or_default().to_string();
        if name.is_empty() || name == LOCKS || name.starts_with("system.") {
            continue;
        }
        let kind = spec.get_str("type").unwrap_or("collection").to_string();
        let options = spec.get_document("options").cloned().unwrap_or_default();
        let uuid = match spec.get_document("info").ok().and_then(|i| i.get("uuid")) {
            Some(Bson::Binary(b)) => hex::encode(&b.bytes),
            _ => String::new(),
        };
        let indexes = if kind == "view" {
            Vec::new()
        } else {
            command_cursor(db, &what, doc! {"listIndexes": &name, "cursor": {}}, &name).await?
        };
        let metadata = doc! {
            "options": options,
            "indexes": indexes.into_iter().map(Bson::Document).collect::<Vec<_>>(),
            "uuid": uuid,
            "collectionName": &name,
            "type": &kind,
        };
        let json = serde_json::to_vec_pretty(&Bson::Document(metadata).into_relaxed_extjson())
            .map_err(|e| Error::internal(format!("metadata of {name}: {e}")))?;
        let base = format!("mongodb/{}", key_component(&name));
        let mut sink = out
            .object(
                &format!("{base}.metadata.json.zst"),
                "mongodb/metadata",
                Some(&name),
            )
            .await?;
        sink.write(&json).await?;
        let entry = sink.finish().await?;
        out.add(entry);
        if kind == "view" {
            continue;
        }

        let mut sink = out
            .object(
                &format!("{base}.bson.zst"),
                "mongodb/collection",
                Some(&name),
            )
            .await?;
        let mut result = stream_collection(db, &name, session.as_mut(), &mut sink).await;
        if result.is_err() && session.is_some() && sink.raw_bytes() == 0 {
            // The server refused snapshot reads: fall back, and say so.
            tracing::warn!("service {service}: MongoDB snapshot reads are not available; reading collection by collection");
            session = None;
            read_mode = "per collection";
            result = stream_collection(db, &name, None, &mut sink).await;
        }
        let count = match result {
            Ok(c) => c,
            Err(e) => {
                sink.abort().await;
                return Err(classify(&what, e));
            }
        };
        let mut entry = sink.finish().await?;
        entry.rows = Some(count);
        out.add(entry);
        if name == HISTORY {
            schema_version = history_version(db).await;
        }
    }

    Ok(EngineInfo {
        engine: "mongodb".into(),
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

async fn history_version(db: &Database) -> Option<u64> {
    let coll = db.collection::<Document>(HISTORY);
    let d = coll
        .find_one(doc! {"state": "applied"})
        .sort(doc! {"_id": -1})
        .await
        .ok()??;
    d.get_i64("_id").ok().map(|v| v as u64)
}
