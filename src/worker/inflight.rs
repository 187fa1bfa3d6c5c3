//! The vhost-user inflight region (`INFLIGHT_SHMFD`): the memfd this worker hands out with
//! `GET_INFLIGHT_FD`, and the checked mapping of the region a front-end hands back with
//! `SET_INFLIGHT_FD` (after a worker restart: one the previous worker made). The per-queue
//! layout and its use are `virtio::inflight`.
//!
//! The memfd is made once, at start-up, before the seccomp filters (no worker role may create
//! files; like the io_uring rings): sized for every queue at the largest queue size, sealed
//! against growing and shrinking (so that a mapping of it can never SIGBUS), and zeroed at each
//! `GET_INFLIGHT_FD` (QEMU asks again after every device reset). A front-end keeps it across
//! reconnections and sends it back, which is how a restarted worker finds what its predecessor
//! left in flight: the region outlives the worker because the front-end holds it.
//!
//! What comes back with `SET_INFLIGHT_FD` is the front-end's word: it is mapped only when the
//! queue count and size are within the device's, the size covers them, the file is a regular
//! file (a memfd) sealed against shrinking and long enough for the mapping, and the offset is
//! page-aligned. Its contents are checked where they are read (`virtio::inflight`).

use std::{fs::File, io, num::NonZeroUsize, os::fd::AsFd, ptr::NonNull, sync::Arc};

use nix::{
    errno::Errno,
    fcntl::{fcntl, FcntlArg, SealFlag},
    sys::{
        memfd::{memfd_create, MFdFlags},
        mman::{mmap, munmap, MapFlags, ProtFlags},
        stat::{fstat, SFlag},
    },
    unistd::ftruncate,
};
use vhost::vhost_user::message::VhostUserInflight;

use crate::virtio::inflight::{queue_region_size, region_size, InflightQueue};

/// Why an inflight request is refused (the connection then ends).
#[derive(Debug, thiserror::Error)]
pub enum InflightError {
    #[error("{num_queues} queues of {queue_size} descriptors: the device has {max_queues} of at most {max_queue_size}")]
    Shape {
        num_queues: u16,
        queue_size: u16,
        max_queues: u16,
        max_queue_size: u16,
    },
    #[error("region of {got} bytes, {need} needed")]
    TooSmall { got: u64, need: u64 },
    #[error("region offset {0:#x} is not page-aligned")]
    Offset(u64),
    #[error("cannot inspect the region's file: {0}")]
    Stat(Errno),
    #[error("the region's file is not a regular file (a memfd)")]
    NotAFile,
    #[error("the region ({offset:#x}+{len}) lies past the end of its file ({size} bytes)")]
    PastEof { offset: u64, len: u64, size: u64 },
    #[error("the region's file is not sealed against shrinking (F_SEAL_SHRINK)")]
    NotSealed,
    #[error("cannot map the region: {0}")]
    Map(Errno),
    #[error("cannot duplicate the inflight memfd: {0}")]
    Dup(io::Error),
}

