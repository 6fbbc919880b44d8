//! The wire of `mfbatch serve`: JSON-RPC 2.0, one message per line, and the error codes, params
//! and cursors of protocol version [`PROTOCOL`]. `docs/serve-protocol.md` is its reference.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

/// The protocol version this daemon speaks. Changes within a version only add fields, methods
/// and event kinds (clients ignore what they do not know); anything else is a new version.
pub const PROTOCOL: u64 = 1;

/// The longest request line read; a longer one is answered with [`INVALID_REQUEST`] and skipped.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;

/// Standard JSON-RPC codes.
pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// A request other than `hello` before the handshake.
pub const NOT_INITIALIZED: i64 = -32002;
/// `launch`: the options fail the same checks as `mfbatch run` (the CLI's exit-code-2 errors).
pub const INVALID_LAUNCH: i64 = 1;
/// The key is known with other launch parameters.
pub const KEY_CONFLICT: i64 = 2;
/// No such job or key.
pub const UNKNOWN_JOB: i64 = 3;
/// The daemon is shutting down and takes no new work.
pub const SHUTTING_DOWN: i64 = 4;
/// Too many launches waiting: try again after `data.retry_after_ms`.
pub const BUSY: i64 = 5;
/// An AWS call failed (kill).
pub const AWS: i64 = 6;
/// No protocol version in common.
pub const UNSUPPORTED_PROTOCOL: i64 = 7;
/// The token (TCP) is missing or wrong.
pub const UNAUTHORIZED: i64 = 8;
/// The daemon's own state (the journal) failed.
pub const INTERNAL: i64 = -32603;

/// A JSON-RPC error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        RpcError {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    pub fn to_json(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }
}

/// One parsed request line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Absent for a notification (no answer is sent).
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

/// Parses one line; an error comes with the id to answer with (`null` when unreadable).
pub fn parse_line(line: &[u8]) -> Result<Request, (Value, RpcError)> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            RpcError::new(PARSE_ERROR, format!("not JSON: {e}")),
        )
    })?;
    let Value::Object(mut object) = value else {
        let what = if value.is_array() {
            "batches (arrays) are not supported"
        } else {
            "a request is a JSON object"
        };
        return Err((Value::Null, RpcError::new(INVALID_REQUEST, what)));
    };
    let id = object.remove("id");
    let valid_id = match &id {
        None => true,
        Some(v) => v.is_string() || v.is_number() || v.is_null(),
    };
    let invalid = |why: &str| {
        let id = if valid_id { id.clone() } else { None };
        Err((
            id.unwrap_or(Value::Null),
            RpcError::new(INVALID_REQUEST, why),
        ))
    };
    if !valid_id {
        return invalid("id must be a string or a number");
    }
    if object.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return invalid("jsonrpc must be \"2.0\"");
    }
    let Some(Value::String(method)) = object.remove("method") else {
        return invalid("method must be a string");
    };
    let params = match object.remove("params") {
        None | Some(Value::Null) => Value::Object(Default::default()),
        Some(p @ Value::Object(_)) => p,
        Some(_) => return invalid("params must be an object"),
    };
    Ok(Request { id, method, params })
}

/// Params of one method, with a JSON-RPC error naming what is wrong.
pub fn params<T: for<'de> Deserialize<'de>>(params: &Value) -> Result<T, RpcError> {
    T::deserialize(params).map_err(|e| RpcError::new(INVALID_PARAMS, format!("bad params: {e}")))
}

/// An answer line.
pub fn response(id: &Value, result: Result<Value, RpcError>) -> Value {
    match result {
        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
        Err(error) => json!({"jsonrpc": "2.0", "id": id, "error": error.to_json()}),
    }
}

/// An event notification line: the event's own fields plus `seq`.
pub fn event_line(seq: u64, mut event: Value) -> Value {
    if let Value::Object(fields) = &mut event {
        fields.insert("seq".into(), seq.into());
    }
    json!({"jsonrpc": "2.0", "method": "event", "params": event})
}

/// What to do with a connection's jobs when it ends or shuts the daemon down.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndMode {
    /// Stop following; the jobs run on and can be followed again.
    #[default]
    Detach,
    /// Wait for every followed job's end first.
    Drain,
    /// Stop the jobs (launches not yet submitted are dropped), then wait for their end.
    Kill,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloParams {
    pub protocols: Vec<u64>,
    #[serde(default)]
    pub client: Option<String>,
    /// What end of input means: `detach` (default) or `kill`.
    #[serde(default)]
    pub on_eof: EndMode,
    /// Seconds between `heartbeat` events; 0 for none.
    #[serde(default = "default_heartbeat")]
    pub heartbeat_s: u64,
    #[serde(default)]
    pub token: Option<String>,
}

fn default_heartbeat() -> u64 {
    10
}

/// A resume point in a job's logs: how many lines of each attempt were delivered, written
/// `"1:120,2:5"`. The daemon reads each stream from its start and skips that many lines, so a
/// resumed follow repeats and loses nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cursor(pub BTreeMap<usize, u64>);

impl Cursor {
    pub fn parse(text: &str) -> Option<Self> {
        let mut out = BTreeMap::new();
        for part in text.split(',').filter(|p| !p.is_empty()) {
            let (attempt, lines) = part.split_once(':')?;
            out.insert(attempt.parse().ok()?, lines.parse().ok()?);
        }
        Some(Cursor(out))
    }

    pub fn lines(&self, attempt: usize) -> u64 {
        self.0.get(&attempt).copied().unwrap_or(0)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(a, n)| format!("{a}:{n}")).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_lines_get_the_right_code_and_id() {
        let code = |line: &str| parse_line(line.as_bytes()).unwrap_err();
        assert_eq!(code("{bad").1.code, PARSE_ERROR);
        assert_eq!(code("[]").1.code, INVALID_REQUEST);
        assert_eq!(code("{}").1.code, INVALID_REQUEST);
        let (id, err) = code(r#"{"jsonrpc":"2.0","id":7,"method":3}"#);
        assert_eq!((id, err.code), (json!(7), INVALID_REQUEST));
        let (id, _) = code(r#"{"jsonrpc":"2.0","id":{"a":1},"method":"ping"}"#);
        assert_eq!(id, Value::Null);
        let ok = parse_line(br#"{"jsonrpc":"2.0","id":"x","method":"ping"}"#).unwrap();
        assert_eq!((ok.id, ok.method), (Some(json!("x")), "ping".to_owned()));
    }

    #[test]
    fn cursors_round_trip() {
        let cursor = Cursor::parse("1:120,2:5").unwrap();
        assert_eq!(
            (cursor.lines(1), cursor.lines(2), cursor.lines(3)),
            (120, 5, 0)
        );
        assert_eq!(cursor.to_string(), "1:120,2:5");
        assert_eq!(Cursor::parse(""), Some(Cursor::default()));
        assert_eq!(Cursor::parse("1-2"), None);
    }
}
