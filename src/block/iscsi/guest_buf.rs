//! A command's data in guest memory ([`GuestBuf`]): the command's scatter-gather list as the
//! session's [`TaskBuffer`], moved straight between the guest's segments and the socket with
//! `readv`/`writev`.

use std::{
    io,
    os::fd::{AsRawFd, BorrowedFd},
};

use crate::block::sg::SgList;
use crate::iscsi::buffer::{Piece, TaskBuffer};

/// Most iovecs one `readv`/`writev` takes (`UIO_MAXIOV`): longer lists go in several calls.
const MAX_IOVECS: usize = 1024;

/// A command's data in guest memory: its scatter-gather list as (host address, length)
/// segments, read and written by the LUN thread straight from and to the socket.
/// The lengths are fixed when it is made (from the descriptor chain the queue thread
/// resolved): the guest cannot change them afterwards, only the bytes.
#[derive(Debug)]
pub struct GuestBuf {
    segs: Vec<(*mut u8, usize)>,
    len: usize,
}

// SAFETY: the addresses point into guest memory that the submitting queue thread keeps mapped
// until the command is answered (the `Ticket` borrows the scatter-gather list and waits for the
// answer even when dropped); the buffer is used by one thread at a time (it lives in the session
// behind the LUN's lock: the submitting thread sends from it there, the LUN thread reads into
// and sends from it), and the LUN thread drops it before it answers.
unsafe impl Send for GuestBuf {}

fn out_of_range() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "range beyond the guest's buffer",
    )
}

impl GuestBuf {
    pub(super) fn new(sg: &SgList<'_>) -> Self {
        Self {
            segs: sg
                .segments()
                .iter()
                .map(|s| (s.ptr_guard_mut().as_ptr(), s.len()))
                .collect(),
            len: sg.len(),
        }
    }

    /// Calls `f` with each (address, length) piece of bytes `[offset, offset + len)`, in order;
    /// an error if the range is not within the buffer.
    fn pieces(
        &self,
        offset: usize,
        len: usize,
        mut f: impl FnMut(*mut u8, usize) -> io::Result<()>,
    ) -> io::Result<()> {
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        if end > self.len {
            return Err(out_of_range());
        }
        let mut skip = offset;
        let mut want = len;
        for &(ptr, n) in &self.segs {
            if want == 0 {
                break;
            }
            if skip >= n {
                skip -= n;
                continue;
            }
            let take = (n - skip).min(want);
            // `skip < n`: within the segment.
            f(ptr.wrapping_add(skip), take)?;
            want -= take;
            skip = 0;
        }
        Ok(())
    }

    /// The iovecs of bytes `[offset, offset + len)`, appended to `iov`.
    fn iovecs(&self, offset: usize, len: usize, iov: &mut Vec<libc::iovec>) -> io::Result<()> {
        self.pieces(offset, len, |ptr, n| {
            iov.push(libc::iovec {
                iov_base: ptr.cast(),
                iov_len: n,
            });
            Ok(())
        })
    }
}

/// Runs `readv` or `writev` (`op`) over all of `iov` on `fd`, in calls of at most
/// [`MAX_IOVECS`], until every byte moved (short transfers resume where they stopped).
fn transfer_all(
    fd: BorrowedFd<'_>,
    iov: &mut [libc::iovec],
    op: unsafe extern "C" fn(libc::c_int, *const libc::iovec, libc::c_int) -> libc::ssize_t,
) -> io::Result<()> {
    let mut idx = 0;
    while idx < iov.len() {
        if iov[idx].iov_len == 0 {
            idx += 1;
            continue;
        }
        let count = (iov.len() - idx).min(MAX_IOVECS);
        // SAFETY: `iov[idx..idx + count]` are valid iovecs: our own slices (headers, padding,
        // a receive buffer) or guest memory kept mapped while the command is outstanding (see
        // `GuestBuf`); the kernel reads or writes only within them.
        let r = unsafe { op(fd.as_raw_fd(), iov[idx..].as_ptr(), count as libc::c_int) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut n = r as usize;
        while n > 0 && idx < iov.len() {
            let l = iov[idx].iov_len;
            if n >= l {
                n -= l;
                idx += 1;
            } else {
                iov[idx].iov_base = iov[idx].iov_base.cast::<u8>().wrapping_add(n).cast();
                iov[idx].iov_len = l - n;
                n = 0;
            }
        }
    }
    Ok(())
}

impl TaskBuffer for GuestBuf {
    fn len(&self) -> usize {
        self.len
    }

    fn copy_out(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        let mut at = 0;
        self.pieces(offset, dst.len(), |ptr, n| {
            // SAFETY: a piece of guest memory kept mapped while the command is outstanding
            // (see `GuestBuf`); read with volatile accesses since the guest may write it.
            let s = unsafe { vm_memory::VolatileSlice::new(ptr, n) };
            s.copy_to(&mut dst[at..at + n]);
            at += n;
            Ok(())
        })
    }

    fn copy_in(&mut self, offset: usize, src: &[u8]) -> io::Result<()> {
        let mut at = 0;
        self.pieces(offset, src.len(), |ptr, n| {
            // SAFETY: as in `copy_out`; written with volatile accesses.
            let s = unsafe { vm_memory::VolatileSlice::new(ptr, n) };
            s.copy_from(&src[at..at + n]);
            at += n;
            Ok(())
        })
    }

    fn send(&self, fd: BorrowedFd<'_>, pieces: &[Piece<'_>]) -> io::Result<()> {
        let mut iov = Vec::with_capacity(pieces.len() + self.segs.len());
        for p in pieces {
            match *p {
                Piece::Bytes(b) => iov.push(libc::iovec {
                    iov_base: b.as_ptr().cast_mut().cast(),
                    iov_len: b.len(),
                }),
                Piece::Data { offset, len } => self.iovecs(offset, len, &mut iov)?,
            }
        }
        transfer_all(fd, &mut iov, libc::writev)
    }

    fn recv(&mut self, fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<()> {
        let mut iov = Vec::with_capacity(self.segs.len());
        self.iovecs(offset, len, &mut iov)?;
        transfer_all(fd, &mut iov, libc::readv)
    }
}
