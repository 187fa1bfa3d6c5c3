//! The worker's side of runtime management: the supervisor's [`ManageRequest`]s, received over
//! the fd broker, applied to the running bus.
//!
//! Runs on the broker thread, between messages: it never waits for the supervisor. What it
//! waits for is bounded: a removal waits for the commands still using the LUN
//! ([`REMOVE_DRAIN`]); a LUN whose commands outlast that stays off the bus and is dropped at
//! a later message, once they are gone.

use std::{fs::File, os::fd::OwnedFd, sync::Arc, time::Duration};

use log::{info, warn};

use super::{broker::ManageHandler, spawner::IscsiStarter, vhost_user::ScsiBackend};
use crate::{
    block::{
        iscsi::{broker_reconnect, IscsiHandover},
        BlockBackend, FileBackend, NullBackend,
    },
    broker::{
        endpoint::BrokerHandle,
        manage::{
            AddLun, Backing, FailureCode, LunAddress, LunState, LunStats, ManageMsg, ManageReply,
            ManageRequest, OpStats, WireCache, MAX_LIST_PAGE, MAX_STATS_PAGE,
        },
        Body,
    },
    scsi::{
        sense::Sense, stats::ClassSnapshot, wait_unused, BusError, DeviceType, LogicalUnit, PrFile,
    },
    virtio::{events::Event, LunAddress as WireLun},
};

/// How long a removal waits for the commands in flight on the LUN.
pub const REMOVE_DRAIN: Duration = Duration::from_secs(30);

/// The broker thread's handler for `Body::Manage`: requests go to a [`Manager`] of `backend`,
/// its replies go back; a reply in a request's place is refused.
pub fn handler(backend: Arc<ScsiBackend>, iscsi: Option<IscsiRuntime>) -> ManageHandler {
    let mut manager = Manager::new(backend);
    manager.iscsi = iscsi;
    Box::new(move |msg, fds| match msg {
        ManageMsg::Request(request) => (
            Body::Manage(ManageMsg::Reply(manager.handle(request, fds))),
            Vec::new(),
        ),
        ManageMsg::Reply(_) => (Body::error("a management reply is no request"), Vec::new()),
    })
}

/// What iSCSI LUNs added at run time need in the worker: the thread that starts their LUN
/// threads, and the broker for their reconnections.
pub struct IscsiRuntime {
    pub starter: IscsiStarter,
    pub broker: BrokerHandle,
}

/// Applies management requests to the bus of `backend`.
pub struct Manager {
    backend: Arc<ScsiBackend>,
    /// Removed LUNs whose commands had not all finished when the removal replied: dropped
    /// (file closed) once they have.
    draining: Vec<Arc<LogicalUnit>>,
    /// None: iSCSI LUNs cannot be added (no management socket, tests).
    iscsi: Option<IscsiRuntime>,
}

impl Manager {
    pub fn new(backend: Arc<ScsiBackend>) -> Self {
        Self {
            backend,
            draining: Vec::new(),
            iscsi: None,
        }
    }

    /// `add-lun` of an iSCSI LUN: a LUN thread on the connection the supervisor logged in,
    /// then the passthrough LU on the bus.
    fn add_iscsi(
        &mut self,
        add: &AddLun,
        target_lun: u16,
        params: &crate::iscsi::login::SessionParams,
        fd: OwnedFd,
    ) -> ManageReply {
        let address = add.address;
        let Some(rt) = &self.iscsi else {
            return ManageReply::failed(
                FailureCode::Unsupported,
                "this worker cannot start iSCSI LUNs at run time",
            );
        };
        let handover = IscsiHandover::new(
            target_lun,
            add.source.clone(),
            std::net::TcpStream::from(fd),
            params.clone(),
        );
        let reconnect = broker_reconnect(rt.broker.clone(), address.target, address.lun);
        let lu = match rt.starter.start_lun(handover, reconnect) {
            Ok(lu) => lu,
            Err(e) => {
                return ManageReply::failed(
                    FailureCode::Io,
                    format!("LUN {address}: cannot start its iSCSI thread: {e}"),
                )
            }
        };
        if let Err(BusError::AddressInUse(..)) =
            self.backend
                .bus()
                .insert_passthrough(address.target, address.lun, lu)
        {
            // The LU just made goes with the error: its thread ends, the connection closes.
            return ManageReply::failed(
                FailureCode::AddressInUse,
                format!("LUN {address} already exists"),
            );
        }
        info!("LUN {address} added: {} (passthrough)", add.source);
        self.backend.raise_event(Event::lun_added(wire(address)));
        ManageReply::Done
    }

