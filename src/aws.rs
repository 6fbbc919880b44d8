//! Building every AWS client mfbatch uses (Batch, CloudWatch Logs, S3 for runs; CloudFormation,
//! IAM, STS for `stack`, `configure --from-stack` and `doctor`) from one `SdkConfig`: endpoints,
//! credentials and region from the standard AWS chain, a cmake-free rustls HTTP client that
//! honours `HTTPS_PROXY`/`NO_PROXY`, and the SDK's own retry configuration.

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};

use crate::error::ConfigError;

/// Idle connections kept per endpoint.
const MAX_IDLE_CONNECTIONS: usize = 16;

/// The clients mfbatch uses, sharing one configuration (building them makes no call).
#[derive(Debug, Clone)]
pub struct Clients {
    pub batch: aws_sdk_batch::Client,
    pub logs: aws_sdk_cloudwatchlogs::Client,
    pub s3: aws_sdk_s3::Client,
    pub cloudformation: aws_sdk_cloudformation::Client,
    pub iam: aws_sdk_iam::Client,
    pub sts: aws_sdk_sts::Client,
    region: String,
    s3_endpoint_url: Option<String>,
}

/// Choices that are not part of the standard AWS chain.
#[derive(Debug, Clone, Default)]
pub struct ClientOptions {
    /// `METAFLOW_S3_ENDPOINT_URL`: an S3-compatible store; implies path-style addressing.
    pub s3_endpoint_url: Option<String>,
    /// Total attempts per call, including the first (SDK default: 3).
    pub max_attempts: Option<u32>,
}

impl Clients {
    /// Loads the standard chain (environment, `~/.aws/config`, SSO, instance roles), including
    /// `AWS_ENDPOINT_URL` and `AWS_ENDPOINT_URL_<SERVICE>`.
    pub async fn from_environment(options: &ClientOptions) -> Result<Self, ConfigError> {
        let config = load_sdk_config(options).await;
        let path_style = std::env::var_os("AWS_ENDPOINT_URL").is_some()
            || std::env::var_os("AWS_ENDPOINT_URL_S3").is_some();
        Self::build(&config, options, path_style)
    }

    /// Builds the clients from a ready configuration (tests, embedders with their own setup).
    /// A configuration with an endpoint URL gets path-style S3 addressing.
    pub fn from_sdk_config(
        config: &SdkConfig,
        options: &ClientOptions,
    ) -> Result<Self, ConfigError> {
        Self::build(config, options, config.endpoint_url().is_some())
    }

    fn build(
        config: &SdkConfig,
        options: &ClientOptions,
        path_style: bool,
    ) -> Result<Self, ConfigError> {
        let region = config.region().ok_or(ConfigError::NoRegion)?.to_string();
        check_region(&region)?;
        let mut s3 = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style || options.s3_endpoint_url.is_some())
            // Only send checksums S3 requires: S3-compatible stores (and emulators) often reject the
            // streaming trailers the SDK adds by default; the bootstrap verifies the SHA-256 anyway.
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            );
        if let Some(endpoint) = &options.s3_endpoint_url {
            s3 = s3.endpoint_url(endpoint);
        }
        let mut batch = aws_sdk_batch::config::Builder::from(config);
        let mut logs = aws_sdk_cloudwatchlogs::config::Builder::from(config);
        let mut cloudformation = aws_sdk_cloudformation::config::Builder::from(config);
        let mut iam = aws_sdk_iam::config::Builder::from(config);
        let mut sts = aws_sdk_sts::config::Builder::from(config);
        if let Some(n) = options.max_attempts {
            let retry = config
                .retry_config()
                .cloned()
                .unwrap_or_else(RetryConfig::standard)
                .with_max_attempts(n);
            batch = batch.retry_config(retry.clone());
            logs = logs.retry_config(retry.clone());
            cloudformation = cloudformation.retry_config(retry.clone());
            iam = iam.retry_config(retry.clone());
            sts = sts.retry_config(retry.clone());
            s3 = s3.retry_config(retry);
        }
        Ok(Clients {
            batch: aws_sdk_batch::Client::from_conf(batch.build()),
            logs: aws_sdk_cloudwatchlogs::Client::from_conf(logs.build()),
            s3: aws_sdk_s3::Client::from_conf(s3.build()),
            cloudformation: aws_sdk_cloudformation::Client::from_conf(cloudformation.build()),
            iam: aws_sdk_iam::Client::from_conf(iam.build()),
            sts: aws_sdk_sts::Client::from_conf(sts.build()),
            region,
            s3_endpoint_url: s3_endpoint_url(config, options),
        })
    }

    /// The region every client uses; also given to the container as `AWS_DEFAULT_REGION`.
    pub fn region(&self) -> &str {
        &self.region
    }

    /// The S3 endpoint the S3 client uses when it is not AWS's own (`METAFLOW_S3_ENDPOINT_URL`,
    /// `AWS_ENDPOINT_URL_S3`, `AWS_ENDPOINT_URL`, or `endpoint_url` in the AWS profile).
    pub fn s3_endpoint_url(&self) -> Option<&str> {
        self.s3_endpoint_url.as_deref()
    }
}

