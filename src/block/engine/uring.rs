//! The io_uring engine: one ring per request queue.
//!
//! Rings are made while the worker is still single-threaded and unfiltered (after the rest of
//! its confinement, before its seccomp filters): created disabled, given the LUN files as fixed
//! files, restricted to our opcodes with fixed files required, then enabled. No thread that
//! runs afterwards may call `io_uring_setup`, so a compromised thread cannot make a ring of its
//! own, and the rings it can reach only read, write, sync and deallocate registered files and
//! poll the kick eventfd registered in the slot after them.
//!
//! The rings outlive connections: a queue thread (`worker::vhost_user`'s, new for every
//! connection) takes its queue's ring for the connection and the main thread recycles it at the
//! disconnect ([`UringEngine::recycle`]). That is why they are not `IORING_SETUP_SINGLE_ISSUER`:
//! such a ring takes submissions only from the task that enabled it, for the ring's whole life
//! (the kernel offers no way to hand it over), while the rings are enabled before any queue
//! thread exists and serve a new queue thread after every reconnection.

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
/// The worker's seccomp files allow exactly these after confinement (`io_uring_register`, arg 1).
pub const IORING_REGISTER_BUFFERS: u8 = 0;
pub const IORING_UNREGISTER_BUFFERS: u8 = 1;
pub const IORING_REGISTER_FILES_UPDATE: u8 = 6;

/// Most submission entries a ring has (completion entries: twice as many), and so the most
/// commands a queue keeps in flight on it. Every ring is made at start-up for every request
/// queue (`--num-queues`, default 62) and its memory counts against the worker account's
/// RLIMIT_MEMLOCK (the worker has no CAP_IPC_LOCK): 128 entries are 4 pages (16 KiB) per
/// ring, about 1 MiB for 62 queues, where the queue size (1024) would be 26 pages (6.3 MiB).
/// QEMU's virtqueues hold 128 requests by default; further requests wait in the virtqueue.
pub const MAX_RING_ENTRIES: u16 = 128;

/// io_uring refuses registered buffers larger than this; guest regions are split.
const MAX_FIXED_BUFFER: usize = 1 << 30;

