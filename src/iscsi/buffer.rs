//! Where a pipelined command's data lives: [`TaskBuffer`].
//!
//! A contiguous buffer (`Vec<u8>`) is read and written as a slice. A scattered one (the daemon's
//! view of a guest's scatter-gather list, `crate::block::iscsi`) moves its bytes straight
//! between the socket and its segments ([`TaskBuffer::send`], [`TaskBuffer::recv`]: one
//! `writev`/`readv` over a PDU header and the segments), so that no intermediate copy is made
//! where the protocol allows. Where it does not, the session copies through a scratch buffer
//! of one PDU: with a data digest, so that the digest is computed once over exactly the bytes
//! sent or checked over exactly the bytes received (the owner of scattered memory, e.g. a
//! guest, may change it at any time).

use std::{io, os::fd::BorrowedFd};

/// One piece of what [`TaskBuffer::send`] puts on the wire, in order.
#[derive(Debug, Clone, Copy)]
pub enum Piece<'x> {
    /// Bytes of the caller (PDU headers, padding).
    Bytes(&'x [u8]),
    /// `len` bytes of the buffer from `offset`.
    Data { offset: usize, len: usize },
}

/// A command's data buffer. Its length is the command's expected transfer length and must not
/// change while the session holds it. Offsets and lengths passed in are checked by the session
/// against [`TaskBuffer::len`]; implementations must still never read or write outside
/// themselves (return an error instead).
pub trait TaskBuffer {
    fn len(&self) -> usize;

    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole buffer as one slice, when it is one (then the session uses it directly).
    fn contiguous(&self) -> Option<&[u8]> {
        None
    }

    /// [`TaskBuffer::contiguous`], writable.
    fn contiguous_mut(&mut self) -> Option<&mut [u8]> {
        None
    }

    /// Copies `dst.len()` bytes from `offset` out of the buffer.
    fn copy_out(&self, offset: usize, dst: &mut [u8]) -> io::Result<()>;

    /// Copies `src` into the buffer at `offset`.
    fn copy_in(&mut self, offset: usize, src: &[u8]) -> io::Result<()>;

    /// Writes `pieces` to the connected socket `fd` (blocking, all of it).
    fn send(&self, fd: BorrowedFd<'_>, pieces: &[Piece<'_>]) -> io::Result<()>;

    /// Reads exactly `len` bytes from the connected socket `fd` into the buffer at `offset`
    /// (blocking); an end of stream before that is `UnexpectedEof`.
    fn recv(&mut self, fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<()>;
}

fn out_of_range() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, "range beyond the task buffer")
}

impl TaskBuffer for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }

    fn contiguous(&self) -> Option<&[u8]> {
        Some(self)
    }

    fn contiguous_mut(&mut self) -> Option<&mut [u8]> {
        Some(self)
    }

    fn copy_out(&self, offset: usize, dst: &mut [u8]) -> io::Result<()> {
        let end = offset.checked_add(dst.len()).ok_or_else(out_of_range)?;
        dst.copy_from_slice(self.get(offset..end).ok_or_else(out_of_range)?);
        Ok(())
    }

    fn copy_in(&mut self, offset: usize, src: &[u8]) -> io::Result<()> {
        let end = offset.checked_add(src.len()).ok_or_else(out_of_range)?;
        self.get_mut(offset..end)
            .ok_or_else(out_of_range)?
            .copy_from_slice(src);
        Ok(())
    }

    // The session uses the slice itself; these two exist for completeness (tests of scattered
    // paths with a contiguous buffer would call them).
    fn send(&self, fd: BorrowedFd<'_>, pieces: &[Piece<'_>]) -> io::Result<()> {
        for p in pieces {
            let mut bytes = match *p {
                Piece::Bytes(b) => b,
                Piece::Data { offset, len } => offset
                    .checked_add(len)
                    .and_then(|end| self.get(offset..end))
                    .ok_or_else(out_of_range)?,
            };
            while !bytes.is_empty() {
                match nix::unistd::write(fd, bytes) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => bytes = &bytes[n..],
                    Err(nix::errno::Errno::EINTR) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    fn recv(&mut self, fd: BorrowedFd<'_>, offset: usize, len: usize) -> io::Result<()> {
        let end = offset.checked_add(len).ok_or_else(out_of_range)?;
        let mut dst = self.get_mut(offset..end).ok_or_else(out_of_range)?;
        while !dst.is_empty() {
            match nix::unistd::read(fd, dst) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => dst = &mut dst[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
