//! Request queues: one virtio-scsi command per chain, executed against the [`ScsiBus`].

use log::{debug, warn};
use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_S_BAD_TARGET, VIRTIO_SCSI_S_FAILURE, VIRTIO_SCSI_S_OK,
};

use super::{
    request::{parse_cmd_request, CmdResponse, RequestError, SplitChain, RESP_HEADER_SIZE},
    LunAddress,
};
use crate::scsi::ScsiBus;

/// Executes the command in one request chain; returns the used length (response header plus
/// data-in bytes written).
pub fn handle_command(bus: &ScsiBus, chain: SplitChain<'_>) -> u32 {
    let req = match parse_cmd_request(chain) {
        Ok(req) => req,
        Err((e @ RequestError::ShortRequestHeader(_), Some(response))) => {
            warn!("request queue: {e}; answered VIRTIO_SCSI_S_FAILURE");
            fail(&response, VIRTIO_SCSI_S_FAILURE);
            return RESP_HEADER_SIZE as u32;
        }
        Err((e, _)) => {
            warn!("request queue: {e}; chain returned unanswered");
            return 0;
        }
    };

    let Some(addr) = LunAddress::decode(&req.lun).filter(|a| bus.has_target(a.target)) else {
        debug!(
            "command {:#04x} for {:02x?}: no such target",
            req.cdb[0], req.lun
        );
        fail(&req.response, VIRTIO_SCSI_S_BAD_TARGET);
        return RESP_HEADER_SIZE as u32;
    };

    // VIRTIO_SCSI_F_INOUT is not offered, so a command moves data one way only (QEMU fails
    // bidirectional requests the same way).
    if !req.data_out.is_empty() && !req.data_in.is_empty() {
        warn!(
            "command {:#04x} for {}:{} has both data-out and data-in buffers; failed",
            req.cdb[0], addr.target, addr.lun
        );
        fail(&req.response, VIRTIO_SCSI_S_FAILURE);
        return RESP_HEADER_SIZE as u32;
    }

    let out = bus.execute(addr.target, addr.lun, &req.cdb, &req.data_out, &req.data_in);
    let (buffer_len, data_in_written) = if req.data_out.is_empty() {
        (req.data_in.len(), out.transferred as usize)
    } else {
        (req.data_out.len(), 0)
    };
    let resid = buffer_len.saturating_sub(out.transferred as usize);
    CmdResponse {
        sense: &out.sense,
        // The chain is at most 4 GiB (virtio 1.2, 2.7.5.2), so this cannot truncate.
        resid: u32::try_from(resid).unwrap_or(u32::MAX),
        status: out.status,
        response: VIRTIO_SCSI_S_OK as u8,
    }
    .write_to(&req.response);
    (RESP_HEADER_SIZE + data_in_written.min(req.data_in.len())) as u32
}

fn fail(response_area: &crate::scsi::SgList<'_>, code: u32) {
    CmdResponse {
        response: code as u8,
        ..CmdResponse::default()
    }
    .write_to(response_area);
}
