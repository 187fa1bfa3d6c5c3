//! Runtime management seen from the guest's side: the worker's management handler
//! (`worker::manage::Manager`) applied to a backend that a front-end is connected to, with the
//! test as that front-end (`vus_test_support::frontend::TestVm`: memfd guest memory, split
//! rings). The backend runs in this process, over a real vhost-user socket, as the jailed
//! worker runs it (without the jail: the handler's effect on the guest is what is tested here;
//! the daemon end to end with a QEMU guest is in `tests/e2e/`).
//!
//! What a guest must see: an event on the event queue for every LUN added (TRANSPORT_RESET,
//! RESCAN), removed (TRANSPORT_RESET, REMOVED) or resized (PARAM_CHANGE, 2Ah/09h), held until it
//! posts a buffer; LOGICAL UNIT NOT SUPPORTED from a removed LUN; CAPACITY DATA HAS CHANGED
//! after a resize.

use std::{
    fs::File,
    path::PathBuf,
    sync::Arc,
    thread::{self, JoinHandle},
    time::Duration,
};

use vhost_user_scsi::{
    block::{engine::IoConfig, FileBackend},
    broker::manage::{AddLun, Backing, LunAddress, ManageReply, ManageRequest},
    config::{AioMode, LunConfig},
    scsi::{DeviceType, LogicalUnit, LunOptions, ScsiBus},
    worker::{
        manage::Manager,
        vhost_user::{Connection, ScsiBackend},
    },
};
use vus_test_support::{
    cdb,
    frontend::{Seg, Submitted, TestVm, VmOptions},
    wire::lun,
};

const EVENT_QUEUE: usize = 1;
const EVENT_SIZE: u32 = 16;

