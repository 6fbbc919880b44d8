//! Where packages live, content-addressed by SHA-256: S3 under the datastore root, or a local
//! directory for the local backend. A package already present is never uploaded again.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;

use crate::error::{AwsError, Service};
use crate::launch::package::Built;
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

/// Whether a package is stored, as far as the caller may know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Present,
    Absent,
    /// S3 would not say (HeadObject answered 403: without s3:ListBucket, a missing object looks
    /// like a forbidden one). The upload is conditional, so sending it anyway is safe.
    Unknown,
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

    /// Where a `--array-args` file with this hash lives, beside the packages.
    pub fn array_args_url(&self, sha256: &str) -> String {
        format!("s3://{}/{}", self.root.bucket, self.array_args_key(sha256))
    }

    fn array_args_key(&self, sha256: &str) -> String {
        self.root.key(&format!("mfbatch/array-args/{sha256}.txt"))
    }

    /// Stores a `--array-args` file under its hash (conditional: "already there" is success).
    pub async fn put_array_args(&self, sha256: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let result = self
            .client
            .put_object()
            .bucket(&self.root.bucket)
            .key(self.array_args_key(sha256))
            .content_type("text/plain; charset=utf-8")
            .set_server_side_encryption(self.server_side_encryption.clone())
            .if_none_match("*")
            .body(ByteStream::from(bytes))
            .send()
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => Ok(()),
            Err(e) => Err(AwsError::from_sdk(Service::S3, "PutObject", e).into()),
        }
    }

    /// Whether the package is stored; [`Presence::Unknown`] when S3 answers 403, which it does
    /// for a missing object when the caller may not list the bucket.
    pub async fn presence(&self, sha256: &str) -> Result<Presence, StoreError> {
        let result = self
            .client
            .head_object()
            .bucket(&self.root.bucket)
            .key(self.key(sha256))
            .send()
            .await;
        match result {
            Ok(_) => Ok(Presence::Present),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => {
                Ok(Presence::Absent)
            }
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 403) => {
                Ok(Presence::Unknown)
            }
            Err(e) => Err(AwsError::from_sdk(Service::S3, "HeadObject", e).into()),
        }
    }

    async fn put_multipart(
        &self,
        built: &Built,
        key: &str,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), StoreError> {
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
        let upload_id = created
            .upload_id()
            .ok_or_else(|| AwsError::incomplete(Service::S3, "CreateMultipartUpload", "UploadId"))?
            .to_owned();
        // Aborts the upload if this future is dropped before it ends (an interrupt): its parts
        // would otherwise be kept, and billed, until a lifecycle rule removes them.
        let mut open = OpenUpload {
            client: self.client.clone(),
            bucket: self.root.bucket.clone(),
            key: key.to_owned(),
            upload_id: upload_id.clone(),
            ended: false,
        };
        let result = async {
            let parts = self.upload_parts(built, key, &upload_id, progress).await?;
            self.complete(key, &upload_id, parts).await
        }
        .await;
        match result {
            Ok(true) => {
                open.ended = true;
                Ok(())
            }
            // Someone else stored the same content first: this upload is not needed.
            Ok(false) => {
                open.abort().await;
                Ok(())
            }
            // Leave no orphaned parts behind; the original error is what matters.
            Err(e) => {
                open.abort().await;
                Err(e)
            }
        }
    }

    /// Sends the package in [`PART_SIZE`] parts, reading each straight from the file.
    async fn upload_parts(
        &self,
        built: &Built,
        key: &str,
        upload_id: &str,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<Vec<aws_sdk_s3::types::CompletedPart>, StoreError> {
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
                .upload_id(upload_id)
                .part_number(number)
                .content_length(len as i64)
                .body(body)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk(Service::S3, "UploadPart", e))?;
            let e_tag = part
                .e_tag()
                .ok_or_else(|| AwsError::incomplete(Service::S3, "UploadPart", "ETag"))?;
            parts.push(
                aws_sdk_s3::types::CompletedPart::builder()
                    .part_number(number)
                    .e_tag(e_tag)
                    .build(),
            );
            offset += len;
            number += 1;
            progress(offset, built.size);
        }
        Ok(parts)
    }

    /// Completes the upload; `false` when the object was already there (412).
    async fn complete(
        &self,
        key: &str,
        upload_id: &str,
        parts: Vec<aws_sdk_s3::types::CompletedPart>,
    ) -> Result<bool, StoreError> {
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.root.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(
                aws_sdk_s3::types::CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            // As for PutObject: the name is the content hash, so "already there" is success.
            .if_none_match("*")
            .send()
            .await;
        match completed {
            Ok(_) => Ok(true),
            Err(e) if e.raw_response().is_some_and(|r| r.status().as_u16() == 412) => Ok(false),
            Err(e) => Err(AwsError::from_sdk(Service::S3, "CompleteMultipartUpload", e).into()),
        }
    }
}

/// A multipart upload that has not been completed or aborted yet.
struct OpenUpload {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    upload_id: String,
    ended: bool,
}

impl OpenUpload {
    fn request(&self) -> impl Future<Output = ()> + Send + 'static {
        let send = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.key)
            .upload_id(&self.upload_id)
            .send();
        async move {
            let _ = send.await;
        }
    }

    async fn abort(&mut self) {
        self.ended = true;
        self.request().await;
    }
}

impl Drop for OpenUpload {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        // Drop cannot wait: the abort runs as a task, which `abort_abandoned_uploads` awaits.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let task = runtime.spawn(self.request());
            ABANDONED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(task);
        }
    }
}