/// Why a ring could not be made ready for the next connection.
#[derive(Debug, thiserror::Error)]
pub enum RecycleError {
    #[error("cannot remove the kick poll: {0}")]
    Disarm(#[source] io::Error),
    #[error("cannot clear the kick slot: {0}")]
    KickSlot(#[source] io::Error),
    #[error("cannot unregister guest memory: {0}")]
    Buffers(#[source] io::Error),
    #[error("{0} operations still queued or in flight")]
    Busy(usize),
}

/// One io_uring with the LUN files registered and only our opcodes allowed.
pub struct UringEngine {
    ring: IoUring,
    /// Registered (fixed) files, by index; the kick eventfd's slot follows them.
    files: Vec<RawFd>,
    /// The fd registered in the kick slot (`files.len()`), if any.
    kick_registered: Option<RawFd>,
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
    /// Creates a ring of `entries` (completion queue twice as large), registers `files` and an
    /// empty slot for the kick eventfd, and restricts the ring to READV, WRITEV, READ_FIXED,
    /// WRITE_FIXED, FSYNC, FALLOCATE, POLL_ADD and POLL_REMOVE on fixed files only, and to one
    /// `io_uring_register` operation: replacing the kick slot's file. With `buffers`, it may
    /// also register and unregister guest memory.
    ///
    /// Called before the worker's seccomp filters exist (`io_uring_setup` is allowed to no
    /// role); the ring is enabled here, so any thread may use it from now on.
    pub fn new(entries: u32, files: &[RawFd], buffers: bool) -> io::Result<Self> {
        let ring: IoUring = IoUring::builder()
            .setup_cqsize(entries * 2)
            // Completions are posted when the submitting thread next enters the kernel, without
            // an IPI; the TASKRUN flag tells a busy-polling thread when it has to enter
            // (`ready`). (No SINGLE_ISSUER: see the module comment.)
            .setup_coop_taskrun()
            .setup_taskrun_flag()
            .setup_r_disabled()
            .build(entries)?;
        let sub = ring.submitter();
        // The LUN files, then the kick's slot, empty until a queue thread arms its poll.
        let mut table = files.to_vec();
        table.push(-1);
        sub.register_files(&table)?;
        let mut restrictions = vec![
            Restriction::sqe_op(opcode::Readv::CODE),
            Restriction::sqe_op(opcode::Writev::CODE),
            Restriction::sqe_op(opcode::Fsync::CODE),
            Restriction::sqe_op(opcode::Fallocate::CODE),
            Restriction::sqe_op(opcode::PollAdd::CODE),
            Restriction::sqe_op(opcode::PollRemove::CODE),
            Restriction::sqe_op(opcode::ReadFixed::CODE),
            Restriction::sqe_op(opcode::WriteFixed::CODE),
            // Every SQE names a registered file: the LUN files and the kick, nothing else the
            // worker holds (sockets, the broker, guest memory fds).
            Restriction::sqe_flags_required(squeue::Flags::FIXED_FILE.bits()),
            Restriction::register_op(IORING_REGISTER_FILES_UPDATE),
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
            kick_registered: None,
            buffers: Vec::new(),
            kick_armed: None,
            kick_polls: 0,
            kick_stale: false,
            kick_fired: false,
            queued: 0,
            pending: Vec::with_capacity(entries as usize * 2),
        })
    }

    /// One ring per request queue, for queues of `depth` descriptors (at most
    /// [`MAX_RING_ENTRIES`] of them in flight) over the LUN `files` (`buffers`:
    /// `--register-buffers`). At worker start-up, before the seccomp filters.
    pub fn for_queues(
        queues: u16,
        depth: u16,
        files: &[RawFd],
        buffers: bool,
    ) -> io::Result<Vec<Self>> {
        let entries = u32::from(depth.clamp(1, MAX_RING_ENTRIES)).next_power_of_two();
        (0..queues)
            .map(|_| Self::new(entries, files, buffers))
            .collect()
    }

    /// How many operations the ring takes at once (its completion queue holds twice as many):
    /// the most commands a queue worker keeps in flight on it.
    pub fn entries(&self) -> u32 {
        self.ring.params().sq_entries()
    }

    /// The fixed-file index of the kick slot.
    fn kick_slot(&self) -> u32 {
        self.files.len() as u32
    }

    /// Makes the ring ready for the next connection's queue thread (called on the main thread
    /// after the previous one was joined, with nothing in flight): the kick poll removed, its
    /// eventfd released from the kick slot, guest memory unregistered, stale completions
    /// dropped.
    pub fn recycle(&mut self) -> Result<(), RecycleError> {
        if let Some((_, token)) = self.kick_armed.take() {
            let remove = opcode::PollRemove::new(token)
                .build()
                .flags(squeue::Flags::FIXED_FILE)
                .user_data(REMOVE_TOKEN);
            if !self.push_entry(&remove) {
                return Err(RecycleError::Busy(self.queued));
            }
            // The removal always completes (0, or ENOENT when the kernel already ended the
            // poll when its thread exited).
            loop {
                match self.ring.submit_and_wait(1) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) => return Err(RecycleError::Disarm(e)),
                }
                self.queued = 0;
                let removed = self
                    .ring
                    .completion()
                    .any(|cqe| cqe.user_data() == REMOVE_TOKEN);
                if removed {
                    break;
                }
            }
        }
        if self.kick_registered.take().is_some() {
            self.ring
                .submitter()
                .register_files_update(self.kick_slot(), &[-1])
                .map_err(RecycleError::KickSlot)?;
        }
        if !self.buffers.is_empty() {
            self.ring
                .submitter()
                .unregister_buffers()
                .map_err(RecycleError::Buffers)?;
            self.buffers.clear();
        }
        self.collect();
        if !self.pending.is_empty() || self.queued > 0 {
            return Err(RecycleError::Busy(self.pending.len() + self.queued));
        }
        self.kick_stale = false;
        self.kick_fired = false;
        Ok(())
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
        // Every new poll first puts `fd` in the kick slot: it may name a new eventfd under an
        // old number (the ring's restriction accepts fixed files only).
        if self
            .ring
            .submitter()
            .register_files_update(self.kick_slot(), &[fd])
            .is_err()
        {
            // Not watched: the queue still sees new requests at every completion and when the
            // event loop calls it again.
            return;
        }
        self.kick_registered = Some(fd);
        self.kick_polls += 1;
        let token = KICK_TOKEN | self.kick_polls;
        let entry = opcode::PollAdd::new(types::Fixed(self.kick_slot()), libc::POLLIN as u32)
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
        // FIXED_FILE although POLL_REMOVE names no file: the ring requires it on every SQE.
        let remove = opcode::PollRemove::new(token)
            .build()
            .flags(squeue::Flags::FIXED_FILE)
            .user_data(REMOVE_TOKEN);
        if !self.push_entry(&remove) {
            return false;
        }
        self.kick_armed = None;
        self.kick_fired = false;
        true
    }

