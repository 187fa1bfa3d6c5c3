//! START STOP UNIT (SBC-4 5.25, MMC-6), PREVENT ALLOW MEDIUM REMOVAL (SBC-4 5.13, MMC-6),
//! PRE-FETCH(10/16) (SBC-4 5.11, 5.12), and the removable medium: tray, lock, media
//! events, and the host's side of a medium change ([`LogicalUnit::change_medium`],
//! [`LogicalUnit::eject`], [`LogicalUnit::load`], [`LogicalUnit::without_medium`]).
//!
//! A removable LU (RMB = 1: `removable` disks and every CD-ROM) has a tray that is open or
//! closed and a medium that is loaded or not. The medium is accessible when the tray is closed
//! and a medium is loaded; otherwise every command that needs it fails with NOT READY, MEDIUM
//! NOT PRESENT (`needs_medium` in [`super::lun`]). Loading a medium (the guest closing the tray
//! with START STOP UNIT, or the host) raises NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED
//! for every I_T nexus and a New Media event for GET EVENT STATUS NOTIFICATION; the host
//! removing or changing the medium first raises MEDIUM NOT PRESENT, as QEMU's scsi-cd does, so
//! that initiators which do not poll events see the medium go and come back.

use std::{
    io,
    sync::{atomic::Ordering, Arc, MutexGuard},
};

use super::{
    cdb::Cdb,
    io::block_range,
    lun::{media_event, IoOp, LogicalUnit, LunOptions, Medium},
    sense::Sense,
    CmdOutput, CmdResult, SgList,
};
use crate::block::BlockBackend;

/// The backend of a removable LU with no medium: empty, and every operation fails with
/// ENOMEDIUM (answered as NOT READY, MEDIUM NOT PRESENT). Commands are refused before they get
/// here; this only answers one that was already past that check when the host removed the
/// medium, which must fail rather than have its data dropped.
struct NoMedium;

impl NoMedium {
    fn fail() -> io::Result<()> {
        Err(io::Error::from_raw_os_error(libc::ENOMEDIUM))
    }
}

impl BlockBackend for NoMedium {
    fn size(&self) -> u64 {
        0
    }
    fn read_at(&self, _: &SgList<'_>, _: u64) -> io::Result<()> {
        Self::fail()
    }
    fn write_at(&self, _: &SgList<'_>, _: u64, _: bool) -> io::Result<()> {
        Self::fail()
    }
    fn flush(&self) -> io::Result<()> {
        Self::fail()
    }
    fn discard(&self, _: u64, _: u64) -> io::Result<()> {
        Self::fail()
    }
    fn write_zeroes(&self, _: u64, _: u64) -> io::Result<()> {
        Self::fail()
    }
    fn can_discard(&self) -> bool {
        false
    }
    fn discard_zeroes(&self) -> bool {
        false
    }
}

/// What the management layer sees of a LU's medium.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediumState {
    pub removable: bool,
    pub tray_open: bool,
    /// A medium is loaded (whether or not the tray is open).
    pub loaded: bool,
    /// The guest prevents removal (PREVENT ALLOW MEDIUM REMOVAL).
    pub locked: bool,
}

/// Why the host cannot eject, load or change a LU's medium.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediumError {
    #[error("the LUN's medium is not removable")]
    NotRemovable,
    #[error(
        "the guest prevents medium removal (PREVENT ALLOW MEDIUM REMOVAL); it was asked to \
         eject, or force the change"
    )]
    Locked,
    #[error("the new medium is {size} bytes, less than one {block_size}-byte block")]
    TooSmall { size: u64, block_size: u32 },
}

impl LogicalUnit {
    fn lock_medium(&self) -> MutexGuard<'_, Medium> {
        self.medium.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes the medium's accessibility for the admission check (under the medium lock, so
    /// the flag always matches the state).
    fn set_ready(&self, m: &Medium) {
        self.medium_ready.store(m.ready(), Ordering::Release);
    }

    /// The sense of a command that needs the medium while there is none.
    pub(super) fn no_medium_sense(&self) -> Sense {
        if !self.is_cdrom() {
            return Sense::MEDIUM_NOT_PRESENT;
        }
        if self.lock_medium().tray_open {
            Sense::MEDIUM_NOT_PRESENT_TRAY_OPEN
        } else {
            Sense::MEDIUM_NOT_PRESENT_TRAY_CLOSED
        }
    }

    /// Power on / reset: removal allowed again and, as QEMU's scsi-cd, the tray closed.
    pub(super) fn medium_power_on(&self) {
        if !self.removable() {
            return;
        }
        let mut m = self.lock_medium();
        m.locked = false;
        m.tray_open = false;
        self.set_ready(&m);
    }

