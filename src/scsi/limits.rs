//! Limits the device advertises (Block Limits VPD page B0h) and enforces in the commands that
//! the limits apply to: one place, so that what INQUIRY promises and what a command accepts
//! cannot drift apart.

/// Largest single READ/WRITE we advertise (VPD B0h MAXIMUM TRANSFER LENGTH). Bulk data moves
/// zero-copy, so this only bounds how long one command occupies a queue thread.
pub const MAX_TRANSFER_BYTES: u32 = 8 << 20;
/// MAXIMUM COMPARE AND WRITE LENGTH (VPD B0h byte 5), in logical blocks.
pub const MAX_COMPARE_AND_WRITE_BLOCKS: u8 = 128;