    /// The fixed-file slot to run I/O on `fd` with: the plan's own slot (the LU's, given at
    /// start-up), and only while the ring still holds that very descriptor there. Never a
    /// lookup by descriptor number alone: a LUN added at runtime may get the number of a
    /// removed LUN's file, whose slot must never serve it.
    fn fixed_slot(&self, fd: RawFd, fixed: Option<u32>) -> Option<u32> {
        let slot = fixed?;
        (fd >= 0 && self.files.get(slot as usize) == Some(&fd)).then_some(slot)
    }

    /// Brings the LUN slots to `table` (by slot, -1: nothing; the kick slot is not in it):
    /// registers the files of LUNs added at run time in their spare slots and lets go of
    /// removed LUNs' files ([`Self::release_file`]). A slot is given once (never reused), so
    /// comparing descriptor numbers is enough.
    pub fn sync_files(&mut self, table: &[RawFd]) -> io::Result<()> {
        let n = table.len().min(self.files.len());
        for (slot, &fd) in table[..n].iter().enumerate() {
            if self.files[slot] != fd {
                self.ring
                    .submitter()
                    .register_files_update(slot as u32, &[fd])?;
                self.files[slot] = fd;
            }
        }
        Ok(())
    }

    /// Lets go of the file in fixed slot `slot` (its LUN was removed): the ring no longer keeps
    /// it open, so closing the LUN's descriptor really closes the file (and releases its
    /// lock). I/O still in flight on it keeps the file until it completes (the kernel holds
    /// a reference per request).
    pub fn release_file(&mut self, slot: u32) -> io::Result<()> {
        let Some(fd) = self.files.get_mut(slot as usize) else {
            return Ok(());
        };
        if *fd < 0 {
            return Ok(());
        }
        self.ring.submitter().register_files_update(slot, &[-1])?;
        *fd = -1;
        Ok(())
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
    fn accepts(&self, fd: RawFd, fixed: Option<u32>) -> bool {
        self.fixed_slot(fd, fixed).is_some()
    }

    fn sync_fixed_files(&mut self, table: &[RawFd]) -> io::Result<()> {
        self.sync_files(table)
    }

    fn push(&mut self, op: &Op) -> bool {
        let fd = match self.fixed_slot(op.fd, op.fixed) {
            Some(i) => types::Fixed(i),
            // Not registered (a LUN added at run time once the spare slots ran out, or whose
            // slot this ring has not taken up yet): the caller runs it synchronously.
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

    fn forget_seen_kicks(&mut self) {
        // Completions stay (moved to `pending`); only the kick note goes. A poll the kernel
        // ended is re-armed at the next wait either way (`kick_armed` is None).
        self.collect();
        self.kick_fired = false;
    }

    fn forget_kick(&mut self) {
        // Called from the vhost-user thread, which must not enter the kernel for the queue:
        // the queue thread re-arms (and re-registers the kick slot) at its next wait.
        self.kick_stale = true;
    }

    fn name(&self) -> &'static str {
        "io-uring"
    }

    fn into_ring(self: Box<Self>) -> Option<UringEngine> {
        Some(*self)
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

    /// A file with `byte` in every byte of its first 4 KiB.
    fn filled(byte: u8) -> std::fs::File {
        use std::io::Write;
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&[byte; 4096]).unwrap();
        f
    }

    /// Reads 512 bytes at offset 0 through the engine: the completion's result, and the data.
    fn read_through(e: &mut UringEngine, fd: RawFd) -> (i32, Vec<u8>) {
        let mut buf = vec![0u8; 512];
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let op = Op {
            kind: IoKind::Read,
            fd,
            fixed: e.files.iter().position(|&f| f == fd).map(|i| i as u32),
            iov: &iov,
            iovcnt: 1,
            offset: 0,
            user_data: 7,
        };
        assert!(e.push(&op), "engine refused the read");
        e.submit().unwrap();
        (complete(e, 7), buf)
    }

    /// Waits for the completion of `user_data`.
    fn complete(e: &mut UringEngine, user_data: u64) -> i32 {
        let mut out = Vec::new();
        loop {
            e.reap(&mut out);
            if let Some(&(_, res)) = out.iter().find(|(d, _)| *d == user_data) {
                return res;
            }
            e.wait(None).unwrap();
        }
    }

    /// Issue 11: an SQE that names a file descriptor directly (not a registered file) is
    /// refused by the ring itself, whatever fd it names: only the LUN files (and the kick) are
    /// targets. With `sqe_flags_allowed(FIXED_FILE)` it read the file.
    #[test]
    fn an_sqe_naming_an_unregistered_fd_is_refused() {
        let lun = filled(0x5a);
        let other = filled(0xa5);
        let mut e = UringEngine::new(8, &[lun.as_raw_fd()], false).unwrap();
        // The registered file reads.
        let (res, data) = read_through(&mut e, lun.as_raw_fd());
        assert_eq!(res, 512);
        assert!(data.iter().all(|&b| b == 0x5a));
        // The same READV naming `other` by its fd number, as a compromised thread could.
        let mut buf = vec![0u8; 512];
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        for (fd, name) in [
            (other.as_raw_fd(), "other"),
            (lun.as_raw_fd(), "lun by number"),
        ] {
            let entry = opcode::Readv::new(types::Fd(fd), &iov, 1)
                .build()
                .user_data(9);
            assert!(e.push_entry(&entry));
            e.submit().unwrap();
            assert_eq!(complete(&mut e, 9), -libc::EACCES, "{name}");
        }
        assert!(
            buf.iter().all(|&b| b == 0),
            "the refused read wrote the buffer"
        );
        // An index past the table names nothing.
        let entry = opcode::Readv::new(types::Fixed(5), &iov, 1)
            .build()
            .user_data(10);
        assert!(e.push_entry(&entry));
        e.submit().unwrap();
        assert_eq!(complete(&mut e, 10), -libc::EBADF);
    }

    /// LUNs added at run time: their files enter the ring's spare slots, and removed LUNs'
    /// leave, by following the bus's table; the kick slot after them is untouched.
    #[test]
    fn spare_slots_take_added_files_and_let_removed_ones_go() {
        let a = tempfile::tempfile().unwrap();
        let b = tempfile::tempfile().unwrap();
        let (fa, fb) = (a.as_raw_fd(), b.as_raw_fd());
        let Ok(mut ring) = UringEngine::new(8, &[fa, -1], false) else {
            eprintln!("SKIPPED: io_uring unavailable");
            return;
        };
        assert_eq!(ring.kick_slot(), 2, "the kick follows the spares");
        assert!(!ring.accepts(fb, Some(1)));
        ring.sync_files(&[fa, fb]).unwrap();
        assert!(ring.accepts(fa, Some(0)) && ring.accepts(fb, Some(1)));
        ring.sync_files(&[-1, fb]).unwrap();
        assert!(!ring.accepts(fa, Some(0)), "removed");
        assert!(ring.accepts(fb, Some(1)));
        // Idempotent: nothing to do is nothing done.
        ring.sync_files(&[-1, fb]).unwrap();
        assert!(!ring.accepts(fb, Some(2)), "the kick slot is no LUN's");
    }

    /// A removed LUN's slot (runtime management): the plan must name the slot, and the slot
    /// must still hold that very descriptor; once released, the ring no longer keeps the file
    /// open (closing ours really closes it: its lock goes) and the slot serves nothing, not
    /// even a new file that got the old descriptor number.
    #[test]
    fn a_released_fixed_file_is_closed_and_serves_no_successor() {
        fn lock(f: &std::fs::File) -> bool {
            // SAFETY: flock only takes a descriptor and flags.
            unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
        }
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(4096).unwrap();
        let kept = img.reopen().unwrap();
        let released = img.reopen().unwrap();
        assert!(lock(&kept) && !lock(&released));
        let mut a = UringEngine::new(8, &[kept.as_raw_fd()], false).unwrap();
        let mut b = UringEngine::new(8, &[released.as_raw_fd()], false).unwrap();
        let (kept_fd, released_fd) = (kept.as_raw_fd(), released.as_raw_fd());
        assert!(a.accepts(kept_fd, Some(0)));
        assert!(!a.accepts(kept_fd, None), "runtime LUNs have no slot");
        assert!(!a.accepts(kept_fd, Some(1)), "the kick slot is no LUN's");
        assert!(!a.accepts(released_fd, Some(0)), "another descriptor");

        // `b` releases its slot, `a` does not; our descriptors are closed in both cases.
        b.release_file(0).unwrap();
        b.release_file(0).unwrap();
        assert!(!b.accepts(released_fd, Some(0)));
        drop(kept);
        let probe = img.reopen().unwrap();
        assert!(
            !lock(&probe),
            "the ring still holds the unreleased file (and its lock)"
        );
        a.release_file(0).unwrap();
        assert!(lock(&probe), "released: the file is closed, its lock gone");
        // A successor under the old number is not served through the old slot.
        let successor = img.reopen().unwrap();
        assert!(!a.accepts(successor.as_raw_fd(), Some(0)));
        let op = Op {
            kind: IoKind::Read,
            fd: successor.as_raw_fd(),
            fixed: Some(0),
            iov: std::ptr::null(),
            iovcnt: 0,
            offset: 0,
            user_data: 1,
        };
        assert!(!a.push(&op), "pushed onto a released slot");
        drop(released);
    }

    /// Operations other than ours are refused by the ring itself, fixed file or not: a
    /// compromised thread cannot open a file or make a socket through it.
    #[test]
    fn the_ring_runs_no_other_operation() {
        let lun = filled(3);
        let mut e = UringEngine::new(8, &[lun.as_raw_fd()], false).unwrap();
        let path = c"/etc/passwd";
        let open = opcode::OpenAt::new(types::Fd(libc::AT_FDCWD), path.as_ptr())
            .build()
            .flags(squeue::Flags::FIXED_FILE)
            .user_data(11);
        let socket = opcode::Socket::new(libc::AF_INET, libc::SOCK_STREAM, 0)
            .build()
            .flags(squeue::Flags::FIXED_FILE)
            .user_data(12);
        assert!(e.push_entry(&open) && e.push_entry(&socket));
        e.submit().unwrap();
        assert_eq!(complete(&mut e, 11), -libc::EACCES, "OPENAT");
        assert_eq!(complete(&mut e, 12), -libc::EACCES, "SOCKET");
    }

    /// After start-up only the kick slot can change (and guest memory with
    /// `--register-buffers`): a new file table, or buffers without the option, are refused.
    #[test]
    fn the_ring_registers_nothing_but_the_kick_slot() {
        let lun = filled(1);
        let other = filled(2);
        let e = UringEngine::new(8, &[lun.as_raw_fd()], false).unwrap();
        let sub = e.ring.submitter();
        let err = sub.register_files(&[other.as_raw_fd()]).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
        let err = sub.unregister_files().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
        let err = sub.unregister_buffers().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EACCES), "{err}");
        sub.register_files_update(1, &[other.as_raw_fd()]).unwrap();
    }

