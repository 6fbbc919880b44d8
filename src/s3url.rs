//! `s3://bucket[/prefix]` locations, parsed and checked once.

use std::fmt;

/// A bucket and an optional key prefix (no leading or trailing `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    pub bucket: String,
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3://bucket[/prefix]`; the error text explains the expected form.
    pub fn parse(text: &str) -> Result<Self, String> {
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| "expected s3://bucket[/prefix]".to_owned())?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
        if !valid_bucket {
            return Err(format!(
                "{bucket:?} is not a valid bucket name (3-63 lowercase letters, digits, '-' or '.'); expected s3://bucket[/prefix]"
            ));
        }
        Ok(S3Url {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
        })
    }

    /// The key for `path` under this prefix.
    pub fn key(&self, path: &str) -> String {
        if self.prefix.is_empty() {
            path.to_owned()
        } else {
            format!("{}/{}", self.prefix, path)
        }
    }
}

impl fmt::Display for S3Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bucket_and_prefix() {
        let url = S3Url::parse("s3://my-bucket/metaflow/").unwrap();
        assert_eq!(
            (url.bucket.as_str(), url.prefix.as_str()),
            ("my-bucket", "metaflow")
        );
        assert_eq!(url.key("a/b"), "metaflow/a/b");
        assert_eq!(S3Url::parse("s3://bkt").unwrap().key("x"), "x");
        for bad in [
            "bucket/prefix",
            "s3://",
            "s3://UPPER",
            "https://b/x",
            "s3://ab",
            "s3://-x-/p",
        ] {
            assert!(S3Url::parse(bad).is_err(), "{bad}");
        }
    }
}
