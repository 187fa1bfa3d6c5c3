//! The LUN set a restarted worker gets (`--restart-worker=on-failure`).
//!
//! A worker is created from the supervisor's resources (`spawn::Resources`): the opened LUNs and the numbers of
//! their descriptors, which are all it keeps. The supervisor is the authority on which LUNs the
//! daemon serves, so every change the management socket made and the worker confirmed is
//! applied here too ([`apply`]): a LUN added at run time stays open in the supervisor (its copy
//! of the files, and so its lock), a removed one is closed (its lock goes once the worker's copy
//! goes too), a resize re-reads the size, `set-readonly` changes the configuration, a medium
//! change (`change-medium`, `eject`) replaces the LUN's medium with the supervisor's copy of the
//! new one, or with none, and closes the old one (its lock goes once no worker holds it). A worker
//! restarted after a crash then serves the LUNs as the operator left them, from the same open
//! files. Without restarts the supervisor keeps no LUN (the worker holds them) and the changes
//! are dropped ([`Retained::None`]).

use std::os::fd::RawFd;

use log::{info, warn};

use super::open::{LunBackend, OpenedLun};

/// What the next worker inherits: the opened LUNs and their descriptors' numbers (the only
/// descriptors it keeps), `spawn::Resources::{luns, lun_fds}`.
pub struct LunSet<'a> {
    pub luns: &'a mut Vec<OpenedLun>,
    pub fds: &'a mut Vec<RawFd>,
}

/// A change to the LUN set, confirmed by the worker.
#[derive(Debug)]
pub enum Change {
    /// A LUN added at run time: the supervisor's own copy of its files.
    Added(Box<OpenedLun>),
    Removed {
        target: u8,
        lun: u16,
    },
    Resized {
        target: u8,
        lun: u16,
    },
    ReadOnly {
        target: u8,
        lun: u16,
        read_only: bool,
    },
    /// A removable LUN's new medium: the supervisor's own copy of its file (`change-medium`;
    /// only its source and backend are used: the LUN keeps its pr-file and options), or none
    /// (`eject`).
    Medium {
        target: u8,
        lun: u16,
        medium: Option<Box<OpenedLun>>,
    },
    /// An iSCSI LUN added at run time: where the worker's reconnections log in (for the
    /// supervisor's `Reconnector`, with or without restarts; nothing to apply here).
    Portal {
        target: u8,
        lun: u16,
        portal: Box<super::iscsi::IscsiPortal>,
    },
}

/// The descriptors a LUN's files use in this process (its source's and its `pr-file`'s).
fn fds_of(lun: &OpenedLun) -> Vec<RawFd> {
    [
        lun.backend.block().and_then(|b| b.raw_fd()),
        lun.pr_file.as_ref().and_then(|p| p.0.raw_fd()),
    ]
    .into_iter()
    .flatten()
    .collect()
}

/// Applies `change` to what the next worker inherits.
pub fn apply(res: &mut LunSet<'_>, change: Change) {
    let find = |res: &LunSet<'_>, target: u8, lun: u16| {
        res.luns
            .iter()
            .position(|l| l.config.target == target && l.config.lun == lun)
    };
    match change {
        Change::Added(lun) => {
            let lun = *lun;
            if let Some(i) = find(res, lun.config.target, lun.config.lun) {
                // The record refuses a taken address, so this is a bug; the newer one wins.
                warn!(
                    "LUN {}:{} added twice to the retained set; the older is closed",
                    lun.config.target, lun.config.lun
                );
                remove_at(res, i);
            }
            res.fds.extend(fds_of(&lun));
            res.luns.push(lun);
        }
        Change::Removed { target, lun } => {
            if let Some(i) = find(res, target, lun) {
                remove_at(res, i);
            }
        }
        Change::Resized { target, lun } => {
            let opened = find(res, target, lun).map(|i| &res.luns[i]);
            if let Some(b) = opened.and_then(|l| l.backend.block()) {
                // The next worker is made from this copy: it must not see the old size.
                if let Err(e) = b.refresh_size() {
                    warn!("LUN {target}:{lun}: cannot re-read its size for restarts: {e}");
                }
            }
        }
        Change::ReadOnly {
            target,
            lun,
            read_only,
        } => {
            if let Some(i) = find(res, target, lun) {
                res.luns[i].config.read_only = read_only;
            }
        }
        Change::Medium {
            target,
            lun,
            medium,
        } => {
            // An unknown address drops (closes) the new medium.
            if let Some(i) = find(res, target, lun) {
                replace_medium(res, i, medium.map(|m| *m));
            }
        }
        Change::Portal { .. } => {}
    }
}

