//! iSCSI passthrough LUNs: guest CDBs run on a LUN of an iSCSI target through the pure-Rust
//! initiator ([`crate::iscsi`]), over a connection the supervisor logged in (docs/iscsi.md).
//!
//! One thread per iSCSI LUN (`vus-iscsi`, seccomp role `worker-iscsi`) reads the socket for
//! every command but a lone one (below): it reads nothing but the socket and an eventfd,
//! writes PDUs with `writev`, and never creates or connects a socket. The [`Session`] (not
//! `Sync`) is behind the LUN's lock (`Shared`), which the LUN thread holds while it processes a
//! PDU but not while it waits (`epoll_wait` on the socket and its eventfd). A request-queue
//! thread ([`Passthrough::submit`]: it submits every command of the batch it popped, then
//! waits for each [`Ticket`]) sends its command itself when the lock is free and the CmdSN
//! window open: the SCSI Command PDU with its immediate and unsolicited data go out with one
//! `writev` from that thread, without waking the LUN thread (a cross-CPU
//! wake-up on the way to the target saved). Otherwise (lock busy, window closed, connection
//! being re-established, commands to reissue) it hands the command to the LUN thread through
//! a channel and wakes it with the eventfd, as before. The LUN thread answers R2Ts and pings,
//! lands Data-In and answers each caller when its status arrives. Status, sense data and
//! residuals come back as the target sent them.
//!
//! A queue thread waiting for the answer to a command it sent itself, the only one outstanding
//! on the connection (QD1), reads the connection instead ([`Submitted::read_input`]): it takes
//! the socket out of the LUN thread's epoll set ([`Link::watch`]), reads what is there while it
//! spins for the answer, watches the socket beside its answer eventfd when it sleeps
//! ([`Submitted::input_fd`]), and gives the socket back once the answer is in. The answer then
//! costs one cross-thread wake-up instead of two (the LUN thread's, then its hand-off to the
//! queue thread), ~25 µs each on this kind of VM (docs/benchmarks.md). Whoever holds the lock
//! reads whole PDUs, so the two never split one; what only the LUN thread may do (drop a failed
//! connection and reissue, act on an asynchronous event) is left to it, woken through its
//! eventfd, and the socket goes back to it as soon as more than one command is outstanding.
//!
//! Data moves straight between guest memory and the socket ([`GuestBuf`]: the command's
//! scatter-gather list as a [`TaskBuffer`]): Data-Out PDUs go out with one `writev` of their
//! headers and the guest's segments, Data-In lands with one `readv` into them (after what the
//! session's reader had already buffered). With a data digest, each PDU goes through a scratch
//! buffer of one PDU instead, so that the digest is computed once over exactly what is sent or
//! checked over exactly what is placed (the guest may change its memory at any time). The
//! queue thread that submitted a command keeps its guest memory mapped until the answer is in
//! ([`Ticket`] borrows the scatter-gather list and waits for the answer when dropped).
//!
//! Connection loss (ErrorRecoveryLevel 0): the commands that did not complete are kept
//! ([`Session::take_outstanding`]), a fresh logged-in connection is asked for
//! ([`Reconnect`]: the supervisor, over the fd broker), and they are reissued in CmdSN order.
//! A command that waited [`GIVE_UP`] without a connection is completed with BUSY, which the
//! guest retries; no command is ever completed GOOD unless the target said so.
//!
//! The rooms, one concern each (each imports from its siblings only, never from this file,
//! and the arrows between them point one way: from the LUN's handle down to the types):
//! - `types.rs`: what the rest of the daemon uses besides the LUN itself: the limits and
//!   timeouts, [`PassthroughOutput`], [`TaskManagement`] and [`TmfOutcome`], the connection
//!   the supervisor hands over ([`IscsiHandover`]) and fresh ones ([`Reconnect`],
//!   [`broker_reconnect`]);
//! - `passthrough.rs`: the [`Passthrough`] trait the SCSI bus forwards commands through;
//! - `guest_buf.rs`: [`GuestBuf`], a command's guest memory as the session's [`TaskBuffer`];
//! - `wake.rs`: a request-queue thread's answer eventfd ([`AnswerWake`], [`answer_wake`]);
//! - `shared.rs`: what the LUN thread and the queue threads share under the LUN's lock
//!   (`Shared`), the commands and messages handed to the LUN thread, who waits for each answer;
//! - `link.rs`: the queue threads' hold on the LUN thread (`Link`: the lock, the eventfd, the
//!   epoll set) and a queue thread's own read of its answer (`Input`, `read_from`);
//! - `ticket.rs`: a command on its way ([`Submitted`], [`Ticket`]) and its share of the bytes
//!   in flight;
//! - `lun.rs`: [`IscsiLun`], the queue threads' handle: starting the LUN thread, submitting;
//! - `lun_thread.rs`: the LUN thread (`LunThread`): reading, task management, reconnection,
//!   logout;
//! - `tests.rs`: the unit tests (some against a real tgtd).
//!
//! [`Session`]: crate::iscsi::session::Session
//! [`Session::take_outstanding`]: crate::iscsi::session::Session::take_outstanding
//! [`TaskBuffer`]: crate::iscsi::buffer::TaskBuffer
//! [`Link::watch`]: link::Link::watch

mod guest_buf;
mod link;
mod lun;
mod lun_thread;
mod passthrough;
mod shared;
mod ticket;
mod types;
mod wake;

pub use guest_buf::GuestBuf;
pub use lun::IscsiLun;
pub use passthrough::Passthrough;
pub use ticket::{Submitted, Ticket};
pub use types::{
    broker_reconnect, Connection, IscsiHandover, PassthroughOutput, Reconnect, TaskManagement,
    TmfOutcome, GIVE_UP, LOGOUT_TIMEOUT, MAX_IN_FLIGHT_BYTES, MAX_TRANSFER, TMF_TIMEOUT,
};
pub use wake::{answer_wake, AnswerWake};

#[cfg(test)]
mod tests;
