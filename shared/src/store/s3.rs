//! The S3 backend (AWS S3 or any S3-compatible server such as Garage or MinIO).
//!
//! Objects become visible only when a PUT or a multipart upload completes, so readers never see
//! partial objects. Large bodies and files go up in parts, a few at a time; a failed multipart
//! upload is aborted so that no orphaned parts are left behind.

use super::{Location, ObjectInfo, S3Settings, Store, StoreError, check_key, join_key};
use anyhow::Context as _;
use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use std::future::Future;
use std::path::Path;

const MIB: u64 = 1024 * 1024;
/// S3's smallest allowed part (all but the last part of a multipart upload).
const MIN_PART_SIZE: u64 = 5 * MIB;
/// S3's largest number of parts in one upload.
const MAX_PARTS: u64 = 10_000;
/// Parts in flight at once during a multipart upload.
const PARALLEL_PARTS: usize = 4;

/// A [`Store`] rooted at `s3://bucket/prefix`.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix without leading or trailing slashes; may be empty.
    prefix: String,
    multipart_threshold: u64,
    part_size: u64,
    list_page_size: Option<i32>,
    max_attempts: u32,
}

/// Builds an S3 client from `settings`: endpoint, region, addressing style, credentials from the
/// named environment variables, retries, and checksums only where the API requires them
/// (S3-compatible servers such as Garage reject or mishandle the newer default checksums).
pub fn build_client(settings: &S3Settings) -> Result<Client, String> {
    let credential = |var: &str, what: &str| match std::env::var(var) {
        Ok(value) if !value.is_empty() => Ok(value),
        _ => Err(format!(
            "the environment variable {var} is not set: it must hold the S3 {what} (the variable's \
             name comes from the S3 settings)"
        )),
    };
    let access_key = credential(&settings.access_key_env, "access key id")?;
    let secret_key = credential(&settings.secret_key_env, "secret access key")?;

    let endpoint = settings
        .endpoint
        .clone()
        .filter(|e| !e.is_empty())
        .or_else(|| {
            std::env::var("AWS_ENDPOINT_URL")
                .ok()
                .filter(|e| !e.is_empty())
        });
    let region = settings
        .region
        .clone()
        .filter(|r| !r.is_empty())
        .or_else(|| std::env::var("AWS_REGION").ok().filter(|r| !r.is_empty()))
        .unwrap_or_else(|| "us-east-1".to_string());
    let path_style = settings.path_style.unwrap_or(endpoint.is_some());

    let mut builder = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.clone()))
        .credentials_provider(Credentials::new(
            access_key,
            secret_key,
            None,
            None,
            "slim-environment",
        ))
        .force_path_style(path_style)
        .retry_config(RetryConfig::standard().with_max_attempts(settings.max_attempts.max(1)))
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
    if let Some(endpoint) = &endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    tracing::debug!(
        endpoint = endpoint.as_deref().unwrap_or("(AWS)"),
        region,
        path_style,
        max_attempts = settings.max_attempts,
        "built S3 client"
    );
    Ok(Client::from_conf(builder.build()))
}

impl S3Store {
    /// A store rooted at `s3://bucket/prefix`. Fails when the settings are unusable (missing
    /// credentials, bad part sizes); does not contact the server.
    pub async fn connect(
        bucket: &str,
        prefix: &str,
        settings: &S3Settings,
    ) -> Result<Self, StoreError> {
        let prefix = prefix.trim_matches('/').to_string();
        let root = Location::S3 {
            bucket: bucket.to_string(),
            key: prefix.clone(),
        };
        let invalid = |message: String| StoreError::InvalidLocation {
            location: root.to_string(),
            message,
        };
        if bucket.is_empty() {
            return Err(invalid("an S3 location needs a bucket name".into()));
        }
        if settings.part_size_mib == 0 {
            return Err(invalid("part_size_mib must be at least 1".into()));
        }
        let client = build_client(settings).map_err(invalid)?;
        let mut part_size = settings.part_size_mib * MIB;
        if part_size < MIN_PART_SIZE {
            tracing::warn!(
                part_size_mib = settings.part_size_mib,
                "S3 parts must be at least 5 MiB; using 5 MiB"
            );
            part_size = MIN_PART_SIZE;
        }
        Ok(Self {
            client,
            bucket: bucket.to_string(),
            prefix,
            multipart_threshold: settings.multipart_threshold_mib * MIB,
            part_size,
            list_page_size: None,
            max_attempts: settings.max_attempts.max(1),
        })
    }

