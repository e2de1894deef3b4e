//! Taking one service's snapshot: every engine's objects, then the
//! manifest (last), then a read-back verification of everything written.

use std::time::Instant;

use tracing::Instrument;

use crate::error::{Error, Result};
use crate::service::session::LockedEngine;
use crate::snapshot::manifest::{Manifest, FORMAT_VERSION};
use crate::snapshot::{new_id, read_manifest, verify, Found, SnapshotWriter, MANIFEST};
use crate::storage::Storage;
use crate::units::human_bytes;

pub struct Request<'a> {
    pub environment: &'a str,
    pub reason: &'a str,
    pub release: Option<String>,
    pub label: Option<String>,
}

/// Snapshots every engine of a locked service. On any failure every object
/// written is deleted again and no manifest exists.
#[tracing::instrument(skip_all, fields(service = %service, snapshot = tracing::field::Empty))]
pub async fn take_service(
    storage: &dyn Storage,
    service: &str,
    slots: &mut [LockedEngine],
    req: &Request<'_>,
) -> Result<Found> {
    let started = Instant::now();
    let created_at = chrono::Utc::now();
    let id = new_id(created_at);
    tracing::Span::current().record("snapshot", id.as_str());
    let base = format!("{}/{service}/{id}", req.environment);
    tracing::info!(
        "{service}: taking {} snapshot {id} to {}",
        req.reason,
        storage.describe()
    );
    let mut writer = SnapshotWriter::new(storage, base.clone());
    let mut engines = Vec::new();
    for slot in slots.iter_mut() {
        let span = tracing::info_span!("engine", engine = %slot.engine.kind());
        match slot.engine.snapshot(&mut writer).instrument(span).await {
            Ok(info) => engines.push(info),
            Err(e) => {
                writer.discard().await;
                return Err(e);
            }
        }
    }
    let consistent_at = engines
        .iter()
        .map(|e| e.consistent_at)
        .max()
        .unwrap_or(created_at);
    let manifest = Manifest {
        format: FORMAT_VERSION,
        id,
        environment: req.environment.to_string(),
        service: service.to_string(),
        created_at,
        consistent_at,
        reason: req.reason.to_string(),
        release: req.release.clone(),
        label: req.label.clone(),
        tool_version: env!("CARGO_PKG_VERSION").to_string(),
        duration_ms: Some(started.elapsed().as_millis() as u64),
        engines,
        objects: writer.objects.clone(),
        encryption: storage
            .key()?
            .map(|k| crate::snapshot::manifest::EncryptionInfo {
                cipher: crate::crypto::CIPHER.to_string(),
                key_fingerprint: k.fingerprint(),
            }),
    };
    let json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| Error::internal(format!("manifest: {e}")))?;
    if let Err(e) = storage
        .put_bytes(&format!("{base}/{MANIFEST}"), &json)
        .await
    {
        writer.discard().await;
        return Err(e);
    }
    // Read back what was stored: the manifest and every object.
    let found = Found {
        base: base.clone(),
        manifest: manifest.clone(),
    };
    let check = async {
        let stored = read_manifest(storage, &base).await?;
        if stored != manifest {
            return Err(Error::integrity(
                format!("snapshot {base}: the stored manifest differs from the one written"),
                None,
            ));
        }
        verify(storage, &found).await
    }
    .await;
    if let Err(e) = check {
        // Manifest first, so the snapshot never looks complete while parts go.
        let _ = storage.delete(&format!("{base}/{MANIFEST}")).await;
        writer.discard().await;
        return Err(e);
    }
    tracing::info!(
        "{service}: snapshot {} complete and verified: {} objects, {} stored ({} raw) in {:.1}s",
        manifest.id,
        manifest.objects.len(),
        human_bytes(manifest.total_size()),
        human_bytes(manifest.objects.iter().map(|o| o.raw_size).sum()),
        started.elapsed().as_secs_f64()
    );
    Ok(found)
}
