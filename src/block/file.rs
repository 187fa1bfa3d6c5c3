//! [`BlockBackend`] over an already-open regular file (raw image) or block device.
//!
//! Data moves with `preadv`/`pwritev2` straight between the file and guest memory. When the file
//! was opened with `O_DIRECT` (`cache=none`) and a request's buffers are not aligned the way
//! direct I/O needs, that one request goes through an aligned bounce buffer instead of failing.

use std::{
    alloc::{self, Layout},
    fs::File,
    io,
    os::{
        fd::{AsRawFd, RawFd},
        unix::fs::FileTypeExt,
    },
    sync::atomic::{AtomicU64, Ordering},
};

use nix::{
    sys::statfs,
    unistd::{self, Whence},
};

use super::{
    sg::{SgList, SG_INLINE},
    AtomicUnit, BlockBackend, IoKind,
};

/// `_IO(0x12, 119)`: discard a byte range of a block device.
const BLKDISCARD: libc::c_ulong = 0x1277;
/// `_IO(0x12, 127)`: write zeroes over a byte range of a block device.
const BLKZEROOUT: libc::c_ulong = 0x127f;
/// `_IOR(0x12, 114, u64)`: size of a block device in bytes.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;

/// `statfs` magic of FUSE file systems (linux/magic.h).
const FUSE_SUPER_MAGIC: statfs::FsType = statfs::FsType(0x6573_5546);

/// Alignment that satisfies `O_DIRECT` on every device and file system we serve.
const DIRECT_IO_ALIGN: usize = 4096;

/// Iovecs per `preadv`/`pwritev2` call (the kernel's `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    RegularFile,
    BlockDevice,
}

/// A raw image or block device opened by the parent.
#[derive(Debug)]
pub struct FileBackend {
    file: File,
    kind: Kind,
    direct: bool,
    /// Size in bytes: read at opening, again on [`BlockBackend::refresh_size`] (runtime
    /// resize).
    size: AtomicU64,
    /// The file lives on a FUSE file system (see [`BlockBackend::uring_safe`]).
    fuse: bool,
    /// Untorn writes the kernel offers for this file (direct I/O only).
    atomic: Option<AtomicUnit>,
}

