//! Broker messages for iSCSI LUNs (issue 12): the worker asks the supervisor for a fresh,
//! logged-in connection after a connection loss; the supervisor answers with the socket (one
//! fd) and the negotiated session parameters. The CHAP secret never crosses this channel.
//!
//! Placeholder: the iSCSI integration defines the messages.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IscsiMsg {
    /// Worker → supervisor: log in again to the target of LUN `target:lun`.
    Reconnect { target: u8, lun: u16 },
}
