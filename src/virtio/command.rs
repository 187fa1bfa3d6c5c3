//! Request queues: one virtio-scsi command per chain, executed against the [`ScsiBus`].

use std::time::Instant;

use log::{debug, warn};
use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_S_ABORTED, VIRTIO_SCSI_S_BAD_TARGET, VIRTIO_SCSI_S_FAILURE, VIRTIO_SCSI_S_OK,
};

use super::{
    request::{
        parse_cmd_request, CmdRequest, CmdResponse, RequestError, SplitChain, RESP_HEADER_SIZE,
    },
    LunAddress,
};
use crate::scsi::{CmdOutput, IoPlan, Prepared, ScsiBus, SgList};

/// Executes the command in one request chain; returns the used length (response header plus
/// data-in bytes written).
pub fn handle_command(bus: &ScsiBus, chain: SplitChain<'_>) -> u32 {
    let mut req = CmdRequest::new();
    if let Err(e) = parse_cmd_request(&chain, &mut req) {
        return answer_unparsed(&req, &e);
    }
    match start_command(bus, &req, false, Instant::now()) {
        Started::Done(used) => used,
        Started::Io(io) => io.run_inline(bus),
        Started::Passthrough(p) => p.finish(),
        // Not answered to a caller without I/O in flight.
        Started::DrainFirst => 0,
    }
}

/// Answers a chain [`parse_cmd_chain`](super::request::parse_cmd_chain) refused (as far as
/// it can be answered); returns the used length.
pub fn answer_unparsed(req: &CmdRequest<'_>, e: &RequestError) -> u32 {
    if let RequestError::ShortRequestHeader(_) = e {
        warn!("request queue: {e}; answered VIRTIO_SCSI_S_FAILURE");
        fail(&req.response, VIRTIO_SCSI_S_FAILURE);
        RESP_HEADER_SIZE as u32
    } else {
        warn!("request queue: {e}; chain returned unanswered");
        0
    }
}

/// A command a passthrough LU (iSCSI) has on its way: [`PassthroughReply::finish`] waits for
/// the answer and writes the response. A queue thread starts every command of its batch before
/// it finishes any, so that they are outstanding at the target together.
pub struct PassthroughReply<'a> {
    submitted: crate::block::iscsi::Submitted<'a>,
    response: SgList<'a>,
    reply: ReplyShape,
}

impl PassthroughReply<'_> {
    /// Whether the answer is in ([`PassthroughReply::finish`] will not block).
    pub fn is_ready(&mut self) -> bool {
        self.submitted.is_ready()
    }

    /// Whether the submitting thread's answer eventfd ([`crate::block::iscsi::answer_wake`])
    /// is written when the answer is in.
    pub fn wakes(&self) -> bool {
        self.submitted.wakes()
    }

    /// Reads what the target sent on the command's connection, if anything (see
    /// [`crate::block::iscsi::Ticket::read_input`]); true when something was read.
    pub fn read_input(&mut self) -> bool {
        self.submitted.read_input()
    }

    /// The command's connection, to watch while waiting for its answer (see
    /// [`crate::block::iscsi::Ticket::input_fd`]).
    pub fn input_fd(&self) -> Option<std::os::fd::RawFd> {
        self.submitted.input_fd()
    }

    /// The caller waits without watching the command's connection (see
    /// [`crate::block::iscsi::Ticket::stop_watching`]).
    pub fn stop_watching(&mut self) {
        self.submitted.stop_watching()
    }

    /// Waits for the answer (data-in lands in the guest's buffer) and writes the response;
    /// returns the used length.
    pub fn finish(self) -> u32 {
        let answer = self.submitted.wait();
        if answer.aborted {
            // Ended by a task management function the guest sent (virtio 1.2, 5.6.6.1).
            fail(&self.response, VIRTIO_SCSI_S_ABORTED);
            return RESP_HEADER_SIZE as u32;
        }
        let out = crate::scsi::io::passthrough_output(answer);
        self.reply.respond(&out, &self.response)
    }
}

/// A command whose backend I/O is to run (possibly asynchronously). It borrows the parsed
/// request (`'r`), which its caller keeps in place until the command is handed off.
pub struct PendingIo<'r> {
    pub target: u8,
    pub lun: u16,
    pub plan: IoPlan<'r>,
    /// Where the response header goes.
    pub response: &'r SgList<'r>,
    /// Direction and size of the guest's data buffer, for the residual count.
    pub reply: ReplyShape,
}

/// What turning a finished I/O into a response needs besides the SCSI answer (plain data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyShape {
    pub data_in: bool,
    /// Length of the guest's data buffer in the command's direction.
    pub buffer_len: usize,
}

impl ReplyShape {
    /// Writes the response for `out` into `response`; returns the chain's used length.
    pub fn respond(&self, out: &CmdOutput, response: &SgList<'_>) -> u32 {
        self.respond_with(out, |header| {
            response.copy_from(header);
        })
    }

