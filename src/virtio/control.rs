//! The control queue: task management functions and asynchronous-notification requests.
//!
//! Commands of emulated LUs complete on their queue thread, so by the time a TMF is looked at
//! no task it could name is still waiting in this daemon: aborts find nothing to abort and
//! answer FUNCTION COMPLETE, resets raise the unit attentions SAM requires.
//!
//! Passthrough LUs (iSCSI) have commands outstanding at their target: ABORT TASK, ABORT TASK
//! SET / CLEAR TASK SET and LOGICAL UNIT RESET are forwarded to it (an iSCSI Task Management
//! Function Request), and the guest is answered from the target's response; the commands it
//! ended are answered VIRTIO_SCSI_S_ABORTED. An I_T NEXUS RESET resets each passthrough LUN of
//! the target (iSCSI has no I_T nexus reset function short of ending the session). QUERY TASK
//! and QUERY TASK SET are answered by the LU's thread from the commands it has outstanding
//! (iSCSI has no such function: `block::iscsi::TaskManagement::QueryTask`): FUNCTION
//! SUCCEEDED when the task is there, FUNCTION COMPLETE when not.

use log::{debug, info, warn};
use virtio_bindings::virtio_scsi::{
    VIRTIO_SCSI_S_BAD_TARGET, VIRTIO_SCSI_S_FAILURE, VIRTIO_SCSI_S_FUNCTION_REJECTED,
    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED, VIRTIO_SCSI_S_INCORRECT_LUN, VIRTIO_SCSI_T_AN_QUERY,
    VIRTIO_SCSI_T_AN_SUBSCRIBE, VIRTIO_SCSI_T_TMF, VIRTIO_SCSI_T_TMF_ABORT_TASK,
    VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, VIRTIO_SCSI_T_TMF_CLEAR_ACA,
    VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET, VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET,
    VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, VIRTIO_SCSI_T_TMF_QUERY_TASK,
    VIRTIO_SCSI_T_TMF_QUERY_TASK_SET,
};

use super::{request::SplitChain, LunAddress};
use crate::block::iscsi::{TaskManagement, TmfOutcome};
use crate::scsi::ScsiBus;

/// "Function complete" (virtio 1.2, 5.6.6.2); the bindings only name it `VIRTIO_SCSI_S_OK`.
const VIRTIO_SCSI_S_FUNCTION_COMPLETE: u32 = 0;

/// `struct virtio_scsi_ctrl_tmf_req`: type, subtype, lun[8], id.
const TMF_REQ_SIZE: usize = 4 + 4 + 8 + 8;
/// `struct virtio_scsi_ctrl_tmf_resp`: response.
const TMF_RESP_SIZE: usize = 1;
/// `struct virtio_scsi_ctrl_an_req`: type, lun[8], event_requested.
const AN_REQ_SIZE: usize = 4 + 8 + 4;
/// `struct virtio_scsi_ctrl_an_resp`: event_actual, response.
const AN_RESP_SIZE: usize = 4 + 1;

/// Handles one control-queue chain; returns the number of bytes written to it (the used length).
pub fn handle_control(bus: &ScsiBus, chain: &SplitChain<'_>) -> u32 {
    let mut head = [0u8; TMF_REQ_SIZE];
    let have = chain.readable.copy_to(&mut head);
    if have < 4 {
        warn!("control queue: request of {have} bytes has no type field; skipped");
        return 0;
    }
    let req_type = u32::from_le_bytes([head[0], head[1], head[2], head[3]]);
    match req_type {
        VIRTIO_SCSI_T_TMF => {
            if have < TMF_REQ_SIZE || chain.writable.len() < TMF_RESP_SIZE {
                warn!("control queue: TMF request or response too short ({have} bytes); skipped");
                return 0;
            }
            let subtype = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let mut lun = [0u8; 8];
            lun.copy_from_slice(&head[8..16]);
            let mut id = [0u8; 8];
            id.copy_from_slice(&head[16..24]);
            let response = task_management(bus, subtype, &lun, u64::from_le_bytes(id));
            chain.writable.copy_from(&[response]) as u32
        }
        VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE => {
            if have < AN_REQ_SIZE || chain.writable.len() < AN_RESP_SIZE {
                warn!("control queue: AN request or response too short ({have} bytes); skipped");
                return 0;
            }
            // We report no asynchronous events (media change etc. do not exist for disks):
            // event_actual = 0, response = OK, as QEMU's virtio-scsi answers.
            let resp = [0, 0, 0, 0, VIRTIO_SCSI_S_FUNCTION_COMPLETE as u8];
            chain.writable.copy_from(&resp) as u32
        }
        other => {
            warn!("control queue: unknown request type {other}; skipped");
            0
        }
    }
}

