//! Broker messages for runtime management (issue 13): the supervisor forwards a management
//! client's request to the running worker (with the fds it opened) and relays the reply.
//!
//! Placeholder: the management work defines the messages.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManageMsg {
    /// Supervisor → worker: is the worker's broker thread answering? Reply: the same.
    Ping,
}
