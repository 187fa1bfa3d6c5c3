//! A pure-Rust iSCSI initiator (RFC 7143), its own layer below block storage: it imports nothing
//! from the rest of the crate.
//!
//! - [`pdu`]: PDU encode/decode, AHS, padding, CRC32C digests (hostile input).
//! - [`text`]: text key=value segments.
//! - [`login`]: login (CHAP, operational negotiation, redirection), SendTargets discovery and the
//!   serialisable [`login::SessionParams`] that lets a second process continue the session.
//! - [`session`]: the full feature phase over a connected stream.
//! - [`buffer`]: where a command's data lives (contiguous, or scattered and moved straight
//!   between the socket and its segments).
//! - [`recovery`]: connection loss at ErrorRecoveryLevel 0 (backoff, reinstatement, retries).
//!
//! See docs/iscsi.md for the design and how the daemon uses it.

pub mod buffer;
pub mod login;
pub mod pdu;
pub mod recovery;
pub mod session;
pub mod text;
