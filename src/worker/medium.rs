//! The worker's side of a medium change (`change-medium`, `eject` on the management socket):
//! the image the supervisor opened becomes the removable LU's medium, or the medium goes.
//!
//! The LU does the SCSI part ([`LogicalUnit::change_medium`]: the unit attentions, the media
//! event, the guest's lock); this only turns the descriptor into a backend and the outcome into
//! a reply. A replaced medium's file is closed here, on the broker thread, once no command uses
//! it (removable LUs never register their files with io_uring, so nothing else holds it).

use std::{fs::File, os::fd::OwnedFd, sync::Arc};

use log::info;

use crate::{
    block::{BlockBackend, FileBackend},
    broker::manage::{FailureCode, LunAddress, ManageReply, WireCache},
    scsi::{LogicalUnit, MediumError},
};

/// Loads the image in `fds` (when `medium` says one came) into `lu`, or removes its medium.
pub(super) fn change(
    address: LunAddress,
    lu: &LogicalUnit,
    medium: Option<WireCache>,
    fds: Vec<OwnedFd>,
    force: bool,
) -> ManageReply {
    let backend: Option<Arc<dyn BlockBackend>> = match (medium, fds.into_iter().next()) {
        (None, _) => None,
        (Some(_), None) => return ManageReply::failed(FailureCode::Invalid, "no image fd"),
        (Some(cache), Some(fd)) => {
            match FileBackend::new(File::from(fd), cache == WireCache::None) {
                Ok(b) => Some(Arc::new(b)),
                Err(e) => {
                    return ManageReply::failed(
                        FailureCode::Io,
                        format!("LUN {address}: image unusable: {e}"),
                    )
                }
            }
        }
    };
    let loading = backend.is_some();
    match lu.change_medium(backend, force) {
        Ok(()) => {
            info!(
                "LUN {address}: medium {} by the management{}",
                if loading { "changed" } else { "removed" },
                if force { " (forced)" } else { "" }
            );
            ManageReply::Done
        }
        Err(e) => {
            let code = match e {
                MediumError::NotRemovable => FailureCode::Unsupported,
                MediumError::Locked => FailureCode::MediumLocked,
                MediumError::TooSmall { .. } => FailureCode::Io,
            };
            ManageReply::failed(code, format!("LUN {address}: {e}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::{
        broker::manage::{
            AddLun, Backing, FailureCode, LunAddress, ManageReply, ManageRequest, WireCache,
        },
        config::{LunConfig, LunType},
        scsi::{ScsiBus, SgList},
        worker::{manage::Manager, vhost_user::ScsiBackend},
    };

    fn image(size: u64) -> tempfile::NamedTempFile {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(size).unwrap();
        img
    }

    /// A manager with `lun` at 0:1: a CD-ROM over a 1 MiB image, or a fixed disk.
    fn manager(cdrom: bool, img: &tempfile::NamedTempFile) -> (Manager, Arc<ScsiBus>) {
        let backend = Arc::new(ScsiBackend::new(Arc::new(ScsiBus::new()), 1, 16));
        let bus = backend.bus().clone();
        let mut m = Manager::new(backend);
        let mut c = LunConfig::new(0, 1, img.path());
        if cdrom {
            c.lun_type = LunType::Cdrom;
            c.block_size = crate::config::BlockSize::B2048;
            c.read_only = true;
            c.removable = true;
        }
        let add = ManageRequest::AddLun(AddLun::from_config(&c, Backing::File));
        assert_eq!(
            m.handle(add, vec![img.reopen().unwrap().into()]),
            ManageReply::Done
        );
        (m, bus)
    }

    fn change(m: &mut Manager, img: Option<&tempfile::NamedTempFile>, force: bool) -> ManageReply {
        let req = ManageRequest::ChangeMedium {
            address: LunAddress::new(0, 1),
            medium: img.map(|_| WireCache::Writeback),
            force,
        };
        let fds = img
            .map(|i| i.reopen().unwrap().into())
            .into_iter()
            .collect();
        let reply = m.handle(req.clone(), fds);
        // Whatever the worker says passes the supervisor's check of hostile replies.
        assert_eq!(reply.check(&req, 0), Ok(()), "{reply:?}");
        reply
    }

    fn code(reply: ManageReply) -> FailureCode {
        match reply {
            ManageReply::Failed { code, .. } => code,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_cdrom_gets_a_new_medium_and_loses_it() {
        let a = image(1 << 20);
        let (mut m, bus) = manager(true, &a);
        let lu = bus.lookup(0, 1).unwrap();
        assert_eq!(lu.size(), 1 << 20);
        let b = image(2 << 20);
        assert_eq!(change(&mut m, Some(&b), false), ManageReply::Done);
        assert_eq!(lu.size(), 2 << 20, "the new medium is served");
        let s = lu.medium_state();
        assert!(s.loaded && !s.tray_open);
        assert_eq!(change(&mut m, None, false), ManageReply::Done);
        assert!(!lu.medium_state().loaded);
        // Ejecting an empty drive is no error (as QEMU's eject).
        assert_eq!(change(&mut m, None, false), ManageReply::Done);
        // Smaller than one 2048-byte block.
        let tiny = image(1000);
        assert_eq!(code(change(&mut m, Some(&tiny), false)), FailureCode::Io);
        assert!(!lu.medium_state().loaded);
    }

    #[test]
    fn a_locked_medium_needs_force() {
        let a = image(1 << 20);
        let (mut m, bus) = manager(true, &a);
        let lu = bus.lookup(0, 1).unwrap();
        // The guest locks the medium in: PREVENT ALLOW MEDIUM REMOVAL, PREVENT = 1.
        let prevent = [0x1e, 0, 0, 0, 1, 0];
        // (The first command gets the power-on unit attention.)
        bus.execute(0, 1, &[0; 6], &SgList::new(), &SgList::new());
        let out = bus.execute(0, 1, &prevent, &SgList::new(), &SgList::new());
        assert_eq!(out.status, 0, "{:02x?}", out.sense);
        let b = image(2 << 20);
        assert_eq!(
            code(change(&mut m, Some(&b), false)),
            FailureCode::MediumLocked
        );
        assert_eq!(code(change(&mut m, None, false)), FailureCode::MediumLocked);
        assert_eq!(lu.size(), 1 << 20, "the refused change changed nothing");
        assert!(lu.medium_state().locked);
        assert_eq!(change(&mut m, Some(&b), true), ManageReply::Done);
        assert_eq!(lu.size(), 2 << 20);
        assert!(!lu.medium_state().locked, "forcing overrides the lock");
    }

    #[test]
    fn a_fixed_disk_has_no_medium_to_change() {
        let a = image(1 << 20);
        let (mut m, bus) = manager(false, &a);
        let b = image(2 << 20);
        assert_eq!(
            code(change(&mut m, Some(&b), false)),
            FailureCode::Unsupported
        );
        assert_eq!(code(change(&mut m, None, true)), FailureCode::Unsupported);
        assert_eq!(bus.lookup(0, 1).unwrap().size(), 1 << 20);
        // No LUN there at all.
        let req = ManageRequest::ChangeMedium {
            address: LunAddress::new(0, 9),
            medium: None,
            force: false,
        };
        assert_eq!(code(m.handle(req, vec![])), FailureCode::NoSuchLun);
        // A load request without its descriptor is refused before anything happens.
        let req = ManageRequest::ChangeMedium {
            address: LunAddress::new(0, 1),
            medium: Some(WireCache::None),
            force: false,
        };
        assert_eq!(code(m.handle(req, vec![])), FailureCode::Invalid);
    }
}
