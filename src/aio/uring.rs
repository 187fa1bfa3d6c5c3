//! The io_uring engine: one ring per request-queue thread.

use std::{io, os::fd::RawFd};

use io_uring::{opcode, register::Restriction, squeue, types, IoUring};

use super::{Engine, Op};
use crate::scsi::IoKind;

/// `user_data` of the poll on the guest's kick eventfd (slot numbers are far below it).
const KICK_TOKEN: u64 = u64::MAX;

/// One io_uring with the LUN files registered and only our opcodes allowed.
pub struct UringEngine {
    ring: IoUring,
    /// Registered (fixed) files, by index.
    files: Vec<RawFd>,
    /// Whether a POLL_ADD on the kick fd is outstanding.
    kick_armed: bool,
    kick_fired: bool,
    /// Operations queued but not yet submitted.
    queued: usize,
    /// Completions taken off the ring but not yet handed out.
    pending: Vec<(u64, i32)>,
}

impl UringEngine {
    /// Creates a ring of `entries` (completion queue twice as large), registers `files` and
    /// restricts the ring to READV, WRITEV, FSYNC, FALLOCATE and POLL_ADD.
    pub fn new(entries: u32, files: &[RawFd]) -> io::Result<Self> {
        let ring: IoUring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .setup_single_issuer()
            .setup_coop_taskrun()
            .setup_r_disabled()
            .build(entries)?;
        let sub = ring.submitter();
        if !files.is_empty() {
            sub.register_files(files)?;
        }
        let mut restrictions = [
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_op(opcode::Fallocate::CODE),
            Restriction::sqe_op(opcode::PollAdd::CODE),
            Restriction::sqe_flags_allowed(squeue::Flags::FIXED_FILE.bits()),
        ];
        sub.register_restrictions(&mut restrictions)?;
        sub.register_enable_rings()?;
        Ok(Self {
            ring,
            files: files.to_vec(),
            kick_armed: false,
            kick_fired: false,
            queued: 0,
            pending: Vec::with_capacity(entries as usize * 2),
        })
    }

    fn push_entry(&mut self, entry: &squeue::Entry) -> bool {
        // SAFETY: every buffer an entry references (iovecs and the guest memory they point to)
        // stays valid until its completion is reaped: the queue worker keeps the slot, its
        // iovecs and its guest-memory guard until then (see `Op`).
        let ok = unsafe { self.ring.submission().push(entry).is_ok() };
        if ok {
            self.queued += 1;
        }
        ok
    }

    fn arm_kick(&mut self, fd: RawFd) -> bool {
        if self.kick_armed {
            return true;
        }
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .build()
            .user_data(KICK_TOKEN);
        if self.push_entry(&entry) {
            self.kick_armed = true;
        }
        self.kick_armed
    }

    /// Moves the ring's completions to `pending`, noting a fired kick poll.
    fn collect(&mut self) {
        let mut kick = false;
        for cqe in self.ring.completion() {
            if cqe.user_data() == KICK_TOKEN {
                kick = true;
            } else {
                self.pending.push((cqe.user_data(), cqe.result()));
            }
        }
        if kick {
            self.kick_armed = false;
            self.kick_fired = true;
        }
    }
}

impl Engine for UringEngine {
    fn push(&mut self, op: &Op) -> bool {
        let fd = match self.files.iter().position(|&f| f == op.fd) {
            Some(i) => types::Fixed(i as u32),
            // Not registered (cannot happen for LUN files): the caller runs it synchronously.
            None => return false,
        };
        let iovcnt = op.iovcnt as u32;
        let entry = match op.kind {
            IoKind::Read => opcode::Readv::new(fd, op.iov, iovcnt)
                .offset(op.offset)
                .build(),
            IoKind::Write { fua } => opcode::Writev::new(fd, op.iov, iovcnt)
                .offset(op.offset)
                .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                .build(),
            IoKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
        };
        self.push_entry(&entry.user_data(op.user_data))
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.queued > 0 {
            self.ring.submit()?;
            self.queued = 0;
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        self.collect();
        out.append(&mut self.pending);
    }

    fn wait(&mut self, kick_fd: Option<RawFd>) -> io::Result<bool> {
        if let Some(fd) = kick_fd {
            self.arm_kick(fd);
        }
        self.collect();
        if !self.kick_fired && self.pending.is_empty() {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) => return Err(e),
            }
            self.queued = 0;
            self.collect();
        } else {
            self.submit()?;
        }
        // The kick stays readable (POLL_ADD does not consume it) for the vring event loop.
        Ok(std::mem::take(&mut self.kick_fired))
    }

    fn ready(&mut self) -> bool {
        !self.pending.is_empty() || self.kick_fired || !self.ring.completion().is_empty()
    }

    fn name(&self) -> &'static str {
        "io-uring"
    }
}