/// The virtio-scsi response for a passthrough LU's TMF outcome.
fn tmf_response(outcome: TmfOutcome) -> u32 {
    match outcome {
        TmfOutcome::Complete => VIRTIO_SCSI_S_FUNCTION_COMPLETE,
        TmfOutcome::Succeeded => VIRTIO_SCSI_S_FUNCTION_SUCCEEDED,
        TmfOutcome::Rejected => VIRTIO_SCSI_S_FUNCTION_REJECTED,
        TmfOutcome::IncorrectLun => VIRTIO_SCSI_S_INCORRECT_LUN,
        TmfOutcome::Failed => VIRTIO_SCSI_S_FAILURE,
    }
}

/// Carries out one TMF and returns the virtio-scsi response code. `id` names the task of an
/// ABORT TASK (the tag of the guest's command).
fn task_management(bus: &ScsiBus, subtype: u32, raw_lun: &[u8; 8], id: u64) -> u8 {
    let Some(addr) = LunAddress::decode(raw_lun).filter(|a| bus.has_target(a.target)) else {
        debug!("TMF {subtype} for {raw_lun:02x?}: no such target");
        return VIRTIO_SCSI_S_BAD_TARGET as u8;
    };
    let (target, lun) = (addr.target, addr.lun);
    // I_T NEXUS RESET addresses the target; everything else needs the exact LUN (as in QEMU).
    if subtype != VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET && !bus.lun_exists(target, lun) {
        return VIRTIO_SCSI_S_INCORRECT_LUN as u8;
    }
    let forwarded = match subtype {
        VIRTIO_SCSI_T_TMF_ABORT_TASK => Some(TaskManagement::AbortTask(id)),
        VIRTIO_SCSI_T_TMF_ABORT_TASK_SET | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET => {
            Some(TaskManagement::AbortTaskSet)
        }
        VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => Some(TaskManagement::LogicalUnitReset),
        VIRTIO_SCSI_T_TMF_QUERY_TASK => Some(TaskManagement::QueryTask(id)),
        VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => Some(TaskManagement::QueryTaskSet),
        _ => None,
    };
    if let Some(f) = forwarded {
        if let Some(outcome) = bus.passthrough_task_management(target, lun, f) {
            info!("{f:?} of passthrough LU {target}:{lun}: {outcome:?}");
            return tmf_response(outcome) as u8;
        }
    }
    let code = match subtype {
        VIRTIO_SCSI_T_TMF_ABORT_TASK
        | VIRTIO_SCSI_T_TMF_ABORT_TASK_SET
        | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET
        | VIRTIO_SCSI_T_TMF_QUERY_TASK
        | VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => {
            // Nothing is pending here: aborts have nothing to do, queries find no task.
            VIRTIO_SCSI_S_FUNCTION_COMPLETE
        }
        VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => {
            info!("logical unit reset of {target}:{lun}");
            bus.reset_lun(target, lun);
            VIRTIO_SCSI_S_FUNCTION_COMPLETE
        }
        VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => {
            info!("I_T nexus reset of target {target}");
            bus.reset_target(target);
            // The target's passthrough LUs: each reset at its target (the first failure is
            // the answer; all are attempted).
            let mut code = VIRTIO_SCSI_S_FUNCTION_COMPLETE;
            for l in bus.passthrough_luns(target) {
                let outcome = bus
                    .passthrough_task_management(target, l, TaskManagement::LogicalUnitReset)
                    .unwrap_or(TmfOutcome::Complete);
                info!("I_T nexus reset: LUN reset of passthrough LU {target}:{l}: {outcome:?}");
                if code == VIRTIO_SCSI_S_FUNCTION_COMPLETE {
                    code = tmf_response(outcome);
                }
            }
            code
        }
        // We never establish ACA (NACA is not supported), so there is nothing to clear.
        VIRTIO_SCSI_T_TMF_CLEAR_ACA => VIRTIO_SCSI_S_FUNCTION_REJECTED,
        other => {
            warn!("unknown TMF subtype {other} for {target}:{lun}; rejected");
            VIRTIO_SCSI_S_FUNCTION_REJECTED
        }
    };
    code as u8
}
