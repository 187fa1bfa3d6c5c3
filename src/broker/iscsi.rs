//! Broker messages for iSCSI LUNs (issue 12): the worker asks the supervisor for a fresh,
//! logged-in connection after a connection loss; the supervisor logs in again (reinstating the
//! session: same ISID, TSIH 0) and answers with the socket (one fd) and the negotiated session
//! parameters. The CHAP secret never crosses this channel: the supervisor reads it from its
//! file for each login.

use serde::{Deserialize, Serialize};

use crate::iscsi::login::SessionParams;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IscsiMsg {
    /// Worker → supervisor: log in again to the target of LUN `target:lun` (the supervisor
    /// knows the portal, the names and the ISID; the worker names only its LUN).
    Reconnect { target: u8, lun: u16 },
    /// Supervisor → worker, the reply: the new connection is the one attached fd, in the full
    /// feature phase, nothing read or written since the login; `params` (validated again by
    /// the worker's `Session::new`) are its negotiated values and sequence numbers.
    Connected { params: SessionParams },
}