    /// Like [`ReplyShape::respond`], handing the encoded response header to `write`.
    pub fn respond_with(&self, out: &CmdOutput, write: impl FnOnce(&[u8])) -> u32 {
        let residual = self.buffer_len.saturating_sub(out.transferred as usize);
        let header = CmdResponse {
            sense: &out.sense,
            // The chain is at most 4 GiB (virtio 1.2, 2.7.5.2), so this cannot truncate.
            resid: u32::try_from(residual).unwrap_or(u32::MAX),
            status: out.status,
            response: VIRTIO_SCSI_S_OK as u8,
        }
        .encode();
        write(&header);
        let data_in_written = if self.data_in {
            (out.transferred as usize).min(self.buffer_len)
        } else {
            0
        };
        (RESP_HEADER_SIZE + data_in_written) as u32
    }
}

impl PendingIo<'_> {
    /// Runs the I/O on this thread and completes the command; returns the used length. The
    /// synchronous path of every engine (`--aio=sync`'s inline engine takes nothing).
    pub fn run_inline(&self, bus: &ScsiBus) -> u32 {
        self.finish(bus, bus.run_sync(&self.plan))
    }

    /// Completes the command with the I/O's result; returns the used length.
    pub fn finish(&self, bus: &ScsiBus, result: std::io::Result<()>) -> u32 {
        let out = bus.complete(self.plan.unit.as_deref(), self.plan.meta, result);
        self.reply.respond(&out, self.response)
    }
}

/// The first half of a command: answered at once, or an I/O to run. `'r`: the parsed request
/// it borrows; `'a`: guest memory.
// `Passthrough` is the large variant (its own copy of the response list); it is rare, and a
// `Started` is built in place and taken apart where it is matched, so only a variant's payload
// moves. Boxing it would add an allocation per passthrough command.
#[allow(clippy::large_enum_variant)]
pub enum Started<'r, 'a> {
    /// Answered; the used length.
    Done(u32),
    Io(PendingIo<'r>),
    /// Not started: the command would wait for the caller's own I/O in flight. Complete it,
    /// then [`start_command`] the request again.
    DrainFirst,
    /// On its way to a passthrough LU: finish it (after starting the rest of the batch).
    Passthrough(PassthroughReply<'a>),
}

/// Checks one parsed request ([`parse_cmd_chain`](super::request::parse_cmd_chain)); READ,
/// WRITE and SYNCHRONIZE CACHE come back as [`Started::Io`], everything else is executed and
/// answered now. `caller_io`: the caller still has I/O of its own in flight; a command that
/// would wait for it comes back as [`Started::DrainFirst`] (see [`ScsiBus::prepare`]).
/// `arrived`: when the chain was popped.
///
/// The request is borrowed, not moved: it is large, and the I/O of the common commands only
/// needs to point into it until the caller has handed it to an engine.
pub fn start_command<'r, 'a>(
    bus: &ScsiBus,
    req: &'r CmdRequest<'a>,
    caller_io: bool,
    arrived: Instant,
) -> Started<'r, 'a> {
    // One look at the bus's table: the target (BAD_TARGET without it) and the LU.
    let found =
        LunAddress::decode(&req.lun).and_then(|a| Some((a, bus.find(a.target, a.lun).ok()?)));
    let Some((addr, lu)) = found else {
        debug!(
            "command {:#04x} for {:02x?}: no such target",
            req.cdb[0], req.lun
        );
        fail(&req.response, VIRTIO_SCSI_S_BAD_TARGET);
        return Started::Done(RESP_HEADER_SIZE as u32);
    };

    // VIRTIO_SCSI_F_INOUT is not offered, so a command moves data one way only (QEMU fails
    // bidirectional requests the same way).
    if !req.data_out.is_empty() && !req.data_in.is_empty() {
        warn!(
            "command {:#04x} for {}:{} has both data-out and data-in buffers; failed",
            req.cdb[0], addr.target, addr.lun
        );
        fail(&req.response, VIRTIO_SCSI_S_FAILURE);
        return Started::Done(RESP_HEADER_SIZE as u32);
    }

    let reply = if req.data_out.is_empty() {
        ReplyShape {
            data_in: true,
            buffer_len: req.data_in.len(),
        }
    } else {
        ReplyShape {
            data_in: false,
            buffer_len: req.data_out.len(),
        }
    };
    match bus.prepare_found(
        lu,
        addr.target,
        addr.lun,
        req.id,
        &req.cdb,
        &req.data_out,
        &req.data_in,
        caller_io,
        arrived,
    ) {
        Prepared::Done(out) => Started::Done(reply.respond(&out, &req.response)),
        Prepared::Io(plan) => Started::Io(PendingIo {
            target: addr.target,
            lun: addr.lun,
            plan,
            response: &req.response,
            reply,
        }),
        Prepared::Passthrough(submitted) => Started::Passthrough(PassthroughReply {
            submitted,
            // Kept past the request (its answer is awaited after the rest of the batch
            // started): the passthrough path's one copy of a list.
            response: req.response.clone(),
            reply,
        }),
        Prepared::DrainFirst => Started::DrainFirst,
    }
}

fn fail(response_area: &crate::scsi::SgList<'_>, code: u32) {
    CmdResponse {
        response: code as u8,
        ..CmdResponse::default()
    }
    .write_to(response_area);
}
