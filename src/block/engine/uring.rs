//! The io_uring engine: one ring per request-queue thread.

use std::{
    io,
    os::fd::{AsRawFd, RawFd},
};

use io_uring::{cqueue, opcode, register::Restriction, squeue, types, IoUring};

use super::{Engine, Op, DEALLOCATE_MODE};
use crate::block::IoKind;

/// `user_data` bit of the polls on the guest's kick eventfd (slot numbers are far below it); the
/// low bits number the polls, so a completion for a poll we no longer watch is recognised (a
/// new kick eventfd often gets the old one's fd number).
const KICK_TOKEN: u64 = 1 << 63;
/// `user_data` of a POLL_REMOVE for the poll on a kick fd that was replaced.
const REMOVE_TOKEN: u64 = KICK_TOKEN | 1 << 62;

/// `io_uring_register` opcodes (linux/io_uring.h), which the io-uring crate does not export.
const IORING_REGISTER_BUFFERS: u8 = 0;
const IORING_UNREGISTER_BUFFERS: u8 = 1;

/// io_uring refuses registered buffers larger than this; guest regions are split.
const MAX_FIXED_BUFFER: usize = 1 << 30;

/// One io_uring with the LUN files registered and only our opcodes allowed.
pub struct UringEngine {
    ring: IoUring,
    /// Registered (fixed) files, by index.
    files: Vec<RawFd>,
    /// Guest memory registered as fixed buffers (`--register-buffers`): (host start, length)
    /// by buffer index, sorted by address.
    buffers: Vec<(usize, usize)>,
    /// The kick fd a multishot POLL_ADD is outstanding on, and that poll's `user_data`.
    kick_armed: Option<(RawFd, u64)>,
    /// Polls armed so far (numbers their `user_data`).
    kick_polls: u64,
    /// The front-end may have replaced the kick fd (see [`Engine::forget_kick`]): re-arm.
    kick_stale: bool,
    kick_fired: bool,
    /// Operations queued but not yet submitted.
    queued: usize,
    /// Completions taken off the ring but not yet handed out.
    pending: Vec<(u64, i32)>,
}