impl From<InflightError> for io::Error {
    fn from(e: InflightError) -> Self {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}

/// The device's queue count and largest queue size: what any region must fit.
#[derive(Clone, Copy, Debug)]
pub struct QueueShape {
    pub num_queues: u16,
    pub max_queue_size: u16,
}

impl QueueShape {
    fn check(&self, req: &VhostUserInflight) -> Result<u64, InflightError> {
        if req.num_queues == 0
            || req.num_queues > self.num_queues
            || req.queue_size == 0
            || req.queue_size > self.max_queue_size
        {
            return Err(InflightError::Shape {
                num_queues: req.num_queues,
                queue_size: req.queue_size,
                max_queues: self.num_queues,
                max_queue_size: self.max_queue_size,
            });
        }
        Ok(region_size(req.num_queues, req.queue_size))
    }
}

/// The memfd handed out with `GET_INFLIGHT_FD` (made at start-up).
pub struct InflightMemfd {
    file: File,
    shape: QueueShape,
}

impl InflightMemfd {
    /// Creates the memfd for `shape` (call before the seccomp filters).
    pub fn create(shape: QueueShape) -> io::Result<Self> {
        let fd = memfd_create(
            c"vus-inflight",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        let len = region_size(shape.num_queues, shape.max_queue_size);
        ftruncate(&fd, len as libc::off_t)?;
        fcntl(
            &fd,
            FcntlArg::F_ADD_SEALS(
                SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW | SealFlag::F_SEAL_SEAL,
            ),
        )?;
        Ok(Self {
            file: File::from(fd),
            shape,
        })
    }

    /// Answers `GET_INFLIGHT_FD`: a zeroed region (version 0: nothing in flight) for the queues
    /// asked for, and a descriptor of the memfd.
    pub fn get(&self, req: &VhostUserInflight) -> Result<(VhostUserInflight, File), InflightError> {
        let need = self.shape.check(req)?;
        let reply = VhostUserInflight::new(need, 0, req.num_queues, req.queue_size);
        // The front-end may still map it from an earlier start (it asks again after a reset):
        // zero it through a mapping of our own rather than with a new file.
        let region = InflightRegion::map(&reply, &self.file, self.shape)?;
        // SAFETY: the mapping is `region.len` writable bytes, alive until `region` drops.
        unsafe { std::ptr::write_bytes(region.ptr.as_ptr(), 0, region.len) };
        drop(region);
        let file = self.file.try_clone().map_err(InflightError::Dup)?;
        Ok((reply, file))
    }

    pub fn shape(&self) -> QueueShape {
        self.shape
    }
}

/// A checked, mapped inflight region (unmapped on drop; the backend keeps replaced ones until
/// no queue uses them, so that happens on the protocol or main thread).
pub struct InflightRegion {
    ptr: NonNull<u8>,
    len: usize,
    num_queues: u16,
    queue_size: u16,
}

// SAFETY: the mapping is plain shared memory; every access goes through `InflightQueue`'s
// volatile accessors, one queue's part per thread.
unsafe impl Send for InflightRegion {}
// SAFETY: see above.
unsafe impl Sync for InflightRegion {}

impl InflightRegion {
    /// Checks `req` and `file` (see the module documentation) and maps the region.
    pub fn map(
        req: &VhostUserInflight,
        file: &File,
        shape: QueueShape,
    ) -> Result<Self, InflightError> {
        let need = shape.check(req)?;
        if req.mmap_size < need {
            return Err(InflightError::TooSmall {
                got: req.mmap_size,
                need,
            });
        }
        let page = 4096u64;
        if req.mmap_offset % page != 0 {
            return Err(InflightError::Offset(req.mmap_offset));
        }
        let st = fstat(file.as_fd()).map_err(InflightError::Stat)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
            return Err(InflightError::NotAFile);
        }
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if req
            .mmap_offset
            .checked_add(need)
            .map_or(true, |end| end > size)
        {
            return Err(InflightError::PastEof {
                offset: req.mmap_offset,
                len: need,
                size,
            });
        }
        let seals = fcntl(file, FcntlArg::F_GET_SEALS).map_err(|_| InflightError::NotSealed)?;
        if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
            return Err(InflightError::NotSealed);
        }
        let len = usize::try_from(need).map_err(|_| InflightError::TooSmall { got: 0, need })?;
        let nz = NonZeroUsize::new(len).ok_or(InflightError::TooSmall { got: 0, need })?;
        // SAFETY: a fresh shared mapping chosen by the kernel (no address given), of a file
        // checked above to cover it and sealed against shrinking: every byte stays backed.
        let ptr = unsafe {
            mmap(
                None,
                nz,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                file,
                req.mmap_offset as libc::off_t,
            )
        }
        .map_err(InflightError::Map)?;
        Ok(Self {
            ptr: ptr.cast(),
            len,
            num_queues: req.num_queues,
            queue_size: req.queue_size,
        })
    }

    /// Vhost queue `index`'s part of the region (None past the queues it covers).
    pub fn queue(self: &Arc<Self>, index: usize) -> Option<InflightQueue> {
        if index >= usize::from(self.num_queues) {
            return None;
        }
        let part = queue_region_size(self.queue_size) as usize;
        // SAFETY: index < num_queues, and the mapping is num_queues parts long (checked in
        // `map`): the part is inside it. Parts are multiples of 64 bytes from a page-aligned
        // start. Each queue's part is handed to one queue worker at a time (the backend hands
        // out one per queue per SET_INFLIGHT_FD).
        let base = unsafe { self.ptr.as_ptr().add(index * part) };
        let keep: Arc<dyn Send + Sync> = self.clone();
        // SAFETY: see above; `keep` keeps the mapping alive.
        Some(unsafe { InflightQueue::new(base, self.queue_size, keep) })
    }
}

