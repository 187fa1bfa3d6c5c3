//! The full feature phase (RFC 7143 §3.2-3.5, §4, §11) over a connected, logged-in stream.
//!
//! One thread at a time drives the connection (`&mut self`; a caller may share a session
//! between threads behind a lock): commands are started (several may be outstanding within the
//! CmdSN window), and incoming PDUs are processed one at a time, answering R2Ts with Data-Out
//! straight from the caller's buffer and landing Data-In straight in it. Only
//! [`Session::start`] with the window open ([`Session::window_open`]) is sure not to read from
//! the stream: a caller that keeps one thread as the only reader may let other threads start
//! commands under that condition. Every PDU from the target
//! is checked (tags, sequence numbers, offsets, lengths); a violation fails the session with a
//! typed error, after which the caller drops the connection and may reissue the outstanding
//! commands ([`Session::take_outstanding`]) on a new one (ErrorRecoveryLevel 0, §7.1.5).

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsFd;
use std::time::Instant;

use super::buffer::{Piece, TaskBuffer};

use super::login::SessionParams;
use super::pdu::{
    self, ahs_type, task_attr, tmf, Ahs, Bhs, DataOut, Digests, NopOut, PduError, ScsiCommand,
    TaskMgmtRequest, RESERVED_TAG,
};

/// Errors of the full feature phase. All but [`SessionError::InvalidRequest`],
/// [`SessionError::Idle`] and [`SessionError::Task`] are fatal: the connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error(transparent)]
    Pdu(PduError),
    #[error("no PDU received before the read timeout")]
    Idle,
    #[error("iSCSI protocol violation by the target: {0}")]
    Protocol(String),
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    #[error("the session failed earlier and must be re-established")]
    Failed,
    #[error("the target asked to drop the connection (async event {0})")]
    Dropped(u8),
    /// Commands were outstanding and the target sent nothing for this many seconds, not even
    /// the answer to a NOP-Out ping (raised by the caller's keepalive, see
    /// [`Session::send_ping`]).
    #[error(
        "the target sent nothing for {0} s with commands outstanding, not even the answer to a \
         NOP-Out ping"
    )]
    Unresponsive(u64),
    /// A [`Session::submit`] command ended without status (not fatal).
    #[error(transparent)]
    Task(#[from] TaskError),
}

impl From<PduError> for SessionError {
    fn from(e: PduError) -> Self {
        match e {
            PduError::Idle => SessionError::Idle,
            e => SessionError::Pdu(e),
        }
    }
}

/// A task handle (the initiator task tag).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TaskTag(pub u32);

/// Residual count of a completed command (§11.4.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Residual {
    None,
    /// Fewer bytes than expected were transferred.
    Underflow(u32),
    /// The target wanted to transfer more than the expected length.
    Overflow(u32),
}

/// The outcome of a SCSI command that reached the target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResult {
    /// iSCSI Response (§11.4.3): 0 command completed at target, 1 target failure.
    pub response: u8,
    /// SCSI status byte (0 GOOD, 2 CHECK CONDITION, 8 BUSY, 0x28 TASK SET FULL...).
    pub status: u8,
    /// Sense data (empty unless CHECK CONDITION).
    pub sense: Vec<u8>,
    pub residual: Residual,
    /// Bytes of Data-In placed in the buffer.
    pub data_in_len: usize,
}

/// Why a task ended without a SCSI status.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TaskError {
    #[error("task aborted by task management")]
    Aborted,
    #[error("command rejected by the target: {} (reason {:#04x})", pdu::reject_reason::text(*.0), .0)]
    Rejected(u8),
}

/// A completed task; `buffer` gives back the caller's buffer.
#[derive(Debug)]
pub struct Completion<B> {
    pub tag: TaskTag,
    pub outcome: Result<ScsiResult, TaskError>,
    pub buffer: Option<B>,
}

/// Data of a pipelined command: the buffer's length is the expected transfer length.
#[derive(Debug)]
pub enum Data<B> {
    None,
    /// Read: the target's Data-In fills the buffer.
    In(B),
    /// Write: the buffer is sent as immediate, unsolicited and solicited data.
    Out(B),
}

/// Data of a synchronous command ([`Session::submit`]), borrowed for the call.
#[derive(Debug)]
pub enum DataRef<'x> {
    None,
    In(&'x mut [u8]),
    Out(&'x [u8]),
}

/// An asynchronous event from the target (§11.9).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// 0 SCSI async event (sense in `sense`), 1 logout requested (within `param3` seconds),
    /// 2 connection will be dropped, 3 session will be dropped, 4 renegotiation requested,
    /// 255 vendor specific.
    pub event: u8,
    pub lun: u64,
    pub sense: Vec<u8>,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
}

/// A command that was outstanding when the session failed, to reissue on a new connection.
#[derive(Debug)]
pub struct Outstanding<B> {
    pub tag: TaskTag,
    pub lun: u64,
    pub cdb: Vec<u8>,
    /// The caller's buffer; `None` for a [`Session::submit`] call (that call returned an error).
    pub data: Data<B>,
}

/// Outcome of a logout (§11.15).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogoutInfo {
    pub response: u8,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// Counters of what crossed the connection (to observe which protocol paths ran).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    pub commands: u64,
    pub immediate_data_bytes: u64,
    pub unsolicited_data_out_pdus: u64,
    pub r2ts: u64,
    pub solicited_data_out_pdus: u64,
    pub data_in_pdus: u64,
    /// Commands completed by status in the last Data-In (phase collapse).
    pub status_in_data_in: u64,
    pub scsi_responses: u64,
    /// NOP-In pings from the target that we answered.
    pub target_pings_answered: u64,
    pub async_events: u64,
    pub rejects: u64,
    pub max_outstanding: usize,
}

enum TaskBuf<B> {
    None,
    In(B),
    Out(B),
    ExternIn,
    ExternOut,
}