impl UringEngine {
    /// Creates a ring of `entries` (completion queue twice as large), registers `files` and
    /// restricts the ring to READV, WRITEV, READ_FIXED, WRITE_FIXED, FSYNC, FALLOCATE, POLL_ADD
    /// and POLL_REMOVE.
    /// With `buffers`, the ring may also register and unregister guest memory (nothing else
    /// can be registered once it runs).
    pub fn new(entries: u32, files: &[RawFd], buffers: bool) -> io::Result<Self> {
        let ring: IoUring = IoUring::builder()
            .setup_cqsize(entries * 2)
            .setup_single_issuer()
            // Completions are posted when this thread next enters the kernel, without an IPI;
            // the TASKRUN flag tells a busy-polling thread when it has to enter (`ready`).
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled()
            .build(entries)?;
        let sub = ring.submitter();
        if !files.is_empty() {
            sub.register_files(files)?;
        }
        let mut restrictions = vec![
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_op(opcode::Fallocate::CODE),
            Restriction::sqe_op(opcode::PollAdd::CODE),
            Restriction::sqe_op(opcode::PollRemove::CODE),
            Restriction::sqe_op(opcode::ReadFixed::CODE),
            Restriction::sqe_op(opcode::WriteFixed::CODE),
            Restriction::sqe_flags_allowed(squeue::Flags::FIXED_FILE.bits()),
        ];
        if buffers {
            restrictions.extend([
                Restriction::register_op(IORING_REGISTER_BUFFERS),
                Restriction::register_op(IORING_UNREGISTER_BUFFERS),
            ]);
        }
        sub.register_restrictions(&mut restrictions)?;
        sub.register_enable_rings()?;
        Ok(Self {
            ring,
            files: files.to_vec(),
            buffers: Vec::new(),
            kick_armed: None,
            kick_polls: 0,
            kick_stale: false,
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

    /// Watches `fd` (the guest's kick) with a multishot, edge-triggered POLL_ADD: it completes
    /// once for every write to the eventfd and never consumes it, so it can stay armed while
    /// the vring event loop (which reads the kick) still has it readable.
    fn arm_kick(&mut self, fd: RawFd) {
        if std::mem::take(&mut self.kick_stale) && !self.disarm_kick() {
            self.kick_stale = true;
            return;
        }
        if let Some((armed, _)) = self.kick_armed {
            // A different fd: the front-end replaced the kick (SET_VRING_KICK).
            if armed == fd || !self.disarm_kick() {
                return;
            }
        }
        self.kick_polls += 1;
        let token = KICK_TOKEN | self.kick_polls;
        let entry = opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32)
            .multi(true)
            .build()
            .user_data(token);
        if self.push_entry(&entry) {
            self.kick_armed = Some((fd, token));
        }
    }

    /// Removes the kick poll (whose file it keeps open); false when the submission queue had
    /// no room for the removal.
    fn disarm_kick(&mut self) -> bool {
        let Some((_, token)) = self.kick_armed else {
            return true;
        };
        let remove = opcode::PollRemove::new(token)
            .build()
            .user_data(REMOVE_TOKEN);
        if !self.push_entry(&remove) {
            return false;
        }
        self.kick_armed = None;
        self.kick_fired = false;
        true
    }

    /// The registered buffer holding all of `[ptr, ptr + len)`, if any.
    fn fixed_buffer(&self, ptr: usize, len: usize) -> Option<u16> {
        let i = self.buffers.partition_point(|&(start, _)| start <= ptr);
        let (start, size) = *self.buffers.get(i.checked_sub(1)?)?;
        let end = ptr.checked_add(len)?;
        (end <= start + size).then(|| (i - 1) as u16)
    }

    /// Moves the ring's completions to `pending`, noting a fired kick poll.
    fn collect(&mut self) {
        for cqe in self.ring.completion() {
            let data = cqe.user_data();
            if data & KICK_TOKEN == 0 {
                self.pending.push((data, cqe.result()));
                continue;
            }
            // A kick poll (current or replaced) or the removal of one.
            if self.kick_armed.map(|(_, token)| token) == Some(data) {
                if cqe.result() >= 0 {
                    self.kick_fired = true;
                }
                if !cqueue::more(cqe.flags()) {
                    // The kernel ended the multishot poll (error, CQ overflow): arm it again
                    // and treat this as a kick so that nothing waits for one that was missed.
                    self.kick_armed = None;
                    self.kick_fired = true;
                }
            }
        }
    }
}

impl Engine for UringEngine {
    fn accepts(&self, fd: RawFd) -> bool {
        self.files.contains(&fd)
    }

    fn push(&mut self, op: &Op) -> bool {
        let fd = match self.files.iter().position(|&f| f == op.fd) {
            Some(i) => types::Fixed(i as u32),
            // Not registered (cannot happen for LUN files): the caller runs it synchronously.
            None => return false,
        };
        // One segment inside registered guest memory: READ_FIXED/WRITE_FIXED skip pinning the
        // pages for every I/O (`--register-buffers`).
        let single = if op.iovcnt == 1 && !self.buffers.is_empty() {
            // SAFETY: `iov` points at `iovcnt` valid iovecs (see `Op`).
            let v = unsafe { *op.iov };
            self.fixed_buffer(v.iov_base as usize, v.iov_len)
                .and_then(|index| {
                    Some((
                        v.iov_base.cast::<u8>(),
                        u32::try_from(v.iov_len).ok()?,
                        index,
                    ))
                })
        } else {
            None
        };
        let iovcnt = op.iovcnt as u32;
        let entry = match (op.kind, single) {
            (IoKind::Read, Some((buf, len, index))) => opcode::ReadFixed::new(fd, buf, len, index)
                .offset(op.offset)
                .build(),
            (IoKind::Write { fua }, Some((buf, len, index))) => {
                opcode::WriteFixed::new(fd, buf, len, index)
                    .offset(op.offset)
                    .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                    .build()
            }
            (IoKind::Read, None) => opcode::Readv::new(fd, op.iov, iovcnt)
                .offset(op.offset)
                .build(),
            (IoKind::Write { fua }, None) => opcode::Writev::new(fd, op.iov, iovcnt)
                .offset(op.offset)
                .rw_flags(if fua { libc::RWF_DSYNC } else { 0 })
                .build(),
            (IoKind::Flush, _) => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            (IoKind::Deallocate { bytes }, _) => opcode::Fallocate::new(fd, bytes)
                .offset(op.offset)
                .mode(DEALLOCATE_MODE)
                .build(),
        };
        self.push_entry(&entry.user_data(op.user_data))
    }

    fn register_memory(&mut self, regions: &[(*mut u8, usize)]) -> io::Result<usize> {
        if !self.buffers.is_empty() {
            // The kernel keeps the old buffers of requests still in flight until they complete.
            self.ring.submitter().unregister_buffers()?;
            self.buffers.clear();
        }
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        for &(ptr, len) in regions {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(MAX_FIXED_BUFFER);
                chunks.push((ptr as usize + done, n));
                done += n;
            }
        }
        chunks.sort_unstable();
        let iovecs: Vec<libc::iovec> = chunks
            .iter()
            .map(|&(start, len)| libc::iovec {
                iov_base: start as *mut libc::c_void,
                iov_len: len,
            })
            .collect();
        // SAFETY: the iovecs describe guest memory mapped by the caller's memory table, which
        // the queue worker keeps alive while these buffers are registered; the kernel pins the
        // pages, so an unmapped table could not make it touch freed memory either.
        unsafe { self.ring.submitter().register_buffers(&iovecs)? };
        self.buffers = chunks;
        Ok(self.buffers.iter().map(|&(_, len)| len).sum())
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
        // An armed poll that fires while the caller is not watching is forgotten below.
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
        let fired = std::mem::take(&mut self.kick_fired);
        Ok(fired && kick_fd.is_some())
    }

    fn ready(&mut self) -> bool {
        if !self.pending.is_empty() || self.kick_fired || !self.ring.completion().is_empty() {
            return true;
        }
        // With COOP_TASKRUN, finished I/O reaches the completion queue only when this thread
        // enters the kernel; a busy-polling thread never would (until the next timer tick, which
        // capped `--poll-us` at 8,000 IOPS): enter when the kernel says work is waiting.
        if self.ring.submission().taskrun() && self.ring.submit().is_ok() {
            self.queued = 0;
            return !self.ring.completion().is_empty();
        }
        false
    }

    fn completion_fd(&self) -> Option<RawFd> {
        // An io_uring fd polls readable while its completion queue holds entries.
        Some(self.ring.as_raw_fd())
    }

    fn kick_edges(&self) -> bool {
        true
    }

    fn forget_kick(&mut self) {
        // Called from the vhost-user thread: the ring (SINGLE_ISSUER) only takes submissions
        // from its queue thread, which re-arms at its next wait.
        self.kick_stale = true;
    }

    fn name(&self) -> &'static str {
        "io-uring"
    }
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsRawFd, thread::sleep, time::Duration};

    use vmm_sys_util::eventfd::EventFd;

    use super::*;

    /// Whether a kick completion arrives within a moment (consumes it).
    fn kicked(e: &mut UringEngine) -> bool {
        sleep(Duration::from_millis(30));
        let ready = e.ready();
        e.collect();
        ready && std::mem::take(&mut e.kick_fired)
    }

    fn engine() -> UringEngine {
        UringEngine::new(8, &[], false).expect("io_uring (is kernel.io_uring_disabled set?)")
    }

    /// The kick poll fires once per write and not again while the eventfd merely stays
    /// readable (the vring event loop reads it later): a queue can keep watching it.
    #[test]
    fn the_kick_poll_is_edge_triggered() {
        let mut e = engine();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        e.arm_kick(kick.as_raw_fd());
        e.submit().unwrap();
        kick.write(1).unwrap();
        assert!(kicked(&mut e), "first kick");
        assert!(!kicked(&mut e), "fired again without a new kick");
        kick.write(1).unwrap();
        assert!(kicked(&mut e), "second kick");
    }

    /// A kick eventfd replaced under the same fd number (GET_VRING_BASE, then SET_VRING_KICK)
    /// is watched again once the worker was told (`forget_kick`).
    #[test]
    fn a_replaced_kick_is_watched() {
        let mut e = engine();
        let old = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let fd = old.as_raw_fd();
        e.arm_kick(fd);
        e.submit().unwrap();
        // `fd` now names a new eventfd, as after a close and a reopen (dup2 replaces it in one
        // step, so no other test's fd is touched); `old` closes it at the end.
        let new = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        // SAFETY: both fds are open and owned by this test.
        assert_eq!(unsafe { libc::dup2(new.as_raw_fd(), fd) }, fd);
        e.forget_kick();
        e.arm_kick(fd);
        e.submit().unwrap();
        new.write(1).unwrap();
        assert!(kicked(&mut e), "the new kick was not watched");
    }
}