    /// The rings are made before the queue threads exist and serve a new queue thread at every
    /// connection: a ring made here serves one thread, is recycled, and serves the next (with
    /// IORING_SETUP_SINGLE_ISSUER the first thread's submissions already fail with EEXIST).
    #[test]
    fn a_ring_serves_a_new_thread_after_each_recycle() {
        let lun = filled(0x42);
        let fd = lun.as_raw_fd();
        let mut e = UringEngine::new(8, &[fd], false).unwrap();
        for connection in 0..3 {
            e = std::thread::spawn(move || {
                let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
                e.arm_kick(kick.as_raw_fd());
                let (res, data) = read_through(&mut e, fd);
                assert_eq!(res, 512, "connection {connection}");
                assert!(data.iter().all(|&b| b == 0x42));
                kick.write(1).unwrap();
                assert!(kicked(&mut e), "connection {connection}: kick");
                // The thread ends with its poll armed, as a queue thread at a disconnect.
                e
            })
            .join()
            .unwrap();
            e.recycle().unwrap();
            assert!(e.kick_armed.is_none() && e.kick_registered.is_none());
        }
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

    /// A kick the queue has already acted on does not end the next wait: the wait that follows
    /// it sleeps until the I/O completes (one `io_uring_enter` for submission and wait at QD1),
    /// while a kick after the forgetting still wakes it.
    #[test]
    fn forgotten_kicks_do_not_end_a_wait() {
        let lun = filled(0x11);
        let fd = lun.as_raw_fd();
        let mut e = UringEngine::new(8, &[fd], false).unwrap();
        let kick = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        e.arm_kick(kick.as_raw_fd());
        e.submit().unwrap();
        kick.write(1).unwrap();
        sleep(Duration::from_millis(30));
        e.forget_seen_kicks();
        let mut buf = vec![0u8; 512];
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        let op = Op {
            kind: IoKind::Read,
            fd,
            iov: &iov,
            iovcnt: 1,
            offset: 0,
            user_data: 3,
            fixed: Some(0),
        };
        assert!(e.push(&op));
        // Not submitted yet: the wait submits it and sleeps until it completes.
        assert!(
            !e.wait(Some(kick.as_raw_fd())).unwrap(),
            "woke for an old kick"
        );
        let mut out = Vec::new();
        e.reap(&mut out);
        assert_eq!(out, [(3, 512)]);
        assert!(buf.iter().all(|&b| b == 0x11));
        // A new kick still ends a wait.
        kick.write(1).unwrap();
        assert!(
            e.wait(Some(kick.as_raw_fd())).unwrap(),
            "a new kick was missed"
        );
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
