//! Byte-exact tests of the SCSI emulation, driven through [`ScsiBus::execute`] like the virtio
//! layer drives it.

mod basic;
mod extra;
mod fuzz;
mod inquiry;
mod io;
mod live;
mod mmc;
mod mmc_read;
mod mode;
mod opcodes;
mod passthrough;
mod provisioning;
mod reservations;
mod sbc;
mod xcopy;

use std::{
    io as stdio,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc, Mutex,
    },
};

use vm_memory::VolatileSlice;
pub use vus_test_support::cdb::{self, read10, rw16, write10};

use super::{status, CmdOutput, LogicalUnit, LunOptions, ScsiBus, SgList};
use crate::block::BlockBackend;

/// In-memory backend that records what the SCSI layer asked of it and can inject errors.
#[derive(Default)]
pub struct MemBackend {
    pub data: Mutex<Vec<u8>>,
    pub flushes: AtomicUsize,
    pub fua_writes: AtomicUsize,
    pub discards: Mutex<Vec<(u64, u64)>>,
    pub zeroes: Mutex<Vec<(u64, u64)>>,
    /// errno returned by every read / write / flush / discard when set.
    pub read_errno: Mutex<Option<i32>>,
    pub write_errno: Mutex<Option<i32>>,
    /// Makes discarded ranges "not guaranteed zero", like BLKDISCARD on a block device.
    pub discard_may_not_zero: std::sync::atomic::AtomicBool,
}

impl MemBackend {
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(Self {
            data: Mutex::new(pattern(0, size)),
            ..Self::default()
        })
    }

    pub fn bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        self.data.lock().unwrap()[offset..offset + len].to_vec()
    }

    fn fail(errno: &Mutex<Option<i32>>) -> stdio::Result<()> {
        match *errno.lock().unwrap() {
            Some(e) => Err(stdio::Error::from_raw_os_error(e)),
            None => Ok(()),
        }
    }

    fn check(&self, offset: u64, len: u64) -> stdio::Result<(usize, usize)> {
        let size = self.data.lock().unwrap().len() as u64;
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= size),
            "SCSI layer accessed [{offset}, +{len}) beyond {size}"
        );
        Ok((offset as usize, len as usize))
    }
}

impl BlockBackend for MemBackend {
    fn size(&self) -> u64 {
        self.data.lock().unwrap().len() as u64
    }

    fn read_at(&self, bufs: &SgList<'_>, offset: u64) -> stdio::Result<()> {
        Self::fail(&self.read_errno)?;
        let (off, len) = self.check(offset, bufs.len() as u64)?;
        bufs.copy_from(&self.data.lock().unwrap()[off..off + len]);
        Ok(())
    }

