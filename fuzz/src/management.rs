//! The management socket's input: a client's byte stream, cut into lines
//! (`protocol::LineReader`), parsed as JSON-RPC (`protocol::parse_request`) and run through the
//! methods (`methods::call`) against a record of one LUN, with no image directory (so no path
//! is ever opened) and no passed descriptors; forwarded calls are finished with a success or a
//! failure chosen by the input.
//!
//! Input: repeated [chunk length (u8)][chunk]; a chunk's first byte, when a call is forwarded,
//! also picks the worker's answer. Invariants: no panic; no partial line held longer than
//! `MAX_LINE`; every answer is one line of valid JSON-RPC; the record stays within the address
//! ranges and never holds a LUN in a transient state once its call finished.

use std::collections::VecDeque;

use serde_json::{json, Value};
use vhost_user_scsi::{
    config::{LunConfig, MAX_LUN},
    supervisor::management::{
        iscsi::IscsiAllow,
        methods::{self, Context, LunState, Outcome, Table},
        peer::Caller,
        protocol::{self, code, error_line, ok_line, Line, LineReader, RpcError, MAX_LINE},
    },
};

use crate::Cursor;

fn check_line(line: &[u8]) {
    assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    assert_eq!(line.last(), Some(&b'\n'));
    let v: Value = serde_json::from_slice(line).expect("an answer is JSON");
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(v.get("result").is_some() != v.get("error").is_some());
}

/// One input (the fuzz target's body; also replayed by `tests/corpus.rs`).
pub fn run(data: &[u8]) {
    let mut c = Cursor::new(data);
    let mut reader = LineReader::default();
    let mut table = Table::new([(LunConfig::new(0, 0, "null://1M"), 1 << 20)]);
    let caller = Caller {
        pid: 1,
        uid: 0,
        gid: 0,
        groups: Vec::new(),
    };
    while !c.is_empty() {
        let n = c.u8() as usize;
        let chunk = c.bytes(n);
        reader.feed(chunk);
        assert!(reader.pending() <= MAX_LINE);
        while let Some(line) = reader.next_line() {
            let Line::Complete(line) = line else {
                check_line(&error_line(
                    &Value::Null,
                    &RpcError::new(code::INVALID_REQUEST, "too long"),
                ));
                continue;
            };
            let req = match protocol::parse_request(&line) {
                Ok(r) => r,
                Err((id, e)) => {
                    check_line(&error_line(&id, &e));
                    continue;
                }
            };
            let mut fds = VecDeque::new();
            let outcome = methods::call(
                Context {
                    table: &mut table,
                    image_dirs: &[],
                    caller: &caller,
                    fds: &mut fds,
                    // No portal: an iSCSI add-lun is refused before anything connects.
                    iscsi: &IscsiAllow::default(),
                },
                &req.method,
                &req.params,
            );
            let result = match outcome {
                Outcome::Answer(r) => r,
                Outcome::Forward { then, .. } => {
                    let answer = if chunk.first().is_some_and(|b| b % 2 == 0) {
                        Ok(json!({"size": 4096, "luns": []}))
                    } else {
                        Err(RpcError::new(code::WORKER, "no"))
                    };
                    methods::finish(&mut table, then, answer)
                }
            };
            let id = req.id.unwrap_or(Value::Null);
            match result {
                Ok(v) => check_line(&ok_line(&id, v)),
                Err(e) => check_line(&error_line(&id, &e)),
            }
            for (a, e) in &table.luns {
                assert!(a.lun <= MAX_LUN);
                assert_eq!((e.config.target, e.config.lun), (a.target, a.lun));
                assert_eq!(e.state, LunState::Online, "{a} left {:?}", e.state);
            }
        }
    }
}
