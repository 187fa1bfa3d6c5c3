//! Sense data (SPC-5 4.4): what went wrong with a command, in fixed or descriptor format.
//!
//! A [`Sense`] is a small value (key, ASC/ASCQ and the optional INFORMATION and field-pointer
//! fields) so that it can be stored as a pending unit attention and encoded on demand in whichever
//! format the initiator asked for.

/// Sense keys (SPC-5 table 48).
pub mod key {
    pub const NO_SENSE: u8 = 0x0;
    pub const NOT_READY: u8 = 0x2;
    pub const MEDIUM_ERROR: u8 = 0x3;
    pub const HARDWARE_ERROR: u8 = 0x4;
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    pub const UNIT_ATTENTION: u8 = 0x6;
    pub const DATA_PROTECT: u8 = 0x7;
    pub const COPY_ABORTED: u8 = 0xa;
    pub const ABORTED_COMMAND: u8 = 0xb;
    pub const MISCOMPARE: u8 = 0xe;
}

/// Length of fixed-format sense data with the additional bytes we fill in.
pub const FIXED_SENSE_LEN: usize = 18;

/// Where in the CDB or parameter list an invalid field sits (sense-key specific bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldPointer {
    /// True for a CDB field (C/D = 1), false for a parameter list field.
    pub in_cdb: bool,
    pub byte: u16,
    /// The most significant bit of the field inside `byte`, when known.
    pub bit: Option<u8>,
}

impl FieldPointer {
    /// The three sense-key specific bytes: SKSV, C/D, BPV, BIT POINTER, FIELD POINTER.
    fn encode(self) -> [u8; 3] {
        let mut b0 = 0x80; // SKSV
        if self.in_cdb {
            b0 |= 0x40;
        }
        if let Some(bit) = self.bit {
            b0 |= 0x08 | (bit & 0x07);
        }
        let [hi, lo] = self.byte.to_be_bytes();
        [b0, hi, lo]
    }
}

/// One sense condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sense {
    pub key: u8,
    pub asc: u8,
    pub ascq: u8,
    /// INFORMATION field (e.g. the LBA of a failed I/O or a miscompare offset).
    pub info: Option<u64>,
    pub field: Option<FieldPointer>,
    /// Progress indication (SPC-5 4.4.2.4.4: sense-key specific bytes for NOT READY while an
    /// operation such as SANITIZE runs), 0..=65535 of 65536.
    pub progress: Option<u16>,
}

impl Sense {
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Self {
        Self {
            key,
            asc,
            ascq,
            info: None,
            field: None,
            progress: None,
        }
    }