impl FileBackend {
    /// Wraps an open file. `direct` says whether it was opened with `O_DIRECT`.
    pub fn new(file: File, direct: bool) -> io::Result<Self> {
        let meta = file.metadata()?;
        let kind = if meta.file_type().is_block_device() {
            Kind::BlockDevice
        } else if meta.file_type().is_file() {
            Kind::RegularFile
        } else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file or block device",
            ));
        };
        let size = current_size(&file, kind)?;
        let fuse = on_fuse(&file)?;
        // RWF_ATOMIC needs direct I/O (Linux 6.11+: ext4, XFS, block devices that report a
        // unit); buffered untorn writes are not offered.
        let atomic = if direct { atomic_unit(&file) } else { None };
        Ok(Self {
            file,
            kind,
            direct,
            size: AtomicU64::new(size),
            fuse,
            atomic,
        })
    }

    /// Whether the file lives on a FUSE file system.
    pub fn on_fuse(&self) -> bool {
        self.fuse
    }

    fn needs_bounce(&self, bufs: &SgList<'_>, offset: u64) -> bool {
        self.direct
            && (offset % DIRECT_IO_ALIGN as u64 != 0
                || bufs.segments().iter().any(|s| {
                    (s.ptr_guard().as_ptr() as usize) % DIRECT_IO_ALIGN != 0
                        || s.len() % DIRECT_IO_ALIGN != 0
                }))
    }

    /// Runs `op` over the whole list, resuming after short transfers.
    fn transfer(
        &self,
        bufs: &SgList<'_>,
        mut offset: u64,
        mut op: impl FnMut(&[libc::iovec], u64) -> io::Result<usize>,
    ) -> io::Result<()> {
        let to_iovec = |s: &vm_memory::VolatileSlice<'_>| libc::iovec {
            iov_base: s.ptr_guard_mut().as_ptr().cast(),
            iov_len: s.len(),
        };
        // Lists that fit the scatter-gather list's inline segments stay on the stack: page-cache
        // writes run here on the queue thread for every request (see `async_fd`).
        let segments = bufs.segments();
        let mut inline = [libc::iovec {
            iov_base: std::ptr::null_mut(),
            iov_len: 0,
        }; SG_INLINE];
        let mut spilled: Vec<libc::iovec>;
        let iovecs: &mut [libc::iovec] = if segments.len() <= SG_INLINE {
            for (v, s) in inline.iter_mut().zip(segments) {
                *v = to_iovec(s);
            }
            &mut inline[..segments.len()]
        } else {
            spilled = segments.iter().map(to_iovec).collect();
            &mut spilled
        };
        let start = offset;
        let mut first = 0;
        while first < iovecs.len() {
            let end = iovecs.len().min(first + MAX_IOVECS);
            let done = match op(&iovecs[first..end], offset) {
                Ok(0) => {
                    let eof = io::ErrorKind::UnexpectedEof.into();
                    return Err(super::partial_failure(offset - start, eof));
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(super::partial_failure(offset - start, e)),
            };
            offset += done as u64;
            let mut left = done;
            while left > 0 {
                let iov = &mut iovecs[first];
                if left >= iov.iov_len {
                    left -= iov.iov_len;
                    first += 1;
                } else {
                    // SAFETY: `left < iov_len`, so the advanced pointer stays inside the segment.
                    iov.iov_base = unsafe { iov.iov_base.cast::<u8>().add(left) }.cast();
                    iov.iov_len -= left;
                    left = 0;
                }
            }
        }
        Ok(())
    }

    fn preadv(&self, iov: &[libc::iovec], offset: u64) -> io::Result<usize> {
        // SAFETY: every iovec points into a live `VolatileSlice` (guest or test memory) of at
        // least `iov_len` writable bytes, borrowed for the duration of this call.
        let ret = unsafe {
            libc::preadv(
                self.file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }

    fn pwritev(&self, iov: &[libc::iovec], offset: u64, fua: bool) -> io::Result<usize> {
        let flags = if fua { libc::RWF_DSYNC } else { 0 };
        // SAFETY: every iovec points into a live `VolatileSlice` of at least `iov_len` readable
        // bytes, borrowed for the duration of this call.
        let ret = unsafe {
            libc::pwritev2(
                self.file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                offset as libc::off_t,
                flags,
            )
        };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(ret as usize)
        }
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        fallocate(self.file.as_raw_fd(), mode, offset, len)
    }

    fn block_ioctl(&self, request: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range: [u64; 2] = [offset, len];
        // SAFETY: BLKDISCARD/BLKZEROOUT read a `[u64; 2]` through the pointer, which points to
        // `range`.
        let ret = unsafe { libc::ioctl(self.file.as_raw_fd(), request, range.as_ptr()) };
        if ret < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }
}

/// The size of `file` now: `fstat` for an image, BLKGETSIZE64 for a block device.
fn current_size(file: &File, kind: Kind) -> io::Result<u64> {
    match kind {
        Kind::RegularFile => Ok(file.metadata()?.len()),
        Kind::BlockDevice => {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to `size`.
            let ret = unsafe { libc::ioctl(file.as_raw_fd(), BLKGETSIZE64, &mut size) };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(size)
        }
    }
}

/// A heap buffer aligned for direct I/O, used when guest buffers are not.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> io::Result<Self> {
        let layout = Layout::from_size_align(
            len.max(1).next_multiple_of(DIRECT_IO_ALIGN),
            DIRECT_IO_ALIGN,
        )
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            return Err(io::ErrorKind::OutOfMemory.into());
        }
        Ok(Self { ptr, layout })
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is a live allocation of `layout.size()` bytes owned by `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` was allocated with exactly this layout and is freed once.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// The untorn-write unit `statx(STATX_WRITE_ATOMIC)` reports for `file`, if it reports one.
fn atomic_unit(file: &File) -> Option<AtomicUnit> {
    // SAFETY: an all-zero `statx` is a valid value of this plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: the empty path with AT_EMPTY_PATH names `file` itself; statx writes one struct
    // through the pointer, which points to `st`.
    let ret = unsafe {
        libc::statx(
            file.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_WRITE_ATOMIC,
            &mut st,
        )
    };
    let supported = ret == 0
        && st.stx_mask & libc::STATX_WRITE_ATOMIC != 0
        && st.stx_attributes & libc::STATX_ATTR_WRITE_ATOMIC as u64 != 0;
    let (min, max) = (st.stx_atomic_write_unit_min, st.stx_atomic_write_unit_max);
    (supported && min.is_power_of_two() && max.is_power_of_two() && max >= min)
        .then_some(AtomicUnit { min, max })
}

