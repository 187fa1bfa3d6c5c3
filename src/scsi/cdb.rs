//! Command descriptor blocks: opcodes, lengths and typed big-endian field access.
//!
//! The guest controls every CDB byte and the CDB area may be shorter than the command needs, so
//! a [`Cdb`] is a zero-padded copy: field reads can never go out of bounds, and
//! [`Cdb::is_truncated`] tells whether the guest actually supplied all the bytes the opcode uses.

/// Operation codes we know about (SPC-5, SBC-4).
pub mod opcode {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const READ_6: u8 = 0x08;
    pub const WRITE_6: u8 = 0x0a;
    pub const INQUIRY: u8 = 0x12;
    pub const MODE_SELECT_6: u8 = 0x15;
    pub const RESERVE_6: u8 = 0x16;
    pub const RELEASE_6: u8 = 0x17;
    pub const MODE_SENSE_6: u8 = 0x1a;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW_MEDIUM_REMOVAL: u8 = 0x1e;
    pub const READ_FORMAT_CAPACITIES: u8 = 0x23;
    pub const READ_CAPACITY_10: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const WRITE_10: u8 = 0x2a;
    pub const SEEK_10: u8 = 0x2b;
    pub const WRITE_AND_VERIFY_10: u8 = 0x2e;
    pub const VERIFY_10: u8 = 0x2f;
    pub const PRE_FETCH_10: u8 = 0x34;
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    pub const READ_DEFECT_DATA_10: u8 = 0x37;
    pub const WRITE_SAME_10: u8 = 0x41;
    pub const UNMAP: u8 = 0x42;
    pub const SANITIZE: u8 = 0x48;
    pub const LOG_SENSE: u8 = 0x4d;
    pub const MODE_SELECT_10: u8 = 0x55;
    pub const RESERVE_10: u8 = 0x56;
    pub const RELEASE_10: u8 = 0x57;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_TOC_PMA_ATIP: u8 = 0x43;
    pub const GET_CONFIGURATION: u8 = 0x46;
    pub const GET_EVENT_STATUS_NOTIFICATION: u8 = 0x4a;
    pub const READ_DISC_INFORMATION: u8 = 0x51;
    pub const READ_TRACK_INFORMATION: u8 = 0x52;
    pub const PERSISTENT_RESERVE_IN: u8 = 0x5e;
    pub const PERSISTENT_RESERVE_OUT: u8 = 0x5f;
    /// EXTENDED COPY; LID1 is service action 00h.
    pub const EXTENDED_COPY: u8 = 0x83;
    /// RECEIVE COPY RESULTS (LID1 service actions 00h COPY STATUS, 03h OPERATING PARAMETERS).
    pub const RECEIVE_COPY_RESULTS: u8 = 0x84;
    pub const COMPARE_AND_WRITE: u8 = 0x89;
    pub const ORWRITE_16: u8 = 0x8b;
    pub const READ_16: u8 = 0x88;
    pub const WRITE_16: u8 = 0x8a;
    pub const WRITE_AND_VERIFY_16: u8 = 0x8e;
    pub const VERIFY_16: u8 = 0x8f;
    pub const PRE_FETCH_16: u8 = 0x90;
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    pub const WRITE_SAME_16: u8 = 0x93;
    pub const WRITE_ATOMIC_16: u8 = 0x9c;
    /// SERVICE ACTION IN(16); READ CAPACITY(16) is its service action 10h.
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    pub const REPORT_LUNS: u8 = 0xa0;
    /// MAINTENANCE IN; REPORT SUPPORTED OPERATION CODES is its service action 0Ch.
    pub const MAINTENANCE_IN: u8 = 0xa3;
    pub const READ_12: u8 = 0xa8;
    pub const WRITE_12: u8 = 0xaa;
    pub const WRITE_AND_VERIFY_12: u8 = 0xae;
    pub const VERIFY_12: u8 = 0xaf;
    pub const GET_PERFORMANCE: u8 = 0xac;
    pub const READ_DVD_STRUCTURE: u8 = 0xad;
    pub const READ_CD: u8 = 0xbe;
    pub const MECHANISM_STATUS: u8 = 0xbd;
    pub const READ_DEFECT_DATA_12: u8 = 0xb7;
}

/// Service actions.
pub mod service_action {
    pub const READ_CAPACITY_16: u16 = 0x10;
    pub const GET_LBA_STATUS: u16 = 0x12;
    pub const REPORT_SUPPORTED_OPERATION_CODES: u16 = 0x0c;
    pub const REPORT_SUPPORTED_TMFS: u16 = 0x0d;
    /// EXTENDED COPY (LID1).
    pub const EXTENDED_COPY_LID1: u16 = 0x00;
    /// RECEIVE COPY RESULTS service actions (LID1).
    pub const COPY_STATUS: u16 = 0x00;
    pub const OPERATING_PARAMETERS: u16 = 0x03;
    /// SANITIZE service actions (SBC-4 table 52).
    pub const SANITIZE_OVERWRITE: u16 = 0x01;
    pub const SANITIZE_BLOCK_ERASE: u16 = 0x02;
    pub const SANITIZE_CRYPTO_ERASE: u16 = 0x03;
    pub const SANITIZE_EXIT_FAILURE_MODE: u16 = 0x1f;
}

