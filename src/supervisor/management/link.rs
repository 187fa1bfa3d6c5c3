//! The management's way to the worker: a [`WorkerCall`] becomes a
//! [`ManageRequest`](crate::broker::manage::ManageRequest) on the fd broker, and the worker's
//! reply, checked against the request ([`ManageReply::check`]: the worker is the process a guest
//! may have compromised), becomes the JSON result of the management call.

use std::os::fd::{BorrowedFd, OwnedFd};

use serde_json::{json, Value};

use super::{
    call::{WorkerCall, WorkerLink},
    protocol::{code, RpcError},
};
use crate::{
    broker::{
        manage::{
            AddLun, Backing, FailureCode, LunAddress, LunStats, ManageMsg, ManageReply,
            ManageRequest, OpStats, WireCache, LATENCY_BUCKETS,
        },
        Body,
    },
    config::ctl::Address,
    supervisor::broker::SupervisorBroker,
};

fn wire(a: Address) -> LunAddress {
    LunAddress::new(a.target, a.lun)
}

/// The broker request for `call`.
pub fn request(call: &WorkerCall) -> ManageRequest {
    match call {
        WorkerCall::AddLun { config, iscsi, .. } => {
            let null = config
                .source
                .path()
                .and_then(crate::block::null::null_source_size);
            let backing = match (null, iscsi, config.source.iscsi()) {
                (_, Some(params), Some(src)) => Backing::Iscsi {
                    target_lun: src.lun,
                    params: params.clone(),
                },
                (Some(Ok(size)), ..) => Backing::Null { size },
                _ => Backing::File,
            };
            ManageRequest::AddLun(AddLun::from_config(config, backing))
        }
        WorkerCall::RemoveLun(a) => ManageRequest::RemoveLun { address: wire(*a) },
        WorkerCall::Resize(a) => ManageRequest::Resize { address: wire(*a) },
        WorkerCall::SetReadOnly(a, ro) => ManageRequest::SetReadOnly {
            address: wire(*a),
            read_only: *ro,
        },
        WorkerCall::Flush(a) => ManageRequest::Flush { address: wire(*a) },
        WorkerCall::RetryHeld => ManageRequest::RetryHeld,
        WorkerCall::Stats { address, after } => ManageRequest::Stats {
            address: address.map(wire),
            after: after.map(wire),
        },
        WorkerCall::ChangeMedium {
            address,
            cache,
            force,
        } => ManageRequest::ChangeMedium {
            address: wire(*address),
            medium: cache.map(|c| match c {
                crate::config::CacheMode::None => WireCache::None,
                crate::config::CacheMode::Writeback => WireCache::Writeback,
            }),
            force: *force,
        },
    }
}

/// The current worker's broker.
pub struct BrokerLink<'a>(pub &'a mut SupervisorBroker);

impl WorkerLink for BrokerLink<'_> {
    fn send(&mut self, call: &WorkerCall, fds: &[BorrowedFd<'_>]) -> Result<u64, String> {
        if self.0.is_closed() {
            return Err("the worker is not running".into());
        }
        self.0
            .send_request(Body::Manage(ManageMsg::Request(request(call))), fds)
            .map_err(|e| e.to_string())
    }
}

/// What the worker's reply amounts to.
#[derive(Debug)]
pub enum Answer {
    /// The call's result.
    Done(Value),
    /// A page of statistics with more to come after `next`.
    More {
        page: Vec<Value>,
        next: Address,
    },
    Failed(RpcError),
}

fn failure(code: FailureCode, message: String) -> RpcError {
    let c = match code {
        FailureCode::NoSuchLun => code::UNKNOWN_LUN,
        FailureCode::AddressInUse => code::DUPLICATE,
        FailureCode::Invalid => code::INVALID_PARAMS,
        FailureCode::Busy => code::BUSY,
        FailureCode::MediumLocked => code::MEDIUM_LOCKED,
        FailureCode::Io | FailureCode::Unsupported => code::WORKER,
    };
    RpcError::new(c, format!("the worker: {message}"))
}

fn op_json(o: &OpStats) -> Value {
    json!({
        "ops": o.ops,
        "bytes": o.bytes,
        "errors": o.errors,
        "latency-us": o.latency_us.to_vec(),
    })
}

/// One LUN's statistics as the management's JSON.
pub fn stats_json(s: &LunStats) -> Value {
    json!({
        "target": s.address.target,
        "lun": s.address.lun,
        "in-flight": s.in_flight,
        "read": op_json(&s.read),
        "write": op_json(&s.write),
        "other": op_json(&s.other),
    })
}