/// Puts `medium` (`None`: no medium) in LUN `i` and closes the one it replaces. The LUN keeps
/// its configuration but the source, and its `pr-file`.
fn replace_medium(res: &mut LunSet<'_>, i: usize, medium: Option<OpenedLun>) {
    let retained = &mut res.luns[i];
    let backend = match medium {
        Some(m) => {
            retained.config.source = m.config.source;
            m.backend
        }
        None => LunBackend::NoMedium,
    };
    // The old medium's number goes before its file closes (the number may be reused for
    // something the next worker must not inherit); the new one's file is already open.
    if let Some(old) = retained.backend.block().and_then(|b| b.raw_fd()) {
        res.fds.retain(|&fd| fd != old);
    }
    res.fds.extend(backend.block().and_then(|b| b.raw_fd()));
    let old = std::mem::replace(&mut retained.backend, backend);
    info!(
        "LUN {}:{}: {} for restarts{}",
        retained.config.target,
        retained.config.lun,
        match &retained.backend {
            LunBackend::NoMedium => "no medium".to_owned(),
            _ => format!("medium {}", retained.config.source),
        },
        if old.block().is_some() {
            "; the old one is closed in the supervisor"
        } else {
            ""
        }
    );
    drop(old);
}

/// Closes the supervisor's copy of LUN `i` and forgets its descriptor numbers (which may be
/// reused for something the next worker must not inherit).
fn remove_at(res: &mut LunSet<'_>, i: usize) {
    let lun = res.luns.remove(i);
    let fds = fds_of(&lun);
    res.fds.retain(|fd| !fds.contains(fd));
    info!(
        "LUN {}:{}: closed in the supervisor; a restarted worker will not serve it",
        lun.config.target, lun.config.lun
    );
    drop(lun);
}

/// Where confirmed changes go.
pub enum Retained<'a> {
    /// `--restart-worker=on-failure`: what the next worker is made from.
    Restarts(LunSet<'a>),
    /// No restarts: nothing is kept (dropping an added LUN's copy closes it).
    None,
}

