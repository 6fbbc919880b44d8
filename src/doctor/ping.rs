//! The metadata service check: a plain `GET <METAFLOW_SERVICE_URL>/ping`, through the same
//! rustls connector (and proxy settings) as the AWS clients.

use std::time::Duration;

use aws_smithy_runtime_api::client::http::HttpConnector;
use aws_smithy_types::body::SdkBody;

use super::Check;

const NAME: &str = "metadata service";
const TIMEOUT: Duration = Duration::from_secs(10);

/// Pings the service; the auth key, when set, goes in `x-api-key` (API Gateway wants it even there).
pub(super) async fn check(url: &str, auth_key: Option<&str>) -> Check {
    let target = format!("{}/ping", url.trim_end_matches('/'));
    match tokio::time::timeout(TIMEOUT, get(&target, auth_key)).await {
        Ok(Ok(200)) => Check::pass(NAME, format!("{target} answered 200")),
        Ok(Ok(status)) => Check::fail(
            NAME,
            format!("{target} answered HTTP {status}"),
            Some(match status {
                401 | 403 => "check METAFLOW_SERVICE_AUTH_KEY (sent as x-api-key)".to_owned(),
                _ => "check METAFLOW_SERVICE_URL (it should end in the service's base path)"
                    .to_owned(),
            }),
        ),
        Ok(Err(reason)) => Check::fail(
            NAME,
            format!("{target} did not answer: {reason}"),
            Some("check METAFLOW_SERVICE_URL, the network and HTTPS_PROXY".into()),
        ),
        Err(_) => Check::fail(
            NAME,
            format!("{target} did not answer within {}s", TIMEOUT.as_secs()),
            Some("check METAFLOW_SERVICE_URL, the network and HTTPS_PROXY".into()),
        ),
    }
}

async fn get(url: &str, auth_key: Option<&str>) -> Result<u16, String> {
    let connector = crate::aws::http_connector();
    let mut request = aws_smithy_runtime_api::http::Request::new(SdkBody::empty());
    request
        .set_uri(url)
        .map_err(|e| format!("not a URL: {e}"))?;
    if let Some(key) = auth_key {
        request.headers_mut().insert("x-api-key", key.to_owned());
    }
    let response = connector.call(request).await.map_err(|e| {
        let mut text = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            text = format!("{text}: {cause}");
            source = cause.source();
        }
        text
    })?;
    Ok(response.status().as_u16())
}