    /// Carries out one request that came with `fds`; the reply says what happened (nothing,
    /// when it failed).
    pub fn handle(&mut self, request: ManageRequest, fds: Vec<OwnedFd>) -> ManageReply {
        self.draining.retain(|lu| Arc::strong_count(lu) > 1);
        if let Err(e) = request.check(fds.len()) {
            return ManageReply::failed(FailureCode::Invalid, e.to_string());
        }
        match request {
            ManageRequest::AddLun(add) => self.add(&add, fds),
            ManageRequest::RemoveLun { address } => self.remove(address),
            ManageRequest::Resize { address } => {
                self.with_lun(address, |m, lu| m.resize(address, lu))
            }
            ManageRequest::SetReadOnly { address, read_only } => {
                self.with_lun(address, |m, lu| {
                    if !read_only && lu.device_type() == DeviceType::Cdrom {
                        return ManageReply::failed(
                            FailureCode::Unsupported,
                            format!("LUN {address} is a CD-ROM: always read-only"),
                        );
                    }
                    lu.set_read_only(read_only);
                    // Linux re-reads the WP bit (MODE SENSE) when told the mode parameters
                    // changed.
                    lu.mode_parameters_changed();
                    let sense = Sense::MODE_PARAMETERS_CHANGED;
                    m.backend.raise_event(Event::param_changed(
                        wire(address),
                        sense.asc,
                        sense.ascq,
                    ));
                    ManageReply::Done
                })
            }
            ManageRequest::Flush { address } => self.with_lun(address, |_, lu| match lu.flush() {
                Ok(()) => ManageReply::Done,
                Err(e) => ManageReply::failed(FailureCode::Io, format!("flush of {address}: {e}")),
            }),
            ManageRequest::RetryHeld => {
                // Rings every request queue's retry bell; the retries run on the queue threads.
                self.backend.retry_held();
                ManageReply::Done
            }
            ManageRequest::Stats { address, after } => self.stats(address, after),
            ManageRequest::List { after } => self.list(after),
            ManageRequest::ChangeMedium {
                address,
                medium,
                force,
            } => self.with_lun(address, |_, lu| {
                super::medium::change(address, lu, medium, fds, force)
            }),
        }
    }

    fn with_lun(
        &mut self,
        address: LunAddress,
        f: impl FnOnce(&mut Self, &LogicalUnit) -> ManageReply,
    ) -> ManageReply {
        match self.backend.bus().lookup(address.target, address.lun) {
            Some(lu) => f(self, &lu),
            None => no_such_lun(address),
        }
    }

