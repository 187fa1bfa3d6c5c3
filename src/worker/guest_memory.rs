//! Checks on the guest memory a front-end shares (SET_MEM_TABLE, ADD_MEM_REG), run on the
//! protocol thread before any queue may use a new table.
//!
//! The request handler (`worker::vhost_user::handler`) maps each region, then has the table
//! checked here before it installs it where a queue thread could touch it; `mmap(2)` of a
//! shared file does not look at the file's size, so a region past the end of its file, or a file
//! the front-end shrinks later, turns the first access into SIGBUS, which would end the worker
//! and every other connection's service with it. So:
//!
//! - every region must lie within its file as it is now (`fstat`: offset + length ≤ size);
//! - the file must be a memfd sealed against shrinking (`F_SEAL_SHRINK`, `F_GET_SEALS`): then the kernel
//!   refuses any later `ftruncate` to a smaller size, and the check above stays true for as long
//!   as the mapping lives. QEMU's `memory-backend-memfd` seals its memfd by default
//!   (`seal=on`: grow, shrink, seal).
//! - a shmem file that cannot be sealed reports only F_SEAL_SEAL, exactly like a memfd created
//!   without MFD_ALLOW_SEALING: tmpfs and hugetlbfs files of `memory-backend-file` cannot be
//!   told apart from a hostile unsealable memfd, so they are refused too unless
//!   `--allow-unsealed-memory` accepts them (size check only: the front-end can then still
//!   truncate under us and the worker dies of SIGBUS; see docs/security.md, "Known limits").
//!   A file that cannot carry seals at all (F_GET_SEALS: EINVAL, e.g. on ext4) is refused the
//!   same way: its owner can truncate it just as well.
//!
//! Guest memory is also excluded from core dumps (`MADV_DONTDUMP`): a crash of the worker must
//! not write the guest's RAM to disk.

use std::os::fd::AsFd;

use nix::{
    errno::Errno,
    fcntl::{fcntl, FcntlArg, SealFlag},
    sys::{
        mman::{madvise, MmapAdvise},
        stat::{fstat, SFlag},
    },
};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress};

/// Why a front-end's memory table is refused (the connection then ends).
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory region at {gpa:#x} is not backed by a file")]
    NoFile { gpa: u64 },
    #[error("guest memory region at {gpa:#x}: cannot inspect its file: {error}")]
    Stat { gpa: u64, error: Errno },
    #[error(
        "guest memory region at {gpa:#x}: offset {offset} + length {len} is past the end of its \
         file ({size} bytes)"
    )]
    PastEof {
        gpa: u64,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error(
        "guest memory region at {gpa:#x}: its file is not sealed against shrinking \
         (F_SEAL_SHRINK); the front-end could truncate it under the device (use QEMU's \
         memory-backend-memfd, or --allow-unsealed-memory)"
    )]
    NotSealed { gpa: u64 },
}

/// Checks one region; see the module documentation.
pub fn check_region(region: &GuestRegionMmap<()>, allow_unsealed: bool) -> Result<(), MemoryError> {
    let gpa = region.start_addr().0;
    let fo = region.file_offset().ok_or(MemoryError::NoFile { gpa })?;
    let file = fo.file();
    let st = fstat(file.as_fd()).map_err(|error| MemoryError::Stat { gpa, error })?;
    let len = region.len();
    let offset = fo.start();
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFREG {
        let size = u64::try_from(st.st_size).unwrap_or(0);
        if offset.checked_add(len).map_or(true, |end| end > size) {
            return Err(MemoryError::PastEof {
                gpa,
                offset,
                len,
                size,
            });
        }
    }
    if allow_unsealed {
        return Ok(());
    }
    match fcntl(file, FcntlArg::F_GET_SEALS) {
        Ok(seals) => {
            if !SealFlag::from_bits_truncate(seals).contains(SealFlag::F_SEAL_SHRINK) {
                return Err(MemoryError::NotSealed { gpa });
            }
        }
        // Not a shmem file: cannot carry seals, so nothing stops its owner from shrinking it.
        Err(Errno::EINVAL) => return Err(MemoryError::NotSealed { gpa }),
        Err(error) => return Err(MemoryError::Stat { gpa, error }),
    }
    Ok(())
}

/// Checks every region of a table, then keeps them out of core dumps.
pub fn check_table<M>(mem: &M, allow_unsealed: bool) -> Result<(), MemoryError>
where
    M: GuestMemoryBackend<R = GuestRegionMmap<()>>,
{
    for region in mem.iter() {
        check_region(region, allow_unsealed)?;
    }
    for region in mem.iter() {
        dont_dump(region);
    }
    Ok(())
}

fn dont_dump(region: &GuestRegionMmap<()>) {
    let Ok(ptr) = region.get_host_address(MemoryRegionAddress(0)) else {
        return;
    };
    let Some(ptr) = std::ptr::NonNull::new(ptr.cast::<libc::c_void>()) else {
        return;
    };
    // SAFETY: the range is exactly the region's own mapping (mmap returns page-aligned
    // addresses); MADV_DONTDUMP only changes what a core dump contains, not the memory.
    if let Err(e) = unsafe { madvise(ptr, region.len() as usize, MmapAdvise::MADV_DONTDUMP) } {
        log::warn!(
            "guest memory region at {:#x}: MADV_DONTDUMP failed: {e}",
            region.start_addr().0
        );
    }
}