enum Extern<'x> {
    None,
    In(u32, &'x mut [u8]),
    Out(u32, &'x [u8]),
}

struct Task<B> {
    lun: u64,
    cdb: Vec<u8>,
    cmd_sn: u32,
    buf: TaskBuf<B>,
    expected_len: u32,
    /// Data-In: next DataSN and bytes received (offsets must be contiguous, DataPDUInOrder).
    next_data_sn: u32,
    received: u32,
    /// R2T: next R2TSN.
    next_r2t_sn: u32,
}

/// Serial number arithmetic (RFC 1982, §3.2.2.1).
fn sn_lt(a: u32, b: u32) -> bool {
    a != b && (b.wrapping_sub(a) as i32) > 0
}

/// Encodes a LUN number as the 8-byte LUN field (SAM: peripheral device addressing below 256,
/// flat space addressing up to 16383).
pub fn encode_lun(lun: u64) -> Result<u64, SessionError> {
    match lun {
        0..=255 => Ok(lun << 48),
        256..=16383 => Ok((0x4000 | lun) << 48),
        _ => Err(SessionError::InvalidRequest("LUN beyond 16383")),
    }
}

/// A logged-in iSCSI connection in the full feature phase. `B` is the caller's buffer type for
/// pipelined commands.
pub struct Session<S: Read + Write, B = Vec<u8>> {
    io: BufReader<S>,
    p: SessionParams,
    digests: Digests,
    tasks: HashMap<u32, Task<B>>,
    done: VecDeque<Completion<B>>,
    events: Vec<AsyncEvent>,
    /// Outstanding NOP-Out pings (by ITT) and answered ones.
    pings: Vec<u32>,
    answered_pings: Vec<u32>,
    /// When the last PDU from the target was read (what a keepalive measures silence from).
    last_pdu: Instant,
    /// Outstanding TMF or logout (at most one of each, driven synchronously).
    tmf_itt: Option<u32>,
    tmf_response: Option<u8>,
    logout_itt: Option<u32>,
    logout_response: Option<LogoutInfo>,
    failed: bool,
    stats: SessionStats,
    /// Scratch for NOP-In ping data and SCSI Response sense (bounded by MaxRecvDataSegmentLength),
    /// and Data-In of scattered buffers with a data digest.
    scratch: Vec<u8>,
    /// Scratch for sending: Data-Out of scattered buffers with a data digest (one PDU, bounded
    /// by MaxSendDataSegmentLength), PDU headers of scattered sends.
    out_scratch: Vec<u8>,
}

impl<S: Read + Write + AsFd, B: TaskBuffer> Session<S, B> {
    /// Continues a session logged in by [`super::login::login`], possibly in another process: the
    /// stream must be the very connection the login ran on, with nothing read or written since.
    pub fn new(stream: S, params: SessionParams) -> Result<Self, SessionError> {
        params
            .validate()
            .map_err(|_| SessionError::InvalidRequest("invalid session parameters"))?;
        if params.discovery {
            return Err(SessionError::InvalidRequest(
                "a discovery session cannot carry SCSI commands",
            ));
        }
        // Large enough that a whole Data-In PDU header and most payloads arrive in one read,
        // while payloads land straight in the caller's buffer (BufReader bypasses its buffer
        // for reads at least as large as it).
        let io = BufReader::with_capacity(64 * 1024, stream);
        Ok(Self {
            io,
            digests: params.digests(),
            p: params,
            tasks: HashMap::new(),
            done: VecDeque::new(),
            events: Vec::new(),
            pings: Vec::new(),
            answered_pings: Vec::new(),
            last_pdu: Instant::now(),
            tmf_itt: None,
            tmf_response: None,
            logout_itt: None,
            logout_response: None,
            failed: false,
            stats: SessionStats::default(),
            scratch: Vec::new(),
            out_scratch: Vec::new(),
        })
    }

    /// The current parameters and sequence numbers.
    pub fn params(&self) -> &SessionParams {
        &self.p
    }

    /// Counters since the session started.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// The stream (e.g. to set read timeouts for keepalive).
    pub fn stream(&self) -> &S {
        self.io.get_ref()
    }

    /// True if bytes from the target are already buffered here: an event loop that polls the
    /// socket for readability must call [`Session::receive_one`] first while this is true, since
    /// the socket itself will not signal them again. (The socket must stay in blocking mode: a
    /// read that would block in the middle of a PDU is an error.)
    pub fn has_buffered_input(&self) -> bool {
        !self.io.buffer().is_empty()
    }

    /// Number of commands outstanding.
    pub fn outstanding(&self) -> usize {
        self.tasks.len()
    }

    /// True if another non-immediate command may be sent now (CmdSN ≤ MaxCmdSN).
    pub fn window_open(&self) -> bool {
        !sn_lt(self.p.max_cmd_sn, self.p.cmd_sn)
    }

    /// True once the session failed (every further call is refused with
    /// [`SessionError::Failed`]): the caller must drop the connection.
    pub fn is_failed(&self) -> bool {
        self.failed
    }

    /// Whether asynchronous events wait to be taken ([`Session::take_events`]).
    pub fn has_events(&self) -> bool {
        !self.events.is_empty()
    }

    /// Async events received since the last call.
    pub fn take_events(&mut self) -> Vec<AsyncEvent> {
        std::mem::take(&mut self.events)
    }

    /// After a failure: the commands that never completed, with their buffers, to reissue on a
    /// new session. Completions already received are still returned by [`Session::poll`].
    pub fn take_outstanding(&mut self) -> Vec<Outstanding<B>> {
        let mut v: Vec<(u32, Task<B>)> = self.tasks.drain().collect();
        // CmdSN order, in serial arithmetic: distance from the oldest unacknowledged CmdSN
        // (a total order, unlike comparing serial numbers pairwise).
        let base = self.p.exp_cmd_sn;
        v.sort_by_key(|(_, t)| t.cmd_sn.wrapping_sub(base));
        v.into_iter()
            .map(|(itt, t)| Outstanding {
                tag: TaskTag(itt),
                lun: t.lun,
                cdb: t.cdb,
                data: match t.buf {
                    TaskBuf::In(b) => Data::In(b),
                    TaskBuf::Out(b) => Data::Out(b),
                    _ => Data::None,
                },
            })
            .collect()
    }

    /// Ends this process's use of a healthy, idle session and returns the stream with the
    /// current parameters and sequence numbers, for another process to continue with
    /// [`Session::new`] (e.g. the supervisor checks the LUN with a few commands after the login,
    /// then hands the connection to the worker). Refused while commands, pings or completions
    /// are pending or bytes from the target are buffered here.
    pub fn into_parts(self) -> Result<(S, SessionParams), SessionError> {
        self.check()?;
        if !self.tasks.is_empty()
            || !self.done.is_empty()
            || !self.pings.is_empty()
            || self.has_buffered_input()
        {
            return Err(SessionError::InvalidRequest(
                "the session is not idle: complete everything before handing it over",
            ));
        }
        Ok((self.io.into_inner(), self.p))
    }

    /// Gives the stream back (e.g. to shut it down).
    pub fn into_stream(self) -> S {
        self.io.into_inner()
    }

    fn check(&self) -> Result<(), SessionError> {
        if self.failed {
            Err(SessionError::Failed)
        } else {
            Ok(())
        }
    }

    fn alloc_itt(&mut self) -> u32 {
        loop {
            let itt = self.p.next_itt;
            self.p.next_itt = self.p.next_itt.wrapping_add(1);
            if itt != RESERVED_TAG
                && !self.tasks.contains_key(&itt)
                && !self.pings.contains(&itt)
                && self.tmf_itt != Some(itt)
                && self.logout_itt != Some(itt)
            {
                return itt;
            }
        }
    }

    fn fail<T>(&mut self, e: SessionError) -> Result<T, SessionError> {
        if !matches!(
            e,
            SessionError::Idle | SessionError::InvalidRequest(_) | SessionError::Task(_)
        ) {
            self.failed = true;
        }
        Err(e)
    }

    /// Starts a command (SCSI Command PDU, immediate data, unsolicited Data-Out, §3.2.4.2) and
    /// returns its tag. Blocks processing incoming PDUs while the CmdSN window is closed (with
    /// the window open it only writes). Errors other than [`SessionError::InvalidRequest`]
    /// and [`SessionError::Failed`] leave the command recorded (it is among
    /// [`Session::take_outstanding`]) and the session failed (but for [`SessionError::Idle`]
    /// while waiting for the window with a read timeout on the stream).
    pub fn start(&mut self, lun: u64, cdb: &[u8], data: Data<B>) -> Result<TaskTag, SessionError> {
        let buf = match data {
            Data::None => TaskBuf::None,
            Data::In(b) => TaskBuf::In(b),
            Data::Out(b) => TaskBuf::Out(b),
        };
        self.start_inner(lun, cdb, buf, &mut Extern::None)
    }

    fn start_inner(
        &mut self,
        lun: u64,
        cdb: &[u8],
        buf: TaskBuf<B>,
        ext: &mut Extern<'_>,
    ) -> Result<TaskTag, SessionError> {
        self.check()?;
        if cdb.is_empty() || cdb.len() > 260 {
            return Err(SessionError::InvalidRequest("CDB length must be 1..=260"));
        }
        let wire_lun = encode_lun(lun)?;
        let (read, write, len) = match (&buf, &*ext) {
            (TaskBuf::None, _) => (false, false, 0),
            (TaskBuf::In(b), _) => (true, false, b.len()),
            (TaskBuf::Out(b), _) => (false, true, b.len()),
            (TaskBuf::ExternIn, Extern::In(_, s)) => (true, false, s.len()),
            (TaskBuf::ExternOut, Extern::Out(_, s)) => (false, true, s.len()),
            _ => return Err(SessionError::InvalidRequest("buffer mismatch")),
        };
        let expected_len =
            u32::try_from(len).map_err(|_| SessionError::InvalidRequest("transfer too long"))?;
        let itt = self.alloc_itt();
        match ext {
            Extern::In(i, _) | Extern::Out(i, _) => *i = itt,
            Extern::None => {}
        }
        let mut cdb16 = [0u8; 16];
        let n = cdb.len().min(16);
        cdb16[..n].copy_from_slice(&cdb[..n]);
        let ahs = if cdb.len() > 16 {
            pdu::encode_ahs(&[Ahs {
                ahs_type: ahs_type::EXTENDED_CDB,
                specific: 0,
                data: cdb[16..].to_vec(),
            }])
            // Not sent, nothing recorded: like the other refusals above.
            .map_err(|_| SessionError::InvalidRequest("extended CDB not encodable"))?
        } else {
            Vec::new()
        };
        // The task is recorded before anything is sent: if the connection fails while waiting
        // for the window or sending, the command and its buffer are handed back by
        // take_outstanding for reissue.
        let cmd_sn = self.p.cmd_sn;
        self.tasks.insert(
            itt,
            Task {
                lun,
                cdb: cdb.to_vec(),
                cmd_sn,
                buf,
                expected_len,
                next_data_sn: 0,
                received: 0,
                next_r2t_sn: 0,
            },
        );
        // Commands go out in CmdSN order, only within the window (§3.2.2.1).
        while !self.window_open() {
            if let Err(e) = self.process_one(ext) {
                return self.fail(e);
            }
        }
        let task = self.tasks.get(&itt).expect("just inserted");
        let out: Src<'_, B> = match (&task.buf, &*ext) {
            (TaskBuf::Out(b), _) => Src::Buf(b),
            (TaskBuf::ExternOut, Extern::Out(_, s)) => Src::Slice(s),
            _ => Src::Slice(&[]),
        };
        // Immediate data (§3.2.4.2, §13.11) and unsolicited Data-Out up to FirstBurstLength
        // (§13.10, §13.14), each PDU within the target's MaxRecvDataSegmentLength.
        let mdsl = self.p.max_send_data_segment_length as usize;
        let first_burst = self.p.first_burst_length as usize;
        let imm = if write && self.p.immediate_data {
            out.len().min(first_burst).min(mdsl)
        } else {
            0
        };
        let unsolicited = if write && !self.p.initial_r2t {
            out.len().min(first_burst)
        } else {
            imm
        };
        let cmd = Bhs::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: unsolicited == imm,
            read,
            write,
            attr: task_attr::SIMPLE,
            lun: wire_lun,
            itt,
            expected_data_len: expected_len,
            cmd_sn,
            exp_stat_sn: self.p.exp_stat_sn,
            cdb: cdb16,
        });
        let digests = self.digests;
        let res = send_pdu(
            self.io.get_mut(),
            digests,
            &cmd,
            &ahs,
            &out,
            0,
            imm,
            &mut self.out_scratch,
        );
        if let Err(e) = res {
            return self.fail(e.into());
        }
        self.stats.commands += 1;
        self.stats.immediate_data_bytes += imm as u64;
        if unsolicited > imm {
            self.stats.unsolicited_data_out_pdus += (unsolicited - imm).div_ceil(mdsl) as u64;
            let res = send_data_out(
                self.io.get_mut(),
                digests,
                mdsl,
                wire_lun,
                itt,
                RESERVED_TAG,
                self.p.exp_stat_sn,
                &out,
                imm,
                unsolicited - imm,
                &mut self.out_scratch,
            );
            if let Err(e) = res {
                return self.fail(e.into());
            }
        }
        self.p.cmd_sn = self.p.cmd_sn.wrapping_add(1);
        self.stats.max_outstanding = self.stats.max_outstanding.max(self.tasks.len());
        Ok(TaskTag(itt))
    }

    /// Runs one command to completion with borrowed buffers (other commands' completions that
    /// arrive meanwhile are kept for [`Session::poll`]).
    pub fn submit(
        &mut self,
        lun: u64,
        cdb: &[u8],
        data: DataRef<'_>,
    ) -> Result<ScsiResult, SessionError> {
        let (buf, mut ext) = match data {
            DataRef::None => (TaskBuf::None, Extern::None),
            DataRef::In(s) => (TaskBuf::ExternIn, Extern::In(RESERVED_TAG, s)),
            DataRef::Out(s) => (TaskBuf::ExternOut, Extern::Out(RESERVED_TAG, s)),
        };
        let tag = match self.start_inner(lun, cdb, buf, &mut ext) {
            Ok(t) => t,
            Err(e) => {
                // The borrowed buffer goes away with this call: forget the task.
                if let Extern::In(itt, _) | Extern::Out(itt, _) = ext {
                    self.tasks.remove(&itt);
                }
                return Err(e);
            }
        };
        loop {
            if let Some(i) = self.done.iter().position(|c| c.tag == tag) {
                let c = self.done.remove(i).expect("index from position");
                return c.outcome.map_err(SessionError::Task);
            }
            if let Err(e) = self.process_one(&mut ext) {
                // The borrowed buffer is about to go away: forget the task whatever happened.
                self.tasks.remove(&tag.0);
                return self.fail(e);
            }
        }
    }

    /// Returns a completion if one is ready, else reads and processes incoming PDUs until one
    /// is. Returns `Ok(None)` when nothing is outstanding.
    pub fn poll(&mut self) -> Result<Option<Completion<B>>, SessionError> {
        loop {
            if let Some(c) = self.done.pop_front() {
                return Ok(Some(c));
            }
            self.check()?;
            if self.tasks.is_empty() {
                return Ok(None);
            }
            self.receive_one()?;
        }
    }

    /// Returns a ready completion without reading from the connection.
    pub fn try_completion(&mut self) -> Option<Completion<B>> {
        self.done.pop_front()
    }

    /// Reads and processes exactly one PDU from the target (answers pings and R2Ts, collects
    /// data and completions). With a read timeout on the stream, returns
    /// [`SessionError::Idle`] if no PDU started arriving in time (the session stays usable).
    pub fn receive_one(&mut self) -> Result<(), SessionError> {
        self.check()?;
        match self.process_one(&mut Extern::None) {
            Ok(()) => Ok(()),
            Err(e) => self.fail(e),
        }
    }

    /// Sends a NOP-Out ping (§11.18) and waits for the target's NOP-In: a keepalive that also
    /// proves the target is processing PDUs.
    pub fn ping(&mut self) -> Result<(), SessionError> {
        let itt = self.send_ping()?;
        while !self.ping_answered(itt) {
            self.receive_one()?;
        }
        Ok(())
    }

    /// Sends a NOP-Out ping (§11.18) without waiting for the NOP-In: whoever reads the
    /// connection processes the answer, and [`Session::ping_answered`] tells. For a keepalive
    /// that must not hold the connection while it waits (at most one at a time is the caller's
    /// business: an unanswered ping stays recorded).
    pub fn send_ping(&mut self) -> Result<u32, SessionError> {
        self.check()?;
        let itt = self.alloc_itt();
        let bhs = Bhs::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt,
            ttt: RESERVED_TAG,
            cmd_sn: self.p.cmd_sn,
            exp_stat_sn: self.p.exp_stat_sn,
        });
        if let Err(e) = pdu::write_pdu(self.io.get_mut(), self.digests, &bhs, &[], &[]) {
            return self.fail(e.into());
        }
        self.pings.push(itt);
        Ok(itt)
    }

    /// Whether the ping `itt` of [`Session::send_ping`] was answered (then forgotten).
    pub fn ping_answered(&mut self, itt: u32) -> bool {
        let Some(i) = self.answered_pings.iter().position(|&p| p == itt) else {
            return false;
        };
        self.answered_pings.swap_remove(i);
        true
    }

    /// When the last PDU from the target was read (the session's creation before the first).
    pub fn last_pdu_at(&self) -> Instant {
        self.last_pdu
    }

    /// ABORT TASK (§11.5.1). Returns the TMF response (0 function complete, 1 task does not
    /// exist...). The aborted task completes with [`TaskError::Aborted`] unless its status
    /// arrived first.
    pub fn abort_task(&mut self, tag: TaskTag) -> Result<u8, SessionError> {
        let (lun, ref_cmd_sn) = match self.tasks.get(&tag.0) {
            Some(t) => (t.lun, t.cmd_sn),
            None => return Err(SessionError::InvalidRequest("no such task")),
        };
        let r = self.task_mgmt(tmf::ABORT_TASK, lun, tag.0, ref_cmd_sn)?;
        if r == 0 || r == 1 {
            self.terminate(|itt, _| itt == tag.0);
        }
        Ok(r)
    }

    /// LOGICAL UNIT RESET (§11.5.1): every task of the LUN is terminated.
    pub fn lun_reset(&mut self, lun: u64) -> Result<u8, SessionError> {
        let r = self.task_mgmt(tmf::LOGICAL_UNIT_RESET, lun, RESERVED_TAG, self.p.cmd_sn)?;
        if r == 0 {
            self.terminate(|_, t| t.lun == lun);
        }
        Ok(r)
    }

    /// ABORT TASK SET (§11.5.1): every task of the LUN from this session is terminated.
    pub fn abort_task_set(&mut self, lun: u64) -> Result<u8, SessionError> {
        let r = self.task_mgmt(tmf::ABORT_TASK_SET, lun, RESERVED_TAG, self.p.cmd_sn)?;
        if r == 0 {
            self.terminate(|_, t| t.lun == lun);
        }
        Ok(r)
    }

    /// The task of `tag`, if it is outstanding.
    pub fn has_task(&self, tag: TaskTag) -> bool {
        self.tasks.contains_key(&tag.0)
    }

    fn terminate(&mut self, which: impl Fn(u32, &Task<B>) -> bool) {
        let gone: Vec<u32> = self
            .tasks
            .iter()
            .filter(|(i, t)| which(**i, t))
            .map(|(i, _)| *i)
            .collect();
        for itt in gone {
            if let Some(t) = self.tasks.remove(&itt) {
                self.done.push_back(Completion {
                    tag: TaskTag(itt),
                    outcome: Err(TaskError::Aborted),
                    buffer: into_buffer(t.buf),
                });
            }
        }
    }

    fn task_mgmt(
        &mut self,
        function: u8,
        lun: u64,
        ref_itt: u32,
        ref_cmd_sn: u32,
    ) -> Result<u8, SessionError> {
        self.check()?;
        let itt = self.alloc_itt();
        let bhs = Bhs::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function,
            lun: encode_lun(lun)?,
            itt,
            ref_task_tag: ref_itt,
            cmd_sn: self.p.cmd_sn,
            exp_stat_sn: self.p.exp_stat_sn,
            ref_cmd_sn,
            exp_data_sn: 0,
        });
        self.tmf_itt = Some(itt);
        self.tmf_response = None;
        if let Err(e) = pdu::write_pdu(self.io.get_mut(), self.digests, &bhs, &[], &[]) {
            return self.fail(e.into());
        }
        loop {
            if let Some(r) = self.tmf_response.take() {
                self.tmf_itt = None;
                return Ok(r);
            }
            self.receive_one()?;
        }
    }

    /// Logout closing the session (§11.14, reason 0). Outstanding commands should be drained
    /// first; any left are terminated by the target and remain in
    /// [`Session::take_outstanding`].
    pub fn logout(&mut self) -> Result<LogoutInfo, SessionError> {
        self.logout_within(|_| true)
    }

    /// [`Session::logout`] that waits for the Logout Response only as long as `ready` allows:
    /// `ready` is called before each PDU that is not already buffered is read, and says
    /// whether one is arriving (e.g. a `poll` of the socket until a deadline); `false` gives
    /// up with [`SessionError::Idle`]. Either way the session is over afterwards (the request
    /// was sent; nothing more may be). A target that stops halfway through a PDU still holds
    /// the read: the stream's own timeouts bound that.
    pub fn logout_within(
        &mut self,
        mut ready: impl FnMut(&S) -> bool,
    ) -> Result<LogoutInfo, SessionError> {
        self.check()?;
        let itt = self.alloc_itt();
        let bhs = Bhs::LogoutRequest(pdu::LogoutRequest {
            immediate: true,
            reason: 0,
            itt,
            cid: self.p.cid,
            cmd_sn: self.p.cmd_sn,
            exp_stat_sn: self.p.exp_stat_sn,
        });
        self.logout_itt = Some(itt);
        if let Err(e) = pdu::write_pdu(self.io.get_mut(), self.digests, &bhs, &[], &[]) {
            return self.fail(e.into());
        }
        let result = loop {
            if let Some(r) = self.logout_response.take() {
                break Ok(r);
            }
            if !self.has_buffered_input() && !ready(self.io.get_ref()) {
                break Err(SessionError::Idle);
            }
            if let Err(e) = self.receive_one() {
                break Err(e);
            }
        };
        self.logout_itt = None;
        // The connection is gone after a logout (or one given up on); nothing more may be sent.
        self.failed = true;
        result
    }

    /// Window update from any PDU carrying ExpCmdSN/MaxCmdSN (§3.2.2.1).
    fn update_window(&mut self, exp_cmd_sn: u32, max_cmd_sn: u32) -> Result<(), SessionError> {
        // MaxCmdSN < ExpCmdSN - 1 means "ignore" (§3.2.2.1).
        if sn_lt(max_cmd_sn, exp_cmd_sn.wrapping_sub(1)) {
            return Ok(());
        }
        // ExpCmdSN may not acknowledge commands never sent.
        if sn_lt(self.p.cmd_sn, exp_cmd_sn) {
            return Err(SessionError::Protocol(format!(
                "ExpCmdSN {exp_cmd_sn} is beyond the next CmdSN {}",
                self.p.cmd_sn
            )));
        }
        if sn_lt(self.p.exp_cmd_sn, exp_cmd_sn) {
            self.p.exp_cmd_sn = exp_cmd_sn;
        }
        if sn_lt(self.p.max_cmd_sn, max_cmd_sn) {
            self.p.max_cmd_sn = max_cmd_sn;
        }
        Ok(())
    }

    /// StatSN check for PDUs that carry a status (§3.2.2.2): in order, none skipped.
    fn take_stat_sn(&mut self, stat_sn: u32) -> Result<(), SessionError> {
        if stat_sn != self.p.exp_stat_sn {
            return Err(SessionError::Protocol(format!(
                "StatSN {stat_sn} where {} was expected",
                self.p.exp_stat_sn
            )));
        }
        self.p.exp_stat_sn = stat_sn.wrapping_add(1);
        Ok(())
    }

    fn read_small(&mut self, len: u32) -> Result<(), SessionError> {
        // len is bounded by MaxRecvDataSegmentLength (read_header checked it).
        self.scratch.resize(len as usize, 0);
        pdu::read_data_into(&mut self.io, self.digests, &mut self.scratch)?;
        Ok(())
    }

    fn process_one(&mut self, ext: &mut Extern<'_>) -> Result<(), SessionError> {
        let h = pdu::read_header(
            &mut self.io,
            self.digests,
            self.p.max_recv_data_segment_length,
        )?;
        self.last_pdu = Instant::now();
        match h.bhs {
            Bhs::DataIn(d) => {
                self.stats.data_in_pdus += 1;
                self.update_window(d.exp_cmd_sn, d.max_cmd_sn)?;
                let Some(task) = self.tasks.get_mut(&d.itt) else {
                    return Err(SessionError::Protocol(format!(
                        "Data-In for unknown task {:#x}",
                        d.itt
                    )));
                };
                if d.data_sn != task.next_data_sn {
                    return Err(SessionError::Protocol(format!(
                        "Data-In DataSN {} where {} was expected",
                        d.data_sn, task.next_data_sn
                    )));
                }
                task.next_data_sn = task.next_data_sn.wrapping_add(1);
                if d.buffer_offset != task.received {
                    return Err(SessionError::Protocol(format!(
                        "Data-In at offset {} where {} was expected (DataPDUInOrder)",
                        d.buffer_offset, task.received
                    )));
                }
                let end = u64::from(d.buffer_offset) + u64::from(h.data_len);
                if end > u64::from(task.expected_len) {
                    return Err(SessionError::Protocol(
                        "Data-In beyond the expected transfer length".into(),
                    ));
                }
                if h.data_len > 0 {
                    let beyond = || SessionError::Protocol("Data-In beyond the buffer".into());
                    match (&mut task.buf, &mut *ext) {
                        (TaskBuf::In(b), _) => {
                            // A caller's buffer type could report another length than at
                            // start; never go out of it.
                            if end > b.len() as u64 {
                                return Err(beyond());
                            }
                            recv_into(
                                &mut self.io,
                                self.digests,
                                b,
                                d.buffer_offset as usize,
                                h.data_len as usize,
                                &mut self.scratch,
                            )?;
                        }
                        (TaskBuf::ExternIn, Extern::In(i, s)) if *i == d.itt => {
                            let dst = s
                                .get_mut(d.buffer_offset as usize..end as usize)
                                .ok_or_else(beyond)?;
                            pdu::read_data_into(&mut self.io, self.digests, dst)?;
                        }
                        _ => {
                            return Err(SessionError::Protocol(
                                "Data-In for a command that reads nothing".into(),
                            ))
                        }
                    }
                }
                task.received = end as u32;
                if d.has_status {
                    if !d.final_ {
                        return Err(SessionError::Protocol("Data-In with S but not F".into()));
                    }
                    self.take_stat_sn(d.stat_sn)?;
                    self.stats.status_in_data_in += 1;
                    let residual = residual(d.overflow, d.underflow, d.residual);
                    self.complete(d.itt, 0, d.status, Vec::new(), residual)?;
                }
            }
            Bhs::ScsiResponse(r) => {
                self.stats.scsi_responses += 1;
                self.update_window(r.exp_cmd_sn, r.max_cmd_sn)?;
                if !self.tasks.contains_key(&r.itt) {
                    return Err(SessionError::Protocol(format!(
                        "SCSI Response for unknown task {:#x}",
                        r.itt
                    )));
                }
                self.take_stat_sn(r.stat_sn)?;
                self.read_small(h.data_len)?;
                // Sense data (§11.4.7): SenseLength then the sense bytes.
                let sense = if self.scratch.len() >= 2 {
                    let sl = u16::from_be_bytes([self.scratch[0], self.scratch[1]]) as usize;
                    if 2 + sl > self.scratch.len() {
                        return Err(SessionError::Protocol(
                            "sense length beyond the data".into(),
                        ));
                    }
                    self.scratch[2..2 + sl].to_vec()
                } else {
                    Vec::new()
                };
                let residual = residual(r.overflow, r.underflow, r.residual);
                self.complete(r.itt, r.response, r.status, sense, residual)?;
            }
            Bhs::R2t(r) => {
                self.stats.r2ts += 1;
                self.update_window(r.exp_cmd_sn, r.max_cmd_sn)?;
                pdu::skip_data(&mut self.io, self.digests, h.data_len)?;
                let Some(task) = self.tasks.get_mut(&r.itt) else {
                    return Err(SessionError::Protocol(format!(
                        "R2T for unknown task {:#x}",
                        r.itt
                    )));
                };
                if r.r2t_sn != task.next_r2t_sn {
                    return Err(SessionError::Protocol(format!(
                        "R2TSN {} where {} was expected",
                        r.r2t_sn, task.next_r2t_sn
                    )));
                }
                task.next_r2t_sn = task.next_r2t_sn.wrapping_add(1);
                let end = u64::from(r.buffer_offset) + u64::from(r.desired_len);
                if r.desired_len == 0
                    || r.desired_len > self.p.max_burst_length
                    || end > u64::from(task.expected_len)
                    || r.ttt == RESERVED_TAG
                {
                    return Err(SessionError::Protocol(format!(
                        "bad R2T (offset {}, length {})",
                        r.buffer_offset, r.desired_len
                    )));
                }
                let src: Src<'_, B> = match (&task.buf, &*ext) {
                    (TaskBuf::Out(b), _) => Src::Buf(b),
                    (TaskBuf::ExternOut, Extern::Out(i, s)) if *i == r.itt => Src::Slice(s),
                    _ => {
                        return Err(SessionError::Protocol(
                            "R2T for a command that writes nothing".into(),
                        ))
                    }
                };
                let lun = encode_lun(task.lun)?;
                let mdsl = self.p.max_send_data_segment_length as usize;
                self.stats.solicited_data_out_pdus +=
                    (r.desired_len as usize).div_ceil(mdsl) as u64;
                send_data_out(
                    self.io.get_mut(),
                    self.digests,
                    self.p.max_send_data_segment_length as usize,
                    lun,
                    r.itt,
                    r.ttt,
                    self.p.exp_stat_sn,
                    &src,
                    r.buffer_offset as usize,
                    r.desired_len as usize,
                    &mut self.out_scratch,
                )?;
            }
            Bhs::NopIn(n) => {
                self.update_window(n.exp_cmd_sn, n.max_cmd_sn)?;
                self.read_small(h.data_len)?;
                if n.itt != RESERVED_TAG {
                    // Answer to our ping (§11.19.2): carries a status number.
                    let Some(i) = self.pings.iter().position(|&p| p == n.itt) else {
                        return Err(SessionError::Protocol("NOP-In for an unknown ping".into()));
                    };
                    self.take_stat_sn(n.stat_sn)?;
                    self.pings.swap_remove(i);
                    self.answered_pings.push(n.itt);
                } else if n.ttt != RESERVED_TAG {
                    // Target ping (§11.18.2): answer with the same TTT and LUN, echoing the data.
                    let echo = self
                        .scratch
                        .len()
                        .min(self.p.max_send_data_segment_length as usize);
                    let bhs = Bhs::NopOut(NopOut {
                        immediate: true,
                        lun: n.lun,
                        itt: RESERVED_TAG,
                        ttt: n.ttt,
                        cmd_sn: self.p.cmd_sn,
                        exp_stat_sn: self.p.exp_stat_sn,
                    });
                    pdu::write_pdu(
                        self.io.get_mut(),
                        self.digests,
                        &bhs,
                        &[],
                        &self.scratch[..echo],
                    )?;
                    self.stats.target_pings_answered += 1;
                }
            }
            Bhs::TaskMgmtResponse(t) => {
                self.update_window(t.exp_cmd_sn, t.max_cmd_sn)?;
                pdu::skip_data(&mut self.io, self.digests, h.data_len)?;
                if self.tmf_itt != Some(t.itt) {
                    return Err(SessionError::Protocol("unexpected TMF response".into()));
                }
                self.take_stat_sn(t.stat_sn)?;
                self.tmf_response = Some(t.response);
            }
            Bhs::LogoutResponse(l) => {
                self.update_window(l.exp_cmd_sn, l.max_cmd_sn)?;
                pdu::skip_data(&mut self.io, self.digests, h.data_len)?;
                if self.logout_itt != Some(l.itt) {
                    return Err(SessionError::Protocol("unexpected logout response".into()));
                }
                self.take_stat_sn(l.stat_sn)?;
                self.logout_response = Some(LogoutInfo {
                    response: l.response,
                    time2wait: l.time2wait,
                    time2retain: l.time2retain,
                });
            }
            Bhs::AsyncMessage(a) => {
                self.stats.async_events += 1;
                self.update_window(a.exp_cmd_sn, a.max_cmd_sn)?;
                self.read_small(h.data_len)?;
                // Async Messages advance StatSN (§11.9); accept a repeat of the current value
                // from targets that do not.
                if a.stat_sn == self.p.exp_stat_sn {
                    self.p.exp_stat_sn = a.stat_sn.wrapping_add(1);
                }
                let sense = if a.event == 0 && self.scratch.len() >= 2 {
                    let sl = u16::from_be_bytes([self.scratch[0], self.scratch[1]]) as usize;
                    self.scratch[2..(2 + sl).min(self.scratch.len())].to_vec()
                } else {
                    Vec::new()
                };
                self.events.push(AsyncEvent {
                    event: a.event,
                    lun: a.lun,
                    sense,
                    param1: a.param1,
                    param2: a.param2,
                    param3: a.param3,
                });
                if a.event == 2 || a.event == 3 {
                    return Err(SessionError::Dropped(a.event));
                }
            }
            Bhs::Reject(r) => {
                self.stats.rejects += 1;
                self.update_window(r.exp_cmd_sn, r.max_cmd_sn)?;
                self.read_small(h.data_len)?;
                if r.stat_sn == self.p.exp_stat_sn {
                    self.p.exp_stat_sn = r.stat_sn.wrapping_add(1);
                }
                // The data segment is the rejected header (§11.17.3): find its task.
                if self.scratch.len() < pdu::BHS_LEN {
                    return Err(SessionError::Protocol(
                        "Reject without the rejected header".into(),
                    ));
                }
                let itt = u32::from_be_bytes([
                    self.scratch[16],
                    self.scratch[17],
                    self.scratch[18],
                    self.scratch[19],
                ]);
                if let Some(t) = self.tasks.remove(&itt) {
                    self.done.push_back(Completion {
                        tag: TaskTag(itt),
                        outcome: Err(TaskError::Rejected(r.reason)),
                        buffer: into_buffer(t.buf),
                    });
                } else {
                    return Err(SessionError::Protocol(format!(
                        "target rejected a PDU: {} (reason {:#04x})",
                        pdu::reject_reason::text(r.reason),
                        r.reason
                    )));
                }
            }
            other => {
                return Err(SessionError::Protocol(format!(
                    "unexpected opcode {:#04x} in the full feature phase",
                    other.opcode()
                )));
            }
        }
        Ok(())
    }

    fn complete(
        &mut self,
        itt: u32,
        response: u8,
        status: u8,
        sense: Vec<u8>,
        residual: Residual,
    ) -> Result<(), SessionError> {
        let Some(t) = self.tasks.remove(&itt) else {
            return Err(SessionError::Protocol("status for unknown task".into()));
        };
        // A read that completed with GOOD status must have received every byte it did not
        // report as residual, or the buffer would hold stale data presented as read.
        if matches!(t.buf, TaskBuf::In(_) | TaskBuf::ExternIn) && response == 0 && status == 0 {
            let missing = match residual {
                Residual::Underflow(n) => n,
                _ => 0,
            };
            if u64::from(t.received) + u64::from(missing) < u64::from(t.expected_len) {
                return Err(SessionError::Protocol(format!(
                    "read completed with {} of {} bytes and residual {missing}",
                    t.received, t.expected_len
                )));
            }
        }
        self.done.push_back(Completion {
            tag: TaskTag(itt),
            outcome: Ok(ScsiResult {
                response,
                status,
                sense,
                residual,
                data_in_len: t.received as usize,
            }),
            buffer: into_buffer(t.buf),
        });
        Ok(())
    }
}

