//! SCSI CDB and parameter-list builders (SPC-4/5, SBC-3/4), each written once.
//!
//! They all return `Vec<u8>` so a test can adjust a byte (FUA, DPO, a reserved bit) before
//! sending the command.

pub const TEST_UNIT_READY: u8 = 0x00;
pub const READ_6: u8 = 0x08;
pub const WRITE_6: u8 = 0x0a;
pub const INQUIRY: u8 = 0x12;
pub const READ_CAPACITY_10: u8 = 0x25;
pub const READ_10: u8 = 0x28;
pub const WRITE_10: u8 = 0x2a;
pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
pub const WRITE_SAME_10: u8 = 0x41;
pub const UNMAP: u8 = 0x42;
pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
pub const READ_16: u8 = 0x88;
pub const COMPARE_AND_WRITE: u8 = 0x89;
pub const WRITE_16: u8 = 0x8a;
pub const WRITE_SAME_16: u8 = 0x93;
pub const SERVICE_ACTION_IN_16: u8 = 0x9e;

/// TEST UNIT READY.
pub fn test_unit_ready() -> Vec<u8> {
    vec![TEST_UNIT_READY; 6]
}

/// INQUIRY of standard data with `alloc` bytes of allocation length.
pub fn inquiry(alloc: u16) -> Vec<u8> {
    inquiry_page(false, 0, alloc)
}

/// INQUIRY with the EVPD bit and page code given.
pub fn inquiry_page(evpd: bool, page: u8, alloc: u16) -> Vec<u8> {
    let [hi, lo] = alloc.to_be_bytes();
    vec![INQUIRY, u8::from(evpd), page, hi, lo, 0]
}

