//! What the rest of the daemon sees of an iSCSI LUN's commands and connection: the answer to
//! a passthrough command ([`PassthroughOutput`]), task management ([`TaskManagement`],
//! [`TmfOutcome`]), the connection the supervisor hands over ([`IscsiHandover`]) and fresh ones
//! ([`Reconnect`], [`broker_reconnect`]), and the limits and timeouts.

use std::{
    net::TcpStream,
    os::fd::AsRawFd,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::broker::{endpoint::BrokerHandle, iscsi::IscsiMsg, Body};
use crate::iscsi::login::SessionParams;

/// A connection in the full feature phase and its parameters, as the supervisor hands it over.
pub type Connection = (TcpStream, SessionParams);

/// How long a command waits for a new connection before it is completed with BUSY (the guest
/// retries it). Linux's virtio-scsi never times a command out itself (its `eh_timed_out` only
/// resets the timer), so this is what bounds a command's wait for an absent target. (The `--help` text, `LUN_HELP` in config/cli.rs, names
/// this value.)
pub const GIVE_UP: Duration = Duration::from_secs(20);

/// Largest data transfer of one passthrough command: larger requests are refused with INVALID
/// FIELD IN CDB (what the target's Block Limits would say; the initiator's lengths are 32-bit).
pub const MAX_TRANSFER: usize = 32 << 20;

/// Most data bytes of one LUN's commands in flight together. A guest can point many
/// descriptors at the same pages, so its memory size does not bound this; beyond it commands
/// are answered BUSY (the guest retries them when earlier ones completed).
pub const MAX_IN_FLIGHT_BYTES: usize = 256 << 20;

/// SAM status codes used here.
pub(super) mod status {
    pub const CHECK_CONDITION: u8 = 0x02;
    pub const BUSY: u8 = 0x08;
}

/// Fixed-format sense data (SPC-5 4.4.3) for the few answers made here rather than by the target.
pub(super) fn fixed_sense(key: u8, asc: u8, ascq: u8) -> Vec<u8> {
    let mut s = vec![0u8; 18];
    s[0] = 0x70;
    s[2] = key;
    s[7] = 10;
    s[12] = asc;
    s[13] = ascq;
    s
}

/// The answer to one passthrough command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PassthroughOutput {
    pub status: u8,
    pub sense: Vec<u8>,
    /// Data bytes moved in the command's direction.
    pub transferred: u32,
    /// The command was aborted by a task management function (ABORT TASK, ABORT TASK SET,
    /// LOGICAL UNIT RESET) before it completed: it has no status (virtio-scsi answers
    /// VIRTIO_SCSI_S_ABORTED).
    pub aborted: bool,
}

impl PassthroughOutput {
    /// A completed command's answer.
    pub fn new(status: u8, sense: Vec<u8>, transferred: u32) -> Self {
        Self {
            status,
            sense,
            transferred,
            aborted: false,
        }
    }

    pub(super) fn check_condition(key: u8, asc: u8, ascq: u8) -> Self {
        Self::new(status::CHECK_CONDITION, fixed_sense(key, asc, ascq), 0)
    }

    pub(super) fn busy() -> Self {
        Self::new(status::BUSY, Vec::new(), 0)
    }

    /// Aborted by a task management function; what a caller without an ABORTED response
    /// sees is ABORTED COMMAND.
    pub fn aborted() -> Self {
        Self {
            aborted: true,
            ..Self::check_condition(0x0b, 0x00, 0x00)
        }
    }
}

/// A task management function for a passthrough LU, as the guest asked for it (virtio-scsi
/// TMF subtypes), forwarded to the target (iSCSI Task Management Function Request, RFC 7143
/// §11.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskManagement {
    /// ABORT TASK: the command the guest submitted with this tag (virtio-scsi `id`).
    AbortTask(u64),
    /// ABORT TASK SET: every command of the LU from this initiator.
    AbortTaskSet,
    /// LOGICAL UNIT RESET.
    LogicalUnitReset,
    /// QUERY TASK: whether the command the guest submitted with this tag is still in the task
    /// set. Answered by the LUN thread from the commands it has sent and not yet seen answered
    /// (or not yet sent): iSCSI (RFC 7143) has no QUERY TASK function (RFC 7144 adds one,
    /// behind an `iSCSIProtocolLevel` this initiator does not negotiate, and tgtd rejects it).
    QueryTask(u64),
    /// QUERY TASK SET: whether any command of the LU is in the task set (as [`QueryTask`]).
    ///
    /// [`QueryTask`]: TaskManagement::QueryTask
    QueryTaskSet,
}