fn into_buffer<B>(b: TaskBuf<B>) -> Option<B> {
    match b {
        TaskBuf::In(b) | TaskBuf::Out(b) => Some(b),
        _ => None,
    }
}

fn residual(overflow: bool, underflow: bool, count: u32) -> Residual {
    if underflow {
        Residual::Underflow(count)
    } else if overflow {
        Residual::Overflow(count)
    } else {
        Residual::None
    }
}

/// Where the data of a PDU to send comes from.
enum Src<'x, B> {
    /// A caller's slice ([`Session::submit`]).
    Slice(&'x [u8]),
    /// A pipelined command's buffer.
    Buf(&'x B),
}

impl<B: TaskBuffer> Src<'_, B> {
    fn len(&self) -> usize {
        match self {
            Src::Slice(s) => s.len(),
            Src::Buf(b) => b.len(),
        }
    }

    /// The bytes as one slice, when they are.
    fn slice(&self) -> Option<&[u8]> {
        match self {
            Src::Slice(s) => Some(s),
            Src::Buf(b) => b.contiguous(),
        }
    }
}

fn beyond_buffer() -> PduError {
    PduError::Malformed("data to send beyond the command's buffer")
}

/// Sends one PDU whose data segment is bytes `[off, off + len)` of `src`: from a slice as is;
/// from a scattered buffer straight from its segments (one `writev`), or, with a data digest,
/// through `scratch`, so that the digest covers exactly the bytes sent (the buffer's owner may
/// change them meanwhile).
#[allow(clippy::too_many_arguments)]
fn send_pdu<W: Write + AsFd, B: TaskBuffer>(
    w: &mut W,
    digests: Digests,
    bhs: &Bhs,
    ahs: &[u8],
    src: &Src<'_, B>,
    off: usize,
    len: usize,
    scratch: &mut Vec<u8>,
) -> Result<(), PduError> {
    let end = off.checked_add(len).ok_or_else(beyond_buffer)?;
    if end > src.len() {
        return Err(beyond_buffer());
    }
    if let Some(s) = src.slice() {
        return pdu::write_pdu(w, digests, bhs, ahs, &s[off..end]);
    }
    let Src::Buf(b) = src else {
        unreachable!("a slice source was handled above");
    };
    if digests.data || len == 0 {
        scratch.clear();
        scratch.resize(len, 0);
        b.copy_out(off, scratch)?;
        return pdu::write_pdu(w, digests, bhs, ahs, scratch);
    }
    scratch.clear();
    pdu::encode_head_into(scratch, digests, bhs, ahs, len)?;
    let pad = [0u8; 4];
    b.send(
        w.as_fd(),
        &[
            Piece::Bytes(scratch),
            Piece::Data { offset: off, len },
            Piece::Bytes(&pad[..pdu::pad_len(len)]),
        ],
    )?;
    Ok(())
}

