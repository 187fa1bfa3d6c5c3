//! virtio and virtio-scsi wire formats, written out from the specs (virtio 1.2 §2.7, §5.6).

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_SCSI_F_INOUT: u64 = 1 << 0;
pub const VIRTIO_SCSI_F_HOTPLUG: u64 = 1 << 1;
pub const VIRTIO_SCSI_F_CHANGE: u64 = 1 << 2;
pub const VIRTIO_SCSI_F_T10_PI: u64 = 1 << 3;

/// Split-ring descriptor flags.
pub const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
pub const VRING_DESC_F_INDIRECT: u16 = 4;

/// `virtio_scsi_cmd_req` without PI: lun[8], id, task_attr, prio, crn, cdb[32].
pub const REQ_HEADER_SIZE: usize = 51;
/// `virtio_scsi_cmd_resp`: sense_len, resid, status_qualifier, status, response, sense[96].
pub const RESP_HEADER_SIZE: usize = 108;
/// Where the CDB starts in `virtio_scsi_cmd_req`.
pub const CDB_OFFSET: usize = 19;

pub const VIRTIO_SCSI_S_OK: u8 = 0;
pub const VIRTIO_SCSI_S_BAD_TARGET: u8 = 3;
pub const VIRTIO_SCSI_S_FAILURE: u8 = 9;
pub const VIRTIO_SCSI_T_TMF: u32 = 0;
pub const VIRTIO_SCSI_T_AN_QUERY: u32 = 1;
pub const VIRTIO_SCSI_T_AN_SUBSCRIBE: u32 = 2;
pub const VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET: u32 = 5;

pub const STATUS_GOOD: u8 = 0x00;
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

pub const SENSE_NOT_READY: u8 = 0x02;
pub const SENSE_ILLEGAL_REQUEST: u8 = 0x05;
pub const SENSE_UNIT_ATTENTION: u8 = 0x06;
pub const SENSE_DATA_PROTECT: u8 = 0x07;

/// The virtio-scsi LUN field for a single-level LUN below 256: `01 TT 00 LL 00 00 00 00`.
pub fn lun(target: u8, lun: u8) -> [u8; 8] {
    [1, target, 0, lun, 0, 0, 0, 0]
}

/// The LUN field of target 0, LUN 0.
pub const LUN_0_0: [u8; 8] = [1, 0, 0, 0, 0, 0, 0, 0];

/// A `virtio_scsi_cmd_req` for `lun` with command id `id`, task attribute `task_attr`
/// (0 = SIMPLE), priority and CRN 0, and `cdb` (at most 32 bytes, zero-padded).
pub fn cmd_req(lun: [u8; 8], id: u64, task_attr: u8, cdb: &[u8]) -> [u8; REQ_HEADER_SIZE] {
    let mut h = [0u8; REQ_HEADER_SIZE];
    h[0..8].copy_from_slice(&lun);
    h[8..16].copy_from_slice(&id.to_le_bytes());
    h[16] = task_attr;
    h[CDB_OFFSET..CDB_OFFSET + cdb.len()].copy_from_slice(cdb);
    h
}

/// A `virtio_scsi_cmd_req` for LUN 0:0 with `cdb`, command id 0, SIMPLE.
pub fn cmd_req_lun0(cdb: &[u8]) -> [u8; REQ_HEADER_SIZE] {
    cmd_req(LUN_0_0, 0, 0, cdb)
}

/// A `virtio_scsi_ctrl_tmf_req` of `subtype` for `lun` with task tag `tag`.
pub fn tmf_req(subtype: u32, lun: [u8; 8], tag: u64) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&VIRTIO_SCSI_T_TMF.to_le_bytes());
    r.extend_from_slice(&subtype.to_le_bytes());
    r.extend_from_slice(&lun);
    r.extend_from_slice(&tag.to_le_bytes());
    r
}

/// A `virtio_scsi_ctrl_an_req` of `kind` (AN_QUERY or AN_SUBSCRIBE) for `lun` asking for the
/// events in `event_requested`.
pub fn an_req(kind: u32, lun: [u8; 8], event_requested: u32) -> Vec<u8> {
    let mut r = kind.to_le_bytes().to_vec();
    r.extend_from_slice(&lun);
    r.extend_from_slice(&event_requested.to_le_bytes());
    r
}

/// A decoded `virtio_scsi_cmd_resp`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdResp {
    pub sense_len: u32,
    pub resid: u32,
    pub status_qualifier: u16,
    pub status: u8,
    pub response: u8,
    /// The whole sense area (96 bytes), of which `sense_len` are valid.
    pub sense: Vec<u8>,
}

impl CmdResp {
    /// Decodes the first [`RESP_HEADER_SIZE`] bytes of `w`; `None` if `w` is shorter.
    pub fn parse(w: &[u8]) -> Option<Self> {
        if w.len() < RESP_HEADER_SIZE {
            return None;
        }
        let le32 = |o: usize| u32::from_le_bytes(w[o..o + 4].try_into().unwrap());
        Some(CmdResp {
            sense_len: le32(0),
            resid: le32(4),
            status_qualifier: u16::from_le_bytes([w[8], w[9]]),
            status: w[10],
            response: w[11],
            sense: w[12..RESP_HEADER_SIZE].to_vec(),
        })
    }
}