    /// The media class event descriptor of GET EVENT STATUS NOTIFICATION (MMC-6):
    /// the pending event (consumed) and the media status.
    pub(super) fn take_media_event(&self) -> [u8; 4] {
        let mut m = self.lock_medium();
        let event = std::mem::replace(&mut m.event, media_event::NO_CHANGE);
        let status = if m.tray_open {
            0x01 // DOOR OR TRAY OPEN
        } else if !m.empty {
            0x02 // MEDIA PRESENT
        } else {
            0x00
        };
        [event, status, 0, 0]
    }

    /// The tray and lock, for MECHANISM STATUS and the capabilities mode page.
    pub fn medium_state(&self) -> MediumState {
        let m = self.lock_medium();
        MediumState {
            removable: self.removable(),
            tray_open: self.removable() && m.tray_open,
            loaded: !m.empty,
            locked: m.locked,
        }
    }

    /// A medium became accessible: MEDIUM MAY HAVE CHANGED for every I_T nexus, New Media.
    fn medium_arrived(&self, m: &mut Medium) {
        m.event = media_event::NEW_MEDIA;
        self.reported_blocks
            .store(self.block_count(), Ordering::Relaxed);
        self.establish_ua(None, Sense::MEDIUM_MAY_HAVE_CHANGED);
        log::info!("{}: medium loaded", self.name);
    }

    /// The host ejects the medium (opens the tray; the medium stays loaded, as QEMU's
    /// `blockdev-open-tray`: a device reset closes the tray again, and
    /// [`LogicalUnit::change_medium`] with `None` takes the medium away). While the guest
    /// prevents removal this fails with [`MediumError::Locked`] and the guest gets an Eject
    /// Request event (it may unlock and eject itself), unless `force`, which overrides the
    /// lock.
    pub fn eject(&self, force: bool) -> Result<(), MediumError> {
        if !self.removable() {
            return Err(MediumError::NotRemovable);
        }
        let mut m = self.lock_medium();
        if m.locked && !force {
            m.event = media_event::EJECT_REQUEST;
            return Err(MediumError::Locked);
        }
        m.locked = false;
        if !m.tray_open {
            m.tray_open = true;
            m.event = media_event::MEDIA_REMOVAL;
            self.establish_ua(None, Sense::UA_MEDIUM_NOT_PRESENT);
            log::info!("{}: medium ejected by the host", self.name);
        }
        self.set_ready(&m);
        Ok(())
    }

    /// A LU that starts with no medium loaded and the tray closed (as after power on): what a
    /// worker restarted after the host ejected a removable LUN's medium serves. Commands that
    /// need a medium get NOT READY, MEDIUM NOT PRESENT until [`LogicalUnit::change_medium`]
    /// loads one; no unit attention or media event is raised (every I_T nexus gets the power-on
    /// unit attention of a new LU first). Thin provisioning is off: no medium to ask.
    pub fn without_medium(opts: LunOptions) -> Self {
        let lu = Self::new(Arc::new(NoMedium), opts);
        {
            let mut m = lu.lock_medium();
            m.empty = true;
            lu.set_ready(&m);
        }
        lu
    }

    /// The host closes the tray; the medium (if one is loaded) becomes accessible again.
    pub fn load(&self) -> Result<(), MediumError> {
        if !self.removable() {
            return Err(MediumError::NotRemovable);
        }
        let mut m = self.lock_medium();
        if m.tray_open {
            m.tray_open = false;
            if !m.empty {
                self.medium_arrived(&mut m);
            }
        }
        self.set_ready(&m);
        Ok(())
    }

    /// The host changes the medium: `Some` loads `backend` (the tray ends closed, the guest sees
    /// the old medium go and the new one arrive), `None` removes it (the tray ends open). The
    /// previous backend is dropped once the commands still using it are done (so the caller's
    /// thread may close the old file). A lock set by the guest is honored as by
    /// [`LogicalUnit::eject`]. The LU keeps its configuration: the caller opens the new medium
    /// read-only for a CD-ROM or a `readonly` LUN (the LU refuses writes either way).
    pub fn change_medium(
        &self,
        backend: Option<Arc<dyn BlockBackend>>,
        force: bool,
    ) -> Result<(), MediumError> {
        if !self.removable() {
            return Err(MediumError::NotRemovable);
        }
        if let Some(b) = &backend {
            let size = b.size();
            if size < u64::from(self.block_size()) {
                return Err(MediumError::TooSmall {
                    size,
                    block_size: self.block_size(),
                });
            }
        }
        let mut m = self.lock_medium();
        if m.locked && !force {
            m.event = media_event::EJECT_REQUEST;
            return Err(MediumError::Locked);
        }
        m.locked = false;
        // The old medium goes first (the guest must not read the new one as the old one).
        m.tray_open = true;
        self.medium_ready.store(false, Ordering::Release);
        if !m.empty {
            self.establish_ua(None, Sense::UA_MEDIUM_NOT_PRESENT);
        }
        m.event = media_event::MEDIA_REMOVAL;
        match backend {
            Some(b) => {
                self.retire(self.swap_backend(b));
                m.empty = false;
                m.tray_open = false;
                self.medium_arrived(&mut m);
            }
            None => {
                self.retire(self.swap_backend(Arc::new(NoMedium)));
                m.empty = true;
                self.reported_blocks.store(0, Ordering::Relaxed);
                log::info!("{}: medium removed by the host", self.name);
            }
        }
        self.set_ready(&m);
        Ok(())
    }