/// Most Data-Out PDUs of a scattered buffer sent with one `writev` (bounds the headers
/// gathered for it).
const DATA_OUT_BATCH: usize = 64;

/// Sends bytes `[base, base + len)` of `src` as one sequence of Data-Out PDUs of at most `mdsl`
/// bytes each (§11.7), DataSN from 0, F on the last. Without a data digest, a scattered
/// buffer's PDUs go out [`DATA_OUT_BATCH`] at a time, headers and segments in one `writev`.
#[allow(clippy::too_many_arguments)]
fn send_data_out<W: Write + AsFd, B: TaskBuffer>(
    w: &mut W,
    digests: Digests,
    mdsl: usize,
    lun: u64,
    itt: u32,
    ttt: u32,
    exp_stat_sn: u32,
    src: &Src<'_, B>,
    base: usize,
    len: usize,
    scratch: &mut Vec<u8>,
) -> Result<(), PduError> {
    let end = base.checked_add(len).ok_or_else(beyond_buffer)?;
    if end > src.len() || mdsl == 0 {
        return Err(beyond_buffer());
    }
    let bhs_at = |off: usize, n: usize, data_sn: u32| {
        Bhs::DataOut(DataOut {
            final_: off + n == len,
            lun,
            itt,
            ttt,
            exp_stat_sn,
            data_sn,
            buffer_offset: (base + off) as u32,
        })
    };
    let batched = match src {
        Src::Buf(b) if b.contiguous().is_none() && !digests.data => Some(*b),
        _ => None,
    };
    let mut off = 0;
    let mut data_sn = 0u32;
    if let Some(b) = batched {
        let head_len = pdu::BHS_LEN + if digests.header { 4 } else { 0 };
        let pad = [0u8; 4];
        while off < len {
            // Headers first (the pieces borrow them), then the pieces.
            scratch.clear();
            let mut o = off;
            let mut sn = data_sn;
            let mut count = 0;
            while o < len && count < DATA_OUT_BATCH {
                let n = (len - o).min(mdsl);
                pdu::encode_head_into(scratch, digests, &bhs_at(o, n, sn), &[], n)?;
                o += n;
                sn += 1;
                count += 1;
            }
            let mut pieces: Vec<Piece<'_>> = Vec::with_capacity(3 * count);
            let mut o2 = off;
            for i in 0..count {
                let n = (len - o2).min(mdsl);
                pieces.push(Piece::Bytes(&scratch[i * head_len..(i + 1) * head_len]));
                pieces.push(Piece::Data {
                    offset: base + o2,
                    len: n,
                });
                if pdu::pad_len(n) > 0 {
                    pieces.push(Piece::Bytes(&pad[..pdu::pad_len(n)]));
                }
                o2 += n;
            }
            b.send(w.as_fd(), &pieces)?;
            off = o;
            data_sn = sn;
        }
        return Ok(());
    }
    while off < len {
        let n = (len - off).min(mdsl);
        send_pdu(
            w,
            digests,
            &bhs_at(off, n, data_sn),
            &[],
            src,
            base + off,
            n,
            scratch,
        )?;
        off += n;
        data_sn += 1;
    }
    Ok(())
}