struct Served {
    backend: Arc<ScsiBackend>,
    socket: PathBuf,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        // The daemon thread ends with the connection (the TestVm is dropped first by the test).
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A backend over `bus` serving one connection on a fresh socket.
fn serve(bus: ScsiBus) -> Served {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("vus.sock");
    let backend = Arc::new(
        ScsiBackend::new(Arc::new(bus), 1, 128).with_io_config(IoConfig {
            aio: AioMode::Sync,
            ..IoConfig::default()
        }),
    );
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let b = backend.clone();
    let thread = thread::spawn(move || {
        let mut connection = Connection::new(b).unwrap();
        let (stream, _) = listener.accept().unwrap();
        connection.start(stream).unwrap();
        let _ = connection.wait();
    });
    Served {
        backend,
        socket,
        thread: Some(thread),
        _dir: dir,
    }
}

fn opts() -> LunOptions {
    LunOptions {
        read_only: false,
        serial: "S".into(),
        wwn: 0x3000_0000_0000_0001,
        block_size: 512,
        physical_block_size: 0,
        discard: true,
        pr_file: None,
        device_type: DeviceType::Disk,
        removable: false,
    }
}

/// A bus with a 1 MiB image at 0:0; the image file too.
fn image_bus() -> (ScsiBus, tempfile::NamedTempFile) {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let backend = FileBackend::new(img.reopen().unwrap(), false).unwrap();
    let mut bus = ScsiBus::new();
    bus.add_lun(0, 0, LogicalUnit::new(Arc::new(backend), opts()));
    (bus, img)
}

fn add_null(target: u8, l: u16) -> ManageRequest {
    let c = LunConfig::new(target, l, "null://1M");
    ManageRequest::AddLun(AddLun::from_config(&c, Backing::Null { size: 1 << 20 }))
}

/// Posts an event buffer.
fn post(vm: &mut TestVm) -> Submitted {
    vm.submit(EVENT_QUEUE, &[Seg::inp(EVENT_SIZE)])
}

/// The event in a returned buffer: (event, lun field, reason).
fn event(vm: &mut TestVm, sub: &Submitted) -> (u32, [u8; 8], u32) {
    assert_eq!(vm.complete(sub), EVENT_SIZE, "event buffer used length");
    decode(vm, sub)
}

/// The events in buffers returned together (one notification may cover several, as for a
/// driver's interrupt handler).
fn events(vm: &mut TestVm, subs: &[&Submitted]) -> Vec<(u32, [u8; 8], u32)> {
    let used = vm.wait_used(EVENT_QUEUE, subs.len());
    for (sub, (head, len)) in subs.iter().zip(&used) {
        assert_eq!((*head, *len), (u32::from(sub.head), EVENT_SIZE));
    }
    subs.iter().map(|sub| decode(vm, sub)).collect()
}

fn decode(vm: &TestVm, sub: &Submitted) -> (u32, [u8; 8], u32) {
    let b = vm.writable(sub).concat();
    (
        u32::from_le_bytes(b[..4].try_into().unwrap()),
        b[4..12].try_into().unwrap(),
        u32::from_le_bytes(b[12..16].try_into().unwrap()),
    )
}

fn connect(served: &Served) -> TestVm {
    TestVm::connect(&served.socket, VmOptions::default())
}

#[test]
fn guest_sees_luns_come_and_go_and_grow() {
    let (bus, img) = image_bus();
    let served = serve(bus);
    let mut vm = connect(&served);
    let mut m = Manager::new(served.backend.clone());
    vm.clear_unit_attention(lun(0, 0));

    // The guest posts event buffers; we hold them.
    let bufs: Vec<Submitted> = (0..3).map(|_| post(&mut vm)).collect();
    vm.assert_no_completion(EVENT_QUEUE, Duration::from_millis(100));

    // Add: a rescan event; the new LUN answers.
    assert_eq!(m.handle(add_null(0, 1), vec![]), ManageReply::Done);
    assert_eq!(event(&mut vm, &bufs[0]), (1, lun(0, 1), 1));
    vm.clear_unit_attention(lun(0, 1));
    vm.scsi(lun(0, 1), &cdb::read10(0, 8), &[], &[4096])
        .assert_good();
    // 0:0 learns that the target's LUN inventory changed.
    let r = vm.scsi(lun(0, 0), &[0; 6], &[], &[]);
    assert_eq!(r.sense_key_asc(), (0x06, 0x3f), "{r:?}");

    // Resize: the image grows, a PARAM_CHANGE event, then CAPACITY DATA HAS CHANGED.
    img.as_file().set_len(2 << 20).unwrap();
    let address = LunAddress::new(0, 0);
    assert_eq!(
        m.handle(ManageRequest::Resize { address }, vec![]),
        ManageReply::Resized {
            old_size: 1 << 20,
            new_size: 2 << 20
        }
    );
    assert_eq!(event(&mut vm, &bufs[1]), (3, lun(0, 0), 0x092a));
    let r = vm.scsi(lun(0, 0), &[0; 6], &[], &[]);
    assert_eq!(r.sense_key_asc(), (0x06, 0x2a), "{r:?}");
    assert_eq!(r.sense[13], 0x09, "{r:?}");
    let cap = vm.scsi(lun(0, 0), &cdb::read_capacity10(), &[], &[8]);
    cap.assert_good();
    assert_eq!(u32::from_be_bytes(cap.data[..4].try_into().unwrap()), 4095);

    // Remove: a removed event; the LUN answers LOGICAL UNIT NOT SUPPORTED, 0:0 carries on.
    let rm = ManageRequest::RemoveLun {
        address: LunAddress::new(0, 1),
    };
    assert_eq!(m.handle(rm, vec![]), ManageReply::Done);
    assert_eq!(event(&mut vm, &bufs[2]), (1, lun(0, 1), 2));
    let r = vm.scsi(lun(0, 1), &cdb::read10(0, 8), &[], &[4096]);
    r.assert_check_condition(0x05, 0x25);
    let r = vm.scsi(lun(0, 0), &[0; 6], &[], &[]);
    assert_eq!(r.sense_key_asc(), (0x06, 0x3f), "{r:?}");
    vm.scsi(lun(0, 0), &cdb::read10(4095, 1), &[], &[512])
        .assert_good();
    drop(vm);
}

#[test]
fn events_raised_without_buffers_wait_and_overflow_reports_missed() {
    let (bus, _img) = image_bus();
    let served = serve(bus);
    let mut vm = connect(&served);
    let mut m = Manager::new(served.backend.clone());
    // One buffer, so that the backend knows the event queue, used by the first event.
    let first = post(&mut vm);
    vm.assert_no_completion(EVENT_QUEUE, Duration::from_millis(100));
    assert_eq!(m.handle(add_null(1, 0), vec![]), ManageReply::Done);
    assert_eq!(event(&mut vm, &first), (1, lun(1, 0), 1));

    // No buffer posted: the next events wait.
    for l in 1..3 {
        assert_eq!(m.handle(add_null(1, l), vec![]), ManageReply::Done);
    }
    assert_eq!(served.backend.pending_events(), (2, false));
    let a = post(&mut vm);
    let b = post(&mut vm);
    assert_eq!(
        events(&mut vm, &[&a, &b]),
        [(1, lun(1, 1), 1), (1, lun(1, 2), 1)]
    );
    assert_eq!(served.backend.pending_events(), (0, false));

    // A burst larger than the backlog: the first event delivered says events were missed.
    for l in 3..80 {
        assert_eq!(m.handle(add_null(1, l), vec![]), ManageReply::Done);
    }
    let (kept, missed) = served.backend.pending_events();
    assert!(missed && kept > 0, "{kept} {missed}");
    let c = post(&mut vm);
    let (ev, at, reason) = event(&mut vm, &c);
    assert_eq!(ev, 0x8000_0001, "TRANSPORT_RESET | EVENTS_MISSED");
    assert_eq!((at, reason), (lun(1, 3), 1));
    drop(vm);
}

/// The image a LUN served is really closed once the LUN is removed (the guest could have kept
/// it busy): nothing in the backend still holds it.
#[test]
fn removal_releases_the_image() {
    let (bus, _img) = image_bus();
    let served = serve(bus);
    let mut vm = connect(&served);
    let mut m = Manager::new(served.backend.clone());
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let file: File = img.reopen().unwrap();
    let weak = {
        let c = LunConfig::new(0, 5, img.path());
        let add = ManageRequest::AddLun(AddLun::from_config(&c, Backing::File));
        assert_eq!(m.handle(add, vec![file.into()]), ManageReply::Done);
        Arc::downgrade(&served.backend.bus().lookup(0, 5).unwrap())
    };
    vm.clear_unit_attention(lun(0, 5));
    for lba in 0..16 {
        vm.scsi(lun(0, 5), &cdb::write10(lba, 1), &[&[7u8; 512]], &[])
            .assert_good();
    }
    let rm = ManageRequest::RemoveLun {
        address: LunAddress::new(0, 5),
    };
    assert_eq!(m.handle(rm, vec![]), ManageReply::Done);
    assert!(weak.upgrade().is_none(), "the removed LU is still alive");
    drop(vm);
}
