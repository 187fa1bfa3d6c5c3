//! Limits the device advertises (Block Limits VPD page B0h) and enforces in the commands that
//! the limits apply to: one place, so that what INQUIRY promises and what a command accepts
//! cannot drift apart. Also the copy manager's limits (RECEIVE COPY RESULTS OPERATING
//! PARAMETERS, Third-party Copy VPD page 8Fh) and the atomic write limits.

use super::cdb::{put_be16, put_be32};

/// Largest single READ/WRITE we advertise (VPD B0h MAXIMUM TRANSFER LENGTH). Bulk data moves
/// zero-copy, so this only bounds how long one command occupies a queue thread.
pub const MAX_TRANSFER_BYTES: u32 = 8 << 20;
/// MAXIMUM COMPARE AND WRITE LENGTH (VPD B0h byte 5), in logical blocks.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 128;

/// The atomic write limits of VPD B0h (SBC-4 6.6.4), in logical blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AtomicLimits {
    /// MAXIMUM ATOMIC TRANSFER LENGTH.
    pub max_atomic: u32,
    /// MAXIMUM ATOMIC TRANSFER LENGTH WITH ATOMIC BOUNDARY.
    pub max_with_boundary: u32,
    /// MAXIMUM ATOMIC BOUNDARY SIZE.
    pub max_boundary: u32,
}

impl AtomicLimits {
    /// ATOMIC ALIGNMENT and ATOMIC TRANSFER LENGTH GRANULARITY are 0 (no requirement): the
    /// exclusive write gate does not care where a write starts or how long it is. Every bound
    /// is MAXIMUM TRANSFER LENGTH; a write with an ATOMIC BOUNDARY is atomic as a whole, which
    /// is more than the boundary asks for.
    pub fn new(block_size: u32) -> Self {
        let max = MAX_TRANSFER_BYTES / block_size;
        Self {
            max_atomic: max,
            max_with_boundary: max,
            max_boundary: max,
        }
    }
}

/// Limits reported in OPERATING PARAMETERS and VPD 8Fh, and enforced here.
pub const MAX_CSCD_DESCRIPTORS: usize = 16;
pub const MAX_SEGMENT_DESCRIPTORS: usize = 64;
pub const CSCD_LEN: usize = 32;
/// Block → block segment descriptor: 4-byte header + DESCRIPTOR LENGTH 18h.
pub const SEGMENT_LEN: usize = 28;
pub const XCOPY_HEADER_LEN: usize = 16;
pub const MAX_DESCRIPTOR_LIST_LEN: usize =
    MAX_CSCD_DESCRIPTORS * CSCD_LEN + MAX_SEGMENT_DESCRIPTORS * SEGMENT_LEN;
/// MAXIMUM SEGMENT LENGTH in bytes: bounds how long one segment holds the queue thread.
pub const MAX_SEGMENT_BYTES: u32 = 64 << 20;
/// Copies that may run at once (one per queue thread at most; a bound for the records).
pub const MAX_CONCURRENT_COPIES: u8 = 16;

pub const CSCD_IDENTIFICATION: u8 = 0xe4;
pub const SEGMENT_BLOCK_TO_BLOCK: u8 = 0x02;

/// RECEIVE COPY RESULTS, OPERATING PARAMETERS (SPC-4 6.19.4), for an LU of `block_size`.
pub fn operating_parameters(block_size: u32) -> Vec<u8> {
    let mut b = vec![0u8; 46];
    put_be32(&mut b, 0, 42); // AVAILABLE DATA
    b[4] = 0x01; // SNLID: LIST ID USAGE 11b (no list identifier) is supported
    put_be16(&mut b, 8, MAX_CSCD_DESCRIPTORS as u16);
    put_be16(&mut b, 10, MAX_SEGMENT_DESCRIPTORS as u16);
    put_be32(&mut b, 12, MAX_DESCRIPTOR_LIST_LEN as u32);
    put_be32(&mut b, 16, MAX_SEGMENT_BYTES);
    // MAXIMUM INLINE DATA LENGTH, HELD DATA LIMIT, MAXIMUM STREAM DEVICE TRANSFER SIZE: 0.
    put_be16(&mut b, 34, u16::from(MAX_CONCURRENT_COPIES)); // TOTAL CONCURRENT COPIES
    b[36] = MAX_CONCURRENT_COPIES; // MAXIMUM CONCURRENT COPIES
    b[37] = block_size.trailing_zeros() as u8; // DATA SEGMENT GRANULARITY (log2)
    b[43] = 2; // IMPLEMENTED DESCRIPTOR LIST LENGTH
    b[44] = SEGMENT_BLOCK_TO_BLOCK;
    b[45] = CSCD_IDENTIFICATION;
    b
}

/// Third-party Copy VPD page 8Fh payload (SPC-4 7.8.17): Supported Commands, Parameter Data,
/// Supported Descriptors, Supported CSCD Descriptor IDs (none) and General Copy Operations.
pub fn third_party_copy_vpd(block_size: u32) -> Vec<u8> {
    let mut p = Vec::new();
    // 0001h Supported Commands: EXTENDED COPY (LID1) and RECEIVE COPY RESULTS COPY STATUS and
    // OPERATING PARAMETERS.
    p.extend_from_slice(&[
        0x00, 0x01, 0x00, 0x08, 0x07, 0x83, 0x01, 0x00, 0x84, 0x02, 0x00, 0x03,
    ]);
    // 0004h Parameter Data.
    let mut d = vec![0u8; 32];
    d[..4].copy_from_slice(&[0x00, 0x04, 0x00, 0x1c]);
    put_be16(&mut d, 8, MAX_CSCD_DESCRIPTORS as u16);
    put_be16(&mut d, 10, MAX_SEGMENT_DESCRIPTORS as u16);
    put_be32(&mut d, 12, MAX_DESCRIPTOR_LIST_LEN as u32);
    p.extend_from_slice(&d);
    // 0008h Supported Descriptors: block → block, identification CSCD.
    p.extend_from_slice(&[
        0x00,
        0x08,
        0x00,
        0x04,
        0x02,
        SEGMENT_BLOCK_TO_BLOCK,
        CSCD_IDENTIFICATION,
        0,
    ]);
    // 000Ch Supported CSCD Descriptor IDs: none (no list).
    p.extend_from_slice(&[0x00, 0x0c, 0x00, 0x04, 0, 0, 0, 0]);
    // 8001h General Copy Operations.
    let mut g = vec![0u8; 36];
    g[..4].copy_from_slice(&[0x80, 0x01, 0x00, 0x20]);
    put_be32(&mut g, 4, u32::from(MAX_CONCURRENT_COPIES));
    put_be32(&mut g, 8, u32::from(MAX_CONCURRENT_COPIES));
    put_be32(&mut g, 12, MAX_SEGMENT_BYTES);
    g[16] = block_size.trailing_zeros() as u8;
    p.extend_from_slice(&g);
    p
}