    /// Caps the number of keys per ListObjectsV2 page (the server's default is 1000); tests use
    /// it to exercise pagination.
    pub fn with_list_page_size(mut self, keys: i32) -> Self {
        self.list_page_size = Some(keys.max(1));
        self
    }

    /// The underlying client, for operations this interface does not cover.
    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The full object key of a store key.
    pub fn object_key(&self, key: &str) -> String {
        join_key(&self.prefix, key)
    }

    fn uri(&self, object_key: &str) -> String {
        format!("s3://{}/{}", self.bucket, object_key)
    }

    async fn put_object(&self, key: &str, body: ByteStream, size: u64) -> Result<(), StoreError> {
        let object_key = self.object_key(key);
        tracing::debug!(uri = %self.uri(&object_key), bytes = size, "PUT object");
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .content_length(size as i64)
            .body(body)
            .send()
            .await
            .map_err(|e| sdk_error(&self.uri(&object_key), e))?;
        Ok(())
    }

    /// Uploads `size` bytes in parts; `part_body(offset, length)` yields each part's body.
    /// The upload is aborted on any failure, and also when this future is dropped half-way.
    async fn put_multipart<F, Fut>(
        &self,
        key: &str,
        size: u64,
        part_body: F,
    ) -> Result<(), StoreError>
    where
        F: Fn(u64, u64) -> Fut,
        Fut: Future<Output = Result<ByteStream, StoreError>>,
    {
        let object_key = self.object_key(key);
        let uri = self.uri(&object_key);
        let part_size = part_size_for(self.part_size, size);
        let parts = size.div_ceil(part_size).max(1);
        tracing::debug!(%uri, bytes = size, parts, part_size, "multipart upload");

        // Created in a task of its own: should this future be dropped while the request is in
        // flight, the server may still open the upload, and only that task learns its id. It
        // then aborts the upload itself instead of leaving it (and later parts) orphaned.
        let (created_tx, created_rx) = tokio::sync::oneshot::channel();
        let (client, bucket, create_key) =
            (self.client.clone(), self.bucket.clone(), object_key.clone());
        tokio::spawn(async move {
            let created = client
                .create_multipart_upload()
                .bucket(&bucket)
                .key(&create_key)
                .send()
                .await;
            if let Err(Ok(orphan)) = created_tx.send(created)
                && let Some(upload_id) = orphan.upload_id()
            {
                let mut guard = AbortOnDrop {
                    client,
                    bucket,
                    key: create_key,
                    upload_id: Some(upload_id.to_string()),
                };
                guard.abort().await;
            }
        });
        let created = created_rx
            .await
            .map_err(|_| StoreError::Remote {
                uri: uri.clone(),
                message: "CreateMultipartUpload was cancelled".into(),
            })?
            .map_err(|e| sdk_error(&uri, e))?;
        let upload_id = created.upload_id().ok_or_else(|| StoreError::Remote {
            uri: uri.clone(),
            message: "CreateMultipartUpload returned no upload id".into(),
        })?;
        let mut guard = AbortOnDrop {
            client: self.client.clone(),
            bucket: self.bucket.clone(),
            key: object_key.clone(),
            upload_id: Some(upload_id.to_string()),
        };

        let uploaded: Result<Vec<CompletedPart>, StoreError> = futures::stream::iter(0..parts)
            .map(|index| {
                let offset = index * part_size;
                let length = part_size.min(size - offset);
                let part_number = (index + 1) as i32;
                let (uri, object_key, part_body) = (&uri, &object_key, &part_body);
                async move {
                    let body = part_body(offset, length).await?;
                    let done = self
                        .client
                        .upload_part()
                        .bucket(&self.bucket)
                        .key(object_key)
                        .upload_id(upload_id)
                        .part_number(part_number)
                        .content_length(length as i64)
                        .body(body)
                        .send()
                        .await
                        .map_err(|e| sdk_error(&format!("{uri} (part {part_number})"), e))?;
                    Ok(CompletedPart::builder()
                        .set_e_tag(done.e_tag().map(str::to_string))
                        .part_number(part_number)
                        .build())
                }
            })
            .buffered(PARALLEL_PARTS)
            .try_collect()
            .await;

        let completed = match uploaded {
            Ok(parts) => self
                .client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(&object_key)
                .upload_id(upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map(drop)
                .map_err(|e| sdk_error(&uri, e)),
            Err(e) => Err(e),
        };
        match completed {
            Ok(()) => {
                guard.upload_id = None;
                Ok(())
            }
            Err(e) => {
                tracing::warn!(%uri, error = %e, "multipart upload failed; aborting it");
                guard.abort().await;
                Err(e)
            }
        }
    }
}

/// The part size for an object of `size` bytes: the configured size, grown when needed to stay
/// within S3's limit on the number of parts.
fn part_size_for(configured: u64, size: u64) -> u64 {
    configured.max(size.div_ceil(MAX_PARTS))
}

/// Aborts a multipart upload unless disarmed (by taking `upload_id`): explicitly through
/// [`AbortOnDrop::abort`], or in the background when dropped (the upload future was cancelled).
struct AbortOnDrop {
    client: Client,
    bucket: String,
    key: String,
    upload_id: Option<String>,
}

impl AbortOnDrop {
    fn request(
        &self,
        upload_id: String,
    ) -> aws_sdk_s3::operation::abort_multipart_upload::builders::AbortMultipartUploadFluentBuilder
    {
        self.client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(upload_id)
    }