    fn add(&mut self, add: &AddLun, fds: Vec<OwnedFd>) -> ManageReply {
        let address = add.address;
        if self.backend.bus().lun_exists(address.target, address.lun) {
            return ManageReply::failed(
                FailureCode::AddressInUse,
                format!("LUN {address} already exists"),
            );
        }
        let mut fds = fds.into_iter();
        let backend: Arc<dyn BlockBackend> = match add.backing {
            Backing::Iscsi {
                target_lun,
                ref params,
            } => {
                let Some(fd) = fds.next() else {
                    return ManageReply::failed(FailureCode::Invalid, "no connection fd");
                };
                return self.add_iscsi(add, target_lun, params, fd);
            }
            Backing::Null { size } => Arc::new(NullBackend::new(size)),
            Backing::File => {
                let Some(fd) = fds.next() else {
                    return ManageReply::failed(FailureCode::Invalid, "no image fd");
                };
                match FileBackend::new(File::from(fd), add.cache == WireCache::None) {
                    Ok(b) => Arc::new(b),
                    Err(e) => {
                        return ManageReply::failed(
                            FailureCode::Io,
                            format!("LUN {address}: image unusable: {e}"),
                        )
                    }
                }
            }
        };
        let size = backend.size();
        if size < u64::from(add.block_size) {
            return ManageReply::failed(
                FailureCode::Io,
                format!(
                    "LUN {address}: {size} bytes is less than one {}-byte block",
                    add.block_size
                ),
            );
        }
        let pr_file = if add.pr_file {
            let Some(fd) = fds.next() else {
                return ManageReply::failed(FailureCode::Invalid, "no pr-file fd");
            };
            match FileBackend::new(File::from(fd), false) {
                Ok(b) => Some(PrFile(Arc::new(b))),
                Err(e) => {
                    return ManageReply::failed(
                        FailureCode::Io,
                        format!("LUN {address}: pr-file unusable: {e}"),
                    )
                }
            }
        } else {
            None
        };
        let lu = super::assemble::logical_unit(&add.to_config(), backend, pr_file);
        match self
            .backend
            .bus()
            .insert_lun(address.target, address.lun, lu)
        {
            Ok(_) => {}
            Err(BusError::AddressInUse(..)) => {
                return ManageReply::failed(
                    FailureCode::AddressInUse,
                    format!("LUN {address} already exists"),
                )
            }
        }
        info!(
            "LUN {address} added: {} ({size} bytes, {}-byte blocks, {})",
            add.source,
            add.block_size,
            if add.read_only {
                "read-only"
            } else {
                "read-write"
            }
        );
        // Its file into the rings' spare slot (idle rings now, busy queues at their next look).
        self.backend.sync_fixed_files();
        self.backend.raise_event(Event::lun_added(wire(address)));
        ManageReply::Done
    }

    fn remove(&mut self, address: LunAddress) -> ManageReply {
        let bus = self.backend.bus();
        if let Some(p) = bus.remove_passthrough(address.target, address.lun) {
            // An iSCSI LUN: its thread finishes the commands already sent, then closes the
            // connection (`block::iscsi`), once the last reference goes (ours, here; readers
            // of the old table let go at once).
            self.backend.raise_event(Event::lun_removed(wire(address)));
            info!(
                "LUN {address} removed ({}); its connection closes once the commands already \
                 sent are answered",
                p.describe()
            );
            return ManageReply::Done;
        }
        let Some(lu) = bus.remove_lun(address.target, address.lun) else {
            return no_such_lun(address);
        };
        // The guest stops sending to it; new commands already get LOGICAL UNIT NOT SUPPORTED.
        self.backend.raise_event(Event::lun_removed(wire(address)));
        self.backend.sync_fixed_files();
        if !wait_unused(&lu, REMOVE_DRAIN) {
            let left = Arc::strong_count(&lu) - 1;
            warn!(
                "LUN {address} removed, but {left} command(s) still hold it after \
                 {REMOVE_DRAIN:?}: its file is closed when they end"
            );
            self.draining.push(lu);
            return ManageReply::failed(
                FailureCode::Busy,
                format!(
                    "LUN {address} is off the bus, but {left} command(s) still use it; its \
                     file is closed when they end"
                ),
            );
        }
        // Busy queues may have let go of the file since.
        self.backend.sync_fixed_files();
        drop(lu);
        info!("LUN {address} removed; its file is closed");
        ManageReply::Done
    }

    fn resize(&mut self, address: LunAddress, lu: &LogicalUnit) -> ManageReply {
        let blocks = lu.block_count();
        match lu.resize() {
            Ok((old_size, new_size)) => {
                if lu.block_count() != blocks {
                    info!("LUN {address} resized: {old_size} -> {new_size} bytes");
                    let sense = Sense::CAPACITY_DATA_CHANGED;
                    self.backend.raise_event(Event::param_changed(
                        wire(address),
                        sense.asc,
                        sense.ascq,
                    ));
                }
                ManageReply::Resized { old_size, new_size }
            }
            Err(e) => ManageReply::failed(
                FailureCode::Io,
                format!("LUN {address}: cannot read its size: {e}"),
            ),
        }
    }

    fn stats(&self, address: Option<LunAddress>, after: Option<LunAddress>) -> ManageReply {
        let bus = self.backend.bus();
        if let Some(address) = address {
            return match bus.lookup(address.target, address.lun) {
                Some(lu) => ManageReply::Stats {
                    luns: vec![lun_stats(address, &lu)],
                    more: false,
                },
                None => no_such_lun(address),
            };
        }
        let (page, more) = page(bus.luns(), after, MAX_STATS_PAGE);
        ManageReply::Stats {
            luns: page.iter().map(|(a, lu)| lun_stats(*a, lu)).collect(),
            more,
        }
    }