/// Whether `file` is on a FUSE file system (`fstatfs`).
fn on_fuse(file: &File) -> io::Result<bool> {
    Ok(statfs::fstatfs(file)?.filesystem_type() == FUSE_SUPER_MAGIC)
}

impl BlockBackend for FileBackend {
    fn size(&self) -> u64 {
        self.size.load(Ordering::Relaxed)
    }

    fn refresh_size(&self) -> io::Result<u64> {
        let size = current_size(&self.file, self.kind)?;
        self.size.store(size, Ordering::Relaxed);
        Ok(size)
    }

    fn read_at(&self, bufs: &SgList<'_>, offset: u64) -> io::Result<()> {
        if !self.needs_bounce(bufs, offset) {
            return self.transfer(bufs, offset, |iov, off| self.preadv(iov, off));
        }
        // Direct I/O wants aligned offsets too: read the covering aligned range.
        let start = offset - offset % DIRECT_IO_ALIGN as u64;
        let head = (offset - start) as usize;
        let mut bounce = AlignedBuf::new(head + bufs.len())?;
        let slice = bounce.as_mut_slice();
        let mut sg = SgList::new();
        sg.push(vm_memory::VolatileSlice::from(&mut slice[..]));
        self.transfer(&sg, start, |iov, off| self.preadv(iov, off))
            .or_else(|e| {
                // The aligned range may run past the end of the file; what we need may not.
                if e.kind() == io::ErrorKind::UnexpectedEof
                    && offset + bufs.len() as u64 <= self.size()
                {
                    Ok(())
                } else {
                    Err(e)
                }
            })?;
        drop(sg);
        bufs.copy_from(&bounce.as_mut_slice()[head..head + bufs.len()]);
        Ok(())
    }

