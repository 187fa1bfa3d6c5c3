//! What the management asks the worker, and the channel it goes through: kept apart from the
//! server and the methods so that both, and [`super::link`], depend on it and not on each
//! other.

use std::os::fd::BorrowedFd;

use crate::config::{ctl::Address, LunConfig};

/// What the supervisor asks the worker to do (the fd-broker message is made from it by
/// [`super::link`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerCall {
    /// Serve a new LUN. Descriptors: the source's (none for `null://`; the logged-in
    /// connection for `iscsi://`, with its negotiated `iscsi` parameters), then the
    /// `pr-file`'s.
    AddLun {
        config: Box<LunConfig>,
        pr_file: bool,
        iscsi: Option<Box<crate::iscsi::login::SessionParams>>,
    },
    /// Stop serving a LUN once its requests in flight are done; the worker closes its files.
    RemoveLun(Address),
    /// Re-read the source's size (CAPACITY DATA HAS CHANGED for the initiators).
    Resize(Address),
    SetReadOnly(Address, bool),
    Flush(Address),
    /// Retry the writes held for lack of space (`enospc=hold`) now, on every queue.
    RetryHeld,
    /// Statistics of one LUN, or a page of all of them after `after`.
    Stats {
        address: Option<Address>,
        after: Option<Address>,
    },
    /// Load a new medium into a removable LUN (`cache`: how its image, the one descriptor,
    /// was opened) or, without `cache`, take the medium out; `force` overrides the guest's
    /// PREVENT ALLOW MEDIUM REMOVAL.
    ChangeMedium {
        address: Address,
        cache: Option<crate::config::CacheMode>,
        force: bool,
    },
}

impl WorkerCall {
    /// Whether the call changes something (such calls are logged with the caller).
    pub fn mutates(&self) -> bool {
        !matches!(
            self,
            WorkerCall::Stats { .. } | WorkerCall::Flush(_) | WorkerCall::RetryHeld
        )
    }
}

/// The supervisor's way to the worker: sends a call with its descriptors and returns the
/// broker's id of the request, whose reply is then given to [`super::Server::on_reply`].
pub trait WorkerLink {
    fn send(&mut self, call: &WorkerCall, fds: &[BorrowedFd<'_>]) -> Result<u64, String>;
}

/// No worker to ask (between a worker's end and its restart).
pub struct NoWorker;

impl WorkerLink for NoWorker {
    fn send(&mut self, _: &WorkerCall, _: &[BorrowedFd<'_>]) -> Result<u64, String> {
        Err("the worker is not running".into())
    }
}
