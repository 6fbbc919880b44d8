//! The fake's S3, path-style (`/<bucket>/<key>`): HEAD/PUT/GET/DELETE of objects, `If-None-Match`
//! on PUT, and multipart uploads (create, upload part, complete, abort). Bodies sent `aws-chunked`
//! (with or without trailers) are decoded before they are stored.

use std::collections::BTreeMap;

use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use wiremock::{Request, ResponseTemplate};

use super::State;

/// S3's smallest part, except the last.
const MIN_PART: usize = 5 * 1024 * 1024;

#[derive(Debug)]
pub(super) struct Upload {
    bucket: String,
    key: String,
    parts: BTreeMap<i32, (String, Vec<u8>)>,
}

struct Target {
    bucket: String,
    key: String,
    query: BTreeMap<String, String>,
}

fn target(req: &Request) -> Target {
    let path = percent_decode(req.url.path().trim_start_matches('/'));
    let (bucket, key) = path.split_once('/').unwrap_or((&path, ""));
    Target {
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        query: req
            .url
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect(),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The operation an S3 request calls, and a summary of it for the call log.
pub(super) fn operation(req: &Request) -> (String, Value) {
    let t = target(req);
    let has = |q: &str| t.query.contains_key(q);
    let object = !t.key.is_empty();
    let op = match (req.method.as_str(), object) {
        ("HEAD", true) => "HeadObject",
        ("HEAD", false) => "HeadBucket",
        ("GET", true) => "GetObject",
        ("GET", false) => "ListObjects",
        ("PUT", true) if has("partNumber") && has("uploadId") => "UploadPart",
        ("PUT", true) => "PutObject",
        ("PUT", false) => "CreateBucket",
        ("POST", true) if has("uploads") => "CreateMultipartUpload",
        ("POST", true) if has("uploadId") => "CompleteMultipartUpload",
        ("DELETE", true) if has("uploadId") => "AbortMultipartUpload",
        ("DELETE", true) => "DeleteObject",
        (method, _) => return (format!("S3:{method}"), Value::Null),
    };
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let body = json!({
        "bucket": t.bucket,
        "key": t.key,
        "query": t.query,
        "bytes": req.body.len(),
        "server_side_encryption": header("x-amz-server-side-encryption"),
        "if_none_match": header("if-none-match"),
    });
    (op.to_owned(), body)
}

/// An S3 error: XML `<Error>` (no body for HEAD, as S3 does).
pub(super) fn error(status: u16, code: &str, message: &str, head: bool) -> ResponseTemplate {
    let template = ResponseTemplate::new(status);
    if head {
        return template;
    }
    template.set_body_raw(
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><RequestId>FAKE</RequestId></Error>"
        ),
        "application/xml",
    )
}

fn xml(body: String) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_raw(
        format!("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n{body}"),
        "application/xml",
    )
}