/// The standard chain's configuration with mfbatch's HTTP client, retries and timeouts: the one
/// `SdkConfig` every client is built from.
pub async fn load_sdk_config(options: &ClientOptions) -> SdkConfig {
    // Calls are paced by the rate budgets, so a few connections suffice; an unbounded idle
    // pool would keep a read buffer per connection after every burst.
    let http = aws_smithy_http_client::Builder::new()
        .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
        .build_with_connector_fn(|settings, components| {
            let mut builder = aws_smithy_http_client::Connector::builder()
                .proxy_config(aws_smithy_http_client::proxy::ProxyConfig::from_env());
            builder.set_connector_settings(settings.cloned());
            if let Some(components) = components {
                builder.set_sleep_impl(components.sleep_impl());
            }
            builder
                .tls_provider(Provider::Rustls(CryptoMode::Ring))
                .build()
        });
    let retry = RetryConfig::standard().with_max_attempts(
        options
            .max_attempts
            .unwrap_or(crate::retry::SDK_MAX_ATTEMPTS),
    );
    aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(retry)
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(60))
                .build(),
        )
        .load()
        .await
}

/// A plain HTTP(S) connector with the AWS clients' TLS and proxy settings, for the few calls
/// that are not AWS APIs (the metadata service's `/ping`).
pub fn http_connector() -> aws_smithy_http_client::Connector {
    aws_smithy_http_client::Connector::builder()
        .proxy_config(aws_smithy_http_client::proxy::ProxyConfig::from_env())
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build()
}

/// The S3 endpoint, found in the order the S3 client itself looks (the SDK keeps it private).
fn s3_endpoint_url(config: &SdkConfig, options: &ClientOptions) -> Option<String> {
    use aws_types::service_config::ServiceConfigKey;
    options.s3_endpoint_url.clone().or_else(|| {
        config
            .service_config()
            .and_then(|c| {
                c.load_config(
                    ServiceConfigKey::builder()
                        .service_id("S3")
                        .env("AWS_ENDPOINT_URL")
                        .profile("endpoint_url")
                        .build()
                        .ok()?,
                )
            })
            .or_else(|| config.endpoint_url().map(str::to_owned))
    })
}

/// Checks that a region looks like one: it becomes part of every endpoint's host name, and a
/// malformed one otherwise fails each call in a way the SDK reports as missing credentials.
/// Lowercase letters, digits and inner hyphens, as in `us-east-1`; the shape is not tied to AWS's
/// own names, so S3-compatible stores' regions (`auto`, `fr-par`) pass.
pub fn check_region(region: &str) -> Result<(), ConfigError> {
    let valid = !region.is_empty()
        && region.len() <= 63
        && region
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !region.starts_with('-')
        && !region.ends_with('-');
    if valid {
        Ok(())
    } else {
        Err(ConfigError::InvalidRegion {
            region: region.to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::check_region;

    #[test]
    fn regions_are_checked_for_shape() {
        for good in ["us-east-1", "us-gov-west-1", "cn-north-1", "auto", "fr-par"] {
            assert!(check_region(good).is_ok(), "{good}");
        }
        for bad in [
            "us east 1",
            "not-a-region!",
            "",
            "US-EAST-1",
            "-x",
            "a.b",
            "us-east-1 ",
        ] {
            assert!(check_region(bad).is_err(), "{bad:?}");
        }
    }
}