    fn write_at(&self, bufs: &SgList<'_>, offset: u64, fua: bool) -> io::Result<()> {
        if !self.needs_bounce(bufs, offset) {
            return self.transfer(bufs, offset, |iov, off| self.pwritev(iov, off, fua));
        }
        if offset % DIRECT_IO_ALIGN as u64 != 0 || bufs.len() % DIRECT_IO_ALIGN != 0 {
            // Unaligned range under O_DIRECT (512-byte LUN on direct I/O): read-modify-write
            // would race with other writers, so fail loudly instead.
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "unaligned write range on a cache=none LUN",
            ));
        }
        let mut bounce = AlignedBuf::new(bufs.len())?;
        let slice = bounce.as_mut_slice();
        bufs.copy_to(&mut slice[..bufs.len()]);
        let mut sg = SgList::new();
        sg.push(vm_memory::VolatileSlice::from(&mut slice[..bufs.len()]));
        self.transfer(&sg, offset, |iov, off| self.pwritev(iov, off, fua))
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.kind {
            // A file system that cannot punch holes (some FUSE file systems, vfat) still has to
            // read the range back as zeroes (we report LBPRZ): zeroed instead.
            Kind::RegularFile => {
                self.fallocate(PUNCH_HOLE, offset, len)
                    .or_else(|e| match unsupported(&e) {
                        true => zero_range(self.file.as_raw_fd(), offset, len),
                        false => Err(e),
                    })
            }
            Kind::BlockDevice => self.block_ioctl(BLKDISCARD, offset, len),
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        match self.kind {
            // A punched hole reads back as zeroes and frees the space.
            Kind::RegularFile => self
                .fallocate(PUNCH_HOLE, offset, len)
                .or_else(|_| zero_range(self.file.as_raw_fd(), offset, len)),
            Kind::BlockDevice => self.block_ioctl(BLKZEROOUT, offset, len),
        }
    }

    fn can_discard(&self) -> bool {
        true
    }

    fn async_fd(&self, kind: IoKind, bufs: &SgList<'_>, offset: u64) -> Option<RawFd> {
        if let IoKind::Deallocate { .. } = kind {
            // Holes are punched with `fallocate`, which an engine can run; a block device
            // needs BLKDISCARD/BLKZEROOUT ioctls, which only the synchronous methods do.
            return (self.kind == Kind::RegularFile).then(|| self.file.as_raw_fd());
        }
        if !self.direct && kind == (IoKind::Write { fua: false }) {
            // A write into the page cache is a memory copy: done inline it takes ~4 µs per
            // 4 KiB here, while io_uring hands buffered writes on file systems without async
            // buffered-write support (ext4) to a kernel worker thread: ~11 µs, and 228k instead
            // of 350k IOPS at QD32 (docs/benchmarks.md). Writes that must reach the disk (FUA,
            // write-through) and reads (which io_uring tries inline first) still go to the
            // engine.
            return None;
        }
        (!self.needs_bounce(bufs, offset)).then(|| self.file.as_raw_fd())
    }

    fn raw_fd(&self) -> Option<RawFd> {
        Some(self.file.as_raw_fd())
    }

    /// Not on FUSE: io_uring READV/WRITEV of a FUSE file opened in direct-I/O mode report a
    /// request whose first part succeeded and whose rest failed (EIO) as complete, with the
    /// buffer's second part read from the wrong offset and the write's second part never
    /// written (kernel 6.18; `preadv`/`pwritev2` report the short count, which we turn into
    /// MEDIUM ERROR). docs/reliability.md has the standalone reproduction.
    fn uring_safe(&self) -> bool {
        !self.fuse
    }

    fn discard_zeroes(&self) -> bool {
        self.kind == Kind::RegularFile
    }

    /// `SEEK_DATA` / `SEEK_HOLE` on image files; block devices report everything mapped.
    fn lba_status(&self, offset: u64, len: u64) -> io::Result<(bool, u64)> {
        if self.kind != Kind::RegularFile || len == 0 {
            return Ok((true, len));
        }
        let end = offset.saturating_add(len);
        let data = match self.seek(offset, Whence::SeekData) {
            Ok(data) => data,
            // No data at or after `offset`: a hole up to the end of the file.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok((false, len)),
            // The file system cannot tell: report mapped, which is always safe.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => return Ok((true, len)),
            Err(e) => return Err(e),
        };
        if data > offset {
            return Ok((false, data.min(end) - offset));
        }
        let hole = match self.seek(offset, Whence::SeekHole) {
            Ok(hole) => hole,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => end,
            Err(e) => return Err(e),
        };
        Ok((true, hole.clamp(offset + 1, end) - offset))
    }

    fn atomic_write_unit(&self) -> Option<AtomicUnit> {
        self.atomic
    }

    /// One `pwritev2(RWF_ATOMIC)` of the whole range from an aligned bounce buffer (direct I/O
    /// alignment, and a single segment whatever the file system's segment limit).
    fn write_untorn(&self, bufs: &SgList<'_>, offset: u64, fua: bool) -> io::Result<()> {
        let len = bufs.len();
        if !self.atomic.is_some_and(|u| u.fits(offset, len as u64)) {
            return Err(io::ErrorKind::Unsupported.into());
        }
        let mut bounce = AlignedBuf::new(len)?;
        let data = &mut bounce.as_mut_slice()[..len];
        bufs.copy_to(data);
        let iov = [libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: len,
        }];
        let flags = libc::RWF_ATOMIC | if fua { libc::RWF_DSYNC } else { 0 };
        // SAFETY: the iovec points into `bounce`, live and `len` bytes long for the call.
        let ret = unsafe {
            libc::pwritev2(
                self.file.as_raw_fd(),
                iov.as_ptr(),
                1,
                offset as libc::off_t,
                flags,
            )
        };
        match ret {
            n if n < 0 => Err(io::Error::last_os_error()),
            n if n as usize == len => Ok(()),
            // An atomic write is never short; if it were, say so rather than retry half.
            _ => Err(io::Error::from(io::ErrorKind::WriteZero)),
        }
    }

    /// Image files only: `copy_file_range(2)` needs regular files on both ends.
    fn copy_fd(&self) -> Option<RawFd> {
        (self.kind == Kind::RegularFile).then(|| self.file.as_raw_fd())
    }

    /// `st_blocks` of an image file (`fstat`); a block device is wholly allocated.
    fn allocated_bytes(&self) -> Option<u64> {
        match self.kind {
            Kind::RegularFile => nix::sys::stat::fstat(&self.file)
                .ok()
                .map(|st| (st.st_blocks as u64).saturating_mul(512)),
            Kind::BlockDevice => Some(self.size()),
        }
    }
}

