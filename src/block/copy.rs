//! Copying a byte range from one backend to another without the data passing through guest
//! memory (SCSI EXTENDED COPY).
//!
//! Between two image files the kernel copies: `copy_file_range(2)` (a reflink or an in-kernel
//! splice, depending on the file systems). Anything else — a block device on either end, a
//! file system or kernel that refuses (`EXDEV`, `EINVAL`, `EOPNOTSUPP`, `ENOSYS`) — goes
//! through a bounded bounce buffer in this process with the backends' own read and write
//! methods, which also handle `O_DIRECT` alignment.

use std::{io, os::fd::RawFd};

use vm_memory::VolatileSlice;

use super::{partial_failure, BlockBackend, SgList};

/// Bounce buffer for the fallback path, and the most one `copy_file_range` call is asked for
/// (a bounded time per call).
const CHUNK: usize = 1 << 20;

/// Which end of a copy failed, with the bytes copied before it (for sense data).
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("reading the source failed after {done} bytes: {cause}")]
    Read { done: u64, cause: io::Error },
    #[error("writing the destination failed after {done} bytes: {cause}")]
    Write { done: u64, cause: io::Error },
}

/// Copies `len` bytes from `src` at `src_off` to `dst` at `dst_off`. The caller has checked both
/// ranges against the backends' sizes. With `fua` the copied data is durable on return.
pub fn copy_range(
    src: &dyn BlockBackend,
    src_off: u64,
    dst: &dyn BlockBackend,
    dst_off: u64,
    len: u64,
    fua: bool,
) -> Result<(), CopyError> {
    let mut done = 0;
    if let (Some(in_fd), Some(out_fd)) = (src.copy_fd(), dst.copy_fd()) {
        while done < len {
            match copy_file_range(in_fd, src_off + done, out_fd, dst_off + done, len - done) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if falls_back(&e) => break,
                // The kernel does not say which end failed: a write error is the conservative
                // guess for sense data (the destination is the medium being changed).
                Err(cause) => return Err(CopyError::Write { done, cause }),
            }
        }
    }
    if done < len {
        bounce(src, src_off + done, dst, dst_off + done, len - done).map_err(|e| match e {
            CopyError::Read { done: d, cause } => CopyError::Read {
                done: done + d,
                cause,
            },
            CopyError::Write { done: d, cause } => CopyError::Write {
                done: done + d,
                cause,
            },
        })?;
    }
    if fua {
        dst.flush()
            .map_err(|cause| CopyError::Write { done: len, cause })?;
    }
    Ok(())
}

/// Errors after which the bounce path is tried instead: the kernel or the file systems cannot
/// copy this pair in the kernel.
fn falls_back(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EXDEV | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOSYS | libc::EBADF)
    )
}

/// One `copy_file_range(2)` call of at most [`CHUNK`] bytes; `EINTR` is retried.
fn copy_file_range(
    in_fd: RawFd,
    in_off: u64,
    out_fd: RawFd,
    out_off: u64,
    len: u64,
) -> io::Result<u64> {
    let mut in_off = libc::loff_t::try_from(in_off).map_err(|_| io::ErrorKind::InvalidInput)?;
    let mut out_off = libc::loff_t::try_from(out_off).map_err(|_| io::ErrorKind::InvalidInput)?;
    let n = len.min(CHUNK as u64) as usize;
    loop {
        // SAFETY: both descriptors are open files owned by the LUNs' backends for the duration
        // of the call; the offset pointers point to locals that outlive it.
        let ret = unsafe { libc::copy_file_range(in_fd, &mut in_off, out_fd, &mut out_off, n, 0) };
        if ret >= 0 {
            return Ok(ret as u64);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// The fallback: read a chunk, write it, repeat.
fn bounce(
    src: &dyn BlockBackend,
    src_off: u64,
    dst: &dyn BlockBackend,
    dst_off: u64,
    len: u64,
) -> Result<(), CopyError> {
    let mut buf = vec![0u8; CHUNK.min(len as usize)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        let mut sg = SgList::new();
        sg.push(VolatileSlice::from(&mut buf[..n]));
        src.read_at(&sg, src_off + done)
            .map_err(|cause| CopyError::Read {
                done,
                cause: partial_failure(0, cause),
            })?;
        dst.write_at(&sg, dst_off + done, false)
            .map_err(|cause| CopyError::Write { done, cause })?;
        done += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::FileExt;

    use super::*;
    use crate::block::FileBackend;

    /// A file backend that hides its copy fd, so copies take the bounce path.
    struct NoCopyFd(FileBackend);

    impl BlockBackend for NoCopyFd {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn read_at(&self, bufs: &SgList<'_>, offset: u64) -> io::Result<()> {
            self.0.read_at(bufs, offset)
        }
        fn write_at(&self, bufs: &SgList<'_>, offset: u64, fua: bool) -> io::Result<()> {
            self.0.write_at(bufs, offset, fua)
        }
        fn flush(&self) -> io::Result<()> {
            self.0.flush()
        }
        fn discard(&self, offset: u64, len: u64) -> io::Result<()> {
            self.0.discard(offset, len)
        }
        fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
            self.0.write_zeroes(offset, len)
        }
        fn can_discard(&self) -> bool {
            false
        }
        fn discard_zeroes(&self) -> bool {
            false
        }
    }

    /// A temporary image of `len` bytes filled with `f(i)`, and a second handle to read it.
    fn image(len: usize, f: impl Fn(usize) -> u8) -> (FileBackend, std::fs::File) {
        let file = tempfile::tempfile().unwrap();
        let data: Vec<u8> = (0..len).map(f).collect();
        file.write_all_at(&data, 0).unwrap();
        let other = file.try_clone().unwrap();
        (FileBackend::new(file, false).unwrap(), other)
    }

    fn contents(file: &std::fs::File, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        file.read_exact_at(&mut b, 0).unwrap();
        b
    }

    #[test]
    fn copies_in_the_kernel_and_through_the_bounce_buffer() {
        let pattern = |i: usize| (i % 253) as u8;
        let (src, _) = image(3 << 20, pattern);
        let len = (2 << 20) + 4096; // several CHUNKs, not a multiple of one
        for bounce_path in [false, true] {
            let (dst, dst_file) = image(4 << 20, |_| 0xee);
            let result = if bounce_path {
                copy_range(&src, 4096, &NoCopyFd(dst), 512, len as u64, true)
            } else {
                copy_range(&src, 4096, &dst, 512, len as u64, false)
            };
            result.unwrap();
            let got = contents(&dst_file, 4 << 20);
            assert!(got[..512].iter().all(|&b| b == 0xee));
            let want: Vec<u8> = (4096..4096 + len).map(pattern).collect();
            assert!(got[512..512 + len] == want[..], "bounce {bounce_path}");
            assert!(got[512 + len..].iter().all(|&b| b == 0xee));
        }
    }

    #[test]
    fn a_failing_source_names_the_bytes_copied() {
        let (src, _) = image(1 << 20, |_| 1);
        let (dst, _) = image(4 << 20, |_| 0);
        // Reading past the end of the source fails after 1 MiB, in the bounce path.
        match copy_range(&NoCopyFd(src), 0, &dst, 0, 2 << 20, false) {
            Err(CopyError::Read { done, .. }) => assert_eq!(done, 1 << 20),
            other => panic!("{other:?}"),
        }
    }
}