impl Retained<'_> {
    /// Applies every change, in order.
    pub fn apply_all(&mut self, changes: impl IntoIterator<Item = Change>) {
        for change in changes {
            match self {
                Retained::Restarts(res) => apply(res, change),
                Retained::None => drop(change),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{fs::File, os::fd::AsRawFd, sync::Arc};

    use super::*;
    use crate::{block::FileBackend, config::LunConfig};

    fn file_lun(dir: &std::path::Path, target: u8, lun: u16, size: u64) -> (OpenedLun, RawFd) {
        let path = dir.join(format!("{target}-{lun}.img"));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        f.set_len(size).unwrap();
        let fd = f.as_raw_fd();
        let backend = FileBackend::new(f, false).unwrap();
        (
            OpenedLun {
                config: LunConfig::new(target, lun, &path),
                backend: LunBackend::Block(Arc::new(backend)),
                pr_file: None,
            },
            fd,
        )
    }

    fn open(fd: RawFd) -> bool {
        // SAFETY: F_GETFD only asks whether `fd` is open.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn changes_shape_what_the_next_worker_inherits() {
        let dir = tempfile::tempdir().unwrap();
        let (mut luns, mut fds) = (Vec::new(), Vec::new());
        let (a, fd_a) = file_lun(dir.path(), 0, 1, 1 << 20);
        let (b, fd_b) = file_lun(dir.path(), 0, 2, 1 << 20);
        Retained::Restarts(LunSet {
            luns: &mut luns,
            fds: &mut fds,
        })
        .apply_all([Change::Added(Box::new(a)), Change::Added(Box::new(b))]);
        assert_eq!(fds, vec![fd_a, fd_b]);

        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("0-2.img"))
            .unwrap()
            .set_len(2 << 20)
            .unwrap();
        Retained::Restarts(LunSet {
            luns: &mut luns,
            fds: &mut fds,
        })
        .apply_all([
            Change::Removed { target: 0, lun: 1 },
            Change::Resized { target: 0, lun: 2 },
            Change::ReadOnly {
                target: 0,
                lun: 2,
                read_only: true,
            },
            // Unknown addresses change nothing.
            Change::Removed { target: 3, lun: 3 },
        ]);
        assert_eq!(fds, vec![fd_b]);
        assert!(!open(fd_a), "a removed LUN's file is closed");
        assert!(open(fd_b));
        assert_eq!(luns.len(), 1);
        assert_eq!(luns[0].config.lun, 2);
        assert!(luns[0].config.read_only);
        assert_eq!(luns[0].backend.size(), 2 << 20);
    }

    /// `change-medium` swaps the retained medium for the supervisor's copy of the new one and
    /// closes the old one; `eject` leaves none; the LUN's pr-file stays.
    #[test]
    fn a_medium_change_replaces_only_the_medium() {
        let dir = tempfile::tempdir().unwrap();
        let (mut luns, mut fds) = (Vec::new(), Vec::new());
        let (mut cd, fd_a) = file_lun(dir.path(), 0, 1, 1 << 20);
        let (pr, fd_pr) = file_lun(dir.path(), 9, 9, 4096);
        let LunBackend::Block(pr) = pr.backend else {
            unreachable!()
        };
        cd.pr_file = Some(crate::scsi::PrFile(pr));
        let (b, fd_b) = file_lun(dir.path(), 0, 2, 2 << 20);
        let (c, fd_c) = file_lun(dir.path(), 0, 3, 1 << 20);
        let mut retained = Retained::Restarts(LunSet {
            luns: &mut luns,
            fds: &mut fds,
        });
        retained.apply_all([
            Change::Added(Box::new(cd)),
            Change::Medium {
                target: 0,
                lun: 1,
                medium: Some(Box::new(b)),
            },
            // Unknown address: the new medium is closed.
            Change::Medium {
                target: 5,
                lun: 5,
                medium: Some(Box::new(c)),
            },
        ]);
        assert_eq!(fds, vec![fd_pr, fd_b]);
        assert!(!open(fd_a), "the replaced medium is closed");
        assert!(!open(fd_c));
        assert_eq!(luns[0].backend.size(), 2 << 20);
        assert!(luns[0].config.source.to_string().ends_with("0-2.img"));
        assert_eq!((luns[0].config.target, luns[0].config.lun), (0, 1));
        Retained::Restarts(LunSet {
            luns: &mut luns,
            fds: &mut fds,
        })
        .apply_all([Change::Medium {
            target: 0,
            lun: 1,
            medium: None,
        }]);
        assert_eq!(fds, vec![fd_pr]);
        assert!(!open(fd_b), "the ejected medium is closed");
        assert!(open(fd_pr), "the pr-file stays");
        assert!(matches!(luns[0].backend, LunBackend::NoMedium));
        assert!(luns[0].pr_file.is_some());
    }

    #[test]
    fn without_restarts_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (a, fd_a) = file_lun(dir.path(), 0, 1, 1 << 20);
        Retained::None.apply_all([Change::Added(Box::new(a))]);
        assert!(!open(fd_a));
    }
}
