//! JSON-RPC 2.0 on the management socket: one request per line, one response per line.
//!
//! Everything here is pure (bytes in, bytes out) so that the framing and the error paths are
//! unit-tested without a socket. The caller is trusted (its credentials were checked), but its
//! bytes are still bounded: a line longer than [`MAX_LINE`] is answered with an error and
//! skipped up to its newline, never buffered.

use serde_json::{json, Map, Value};

/// Longest request line accepted, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;

/// JSON-RPC error codes: the standard ones, then this daemon's (-32000 to -32099 are reserved
/// for implementations).
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// No LUN at that address.
    pub const UNKNOWN_LUN: i64 = -32000;
    /// A LUN already has that address (or the pr-file is another LUN's).
    pub const DUPLICATE: i64 = -32001;
    /// The source (or pr-file) cannot be opened, locked or used.
    pub const CANNOT_OPEN: i64 = -32002;
    /// The path is outside every --image-dir (or there is none).
    pub const PATH_NOT_ALLOWED: i64 = -32003;
    /// The worker refused or failed the change, or is not running.
    pub const WORKER: i64 = -32004;
    /// Another change of that LUN is still in progress.
    pub const BUSY: i64 = -32005;
    /// The caller's credentials do not allow management.
    pub const PERMISSION_DENIED: i64 = -32010;
    /// Too many connections or calls in flight.
    pub const TOO_MANY: i64 = -32011;
    /// The LUN's kind does not support that at run time (iSCSI LUNs: only configured at
    /// start-up, docs/iscsi.md).
    pub const UNSUPPORTED: i64 = -32012;
    /// The guest prevents medium removal (PREVENT ALLOW MEDIUM REMOVAL): `change-medium` and
    /// `eject` need `"force": true`.
    pub const MEDIUM_LOCKED: i64 = -32020;
}

/// A JSON-RPC error object.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (code {})", self.message, self.code)
    }
}

/// One parsed request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// `None` for a notification (no `id` member): nothing is answered.
    pub id: Option<Value>,
    pub method: String,
    /// Always an object (absent params are `{}`).
    pub params: Map<String, Value>,
}

/// Parses one line. On error returns the id to answer with (`null` when it could not be read)
/// and the error.
pub fn parse_request(line: &[u8]) -> Result<Request, (Value, RpcError)> {
    let value: Value = serde_json::from_slice(line).map_err(|e| {
        (
            Value::Null,
            RpcError::new(code::PARSE_ERROR, format!("parse error: {e}")),
        )
    })?;
    let Value::Object(mut obj) = value else {
        let what = if value.is_array() {
            "batch requests are not supported: send one request object per line"
        } else {
            "a request must be a JSON object"
        };
        return Err((Value::Null, RpcError::new(code::INVALID_REQUEST, what)));
    };
    let id = obj.remove("id");
    let answer_id = id.clone().unwrap_or(Value::Null);
    let invalid = |m: &str| (answer_id.clone(), RpcError::new(code::INVALID_REQUEST, m));
    if let Some(id) = &id {
        if !(id.is_string() || id.is_number() || id.is_null()) {
            return Err((
                Value::Null,
                RpcError::new(
                    code::INVALID_REQUEST,
                    "id must be a string, a number or null",
                ),
            ));
        }
    }
    if obj.get("jsonrpc") != Some(&Value::String("2.0".into())) {
        return Err(invalid("\"jsonrpc\": \"2.0\" is required"));
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return Err(invalid("\"method\" must be a string")),
    };
    let params = match obj.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => {
            return Err((
                answer_id,
                RpcError::invalid_params("params must be an object (named parameters)"),
            ))
        }
    };
    obj.remove("jsonrpc");
    if let Some(k) = obj.keys().next() {
        return Err(invalid(&format!("unknown member \"{k}\"")));
    }
    Ok(Request { id, method, params })
}

/// A success response line (with its newline).
pub fn ok_line(id: &Value, result: Value) -> Vec<u8> {
    line(json!({"jsonrpc": "2.0", "id": id, "result": result}))
}

/// An error response line (with its newline).
pub fn error_line(id: &Value, error: &RpcError) -> Vec<u8> {
    line(json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": {"code": error.code, "message": error.message},
    }))
}

fn line(v: Value) -> Vec<u8> {
    let mut out = serde_json::to_vec(&v).unwrap_or_else(|_| b"{}".to_vec());
    out.push(b'\n');
    out
}

