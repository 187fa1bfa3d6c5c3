//! vhost-user messages from a hostile front-end: a sequence of messages with arbitrary codes,
//! flags, sizes (which may lie about the payload), payloads and attached descriptors (memfds
//! of arbitrary sizes, so memory tables may describe more than the file holds; eventfds, some
//! already signalled so that a queue thread wakes up), sent over a real unix socket to the
//! daemon's own backend object served by its own vhost-user connection
//! (`worker::vhost_user::Connection`: request handler, queue threads), in this process, the way
//! `worker::serve` serves one connection. The backend offers inflight I/O tracking, so
//! GET_INFLIGHT_FD and SET_INFLIGHT_FD (with the memfds the input describes) are reached too.
//!
//! Input: up to 32 times `[request u8][control u8][payload_len u16]{[size u32] if control &
//! 0x40}{[flags u32] if control & 0x80}[one byte per fd][payload]`, control bits 0-1: number
//! of fds, bits 2-3: the REPLY and NEED_REPLY flags. An fd byte below 0x80 is a memfd of that
//! many 4 KiB pages, 0x80-0xbf an eventfd, 0xc0 and up a signalled eventfd.
//!
//! Invariants: no panic, no crash, the connection always ends (no hang: libFuzzer's -timeout
//! catches one), it leaves no descriptor open, the backend is reusable for the next connection.

use std::{
    io::Write,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use crate::{bus, image, Cursor};
use vhost_user_scsi::worker::{
    inflight::{InflightMemfd, QueueShape},
    vhost_user::{Connection, ScsiBackend},
};
use vmm_sys_util::sock_ctrl_msg::ScmSocket;

struct Server {
    _dir: tempfile::TempDir,
    path: PathBuf,
    listener: UnixListener,
    backend: Arc<ScsiBackend>,
}

fn server() -> &'static Mutex<Server> {
    static SERVER: OnceLock<Mutex<Server>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("vus.sock");
        let listener = UnixListener::bind(&path).expect("listener");
        // Made once, as the worker makes it at start-up (its descriptor stays open).
        let memfd = InflightMemfd::create(QueueShape {
            num_queues: 4,
            max_queue_size: 16,
        })
        .expect("inflight memfd");
        let backend =
            Arc::new(ScsiBackend::new(Arc::new(bus(image())), 2, 16).with_inflight_memfd(memfd));
        Mutex::new(Server {
            _dir: dir,
            path,
            listener,
            backend,
        })
    })
}

fn memfd(pages: u8) -> OwnedFd {
    // SAFETY: memfd_create with a valid NUL-terminated name; the result is checked.
    let fd = unsafe {
        libc::memfd_create(
            c"fuzz-guest-ram".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just created and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on the memfd we own.
    let r = unsafe { libc::ftruncate(fd.as_raw_fd(), i64::from(pages) * 4096) };
    assert_eq!(r, 0, "ftruncate");
    // Sealed against resizing, as QEMU's memory-backend-memfd does: the daemon refuses guest
    // memory the front-end could still shrink (worker::guest_memory).
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: F_ADD_SEALS on the memfd we own.
    let r = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) };
    assert_eq!(r, 0, "F_ADD_SEALS");
    fd
}

fn eventfd(signalled: bool) -> OwnedFd {
    // SAFETY: plain eventfd creation; the result is checked.
    let fd = unsafe { libc::eventfd(u32::from(signalled), libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: fd was just created and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// One input (the fuzz target's body; also replayed by `tests/corpus.rs`).
pub fn run(data: &[u8]) {
    let mut server = server().lock().unwrap_or_else(|e| e.into_inner());
    let fds_before = open_fds();
    let server = &mut *server;
    let client = UnixStream::connect(&server.path).expect("connect");
    let mut daemon = Connection::new(server.backend.clone()).expect("connection");
    let (stream, _) = server.listener.accept().expect("accept");
    daemon.start(stream).expect("protocol thread");

    let mut c = Cursor::new(data);
    for _ in 0..32 {
        if c.is_empty() {
            break;
        }
        let request = u32::from(c.u8());
        let control = c.u8();
        let payload_len = usize::from(c.u16()) % 1024;
        let size = if control & 0x40 != 0 {
            c.u32()
        } else {
            payload_len as u32
        };
        let flags = if control & 0x80 != 0 {
            c.u32()
        } else {
            0x1 | u32::from(control & 0xc)
        };
        let fds: Vec<OwnedFd> = (0..control & 3)
            .map(|_| match c.u8() {
                b @ 0..0x80 => memfd(b),
                0x80..0xc0 => eventfd(false),
                _ => eventfd(true),
            })
            .collect();
        let payload = c.bytes(payload_len);
        let mut header = [0u8; 12];
        header[..4].copy_from_slice(&request.to_le_bytes());
        header[4..8].copy_from_slice(&flags.to_le_bytes());
        header[8..].copy_from_slice(&size.to_le_bytes());
        let raw: Vec<i32> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        // The daemon closes the connection on most malformed messages: a failed send ends
        // the sequence.
        let sent = client.send_with_fds(&[&header[..]], &raw).is_ok()
            && (payload.is_empty() || (&client).write_all(payload).is_ok());
        if !sent {
            break;
        }
    }
    // End of the front-end's input: the daemon reads EOF (or a short message) and stops.
    let _ = client.shutdown(std::net::Shutdown::Write);
    let _ = daemon.wait();
    drop(daemon);
    drop(client);
    server.backend.disconnect();
    // Every connection's descriptors are gone with it (a leak would let a front-end that
    // reconnects exhaust the worker's descriptors).
    assert_eq!(
        open_fds(),
        fds_before,
        "descriptors leaked by one connection"
    );
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("/proc/self/fd")
        .count()
}
