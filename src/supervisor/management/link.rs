//! The management's way to the worker: the fd broker (placeholder until the management
//! messages land).

use std::os::fd::BorrowedFd;

use serde_json::Value;

use super::{methods::WorkerCall, WorkerLink};
use crate::broker::Body;
use crate::supervisor::broker::SupervisorBroker;

/// The current worker's broker.
pub struct BrokerLink<'a>(pub &'a mut SupervisorBroker);

impl WorkerLink for BrokerLink<'_> {
    fn send(&mut self, _call: &WorkerCall, _fds: &[BorrowedFd<'_>]) -> Result<u64, String> {
        Err("not yet".into())
    }
}

/// The worker's reply as the management's result.
pub fn reply(body: Body) -> Result<Value, String> {
    match body {
        Body::Error { message } => Err(message),
        _ => Ok(Value::Null),
    }
}
