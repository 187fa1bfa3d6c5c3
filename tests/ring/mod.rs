//! An in-process split virtqueue for driving `QueueWorker` directly: guest memory, a
//! `VringRwLock` set up as the vhost-user front-end would, chains built by hand, the used ring
//! read back. Shared by `tests/aio_queue.rs` and `tests/alloc_free.rs`.

#![allow(dead_code)]

use std::sync::Arc;

use vhost_user_backend::{VringRwLock, VringT};
use vhost_user_scsi::{
    block::FileBackend,
    scsi::{LogicalUnit, LunOptions, ScsiBus},
};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryMmap};

pub const NEXT: u16 = 1;
pub const WRITE: u16 = 2;
pub const REQ_HEADER_SIZE: u32 = 51;
pub const RESP_HEADER_SIZE: u32 = 108;

const DESC: u64 = 0x0;
const AVAIL: u64 = 0x1000;
const USED: u64 = 0x2000;
/// Data buffers start here.
pub const DATA: u64 = 0x10000;
pub const MEM_SIZE: usize = 8 << 20;

pub struct Ring {
    pub mem: GuestMemoryAtomic<GuestMemoryMmap>,
    pub vring: VringRwLock,
    size: u16,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    pub fn new(size: u16) -> Self {
        let mmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mem = GuestMemoryAtomic::new(mmap);
        let vring = VringRwLock::new(mem.clone(), size).unwrap();
        vring.set_queue_size(size);
        vring.set_queue_info(DESC, AVAIL, USED).unwrap();
        vring.set_queue_ready(true);
        vring.set_enabled(true);
        Self {
            mem,
            vring,
            size,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        self.mem
            .memory()
            .write_slice(data, GuestAddress(addr))
            .unwrap();
    }

    pub fn read(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.mem
            .memory()
            .read_slice(&mut v, GuestAddress(addr))
            .unwrap();
        v
    }

    /// Makes a chain of `(addr, len, device-writable)` buffers available; returns its head.
    /// Descriptors are taken round robin from the table.
    pub fn push_chain(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
        let mem = self.mem.memory();
        let head = self.next_desc;
        for (i, &(addr, len, writable)) in bufs.iter().enumerate() {
            let index = self.next_desc;
            let next = (index + 1) % self.size;
            let mut flags = if writable { WRITE } else { 0 };
            if i + 1 < bufs.len() {
                flags |= NEXT;
            }
            let at = DESC + 16 * u64::from(index);
            mem.write_obj(addr, GuestAddress(at)).unwrap();
            mem.write_obj(len, GuestAddress(at + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
            mem.write_obj(next, GuestAddress(at + 14)).unwrap();
            self.next_desc = next;
        }
        let slot = u64::from(self.avail_idx % self.size);
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
        mem.write_obj(self.avail_idx, GuestAddress(AVAIL + 2))
            .unwrap();
        head
    }

    /// Used entries (head, length) added since the last call.
    pub fn take_used(&mut self) -> Vec<(u16, u32)> {
        let mem = self.mem.memory();
        let idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
        let mut out = Vec::new();
        while self.used_seen != idx {
            let at = USED + 4 + 8 * u64::from(self.used_seen % self.size);
            let id: u32 = mem.read_obj(GuestAddress(at)).unwrap();
            let len: u32 = mem.read_obj(GuestAddress(at + 4)).unwrap();
            out.push((id as u16, len));
            self.used_seen = self.used_seen.wrapping_add(1);
        }
        out
    }

    /// Used entries added since the last `take_used`, without consuming them.
    pub fn used_pending(&self) -> u16 {
        let idx: u16 = self.mem.memory().read_obj(GuestAddress(USED + 2)).unwrap();
        idx.wrapping_sub(self.used_seen)
    }
}

/// A request header for LUN 0:0 with `cdb`.
pub fn req_header(cdb: &[u8]) -> Vec<u8> {
    let mut h = vec![0u8; REQ_HEADER_SIZE as usize];
    h[0] = 1;
    h[19..19 + cdb.len()].copy_from_slice(cdb);
    h
}

pub fn rw10(opcode: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = vec![opcode, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.push(0);
    c.extend_from_slice(&blocks.to_be_bytes());
    c.push(0);
    c
}

/// COMPARE AND WRITE of `blocks` blocks at `lba`.
pub fn caw(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![0x89, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, blocks, 0, 0]);
    c
}

/// A bus with one 1 MiB file LU (512-byte blocks, page cache) at 0:0, its power-on unit
/// attention consumed.
pub fn file_bus() -> (Arc<ScsiBus>, tempfile::NamedTempFile) {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let backend = FileBackend::new(img.reopen().unwrap(), false).unwrap();
    let opts = LunOptions {
        read_only: false,
        serial: "S".into(),
        wwn: 0x3000_0000_0000_0001,
        block_size: 512,
        physical_block_size: 0,
        discard: true,
        pr_file: None,
    };
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::new(Arc::new(backend), opts));
    let bus = Arc::new(bus);
    // TEST UNIT READY consumes POWER ON OCCURRED.
    let out = execute(&bus, &[0; 6], &[], 0).0;
    assert_eq!(out.status, 2);
    (bus, img)
}

/// Runs one command synchronously at 0:0 (like another queue thread would).
pub fn execute(
    bus: &ScsiBus,
    cdb: &[u8],
    data_out: &[u8],
    in_len: usize,
) -> (vhost_user_scsi::scsi::CmdOutput, Vec<u8>) {
    use vhost_user_scsi::scsi::SgList;
    use vm_memory::VolatileSlice;
    let mut out_buf = data_out.to_vec();
    let mut in_buf = vec![0u8; in_len];
    let out = {
        let mut dout = SgList::new();
        dout.push(VolatileSlice::from(&mut out_buf[..]));
        let mut din = SgList::new();
        din.push(VolatileSlice::from(&mut in_buf[..]));
        bus.execute(0, 0, cdb, &dout, &din)
    };
    (out, in_buf)
}
