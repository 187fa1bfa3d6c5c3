//! iSCSI PDU layer (RFC 7143 §11): the 48-byte Basic Header Segment of every opcode in both
//! directions, Additional Header Segments, the padded data segment and the CRC32C digests
//! (§13.1, Appendix B.4).
//!
//! Everything read from the network is hostile: the decoder never panics, every length is checked
//! against the caller's bound (the negotiated MaxRecvDataSegmentLength) and an absolute cap before
//! anything is allocated, digests are verified, unknown opcodes are a typed error.

use std::io::{self, IoSlice, Read, Write};

/// Length of the Basic Header Segment.
pub const BHS_LEN: usize = 48;
/// The reserved tag value (§11.2.1.8): "no task" / "no target transfer".
pub const RESERVED_TAG: u32 = 0xffff_ffff;
/// Absolute cap on a data segment we accept, whatever was negotiated: the 24-bit
/// DataSegmentLength field allows 16 MiB - 1, RFC 7143 §13.12 caps MaxRecvDataSegmentLength there.
pub const MAX_DATA_SEGMENT: u32 = (1 << 24) - 1;
/// TotalAHSLength is one byte counting 4-byte words.
pub const MAX_AHS_LEN: usize = 255 * 4;

/// Decoding and framing errors. None of them carries payload bytes.
#[derive(Debug, thiserror::Error)]
pub enum PduError {
    #[error("i/o error on the iSCSI connection: {0}")]
    Io(io::Error),
    #[error("connection closed by the target")]
    Closed,
    /// A read or write timed out part-way through a PDU: the target stopped sending (or
    /// reading) mid-PDU for longer than the socket's timeout (`SO_RCVTIMEO`/`SO_SNDTIMEO`).
    /// The connection is out of sync and must go.
    #[error("the target stalled mid-PDU for longer than the connection's timeout")]
    Stalled,
    /// The read timed out before the first byte of a PDU: nothing was consumed, the connection
    /// is still in sync (used for keepalive timers).
    #[error("no PDU received before the read timeout")]
    Idle,
    #[error("unknown or unexpected iSCSI opcode {0:#04x}")]
    UnknownOpcode(u8),
    #[error("data segment of {len} bytes exceeds the limit of {max} bytes")]
    DataSegmentTooLong { len: u32, max: u32 },
    #[error("header digest mismatch (received {received:#010x}, computed {computed:#010x})")]
    HeaderDigest { received: u32, computed: u32 },
    #[error("data digest mismatch (received {received:#010x}, computed {computed:#010x})")]
    DataDigest { received: u32, computed: u32 },
    #[error("malformed additional header segment")]
    BadAhs,
    #[error("malformed PDU: {0}")]
    Malformed(&'static str),
}

impl From<io::Error> for PduError {
    /// A timeout of a socket with `SO_RCVTIMEO`/`SO_SNDTIMEO` comes back as `EAGAIN`
    /// (`WouldBlock`), from `read`, `readv` and `writev` alike: named as what it means. (A
    /// timeout before the first byte of a PDU is [`PduError::Idle`], told apart where the
    /// header is read.)
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => PduError::Stalled,
            _ => PduError::Io(e),
        }
    }
}

/// Opcodes (§11.1.1). Initiator opcodes are 0x00-0x1f, target opcodes 0x20-0x3f.
pub mod opcode {
    pub const NOP_OUT: u8 = 0x00;
    pub const SCSI_COMMAND: u8 = 0x01;
    pub const TASK_MGMT_REQ: u8 = 0x02;
    pub const LOGIN_REQ: u8 = 0x03;
    pub const TEXT_REQ: u8 = 0x04;
    pub const DATA_OUT: u8 = 0x05;
    pub const LOGOUT_REQ: u8 = 0x06;
    pub const SNACK_REQ: u8 = 0x10;
    pub const NOP_IN: u8 = 0x20;
    pub const SCSI_RESPONSE: u8 = 0x21;
    pub const TASK_MGMT_RESP: u8 = 0x22;
    pub const LOGIN_RESP: u8 = 0x23;
    pub const TEXT_RESP: u8 = 0x24;
    pub const DATA_IN: u8 = 0x25;
    pub const LOGOUT_RESP: u8 = 0x26;
    pub const R2T: u8 = 0x31;
    pub const ASYNC_MSG: u8 = 0x32;
    pub const REJECT: u8 = 0x3f;
}

/// The CRC32C digest of §13.1, as sent on the wire (least significant byte first, Appendix B.4).
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p))
}

/// Bytes of padding after a data segment of `len` bytes (§11.1: multiple of 4).
pub fn pad_len(len: usize) -> usize {
    (4 - len % 4) % 4
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}
fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

/// NOP-Out (§11.18).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopOut {
    pub immediate: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Task attribute of a SCSI Command (§11.3.1).
pub mod task_attr {
    pub const UNTAGGED: u8 = 0;
    pub const SIMPLE: u8 = 1;
    pub const ORDERED: u8 = 2;
    pub const HEAD_OF_QUEUE: u8 = 3;
    pub const ACA: u8 = 4;
}

/// SCSI Command (§11.3). CDBs longer than 16 bytes go into an Extended CDB AHS (§11.3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiCommand {
    pub immediate: bool,
    pub final_: bool,
    pub read: bool,
    pub write: bool,
    pub attr: u8,
    pub lun: u64,
    pub itt: u32,
    pub expected_data_len: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub cdb: [u8; 16],
}

/// SCSI Response (§11.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScsiResponse {
    pub bidi_overflow: bool,
    pub bidi_underflow: bool,
    pub overflow: bool,
    pub underflow: bool,
    pub response: u8,
    pub status: u8,
    pub itt: u32,
    pub snack_tag: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub exp_data_sn: u32,
    pub bidi_residual: u32,
    pub residual: u32,
}

/// Task management functions (§11.5.1).
pub mod tmf {
    pub const ABORT_TASK: u8 = 1;
    pub const ABORT_TASK_SET: u8 = 2;
    pub const CLEAR_ACA: u8 = 3;
    pub const CLEAR_TASK_SET: u8 = 4;
    pub const LOGICAL_UNIT_RESET: u8 = 5;
    pub const TARGET_WARM_RESET: u8 = 6;
    pub const TARGET_COLD_RESET: u8 = 7;
    pub const TASK_REASSIGN: u8 = 8;
}

/// Task Management Function Request (§11.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskMgmtRequest {
    pub immediate: bool,
    pub function: u8,
    pub lun: u64,
    pub itt: u32,
    pub ref_task_tag: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
    pub ref_cmd_sn: u32,
    pub exp_data_sn: u32,
}

/// Task Management Function Response (§11.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TaskMgmtResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// SCSI Data-Out (§11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataOut {
    pub final_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
}