impl FileBackend {
    /// `lseek(2)` for `SEEK_DATA` / `SEEK_HOLE`; the file position is never used for I/O (every
    /// transfer is positional), so moving it is harmless.
    fn seek(&self, offset: u64, whence: Whence) -> io::Result<u64> {
        Ok(unistd::lseek(&self.file, offset as libc::off_t, whence)? as u64)
    }
}

/// `fallocate` mode that deallocates a range of an image file: a hole reads back zero and
/// the file keeps its size (UNMAP, WRITE SAME of zeroes; also what the I/O engines run).
pub const PUNCH_HOLE: libc::c_int = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

/// Zeroes a range of an image file where holes cannot be punched (also used by the queue
/// worker when an engine's hole punch was refused).
/// Where the file system has no `fallocate` either (FUSE file systems without it), zeroes are
/// written.
pub(crate) fn zero_range(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    let mode = libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE;
    match fallocate(fd, mode, offset, len) {
        Err(e) if unsupported(&e) => write_zero_bytes(fd, offset, len),
        other => other,
    }
}

/// The file system does not implement the `fallocate` mode asked for.
fn unsupported(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

/// Writes zeroes over `[offset, offset + len)` with `pwritev2`, 1 MiB at a time from a buffer
/// aligned for `O_DIRECT`.
fn write_zero_bytes(fd: RawFd, offset: u64, len: u64) -> io::Result<()> {
    const CHUNK: usize = 1 << 20;
    const ALIGN: usize = 4096;
    let buf = vec![0u8; CHUNK.min(len as usize) + ALIGN];
    let skip = buf.as_ptr().align_offset(ALIGN);
    let zeroes = &buf[skip..skip + CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = zeroes.len().min((len - done) as usize);
        let iov = libc::iovec {
            iov_base: zeroes.as_ptr() as *mut libc::c_void,
            iov_len: n,
        };
        let at = (offset + done) as libc::off_t;
        // SAFETY: one iovec over `zeroes`, which outlives the call; the kernel only reads it.
        let ret = unsafe { libc::pwritev2(fd, &iov, 1, at, 0) };
        match ret {
            r if r < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(super::partial_failure(done, e));
                }
            }
            0 => return Err(io::ErrorKind::WriteZero.into()),
            r => done += r as u64,
        }
    }
    Ok(())
}