/// Decodes and checks the worker's reply to `call`.
pub fn answer(call: &WorkerCall, body: Body, fds: Vec<OwnedFd>) -> Answer {
    let bad = |m: String| {
        log::warn!("the worker's management reply was refused: {m}");
        Answer::Failed(RpcError::new(
            code::WORKER,
            format!("bad reply from the worker: {m}"),
        ))
    };
    let reply = match body {
        Body::Manage(ManageMsg::Reply(r)) => r,
        Body::Error { message } => {
            return Answer::Failed(RpcError::new(
                code::WORKER,
                format!(
                    "the worker: {}",
                    message
                        .chars()
                        .take(512)
                        .filter(|c| !c.is_control())
                        .collect::<String>()
                ),
            ))
        }
        other => return bad(format!("not a management reply: {other:?}")),
    };
    if let Err(e) = reply.check(&request(call), fds.len()) {
        return bad(e.to_string());
    }
    drop(fds);
    match reply {
        ManageReply::Done => Answer::Done(json!({})),
        ManageReply::Resized { old_size, new_size } => {
            Answer::Done(json!({"size": new_size, "old-size": old_size}))
        }
        ManageReply::Stats { luns, more } => {
            let page: Vec<Value> = luns.iter().map(stats_json).collect();
            match (more, luns.last()) {
                (true, Some(last)) => Answer::More {
                    page,
                    next: Address {
                        target: last.address.target,
                        lun: last.address.lun,
                    },
                },
                _ => Answer::Done(json!({ "luns": page })),
            }
        }
        ManageReply::List { .. } => bad("a list page where none was asked for".into()),
        ManageReply::Failed { code, message } => Answer::Failed(failure(code, message)),
    }
}

/// Upper bound of latency bucket `i` in seconds (`None`: the last, open-ended one).
pub fn bucket_le(i: usize) -> Option<f64> {
    (i + 1 < LATENCY_BUCKETS).then(|| (1u64 << i) as f64 * 1e-6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LunConfig;

    fn a(t: u8, l: u16) -> Address {
        Address { target: t, lun: l }
    }

    #[test]
    fn requests_carry_the_call() {
        let c = LunConfig::new(0, 3, "null://1M");
        match request(&WorkerCall::AddLun {
            config: Box::new(c),
            pr_file: false,
            iscsi: None,
        }) {
            ManageRequest::AddLun(add) => {
                assert_eq!(add.backing, Backing::Null { size: 1 << 20 });
                assert_eq!(add.address, LunAddress::new(0, 3));
                assert_eq!(add.fd_count(), 0);
            }
            other => panic!("{other:?}"),
        }
        let c = LunConfig::new(1, 2, "/img/x.img");
        let ManageRequest::AddLun(add) = request(&WorkerCall::AddLun {
            config: Box::new(c),
            pr_file: false,
            iscsi: None,
        }) else {
            panic!()
        };
        assert_eq!((&add.backing, add.fd_count()), (&Backing::File, 1));
    }

    #[test]
    fn replies_are_checked_against_the_request() {
        let resize = WorkerCall::Resize(a(0, 1));
        let ok = Body::Manage(ManageMsg::Reply(ManageReply::Resized {
            old_size: 1,
            new_size: 2,
        }));
        assert!(matches!(answer(&resize, ok.clone(), vec![]), Answer::Done(v) if v["size"] == 2));
        // The wrong kind of reply, or one with descriptors: refused.
        let flush = WorkerCall::Flush(a(0, 1));
        assert!(matches!(answer(&flush, ok, vec![]), Answer::Failed(e) if e.code == code::WORKER));
        let f = tempfile::tempfile().unwrap();
        let done = Body::Manage(ManageMsg::Reply(ManageReply::Done));
        assert!(matches!(
            answer(&flush, done.clone(), vec![f.into()]),
            Answer::Failed(_)
        ));
        assert!(matches!(answer(&flush, done, vec![]), Answer::Done(_)));
        let failed = Body::Manage(ManageMsg::Reply(ManageReply::failed(
            FailureCode::NoSuchLun,
            "gone",
        )));
        assert!(
            matches!(answer(&flush, failed, vec![]), Answer::Failed(e) if e.code == code::UNKNOWN_LUN)
        );
        let err = Body::error("not supported \u{1b}[31m");
        let Answer::Failed(e) = answer(&flush, err, vec![]) else {
            panic!()
        };
        assert!(!e.message.contains('\u{1b}'), "{}", e.message);
    }

    #[test]
    fn stats_pages() {
        let call = WorkerCall::Stats {
            address: None,
            after: None,
        };
        let s = LunStats {
            address: LunAddress::new(0, 4),
            read: OpStats::default(),
            write: OpStats::default(),
            other: OpStats::default(),
            in_flight: 2,
        };
        let page = Body::Manage(ManageMsg::Reply(ManageReply::Stats {
            luns: vec![s],
            more: true,
        }));
        match answer(&call, page, vec![]) {
            Answer::More { page, next } => {
                assert_eq!(next, a(0, 4));
                assert_eq!(page[0]["in-flight"], 2);
                assert_eq!(page[0]["read"]["latency-us"].as_array().unwrap().len(), 32);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(bucket_le(0), Some(1e-6));
        assert_eq!(bucket_le(LATENCY_BUCKETS - 1), None);
    }
}
