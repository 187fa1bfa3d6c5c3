//! What the second-round commands ([`super::extra`], [`super::xcopy`]) keep per logical unit:
//! whether a SANITIZE runs and how far it got, whether the last one failed, the results of
//! recent identified copies. A leaf of its own so that [`super::lun`] can hold it without
//! depending on the command modules.

use std::{
    collections::VecDeque,
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicU8},
        Mutex,
    },
};

use super::reservations::Nexus;

/// Identified copies whose status RECEIVE COPY RESULTS can still report (oldest dropped).
pub(super) const MAX_COPY_RECORDS: usize = 16;

/// Failure mode after a SANITIZE failed (SBC-4 4.11.4).
pub(super) const SANITIZE_OK: u8 = 0;
/// Failed with AUSE = 0: only a successful SANITIZE ends it.
pub(super) const SANITIZE_FAILED_NO_EXIT: u8 = 1;
/// Failed with AUSE = 1: EXIT FAILURE MODE may end it too.
pub(super) const SANITIZE_FAILED_EXIT_ALLOWED: u8 = 2;

/// COPY MANAGER STATUS values (SPC-4 table 362).
pub(super) const COPY_IN_PROGRESS: u8 = 0x00;
pub(super) const COPY_DONE: u8 = 0x01;
pub(super) const COPY_FAILED: u8 = 0x02;

/// One identified EXTENDED COPY (LIST ID USAGE 00b or 10b) as RECEIVE COPY RESULTS reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CopyRecord {
    pub nexus: Nexus,
    pub list_id: u8,
    pub status: u8,
    pub segments: u16,
    /// Bytes copied.
    pub bytes: u64,
}

/// Per-LU state of the commands in this module.
#[derive(Default)]
pub struct ExtraState {
    pub(super) sanitizing: AtomicBool,
    /// Progress of the running SANITIZE, in 65536ths.
    pub(super) progress: AtomicU16,
    /// SANITIZE_OK or a failure mode.
    pub(super) failure: AtomicU8,
    pub(super) copies: Mutex<VecDeque<CopyRecord>>,
}

impl ExtraState {
    pub(super) fn lock_copies(&self) -> std::sync::MutexGuard<'_, VecDeque<CopyRecord>> {
        self.copies.lock().unwrap_or_else(|p| p.into_inner())
    }
}