/// SCSI Data-In (§11.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DataIn {
    pub final_: bool,
    pub ack: bool,
    pub overflow: bool,
    pub underflow: bool,
    /// S bit: the PDU carries the command's status (phase collapse, §11.7.3).
    pub has_status: bool,
    pub status: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
    pub buffer_offset: u32,
    pub residual: u32,
}

/// Ready To Transfer (§11.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct R2t {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub r2t_sn: u32,
    pub buffer_offset: u32,
    pub desired_len: u32,
}

/// Asynchronous Message (§11.9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AsyncMessage {
    pub lun: u64,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub event: u8,
    pub vcode: u8,
    pub param1: u16,
    pub param2: u16,
    pub param3: u16,
}

/// Text Request (§11.10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextRequest {
    pub immediate: bool,
    pub final_: bool,
    pub continue_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Text Response (§11.11).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TextResponse {
    pub final_: bool,
    pub continue_: bool,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// Login stages (§11.12.3).
pub mod stage {
    pub const SECURITY: u8 = 0;
    pub const OPERATIONAL: u8 = 1;
    pub const FULL_FEATURE: u8 = 3;
}

/// Login Request (§11.12). Always sent with the immediate bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginRequest {
    pub transit: bool,
    pub continue_: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_min: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Login Response (§11.13).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LoginResponse {
    pub transit: bool,
    pub continue_: bool,
    pub csg: u8,
    pub nsg: u8,
    pub version_max: u8,
    pub version_active: u8,
    pub isid: [u8; 6],
    pub tsih: u16,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub status_class: u8,
    pub status_detail: u8,
}

/// Logout Request (§11.14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutRequest {
    pub immediate: bool,
    /// 0 close the session, 1 close the connection, 2 remove the connection for recovery.
    pub reason: u8,
    pub itt: u32,
    pub cid: u16,
    pub cmd_sn: u32,
    pub exp_stat_sn: u32,
}

/// Logout Response (§11.15).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogoutResponse {
    pub response: u8,
    pub itt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub time2wait: u16,
    pub time2retain: u16,
}

/// SNACK Request (§11.16). Only meaningful at ErrorRecoveryLevel > 0; encoded for completeness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SnackRequest {
    pub type_: u8,
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub exp_stat_sn: u32,
    pub beg_run: u32,
    pub run_length: u32,
}

/// Reject (§11.17). The data segment carries the rejected header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Reject {
    pub reason: u8,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
    pub data_sn: u32,
}

/// Reject reasons (§11.17.1).
pub mod reject_reason {
    pub const DATA_DIGEST_ERROR: u8 = 0x02;
    pub const SNACK_REJECT: u8 = 0x03;
    pub const PROTOCOL_ERROR: u8 = 0x04;
    pub const COMMAND_NOT_SUPPORTED: u8 = 0x05;
    pub const IMMEDIATE_COMMAND_REJECT: u8 = 0x06;
    pub const TASK_IN_PROGRESS: u8 = 0x07;
    pub const INVALID_DATA_ACK: u8 = 0x08;
    pub const INVALID_PDU_FIELD: u8 = 0x09;
    pub const LONG_OP_REJECT: u8 = 0x0a;
    pub const WAITING_FOR_LOGOUT: u8 = 0x0c;

    /// The reason in words.
    pub fn text(reason: u8) -> &'static str {
        match reason {
            DATA_DIGEST_ERROR => "data digest error",
            SNACK_REJECT => "SNACK reject",
            PROTOCOL_ERROR => "protocol error",
            COMMAND_NOT_SUPPORTED => "command not supported",
            IMMEDIATE_COMMAND_REJECT => "immediate command reject (too many)",
            TASK_IN_PROGRESS => "task in progress",
            INVALID_DATA_ACK => "invalid data ack",
            INVALID_PDU_FIELD => "invalid PDU field",
            LONG_OP_REJECT => "long operation reject (out of resources)",
            WAITING_FOR_LOGOUT => "waiting for logout",
            _ => "unknown reason",
        }
    }
}

/// NOP-In (§11.19).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct NopIn {
    pub lun: u64,
    pub itt: u32,
    pub ttt: u32,
    pub stat_sn: u32,
    pub exp_cmd_sn: u32,
    pub max_cmd_sn: u32,
}

/// A decoded Basic Header Segment, without the two length fields (those belong to the frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bhs {
    NopOut(NopOut),
    ScsiCommand(ScsiCommand),
    TaskMgmtRequest(TaskMgmtRequest),
    LoginRequest(LoginRequest),
    TextRequest(TextRequest),
    DataOut(DataOut),
    LogoutRequest(LogoutRequest),
    SnackRequest(SnackRequest),
    NopIn(NopIn),
    ScsiResponse(ScsiResponse),
    TaskMgmtResponse(TaskMgmtResponse),
    LoginResponse(LoginResponse),
    TextResponse(TextResponse),
    DataIn(DataIn),
    LogoutResponse(LogoutResponse),
    R2t(R2t),
    AsyncMessage(AsyncMessage),
    Reject(Reject),
}

const F: u8 = 0x80;
const I: u8 = 0x40;

fn flag(b: u8, mask: u8) -> bool {
    b & mask != 0
}
fn set(cond: bool, mask: u8) -> u8 {
    if cond {
        mask
    } else {
        0
    }
}

impl Bhs {
    /// The opcode of this header.
    pub fn opcode(&self) -> u8 {
        use opcode::*;
        match self {
            Bhs::NopOut(_) => NOP_OUT,
            Bhs::ScsiCommand(_) => SCSI_COMMAND,
            Bhs::TaskMgmtRequest(_) => TASK_MGMT_REQ,
            Bhs::LoginRequest(_) => LOGIN_REQ,
            Bhs::TextRequest(_) => TEXT_REQ,
            Bhs::DataOut(_) => DATA_OUT,
            Bhs::LogoutRequest(_) => LOGOUT_REQ,
            Bhs::SnackRequest(_) => SNACK_REQ,
            Bhs::NopIn(_) => NOP_IN,
            Bhs::ScsiResponse(_) => SCSI_RESPONSE,
            Bhs::TaskMgmtResponse(_) => TASK_MGMT_RESP,
            Bhs::LoginResponse(_) => LOGIN_RESP,
            Bhs::TextResponse(_) => TEXT_RESP,
            Bhs::DataIn(_) => DATA_IN,
            Bhs::LogoutResponse(_) => LOGOUT_RESP,
            Bhs::R2t(_) => R2T,
            Bhs::AsyncMessage(_) => ASYNC_MSG,
            Bhs::Reject(_) => REJECT,
        }
    }

