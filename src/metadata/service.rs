//! A small client of Metaflow's metadata service: one request at a time with a timeout, the
//! configured headers (`x-api-key`, `METAFLOW_SERVICE_HEADERS`) on every call, and Metaflow's
//! rules for the replies (a 409 on create means the object exists; ids are numbers or strings;
//! heartbeat replies may be JSON encoded twice).
//!
//! hyper-util's legacy client over hyper-rustls with the ring provider and the system's roots:
//! the same TLS stack the AWS SDK already brings, so no new native dependency.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::MetadataError;

/// How long one call may take before it counts as failed (and is retried later).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The heartbeat interval when the service does not say (Metaflow's `WAIT_TIME`).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

type Connector = hyper_rustls::HttpsConnector<HttpConnector>;

/// A reply: its status, the version header of `/ping`, and its body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub version: Option<String>,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

/// The service at one URL, with its headers.
#[derive(Clone)]
pub struct ServiceClient {
    base: String,
    headers: BTreeMap<String, String>,
    client: Client<Connector, Full<Bytes>>,
    timeout: Duration,
}

impl ServiceClient {
    pub fn new(base: &str, headers: BTreeMap<String, String>) -> Result<Self, MetadataError> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_native_roots(rustls::crypto::ring::default_provider())
            .map_err(MetadataError::Tls)?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(ServiceClient {
            base: base.trim_end_matches('/').to_owned(),
            headers,
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: CALL_TIMEOUT,
        })
    }

    /// A shorter timeout per call (tests, and the best-effort calls at exit).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One call; `path` starts with `/`. Any status is a reply; only no reply is an error.
    pub async fn call(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, MetadataError> {
        let unreachable = |source: crate::error::BoxError| MetadataError::Unreachable {
            method,
            path: path.to_owned(),
            source,
        };
        let mut request = Request::builder()
            .method(Method::from_bytes(method.as_bytes()).expect("a valid method"))
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json");
        for (name, value) in &self.headers {
            request = request.header(name.as_str(), value.as_str());
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| unreachable(Box::new(e)))?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| unreachable(Box::new(e)))?;
            let status = response.status().as_u16();
            let version = response
                .headers()
                .get("metadata_service_version")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| unreachable(Box::new(e)))?
                .to_bytes();
            Ok(Reply {
                status,
                version,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(elapsed) => Err(unreachable(Box::new(elapsed))),
        }
    }

    /// A reply with a success status, else the error it is.
    pub async fn expect_ok(
        &self,
        method: &'static str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, MetadataError> {
        let reply = self.call(method, path, body).await?;
        if StatusCode::from_u16(reply.status).is_ok_and(|s| s.is_success()) {
            Ok(reply)
        } else {
            Err(status_error(method, path, &reply))
        }
    }

    /// Creates an object; a 409 means it exists, and it is read instead (as Metaflow does).
    pub async fn create(
        &self,
        post: &str,
        get: &str,
        body: &Value,
    ) -> Result<Value, MetadataError> {
        let reply = self.call("POST", post, Some(body)).await?;
        let reply = match reply.status {
            200..=299 => reply,
            409 => self.expect_ok("GET", get, None).await?,
            _ => return Err(status_error("POST", post, &reply)),
        };
        reply.json().ok_or_else(|| MetadataError::BadReply {
            method: "POST",
            path: post.to_owned(),
            reason: "not JSON".into(),
        })
    }

    /// Reads an object; `None` when the service does not know it.
    pub async fn get(&self, path: &str) -> Result<Option<Value>, MetadataError> {
        let reply = self.call("GET", path, None).await?;
        match reply.status {
            404 => Ok(None),
            200..=299 => reply
                .json()
                .map(Some)
                .ok_or_else(|| MetadataError::BadReply {
                    method: "GET",
                    path: path.to_owned(),
                    reason: "not JSON".into(),
                }),
            _ => Err(status_error("GET", path, &reply)),
        }
    }

    /// `GET /ping`: the service's version (its `METADATA_SERVICE_VERSION` header).
    pub async fn ping(&self) -> Result<Option<String>, MetadataError> {
        Ok(self.expect_ok("GET", "/ping", None).await?.version)
    }

    /// Sends a heartbeat and returns how long to wait before the next one.
    pub async fn heartbeat(&self, path: &str) -> Result<Duration, MetadataError> {
        let reply = self
            .expect_ok("POST", path, Some(&Value::Object(Default::default())))
            .await?;
        Ok(heartbeat_wait(&reply.body).unwrap_or(DEFAULT_HEARTBEAT))
    }
}

/// `wait_time_in_seconds` of a heartbeat reply. The real service encodes the object twice (a
/// JSON string holding JSON); metaflow-local-service once. Both are read.
pub fn heartbeat_wait(body: &[u8]) -> Option<Duration> {
    let mut value: Value = serde_json::from_slice(body).ok()?;
    if let Value::String(inner) = &value {
        value = serde_json::from_str(inner).ok()?;
    }
    let seconds = value.get("wait_time_in_seconds")?.as_f64()?;
    (seconds.is_finite() && seconds > 0.0).then(|| Duration::from_secs_f64(seconds.min(600.0)))
}

fn status_error(method: &'static str, path: &str, reply: &Reply) -> MetadataError {
    let body = String::from_utf8_lossy(&reply.body);
    MetadataError::Status {
        method,
        path: path.to_owned(),
        status: reply.status,
        body: body.chars().take(300).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_replies_in_both_encodings() {
        let twice = br#""{\"wait_time_in_seconds\": 10}""#;
        assert_eq!(heartbeat_wait(twice), Some(Duration::from_secs(10)));
        assert_eq!(
            heartbeat_wait(br#"{"wait_time_in_seconds": 3}"#),
            Some(Duration::from_secs(3))
        );
        assert_eq!(heartbeat_wait(b"{}"), None);
        assert_eq!(heartbeat_wait(b"nonsense"), None);
    }
}