/// What [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// A complete line (newline removed; a trailing `\r` too).
    Complete(Vec<u8>),
    /// A line went past [`MAX_LINE`]: it is being skipped up to its newline.
    Oversized,
}

/// Cuts a byte stream into lines of at most [`MAX_LINE`] bytes, holding at most one partial
/// line.
#[derive(Debug, Default)]
pub struct LineReader {
    buf: Vec<u8>,
    /// Skipping the rest of an oversized line.
    skipping: bool,
    /// Lines found by [`Self::feed`], not yet taken.
    ready: std::collections::VecDeque<Line>,
}

impl LineReader {
    /// Adds received bytes.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let nl = data.iter().position(|&b| b == b'\n');
            let (part, rest) = match nl {
                Some(i) => (&data[..i], Some(&data[i + 1..])),
                None => (data, None),
            };
            if !self.skipping {
                if self.buf.len() + part.len() > MAX_LINE {
                    self.buf = Vec::new();
                    self.skipping = true;
                    self.ready.push_back(Line::Oversized);
                } else {
                    self.buf.extend_from_slice(part);
                }
            }
            match rest {
                Some(r) => {
                    if !self.skipping {
                        let mut l = std::mem::take(&mut self.buf);
                        if l.last() == Some(&b'\r') {
                            l.pop();
                        }
                        if !l.iter().all(u8::is_ascii_whitespace) {
                            self.ready.push_back(Line::Complete(l));
                        }
                    }
                    self.skipping = false;
                    data = r;
                }
                None => break,
            }
        }
    }

    /// The next complete (or oversized) line, in order.
    pub fn next_line(&mut self) -> Option<Line> {
        self.ready.pop_front()
    }

    /// Bytes of an unfinished line held.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// The `"lun"` parameter: `"T:L"` (the same text as the command line's).
pub fn address_param(params: &Map<String, Value>) -> Result<crate::config::ctl::Address, RpcError> {
    match params.get("lun") {
        Some(Value::String(s)) => crate::config::ctl::parse_address(s)
            .map_err(|e| RpcError::invalid_params(format!("\"lun\": {e}"))),
        Some(_) => Err(RpcError::invalid_params(
            "\"lun\" must be a string \"TARGET:LUN\"",
        )),
        None => Err(RpcError::invalid_params("missing \"lun\": \"TARGET:LUN\"")),
    }
}

/// Refuses parameters a method does not know (a typo must not be silently ignored).
pub fn only_params(params: &Map<String, Value>, known: &[&str]) -> Result<(), RpcError> {
    match params.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(RpcError::invalid_params(format!(
            "unknown parameter \"{k}\" (expected {})",
            if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            }
        ))),
        None => Ok(()),
    }
}

