//! [`BlockBackend`] that stores nothing: reads return zeroes (without touching guest memory when
//! asked not to), writes are dropped. It measures the protocol and emulation overhead alone
//! (`--lun null://1G`), the way SPDK's null bdev does.

use std::io;

use super::{BlockBackend, SgList};

pub use crate::config::cli::{null_source_size, NULL_SCHEME};

/// A LUN of `size` bytes that reads as whatever the guest buffer held and discards writes.
#[derive(Debug)]
pub struct NullBackend {
    size: u64,
}

impl NullBackend {
    pub fn new(size: u64) -> Self {
        Self { size }
    }
}

impl BlockBackend for NullBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, bufs: &SgList<'_>, offset: u64) -> io::Result<()> {
        // Data is not produced (like SPDK's null bdev): a benchmark measures the transport.
        if offset + bufs.len() as u64 > self.size {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    fn write_at(&self, _bufs: &SgList<'_>, _offset: u64, _fua: bool) -> io::Result<()> {
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn discard(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn write_zeroes(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn can_discard(&self) -> bool {
        true
    }

    fn discard_zeroes(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn parses_sources() {
        assert!(matches!(null_source_size(Path::new("null://1G")), Some(Ok(n)) if n == 1 << 30));
        assert!(null_source_size(Path::new("/img/a")).is_none());
        assert!(matches!(
            null_source_size(Path::new("null://x")),
            Some(Err(_))
        ));
        let b = NullBackend::new(4096);
        assert_eq!(b.size(), 4096);
        b.write_at(&SgList::new(), 0, true).unwrap();
    }
}