    /// Encodes the header with the given TotalAHSLength (in bytes, a multiple of 4 up to
    /// [`MAX_AHS_LEN`]) and DataSegmentLength (up to [`MAX_DATA_SEGMENT`]).
    pub fn encode(&self, ahs_len: usize, data_len: u32) -> [u8; BHS_LEN] {
        debug_assert!(ahs_len % 4 == 0 && ahs_len <= MAX_AHS_LEN);
        debug_assert!(data_len <= MAX_DATA_SEGMENT);
        let mut b = [0u8; BHS_LEN];
        b[0] = self.opcode();
        b[4] = (ahs_len / 4) as u8;
        b[5..8].copy_from_slice(&data_len.to_be_bytes()[1..]);
        match self {
            Bhs::NopOut(p) => {
                b[0] |= set(p.immediate, I);
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Bhs::ScsiCommand(p) => {
                b[0] |= set(p.immediate, I);
                b[1] = set(p.final_, F) | set(p.read, 0x40) | set(p.write, 0x20) | (p.attr & 7);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.expected_data_len);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
                b[32..48].copy_from_slice(&p.cdb);
            }
            Bhs::TaskMgmtRequest(p) => {
                b[0] |= set(p.immediate, I);
                b[1] = F | (p.function & 0x7f);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ref_task_tag);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
                put32(&mut b, 32, p.ref_cmd_sn);
                put32(&mut b, 36, p.exp_data_sn);
            }
            Bhs::LoginRequest(p) => {
                b[0] |= I;
                b[1] =
                    set(p.transit, F) | set(p.continue_, 0x40) | ((p.csg & 3) << 2) | (p.nsg & 3);
                b[2] = p.version_max;
                b[3] = p.version_min;
                b[8..14].copy_from_slice(&p.isid);
                put16(&mut b, 14, p.tsih);
                put32(&mut b, 16, p.itt);
                put16(&mut b, 20, p.cid);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Bhs::TextRequest(p) => {
                b[0] |= set(p.immediate, I);
                b[1] = set(p.final_, F) | set(p.continue_, 0x40);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Bhs::DataOut(p) => {
                b[1] = set(p.final_, F);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 28, p.exp_stat_sn);
                put32(&mut b, 36, p.data_sn);
                put32(&mut b, 40, p.buffer_offset);
            }
            Bhs::LogoutRequest(p) => {
                b[0] |= set(p.immediate, I);
                b[1] = F | (p.reason & 0x7f);
                put32(&mut b, 16, p.itt);
                put16(&mut b, 20, p.cid);
                put32(&mut b, 24, p.cmd_sn);
                put32(&mut b, 28, p.exp_stat_sn);
            }
            Bhs::SnackRequest(p) => {
                b[1] = F | (p.type_ & 0x0f);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 28, p.exp_stat_sn);
                put32(&mut b, 40, p.beg_run);
                put32(&mut b, 44, p.run_length);
            }
            Bhs::NopIn(p) => {
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
            }
            Bhs::ScsiResponse(p) => {
                b[1] = F
                    | set(p.bidi_overflow, 0x10)
                    | set(p.bidi_underflow, 0x08)
                    | set(p.overflow, 0x04)
                    | set(p.underflow, 0x02);
                b[2] = p.response;
                b[3] = p.status;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.snack_tag);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.exp_data_sn);
                put32(&mut b, 40, p.bidi_residual);
                put32(&mut b, 44, p.residual);
            }
            Bhs::TaskMgmtResponse(p) => {
                b[1] = F;
                b[2] = p.response;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
            }
            Bhs::LoginResponse(p) => {
                b[1] =
                    set(p.transit, F) | set(p.continue_, 0x40) | ((p.csg & 3) << 2) | (p.nsg & 3);
                b[2] = p.version_max;
                b[3] = p.version_active;
                b[8..14].copy_from_slice(&p.isid);
                put16(&mut b, 14, p.tsih);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                b[36] = p.status_class;
                b[37] = p.status_detail;
            }
            Bhs::TextResponse(p) => {
                b[1] = set(p.final_, F) | set(p.continue_, 0x40);
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
            }
            Bhs::DataIn(p) => {
                b[1] = set(p.final_, F)
                    | set(p.ack, 0x40)
                    | set(p.overflow, 0x04)
                    | set(p.underflow, 0x02)
                    | set(p.has_status, 0x01);
                b[3] = p.status;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.data_sn);
                put32(&mut b, 40, p.buffer_offset);
                put32(&mut b, 44, p.residual);
            }
            Bhs::LogoutResponse(p) => {
                b[1] = F;
                b[2] = p.response;
                put32(&mut b, 16, p.itt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put16(&mut b, 40, p.time2wait);
                put16(&mut b, 42, p.time2retain);
            }
            Bhs::R2t(p) => {
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, p.itt);
                put32(&mut b, 20, p.ttt);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.r2t_sn);
                put32(&mut b, 40, p.buffer_offset);
                put32(&mut b, 44, p.desired_len);
            }
            Bhs::AsyncMessage(p) => {
                b[1] = F;
                put64(&mut b, 8, p.lun);
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                b[36] = p.event;
                b[37] = p.vcode;
                put16(&mut b, 38, p.param1);
                put16(&mut b, 40, p.param2);
                put16(&mut b, 42, p.param3);
            }
            Bhs::Reject(p) => {
                b[1] = F;
                b[2] = p.reason;
                put32(&mut b, 16, RESERVED_TAG);
                put32(&mut b, 24, p.stat_sn);
                put32(&mut b, 28, p.exp_cmd_sn);
                put32(&mut b, 32, p.max_cmd_sn);
                put32(&mut b, 36, p.data_sn);
            }
        }
        b
    }

    /// Decodes a header. Returns it with TotalAHSLength (bytes) and DataSegmentLength.
    /// Reserved fields are ignored (§11.2.1.1 says receivers should not check them).
    pub fn decode(b: &[u8; BHS_LEN]) -> Result<(Bhs, usize, u32), PduError> {
        use opcode::*;
        let op = b[0] & 0x3f;
        let imm = flag(b[0], I);
        let f1 = b[1];
        let ahs_len = b[4] as usize * 4;
        let data_len = u32::from_be_bytes([0, b[5], b[6], b[7]]);
        let lun = be64(b, 8);
        let itt = be32(b, 16);
        let bhs = match op {
            NOP_OUT => Bhs::NopOut(NopOut {
                immediate: imm,
                lun,
                itt,
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            SCSI_COMMAND => {
                let mut cdb = [0u8; 16];
                cdb.copy_from_slice(&b[32..48]);
                Bhs::ScsiCommand(ScsiCommand {
                    immediate: imm,
                    final_: flag(f1, F),
                    read: flag(f1, 0x40),
                    write: flag(f1, 0x20),
                    attr: f1 & 7,
                    lun,
                    itt,
                    expected_data_len: be32(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                    cdb,
                })
            }
            TASK_MGMT_REQ => Bhs::TaskMgmtRequest(TaskMgmtRequest {
                immediate: imm,
                function: f1 & 0x7f,
                lun,
                itt,
                ref_task_tag: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
                ref_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
            }),
            LOGIN_REQ => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Bhs::LoginRequest(LoginRequest {
                    transit: flag(f1, F),
                    continue_: flag(f1, 0x40),
                    csg: (f1 >> 2) & 3,
                    nsg: f1 & 3,
                    version_max: b[2],
                    version_min: b[3],
                    isid,
                    tsih: be16(b, 14),
                    itt,
                    cid: be16(b, 20),
                    cmd_sn: be32(b, 24),
                    exp_stat_sn: be32(b, 28),
                })
            }
            TEXT_REQ => Bhs::TextRequest(TextRequest {
                immediate: imm,
                final_: flag(f1, F),
                continue_: flag(f1, 0x40),
                lun,
                itt,
                ttt: be32(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            DATA_OUT => Bhs::DataOut(DataOut {
                final_: flag(f1, F),
                lun,
                itt,
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
            }),
            LOGOUT_REQ => Bhs::LogoutRequest(LogoutRequest {
                immediate: imm,
                reason: f1 & 0x7f,
                itt,
                cid: be16(b, 20),
                cmd_sn: be32(b, 24),
                exp_stat_sn: be32(b, 28),
            }),
            SNACK_REQ => Bhs::SnackRequest(SnackRequest {
                type_: f1 & 0x0f,
                lun,
                itt,
                ttt: be32(b, 20),
                exp_stat_sn: be32(b, 28),
                beg_run: be32(b, 40),
                run_length: be32(b, 44),
            }),
            NOP_IN => Bhs::NopIn(NopIn {
                lun,
                itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            SCSI_RESPONSE => Bhs::ScsiResponse(ScsiResponse {
                bidi_overflow: flag(f1, 0x10),
                bidi_underflow: flag(f1, 0x08),
                overflow: flag(f1, 0x04),
                underflow: flag(f1, 0x02),
                response: b[2],
                status: b[3],
                itt,
                snack_tag: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                exp_data_sn: be32(b, 36),
                bidi_residual: be32(b, 40),
                residual: be32(b, 44),
            }),
            TASK_MGMT_RESP => Bhs::TaskMgmtResponse(TaskMgmtResponse {
                response: b[2],
                itt,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            LOGIN_RESP => {
                let mut isid = [0u8; 6];
                isid.copy_from_slice(&b[8..14]);
                Bhs::LoginResponse(LoginResponse {
                    transit: flag(f1, F),
                    continue_: flag(f1, 0x40),
                    csg: (f1 >> 2) & 3,
                    nsg: f1 & 3,
                    version_max: b[2],
                    version_active: b[3],
                    isid,
                    tsih: be16(b, 14),
                    itt,
                    stat_sn: be32(b, 24),
                    exp_cmd_sn: be32(b, 28),
                    max_cmd_sn: be32(b, 32),
                    status_class: b[36],
                    status_detail: b[37],
                })
            }
            TEXT_RESP => Bhs::TextResponse(TextResponse {
                final_: flag(f1, F),
                continue_: flag(f1, 0x40),
                lun,
                itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
            }),
            DATA_IN => Bhs::DataIn(DataIn {
                final_: flag(f1, F),
                ack: flag(f1, 0x40),
                overflow: flag(f1, 0x04),
                underflow: flag(f1, 0x02),
                has_status: flag(f1, 0x01),
                status: b[3],
                lun,
                itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                residual: be32(b, 44),
            }),
            LOGOUT_RESP => Bhs::LogoutResponse(LogoutResponse {
                response: b[2],
                itt,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                time2wait: be16(b, 40),
                time2retain: be16(b, 42),
            }),
            R2T => Bhs::R2t(R2t {
                lun,
                itt,
                ttt: be32(b, 20),
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                r2t_sn: be32(b, 36),
                buffer_offset: be32(b, 40),
                desired_len: be32(b, 44),
            }),
            ASYNC_MSG => Bhs::AsyncMessage(AsyncMessage {
                lun,
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                event: b[36],
                vcode: b[37],
                param1: be16(b, 38),
                param2: be16(b, 40),
                param3: be16(b, 42),
            }),
            REJECT => Bhs::Reject(Reject {
                reason: b[2],
                stat_sn: be32(b, 24),
                exp_cmd_sn: be32(b, 28),
                max_cmd_sn: be32(b, 32),
                data_sn: be32(b, 36),
            }),
            other => return Err(PduError::UnknownOpcode(other)),
        };
        Ok((bhs, ahs_len, data_len))
    }
}

/// An Additional Header Segment (§11.2.2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ahs {
    pub ahs_type: u8,
    pub specific: u8,
    pub data: Vec<u8>,
}

/// AHS types (§11.2.2.3).
pub mod ahs_type {
    pub const EXTENDED_CDB: u8 = 1;
    pub const BIDI_READ_LENGTH: u8 = 2;
}

/// Serialises AHSs, each padded to 4 bytes.
pub fn encode_ahs(list: &[Ahs]) -> Result<Vec<u8>, PduError> {
    let mut out = Vec::new();
    for a in list {
        // AHSLength counts the bytes after the type byte (specific byte + data), §11.2.2.2.
        let len = u16::try_from(a.data.len() + 1).map_err(|_| PduError::BadAhs)?;
        out.extend_from_slice(&len.to_be_bytes());
        out.push(a.ahs_type);
        out.push(a.specific);
        out.extend_from_slice(&a.data);
        out.resize(out.len() + pad_len(a.data.len() + 4), 0);
    }
    if out.len() > MAX_AHS_LEN {
        return Err(PduError::BadAhs);
    }
    Ok(out)
}

/// Parses the AHS bytes of a PDU (already bounded by TotalAHSLength).
pub fn decode_ahs(mut b: &[u8]) -> Result<Vec<Ahs>, PduError> {
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 4 {
            return Err(PduError::BadAhs);
        }
        let len = be16(b, 0) as usize;
        if len == 0 {
            return Err(PduError::BadAhs);
        }
        let total = 3 + len;
        let padded = total + pad_len(total);
        if padded > b.len() {
            return Err(PduError::BadAhs);
        }
        out.push(Ahs {
            ahs_type: b[2],
            specific: b[3],
            data: b[4..total].to_vec(),
        });
        b = &b[padded..];
    }
    Ok(out)
}

/// Digest settings of a connection (§13.1): both off during login, then as negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Digests {
    pub header: bool,
    pub data: bool,
}

/// A received header: the decoded BHS, its raw bytes, the AHS bytes and the announced length of
/// the data segment, which is still on the wire (read it with [`read_data`] or
/// [`read_data_into`]).
#[derive(Debug, Clone)]
pub struct RecvHeader {
    pub bhs: Bhs,
    pub raw: [u8; BHS_LEN],
    pub ahs: Vec<u8>,
    pub data_len: u32,
}

/// `read_exact`, except that a clean end of stream before the first byte of a PDU is
/// [`PduError::Closed`] (the target hung up between PDUs) rather than a truncation.
fn read_exact_or_closed<R: Read>(r: &mut R, buf: &mut [u8], first: bool) -> Result<(), PduError> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) if first && got == 0 => return Err(PduError::Closed),
            Err(e)
                if first
                    && got == 0
                    && matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
            {
                return Err(PduError::Idle)
            }
            Ok(0) => return Err(PduError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads one header (BHS, AHS, header digest) and checks the announced data segment length
/// against `max_data` (the MaxRecvDataSegmentLength we declared) and [`MAX_DATA_SEGMENT`].
pub fn read_header<R: Read>(
    r: &mut R,
    digests: Digests,
    max_data: u32,
) -> Result<RecvHeader, PduError> {
    let mut raw = [0u8; BHS_LEN];
    read_exact_or_closed(r, &mut raw, true)?;
    let (bhs, ahs_len, data_len) = Bhs::decode(&raw)?;
    let max = max_data.min(MAX_DATA_SEGMENT);
    if data_len > max {
        return Err(PduError::DataSegmentTooLong { len: data_len, max });
    }
    // ahs_len <= 1020 by construction of the one-byte field.
    let mut ahs = vec![0u8; ahs_len];
    read_exact_or_closed(r, &mut ahs, false)?;
    if digests.header {
        let mut d = [0u8; 4];
        read_exact_or_closed(r, &mut d, false)?;
        let received = u32::from_le_bytes(d);
        let computed = crc32c(&[&raw, &ahs]);
        if received != computed {
            return Err(PduError::HeaderDigest { received, computed });
        }
    }
    Ok(RecvHeader {
        bhs,
        raw,
        ahs,
        data_len,
    })
}

/// Reads the data segment announced by `hdr` into `dst` (exactly `hdr.data_len` bytes long),
/// then the padding and the data digest. This is how Data-In lands directly in the caller's
/// buffer.
pub fn read_data_into<R: Read>(
    r: &mut R,
    digests: Digests,
    dst: &mut [u8],
) -> Result<(), PduError> {
    read_exact_or_closed(r, dst, false)?;
    let pad = pad_len(dst.len());
    let mut tail = [0u8; 8];
    let tail_len = pad
        + if digests.data && !dst.is_empty() {
            4
        } else {
            0
        };
    read_exact_or_closed(r, &mut tail[..tail_len], false)?;
    if digests.data && !dst.is_empty() {
        let received = u32::from_le_bytes([tail[pad], tail[pad + 1], tail[pad + 2], tail[pad + 3]]);
        let computed = crc32c(&[dst, &tail[..pad]]);
        if received != computed {
            return Err(PduError::DataDigest { received, computed });
        }
    }
    Ok(())
}

/// Reads the data segment of `hdr` into a new vector (its length was bounded by
/// [`read_header`]).
pub fn read_data<R: Read>(r: &mut R, digests: Digests, len: u32) -> Result<Vec<u8>, PduError> {
    let mut v = vec![0u8; len as usize];
    read_data_into(r, digests, &mut v)?;
    Ok(v)
}

/// Reads and discards a data segment (e.g. of a PDU we do not need the payload of).
pub fn skip_data<R: Read>(r: &mut R, digests: Digests, len: u32) -> Result<(), PduError> {
    let mut scratch = [0u8; 4096];
    let mut left = len as usize;
    let mut crc = 0u32;
    while left > 0 {
        let n = left.min(scratch.len());
        read_exact_or_closed(r, &mut scratch[..n], false)?;
        crc = crc32c::crc32c_append(crc, &scratch[..n]);
        left -= n;
    }
    let pad = pad_len(len as usize);
    let mut tail = [0u8; 8];
    let tail_len = pad + if digests.data && len > 0 { 4 } else { 0 };
    read_exact_or_closed(r, &mut tail[..tail_len], false)?;
    if digests.data && len > 0 {
        let received = u32::from_le_bytes([tail[pad], tail[pad + 1], tail[pad + 2], tail[pad + 3]]);
        let computed = crc32c::crc32c_append(crc, &tail[..pad]);
        if received != computed {
            return Err(PduError::DataDigest { received, computed });
        }
    }
    Ok(())
}

/// Writes one PDU: header, AHS, header digest, data (straight from the caller's slice), padding
/// and data digest, in as few system calls as the writer allows (vectored writes, so no copy of
/// the data).
pub fn write_pdu<W: Write>(
    w: &mut W,
    digests: Digests,
    bhs: &Bhs,
    ahs: &[u8],
    data: &[u8],
) -> Result<(), PduError> {
    if data.len() > MAX_DATA_SEGMENT as usize {
        return Err(PduError::DataSegmentTooLong {
            len: u32::try_from(data.len()).unwrap_or(u32::MAX),
            max: MAX_DATA_SEGMENT,
        });
    }
    if ahs.len() > MAX_AHS_LEN || ahs.len() % 4 != 0 {
        return Err(PduError::BadAhs);
    }
    let raw = bhs.encode(ahs.len(), data.len() as u32);
    let hd = crc32c(&[&raw, ahs]).to_le_bytes();
    let pad = [0u8; 4];
    let pad = &pad[..pad_len(data.len())];
    let dd = crc32c(&[data, pad]).to_le_bytes();
    let mut parts: Vec<&[u8]> = Vec::with_capacity(6);
    parts.push(&raw);
    if !ahs.is_empty() {
        parts.push(ahs);
    }
    if digests.header {
        parts.push(&hd);
    }
    if !data.is_empty() {
        parts.push(data);
        if !pad.is_empty() {
            parts.push(pad);
        }
        if digests.data {
            parts.push(&dd);
        }
    }
    write_all_parts(w, &parts)?;
    Ok(())
}

/// Appends the header part of a PDU (BHS, AHS, header digest) announcing a data segment of
/// `data_len` bytes to `out`: for a caller that sends the data segment itself (from scattered
/// memory), followed by [`pad_len`] zero bytes and no data digest.
pub fn encode_head_into(
    out: &mut Vec<u8>,
    digests: Digests,
    bhs: &Bhs,
    ahs: &[u8],
    data_len: usize,
) -> Result<(), PduError> {
    if data_len > MAX_DATA_SEGMENT as usize {
        return Err(PduError::DataSegmentTooLong {
            len: u32::try_from(data_len).unwrap_or(u32::MAX),
            max: MAX_DATA_SEGMENT,
        });
    }
    if ahs.len() > MAX_AHS_LEN || ahs.len() % 4 != 0 {
        return Err(PduError::BadAhs);
    }
    let raw = bhs.encode(ahs.len(), data_len as u32);
    out.extend_from_slice(&raw);
    out.extend_from_slice(ahs);
    if digests.header {
        out.extend_from_slice(&crc32c(&[&raw, ahs]).to_le_bytes());
    }
    Ok(())
}

/// `write_all` over several slices with vectored writes, handling short writes.
fn write_all_parts<W: Write>(w: &mut W, parts: &[&[u8]]) -> io::Result<()> {
    let mut idx = 0;
    let mut off = 0;
    while idx < parts.len() {
        let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(parts.len() - idx);
        slices.push(IoSlice::new(&parts[idx][off..]));
        for p in &parts[idx + 1..] {
            slices.push(IoSlice::new(p));
        }
        let mut n = match w.write_vectored(&slices) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 && idx < parts.len() {
            let left = parts[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
        while idx < parts.len() && parts[idx].len() == off {
            idx += 1;
            off = 0;
        }
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(bhs: Bhs, data: &[u8], digests: Digests) -> Vec<u8> {
        let mut wire = Vec::new();
        write_pdu(&mut wire, digests, &bhs, &[], data).unwrap();
        let mut r = &wire[..];
        let h = read_header(&mut r, digests, 1 << 20).unwrap();
        assert_eq!(h.bhs, bhs);
        assert_eq!(h.data_len as usize, data.len());
        let d = read_data(&mut r, digests, h.data_len).unwrap();
        assert_eq!(d, data);
        assert!(r.is_empty(), "trailing bytes after the PDU");
        wire
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 7143 Appendix B.4 test vectors.
    #[test]
    fn crc32c_rfc_vectors() {
        assert_eq!(
            crc32c(&[&[0u8; 32]]).to_le_bytes(),
            [0xaa, 0x36, 0x91, 0x8a]
        );
        assert_eq!(
            crc32c(&[&[0xffu8; 32]]).to_le_bytes(),
            [0x43, 0xab, 0xa8, 0x62]
        );
        let inc: Vec<u8> = (0..32).collect();
        assert_eq!(crc32c(&[&inc]).to_le_bytes(), [0x4e, 0x79, 0xdd, 0x46]);
        let dec: Vec<u8> = (0..32).rev().collect();
        assert_eq!(crc32c(&[&dec]).to_le_bytes(), [0x5c, 0xdb, 0x3f, 0x11]);
        // Split input gives the same digest (data + padding are digested in pieces).
        assert_eq!(crc32c(&[&inc[..7], &inc[7..]]), crc32c(&[&inc]));
    }

    #[test]
    fn nop_out_golden() {
        let b = Bhs::NopOut(NopOut {
            immediate: true,
            lun: 0x0001_0000_0000_0000,
            itt: 0x11223344,
            ttt: RESERVED_TAG,
            cmd_sn: 5,
            exp_stat_sn: 7,
        });
        let wire = roundtrip(b, b"ping", Digests::default());
        assert_eq!(
            wire,
            hex(
                "40 80 0000 00 000004 0001000000000000 11223344 ffffffff 00000005 00000007
                 00000000 00000000 00000000 00000000 70696e67"
            )
        );
    }

    #[test]
    fn scsi_command_golden() {
        let mut cdb = [0u8; 16];
        cdb[..10].copy_from_slice(&[0x28, 0, 0, 0, 0, 8, 0, 0, 1, 0]);
        let b = Bhs::ScsiCommand(ScsiCommand {
            immediate: false,
            final_: true,
            read: true,
            write: false,
            attr: task_attr::SIMPLE,
            lun: 0,
            itt: 1,
            expected_data_len: 512,
            cmd_sn: 0x10,
            exp_stat_sn: 0x20,
            cdb,
        });
        let wire = roundtrip(b, &[], Digests::default());
        assert_eq!(
            wire,
            hex(
                "01 c1 0000 00 000000 0000000000000000 00000001 00000200 00000010 00000020
                 28000000 00080000 01000000 00000000"
            )
        );
        // A write with immediate data, padded to 4 bytes, with both digests.
        let w = Bhs::ScsiCommand(ScsiCommand {
            write: true,
            read: false,
            ..match b {
                Bhs::ScsiCommand(c) => c,
                _ => unreachable!(),
            }
        });
        let d = Digests {
            header: true,
            data: true,
        };
        let wire = roundtrip(w, &[1, 2, 3, 4, 5], d);
        assert_eq!(wire.len(), 48 + 4 + 8 + 4);
        assert_eq!(&wire[52..57], &[1, 2, 3, 4, 5]);
        assert_eq!(&wire[57..60], &[0, 0, 0]);
        assert_eq!(
            u32::from_le_bytes(wire[48..52].try_into().unwrap()),
            crc32c(&[&wire[..48]])
        );
        assert_eq!(
            u32::from_le_bytes(wire[60..64].try_into().unwrap()),
            crc32c(&[&wire[52..60]])
        );
    }

    #[test]
    fn scsi_response_golden() {
        let b = Bhs::ScsiResponse(ScsiResponse {
            underflow: true,
            status: 2,
            itt: 9,
            stat_sn: 3,
            exp_cmd_sn: 4,
            max_cmd_sn: 0x23,
            residual: 0x100,
            ..Default::default()
        });
        let wire = roundtrip(b, &[0, 2, 0x70, 0], Digests::default());
        assert_eq!(
            wire,
            hex(
                "21 82 00 02 00 000004 0000000000000000 00000009 00000000 00000003 00000004
                 00000023 00000000 00000000 00000100 00027000"
            )
        );
    }

    #[test]
    fn task_mgmt_golden() {
        let b = Bhs::TaskMgmtRequest(TaskMgmtRequest {
            immediate: true,
            function: tmf::ABORT_TASK,
            lun: 0,
            itt: 2,
            ref_task_tag: 1,
            cmd_sn: 6,
            exp_stat_sn: 7,
            ref_cmd_sn: 5,
            exp_data_sn: 0,
        });
        assert_eq!(
            roundtrip(b, &[], Digests::default()),
            hex(
                "42 81 0000 00 000000 0000000000000000 00000002 00000001 00000006 00000007
                 00000005 00000000 00000000 00000000"
            )
        );
        let r = Bhs::TaskMgmtResponse(TaskMgmtResponse {
            response: 0,
            itt: 2,
            stat_sn: 7,
            exp_cmd_sn: 6,
            max_cmd_sn: 38,
        });
        assert_eq!(
            roundtrip(r, &[], Digests::default()),
            hex(
                "22 80 0000 00 000000 0000000000000000 00000002 00000000 00000007 00000006
                 00000026 00000000 00000000 00000000"
            )
        );
    }

    #[test]
    fn login_golden() {
        let b = Bhs::LoginRequest(LoginRequest {
            transit: true,
            continue_: false,
            csg: stage::OPERATIONAL,
            nsg: stage::FULL_FEATURE,
            version_max: 0,
            version_min: 0,
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
            tsih: 0,
            itt: 0,
            cid: 1,
            cmd_sn: 1,
            exp_stat_sn: 0,
        });
        assert_eq!(
            roundtrip(b, b"A=B\0", Digests::default()),
            hex(
                "43 87 0000 00 000004 80123456789a0000 00000000 00010000 00000001 00000000
                 00000000 00000000 00000000 00000000 413d4200"
            )
        );
        let r = Bhs::LoginResponse(LoginResponse {
            transit: true,
            csg: 1,
            nsg: 3,
            isid: [0x80, 0x12, 0x34, 0x56, 0x78, 0x9a],
            tsih: 0x0102,
            stat_sn: 0x55,
            exp_cmd_sn: 1,
            max_cmd_sn: 1,
            status_class: 2,
            status_detail: 1,
            ..Default::default()
        });
        assert_eq!(
            roundtrip(r, &[], Digests::default()),
            hex(
                "23 87 0000 00 000000 80123456789a0102 00000000 00000000 00000055 00000001
                 00000001 0201 0000 00000000 00000000"
            )
        );
    }

    #[test]
    fn text_golden() {
        let b = Bhs::TextRequest(TextRequest {
            immediate: true,
            final_: true,
            continue_: false,
            lun: 0,
            itt: 3,
            ttt: RESERVED_TAG,
            cmd_sn: 1,
            exp_stat_sn: 2,
        });
        assert_eq!(
            roundtrip(b, b"SendTargets=All\0", Digests::default()),
            [
                hex(
                    "44 80 0000 00 000010 0000000000000000 00000003 ffffffff 00000001 00000002
                     00000000 00000000 00000000 00000000"
                ),
                b"SendTargets=All\0".to_vec()
            ]
            .concat()
        );
        let r = Bhs::TextResponse(TextResponse {
            final_: false,
            continue_: true,
            lun: 0,
            itt: 3,
            ttt: 0x77,
            stat_sn: 2,
            exp_cmd_sn: 2,
            max_cmd_sn: 2,
        });
        assert_eq!(
            roundtrip(r, &[], Digests::default()),
            hex(
                "24 40 0000 00 000000 0000000000000000 00000003 00000077 00000002 00000002
                 00000002 00000000 00000000 00000000"
            )
        );
    }

    #[test]
    fn data_out_in_golden() {
        let b = Bhs::DataOut(DataOut {
            final_: true,
            lun: 0x0002_0000_0000_0000,
            itt: 4,
            ttt: 0x1234,
            exp_stat_sn: 9,
            data_sn: 2,
            buffer_offset: 0x4000,
        });
        assert_eq!(
            roundtrip(b, &[0xab; 3], Digests::default()),
            hex(
                "05 80 0000 00 000003 0002000000000000 00000004 00001234 00000000 00000009
                 00000000 00000002 00004000 00000000 abababab"
            )
            .into_iter()
            .take(51)
            .chain([0])
            .collect::<Vec<u8>>()
        );
        let d = Bhs::DataIn(DataIn {
            final_: true,
            has_status: true,
            underflow: true,
            status: 0,
            lun: 0,
            itt: 4,
            ttt: RESERVED_TAG,
            stat_sn: 10,
            exp_cmd_sn: 11,
            max_cmd_sn: 42,
            data_sn: 0,
            buffer_offset: 0,
            residual: 512,
            ..Default::default()
        });
        assert_eq!(
            roundtrip(d, &[7; 4], Digests::default()),
            hex(
                "25 83 0000 00 000004 0000000000000000 00000004 ffffffff 0000000a 0000000b
                 0000002a 00000000 00000000 00000200 07070707"
            )
        );
    }

    #[test]
    fn logout_golden() {
        let b = Bhs::LogoutRequest(LogoutRequest {
            immediate: true,
            reason: 0,
            itt: 5,
            cid: 1,
            cmd_sn: 8,
            exp_stat_sn: 9,
        });
        assert_eq!(
            roundtrip(b, &[], Digests::default()),
            hex(
                "46 80 0000 00 000000 0000000000000000 00000005 00010000 00000008 00000009
                 00000000 00000000 00000000 00000000"
            )
        );
        let r = Bhs::LogoutResponse(LogoutResponse {
            response: 0,
            itt: 5,
            stat_sn: 9,
            exp_cmd_sn: 8,
            max_cmd_sn: 40,
            time2wait: 2,
            time2retain: 20,
        });
        assert_eq!(
            roundtrip(r, &[], Digests::default()),
            hex(
                "26 80 0000 00 000000 0000000000000000 00000005 00000000 00000009 00000008
                 00000028 00000000 0002 0014 00000000"
            )
        );
    }

    #[test]
    fn r2t_async_reject_nopin_snack_golden() {
        let r = Bhs::R2t(R2t {
            lun: 0,
            itt: 6,
            ttt: 0x99,
            stat_sn: 3,
            exp_cmd_sn: 4,
            max_cmd_sn: 5,
            r2t_sn: 1,
            buffer_offset: 0x10000,
            desired_len: 0x4000,
        });
        assert_eq!(
            roundtrip(r, &[], Digests::default()),
            hex(
                "31 80 0000 00 000000 0000000000000000 00000006 00000099 00000003 00000004
                 00000005 00000001 00010000 00004000"
            )
        );
        let a = Bhs::AsyncMessage(AsyncMessage {
            lun: 0x0001_0000_0000_0000,
            stat_sn: 3,
            exp_cmd_sn: 4,
            max_cmd_sn: 5,
            event: 1,
            vcode: 0,
            param1: 0,
            param2: 0,
            param3: 10,
        });
        assert_eq!(
            roundtrip(a, &[], Digests::default()),
            hex(
                "32 80 0000 00 000000 0001000000000000 ffffffff 00000000 00000003 00000004
                 00000005 01 00 0000 0000 000a 00000000"
            )
        );
        let j = Bhs::Reject(Reject {
            reason: 0x04,
            stat_sn: 3,
            exp_cmd_sn: 4,
            max_cmd_sn: 5,
            data_sn: 0,
        });
        let rejected = [0u8; 48];
        let wire = roundtrip(j, &rejected, Digests::default());
        assert_eq!(
            &wire[..48],
            &hex(
                "3f 80 04 00 00 000030 0000000000000000 ffffffff 00000000 00000003 00000004
                  00000005 00000000 00000000 00000000"
            )[..]
        );
        let n = Bhs::NopIn(NopIn {
            lun: 0,
            itt: RESERVED_TAG,
            ttt: 0x42,
            stat_sn: 3,
            exp_cmd_sn: 4,
            max_cmd_sn: 5,
        });
        assert_eq!(
            roundtrip(n, &[], Digests::default()),
            hex(
                "20 80 0000 00 000000 0000000000000000 ffffffff 00000042 00000003 00000004
                 00000005 00000000 00000000 00000000"
            )
        );
        let s = Bhs::SnackRequest(SnackRequest {
            type_: 1,
            lun: 0,
            itt: RESERVED_TAG,
            ttt: RESERVED_TAG,
            exp_stat_sn: 3,
            beg_run: 2,
            run_length: 0,
        });
        assert_eq!(
            roundtrip(s, &[], Digests::default()),
            hex(
                "10 81 0000 00 000000 0000000000000000 ffffffff ffffffff 00000000 00000003
                 00000000 00000000 00000002 00000000"
            )
        );
    }

    #[test]
    fn ahs_roundtrip_and_bounds() {
        let list = vec![
            Ahs {
                ahs_type: ahs_type::EXTENDED_CDB,
                specific: 0,
                data: vec![1; 16],
            },
            Ahs {
                ahs_type: ahs_type::BIDI_READ_LENGTH,
                specific: 0,
                data: vec![0, 0, 2, 0],
            },
        ];
        let bytes = encode_ahs(&list).unwrap();
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(&bytes[..4], &[0, 17, 1, 0]);
        assert_eq!(decode_ahs(&bytes).unwrap(), list);
        // A PDU carrying them keeps them through a round trip, digest included.
        let mut wire = Vec::new();
        let d = Digests {
            header: true,
            data: false,
        };
        write_pdu(&mut wire, d, &Bhs::NopOut(NopOut::default()), &bytes, &[]).unwrap();
        let h = read_header(&mut &wire[..], d, 0).unwrap();
        assert_eq!(decode_ahs(&h.ahs).unwrap(), list);
        // Truncated or zero-length AHSs are errors.
        assert!(matches!(decode_ahs(&bytes[..10]), Err(PduError::BadAhs)));
        assert!(matches!(decode_ahs(&[0, 0, 1, 0]), Err(PduError::BadAhs)));
        assert!(matches!(decode_ahs(&[0, 1]), Err(PduError::BadAhs)));
    }

    #[test]
    fn hostile_headers_are_typed_errors() {
        // Unknown opcode.
        let mut raw = [0u8; 48];
        raw[0] = 0x1e;
        assert!(matches!(
            read_header(&mut &raw[..], Digests::default(), 8192),
            Err(PduError::UnknownOpcode(0x1e))
        ));
        // Data segment beyond the negotiated limit: rejected before any allocation.
        let mut raw = Bhs::NopIn(NopIn::default()).encode(0, 0);
        raw[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            read_header(&mut &raw[..], Digests::default(), 8192),
            Err(PduError::DataSegmentTooLong {
                len: 0xff_ffff,
                max: 8192
            })
        ));
        // Corrupt header digest.
        let d = Digests {
            header: true,
            data: true,
        };
        let mut wire = Vec::new();
        write_pdu(&mut wire, d, &Bhs::NopIn(NopIn::default()), &[], b"abcde").unwrap();
        let mut bad = wire.clone();
        bad[20] ^= 1;
        assert!(matches!(
            read_header(&mut &bad[..], d, 8192),
            Err(PduError::HeaderDigest { .. })
        ));
        // Corrupt data (or padding) digest.
        for at in [52, 59] {
            let mut bad = wire.clone();
            bad[at] ^= 0x10;
            let mut r = &bad[..];
            let h = read_header(&mut r, d, 8192).unwrap();
            assert!(matches!(
                read_data(&mut r, d, h.data_len),
                Err(PduError::DataDigest { .. })
            ));
        }
        // skip_data verifies the digest too.
        let mut r = &wire[..];
        let h = read_header(&mut r, d, 8192).unwrap();
        skip_data(&mut r, d, h.data_len).unwrap();
        assert!(r.is_empty());
        // Truncation: a clean EOF before a header is `Closed`, mid-PDU is an I/O error.
        assert!(matches!(
            read_header(&mut &[][..], Digests::default(), 8192),
            Err(PduError::Closed)
        ));
        assert!(matches!(
            read_header(&mut &wire[..30], d, 8192),
            Err(PduError::Io(_))
        ));
    }

    /// A socket with `SO_RCVTIMEO` answers a timeout with `EAGAIN`: before the first byte of a
    /// PDU that is `Idle` (nothing consumed, still in sync), after it `Stalled`, whether in
    /// the header or in the data segment.
    #[test]
    fn timeouts_before_and_within_a_pdu() {
        /// Yields `bytes`, then times out.
        struct TimesOut<'a>(&'a [u8]);
        impl Read for TimesOut<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let d = Digests::default();
        let bhs = Bhs::NopOut(NopOut {
            immediate: true,
            lun: 0,
            itt: 7,
            ttt: RESERVED_TAG,
            cmd_sn: 1,
            exp_stat_sn: 1,
        });
        let mut wire = Vec::new();
        write_pdu(&mut wire, d, &bhs, &[], &[0x5a; 100]).unwrap();
        let r = read_header(&mut TimesOut(&[]), d, 8192);
        assert!(matches!(r, Err(PduError::Idle)), "{r:?}");
        let r = read_header(&mut TimesOut(&wire[..20]), d, 8192);
        assert!(matches!(r, Err(PduError::Stalled)), "{r:?}");
        let mut src = TimesOut(&wire[..BHS_LEN + 40]);
        let h = read_header(&mut src, d, 8192).unwrap();
        let r = read_data(&mut src, d, h.data_len);
        assert!(matches!(r, Err(PduError::Stalled)), "{r:?}");
        // `writev` on a socket with `SO_SNDTIMEO` times out the same way.
        let e: PduError = io::Error::from(io::ErrorKind::WouldBlock).into();
        assert!(matches!(e, PduError::Stalled));
        let e: PduError = io::Error::from(io::ErrorKind::BrokenPipe).into();
        assert!(matches!(e, PduError::Io(_)));
    }

    /// A small xorshift generator: deterministic, so a failure is reproducible from the seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut buf = vec![0u8; 4096];
        for i in 0..20000 {
            let len = (rng.next() % 4096) as usize;
            for b in buf[..len].iter_mut() {
                *b = rng.next() as u8;
            }
            // Half of the inputs get a plausible opcode and small lengths so that the later
            // stages (AHS, digests, data) are reached too.
            if i % 2 == 0 && len >= 48 {
                const OPS: [u8; 10] = [0x20, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x31, 0x32, 0x3f];
                buf[0] = OPS[(rng.next() % 10) as usize];
                buf[4] = (rng.next() % 4) as u8;
                buf[5] = 0;
                buf[6] = 0;
                buf[7] = (rng.next() % 200) as u8;
            }
            let d = Digests {
                header: i % 3 == 0,
                data: i % 5 == 0,
            };
            let mut r = &buf[..len];
            while let Ok(h) = read_header(&mut r, d, 8192) {
                let _ = decode_ahs(&h.ahs);
                if read_data(&mut r, d, h.data_len).is_err() {
                    break;
                }
            }
        }
    }
}
