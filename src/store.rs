//! Where packages live, content-addressed by SHA-256: S3 under the datastore root, or a local
//! directory for the local backend. A package already present is never uploaded again.

use std::future::Future;
use std::path::{Path, PathBuf};

use aws_sdk_s3::primitives::ByteStream;

use crate::error::{AwsError, Service};
use crate::package::Built;
use crate::s3url::S3Url;

/// Packages larger than this go up in parts (and show progress part by part).
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// Part size for multipart uploads (S3's minimum is 5 MiB).
pub const PART_SIZE: u64 = 8 * 1024 * 1024;

/// Failure to check or store a package.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    Aws(#[from] AwsError),
    #[error("cannot store the package at {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A content-addressed package store.
pub trait PackageStore {
    /// Where the package with this hash lives, as the bootstrap reads it.
    fn url(&self, sha256: &str) -> String;
    /// Whether the package is already stored.
    fn contains(&self, sha256: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;
    /// Stores the package; `progress(sent, total)` is called as bytes go out.
    fn put(
        &self,
        built: &Built,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// Packages under `<datastore root>/mfbatch/packages/<sha256>.tgz` in S3.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    root: S3Url,
    server_side_encryption: Option<aws_sdk_s3::types::ServerSideEncryption>,
}

impl S3Store {
    pub fn new(client: aws_sdk_s3::Client, root: S3Url) -> Self {
        S3Store {
            client,
            root,
            server_side_encryption: None,
        }
    }

    /// Asks S3 to encrypt uploads this way (`AES256`, `aws:kms`); buckets whose policy demands
    /// the header refuse uploads without it.
    pub fn with_server_side_encryption(mut self, mode: Option<&str>) -> Self {
        self.server_side_encryption = mode.map(aws_sdk_s3::types::ServerSideEncryption::from);
        self
    }

    fn key(&self, sha256: &str) -> String {
        self.root.key(&format!("mfbatch/packages/{sha256}.tgz"))
    }

    async fn put_multipart(
        &self,
        built: &Built,
        key: &str,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), StoreError> {
        use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.root.bucket)
            .key(key)
            .content_type("application/gzip")
            .set_server_side_encryption(self.server_side_encryption.clone())
            .send()
            .await
            .map_err(|e| AwsError::from_sdk(Service::S3, "CreateMultipartUpload", e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_owned();
        let result = async {
            let mut parts = Vec::new();
            let mut offset = 0;
            let mut number = 1;
            while offset < built.size {
                let len = PART_SIZE.min(built.size - offset);
                let body = ByteStream::read_from()
                    .path(&built.path)
                    .offset(offset)
                    .length(aws_sdk_s3::primitives::Length::Exact(len))
                    .build()
                    .await
                    .map_err(|e| StoreError::Io {
                        path: built.path.clone(),
                        source: std::io::Error::other(e),
                    })?;
                let part = self
                    .client
                    .upload_part()
                    .bucket(&self.root.bucket)
                    .key(key)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(len as i64)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| AwsError::from_sdk(Service::S3, "UploadPart", e))?;
                parts.push(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(part.e_tag().map(str::to_owned))
                        .build(),
                );
                offset += len;
                number += 1;
                progress(offset, built.size);
            }
            self.client
                .complete_multipart_upload()
                .bucket(&self.root.bucket)
                .key(key)
                .upload_id(&upload_id)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(Service::S3, "CompleteMultipartUpload", e))?;
            Ok(())
        }
        .await;
        if result.is_err() {
            // Leave no orphaned parts behind (they are billed); the original error is what matters.
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.root.bucket)
                .key(key)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }
}

impl PackageStore for S3Store {
    fn url(&self, sha256: &str) -> String {
        format!("s3://{}/{}", self.root.bucket, self.key(sha256))
    }

    async fn contains(&self, sha256: &str) -> Result<bool, StoreError> {
        let result = self
            .client
            .head_object()
            .bucket(&self.root.bucket)
            .key(self.key(sha256))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(AwsError::from_sdk(Service::S3, "HeadObject", e).into()),
        }
    }

    async fn put(
        &self,
        built: &Built,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), StoreError> {
        let key = self.key(&built.sha256);
        if built.size > MULTIPART_THRESHOLD {
            return self.put_multipart(built, &key, progress).await;
        }
        let body = ByteStream::from_path(&built.path)
            .await
            .map_err(|e| StoreError::Io {
                path: built.path.clone(),
                source: std::io::Error::other(e),
            })?;
        let result = self
            .client
            .put_object()
            .bucket(&self.root.bucket)
            .key(&key)
            .content_type("application/gzip")
            .set_server_side_encryption(self.server_side_encryption.clone())
            // Atomic "upload unless present" where S3 supports it; the name is the content hash,
            // so losing that race is success.
            .if_none_match("*")
            .body(body)
            .send()
            .await;
        match result {
            Ok(_) => {}
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => {}
            Err(e) => return Err(AwsError::from_sdk(Service::S3, "PutObject", e).into()),
        }
        progress(built.size, built.size);
        Ok(())
    }
}

/// Packages under `<dir>/packages/<sha256>.tgz` on this machine.
#[derive(Debug, Clone)]
pub struct LocalStore {
    dir: PathBuf,
}

impl LocalStore {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalStore { dir: dir.into() }
    }

    pub fn path(&self, sha256: &str) -> PathBuf {
        self.dir.join("packages").join(format!("{sha256}.tgz"))
    }
}

impl PackageStore for LocalStore {
    fn url(&self, sha256: &str) -> String {
        format!("file://{}", self.path(sha256).display())
    }

    async fn contains(&self, sha256: &str) -> Result<bool, StoreError> {
        Ok(tokio::fs::try_exists(self.path(sha256))
            .await
            .unwrap_or(false))
    }

    async fn put(
        &self,
        built: &Built,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), StoreError> {
        let dest = self.path(&built.sha256);
        let io = |path: &Path, source| StoreError::Io {
            path: path.to_owned(),
            source,
        };
        let parent = dest.parent().expect("has a parent");
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| io(parent, e))?;
        // Copy then rename, so a reader never sees a half-written package.
        let partial = parent.join(format!(".{}.{}.partial", built.sha256, std::process::id()));
        tokio::fs::copy(&built.path, &partial)
            .await
            .map_err(|e| io(&partial, e))?;
        tokio::fs::rename(&partial, &dest)
            .await
            .map_err(|e| io(&dest, e))?;
        progress(built.size, built.size);
        Ok(())
    }
}