    fn write_at(&self, bufs: &SgList<'_>, offset: u64, fua: bool) -> stdio::Result<()> {
        Self::fail(&self.write_errno)?;
        let (off, len) = self.check(offset, bufs.len() as u64)?;
        bufs.copy_to(&mut self.data.lock().unwrap()[off..off + len]);
        if fua {
            self.fua_writes.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn flush(&self) -> stdio::Result<()> {
        Self::fail(&self.write_errno)?;
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn discard(&self, offset: u64, len: u64) -> stdio::Result<()> {
        Self::fail(&self.write_errno)?;
        let (off, n) = self.check(offset, len)?;
        self.data.lock().unwrap()[off..off + n].fill(0);
        self.discards.lock().unwrap().push((offset, len));
        Ok(())
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> stdio::Result<()> {
        Self::fail(&self.write_errno)?;
        let (off, n) = self.check(offset, len)?;
        self.data.lock().unwrap()[off..off + n].fill(0);
        self.zeroes.lock().unwrap().push((offset, len));
        Ok(())
    }

    fn can_discard(&self) -> bool {
        true
    }

    fn discard_zeroes(&self) -> bool {
        !self.discard_may_not_zero.load(Ordering::Relaxed)
    }
}

pub fn opts() -> LunOptions {
    LunOptions {
        device_type: super::DeviceType::Disk,
        removable: false,
        read_only: false,
        serial: "SER123".to_string(),
        wwn: 0x5001_4050_0000_0001,
        block_size: 512,
        physical_block_size: 0,
        discard: true,
        pr_file: None,
    }
}

/// A bus with one LU at 0:0 over `backend`, its power-on unit attention already consumed.
pub fn bus_with(backend: Arc<dyn BlockBackend>, opts: LunOptions) -> ScsiBus {
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::new(backend, opts));
    let out = bus.run(0, 0, &[0; 6], &[], 0).0;
    assert_sense(&out, 0x6, 0x29, 0x00);
    bus
}

/// A 1 MiB (2048-block) in-memory LU at 0:0.
pub fn mem_bus() -> (ScsiBus, Arc<MemBackend>) {
    let mem = MemBackend::new(1 << 20);
    (bus_with(mem.clone(), opts()), mem)
}

pub trait RunExt {
    /// Runs `cdb` with `data_out` as the data-out buffer and a zeroed `in_len`-byte data-in
    /// buffer; returns the output and the data-in buffer contents.
    fn run(
        &self,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data_out: &[u8],
        in_len: usize,
    ) -> (CmdOutput, Vec<u8>);

    /// Runs at 0:0 and returns the data-in bytes actually transferred, asserting GOOD.
    fn good(&self, cdb: &[u8], in_len: usize) -> Vec<u8> {
        let (out, data) = self.run(0, 0, cdb, &[], in_len);
        assert_eq!(out.status, status::GOOD, "sense {:02x?}", out.sense);
        data[..out.transferred as usize].to_vec()
    }

    /// Runs at 0:0 and returns the output (for error checks).
    fn cmd(&self, cdb: &[u8], data_out: &[u8], in_len: usize) -> CmdOutput {
        self.run(0, 0, cdb, data_out, in_len).0
    }
}

impl RunExt for ScsiBus {
    fn run(
        &self,
        target: u8,
        lun: u16,
        cdb: &[u8],
        data_out: &[u8],
        in_len: usize,
    ) -> (CmdOutput, Vec<u8>) {
        with_buffers(data_out, in_len, |dout, din| {
            self.execute(target, lun, cdb, dout, din)
        })
    }
}

/// Runs `f` over a data-out list holding `data_out` and a data-in list of `in_len` zeroed
/// bytes; returns its output and the data-in bytes.
fn with_buffers(
    data_out: &[u8],
    in_len: usize,
    f: impl FnOnce(&SgList<'_>, &SgList<'_>) -> CmdOutput,
) -> (CmdOutput, Vec<u8>) {
    let mut out_buf = data_out.to_vec();
    let mut in_buf = vec![0u8; in_len];
    let out = {
        let mut dout = SgList::new();
        dout.push(VolatileSlice::from(&mut out_buf[..]));
        let mut din = SgList::new();
        din.push(VolatileSlice::from(&mut in_buf[..]));
        f(&dout, &din)
    };
    (out, in_buf)
}

/// Runs `cdb` at 0:0 from I_T nexus `nexus`; returns the output and the data-in bytes
/// transferred.
pub fn run_as(
    bus: &ScsiBus,
    nexus: u32,
    cdb: &[u8],
    data_out: &[u8],
    in_len: usize,
) -> (CmdOutput, Vec<u8>) {
    let (out, mut in_buf) = with_buffers(data_out, in_len, |dout, din| {
        bus.execute_as(nexus, 0, 0, cdb, dout, din)
    });
    in_buf.truncate(out.transferred as usize);
    (out, in_buf)
}

/// Asserts CHECK CONDITION with fixed-format sense of the given key / ASC / ASCQ.
#[track_caller]
pub fn assert_sense(out: &CmdOutput, key: u8, asc: u8, ascq: u8) {
    assert_eq!(out.status, status::CHECK_CONDITION, "output {out:02x?}");
    assert_eq!(out.sense.len(), 18);
    assert_eq!(out.sense[0] & 0x7f, 0x70);
    assert_eq!(
        (out.sense[2], out.sense[12], out.sense[13]),
        (key, asc, ascq),
        "sense {:02x?}",
        out.sense
    );
    assert_eq!(out.transferred, 0);
}

/// Asserts ILLEGAL REQUEST, INVALID FIELD IN CDB with the given field pointer.
#[track_caller]
pub fn assert_invalid_cdb(out: &CmdOutput, byte: u16, bit: Option<u8>) {
    assert_sense(out, 0x5, 0x24, 0x00);
    assert_eq!(
        &out.sense[15..18],
        &sks(true, byte, bit),
        "sense {:02x?}",
        out.sense
    );
}

/// Asserts ILLEGAL REQUEST, INVALID FIELD IN PARAMETER LIST with the given field pointer.
#[track_caller]
pub fn assert_invalid_param(out: &CmdOutput, byte: u16, bit: Option<u8>) {
    assert_sense(out, 0x5, 0x26, 0x00);
    assert_eq!(
        &out.sense[15..18],
        &sks(false, byte, bit),
        "sense {:02x?}",
        out.sense
    );
}

fn sks(cdb: bool, byte: u16, bit: Option<u8>) -> [u8; 3] {
    let mut b0 = 0x80 | if cdb { 0x40 } else { 0 };
    if let Some(bit) = bit {
        b0 |= 0x08 | bit;
    }
    [b0, (byte >> 8) as u8, byte as u8]
}

/// TEST UNIT READY.
pub const TUR: [u8; 6] = [0; 6];

/// What [`MemBackend::new`] fills the medium with: byte `i` of the medium is `i % 251`, so no
/// two blocks are alike. Returns bytes `offset..offset + len`.
pub fn pattern(offset: usize, len: usize) -> Vec<u8> {
    (offset..offset + len).map(|i| (i % 251) as u8).collect()
}

/// A backend of any size that reads zeroes and accepts writes (for capacity limits).
pub struct HugeBackend(pub u64);

impl BlockBackend for HugeBackend {
    fn size(&self) -> u64 {
        self.0
    }
    fn read_at(&self, bufs: &SgList<'_>, offset: u64) -> stdio::Result<()> {
        assert!(offset + bufs.len() as u64 <= self.0);
        bufs.copy_from(&vec![0u8; bufs.len()]);
        Ok(())
    }
    fn write_at(&self, bufs: &SgList<'_>, offset: u64, _fua: bool) -> stdio::Result<()> {
        assert!(offset + bufs.len() as u64 <= self.0);
        Ok(())
    }
    fn flush(&self) -> stdio::Result<()> {
        Ok(())
    }
    fn discard(&self, offset: u64, len: u64) -> stdio::Result<()> {
        assert!(offset + len <= self.0);
        Ok(())
    }
    fn write_zeroes(&self, offset: u64, len: u64) -> stdio::Result<()> {
        assert!(offset + len <= self.0);
        Ok(())
    }
    fn can_discard(&self) -> bool {
        true
    }
    fn discard_zeroes(&self) -> bool {
        true
    }
}
