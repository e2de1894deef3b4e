//! S3 storage (AWS or any S3-compatible store): streamed multipart uploads
//! with a bounded buffer, parts uploaded concurrently, part size growing so
//! that objects of several TB stay under 10,000 parts, and an aborted upload
//! on any failure so no partial object remains. Transient errors are retried
//! by the SDK's standard retry mode (exponential backoff with jitter).

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, ServerSideEncryption};
use aws_sdk_s3::Client;
use tokio::task::JoinSet;

use super::seam::{validate_key, ObjectInfo, ObjectReader, ObjectWriter, Storage};
use crate::config::S3Settings;
use crate::error::{Error, Result};
use crate::redact;

const MIN_PART: u64 = 5 << 20;
const DEFAULT_PART: u64 = 8 << 20;
const DEFAULT_CONCURRENCY: usize = 4;
/// After this many parts the part size doubles: 1000 × 8 MiB, then
/// 1000 × 16 MiB, ... reaches several TB well before 10,000 parts.
const PARTS_PER_SIZE_STEP: i32 = 1000;

pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
    /// The environment whose folder `check` lists.
    scope: String,
    part_size: u64,
    concurrency: usize,
    sse: Option<String>,
    sse_kms_key_id: Option<String>,
}

/// Maps an SDK error (after the SDK's own retries) to the contract: the
/// server down, overloaded (5xx, throttling) or refusing the credentials is
/// "storage unreachable" (exit 3); a missing object is an integrity error.
fn classify<E>(what: &str, e: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let detail = match &e {
        SdkError::ServiceError(s) => {
            let err = s.err();
            let mut text = format!("HTTP {}", s.raw().status().as_u16());
            if let Some(code) = err.code() {
                text.push_str(&format!(" {code}"));
            }
            if let Some(message) = err.message() {
                text.push_str(&format!(": {message}"));
            }
            text
        }
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                text.push_str(&format!(": {s}"));
                source = s.source();
            }
            text
        }
    };
    let detail = redact::redact(&detail);
    match &e {
        SdkError::ServiceError(s) => {
            let status = s.raw().status().as_u16();
            match s.err().code() {
                Some("NoSuchKey") => {
                    Error::integrity(format!("S3 object {what} is missing: {detail}"), None)
                }
                _ if status == 404 && what.starts_with("bucket ") => Error::unreachable(
                    format!("S3 storage ({what})"),
                    format!("{detail}: the bucket does not exist"),
                ),
                Some(
                    "NoSuchBucket"
                    | "AccessDenied"
                    | "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "SlowDown"
                    | "ServiceUnavailable"
                    | "InternalError"
                    | "RequestTimeout"
                    | "Throttling",
                ) => Error::unreachable(format!("S3 storage ({what})"), retried(detail)),
                _ if status >= 500 || status == 403 || status == 429 => {
                    Error::unreachable(format!("S3 storage ({what})"), retried(detail))
                }
                _ => Error::internal(format!("S3 {what}: {detail}")),
            }
        }
        _ => Error::unreachable(format!("S3 storage ({what})"), retried(detail)),
    }
}

fn retried(detail: String) -> String {
    format!("{detail} (after {MAX_ATTEMPTS} attempts with backoff)")
}

/// Attempts per request in the SDK's standard retry mode.
const MAX_ATTEMPTS: u32 = 5;

impl S3Storage {
    pub async fn new(bucket: &str, prefix: &str, settings: &S3Settings) -> Result<Self> {
        use aws_config::retry::RetryConfig;
        use aws_config::{BehaviorVersion, Region};
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).retry_config(
            RetryConfig::standard()
                .with_max_attempts(MAX_ATTEMPTS)
                .with_initial_backoff(std::time::Duration::from_millis(200)),
        );
        if let Some(region) = &settings.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        builder = builder.force_path_style(settings.force_path_style);
        let part_size = settings.part_size.unwrap_or(DEFAULT_PART);
        if part_size < MIN_PART {
            return Err(Error::usage(format!(
                "s3.part_size must be at least 5MiB, not {part_size} bytes"
            )));
        }
        Ok(S3Storage {
            client: Client::from_conf(builder.build()),
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
            scope: String::new(),
            part_size,
            concurrency: settings.concurrency.unwrap_or(DEFAULT_CONCURRENCY).max(1),
            sse: settings.sse.clone(),
            sse_kms_key_id: settings.sse_kms_key_id.clone(),
        })
    }

    /// Limits `check` to the folder of environment `env`.
    pub fn scoped(mut self, env: &str) -> Self {
        self.scope = env.to_string();
        self
    }

    fn full_key(&self, key: &str) -> Result<String> {
        validate_key(key).map_err(|m| Error::integrity(m, None))?;
        Ok(if self.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.prefix)
        })
    }

    fn sse(&self) -> Option<ServerSideEncryption> {
        self.sse.as_deref().map(ServerSideEncryption::from)
    }
}

struct S3Writer {
    client: Client,
    bucket: String,
    key: String,
    buf: Vec<u8>,
    part_size: u64,
    concurrency: usize,
    upload_id: Option<String>,
    next_part: i32,
    in_flight: JoinSet<Result<CompletedPart>>,
    done: Vec<CompletedPart>,
    sse: Option<ServerSideEncryption>,
    sse_kms_key_id: Option<String>,
}