/// `fallocate(2)` on `fd`.
fn fallocate(fd: RawFd, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall with integer arguments; `fd` is an open LUN file of the caller's.
    let ret = unsafe { libc::fallocate(fd, mode, offset as libc::off_t, len as libc::off_t) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, SeekFrom, Write};

    use vm_memory::VolatileSlice;

    use super::*;

    fn image(len: usize) -> File {
        let mut f = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        f.write_all(&data).unwrap();
        f
    }

    #[test]
    fn read_and_write_span_segments() {
        let f = image(8192);
        let b = FileBackend::new(f.try_clone().unwrap(), false).unwrap();
        assert_eq!(b.size(), 8192);
        let (mut x, mut y) = (vec![0u8; 100], vec![0u8; 412]);
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(x.as_mut_slice()));
        sg.push(VolatileSlice::from(y.as_mut_slice()));
        b.read_at(&sg, 512).unwrap();
        let mut got = vec![0u8; 512];
        assert_eq!(sg.copy_to(&mut got), 512);
        let want: Vec<u8> = (512..1024).map(|i| (i % 251) as u8).collect();
        assert_eq!(got, want);
        sg.copy_from(&[7u8; 512]);
        b.write_at(&sg, 1024, true).unwrap();
        drop(sg);
        let mut back = vec![0u8; 512];
        let mut f2 = f;
        f2.seek(SeekFrom::Start(1024)).unwrap();
        f2.read_exact(&mut back).unwrap();
        assert_eq!(back, vec![7u8; 512]);
    }

    #[test]
    fn page_cache_writes_run_inline_and_the_rest_goes_to_the_engine() {
        let b = FileBackend::new(image(8192), false).unwrap();
        let fd = b.file.as_raw_fd();
        let mut x = vec![0u8; 4096];
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(x.as_mut_slice()));
        assert_eq!(b.async_fd(IoKind::Read, &sg, 0), Some(fd));
        assert_eq!(b.async_fd(IoKind::Write { fua: false }, &sg, 0), None);
        assert_eq!(b.async_fd(IoKind::Write { fua: true }, &sg, 0), Some(fd));
        assert_eq!(b.async_fd(IoKind::Flush, &SgList::new(), 0), Some(fd));
    }

    #[test]
    fn read_past_end_fails() {
        let b = FileBackend::new(image(1024), false).unwrap();
        let mut x = vec![0u8; 512];
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(x.as_mut_slice()));
        let err = b.read_at(&sg, 768).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn discard_reads_back_zero() {
        let b = FileBackend::new(image(65536), false).unwrap();
        b.discard(4096, 8192).unwrap();
        let mut x = vec![1u8; 8192];
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(x.as_mut_slice()));
        b.read_at(&sg, 4096).unwrap();
        drop(sg);
        assert!(x.iter().all(|&v| v == 0));
    }

    #[test]
    fn rejects_other_file_types() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileBackend::new(File::open(dir.path()).unwrap(), false).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }

    /// `statx(STATX_WRITE_ATOMIC)` decides: buffered files never get a unit; a direct-I/O file
    /// on a file system and device with untorn writes does, and `write_untorn` then writes (a
    /// write outside the unit is refused before the kernel sees it).
    #[test]
    fn untorn_writes_only_where_statx_reports_a_unit() {
        use std::os::unix::fs::OpenOptionsExt;
        let buffered = FileBackend::new(image(1 << 20), false).unwrap();
        assert_eq!(buffered.atomic_write_unit(), None);
        let mut data = [0x42u8; 4096];
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(&mut data[..]));
        assert_eq!(
            buffered.write_untorn(&sg, 0, false).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        // VUS_TEST_ATOMIC_DIR: a directory on a file system with untorn writes (XFS 6.16+ with
        // reflink does them in software), for the path the temporary directory cannot reach.
        let dir = match std::env::var_os("VUS_TEST_ATOMIC_DIR") {
            Some(d) => tempfile::tempdir_in(d).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let path = dir.path().join("direct.img");
        File::create(&path).unwrap().set_len(1 << 20).unwrap();
        let Ok(file) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_DIRECT)
            .open(&path)
        else {
            eprintln!("SKIPPED: no O_DIRECT on the temporary directory's file system");
            return;
        };
        let direct = FileBackend::new(file, true).unwrap();
        let Some(unit) = direct.atomic_write_unit() else {
            eprintln!("SKIPPED: the host reports no untorn-write unit for direct I/O here");
            return;
        };
        let len = unit.min.max(4096).min(unit.max) as usize;
        let mut data = vec![0x42u8; len];
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(&mut data[..]));
        eprintln!("untorn-write unit here: {unit:?}");
        direct.write_untorn(&sg, len as u64, true).unwrap();
        // Misaligned for its length: not sent as an untorn write.
        assert_eq!(
            direct.write_untorn(&sg, 512, false).unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        let mut back = vec![0u8; len];
        let mut f = File::open(&path).unwrap();
        f.seek(SeekFrom::Start(len as u64)).unwrap();
        f.read_exact(&mut back).unwrap();
        assert!(back.iter().all(|&b| b == 0x42));
    }
}