    async fn abort(&mut self) {
        if let Some(upload_id) = self.upload_id.take() {
            let uri = format!("s3://{}/{}", self.bucket, self.key);
            if let Err(e) = self.request(upload_id).send().await {
                tracing::warn!(%uri, error = %DisplayErrorContext(&e), "could not abort the multipart upload");
            }
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else {
            return;
        };
        let uri = format!("s3://{}/{}", self.bucket, self.key);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                let request = self.request(upload_id);
                handle.spawn(async move {
                    if let Err(e) = request.send().await {
                        tracing::warn!(%uri, error = %DisplayErrorContext(&e), "could not abort the multipart upload");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(%uri, "multipart upload cancelled outside a runtime; it was not aborted")
            }
        }
    }
}

/// Maps an SDK error to a [`StoreError`] naming `uri`.
fn sdk_error<E>(uri: &str, error: SdkError<E>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = error.raw_response().map(|r| r.status().as_u16());
    // A missing bucket (`NoSuchBucket`, also a 404) is a real error, not a missing object.
    let not_found = match error.code() {
        Some("NoSuchKey" | "NotFound") => true,
        Some(_) => false,
        None => status == Some(404),
    };
    if not_found {
        return StoreError::NotFound {
            uri: uri.to_string(),
        };
    }
    let mut message = DisplayErrorContext(&error).to_string();
    if let Some(status) = status {
        message = format!("HTTP {status}: {message}");
    }
    StoreError::Remote {
        uri: uri.to_string(),
        message,
    }
}

#[async_trait]
impl Store for S3Store {
    async fn put(&self, key: &str, body: Bytes) -> Result<(), StoreError> {
        check_key(key)?;
        let size = body.len() as u64;
        if size > self.multipart_threshold {
            self.put_multipart(key, size, |offset, length| {
                let part = body.slice(offset as usize..(offset + length) as usize);
                async move { Ok(ByteStream::from(part)) }
            })
            .await
        } else {
            self.put_object(key, ByteStream::from(body), size).await
        }
    }

    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StoreError> {
        check_key(key)?;
        let io_error = |source| StoreError::Io {
            uri: path.display().to_string(),
            source,
        };
        let meta = tokio::fs::metadata(path).await.map_err(io_error)?;
        if !meta.is_file() {
            return Err(io_error(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let size = meta.len();
        // Each body streams its byte range from the file; the SDK can re-open it for retries.
        let file_body = |offset: u64, length: u64| async move {
            ByteStream::read_from()
                .path(path)
                .offset(offset)
                .length(Length::Exact(length))
                .buffer_size(64 * 1024)
                .build()
                .await
                .map_err(|e| StoreError::Io {
                    uri: path.display().to_string(),
                    source: std::io::Error::other(e),
                })
        };
        if size > self.multipart_threshold {
            self.put_multipart(key, size, file_body).await
        } else {
            self.put_object(key, file_body(0, size).await?, size).await
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let object_key = self.object_key(key);
        let uri = self.uri(&object_key);
        // The SDK retries failed requests but not a body that breaks off half-way (a dropped
        // connection, or Garage cutting the stream of a version that a concurrent PUT just
        // replaced), so whole GETs are retried here. A partial body is never returned.
        let mut attempt = 1;
        loop {
            let output = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(&object_key)
                .send()
                .await
                .map_err(|e| sdk_error(&uri, e))?;
            match output.body.collect().await {
                Ok(data) => return Ok(data.into_bytes()),
                Err(e) if attempt < self.max_attempts => {
                    tracing::debug!(%uri, attempt, error = %DisplayErrorContext(&e), "object body broke off; reading it again");
                    attempt += 1;
                }
                Err(e) => {
                    return Err(StoreError::Remote {
                        uri,
                        message: format!("reading the object failed: {}", DisplayErrorContext(&e)),
                    });
                }
            }
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        check_key(key)?;
        let object_key = self.object_key(key);
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) => match sdk_error(&self.uri(&object_key), e) {
                StoreError::NotFound { .. } => Ok(false),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        if !prefix.is_empty() {
            check_key(prefix.strip_suffix('/').unwrap_or(prefix))?;
        }
        // Plain string concatenation keeps the prefix's semantics: `job/te` matches
        // `job/teacher/...`, and a trailing slash stays significant.
        let root = if self.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.prefix)
        };
        let full_prefix = format!("{root}{prefix}");
        let uri = self.uri(&full_prefix);
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&full_prefix)
                .set_max_keys(self.list_page_size)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| sdk_error(&uri, e))?;
            for object in page.contents() {
                let Some(key) = object.key().and_then(|k| k.strip_prefix(&root)) else {
                    continue;
                };
                objects.push(ObjectInfo {
                    key: key.to_string(),
                    size: object.size().unwrap_or(0).max(0) as u64,
                });
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(objects)
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        let object_key = self.object_key(key);
        match self
            .client
            .delete_object()
            .bucket(&self.bucket)
            .key(&object_key)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match sdk_error(&self.uri(&object_key), e) {
                StoreError::NotFound { .. } => Ok(()),
                other => Err(other),
            },
        }
    }

    fn location(&self, key: &str) -> Location {
        Location::S3 {
            bucket: self.bucket.clone(),
            key: self.object_key(key),
        }
    }
}

/// Opens an S3 object as a synchronous reader that streams the body as it is read (memory stays
/// bounded whatever the object's size).
///
/// Call it from a blocking thread inside a Tokio runtime (`tokio::task::spawn_blocking`): it
/// blocks on the runtime for the request and for every read. Calling it on an async worker
/// thread panics (Tokio refuses to block there).
pub fn blocking_object_reader(
    location: &Location,
    settings: &S3Settings,
) -> anyhow::Result<Box<dyn std::io::Read + Send + 'static>> {
    let Location::S3 { bucket, key } = location else {
        anyhow::bail!("{location} is not an s3:// location");
    };
    let handle = tokio::runtime::Handle::try_current().map_err(|_| {
        anyhow::anyhow!(
            "reading {location} needs a Tokio runtime: call this from a blocking thread of one \
             (tokio::task::spawn_blocking)"
        )
    })?;
    let client = build_client(settings).map_err(|message| anyhow::anyhow!(message))?;
    let uri = location.to_string();
    tracing::debug!(%uri, "streaming S3 object");
    let output = handle
        .block_on(client.get_object().bucket(bucket).key(key).send())
        .map_err(|e| sdk_error(&uri, e))
        .with_context(|| format!("opening {uri}"))?;
    let reader = Box::pin(output.body.into_async_read());
    Ok(Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
        reader, handle,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> S3Settings {
        S3Settings {
            endpoint: Some("http://127.0.0.1:1".into()),
            access_key_env: "SLIM_TEST_S3_UNIT_ACCESS".into(),
            secret_key_env: "SLIM_TEST_S3_UNIT_SECRET_UNSET".into(),
            ..S3Settings::default()
        }
    }

    #[tokio::test]
    async fn missing_credentials_name_the_variable() {
        let err = S3Store::connect("bkt", "p", &settings()).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("SLIM_TEST_S3_UNIT_ACCESS"), "{text}");
        assert!(text.contains("s3://bkt/p"), "{text}");
    }

    #[test]
    fn reader_needs_a_runtime() {
        let location = Location::S3 {
            bucket: "bkt".into(),
            key: "k".into(),
        };
        let err = blocking_object_reader(&location, &settings())
            .err()
            .unwrap();
        assert!(format!("{err:#}").contains("Tokio runtime"), "{err:#}");
    }

    #[test]
    fn part_size_grows_to_stay_under_the_part_limit() {
        assert_eq!(part_size_for(8 * MIB, 100 * MIB), 8 * MIB);
        let huge = 200_000 * MIB;
        assert!(part_size_for(8 * MIB, huge) > 8 * MIB);
        assert!(huge.div_ceil(part_size_for(8 * MIB, huge)) <= MAX_PARTS);
    }
}