    pub const NO_SENSE: Sense = Sense::new(key::NO_SENSE, 0x00, 0x00);
    pub const PARAMETER_LIST_LENGTH_ERROR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00);
    pub const INVALID_OPCODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
    pub const INVALID_FIELD_IN_CDB: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
    pub const INVALID_FIELD_IN_PARAMETER_LIST: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
    pub const SAVING_PARAMETERS_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
    pub const WRITE_PROTECTED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x00);
    pub const SPACE_ALLOCATION_FAILED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x07);
    pub const UNRECOVERED_READ_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x11, 0x00);
    pub const WRITE_ERROR: Sense = Sense::new(key::MEDIUM_ERROR, 0x0c, 0x00);
    pub const MEDIUM_NOT_PRESENT: Sense = Sense::new(key::NOT_READY, 0x3a, 0x00);
    pub const INTERNAL_TARGET_FAILURE: Sense = Sense::new(key::HARDWARE_ERROR, 0x44, 0x00);
    pub const IO_PROCESS_TERMINATED: Sense = Sense::new(key::ABORTED_COMMAND, 0x00, 0x06);
    pub const MISCOMPARE_DURING_VERIFY: Sense = Sense::new(key::MISCOMPARE, 0x1d, 0x00);
    pub const POWER_ON_RESET: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x00);
    pub const BUS_DEVICE_RESET: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x03);
    pub const I_T_NEXUS_LOSS: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x07);
    pub const MODE_PARAMETERS_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x01);
    pub const RESERVATIONS_PREEMPTED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x03);
    pub const RESERVATIONS_RELEASED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x04);
    pub const REGISTRATIONS_PREEMPTED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x05);
    pub const CAPACITY_DATA_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x09);
    pub const REPORTED_LUNS_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x3f, 0x0e);
    /// LOGICAL UNIT NOT READY, INITIALIZING COMMAND REQUIRED (stopped by START STOP UNIT).
    pub const NOT_READY_START_REQUIRED: Sense = Sense::new(key::NOT_READY, 0x04, 0x02);
    pub const SOFTWARE_WRITE_PROTECTED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x02);
    pub const INVALID_RELEASE_OF_PR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x04);
    /// MEDIUM NOT PRESENT - TRAY CLOSED: a removable LU with no medium loaded.
    pub const MEDIUM_NOT_PRESENT_TRAY_CLOSED: Sense = Sense::new(key::NOT_READY, 0x3a, 0x01);
    /// MEDIUM NOT PRESENT - TRAY OPEN: ejected (START STOP UNIT with LOEJ, or the host).
    pub const MEDIUM_NOT_PRESENT_TRAY_OPEN: Sense = Sense::new(key::NOT_READY, 0x3a, 0x02);
    /// The medium was removed by the host (as QEMU's scsi-cd reports a medium change first).
    pub const UA_MEDIUM_NOT_PRESENT: Sense = Sense::new(key::UNIT_ATTENTION, 0x3a, 0x00);
    /// NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED: a medium was loaded.
    pub const MEDIUM_MAY_HAVE_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x28, 0x00);
    /// CANNOT READ MEDIUM - INCOMPATIBLE FORMAT: a DVD structure asked of a CD (MMC; QEMU
    /// answers INCOMPATIBLE MEDIUM INSTALLED, 30h/00h).
    pub const INCOMPATIBLE_FORMAT: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x30, 0x02);
    /// ILLEGAL MODE FOR THIS TRACK: READ CD of a sector type the (Mode 1 data) track is not.
    pub const ILLEGAL_MODE_FOR_TRACK: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x64, 0x00);
    /// MEDIUM REMOVAL PREVENTED (PREVENT ALLOW MEDIUM REMOVAL holds the medium).
    pub const MEDIUM_REMOVAL_PREVENTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x53, 0x02);
    /// MEDIUM REMOVAL PREVENTED with no medium: NOT READY (as QEMU's scsi-cd).
    pub const NOT_READY_REMOVAL_PREVENTED: Sense = Sense::new(key::NOT_READY, 0x53, 0x02);
    /// SBC-4 4.11: media access while a SANITIZE runs (with a progress indication).
    pub const SANITIZE_IN_PROGRESS: Sense = Sense::new(key::NOT_READY, 0x04, 0x1b);
    /// SBC-4 4.11.4: media access after a SANITIZE failed, until one succeeds or EXIT FAILURE
    /// MODE.
    pub const SANITIZE_FAILED: Sense = Sense::new(key::MEDIUM_ERROR, 0x31, 0x03);
    /// SPC-5 6.4 (EXTENDED COPY): too many / unsupported descriptors, a CSCD that names no LU
    /// of ours, an identified copy already running.
    pub const TOO_MANY_TARGET_DESCRIPTORS: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x06);
    pub const UNSUPPORTED_TARGET_DESCRIPTOR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x07);
    pub const TOO_MANY_SEGMENT_DESCRIPTORS: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x08);
    pub const UNSUPPORTED_SEGMENT_DESCRIPTOR: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x09);
    pub const INLINE_DATA_LENGTH_EXCEEDED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x0b);
    pub const COPY_TARGET_NOT_REACHABLE: Sense = Sense::new(key::COPY_ABORTED, 0x0d, 0x02);
    pub const OPERATION_IN_PROGRESS: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x00, 0x16);

    /// INVALID FIELD IN CDB pointing at `byte` (and `bit`, the field's most significant bit).
    pub fn invalid_cdb_field(byte: u16, bit: Option<u8>) -> Self {
        Self {
            field: Some(FieldPointer {
                in_cdb: true,
                byte,
                bit,
            }),
            ..Self::INVALID_FIELD_IN_CDB
        }
    }

    /// INVALID FIELD IN PARAMETER LIST pointing at `byte` of the parameter data.
    pub fn invalid_param_field(byte: u16, bit: Option<u8>) -> Self {
        Self {
            field: Some(FieldPointer {
                in_cdb: false,
                byte,
                bit,
            }),
            ..Self::INVALID_FIELD_IN_PARAMETER_LIST
        }
    }

    pub fn with_progress(self, progress: u16) -> Self {
        Self {
            progress: Some(progress),
            ..self
        }
    }

    pub fn with_info(self, info: u64) -> Self {
        Self {
            info: Some(info),
            ..self
        }
    }

    /// Fixed-format sense data (response code 70h, current error), 18 bytes.
    pub fn to_fixed(&self) -> Vec<u8> {
        let mut b = vec![0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        b[2] = self.key & 0x0f;
        // The fixed format has only 32 bits of INFORMATION; VALID says whether it is meaningful.
        if let Some(info) = self.info.and_then(|i| u32::try_from(i).ok()) {
            b[0] |= 0x80;
            b[3..7].copy_from_slice(&info.to_be_bytes());
        }
        b[7] = (FIXED_SENSE_LEN - 8) as u8;
        b[12] = self.asc;
        b[13] = self.ascq;
        if let Some(f) = self.field {
            b[15..18].copy_from_slice(&f.encode());
        }
        if let Some(p) = self.progress {
            b[15..18].copy_from_slice(&progress_bytes(p));
        }
        b
    }

    /// Descriptor-format sense data (response code 72h) with INFORMATION and sense-key
    /// specific descriptors when those fields are set.
    pub fn to_descriptor(&self) -> Vec<u8> {
        let mut b = vec![0x72, self.key & 0x0f, self.asc, self.ascq, 0, 0, 0, 0];
        if let Some(info) = self.info {
            b.extend_from_slice(&[0x00, 0x0a, 0x80, 0x00]);
            b.extend_from_slice(&info.to_be_bytes());
        }
        if let Some(f) = self.field {
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&f.encode());
            b.push(0);
        }
        if let Some(p) = self.progress {
            b.extend_from_slice(&[0x02, 0x06, 0x00, 0x00]);
            b.extend_from_slice(&progress_bytes(p));
            b.push(0);
        }
        b[7] = (b.len() - 8) as u8;
        b
    }
}