/// Aborts of uploads whose future was dropped, still running.
static ABANDONED: Mutex<Vec<tokio::task::JoinHandle<()>>> = Mutex::new(Vec::new());

/// Waits (at most `limit`) for the aborts of multipart uploads that were abandoned by dropping
/// [`PackageStore::put`]'s future, e.g. on an interrupt. Call it before leaving the runtime:
/// an abort still running when the runtime shuts down never reaches S3.
pub async fn abort_abandoned_uploads(limit: Duration) {
    let tasks: Vec<_> = std::mem::take(
        &mut *ABANDONED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
    );
    let _ = tokio::time::timeout(limit, async {
        for task in tasks {
            let _ = task.await;
        }
    })
    .await;
}

impl PackageStore for S3Store {
    fn url(&self, sha256: &str) -> String {
        format!("s3://{}/{}", self.root.bucket, self.key(sha256))
    }

    /// `false` also when S3 will not say ([`Presence::Unknown`]): the upload is conditional.
    async fn contains(&self, sha256: &str) -> Result<bool, StoreError> {
        Ok(self.presence(sha256).await? == Presence::Present)
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

    /// A stored file counts only when its bytes still have its hash: a corrupt or truncated entry
    /// (a full disk, a crash) would otherwise fail every later run. A bad one is removed.
    async fn contains(&self, sha256: &str) -> Result<bool, StoreError> {
        let path = self.path(sha256);
        let expected = sha256.to_owned();
        let checked = tokio::task::spawn_blocking(move || {
            let file = match std::fs::File::open(&path) {
                Ok(file) => file,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
                Err(source) => return Err(StoreError::Io { path, source }),
            };
            let good = match hash_file(file) {
                Ok(actual) => actual == expected,
                Err(_) => false,
            };
            if !good {
                std::fs::remove_file(&path).map_err(|source| StoreError::Io { path, source })?;
            }
            Ok(good)
        })
        .await
        .expect("hashing does not panic")?;
        Ok(checked)
    }

    async fn put(
        &self,
        built: &Built,
        progress: &(dyn Fn(u64, u64) + Send + Sync),
    ) -> Result<(), StoreError> {
        let dest = self.path(&built.sha256);
        let source = built.path.clone();
        tokio::task::spawn_blocking(move || {
            let io = |path: &Path, source| StoreError::Io {
                path: path.to_owned(),
                source,
            };
            let parent = dest.parent().expect("has a parent");
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            // A new file with a random name (O_EXCL: never through an existing name or link) in
            // the same directory, renamed into place: a reader never sees a half-written package.
            let mut partial = tempfile::Builder::new()
                .prefix(".partial-")
                .tempfile_in(parent)
                .map_err(|e| io(parent, e))?;
            let mut input = std::fs::File::open(&source).map_err(|e| io(&source, e))?;
            std::io::copy(&mut input, partial.as_file_mut()).map_err(|e| io(partial.path(), e))?;
            partial
                .as_file()
                .sync_all()
                .map_err(|e| io(partial.path(), e))?;
            partial.persist(&dest).map_err(|e| io(&dest, e.error))?;
            Ok::<_, StoreError>(())
        })
        .await
        .expect("copying does not panic")?;
        progress(built.size, built.size);
        Ok(())
    }
}

/// The SHA-256 of a file's bytes, as lowercase hex.
fn hash_file(mut file: std::fs::File) -> std::io::Result<String> {
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)?;
    Ok(crate::launch::package::hex(&hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A "package" file of `bytes` in `dir`, as `package::build` would describe it.
    fn built(dir: &Path, bytes: &[u8]) -> Built {
        let path = dir.join("package.tgz");
        std::fs::write(&path, bytes).unwrap();
        Built {
            path,
            sha256: crate::launch::package::sha256_hex(bytes),
            size: bytes.len() as u64,
        }
    }

    #[tokio::test]
    async fn a_corrupt_local_entry_is_not_reused_but_replaced() {
        let work = tempfile::tempdir().unwrap();
        let store = LocalStore::new(work.path().join("store"));
        let package = built(work.path(), b"the package");
        assert!(!store.contains(&package.sha256).await.unwrap());

        let entry = store.path(&package.sha256);
        std::fs::create_dir_all(entry.parent().unwrap()).unwrap();
        std::fs::write(&entry, b"the pack").unwrap();
        assert!(!store.contains(&package.sha256).await.unwrap());
        assert!(!entry.exists(), "the bad entry is removed");

        store.put(&package, &|_, _| {}).await.unwrap();
        assert!(store.contains(&package.sha256).await.unwrap());
        assert_eq!(std::fs::read(&entry).unwrap(), b"the package");
    }

    #[tokio::test]
    async fn a_local_put_never_writes_through_a_planted_link() {
        let work = tempfile::tempdir().unwrap();
        let store = LocalStore::new(work.path().join("store"));
        let package = built(work.path(), b"the package");
        let victim = work.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dir = work.path().join("store/packages");
        std::fs::create_dir_all(&dir).unwrap();
        // The names a predictable partial file would have had.
        for name in [
            format!(".{}.{}.partial", package.sha256, std::process::id()),
            format!(".{}.partial", package.sha256),
        ] {
            std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
        }

        store.put(&package, &|_, _| {}).await.unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(
            std::fs::read(store.path(&package.sha256)).unwrap(),
            b"the package"
        );
        let leftovers = std::fs::read_dir(&dir)
            .unwrap()
            .filter(|e| {
                let name = e.as_ref().unwrap().file_name();
                name.to_string_lossy().starts_with(".partial-")
            })
            .count();
        assert_eq!(leftovers, 0, "no partial file is left behind");
    }
}