    fn list(&self, after: Option<LunAddress>) -> ManageReply {
        let (page, more) = page(self.backend.bus().luns(), after, MAX_LIST_PAGE);
        ManageReply::List {
            luns: page
                .iter()
                .map(|(address, lu)| {
                    let (serial, wwn) = lu.identity();
                    LunState {
                        address: *address,
                        size: lu.size(),
                        block_size: lu.block_size(),
                        read_only: lu.read_only(),
                        serial: serial.to_owned(),
                        wwn,
                        in_flight: in_flight(lu),
                    }
                })
                .collect(),
            more,
        }
    }
}

type Lus = Vec<((u8, u16), Arc<LogicalUnit>)>;

/// The LUNs after `after`, at most `max`, and whether more follow.
fn page(
    luns: Lus,
    after: Option<LunAddress>,
    max: usize,
) -> (Vec<(LunAddress, Arc<LogicalUnit>)>, bool) {
    let mut rest = luns
        .into_iter()
        .map(|((t, l), lu)| (LunAddress::new(t, l), lu))
        .filter(|(a, _)| after.map_or(true, |after| *a > after))
        .peekable();
    let page: Vec<_> = rest.by_ref().take(max).collect();
    let more = rest.peek().is_some();
    (page, more)
}

/// Commands holding the LU besides the bus table and the caller's reference.
fn in_flight(lu: &Arc<LogicalUnit>) -> u64 {
    Arc::strong_count(lu).saturating_sub(2) as u64
}

fn lun_stats(address: LunAddress, lu: &Arc<LogicalUnit>) -> LunStats {
    let s = lu.stats();
    let op = |c: ClassSnapshot| OpStats {
        ops: c.ops,
        bytes: c.bytes,
        errors: c.errors,
        latency_us: c.latency_us,
    };
    LunStats {
        address,
        read: op(s.read),
        write: op(s.write),
        other: op(s.other),
        in_flight: in_flight(lu),
    }
}

fn wire(a: LunAddress) -> WireLun {
    WireLun {
        target: a.target,
        lun: a.lun,
    }
}

