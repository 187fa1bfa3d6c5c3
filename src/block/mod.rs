//! Logical-unit storage backends.
//!
//! A backend is the byte store behind one LUN: a raw image file or a block device today, an iSCSI
//! target ([`iscsi`], a passthrough LUN rather than a byte store). It is opened by the parent process and handed to the worker as an open file, so
//! nothing here ever takes a path. The SCSI emulation in [`crate::scsi`] talks only to this trait.

pub mod copy;
pub mod engine;
pub mod file;
pub mod iscsi;
pub mod null;
pub mod sg;

use std::{io, os::fd::RawFd};

pub use sg::{SgList, SgPrefix};

pub use file::FileBackend;
pub use null::NullBackend;

/// Which backend operation a planned I/O asks for (`crate::scsi::IoPlan`, an engine's `Op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    Read,
    /// `fua`: the data must be durable when the write completes (`RWF_DSYNC`).
    Write {
        fua: bool,
    },
    /// `fdatasync` of the whole backend.
    Flush,
    /// `bytes` from the plan's offset must read back zero, deallocated where the file system
    /// can (UNMAP, WRITE SAME of zeroes with discard on): `fallocate(PUNCH_HOLE | KEEP_SIZE)`
    /// on an image file, `ZERO_RANGE` where holes cannot be punched. Only planned for backends
    /// whose [`crate::block::BlockBackend::async_fd`] accepts it (image files).
    Deallocate {
        bytes: u64,
    },
}

/// The untorn-write unit of a file or device (`statx(STATX_WRITE_ATOMIC)`): a write of a
/// power-of-two length between `min` and `max` bytes, at an offset that is a multiple of its
/// length, is not torn by a crash when issued with `RWF_ATOMIC`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtomicUnit {
    pub min: u32,
    pub max: u32,
}

impl AtomicUnit {
    /// Whether a write of `len` bytes at `offset` can be one untorn write.
    pub fn fits(&self, offset: u64, len: u64) -> bool {
        len.is_power_of_two()
            && len >= u64::from(self.min)
            && len <= u64::from(self.max)
            && offset % len == 0
    }
}

/// An I/O error that struck after the first `done` bytes of a transfer had succeeded, carried
/// inside an [`io::Error`] (same kind) so that the SCSI layer can name the first failing block
/// (sense INFORMATION) while everything else sees an ordinary error. Build it with
/// [`partial_failure`], read it with [`failure_details`].
#[derive(Debug, thiserror::Error)]
#[error("{cause} after {done} bytes")]
pub struct PartialTransfer {
    pub done: u64,
    #[source]
    pub cause: io::Error,
}

/// `cause`, marked as striking after `done` bytes had been transferred (unchanged for 0).
pub fn partial_failure(done: u64, cause: io::Error) -> io::Error {
    if done == 0 {
        return cause;
    }
    io::Error::new(cause.kind(), PartialTransfer { done, cause })
}

/// The bytes transferred before `e` struck (0 when it struck at once) and its errno.
pub fn failure_details(e: &io::Error) -> (u64, Option<i32>) {
    match e
        .get_ref()
        .and_then(|r| r.downcast_ref::<PartialTransfer>())
    {
        Some(p) => (p.done, p.cause.raw_os_error()),
        None => (0, e.raw_os_error()),
    }
}

/// The storage behind one LUN. All offsets and lengths are in bytes; callers (the SCSI layer)
/// have already checked them against [`BlockBackend::size`].
pub trait BlockBackend: Send + Sync {
    /// Current size in bytes.
    fn size(&self) -> u64;

    /// Reads the size of the storage again (it was grown or shrunk underneath: a runtime
    /// resize) and returns it; [`BlockBackend::size`] reports it from now on. The default: the
    /// size cannot change.
    fn refresh_size(&self) -> io::Result<u64> {
        Ok(self.size())
    }

    /// Fills every byte of `bufs` from `offset`. A read past the end is an error
    /// (`UnexpectedEof`), never a short success; an error after part of the transfer says how
    /// much succeeded ([`partial_failure`]), as for writes.
    fn read_at(&self, bufs: &SgList<'_>, offset: u64) -> io::Result<()>;

    /// Writes every byte of `bufs` at `offset`. With `fua` the data is on stable storage when
    /// this returns.
    fn write_at(&self, bufs: &SgList<'_>, offset: u64, fua: bool) -> io::Result<()>;

    /// Makes every completed write durable (SYNCHRONIZE CACHE).
    fn flush(&self) -> io::Result<()>;

    /// Deallocates `[offset, offset + len)`; later reads of it return zeroes.
    fn discard(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Writes zeroes over `[offset, offset + len)`, deallocating where the backend can.
    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()>;

    /// Whether [`BlockBackend::discard`] can work at all (holes on this file system, BLKDISCARD
    /// on this device).
    fn can_discard(&self) -> bool;

    /// For asynchronous engines: the file on which `readv`/`writev` of exactly `bufs` at
    /// `offset` (or `fdatasync`, for an empty `bufs`) does what [`BlockBackend::read_at`],
    /// [`BlockBackend::write_at`] and [`BlockBackend::flush`] do for an I/O of `kind`. `None`
    /// (the default): the synchronous methods serve this request, because only they can or
    /// because they are faster.
    fn async_fd(&self, _kind: IoKind, _bufs: &SgList<'_>, _offset: u64) -> Option<RawFd> {
        None
    }

    /// The file an engine may register up front (io_uring fixed files), if any.
    fn raw_fd(&self) -> Option<RawFd> {
        None
    }

    /// Whether io_uring reports this file's partial failures honestly, so that its I/O may go
    /// to the io_uring engine (false: the synchronous methods serve it).
    fn uring_safe(&self) -> bool {
        true
    }

    /// Whether a discarded range is guaranteed to read back as zeroes (SCSI LBPRZ). True for
    /// holes in image files; BLKDISCARD on a block device promises nothing.
    fn discard_zeroes(&self) -> bool;

    /// Provisioning status of the bytes from `offset` (GET LBA STATUS): whether they are mapped
    /// (hold data) or deallocated (a hole), and how many bytes from `offset` (at most `len`,
    /// at least 1) share that status. The default: everything is mapped.
    fn lba_status(&self, _offset: u64, len: u64) -> io::Result<(bool, u64)> {
        Ok((true, len))
    }

    /// The file [`copy::copy_range`] may hand to `copy_file_range(2)` (a regular file), if
    /// any; otherwise a copy to or from this backend goes through its read and write methods.
    fn copy_fd(&self) -> Option<RawFd> {
        None
    }

    /// The untorn writes the host guarantees for this backend (`RWF_ATOMIC`), if any.
    fn atomic_write_unit(&self) -> Option<AtomicUnit> {
        None
    }

    /// Writes `bufs` at `offset` as one untorn write: after a crash the range holds either
    /// all old or all new data. Only for a range that [`AtomicUnit::fits`] the backend's unit;
    /// `Unsupported` where the backend has none.
    fn write_untorn(&self, _bufs: &SgList<'_>, _offset: u64, _fua: bool) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }

    /// Bytes of host storage the backend occupies (allocated blocks of an image file), if it
    /// can tell (LOG SENSE, logical block provisioning page).
    fn allocated_bytes(&self) -> Option<u64> {
        None
    }
}