/// Largest CDB we look at (virtio-scsi's default CDB area).
pub const MAX_CDB_LEN: usize = 32;

/// The CDB length implied by the opcode's group code, or `None` for groups we implement no
/// command in (3: variable length/reserved, 6 and 7: vendor specific).
pub fn cdb_len(opcode: u8) -> Option<usize> {
    match opcode >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

/// A zero-padded copy of the guest's CDB.
#[derive(Clone, Copy)]
pub struct Cdb {
    bytes: [u8; MAX_CDB_LEN],
    supplied: usize,
}

impl Cdb {
    pub fn new(raw: &[u8]) -> Self {
        let supplied = raw.len().min(MAX_CDB_LEN);
        let mut bytes = [0u8; MAX_CDB_LEN];
        bytes[..supplied].copy_from_slice(&raw[..supplied]);
        Self { bytes, supplied }
    }

    pub fn opcode(&self) -> u8 {
        self.bytes[0]
    }

    /// Whether the guest supplied fewer bytes than the opcode's CDB length.
    pub fn is_truncated(&self) -> bool {
        self.supplied == 0 || cdb_len(self.opcode()).is_some_and(|len| self.supplied < len)
    }

    /// Byte `i` (zero beyond the supplied bytes and beyond [`MAX_CDB_LEN`]).
    pub fn byte(&self, i: usize) -> u8 {
        self.bytes.get(i).copied().unwrap_or(0)
    }

    /// Whether any bit of `mask` is set in byte `i`.
    pub fn bit(&self, i: usize, mask: u8) -> bool {
        self.byte(i) & mask != 0
    }

    pub fn be16(&self, i: usize) -> u16 {
        be16(&self.bytes, i)
    }

    pub fn be24(&self, i: usize) -> u32 {
        be24(&self.bytes, i)
    }

    pub fn be32(&self, i: usize) -> u32 {
        be32(&self.bytes, i)
    }

    pub fn be64(&self, i: usize) -> u64 {
        be64(&self.bytes, i)
    }

    /// SERVICE ACTION field of 12/16-byte CDBs that carry one in byte 1 bits 4..0.
    pub fn service_action(&self) -> u16 {
        u16::from(self.byte(1) & 0x1f)
    }
}

fn be_n<const N: usize>(buf: &[u8], i: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(src) = i.checked_add(N).and_then(|end| buf.get(i..end)) {
        out.copy_from_slice(src);
    }
    out
}

/// Big-endian field readers over a byte buffer; a field that does not fit reads as zero (callers
/// check lengths first, this only keeps a mistake from becoming a panic).
pub fn be16(buf: &[u8], i: usize) -> u16 {
    u16::from_be_bytes(be_n(buf, i))
}

pub fn be24(buf: &[u8], i: usize) -> u32 {
    let [a, b, c] = be_n(buf, i);
    u32::from_be_bytes([0, a, b, c])
}

pub fn be32(buf: &[u8], i: usize) -> u32 {
    u32::from_be_bytes(be_n(buf, i))
}

pub fn be64(buf: &[u8], i: usize) -> u64 {
    u64::from_be_bytes(be_n(buf, i))
}

/// Big-endian field writers into a response buffer, same bounds policy as the readers.
pub fn put_be16(buf: &mut [u8], i: usize, v: u16) {
    put(buf, i, &v.to_be_bytes());
}

pub fn put_be32(buf: &mut [u8], i: usize, v: u32) {
    put(buf, i, &v.to_be_bytes());
}

pub fn put_be64(buf: &mut [u8], i: usize, v: u64) {
    put(buf, i, &v.to_be_bytes());
}

fn put(buf: &mut [u8], i: usize, bytes: &[u8]) {
    if let Some(dst) = i
        .checked_add(bytes.len())
        .and_then(|end| buf.get_mut(i..end))
    {
        dst.copy_from_slice(bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_and_padding() {
        let c = Cdb::new(&[0x88, 0, 1, 2, 3, 4, 5, 6, 7, 8, 0, 0, 1, 0]);
        assert_eq!(c.be64(2), 0x0102_0304_0506_0708);
        assert_eq!(c.be32(10), 0x100);
        assert!(c.is_truncated(), "READ(16) needs 16 bytes");
        assert_eq!(c.byte(15), 0);
        assert_eq!(c.byte(1000), 0);
        assert!(!Cdb::new(&[0u8; 6]).is_truncated());
        assert!(Cdb::new(&[]).is_truncated());
        assert_eq!(be24(&[1, 2, 3], 0), 0x010203);
        assert_eq!(be32(&[1, 2, 3], 0), 0, "short buffer reads as zero");
        let mut b = [0u8; 4];
        put_be32(&mut b, 1, 0xdead_beef);
        assert_eq!(b, [0; 4], "out of bounds write is dropped");
        put_be16(&mut b, 2, 0x1234);
        assert_eq!(b, [0, 0, 0x12, 0x34]);
    }
}