impl Drop for InflightRegion {
    fn drop(&mut self) {
        // SAFETY: our own mapping of `len` bytes; no InflightQueue refers to it any more (each
        // holds a reference to `self`).
        if let Err(e) = unsafe { munmap(self.ptr.cast(), self.len) } {
            log::warn!("cannot unmap the inflight region: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::{FromRawFd, OwnedFd};

    use super::*;

    const SHAPE: QueueShape = QueueShape {
        num_queues: 4,
        max_queue_size: 128,
    };

    fn raw_memfd(len: u64, seals: SealFlag) -> File {
        // SAFETY: a NUL-terminated name; the result is checked.
        let fd = unsafe {
            libc::memfd_create(c"t".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        assert!(fd >= 0);
        // SAFETY: a fresh fd nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        ftruncate(&fd, len as libc::off_t).unwrap();
        if !seals.is_empty() {
            fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).unwrap();
        }
        File::from(fd)
    }

    #[test]
    fn get_returns_a_zeroed_sealed_region_that_set_accepts() {
        let m = InflightMemfd::create(SHAPE).unwrap();
        let req = VhostUserInflight::new(0, 0, 4, 128);
        let (reply, file) = m.get(&req).unwrap();
        assert_eq!(reply.mmap_size, 4 * 2112);
        assert_eq!((reply.num_queues, reply.queue_size), (4, 128));
        let region = Arc::new(InflightRegion::map(&reply, &file, SHAPE).unwrap());
        let mut q = region.queue(3).unwrap();
        assert!(region.queue(4).is_none());
        assert!(!q.start(0).resumed);
        q.popped(9);
        drop(q);
        // A second GET (after a device reset) zeroes what was there.
        m.get(&req).unwrap();
        let mut q = region.queue(3).unwrap();
        assert!(!q.start(0).resumed);
        // Our memfd cannot be shrunk by whoever holds it.
        assert!(ftruncate(file.as_fd(), 0).is_err());
    }

    #[test]
    fn hostile_set_requests_are_refused() {
        let good = raw_memfd(4 * 2112, SealFlag::F_SEAL_SHRINK | SealFlag::F_SEAL_GROW);
        let ok = VhostUserInflight::new(4 * 2112, 0, 4, 128);
        assert!(InflightRegion::map(&ok, &good, SHAPE).is_ok());
        let cases = [
            // More queues, bigger queues, zero queues than the device has.
            (VhostUserInflight::new(5 * 2112, 0, 5, 128), "Shape"),
            (VhostUserInflight::new(u64::MAX, 0, 4, 256), "Shape"),
            (VhostUserInflight::new(4 * 2112, 0, 0, 128), "Shape"),
            (VhostUserInflight::new(4 * 2112, 0, 4, 0), "Shape"),
            // A size that does not cover the queues.
            (VhostUserInflight::new(4 * 2112 - 1, 0, 4, 128), "TooSmall"),
            // Offsets: unaligned, past the end, overflowing.
            (VhostUserInflight::new(4 * 2112, 100, 4, 128), "Offset"),
            (VhostUserInflight::new(4 * 2112, 4096, 4, 128), "PastEof"),
            (
                VhostUserInflight::new(4 * 2112, u64::MAX - 4095, 4, 128),
                "PastEof",
            ),
        ];
        for (req, want) in cases {
            let err = InflightRegion::map(&req, &good, SHAPE).err().unwrap();
            assert!(format!("{err:?}").starts_with(want), "{want}: {err:?}");
        }
        // Unsealed, or shorter than it claims.
        let unsealed = raw_memfd(4 * 2112, SealFlag::empty());
        assert!(matches!(
            InflightRegion::map(&ok, &unsealed, SHAPE),
            Err(InflightError::NotSealed)
        ));
        let short = raw_memfd(4096, SealFlag::F_SEAL_SHRINK);
        assert!(matches!(
            InflightRegion::map(&ok, &short, SHAPE),
            Err(InflightError::PastEof { .. })
        ));
        // Not a file at all.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let sock = File::from(OwnedFd::from(a));
        assert!(matches!(
            InflightRegion::map(&ok, &sock, SHAPE),
            Err(InflightError::NotAFile)
        ));
    }
}