/// The target's answer to a [`TaskManagement`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TmfOutcome {
    /// Carried out (for ABORT TASK also: the task was not there any more, having completed;
    /// for QUERY TASK (SET): no such task in the task set).
    Complete,
    /// QUERY TASK (SET): the task (a task) is in the task set (FUNCTION SUCCEEDED).
    Succeeded,
    /// The target refused it (function not supported, rejected, not authorized...).
    Rejected,
    /// The target does not know the LUN.
    IncorrectLun,
    /// Not carried out: the connection failed meanwhile (its commands are reissued on the next
    /// one) or the LUN thread did not answer.
    Failed,
}

/// How long a LUN thread that is closing its connection waits for the target's Logout
/// Response (RFC 7143 §11.15) before it closes the socket anyway: a target that does not answer
/// must not hold `remove-lun` or the worker's exit.
pub const LOGOUT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a task management function waits for the LUN thread's answer: a reconnection
/// (with its backoff) fits, a target that never answers does not hold the control queue.
pub const TMF_TIMEOUT: Duration = Duration::from_secs(30);

/// What the supervisor gives the worker for one iSCSI LUN: the LUN number on the target and
/// the logged-in connection (inherited like the LUN files; taken by the first worker only: a
/// restarted worker asks for a fresh one).
#[derive(Clone)]
pub struct IscsiHandover {
    /// The LUN on the target.
    pub target_lun: u16,
    /// `iscsi://...` as configured (no secret), for logs.
    pub description: String,
    /// The parameters of the first login (its ISID is reused for reinstatement).
    pub params: SessionParams,
    initial: Arc<Mutex<Option<TcpStream>>>,
}

impl IscsiHandover {
    pub fn new(
        target_lun: u16,
        description: String,
        stream: TcpStream,
        params: SessionParams,
    ) -> Self {
        Self {
            target_lun,
            description,
            params,
            initial: Arc::new(Mutex::new(Some(stream))),
        }
    }

    /// Takes the initial connection (once): the worker to use it, the supervisor to close its
    /// copy once the first worker has it.
    pub fn take(&self) -> Option<Connection> {
        let s = self
            .initial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()?;
        Some((s, self.params.clone()))
    }

    /// The initial connection's descriptor while it has not been taken.
    pub fn raw_fd(&self) -> Option<i32> {
        self.initial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|s| s.as_raw_fd())
    }
}

impl std::fmt::Debug for IscsiHandover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IscsiHandover")
            .field("target_lun", &self.target_lun)
            .field("description", &self.description)
            .finish()
    }
}

/// Gets a fresh, logged-in connection that reinstates `lost` (same ISID, TSIH 0). Blocks;
/// returns a one-line reason on failure (the caller retries with backoff).
pub trait Reconnect: Send {
    fn reconnect(&mut self, lost: &SessionParams) -> Result<Connection, String>;
}

impl<F: FnMut(&SessionParams) -> Result<Connection, String> + Send> Reconnect for F {
    fn reconnect(&mut self, lost: &SessionParams) -> Result<Connection, String> {
        self(lost)
    }
}

/// The worker's [`Reconnect`]: asks the supervisor over the fd broker for a fresh connection to
/// LUN `target:lun`'s target ([`IscsiMsg::Reconnect`]); blocks until it answers.
pub fn broker_reconnect(handle: BrokerHandle, target: u8, lun: u16) -> Box<dyn Reconnect> {
    Box::new(move |_: &SessionParams| -> Result<Connection, String> {
        let (body, mut fds) = handle
            .request(Body::Iscsi(IscsiMsg::Reconnect { target, lun }), &[])
            .map_err(|e| e.to_string())?;
        match body {
            Body::Iscsi(IscsiMsg::Connected { params }) if fds.len() == 1 => {
                let fd = fds.pop().expect("one fd");
                Ok((TcpStream::from(fd), params))
            }
            Body::Error { message } => Err(message),
            other => Err(format!(
                "unexpected broker reply with {} fd(s): {other:?}",
                fds.len()
            )),
        }
    })
}
