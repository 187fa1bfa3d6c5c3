//! REPORT SUPPORTED OPERATION CODES (SPC-5 6.35), REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS
//! (SPC-5 6.36) and the table of commands the first reports.
//!
//! Linux asks for WRITE SAME(10/16) this way before using them for REQ_OP_WRITE_ZEROES, so the
//! table must match what [`super::lun`] dispatches (a unit test checks that it does).

use super::{
    cdb::{opcode as op, put_be16, put_be32, service_action as sa, Cdb},
    lun::LogicalUnit,
    respond,
    sense::Sense,
    CmdResult, DataIn,
};

/// One supported command: opcode, service action (for opcodes that have them) and the CDB
/// USAGE DATA mask (its length is the CDB length).
pub struct CommandInfo {
    pub opcode: u8,
    pub service_action: Option<u16>,
    pub usage: &'static [u8],
}

const fn cmd(opcode: u8, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action: None,
        usage,
    }
}

const FF: u8 = 0xff;

/// `CommandInfo` for a command with a service action.
const fn cmd_sa(opcode: u8, service_action: u16, usage: &'static [u8]) -> CommandInfo {
    CommandInfo {
        opcode,
        service_action: Some(service_action),
        usage,
    }
}

const PR_IN_USAGE: &[u8] = &[0x5e, 0x1f, 0, 0, 0, 0, 0, FF, FF, 0];
const PR_OUT_USAGE: &[u8] = &[0x5f, 0x1f, FF, 0, 0, FF, FF, FF, FF, 0];
const LBA16: [u8; 12] = [FF; 12];
/// SANITIZE: IMMED, ZNR, AUSE, SERVICE ACTION; PARAMETER LIST LENGTH.
const SANITIZE_USAGE: &[u8] = &[0x48, 0xff, 0, 0, 0, 0, 0, FF, FF, 0];
/// RECEIVE COPY RESULTS: SERVICE ACTION, LIST IDENTIFIER, ALLOCATION LENGTH.
const RCR_USAGE: &[u8] = &[0x84, 0x1f, FF, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0];

/// Builds a 16-byte usage mask: opcode, byte 1, LBA + length (bytes 2..14), bytes 14, 15.
const fn u16b(opcode: u8, b1: u8, lba_len: [u8; 12], b14: u8) -> [u8; 16] {
    let mut u = [0u8; 16];
    u[0] = opcode;
    u[1] = b1;
    let mut i = 0;
    while i < 12 {
        u[2 + i] = lba_len[i];
        i += 1;
    }
    u[14] = b14;
    u
}