fn etag(bytes: &[u8]) -> String {
    let digest = Sha256::digest(bytes);
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// The payload of a request body: plain, or decoded from `aws-chunked`.
fn payload(req: &Request) -> Result<Vec<u8>, String> {
    let header = |name: &str| {
        req.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    let chunked = header("content-encoding").contains("aws-chunked")
        || header("x-amz-content-sha256").starts_with("STREAMING-");
    if !chunked {
        return Ok(req.body.clone());
    }
    let decoded = decode_aws_chunked(&req.body)?;
    if let Ok(expected) = header("x-amz-decoded-content-length").parse::<usize>() {
        if expected != decoded.len() {
            return Err(format!(
                "decoded {} bytes, header says {expected}",
                decoded.len()
            ));
        }
    }
    Ok(decoded)
}

/// `<hex size>[;chunk-signature=...]\r\n<data>\r\n` ... `0\r\n[trailers\r\n]\r\n`.
fn decode_aws_chunked(body: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut rest = body;
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk header without CRLF")?;
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|e| e.to_string())?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| format!("bad chunk size {size_text:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if rest.len() < size + 2 || &rest[size..size + 2] != b"\r\n" {
            return Err("chunk shorter than its size".into());
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// `(part number, etag)` pairs of a CompleteMultipartUpload body, in document order.
fn completed_parts(body: &str) -> Vec<(i32, String)> {
    let field = |part: &str, tag: &str| -> Option<String> {
        let start = part.find(&format!("<{tag}>"))? + tag.len() + 2;
        let end = part[start..].find(&format!("</{tag}>"))? + start;
        Some(
            part[start..end]
                .replace("&quot;", "\"")
                .replace("&#34;", "\""),
        )
    };
    body.split("<Part>")
        .skip(1)
        .filter_map(|part| {
            let number = field(part, "PartNumber")?.trim().parse().ok()?;
            Some((number, field(part, "ETag").unwrap_or_default()))
        })
        .collect()
}

impl State {
    pub(super) fn s3(&mut self, op: &str, req: &Request) -> ResponseTemplate {
        let t = target(req);
        let head = op == "HeadObject" || op == "HeadBucket";
        if !self.buckets.contains_key(&t.bucket) {
            return error(
                404,
                "NoSuchBucket",
                "The specified bucket does not exist",
                head,
            );
        }
        match op {
            "HeadObject" => match self.buckets[&t.bucket].get(&t.key) {
                Some(bytes) => {
                    ResponseTemplate::new(200).insert_header("etag", etag(bytes).as_str())
                }
                None => error(404, "NotFound", "Not Found", true),
            },
            "GetObject" => match self.buckets[&t.bucket].get(&t.key) {
                Some(bytes) => ResponseTemplate::new(200)
                    .insert_header("etag", etag(bytes).as_str())
                    .set_body_raw(bytes.clone(), "application/octet-stream"),
                None => error(404, "NoSuchKey", "The specified key does not exist.", false),
            },
            "PutObject" => {
                let bytes = match payload(req) {
                    Ok(b) => b,
                    Err(e) => return error(400, "IncompleteBody", &e, false),
                };
                let if_none_match = req
                    .headers
                    .get("if-none-match")
                    .and_then(|v| v.to_str().ok());
                let objects = self.buckets.get_mut(&t.bucket).expect("checked");
                if if_none_match == Some("*") && objects.contains_key(&t.key) {
                    return error(
                        412,
                        "PreconditionFailed",
                        "At least one of the pre-conditions you specified did not hold",
                        false,
                    );
                }
                let tag = etag(&bytes);
                objects.insert(t.key, bytes);
                ResponseTemplate::new(200).insert_header("etag", tag.as_str())
            }
            "DeleteObject" => {
                self.buckets
                    .get_mut(&t.bucket)
                    .expect("checked")
                    .remove(&t.key);
                ResponseTemplate::new(204)
            }
            "CreateMultipartUpload" => {
                let id = self.hex_id(40);
                self.uploads.insert(
                    id.clone(),
                    Upload {
                        bucket: t.bucket.clone(),
                        key: t.key.clone(),
                        parts: BTreeMap::new(),
                    },
                );
                xml(format!(
                    "<InitiateMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Bucket>{}</Bucket><Key>{}</Key><UploadId>{id}</UploadId></InitiateMultipartUploadResult>",
                    t.bucket, t.key
                ))
            }
            "UploadPart" => {
                let number: i32 = match t.query["partNumber"].parse() {
                    Ok(n) if (1..=10_000).contains(&n) => n,
                    _ => {
                        return error(
                            400,
                            "InvalidArgument",
                            "Part number must be an integer between 1 and 10000",
                            false,
                        )
                    }
                };
                let bytes = match payload(req) {
                    Ok(b) => b,
                    Err(e) => return error(400, "IncompleteBody", &e, false),
                };
                let Some(upload) = self
                    .uploads
                    .get_mut(&t.query["uploadId"])
                    .filter(|u| u.key == t.key)
                else {
                    return error(
                        404,
                        "NoSuchUpload",
                        "The specified upload does not exist.",
                        false,
                    );
                };
                let tag = etag(&bytes);
                upload.parts.insert(number, (tag.clone(), bytes));
                ResponseTemplate::new(200).insert_header("etag", tag.as_str())
            }
            "CompleteMultipartUpload" => {
                let id = t.query["uploadId"].clone();
                let Some(upload) = self
                    .uploads
                    .get(&id)
                    .filter(|u| u.key == t.key && u.bucket == t.bucket)
                else {
                    return error(
                        404,
                        "NoSuchUpload",
                        "The specified upload does not exist.",
                        false,
                    );
                };
                let listed = completed_parts(&String::from_utf8_lossy(&req.body));
                if listed.is_empty() {
                    return error(
                        400,
                        "MalformedXML",
                        "The XML you provided was not well-formed",
                        false,
                    );
                }
                if listed.windows(2).any(|w| w[0].0 >= w[1].0) {
                    return error(
                        400,
                        "InvalidPartOrder",
                        "The list of parts was not in ascending order.",
                        false,
                    );
                }
                let mut object = Vec::new();
                for (i, (number, tag)) in listed.iter().enumerate() {
                    let Some((stored_tag, bytes)) = upload.parts.get(number) else {
                        return error(
                            400,
                            "InvalidPart",
                            "One or more of the specified parts could not be found.",
                            false,
                        );
                    };
                    if !tag.is_empty() && tag != stored_tag {
                        return error(
                            400,
                            "InvalidPart",
                            "The part's entity tag does not match.",
                            false,
                        );
                    }
                    if i + 1 < listed.len() && bytes.len() < MIN_PART {
                        return error(
                            400,
                            "EntityTooSmall",
                            "Your proposed upload is smaller than the minimum allowed size",
                            false,
                        );
                    }
                    object.extend_from_slice(bytes);
                }
                let upload = self.uploads.remove(&id).expect("checked");
                let tag = etag(&object);
                self.buckets
                    .get_mut(&upload.bucket)
                    .expect("checked")
                    .insert(upload.key.clone(), object);
                xml(format!(
                    "<CompleteMultipartUploadResult xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Location>http://fake/{b}/{k}</Location><Bucket>{b}</Bucket><Key>{k}</Key><ETag>{tag}</ETag></CompleteMultipartUploadResult>",
                    b = upload.bucket,
                    k = upload.key,
                    tag = tag.replace('"', "&quot;"),
                ))
            }
            "AbortMultipartUpload" => match self.uploads.remove(&t.query["uploadId"]) {
                Some(_) => ResponseTemplate::new(204),
                None => error(
                    404,
                    "NoSuchUpload",
                    "The specified upload does not exist.",
                    false,
                ),
            },
            other => error(
                501,
                "NotImplemented",
                &format!("the fake does not implement {other}"),
                head,
            ),
        }
    }
}