/// Sense-key specific progress indication: SKSV, then the 16-bit PROGRESS INDICATION.
fn progress_bytes(progress: u16) -> [u8; 3] {
    let [hi, lo] = progress.to_be_bytes();
    [0x80, hi, lo]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_format_with_field_pointer_and_info() {
        let s = Sense::invalid_cdb_field(2, Some(5)).with_info(0x1234);
        assert_eq!(
            s.to_fixed(),
            [0xf0, 0, 0x05, 0, 0, 0x12, 0x34, 10, 0, 0, 0, 0, 0x24, 0, 0, 0xcd, 0x00, 0x02]
        );
        let big = Sense::UNRECOVERED_READ_ERROR.with_info(1 << 40).to_fixed();
        assert_eq!(big[0], 0x70, "INFORMATION beyond 32 bits is not VALID");
        assert_eq!(&big[3..7], &[0, 0, 0, 0]);
    }

    #[test]
    fn descriptor_format() {
        assert_eq!(
            Sense::POWER_ON_RESET.to_descriptor(),
            [0x72, 0x06, 0x29, 0x00, 0, 0, 0, 0]
        );
        let s = Sense::invalid_param_field(0x102, None).with_info(7);
        assert_eq!(
            s.to_descriptor(),
            [
                0x72, 0x05, 0x26, 0x00, 0, 0, 0, 20, // header
                0x00, 0x0a, 0x80, 0x00, 0, 0, 0, 0, 0, 0, 0, 7, // information
                0x02, 0x06, 0x00, 0x00, 0x80, 0x01, 0x02, 0x00, // sense-key specific
            ]
        );
    }
}