/// READ CAPACITY(10).
pub fn read_capacity10() -> Vec<u8> {
    vec![READ_CAPACITY_10, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// READ CAPACITY(16) (SERVICE ACTION IN(16), service action 0x10).
pub fn read_capacity16(alloc: u32) -> Vec<u8> {
    let mut c = vec![SERVICE_ACTION_IN_16, 0x10, 0, 0, 0, 0, 0, 0, 0, 0];
    c.extend_from_slice(&alloc.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// A 6-byte READ or WRITE: 21-bit LBA, 8-bit transfer length (0 means 256 blocks).
pub fn rw6(opcode: u8, lba: u32, blocks: u8) -> Vec<u8> {
    let [_, a, b, c] = lba.to_be_bytes();
    vec![opcode, a & 0x1f, b, c, blocks, 0]
}

/// A 10-byte command with a 32-bit LBA and a 16-bit length (READ, WRITE, VERIFY, ...).
pub fn rw10(opcode: u8, lba: u32, blocks: u16) -> Vec<u8> {
    rw10_array(opcode, lba, blocks).to_vec()
}

/// [`rw10`] without allocating (for the host bench's per-command path).
pub fn rw10_array(opcode: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let a = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [opcode, 0, a[0], a[1], a[2], a[3], 0, n[0], n[1], 0]
}

pub fn read10(lba: u32, blocks: u16) -> Vec<u8> {
    rw10(READ_10, lba, blocks)
}

pub fn write10(lba: u32, blocks: u16) -> Vec<u8> {
    rw10(WRITE_10, lba, blocks)
}

/// A 16-byte command with a 64-bit LBA and a 32-bit length (READ, WRITE, SYNCHRONIZE
/// CACHE, WRITE SAME, ...).
pub fn rw16(opcode: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = vec![opcode, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&blocks.to_be_bytes());
    c.extend_from_slice(&[0, 0]);
    c
}

/// SYNCHRONIZE CACHE(10) of the whole medium.
pub fn sync_cache10() -> Vec<u8> {
    rw10(SYNCHRONIZE_CACHE_10, 0, 0)
}

/// COMPARE AND WRITE of `blocks` blocks at `lba`.
pub fn compare_and_write(lba: u64, blocks: u8) -> Vec<u8> {
    let mut c = vec![COMPARE_AND_WRITE, 0];
    c.extend_from_slice(&lba.to_be_bytes());
    c.extend_from_slice(&[0, 0, 0, blocks, 0, 0]);
    c
}

/// WRITE SAME(10) with byte 1 = `flags` (0x08 = UNMAP).
pub fn write_same10(flags: u8, lba: u32, blocks: u16) -> Vec<u8> {
    let mut c = rw10(WRITE_SAME_10, lba, blocks);
    c[1] = flags;
    c
}

/// WRITE SAME(16) with byte 1 = `flags` (0x08 = UNMAP).
pub fn write_same16(flags: u8, lba: u64, blocks: u32) -> Vec<u8> {
    let mut c = rw16(WRITE_SAME_16, lba, blocks);
    c[1] = flags;
    c
}

/// UNMAP with a parameter list of `len` bytes.
pub fn unmap(len: usize) -> Vec<u8> {
    let [hi, lo] = (len as u16).to_be_bytes();
    vec![UNMAP, 0, 0, 0, 0, 0, 0, hi, lo, 0]
}

/// The UNMAP parameter list with one block descriptor per `(LBA, blocks)`.
pub fn unmap_list(ranges: &[(u64, u32)]) -> Vec<u8> {
    let n = ranges.len() * 16;
    let mut l = Vec::with_capacity(8 + n);
    l.extend_from_slice(&((n + 6) as u16).to_be_bytes());
    l.extend_from_slice(&(n as u16).to_be_bytes());
    l.extend_from_slice(&[0; 4]);
    for &(lba, count) in ranges {
        l.extend_from_slice(&lba.to_be_bytes());
        l.extend_from_slice(&count.to_be_bytes());
        l.extend_from_slice(&[0; 4]);
    }
    l
}

/// PERSISTENT RESERVE OUT: service action, scope 0 (LU_SCOPE) and type, parameter list
/// length `len`.
pub fn pr_out(service_action: u8, rtype: u8, len: u32) -> Vec<u8> {
    let mut c = vec![PERSISTENT_RESERVE_OUT, service_action, rtype, 0, 0];
    c.extend_from_slice(&len.to_be_bytes());
    c.push(0);
    c
}

/// The basic 24-byte PERSISTENT RESERVE OUT parameter list; `flags` is byte 20 (APTPL = 1).
pub fn pr_out_params(key: u64, sa_key: u64, flags: u8) -> Vec<u8> {
    let mut p = key.to_be_bytes().to_vec();
    p.extend_from_slice(&sa_key.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, flags, 0, 0, 0]);
    p
}

/// PERSISTENT RESERVE IN with `alloc` bytes of allocation length.
pub fn pr_in(service_action: u8, alloc: u16) -> Vec<u8> {
    let [hi, lo] = alloc.to_be_bytes();
    vec![
        PERSISTENT_RESERVE_IN,
        service_action,
        0,
        0,
        0,
        0,
        0,
        hi,
        lo,
        0,
    ]
}

/// PERSISTENT RESERVE IN/OUT service actions and reservation types (SPC-5 6.16, 6.17).
pub mod pr {
    // PERSISTENT RESERVE IN service actions.
    pub const READ_KEYS: u8 = 0x00;
    pub const READ_RESERVATION: u8 = 0x01;
    pub const REPORT_CAPABILITIES: u8 = 0x02;
    // PERSISTENT RESERVE OUT service actions.
    pub const REGISTER: u8 = 0x00;
    pub const RESERVE: u8 = 0x01;
    pub const RELEASE: u8 = 0x02;
    pub const CLEAR: u8 = 0x03;
    pub const PREEMPT: u8 = 0x04;
    pub const REGISTER_IGNORE: u8 = 0x06;
    // Reservation types.
    pub const WRITE_EXCLUSIVE: u8 = 0x01;
    /// Byte 20 of the PERSISTENT RESERVE OUT parameter list: APTPL.
    pub const APTPL: u8 = 0x01;
}