fn no_such_lun(address: LunAddress) -> ManageReply {
    ManageReply::failed(FailureCode::NoSuchLun, format!("no LUN {address}"))
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        os::fd::{AsRawFd, OwnedFd},
    };

    use super::*;
    use crate::{
        broker::manage::{ManageError, MAX_LIST_PAGE},
        config::LunConfig,
        scsi::ScsiBus,
    };

    fn manager() -> Manager {
        Manager::new(Arc::new(ScsiBackend::new(Arc::new(ScsiBus::new()), 1, 16)))
    }

    fn request(m: &mut Manager, req: ManageRequest, fds: Vec<OwnedFd>) -> ManageReply {
        let reply = m.handle(req.clone(), fds);
        // Whatever the worker says passes the supervisor's check of hostile replies.
        assert_eq!(reply.check(&req, 0), Ok(()), "{reply:?}");
        reply
    }

    fn add_null(target: u8, lun: u16) -> ManageRequest {
        let c = LunConfig::new(target, lun, "null://1M");
        ManageRequest::AddLun(AddLun::from_config(&c, Backing::Null { size: 1 << 20 }))
    }

    /// flock(2) on `fd` without waiting: false when another open file holds the lock.
    fn try_lock(fd: &impl AsRawFd) -> bool {
        // SAFETY: flock only takes a descriptor and flags.
        unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
    }

    #[test]
    fn add_resize_remove_a_file_lun() {
        let mut m = manager();
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(1 << 20).unwrap();
        // As the supervisor hands it over: open and locked.
        let file = img.reopen().unwrap();
        assert!(try_lock(&file));
        let c = LunConfig::new(0, 2, img.path());
        let add = ManageRequest::AddLun(AddLun::from_config(&c, Backing::File));
        assert!(matches!(
            request(&mut m, add.clone(), vec![]),
            ManageReply::Failed {
                code: FailureCode::Invalid,
                ..
            }
        ));
        assert_eq!(
            request(&mut m, add.clone(), vec![file.into()]),
            ManageReply::Done
        );
        let bus = m.backend.bus().clone();
        assert_eq!(bus.lookup(0, 2).unwrap().size(), 1 << 20);
        assert_eq!(m.backend.pending_events(), (1, false), "rescan event");
        // The same address again.
        let again = img.reopen().unwrap();
        assert!(matches!(
            request(&mut m, add, vec![again.into()]),
            ManageReply::Failed {
                code: FailureCode::AddressInUse,
                ..
            }
        ));

        // Grow the file, resize.
        img.as_file().set_len(3 << 20).unwrap();
        let address = LunAddress::new(0, 2);
        assert_eq!(
            request(&mut m, ManageRequest::Resize { address }, vec![]),
            ManageReply::Resized {
                old_size: 1 << 20,
                new_size: 3 << 20
            }
        );
        assert_eq!(bus.lookup(0, 2).unwrap().block_count(), 6144);
        assert_eq!(m.backend.pending_events(), (2, false), "param change event");
        // Unchanged size: no event.
        request(&mut m, ManageRequest::Resize { address }, vec![]);
        assert_eq!(m.backend.pending_events(), (2, false));

        // Read-only, flush.
        let ro = ManageRequest::SetReadOnly {
            address,
            read_only: true,
        };
        assert_eq!(request(&mut m, ro, vec![]), ManageReply::Done);
        assert!(bus.lookup(0, 2).unwrap().read_only());
        assert_eq!(
            request(&mut m, ManageRequest::Flush { address }, vec![]),
            ManageReply::Done
        );

        // While served, the image stays locked; removed, it is closed and unlocked.
        let other = img.reopen().unwrap();
        assert!(!try_lock(&other));
        let rm = ManageRequest::RemoveLun { address };
        assert_eq!(request(&mut m, rm.clone(), vec![]), ManageReply::Done);
        assert!(
            try_lock(&other),
            "the image is still open (and locked) after the removal"
        );
        assert!(bus.lookup(0, 2).is_none());
        assert_eq!(m.backend.pending_events(), (4, false), "removed event");
        assert!(matches!(
            request(&mut m, rm, vec![]),
            ManageReply::Failed {
                code: FailureCode::NoSuchLun,
                ..
            }
        ));
    }

    #[test]
    fn an_unusable_image_is_refused_and_nothing_changes() {
        let mut m = manager();
        let mut small = tempfile::tempfile().unwrap();
        small.write_all(&[0; 100]).unwrap();
        let c = LunConfig::new(0, 0, "/small");
        let add = ManageRequest::AddLun(AddLun::from_config(&c, Backing::File));
        assert!(matches!(
            request(&mut m, add, vec![small.into()]),
            ManageReply::Failed {
                code: FailureCode::Io,
                ..
            }
        ));
        // A pipe is no image.
        let (r, _w) = nix::unistd::pipe().unwrap();
        let add = ManageRequest::AddLun(AddLun::from_config(&c, Backing::File));
        assert!(matches!(
            request(&mut m, add, vec![r]),
            ManageReply::Failed {
                code: FailureCode::Io,
                ..
            }
        ));
        assert!(m.backend.bus().luns().is_empty());
        assert_eq!(m.backend.pending_events(), (0, false));
    }

    #[test]
    fn list_and_stats_come_in_bounded_pages() {
        let mut m = manager();
        let n = MAX_LIST_PAGE as u16 + 6;
        for l in 0..n {
            assert_eq!(request(&mut m, add_null(1, l), vec![]), ManageReply::Done);
        }
        // More events than the backlog holds, with no guest listening: missed.
        assert!(m.backend.pending_events().1);

        let first = ManageRequest::List { after: None };
        let ManageReply::List { luns, more } = request(&mut m, first, vec![]) else {
            panic!("not a list")
        };
        assert_eq!((luns.len(), more), (MAX_LIST_PAGE, true));
        assert_eq!(luns[0].serial, "VUS-T001-L00000");
        assert_eq!(luns[0].size, 1 << 20);
        let next = ManageRequest::List {
            after: Some(luns.last().unwrap().address),
        };
        let ManageReply::List { luns, more } = request(&mut m, next, vec![]) else {
            panic!("not a list")
        };
        assert_eq!((luns.len(), more), (6, false));

        let mut seen = 0;
        let mut after = None;
        loop {
            let req = ManageRequest::Stats {
                address: None,
                after,
            };
            let ManageReply::Stats { luns, more } = request(&mut m, req, vec![]) else {
                panic!("not stats")
            };
            assert!(luns.len() <= MAX_STATS_PAGE);
            seen += luns.len();
            after = luns.last().map(|s| s.address);
            if !more {
                break;
            }
        }
        assert_eq!(seen, usize::from(n));
        let one = ManageRequest::Stats {
            address: Some(LunAddress::new(1, 3)),
            after: None,
        };
        let ManageReply::Stats { luns, .. } = request(&mut m, one, vec![]) else {
            panic!("not stats")
        };
        assert_eq!(luns[0].address, LunAddress::new(1, 3));
        assert_eq!(luns[0].in_flight, 0);
    }

    /// The supervisor's side of the exchange, as it will run it: a request over the broker
    /// socketpair (the image fd attached), the worker's broker thread running it, the reply
    /// back with the request's id, checked as hostile input.
    #[test]
    fn the_broker_thread_runs_management_requests() {
        use std::os::{fd::AsFd, unix::net::UnixStream};

        use crate::broker::{recv, send, socket_pair, Envelope, Kind};

        let (sup, worker_end): (UnixStream, UnixStream) = socket_pair().unwrap();
        let backend = Arc::new(ScsiBackend::new(Arc::new(ScsiBus::new()), 1, 16));
        let handlers = super::super::broker::Handlers {
            manage: Some(handler(backend.clone(), None)),
        };
        let _handle = super::super::broker::start(worker_end, handlers).unwrap();

        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(1 << 20).unwrap();
        let c = LunConfig::new(3, 7, img.path());
        let add = ManageRequest::AddLun(AddLun::from_config(&c, Backing::File));
        let exchange = |id: u64, req: &ManageRequest, fds: &[std::os::fd::BorrowedFd<'_>]| {
            let env = Envelope {
                id,
                kind: Kind::Request,
                body: Body::Manage(ManageMsg::Request(req.clone())),
            };
            send(&sup, &env, fds).unwrap();
            let (reply, fds) = recv(&sup).unwrap().unwrap();
            assert_eq!((reply.id, reply.kind), (id, Kind::Reply));
            let Body::Manage(ManageMsg::Reply(r)) = reply.body else {
                panic!("{:?}", reply.body)
            };
            r.check(req, fds.len()).unwrap();
            r
        };
        let image = img.reopen().unwrap();
        assert_eq!(exchange(1, &add, &[image.as_fd()]), ManageReply::Done);
        drop(image);
        assert_eq!(backend.bus().lookup(3, 7).unwrap().size(), 1 << 20);
        let list = ManageRequest::List { after: None };
        let ManageReply::List { luns, more } = exchange(2, &list, &[]) else {
            panic!("not a list")
        };
        assert_eq!((luns.len(), more), (1, false));
        assert_eq!(luns[0].address, LunAddress::new(3, 7));
        let rm = ManageRequest::RemoveLun {
            address: LunAddress::new(3, 7),
        };
        assert_eq!(exchange(3, &rm, &[]), ManageReply::Done);
        assert!(backend.bus().lookup(3, 7).is_none());
        // A reply where a request belongs is refused, not obeyed.
        let env = Envelope {
            id: 4,
            kind: Kind::Request,
            body: Body::Manage(ManageMsg::Reply(ManageReply::Done)),
        };
        send(&sup, &env, &[]).unwrap();
        let (reply, _) = recv(&sup).unwrap().unwrap();
        assert!(matches!(reply.body, Body::Error { .. }), "{reply:?}");
    }

    #[test]
    fn requests_that_do_not_check_out_change_nothing() {
        let mut m = manager();
        let rm = ManageRequest::RemoveLun {
            address: LunAddress::new(0, 0),
        };
        let (r, _w) = nix::unistd::pipe().unwrap();
        let reply = m.handle(rm.clone(), vec![r]);
        assert!(matches!(
            reply,
            ManageReply::Failed {
                code: FailureCode::Invalid,
                ..
            }
        ));
        assert_eq!(
            rm.check(1),
            Err(ManageError::BadFds {
                expected: 0,
                got: 1
            })
        );
    }
}