/// Every command a configured LU implements, by opcode then service action. UNMAP is filtered
/// out when discard is off.
pub const COMMANDS: &[CommandInfo] = &[
    cmd(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, 0]),
    cmd(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, FF, 0]),
    cmd(op::READ_6, &[0x08, 0x1f, FF, FF, FF, 0]),
    cmd(op::WRITE_6, &[0x0a, 0x1f, FF, FF, FF, 0]),
    cmd(op::INQUIRY, &[0x12, 0x01, FF, FF, FF, 0]),
    cmd(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, FF, 0]),
    cmd(op::RESERVE_6, &[0x16, 0, 0, 0, 0, 0]),
    cmd(op::RELEASE_6, &[0x17, 0, 0, 0, 0, 0]),
    cmd(op::MODE_SENSE_6, &[0x1a, 0x08, FF, FF, FF, 0]),
    cmd(op::START_STOP_UNIT, &[0x1b, 0x01, 0, 0x0f, 0xf7, 0]),
    cmd(op::PREVENT_ALLOW_MEDIUM_REMOVAL, &[0x1e, 0, 0, 0, 0x03, 0]),
    cmd(
        op::READ_FORMAT_CAPACITIES,
        &[0x23, 0, 0, 0, 0, 0, 0, FF, FF, 0],
    ),
    cmd(
        op::READ_CAPACITY_10,
        &[0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, 0],
    ),
    cmd(op::READ_10, &[0x28, 0xf8, FF, FF, FF, FF, 0, FF, FF, 0]),
    cmd(op::WRITE_10, &[0x2a, 0xf8, FF, FF, FF, FF, 0, FF, FF, 0]),
    cmd(op::SEEK_10, &[0x2b, 0, FF, FF, FF, FF, 0, 0, 0, 0]),
    cmd(
        op::WRITE_AND_VERIFY_10,
        &[0x2e, 0xf2, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    cmd(op::VERIFY_10, &[0x2f, 0xf6, FF, FF, FF, FF, 0, FF, FF, 0]),
    cmd(
        op::PRE_FETCH_10,
        &[0x34, 0x02, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    cmd(
        op::SYNCHRONIZE_CACHE_10,
        &[0x35, 0x02, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    cmd(
        op::READ_DEFECT_DATA_10,
        &[0x37, 0, 0x1f, 0, 0, 0, 0, FF, FF, 0],
    ),
    cmd(
        op::WRITE_SAME_10,
        &[0x41, 0xe8, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    cmd(op::UNMAP, &[0x42, 0, 0, 0, 0, 0, 0, FF, FF, 0]),
    cmd_sa(op::SANITIZE, sa::SANITIZE_OVERWRITE, SANITIZE_USAGE),
    cmd_sa(op::SANITIZE, sa::SANITIZE_BLOCK_ERASE, SANITIZE_USAGE),
    cmd_sa(op::SANITIZE, sa::SANITIZE_EXIT_FAILURE_MODE, SANITIZE_USAGE),
    cmd(op::LOG_SENSE, &[0x4d, 0x01, FF, FF, 0, FF, FF, FF, FF, 0]),
    cmd(op::MODE_SELECT_10, &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, 0]),
    cmd(op::RESERVE_10, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd(op::RELEASE_10, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd(op::MODE_SENSE_10, &[0x5a, 0x18, FF, FF, 0, 0, 0, FF, FF, 0]),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 0x00, PR_IN_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 0x01, PR_IN_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 0x02, PR_IN_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_IN, 0x03, PR_IN_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x00, PR_OUT_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x01, PR_OUT_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x02, PR_OUT_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x03, PR_OUT_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x04, PR_OUT_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x05, PR_OUT_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x06, PR_OUT_USAGE),
    cmd_sa(op::PERSISTENT_RESERVE_OUT, 0x07, PR_OUT_USAGE),
    cmd_sa(
        op::EXTENDED_COPY,
        sa::EXTENDED_COPY_LID1,
        &[0x83, 0x1f, 0, 0, 0, 0, 0, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
    cmd_sa(op::RECEIVE_COPY_RESULTS, sa::COPY_STATUS, RCR_USAGE),
    cmd_sa(
        op::RECEIVE_COPY_RESULTS,
        sa::OPERATING_PARAMETERS,
        RCR_USAGE,
    ),
    cmd(op::READ_16, &u16b(0x88, 0xf8, LBA16, 0)),
    cmd(
        op::COMPARE_AND_WRITE,
        &[
            0x89, 0xf8, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0, 0, FF, 0, 0,
        ],
    ),
    cmd(op::WRITE_16, &u16b(0x8a, 0xf8, LBA16, 0)),
    cmd(op::ORWRITE_16, &u16b(0x8b, 0xf8, LBA16, 0)),
    cmd(op::WRITE_AND_VERIFY_16, &u16b(0x8e, 0xf2, LBA16, 0)),
    cmd(op::VERIFY_16, &u16b(0x8f, 0xf6, LBA16, 0)),
    cmd(op::PRE_FETCH_16, &u16b(0x90, 0x02, LBA16, 0)),
    cmd(op::SYNCHRONIZE_CACHE_16, &u16b(0x91, 0x02, LBA16, 0)),
    cmd(op::WRITE_SAME_16, &u16b(0x93, 0xe9, LBA16, 0)),
    cmd(op::WRITE_ATOMIC_16, &u16b(0x9c, 0xf8, LBA16, 0)),
    cmd_sa(
        op::SERVICE_ACTION_IN_16,
        sa::READ_CAPACITY_16,
        &[
            0x9e, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x01, 0,
        ],
    ),
    cmd_sa(
        op::SERVICE_ACTION_IN_16,
        sa::GET_LBA_STATUS,
        &u16b(0x9e, 0x1f, LBA16, 0),
    ),
    cmd(
        op::REPORT_LUNS,
        &[0xa0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
    cmd_sa(
        op::MAINTENANCE_IN,
        sa::REPORT_SUPPORTED_OPERATION_CODES,
        &[0xa3, 0x1f, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    cmd_sa(
        op::MAINTENANCE_IN,
        sa::REPORT_SUPPORTED_TMFS,
        &[0xa3, 0x1f, 0x80, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
    cmd(
        op::READ_12,
        &[0xa8, 0xf8, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    cmd(
        op::WRITE_12,
        &[0xaa, 0xf8, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    cmd(
        op::WRITE_AND_VERIFY_12,
        &[0xae, 0xf2, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    cmd(
        op::VERIFY_12,
        &[0xaf, 0xf6, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    cmd(
        op::READ_DEFECT_DATA_12,
        &[0xb7, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
];

/// SUPPORT field values.
const SUPPORT_NONE: u8 = 0b001;
const SUPPORT_STANDARD: u8 = 0b011;
/// Command timeouts descriptor: length 0Ah, no timeout information.
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

impl LogicalUnit {
    /// The commands this LU implements, by opcode then service action.
    fn supported_commands(&self) -> Vec<&'static CommandInfo> {
        if self.is_cdrom() {
            return self.cdrom_commands();
        }
        COMMANDS
            .iter()
            .filter(move |c| c.opcode != op::UNMAP || self.discard)
            .collect()
    }

    pub(super) fn report_supported_opcodes(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let rctd = cdb.bit(2, 0x80);
        let options = cdb.byte(2) & 0x07;
        let requested_op = cdb.byte(3);
        let requested_sa = cdb.be16(4);
        let alloc_len = cdb.be32(6) as usize;
        let supported = self.supported_commands();
        let has_sa = |opcode: u8| {
            COMMANDS
                .iter()
                .any(|c| c.opcode == opcode && c.service_action.is_some())
        };

        let buf = match options {
            0 => {
                let mut b = vec![0u8; 4];
                for c in &supported {
                    b.push(c.opcode);
                    b.push(0);
                    b.extend_from_slice(&c.service_action.unwrap_or(0).to_be_bytes());
                    b.push(0);
                    let mut flags = 0;
                    if rctd {
                        flags |= 0x02; // CTDP
                    }
                    if c.service_action.is_some() {
                        flags |= 0x01; // SERVACTV
                    }
                    b.push(flags);
                    b.extend_from_slice(&(c.usage.len() as u16).to_be_bytes());
                    if rctd {
                        b.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
                    }
                }
                let n = b.len() - 4;
                put_be32(&mut b, 0, n as u32);
                b
            }
            1..=3 => {
                let want_sa = match options {
                    1 if has_sa(requested_op) => return Err(Sense::invalid_cdb_field(2, Some(2))),
                    1 => None,
                    2 if !has_sa(requested_op) => return Err(Sense::invalid_cdb_field(2, Some(2))),
                    2 => Some(requested_sa),
                    _ => has_sa(requested_op).then_some(requested_sa),
                };
                let found = supported
                    .iter()
                    .find(|c| c.opcode == requested_op && c.service_action == want_sa);
                match found {
                    Some(c) => {
                        let mut b = vec![0, SUPPORT_STANDARD | if rctd { 0x80 } else { 0 }, 0, 0];
                        put_be16(&mut b, 2, c.usage.len() as u16);
                        b.extend_from_slice(c.usage);
                        if rctd {
                            b.extend_from_slice(&TIMEOUTS_DESCRIPTOR);
                        }
                        b
                    }
                    None => vec![0, SUPPORT_NONE, 0, 0],
                }
            }
            _ => return Err(Sense::invalid_cdb_field(2, Some(2))),
        };
        Ok(respond(data_in, &buf, alloc_len))
    }

    /// REPORT SUPPORTED TASK MANAGEMENT FUNCTIONS: what the virtio-scsi control queue
    /// implements (src/virtio/control.rs): ABORT TASK, ABORT TASK SET, CLEAR TASK SET, LOGICAL
    /// UNIT RESET, QUERY TASK, QUERY TASK SET and I_T NEXUS RESET. CLEAR ACA is rejected,
    /// virtio has no TARGET RESET, WAKEUP or QUERY ASYNCHRONOUS EVENT.
    pub(super) fn report_supported_tmfs(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let alloc_len = cdb.be32(6) as usize;
        if alloc_len < 4 {
            return Err(Sense::invalid_cdb_field(6, Some(7)));
        }
        // ATS ATSS CTSS LURS QTS; QTSS ITNRS.
        let mut b = vec![0xdc, 0x03, 0, 0];
        if cdb.bit(2, 0x80) {
            // REPTD: extended parameter data, no timeouts reported.
            b[3] = 0x0c;
            b.resize(16, 0);
        }
        Ok(respond(data_in, &b, alloc_len))
    }
}
