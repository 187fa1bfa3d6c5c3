//! REPORT SUPPORTED OPERATION CODES (SPC-5 6.35) and the table of commands it reports.
//!
//! Linux asks for WRITE SAME(10/16) this way before using them for REQ_OP_WRITE_ZEROES, so the
//! table must match what [`super::lun`] dispatches (a unit test checks that it does).

use super::{
    cdb::{opcode as op, put_be16, put_be32, Cdb},
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

/// Every command a configured LU implements, by opcode. UNMAP is filtered out when discard is
/// off.
pub const COMMANDS: &[CommandInfo] = &[
    cmd(op::TEST_UNIT_READY, &[0x00, 0, 0, 0, 0, 0]),
    cmd(op::REQUEST_SENSE, &[0x03, 0x01, 0, 0, FF, 0]),
    cmd(op::READ_6, &[0x08, 0x1f, FF, FF, FF, 0]),
    cmd(op::WRITE_6, &[0x0a, 0x1f, FF, FF, FF, 0]),
    cmd(op::INQUIRY, &[0x12, 0x03, FF, FF, FF, 0]),
    cmd(op::MODE_SELECT_6, &[0x15, 0x11, 0, 0, FF, 0]),
    cmd(op::RESERVE_6, &[0x16, 0, 0, 0, 0, 0]),
    cmd(op::RELEASE_6, &[0x17, 0, 0, 0, 0, 0]),
    cmd(op::MODE_SENSE_6, &[0x1a, 0x08, FF, FF, FF, 0]),
    cmd(op::START_STOP_UNIT, &[0x1b, 0, 0, 0, 0, 0]),
    cmd(op::PREVENT_ALLOW_MEDIUM_REMOVAL, &[0x1e, 0, 0, 0, 0, 0]),
    cmd(
        op::READ_CAPACITY_10,
        &[0x25, 0, FF, FF, FF, FF, 0, 0, 0x01, 0],
    ),
    cmd(op::READ_10, &[0x28, 0xe0, FF, FF, FF, FF, 0, FF, FF, 0]),
    cmd(op::WRITE_10, &[0x2a, 0xe8, FF, FF, FF, FF, 0, FF, FF, 0]),
    cmd(op::SEEK_10, &[0x2b, 0, FF, FF, FF, FF, 0, 0, 0, 0]),
    cmd(
        op::WRITE_AND_VERIFY_10,
        &[0x2e, 0xe0, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    cmd(op::VERIFY_10, &[0x2f, 0xe6, FF, FF, FF, FF, 0, FF, FF, 0]),
    cmd(
        op::SYNCHRONIZE_CACHE_10,
        &[0x35, 0, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    cmd(
        op::WRITE_SAME_10,
        &[0x41, 0xe8, FF, FF, FF, FF, 0, FF, FF, 0],
    ),
    cmd(op::UNMAP, &[0x42, 0, 0, 0, 0, 0, 0, FF, FF, 0]),
    cmd(op::MODE_SELECT_10, &[0x55, 0x11, 0, 0, 0, 0, 0, FF, FF, 0]),
    cmd(op::RESERVE_10, &[0x56, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd(op::RELEASE_10, &[0x57, 0, 0, 0, 0, 0, 0, 0, 0, 0]),
    cmd(op::MODE_SENSE_10, &[0x5a, 0x18, FF, FF, 0, 0, 0, FF, FF, 0]),
    cmd(
        op::READ_16,
        &[
            0x88, 0xe0, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    cmd(
        op::WRITE_16,
        &[
            0x8a, 0xe8, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    cmd(
        op::WRITE_AND_VERIFY_16,
        &[
            0x8e, 0xe0, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    cmd(
        op::VERIFY_16,
        &[
            0x8f, 0xe6, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    cmd(
        op::SYNCHRONIZE_CACHE_16,
        &[
            0x91, 0, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    cmd(
        op::WRITE_SAME_16,
        &[
            0x93, 0xe9, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0,
        ],
    ),
    CommandInfo {
        opcode: op::SERVICE_ACTION_IN_16,
        service_action: Some(super::cdb::service_action::READ_CAPACITY_16),
        usage: &[
            0x9e, 0x1f, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, FF, 0x01, 0,
        ],
    },
    cmd(
        op::REPORT_LUNS,
        &[0xa0, 0, FF, 0, 0, 0, FF, FF, FF, FF, 0, 0],
    ),
    CommandInfo {
        opcode: op::MAINTENANCE_IN,
        service_action: Some(super::cdb::service_action::REPORT_SUPPORTED_OPERATION_CODES),
        usage: &[0xa3, 0x1f, 0x87, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    },
    cmd(
        op::READ_12,
        &[0xa8, 0xe0, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    cmd(
        op::WRITE_12,
        &[0xaa, 0xe8, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    cmd(
        op::WRITE_AND_VERIFY_12,
        &[0xae, 0xe0, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
    cmd(
        op::VERIFY_12,
        &[0xaf, 0xe6, FF, FF, FF, FF, FF, FF, FF, FF, 0, 0],
    ),
];

/// SUPPORT field values.
const SUPPORT_NONE: u8 = 0b001;
const SUPPORT_STANDARD: u8 = 0b011;
/// Command timeouts descriptor: length 0Ah, no timeout information.
const TIMEOUTS_DESCRIPTOR: [u8; 12] = [0x00, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

impl LogicalUnit {
    fn supported_commands(&self) -> impl Iterator<Item = &'static CommandInfo> + '_ {
        COMMANDS
            .iter()
            .filter(move |c| c.opcode != op::UNMAP || self.discard)
    }

    pub(super) fn report_supported_opcodes(&self, cdb: &Cdb, data_in: &DataIn<'_>) -> CmdResult {
        let rctd = cdb.bit(2, 0x80);
        let options = cdb.byte(2) & 0x07;
        let requested_op = cdb.byte(3);
        let requested_sa = cdb.be16(4);
        let alloc_len = cdb.be32(6) as usize;
        let has_sa = |opcode: u8| {
            COMMANDS
                .iter()
                .any(|c| c.opcode == opcode && c.service_action.is_some())
        };

        let buf = match options {
            0 => {
                let mut b = vec![0u8; 4];
                for c in self.supported_commands() {
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
                let found = self
                    .supported_commands()
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
}
