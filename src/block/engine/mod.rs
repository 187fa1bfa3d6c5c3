//! Asynchronous I/O engines for the request queues.
//!
//! A request-queue thread pops many chains, starts the READ/WRITE/SYNCHRONIZE CACHE (and the
//! single-range UNMAP / WRITE SAME of zeroes on image files) of each on an [`Engine`] and
//! completes each chain when its I/O finishes (used-ring entries may go out of order, which
//! split rings allow). Everything else (INQUIRY, MODE SENSE, multi-range UNMAP …) still runs
//! synchronously on the queue thread; so do plain writes into the page cache.
//!
//! Engines:
//! - [`uring::UringEngine`] (`--aio=io-uring`, default): one io_uring per request queue, made at
//!   worker start-up before the seccomp filters and kept across connections, the LUN files
//!   registered as fixed files, the ring restricted (`IORING_REGISTER_RESTRICTIONS`) to the
//!   opcodes we submit, on fixed files only, `readv`/`writev` straight from/to guest memory, batched completion and
//!   submission as commands are parsed (`--submit-batch`). The guest's kick eventfd is polled
//!   through the ring too (multishot, edge-triggered), so a thread waiting for completions also
//!   wakes for new requests.
//! - [`threads::ThreadEngine`] (`--aio=threads`, or when io_uring is unavailable): a pool of
//!   threads running `preadv2`/`pwritev2`/`fdatasync`, completions handed back through an eventfd.
//! - [`inline::InlineEngine`] (`--aio=sync`): takes nothing; every command runs to completion on
//!   the queue thread, through the same queue loop.
//!
//! Syscalls: io-uring needs `io_uring_setup` and `mmap` of the rings at start-up (before any
//! filter exists), then `io_uring_enter` and `io_uring_register` (kick slot updates, guest
//! memory with `--register-buffers`); threads needs `preadv2`/`pwritev2`/`fdatasync`, `futex`, `eventfd2`
//! reads/writes and `poll`/`ppoll`.

pub mod inline;
pub mod threads;
pub mod uring;

use std::{io, os::fd::RawFd};

use crate::block::IoKind;
pub use crate::config::{AioMode, IoConfig};

/// One operation for an engine. `iov`/`iovcnt` point at iovecs that stay valid (and whose
/// buffers stay mapped) until the operation's completion has been reaped.
#[derive(Debug, Clone, Copy)]
pub struct Op {
    pub kind: IoKind,
    pub fd: RawFd,
    /// The slot among registered (fixed) files that holds `fd`'s file, if the file was
    /// registered (LUN files at start-up; a LUN added at runtime has none).
    pub fixed: Option<u32>,
    pub iov: *const libc::iovec,
    pub iovcnt: usize,
    pub offset: u64,
    pub user_data: u64,
}

// SAFETY: an `Op` is plain data; the memory its pointer refers to is kept valid by the queue
// worker until the op's completion is reaped, whichever thread runs it meanwhile.
unsafe impl Send for Op {}

/// What every engine offers a queue worker.
pub trait Engine: Send {
    /// Whether this engine runs I/O on `fd` (registered as fixed file `fixed`, if it was) at
    /// all (io_uring only registered, fixed files); when not, the request runs synchronously.
    fn accepts(&self, _fd: RawFd, _fixed: Option<u32>) -> bool {
        true
    }
    /// Queues `op`; `false` when the engine's submission queue is full (call
    /// [`Engine::submit`] and retry).
    fn push(&mut self, op: &Op) -> bool;
    /// Hands every queued operation to the kernel (or the pool).
    fn submit(&mut self) -> io::Result<()>;
    /// Appends finished operations as `(user_data, bytes or -errno)`.
    fn reap(&mut self, out: &mut Vec<(u64, i32)>);
    /// Sleeps until an operation finishes or `kick_fd` becomes readable; returns whether the
    /// kick is readable.
    ///
    /// The kick is never consumed here: the vring event loop reads it after `epoll_wait` reported
    /// it, possibly in the same batch as an event whose handling brought us here, and a kick
    /// consumed behind its back makes that read fail (EAGAIN) or block, which kills or hangs the
    /// queue thread.
    fn wait(&mut self, kick_fd: Option<RawFd>) -> io::Result<bool>;
    /// Whether completions are ready, without a syscall where possible (busy polling).
    fn ready(&mut self) -> bool;
    /// Registers guest memory (host address, length per region) for I/O without per-request
    /// page pinning, replacing what was registered before; returns the bytes registered.
    /// Engines without the notion refuse (the default).
    fn register_memory(&mut self, _regions: &[(*mut u8, usize)]) -> io::Result<usize> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Stops watching the kick fd given to [`Engine::wait`]: the front-end is about to replace
    /// it (GET_VRING_BASE comes first), and the new eventfd may get the same fd number. Called
    /// from the vhost-user thread (under the queue's lock), so it must not enter the kernel.
    fn forget_kick(&mut self) {}
    /// Forgets kicks seen so far: the caller has just taken every request the guest had
    /// published and re-checks the ring after this, so a wait need not wake for those kicks
    /// again (at QD1 that wake-up was an extra `io_uring_enter` per I/O).
    fn forget_seen_kicks(&mut self) {}
    /// Whether [`Engine::wait`] reports each kick once (edge-triggered) rather than for as long
    /// as the kick is readable; only then can a queue keep watching it after it fired.
    fn kick_edges(&self) -> bool {
        false
    }
    /// Lets go of registered (fixed) file `slot`: its LUN was removed. Engines that register
    /// no files have nothing to do (the default).
    fn release_fixed_file(&mut self, _slot: u32) -> io::Result<()> {
        Ok(())
    }
    fn name(&self) -> &'static str;
    /// An fd that polls readable when completions are ready (bounded waits at teardown);
    /// `None` for an engine that never has anything in flight.
    fn completion_fd(&self) -> Option<RawFd> {
        None
    }
    /// The io_uring engine back, for the next connection (rings are only made at start-up).
    fn into_ring(self: Box<Self>) -> Option<uring::UringEngine> {
        None
    }
}

/// `fallocate` mode of [`IoKind::Deallocate`]: a hole reads back zero and keeps the size.
pub const DEALLOCATE_MODE: libc::c_int = crate::block::file::PUNCH_HOLE;

/// Reads an eventfd if it is readable, without ever blocking.
pub(crate) fn drain_eventfd(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    if unsafe { libc::poll(&mut pfd, 1, 0) } <= 0 {
        return false;
    }
    let mut v = 0u64;
    // SAFETY: reads 8 bytes into `v`, which is 8 bytes long.
    unsafe { libc::read(fd, (&mut v as *mut u64).cast(), 8) };
    true
}