/// A boolean parameter, `default` when absent.
pub fn bool_param(
    params: &Map<String, Value>,
    name: &str,
    default: bool,
) -> Result<bool, RpcError> {
    match params.get(name) {
        None => Ok(default),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(RpcError::invalid_params(format!(
            "\"{name}\" must be true or false"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let r = parse_request(br#"{"jsonrpc":"2.0","id":1,"method":"list"}"#).unwrap();
        assert_eq!(r.id, Some(json!(1)));
        assert_eq!(r.method, "list");
        assert!(r.params.is_empty());
        let r =
            parse_request(br#"{"jsonrpc":"2.0","id":"a","method":"flush","params":{"lun":"0:1"}}"#)
                .unwrap();
        assert_eq!(r.id, Some(json!("a")));
        assert_eq!(address_param(&r.params).unwrap().to_string(), "0:1");
        let r = parse_request(br#"{"jsonrpc":"2.0","method":"list"}"#).unwrap();
        assert_eq!(r.id, None, "a notification");
    }

    fn err(line: &[u8]) -> (Value, i64, String) {
        let (id, e) = parse_request(line).unwrap_err();
        (id, e.code, e.message)
    }

    #[test]
    fn malformed_requests() {
        let (id, c, m) = err(b"{not json");
        assert_eq!((id, c), (Value::Null, code::PARSE_ERROR));
        assert!(m.starts_with("parse error: "), "{m}");
        assert_eq!(err(b"[1,2]").1, code::INVALID_REQUEST);
        assert!(err(b"[]").2.contains("batch"));
        assert_eq!(err(b"42").1, code::INVALID_REQUEST);
        let (id, c, m) = err(br#"{"id":7,"method":"list"}"#);
        assert_eq!((id, c), (json!(7), code::INVALID_REQUEST));
        assert!(m.contains("jsonrpc"), "{m}");
        let (id, c, _) = err(br#"{"jsonrpc":"1.0","id":7,"method":"list"}"#);
        assert_eq!((id, c), (json!(7), code::INVALID_REQUEST));
        assert_eq!(
            err(br#"{"jsonrpc":"2.0","id":7,"method":5}"#).1,
            code::INVALID_REQUEST
        );
        let (id, c, _) = err(br#"{"jsonrpc":"2.0","id":{"x":1},"method":"list"}"#);
        assert_eq!((id, c), (Value::Null, code::INVALID_REQUEST));
        let (_, c, m) = err(br#"{"jsonrpc":"2.0","id":7,"method":"list","params":[1]}"#);
        assert_eq!(c, code::INVALID_PARAMS);
        assert!(m.contains("object"), "{m}");
        let (_, c, m) = err(br#"{"jsonrpc":"2.0","id":7,"method":"list","parms":{}}"#);
        assert_eq!(c, code::INVALID_REQUEST);
        assert!(m.contains("parms"), "{m}");
    }

    #[test]
    fn responses_are_one_line() {
        let l = ok_line(&json!(3), json!({"a": "x\ny"}));
        assert_eq!(l.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(*l.last().unwrap(), b'\n');
        let v: Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["jsonrpc"], "2.0");
        assert_eq!(v["id"], 3);
        let l = error_line(
            &Value::Null,
            &RpcError::new(code::UNKNOWN_LUN, "no LUN 0:9"),
        );
        let v: Value = serde_json::from_slice(&l).unwrap();
        assert_eq!(v["error"]["code"], code::UNKNOWN_LUN);
        assert_eq!(v["error"]["message"], "no LUN 0:9");
        assert!(v["id"].is_null());
    }

    #[test]
    fn line_framing() {
        let mut r = LineReader::default();
        r.feed(b"ab");
        assert_eq!(r.next_line(), None);
        r.feed(b"c\r\n\n  \nde");
        assert_eq!(r.next_line(), Some(Line::Complete(b"abc".to_vec())));
        assert_eq!(r.next_line(), None, "blank lines are skipped");
        assert_eq!(r.pending(), 2);
        r.feed(b"f\n");
        assert_eq!(r.next_line(), Some(Line::Complete(b"def".to_vec())));
    }

    #[test]
    fn oversized_lines_are_skipped_not_buffered() {
        let mut r = LineReader::default();
        let chunk = vec![b'x'; 8192];
        for _ in 0..20 {
            r.feed(&chunk);
            assert!(r.pending() <= MAX_LINE);
        }
        assert_eq!(r.next_line(), Some(Line::Oversized));
        assert_eq!(r.next_line(), None);
        assert_eq!(r.pending(), 0);
        r.feed(b"still the long line\n{\"next\":1}\n");
        assert_eq!(
            r.next_line(),
            Some(Line::Complete(b"{\"next\":1}".to_vec()))
        );
        // Exactly MAX_LINE is fine.
        let mut exact = vec![b'y'; MAX_LINE];
        exact.push(b'\n');
        r.feed(&exact);
        assert!(matches!(r.next_line(), Some(Line::Complete(l)) if l.len() == MAX_LINE));
        let mut over = vec![b'y'; MAX_LINE + 1];
        over.push(b'\n');
        r.feed(&over);
        assert_eq!(r.next_line(), Some(Line::Oversized));
    }

    #[test]
    fn params() {
        let p: Map<String, Value> = serde_json::from_str(r#"{"lun":"1:2","x":true}"#).unwrap();
        assert!(only_params(&p, &["lun"])
            .unwrap_err()
            .message
            .contains("\"x\""));
        assert_eq!(bool_param(&p, "x", false), Ok(true));
        assert_eq!(bool_param(&p, "y", false), Ok(false));
        assert!(bool_param(&p, "lun", false).is_err());
        let p: Map<String, Value> = serde_json::from_str(r#"{"lun":"1:99999"}"#).unwrap();
        assert_eq!(address_param(&p).unwrap_err().code, code::INVALID_PARAMS);
        let p: Map<String, Value> = serde_json::from_str(r#"{"lun":5}"#).unwrap();
        assert!(address_param(&p).is_err());
        assert!(address_param(&Map::new())
            .unwrap_err()
            .message
            .contains("missing"));
    }
}