    /// Releases a replaced backend on this (the caller's) thread if no command uses it, else
    /// keeps it until a later change finds it unused; releases the earlier ones now unused.
    fn retire(&self, old: Arc<dyn BlockBackend>) {
        let mut retired = self.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.retain(|b| Arc::strong_count(b) > 1);
        if Arc::strong_count(&old) > 1 {
            retired.push(old);
        }
    }

    /// START STOP UNIT: START 0 stops the LU (media access then fails with NOT READY,
    /// INITIALIZING COMMAND REQUIRED until a START 1), flushing the write cache first unless
    /// NO_FLUSH. With LOEJ on a removable LU the medium is ejected (START 0) or loaded (START 1)
    /// instead, unless the guest prevents removal (MEDIUM REMOVAL PREVENTED); on a fixed
    /// medium LOEJ is ignored. Power conditions (no power condition mode page) other than 0h
    /// START_VALID are rejected.
    pub(super) fn start_stop_unit(&self, cdb: &Cdb) -> CmdResult {
        let power_condition = cdb.byte(4) >> 4;
        if power_condition != 0 {
            return Err(Sense::invalid_cdb_field(4, Some(7)));
        }
        if cdb.byte(3) & 0x0f != 0 {
            // POWER CONDITION MODIFIER is only meaningful with a power condition.
            return Err(Sense::invalid_cdb_field(3, Some(3)));
        }
        let start = cdb.bit(4, 0x01);
        let loej = cdb.bit(4, 0x02);
        let no_flush = cdb.bit(4, 0x04);
        if !start && !no_flush && !self.read_only() && self.medium_ready.load(Ordering::Acquire) {
            self.backend()
                .flush()
                .map_err(|e| self.io_error(cdb, IoOp::Flush, 0, &e))?;
        }
        if loej && self.removable() {
            return self.load_eject(start);
        }
        let was_stopped = self.stopped.swap(!start, Ordering::Relaxed);
        if was_stopped == start {
            log::info!(
                "{}: {}",
                self.name,
                if start { "started" } else { "stopped" }
            );
        }
        Ok(CmdOutput::good(0))
    }

    /// The guest's eject (`load` false) or load: as QEMU's scsi-cd, a prevented removal fails
    /// with ILLEGAL REQUEST (NOT READY without a medium), MEDIUM REMOVAL PREVENTED.
    fn load_eject(&self, load: bool) -> CmdResult {
        let mut m = self.lock_medium();
        if load {
            if m.tray_open {
                m.tray_open = false;
                if !m.empty {
                    self.medium_arrived(&mut m);
                }
            }
        } else if !m.tray_open {
            if m.locked {
                return Err(if m.empty {
                    Sense::NOT_READY_REMOVAL_PREVENTED
                } else {
                    Sense::MEDIUM_REMOVAL_PREVENTED
                });
            }
            m.tray_open = true;
            m.event = media_event::MEDIA_REMOVAL;
            log::info!("{}: medium ejected by the guest", self.name);
        }
        self.set_ready(&m);
        Ok(CmdOutput::good(0))
    }

    /// PREVENT ALLOW MEDIUM REMOVAL: PREVENT 01b locks a removable medium in (the guest's and
    /// the host's ejects then fail), 00b unlocks it; on a fixed medium there is nothing to
    /// lock. The obsolete persistent-prevent values 1xb are rejected.
    pub(super) fn prevent_allow_medium_removal(&self, cdb: &Cdb) -> CmdResult {
        if cdb.byte(4) & 0x02 != 0 {
            return Err(Sense::invalid_cdb_field(4, Some(1)));
        }
        if self.removable() {
            self.lock_medium().locked = cdb.bit(4, 0x01);
        }
        Ok(CmdOutput::good(0))
    }

    /// PRE-FETCH(10/16): the range is checked; nothing is read ahead (the host page cache does
    /// its own read-ahead), so the command completes with GOOD, which SBC-4 5.11 specifies for
    /// "the cache does not have enough capacity" (CONDITION MET would claim the blocks are now
    /// cached).
    pub(super) fn pre_fetch(&self, cdb: &Cdb) -> CmdResult {
        let r = block_range(cdb);
        self.byte_range(r.lba, r.blocks)?;
        Ok(CmdOutput::good(0))
    }
}