impl S3Writer {
    async fn start_multipart(&mut self) -> Result<String> {
        if let Some(id) = &self.upload_id {
            return Ok(id.clone());
        }
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .set_server_side_encryption(self.sse.clone())
            .set_ssekms_key_id(self.sse_kms_key_id.clone())
            .send()
            .await
            .map_err(|e| classify(&self.key, e))?;
        let id = out.upload_id().unwrap_or_default().to_string();
        self.upload_id = Some(id.clone());
        Ok(id)
    }

    /// Sends the buffer as the next part, waiting while `concurrency`
    /// parts are already in flight, so memory stays bounded.
    async fn flush_part(&mut self) -> Result<()> {
        let upload_id = self.start_multipart().await?;
        while self.in_flight.len() >= self.concurrency {
            self.collect_one().await?;
        }
        let part_number = self.next_part;
        self.next_part += 1;
        if part_number % PARTS_PER_SIZE_STEP == 0 {
            self.part_size *= 2;
        }
        let body = std::mem::replace(&mut self.buf, Vec::with_capacity(self.part_size as usize));
        let client = self.client.clone();
        let (bucket, key) = (self.bucket.clone(), self.key.clone());
        self.in_flight.spawn(async move {
            let out = client
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(upload_id)
                .part_number(part_number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| classify(&key, e))?;
            Ok(CompletedPart::builder()
                .part_number(part_number)
                .set_e_tag(out.e_tag().map(str::to_string))
                .build())
        });
        Ok(())
    }

    async fn collect_one(&mut self) -> Result<()> {
        if let Some(joined) = self.in_flight.join_next().await {
            let part =
                joined.map_err(|e| Error::internal(format!("upload task failed: {e}")))??;
            self.done.push(part);
        }
        Ok(())
    }

    async fn abort_upload(&mut self) {
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        if let Some(id) = self.upload_id.take() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.key)
                .upload_id(id)
                .send()
                .await;
        }
    }

    async fn complete(&mut self) -> Result<()> {
        if self.upload_id.is_none() {
            // Small object: one PUT is atomic by itself.
            let body = std::mem::take(&mut self.buf);
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.key)
                .set_server_side_encryption(self.sse.clone())
                .set_ssekms_key_id(self.sse_kms_key_id.clone())
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| classify(&self.key, e))?;
            return Ok(());
        }
        if !self.buf.is_empty() {
            self.flush_part().await?;
        }
        while !self.in_flight.is_empty() {
            self.collect_one().await?;
        }
        self.done.sort_by_key(|p| p.part_number());
        let upload_id = self.upload_id.clone().unwrap_or_default();
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(std::mem::take(&mut self.done)))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| classify(&self.key, e))?;
        self.upload_id = None;
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, mut chunk: &[u8]) -> Result<()> {
        while !chunk.is_empty() {
            let room = self.part_size as usize - self.buf.len();
            let take = room.min(chunk.len());
            self.buf.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.buf.len() as u64 >= self.part_size {
                if let Err(e) = self.flush_part().await {
                    self.abort_upload().await;
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<()> {
        if let Err(e) = self.complete().await {
            self.abort_upload().await;
            return Err(e);
        }
        Ok(())
    }

    async fn abort(mut self: Box<Self>) {
        self.abort_upload().await;
    }
}

struct S3Reader {
    body: ByteStream,
    key: String,
}

#[async_trait]
impl ObjectReader for S3Reader {
    async fn next_chunk(&mut self) -> Result<Option<bytes::Bytes>> {
        self.body.try_next().await.map_err(|e| {
            Error::unreachable(
                format!("S3 storage ({})", self.key),
                redact::redact(&e.to_string()),
            )
        })
    }
}

#[async_trait]
impl Storage for S3Storage {
    fn describe(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    async fn put(&self, key: &str) -> Result<Box<dyn ObjectWriter>> {
        Ok(Box::new(S3Writer {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: self.full_key(key)?,
            buf: Vec::new(),
            part_size: self.part_size,
            concurrency: self.concurrency,
            upload_id: None,
            next_part: 1,
            in_flight: JoinSet::new(),
            done: Vec::new(),
            sse: self.sse(),
            sse_kms_key_id: self.sse_kms_key_id.clone(),
        }))
    }

    async fn get(&self, key: &str) -> Result<Box<dyn ObjectReader>> {
        let full = self.full_key(key)?;
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&full)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(Box::new(S3Reader {
            body: out.body,
            key: key.to_string(),
        }))
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let mut out = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(format!("{base}{prefix}"))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| classify("list", e))?;
            for o in page.contents() {
                if let Some(k) = o.key().and_then(|k| k.strip_prefix(&base)) {
                    out.push(ObjectInfo {
                        key: k.to_string(),
                        size: o.size().unwrap_or(0) as u64,
                    });
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_string()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let full = self.full_key(key)?;
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(full)
            .send()
            .await
            .map_err(|e| classify(key, e))?;
        Ok(())
    }

    /// Lists at most one key under the environment's folder: proves the
    /// endpoint, bucket and credentials with the same permission the rest
    /// needs (`s3:ListBucket` limited to the prefix; HeadBucket would need
    /// it unconditioned).
    async fn check(&self) -> Result<()> {
        let base = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        self.client
            .list_objects_v2()
            .bucket(&self.bucket)
            .prefix(format!("{base}{}/", self.scope))
            .max_keys(1)
            .send()
            .await
            .map_err(|e| classify(&format!("bucket {}", self.bucket), e))?;
        Ok(())
    }
}
