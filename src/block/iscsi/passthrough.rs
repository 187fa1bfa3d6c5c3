//! The SCSI bus's view of a logical unit whose commands run elsewhere ([`Passthrough`]).

use std::time::Instant;

use super::{
    ticket::Submitted,
    types::{PassthroughOutput, TaskManagement, TmfOutcome},
};
use crate::block::sg::SgList;

/// A logical unit whose commands are executed elsewhere (an iSCSI target's LUN): the SCSI bus
/// answers REPORT LUNS itself and forwards everything else.
pub trait Passthrough: Send + Sync {
    /// Sends `cdb` with one of `data_out` / `data_in` (the other is empty) on its way without
    /// waiting for the answer (several commands may be outstanding: a queue thread submits a
    /// whole batch, then collects the answers). The data moves between the lists' memory and
    /// the target until the answer is in.
    /// `tag` is the guest's tag of the command (what an ABORT TASK names).
    fn submit<'a>(
        &self,
        tag: u64,
        cdb: &[u8],
        data_out: &SgList<'a>,
        data_in: &SgList<'a>,
    ) -> Submitted<'a>;

    /// Runs `cdb` and waits for the answer.
    fn execute(
        &self,
        cdb: &[u8],
        data_out: &SgList<'_>,
        data_in: &SgList<'_>,
    ) -> PassthroughOutput {
        self.submit(0, cdb, data_out, data_in).wait()
    }

    /// Carries out a task management function at the target; the commands it ends are
    /// answered aborted ([`PassthroughOutput::aborted`]) before this returns.
    fn task_management(&self, _f: TaskManagement) -> TmfOutcome {
        TmfOutcome::Rejected
    }

    /// The front-end that sent the commands so far is gone (it disconnected, or the worker
    /// stops): its queue threads are about to be joined, each waiting for the answers to the
    /// commands it sent. Commands that wait for a connection to the target are answered
    /// (BUSY) at once rather than when they give up, so that neither the next front-end nor
    /// a stop waits for a target that is away; commands on the wire still wait for their
    /// answers (their data may be moving to or from guest memory meanwhile), which
    /// the connection's own timeouts bound. So are the commands its queue threads still send
    /// until [`Passthrough::front_end_back`].
    fn front_end_gone(&self) {}

    /// A new front-end is connected (before any of its queue threads runs): its commands wait
    /// for a connection again as long as [`GIVE_UP`] allows.
    ///
    /// [`GIVE_UP`]: super::types::GIVE_UP
    fn front_end_back(&self) {}

    /// The LU is going away (the worker stops): finish the commands already sent and end
    /// its connection cleanly, without waiting ([`Passthrough::wait_closed`] waits).
    fn close(&self) {}

    /// Waits until what [`Passthrough::close`] started is done, at most until `deadline`;
    /// whether it is.
    fn wait_closed(&self, _deadline: Instant) -> bool {
        true
    }

    /// What backs it, for logs.
    fn describe(&self) -> &str;
}