/// Receives a Data-In data segment of `len` bytes into `b` at `off` (the caller checked the
/// range), then its padding and digest: into a contiguous buffer directly; into a scattered one
/// with what the reader has buffered copied and the rest read straight into its segments
/// (`readv`), or, with a data digest, through `scratch` (checked before it is copied in, so
/// that what lands is what the digest covered).
fn recv_into<S: Read + AsFd, B: TaskBuffer>(
    io: &mut BufReader<S>,
    digests: Digests,
    b: &mut B,
    off: usize,
    len: usize,
    scratch: &mut Vec<u8>,
) -> Result<(), PduError> {
    let end = off
        .checked_add(len)
        .ok_or(PduError::Malformed("Data-In range"))?;
    if let Some(s) = b.contiguous_mut() {
        let dst = s
            .get_mut(off..end)
            .ok_or(PduError::Malformed("Data-In beyond the buffer"))?;
        return pdu::read_data_into(io, digests, dst);
    }
    if digests.data {
        scratch.clear();
        scratch.resize(len, 0);
        pdu::read_data_into(io, digests, scratch)?;
        b.copy_in(off, scratch)?;
        return Ok(());
    }
    let buffered = io.buffer();
    let n = buffered.len().min(len);
    b.copy_in(off, &buffered[..n])?;
    io.consume(n);
    if n < len {
        // The reader's buffer is empty now: reading around it keeps it in step.
        b.recv(io.get_ref().as_fd(), off + n, len - n)?;
    }
    let mut pad = [0u8; 4];
    io.read_exact(&mut pad[..pdu::pad_len(len)])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Protocol violations a real target does not produce on demand, played by a scripted peer
    //! on a socket pair. (The normal paths are tested against tgtd in tests/iscsi.rs.)
    use super::pdu::{AsyncMessage, DataIn, NopIn, R2t, Reject, ScsiResponse};
    use super::*;
    use std::os::unix::net::UnixStream;

    fn params() -> SessionParams {
        SessionParams {
            header_digest: true,
            data_digest: true,
            ..SessionParams::example()
        }
    }

    struct Peer {
        s: UnixStream,
        d: Digests,
    }

    impl Peer {
        fn send(&mut self, bhs: Bhs, data: &[u8]) {
            pdu::write_pdu(&mut self.s, self.d, &bhs, &[], data).unwrap();
        }
        fn recv(&mut self) -> (Bhs, Vec<u8>) {
            let h = pdu::read_header(&mut self.s, self.d, 1 << 20).unwrap();
            let data = pdu::read_data(&mut self.s, self.d, h.data_len).unwrap();
            (h.bhs, data)
        }
    }

    fn setup() -> (Session<UnixStream>, Peer) {
        let (a, b) = UnixStream::pair().unwrap();
        let p = params();
        let d = p.digests();
        (Session::new(a, p).unwrap(), Peer { s: b, d })
    }

    fn read_cmd(s: &mut Session<UnixStream>, len: usize) -> TaskTag {
        s.start(
            0,
            &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
            Data::In(vec![0u8; len]),
        )
        .unwrap()
    }

    fn data_in(itt: u32, data_sn: u32, offset: u32, status: bool) -> Bhs {
        Bhs::DataIn(DataIn {
            final_: status,
            has_status: status,
            itt,
            ttt: RESERVED_TAG,
            stat_sn: 100,
            exp_cmd_sn: 11,
            max_cmd_sn: 40,
            data_sn,
            buffer_offset: offset,
            ..Default::default()
        })
    }

    fn expect_protocol(s: &mut Session<UnixStream>, what: &str) {
        match s.poll() {
            Err(SessionError::Protocol(m)) => assert!(m.contains(what), "{m}"),
            other => panic!("expected a protocol violation ({what}), got {other:?}"),
        }
        assert!(matches!(s.poll(), Err(SessionError::Failed)));
    }

    #[test]
    fn read_with_phase_collapse_lands_in_the_buffer() {
        let (mut s, mut peer) = setup();
        let tag = read_cmd(&mut s, 1024);
        let (cmd, _) = peer.recv();
        let Bhs::ScsiCommand(c) = cmd else { panic!() };
        assert!(c.read && c.final_ && c.expected_data_len == 1024 && c.cmd_sn == 10);
        peer.send(data_in(tag.0, 0, 0, false), &[1; 512]);
        peer.send(data_in(tag.0, 1, 512, true), &[2; 512]);
        s.receive_one().unwrap();
        // Both PDUs arrived in one read: the second one is buffered, not on the socket.
        assert!(s.has_buffered_input());
        let c = s.poll().unwrap().unwrap();
        assert!(!s.has_buffered_input());
        let r = c.outcome.unwrap();
        assert_eq!((r.status, r.data_in_len), (0, 1024));
        let b = c.buffer.unwrap();
        assert!(b[..512].iter().all(|&x| x == 1) && b[512..].iter().all(|&x| x == 2));
        assert_eq!(s.params().exp_stat_sn, 101);
        assert_eq!(s.params().cmd_sn, 11);
    }

    /// Scattered memory as the daemon's guest buffers are (safe here: `readv`/`writev` over
    /// owned vectors).
    struct Scattered(Vec<Vec<u8>>);

    impl Scattered {
        fn of(sizes: &[usize], fill: impl Fn(usize) -> u8) -> Self {
            let mut at = 0;
            Scattered(
                sizes
                    .iter()
                    .map(|&n| {
                        let v = (at..at + n).map(&fill).collect();
                        at += n;
                        v
                    })
                    .collect(),
            )
        }
        fn flat(&self) -> Vec<u8> {
            self.0.concat()
        }
        /// (segment, offset in it) of byte `at`.
        fn locate(&self, mut at: usize) -> (usize, usize) {
            for (i, s) in self.0.iter().enumerate() {
                if at < s.len() {
                    return (i, at);
                }
                at -= s.len();
            }
            (self.0.len(), 0)
        }
    }

    impl TaskBuffer for Scattered {
        fn len(&self) -> usize {
            self.0.iter().map(Vec::len).sum()
        }
        fn copy_out(&self, offset: usize, dst: &mut [u8]) -> std::io::Result<()> {
            let flat = self.flat();
            dst.copy_from_slice(&flat[offset..offset + dst.len()]);
            Ok(())
        }
        fn copy_in(&mut self, offset: usize, src: &[u8]) -> std::io::Result<()> {
            for (k, &b) in src.iter().enumerate() {
                let (i, o) = self.locate(offset + k);
                self.0[i][o] = b;
            }
            Ok(())
        }
        fn send(
            &self,
            fd: std::os::fd::BorrowedFd<'_>,
            pieces: &[Piece<'_>],
        ) -> std::io::Result<()> {
            let flat = self.flat();
            let bytes: Vec<u8> = pieces
                .iter()
                .flat_map(|p| match *p {
                    Piece::Bytes(b) => b.to_vec(),
                    Piece::Data { offset, len } => flat[offset..offset + len].to_vec(),
                })
                .collect();
            let mut done = 0;
            while done < bytes.len() {
                done += nix::sys::uio::writev(fd, &[std::io::IoSlice::new(&bytes[done..])])?;
            }
            Ok(())
        }
        fn recv(
            &mut self,
            fd: std::os::fd::BorrowedFd<'_>,
            offset: usize,
            len: usize,
        ) -> std::io::Result<()> {
            let mut done = 0;
            while done < len {
                let (i, o) = self.locate(offset + done);
                let n = (self.0[i].len() - o).min(len - done);
                let mut iov = [std::io::IoSliceMut::new(&mut self.0[i][o..o + n])];
                let got = nix::sys::uio::readv(fd, &mut iov)?;
                if got == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                done += got;
            }
            Ok(())
        }
    }

    /// Scattered buffers without digests: Data-Out from their segments (immediate data, then
    /// unsolicited PDUs batched into one `writev`, odd lengths with padding), Data-In into them
    /// partly from the reader's buffer and partly straight from the socket; byte for byte.
    #[test]
    fn scattered_buffers_move_straight_to_and_from_the_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut p = params();
        p.header_digest = false;
        p.data_digest = false;
        p.max_send_data_segment_length = 998;
        p.max_recv_data_segment_length = 262144;
        p.initial_r2t = false;
        let d = p.digests();
        let mut s: Session<UnixStream, Scattered> = Session::new(a, p).unwrap();
        let mut peer = Peer { s: b, d };
        let pattern = |i: usize| (i * 7 + i / 251) as u8;
        let out = Scattered::of(&[3, 509, 1, 2000, 7], pattern);
        let tag = s
            .start(0, &[0x2a, 0, 0, 0, 0, 0, 0, 0, 5, 0], Data::Out(out))
            .unwrap();
        let (cmd, mut got) = peer.recv();
        let Bhs::ScsiCommand(c) = cmd else { panic!() };
        assert_eq!((c.expected_data_len, got.len()), (2520, 998));
        while got.len() < 2520 {
            let (b, data) = peer.recv();
            let Bhs::DataOut(o) = b else { panic!() };
            assert_eq!(o.buffer_offset as usize, got.len());
            assert!(data.len() <= 998);
            got.extend(data);
        }
        assert!(got == (0..2520).map(pattern).collect::<Vec<_>>());
        peer.send(
            Bhs::ScsiResponse(ScsiResponse {
                itt: tag.0,
                stat_sn: 100,
                exp_cmd_sn: 11,
                max_cmd_sn: 40,
                ..Default::default()
            }),
            &[],
        );
        assert!(s.poll().unwrap().unwrap().outcome.is_ok());

        // A read of 100,001 bytes in one Data-In PDU (padding 3): more than the reader's 64 KiB.
        let sizes = [5, 49_995, 3, 1, 49_997];
        let tag = s
            .start(
                0,
                &[0x28, 0, 0, 0, 0, 0, 0, 0, 1, 0],
                Data::In(Scattered::of(&sizes, |_| 0)),
            )
            .unwrap();
        peer.recv();
        let want: Vec<u8> = (0..100_001).map(|i| pattern(i + 3)).collect();
        let mut peer_s = peer.s.try_clone().unwrap();
        let sent = want.clone();
        let writer = std::thread::spawn(move || {
            let mut bhs = data_in(tag.0, 0, 0, true);
            if let Bhs::DataIn(d) = &mut bhs {
                d.stat_sn = 101;
                d.exp_cmd_sn = 12;
            }
            pdu::write_pdu(&mut peer_s, d, &bhs, &[], &sent).unwrap();
        });
        // All of it on the socket first (it fits the socket buffer), so that the reader's
        // first fill takes 64 KiB: part of the data is copied from there, the rest read
        // straight into the segments.
        writer.join().unwrap();
        let c = s.poll().unwrap().unwrap();
        assert_eq!(c.outcome.unwrap().data_in_len, 100_001);
        assert!(c.buffer.unwrap().flat() == want);
    }

    #[test]
    fn into_parts_refuses_a_busy_session() {
        let (mut s, _peer) = setup();
        read_cmd(&mut s, 512);
        assert!(matches!(
            s.into_parts(),
            Err(SessionError::InvalidRequest(_))
        ));
    }

    #[test]
    fn into_parts_hands_over_the_sequence_numbers() {
        let (mut s, mut peer) = setup();
        let tag = read_cmd(&mut s, 512);
        peer.recv();
        peer.send(data_in(tag.0, 0, 0, true), &[1; 512]);
        s.poll().unwrap().unwrap();
        let (stream, p) = s.into_parts().unwrap();
        assert_eq!((p.cmd_sn, p.exp_stat_sn), (11, 101));
        // The next owner continues with the advanced numbers.
        let mut s2: Session<UnixStream> = Session::new(stream, p).unwrap();
        s2.start(0, &[0; 6], Data::None).unwrap();
        let (b, _) = peer.recv();
        let Bhs::ScsiCommand(c) = b else { panic!() };
        assert_eq!((c.cmd_sn, c.exp_stat_sn), (11, 101));
    }

    #[test]
    fn bad_stat_sn_fails_the_session() {
        let (mut s, mut peer) = setup();
        let tag = s.start(0, &[0; 6], Data::None).unwrap();
        peer.recv();
        peer.send(
            Bhs::ScsiResponse(ScsiResponse {
                itt: tag.0,
                stat_sn: 105,
                exp_cmd_sn: 11,
                max_cmd_sn: 40,
                ..Default::default()
            }),
            &[],
        );
        expect_protocol(&mut s, "StatSN");
        // The command is still there to reissue.
        assert_eq!(s.take_outstanding().len(), 1);
    }

    #[test]
    fn data_in_violations() {
        // Unknown task.
        let (mut s, mut peer) = setup();
        let tag = read_cmd(&mut s, 1024);
        peer.send(data_in(tag.0 + 7, 0, 0, false), &[0; 4]);
        expect_protocol(&mut s, "unknown task");
        // Beyond the buffer.
        let (mut s, mut peer) = setup();
        let tag = read_cmd(&mut s, 1024);
        peer.send(data_in(tag.0, 0, 0, false), &[0; 2048]);
        expect_protocol(&mut s, "beyond");
        // Out-of-order DataSN and offsets.
        let (mut s, mut peer) = setup();
        let tag = read_cmd(&mut s, 1024);
        peer.send(data_in(tag.0, 1, 0, false), &[0; 4]);
        expect_protocol(&mut s, "DataSN");
        let (mut s, mut peer) = setup();
        let tag = read_cmd(&mut s, 1024);
        peer.send(data_in(tag.0, 0, 512, false), &[0; 4]);
        expect_protocol(&mut s, "offset");
        // GOOD status with bytes missing and no residual: stale data must not pass as read.
        let (mut s, mut peer) = setup();
        let tag = read_cmd(&mut s, 1024);
        peer.send(data_in(tag.0, 0, 0, true), &[0; 512]);
        expect_protocol(&mut s, "residual");
        // Oversized data segment: refused before reading it.
        let (mut s, mut peer) = setup();
        let tag = read_cmd(&mut s, 1 << 20);
        peer.send(data_in(tag.0, 0, 0, false), &vec![0; 9000]);
        assert!(matches!(
            s.poll(),
            Err(SessionError::Pdu(PduError::DataSegmentTooLong { .. }))
        ));
    }

    #[test]
    fn digest_error_fails_the_session() {
        let (mut s, mut peer) = setup();
        let tag = read_cmd(&mut s, 512);
        let mut wire = Vec::new();
        pdu::write_pdu(
            &mut wire,
            peer.d,
            &data_in(tag.0, 0, 0, true),
            &[],
            &[9; 512],
        )
        .unwrap();
        wire[100] ^= 1;
        peer.s.write_all(&wire).unwrap();
        assert!(matches!(
            s.poll(),
            Err(SessionError::Pdu(PduError::DataDigest { .. }))
        ));
        assert!(matches!(s.poll(), Err(SessionError::Failed)));
    }

    #[test]
    fn r2t_is_answered_within_limits() {
        let (mut s, mut peer) = setup();
        let data: Vec<u8> = (0..20000u32).map(|i| i as u8).collect();
        let tag = s
            .start(
                0,
                &[0x2a, 0, 0, 0, 0, 0, 0, 0, 40, 0],
                Data::Out(data.clone()),
            )
            .unwrap();
        // Immediate data: min(FirstBurstLength, MaxRecvDataSegmentLength) = 8192, F set
        // (InitialR2T=Yes: no unsolicited Data-Out).
        let (cmd, imm) = peer.recv();
        let Bhs::ScsiCommand(c) = cmd else { panic!() };
        assert!(c.write && c.final_ && imm == data[..8192]);
        let r2t = |sn, off, len| {
            Bhs::R2t(R2t {
                itt: tag.0,
                ttt: 0x500 + sn,
                stat_sn: 100,
                exp_cmd_sn: 11,
                max_cmd_sn: 40,
                r2t_sn: sn,
                buffer_offset: off,
                desired_len: len,
                ..Default::default()
            })
        };
        peer.send(r2t(0, 8192, 11808), &[]);
        s.receive_one().unwrap();
        let mut got = Vec::new();
        for sn in 0..2 {
            let (b, d) = peer.recv();
            let Bhs::DataOut(o) = b else { panic!() };
            assert_eq!((o.ttt, o.data_sn, o.final_), (0x500, sn, sn == 1));
            assert_eq!(o.buffer_offset as usize, 8192 + got.len());
            got.extend_from_slice(&d);
        }
        assert!(got == data[8192..]);
        // An R2T beyond MaxBurstLength is a violation.
        peer.send(r2t(1, 0, 16385), &[]);
        expect_protocol(&mut s, "bad R2T");
    }

    #[test]
    fn target_ping_is_echoed_and_pings_answered() {
        let (mut s, mut peer) = setup();
        peer.send(
            Bhs::NopIn(NopIn {
                lun: 0,
                itt: RESERVED_TAG,
                ttt: 0x77,
                stat_sn: 100,
                exp_cmd_sn: 10,
                max_cmd_sn: 50,
            }),
            b"hello",
        );
        s.receive_one().unwrap();
        let (b, d) = peer.recv();
        let Bhs::NopOut(n) = b else { panic!() };
        assert_eq!(
            (n.itt, n.ttt, n.immediate, n.cmd_sn),
            (RESERVED_TAG, 0x77, true, 10)
        );
        assert_eq!(d, b"hello");
        assert_eq!(s.params().max_cmd_sn, 50, "window updated from the NOP-In");
        assert_eq!(
            s.params().exp_stat_sn,
            100,
            "a target ping does not advance StatSN"
        );
    }

    /// The keepalive's ping: sent without waiting, its answer taken by whoever reads next,
    /// told once by `ping_answered`; `last_pdu_at` moves with every PDU read.
    #[test]
    fn a_ping_sent_without_waiting_is_answered_once() {
        let (mut s, mut peer) = setup();
        let before = s.last_pdu_at();
        let itt = s.send_ping().unwrap();
        let (b, _) = peer.recv();
        let Bhs::NopOut(n) = b else { panic!() };
        assert_eq!((n.itt, n.ttt, n.immediate), (itt, RESERVED_TAG, true));
        assert!(!s.ping_answered(itt), "not answered yet");
        std::thread::sleep(std::time::Duration::from_millis(5));
        peer.send(
            Bhs::NopIn(NopIn {
                lun: 0,
                itt,
                ttt: RESERVED_TAG,
                stat_sn: 100,
                exp_cmd_sn: 10,
                max_cmd_sn: 50,
            }),
            &[],
        );
        s.receive_one().unwrap();
        assert!(s.last_pdu_at() > before);
        assert!(s.ping_answered(itt));
        assert!(!s.ping_answered(itt), "told once, then forgotten");
    }

    #[test]
    fn reject_async_and_window_violations() {
        // Reject of a command: the task completes as rejected, the session goes on.
        let (mut s, mut peer) = setup();
        let tag = s.start(0, &[0; 6], Data::<Vec<u8>>::None).unwrap();
        let (cmd, _) = peer.recv();
        let rejected = cmd.encode(0, 0);
        peer.send(
            Bhs::Reject(Reject {
                reason: 0x09,
                stat_sn: 100,
                exp_cmd_sn: 11,
                max_cmd_sn: 40,
                data_sn: 0,
            }),
            &rejected,
        );
        let c = s.poll().unwrap().unwrap();
        assert_eq!(
            (c.tag, c.outcome.clone()),
            (tag, Err(TaskError::Rejected(0x09)))
        );
        assert!(c
            .outcome
            .unwrap_err()
            .to_string()
            .contains("invalid PDU field"));
        // Async "logout requested" is reported; "connection will drop" ends the session.
        peer.send(
            Bhs::AsyncMessage(AsyncMessage {
                event: 1,
                stat_sn: 101,
                exp_cmd_sn: 11,
                max_cmd_sn: 40,
                param3: 5,
                ..Default::default()
            }),
            &[],
        );
        s.receive_one().unwrap();
        let ev = s.take_events();
        assert_eq!((ev.len(), ev[0].event, ev[0].param3), (1, 1, 5));
        peer.send(
            Bhs::AsyncMessage(AsyncMessage {
                event: 2,
                stat_sn: 102,
                exp_cmd_sn: 11,
                max_cmd_sn: 40,
                ..Default::default()
            }),
            &[],
        );
        assert!(matches!(s.receive_one(), Err(SessionError::Dropped(2))));
        // ExpCmdSN acknowledging commands never sent.
        let (mut s, mut peer) = setup();
        read_cmd(&mut s, 512);
        peer.send(
            Bhs::NopIn(NopIn {
                itt: RESERVED_TAG,
                ttt: RESERVED_TAG,
                stat_sn: 100,
                exp_cmd_sn: 30,
                max_cmd_sn: 60,
                ..Default::default()
            }),
            &[],
        );
        expect_protocol(&mut s, "ExpCmdSN");
        // Unknown opcodes and target-only opcodes from the target.
        let (mut s, mut peer) = setup();
        read_cmd(&mut s, 512);
        peer.send(Bhs::NopOut(NopOut::default()), &[]);
        expect_protocol(&mut s, "unexpected opcode");
        let (mut s, mut peer) = setup();
        read_cmd(&mut s, 512);
        let mut raw = [0u8; 48];
        raw[0] = 0x3c;
        peer.s.write_all(&raw).unwrap();
        assert!(matches!(
            s.poll(),
            Err(SessionError::Pdu(PduError::UnknownOpcode(0x3c)))
        ));
    }

    #[test]
    fn closed_window_waits_for_the_target() {
        let mut p = params();
        p.max_cmd_sn = 10; // room for exactly one command
        let (a, b) = UnixStream::pair().unwrap();
        let mut peer = Peer {
            s: b,
            d: p.digests(),
        };
        let mut s: Session<UnixStream> = Session::new(a, p).unwrap();
        let t1 = read_cmd(&mut s, 512);
        assert!(!s.window_open());
        // The target opens the window by answering the first command.
        peer.send(
            Bhs::DataIn(DataIn {
                max_cmd_sn: 20,
                exp_cmd_sn: 11,
                ..match data_in(t1.0, 0, 0, true) {
                    Bhs::DataIn(d) => d,
                    _ => unreachable!(),
                }
            }),
            &[5; 512],
        );
        let t2 = read_cmd(&mut s, 512);
        assert_ne!(t1, t2);
        assert_eq!(s.try_completion().unwrap().tag, t1);
        assert_eq!(s.params().cmd_sn, 12);
    }

    #[test]
    fn a_command_that_could_not_be_sent_is_handed_back() {
        let (mut s, peer) = setup();
        drop(peer);
        let e = s
            .start(
                0,
                &[0x2a, 0, 0, 0, 0, 0, 0, 0, 8, 0],
                Data::Out(vec![3u8; 4096]),
            )
            .unwrap_err();
        assert!(matches!(e, SessionError::Pdu(PduError::Io(_))), "{e:?}");
        assert!(matches!(
            s.start(0, &[0; 6], Data::None),
            Err(SessionError::Failed)
        ));
        let left = s.take_outstanding();
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].cdb[0], 0x2a);
        assert!(matches!(&left[0].data, Data::Out(b) if b.len() == 4096 && b[0] == 3));
    }

    #[test]
    fn outstanding_commands_come_back_in_cmd_sn_order_across_wraparound() {
        let mut p = params();
        p.cmd_sn = u32::MAX - 1;
        p.exp_cmd_sn = u32::MAX - 1;
        p.max_cmd_sn = 20;
        let (a, _peer) = UnixStream::pair().unwrap();
        let mut s: Session<UnixStream> = Session::new(a, p).unwrap();
        for i in 0..5u8 {
            s.start(0, &[0x00, i, 0, 0, 0, 0], Data::None).unwrap();
        }
        let order: Vec<u8> = s.take_outstanding().iter().map(|o| o.cdb[1]).collect();
        assert_eq!(order, [0, 1, 2, 3, 4]);
    }

    /// Arbitrary bytes from the "target" never panic the session.
    #[test]
    fn random_target_bytes_never_panic() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..2000 {
            let (a, mut b) = UnixStream::pair().unwrap();
            let mut p = params();
            p.header_digest = i % 2 == 0;
            p.data_digest = i % 3 == 0;
            let mut s: Session<UnixStream> = Session::new(a, p).unwrap();
            let _ = s.start(0, &[0x28; 10], Data::In(vec![0u8; 4096]));
            let _ = s.start(0, &[0x2a; 10], Data::Out(vec![1u8; 20000]));
            let len = (next() % 600) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if len >= 48 {
                const OPS: [u8; 10] = [0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f];
                bytes[0] = OPS[(next() % 10) as usize];
                bytes[4] = 0;
                bytes[5] = 0;
                bytes[6] = 0;
                bytes[7] = (next() % 64) as u8;
                bytes[16..20].copy_from_slice(&(1 + (next() % 2) as u32).to_be_bytes());
            }
            b.write_all(&bytes).unwrap();
            drop(b);
            for _ in 0..8 {
                if s.poll().is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn logout_within_takes_the_answer_and_ends_the_session() {
        let (mut s, mut peer) = setup();
        // The answer is queued before the request goes (its ITT is the next one, 1).
        peer.send(
            Bhs::LogoutResponse(pdu::LogoutResponse {
                response: 0,
                itt: 1,
                stat_sn: 100,
                exp_cmd_sn: 10,
                max_cmd_sn: 40,
                time2wait: 2,
                time2retain: 0,
            }),
            &[],
        );
        let mut asked = 0;
        let r = s
            .logout_within(|_| {
                asked += 1;
                true
            })
            .unwrap();
        assert_eq!((r.response, r.time2wait), (0, 2));
        assert_eq!(asked, 1, "asked once before the response was read");
        let (req, _) = peer.recv();
        let Bhs::LogoutRequest(l) = req else {
            panic!("{req:?}")
        };
        assert!(l.immediate && l.reason == 0 && l.itt == 1 && l.cmd_sn == 10);
        assert!(matches!(s.ping(), Err(SessionError::Failed)));
    }

    #[test]
    fn logout_within_gives_up_on_a_silent_target() {
        let (mut s, mut peer) = setup();
        let r = s.logout_within(|stream| {
            // What the daemon's LUN thread does: poll the socket until a deadline.
            let mut fds = [nix::poll::PollFd::new(
                std::os::fd::AsFd::as_fd(stream),
                nix::poll::PollFlags::POLLIN,
            )];
            matches!(
                nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(50u16)),
                Ok(n) if n > 0
            )
        });
        assert!(matches!(r, Err(SessionError::Idle)), "{r:?}");
        let (req, _) = peer.recv();
        assert!(matches!(req, Bhs::LogoutRequest(_)), "{req:?}");
        // Over: nothing more is sent, a late answer is not read.
        assert!(matches!(s.ping(), Err(SessionError::Failed)));
        assert!(matches!(s.logout(), Err(SessionError::Failed)));
    }
}
