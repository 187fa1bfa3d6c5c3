//! A mini QEMU for the integration tests: it starts the real daemon binary, connects to its
//! unix socket as the vhost-user front-end, shares memfd-backed guest memory with it, lays out
//! split virtqueues in that memory and submits virtio-scsi requests the way a guest driver does.
//!
//! Everything that could block is bounded (socket timeouts, `poll` on the call eventfds, polled
//! child waits), so a broken daemon fails a test instead of hanging CI.

use std::{
    fs::{self, File},
    io::{self, Read},
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::{net::UnixStream, process::ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{fence, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use tempfile::TempDir;
use vhost::{
    vhost_user::{
        message::{VhostUserConfigFlags, VhostUserHeaderFlag},
        Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    },
    VhostBackend, VhostUserMemoryRegionInfo, VringConfigData,
};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// How long any single wait (socket appearing, completion, exit) may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Wire constants, written out from the specs (virtio 1.2 §2.7, §5.6; SPC/SBC) rather than taken
// from the daemon's own bindings, so a wrong constant in the daemon cannot make the test agree.
// ---------------------------------------------------------------------------------------------

pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_INDIRECT_DESC: u64 = 1 << 28;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;
pub const VIRTIO_SCSI_F_INOUT: u64 = 1 << 0;
pub const VIRTIO_SCSI_F_HOTPLUG: u64 = 1 << 1;
pub const VIRTIO_SCSI_F_CHANGE: u64 = 1 << 2;
pub const VIRTIO_SCSI_F_T10_PI: u64 = 1 << 3;

const VRING_DESC_F_NEXT: u16 = 1;
pub const VRING_DESC_F_WRITE: u16 = 2;
const VRING_DESC_F_INDIRECT: u16 = 4;

/// `virtio_scsi_cmd_req` without PI: lun[8], id, task_attr, prio, crn, cdb[32].
pub const REQ_HEADER_SIZE: usize = 51;
/// `virtio_scsi_cmd_resp`: sense_len, resid, status_qualifier, status, response, sense[96].
pub const RESP_HEADER_SIZE: usize = 108;

pub const VIRTIO_SCSI_S_OK: u8 = 0;
pub const VIRTIO_SCSI_S_BAD_TARGET: u8 = 3;
pub const VIRTIO_SCSI_S_FAILURE: u8 = 9;
pub const VIRTIO_SCSI_T_TMF: u32 = 0;
pub const VIRTIO_SCSI_T_AN_QUERY: u32 = 1;
pub const VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET: u32 = 5;

pub const STATUS_GOOD: u8 = 0x00;
pub const STATUS_CHECK_CONDITION: u8 = 0x02;

pub const SENSE_ILLEGAL_REQUEST: u8 = 0x05;
pub const SENSE_UNIT_ATTENTION: u8 = 0x06;
pub const SENSE_DATA_PROTECT: u8 = 0x07;

// ---------------------------------------------------------------------------------------------
// Guest memory layout.
// ---------------------------------------------------------------------------------------------

/// Two 2 MiB regions, contiguous in guest-physical space but separate memfds (and so separate
/// mappings in the daemon): a buffer may straddle the boundary, as it can in a real VM. Small
/// enough that `--register-buffers` can pin all of it under the default 8 MiB RLIMIT_MEMLOCK.
pub const REGION_SIZE: u64 = 2 << 20;
pub const MEM_END: u64 = 2 * REGION_SIZE;
/// Queue `q`'s rings live at `q * RING_AREA`: descriptors at +0, avail at +0x800, used at +0x1000.
const RING_AREA: u64 = 0x4000;
/// Queues are all this size (the daemon's default maximum is at least this).
pub const QUEUE_SIZE: u16 = 128;
/// Data buffers (headers, payloads, indirect tables) are carved from here up.
const DATA_START: u64 = 1 << 20;
/// A guest-physical address no region covers.
pub const UNMAPPED_GPA: u64 = 0x4000_0000;

// ---------------------------------------------------------------------------------------------
// The daemon process.
// ---------------------------------------------------------------------------------------------

/// One LUN to serve: `target:lun`, a fresh image of `size` bytes, read-only or not.
pub struct Disk {
    pub addr: &'static str,
    pub size: u64,
    pub readonly: bool,
}

/// The daemon under test. Dropping it SIGKILLs the process (if still running) so a failing test
/// never leaks one; if the test is failing, the daemon's log is printed to help.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub images: Vec<PathBuf>,
    log: PathBuf,
    _dir: TempDir,
}

/// How the daemon under test gets its listening socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Listen {
    /// `--socket-path`: the daemon creates the socket (and removes it at exit).
    Path,
    /// `--fd N`: the test binds the socket and hands the daemon the listening fd (libvirt).
    Fd,
    /// systemd socket activation: the listening fd is fd 3, `LISTEN_FDS=1`, `LISTEN_PID`.
    Systemd,
}

impl Daemon {
    pub fn start(disks: &[Disk], extra_args: &[&str]) -> Self {
        Self::start_listening(disks, extra_args, Listen::Path)
    }

    pub fn start_listening(disks: &[Disk], extra_args: &[&str], listen: Listen) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("vus.sock");
        let log = dir.path().join("daemon.log");
        let bin = env!("CARGO_BIN_EXE_vhost-user-scsi");
        // Kept open until the child is spawned; the child inherits its own copy.
        let mut inherited = None;
        let mut cmd = match listen {
            Listen::Path => {
                let mut cmd = Command::new(bin);
                cmd.arg("--socket-path").arg(&socket);
                cmd
            }
            Listen::Fd => {
                let l = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
                let fd = l.as_raw_fd();
                // SAFETY: clearing FD_CLOEXEC on a descriptor we own so the child inherits it.
                assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
                let mut cmd = Command::new(bin);
                cmd.arg("--fd").arg(fd.to_string());
                inherited = Some(l);
                cmd
            }
            Listen::Systemd => {
                let l = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
                let fd = l.as_raw_fd();
                // LISTEN_PID must be the daemon's own pid: let a shell export its `$$` and exec.
                let mut cmd = Command::new("sh");
                cmd.args(["-c", "LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"", bin]);
                // SAFETY: only async-signal-safe calls (dup2, fcntl) between fork and exec.
                unsafe {
                    std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                        if libc::dup2(fd, 3) < 0 || libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        Ok(())
                    });
                }
                inherited = Some(l);
                cmd
            }
        };
        let mut images = Vec::new();
        for (i, disk) in disks.iter().enumerate() {
            let image = dir.path().join(format!("disk{i}.img"));
            File::create(&image)
                .and_then(|f| f.set_len(disk.size))
                .expect("create image");
            let mut spec = format!("{}={}", disk.addr, image.display());
            if disk.readonly {
                spec.push_str(",readonly");
            }
            cmd.arg("--lun").arg(spec);
            images.push(image);
        }
        // stdout and stderr share one log file, printed if the test fails.
        let log_file = File::create(&log).expect("log file");
        // tests/run.sh runs the suite once per I/O engine, and with the data-path tuning
        // options that change how the queue thread waits and submits.
        if let Ok(aio) = std::env::var("VUS_TEST_AIO") {
            cmd.args(["--aio", &aio]);
        }
        if let Ok(extra) = std::env::var("VUS_TEST_DAEMON_ARGS") {
            cmd.args(extra.split_whitespace());
        }
        cmd.args(["--log-level", "debug"])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        let child = cmd.spawn().expect("cannot start the daemon binary");
        drop(inherited);
        let mut daemon = Daemon {
            child: Some(child),
            socket,
            images,
            log,
            _dir: dir,
        };
        daemon.wait_for_socket();
        daemon
    }

    /// Polls until the socket accepts connections (the daemon binds before it serves).
    fn wait_for_socket(&mut self) {
        let deadline = Instant::now() + TIMEOUT;
        while Instant::now() < deadline {
            if let Some(status) = self.try_status() {
                panic!("daemon exited before listening: {status}\n{}", self.log());
            }
            if self.socket.exists() {
                return;
            }
            sleep(Duration::from_millis(10));
        }
        panic!(
            "socket {} did not appear\n{}",
            self.socket.display(),
            self.log()
        );
    }

    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn try_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    /// Fails the test (with the daemon's log) if the process is gone.
    pub fn assert_alive(&mut self) {
        if let Some(status) = self.try_status() {
            panic!("daemon died: {status}\n{}", self.log());
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.child.as_ref().expect("running").id() as libc::pid_t
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> ExitStatus {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped yet.
        assert_eq!(unsafe { libc::kill(self.pid(), libc::SIGTERM) }, 0);
        self.wait_exit("after SIGTERM")
    }

    /// Waits (bounded) for the daemon to exit on its own and returns its status.
    pub fn wait_exit(&mut self, why: &str) -> ExitStatus {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if let Some(status) = self.try_status() {
                self.child = None;
                return status;
            }
            if Instant::now() >= deadline {
                panic!("daemon still running {TIMEOUT:?} {why}\n{}", self.log());
            }
            sleep(Duration::from_millis(10));
        }
    }

    pub fn read_image(&self, index: usize, offset: u64, len: usize) -> Vec<u8> {
        let mut f = File::open(&self.images[index]).expect("open image");
        let mut buf = vec![0u8; len];
        std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(offset)).expect("seek");
        f.read_exact(&mut buf).expect("read image");
        buf
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let status = child.wait();
            if std::thread::panicking() {
                eprintln!(
                    "---- daemon log (status {:?}, signal {:?}) ----\n{}",
                    status,
                    status.as_ref().ok().and_then(|s| s.signal()),
                    self.log()
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The front-end with its guest memory and virtqueues.
// ---------------------------------------------------------------------------------------------

/// One descriptor's worth of a chain, as the test describes it.
#[derive(Clone, Debug)]
pub struct Seg {
    /// Where to put the buffer; `None` lets the allocator choose.
    pub addr: Option<u64>,
    pub len: u32,
    pub write: bool,
    /// Contents for device-readable buffers (writable ones are pre-filled with 0xee).
    pub data: Vec<u8>,
    /// Whether to initialise the buffer at all (not for deliberately bogus descriptors).
    fill: bool,
}

impl Seg {
    /// A device-readable buffer holding `data`.
    pub fn out(data: &[u8]) -> Self {
        Seg {
            addr: None,
            len: data.len() as u32,
            write: false,
            data: data.to_vec(),
            fill: true,
        }
    }

    /// A device-writable buffer of `len` bytes.
    pub fn inp(len: u32) -> Self {
        Seg {
            addr: None,
            len,
            write: true,
            data: Vec::new(),
            fill: true,
        }
    }

    /// A descriptor with an arbitrary address and length; nothing is written there.
    pub fn raw(addr: u64, len: u32, write: bool) -> Self {
        Seg {
            addr: Some(addr),
            len,
            write,
            data: Vec::new(),
            fill: false,
        }
    }

    /// Places this buffer at `addr` (e.g. across the region boundary).
    pub fn at(mut self, addr: u64) -> Self {
        self.addr = Some(addr);
        self
    }
}

/// A chain that was made available, with where its buffers ended up.
pub struct Submitted {
    pub queue: usize,
    pub head: u16,
    segs: Vec<(u64, Seg)>,
}

/// A split virtqueue as the driver side sees it.
struct Queue {
    desc: u64,
    avail: u64,
    used: u64,
    kick: EventFd,
    call: EventFd,
    /// Next free descriptor index (descriptors are handed out round-robin: tests never have
    /// anywhere near QUEUE_SIZE descriptors in flight).
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
}

/// What the daemon offered during the handshake.
pub struct Offered {
    pub features: u64,
    pub protocol_features: VhostUserProtocolFeatures,
    pub queue_num: u64,
    pub config: Vec<u8>,
}

pub struct VmOptions {
    pub request_queues: u16,
    /// Negotiate VIRTIO_RING_F_EVENT_IDX (Linux guests do).
    pub event_idx: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        VmOptions {
            request_queues: 1,
            event_idx: true,
        }
    }
}

/// A front-end session: one connection, one guest memory, all queues set up and enabled.
pub struct TestVm {
    frontend: Frontend,
    pub mem: GuestMemoryMmap,
    queues: Vec<Queue>,
    next_data: u64,
    pub offered: Offered,
    acked_features: u64,
    queue_count: usize,
    next_id: u64,
}

fn memfd(name: &str, size: u64) -> File {
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: memfd_create with a valid C string; the returned fd is owned by the File.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).expect("ftruncate memfd");
    file
}

/// Connects to `socket`, retrying while it refuses: the path exists from bind(2) on, but
/// connections are only accepted after listen(2), so there is a short window after start-up.
fn connect_with_retry(socket: &Path) -> UnixStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match UnixStream::connect(socket) {
            Ok(stream) => return stream,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("cannot connect to {}: {e}", socket.display()),
        }
    }
}

impl TestVm {
    /// Connects and performs the handshake QEMU performs, up to enabled queues.
    pub fn connect(socket: &Path, opts: VmOptions) -> Self {
        let stream = connect_with_retry(socket);
        // Every vhost-user message waits for a reply at most this long.
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_write_timeout(Some(TIMEOUT)).unwrap();
        let mut frontend = Frontend::from_stream(stream, 64);

        frontend.set_owner().expect("SET_OWNER");
        let features = frontend.get_features().expect("GET_FEATURES");
        let mut wanted = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_SCSI_F_HOTPLUG
            | VIRTIO_SCSI_F_CHANGE
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        if opts.event_idx {
            wanted |= VIRTIO_RING_F_EVENT_IDX;
        }
        assert_eq!(
            features & wanted,
            wanted,
            "daemon does not offer every feature we ack: {features:#x}"
        );
        frontend.set_features(wanted).expect("SET_FEATURES");

        let protocol_features = frontend
            .get_protocol_features()
            .expect("GET_PROTOCOL_FEATURES");
        let proto_wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        assert!(
            protocol_features.contains(proto_wanted),
            "protocol features {protocol_features:?} lack some of {proto_wanted:?}"
        );
        frontend
            .set_protocol_features(proto_wanted)
            .expect("SET_PROTOCOL_FEATURES");
        // From now on every message asks for an explicit ack, so a backend-side failure shows
        // up at the message that caused it rather than as a mystery later.
        frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);

        let queue_num = frontend.get_queue_num().expect("GET_QUEUE_NUM");
        let (_, config) = frontend
            .get_config(0, 36, VhostUserConfigFlags::empty(), &[0u8; 36])
            .expect("GET_CONFIG");

        let mem = GuestMemoryMmap::from_ranges_with_files([
            (
                GuestAddress(0),
                REGION_SIZE as usize,
                Some(FileOffset::new(memfd("guest-ram-0", REGION_SIZE), 0)),
            ),
            (
                GuestAddress(REGION_SIZE),
                REGION_SIZE as usize,
                Some(FileOffset::new(memfd("guest-ram-1", REGION_SIZE), 0)),
            ),
        ])
        .expect("guest memory");
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).expect("region info"))
            .collect();
        frontend.set_mem_table(&regions).expect("SET_MEM_TABLE");

        let mut vm = TestVm {
            frontend,
            mem,
            queues: Vec::new(),
            next_data: DATA_START,
            offered: Offered {
                features,
                protocol_features,
                queue_num,
                config,
            },
            acked_features: wanted,
            queue_count: 2 + usize::from(opts.request_queues),
            next_id: 1,
        };
        vm.setup_queues();
        vm
    }

    /// Sets up every queue from scratch: zeroed rings, index 0, new eventfds, enabled.
    fn setup_queues(&mut self) {
        self.queues.clear();
        for q in 0..self.queue_count {
            self.setup_queue(q);
        }
    }

    /// Stops every queue the way QEMU does when the guest stops the device (GET_VRING_BASE)
    /// and returns the ring positions the daemon reports.
    pub fn stop_queues(&mut self) -> Vec<u32> {
        (0..self.queue_count)
            .map(|q| self.frontend.get_vring_base(q).expect("GET_VRING_BASE"))
            .collect()
    }

    /// A guest reboot without reconnecting: RESET_DEVICE, features again, fresh queues.
    pub fn reset_device(&mut self) {
        self.frontend.reset_device().expect("RESET_DEVICE");
        self.frontend
            .set_features(self.acked_features)
            .expect("SET_FEATURES after reset");
        self.setup_queues();
    }

    /// Control + event + request queues.
    pub fn queue_count(&self) -> usize {
        self.queue_count
    }

    /// Chains made available so far on queue `q` (what GET_VRING_BASE should report once they
    /// have all been processed).
    pub fn avail_idx(&self, q: usize) -> u16 {
        self.queues[q].avail_idx
    }

    /// The front-end's own (virtual) address of a guest-physical address: SET_VRING_ADDR
    /// carries front-end addresses, which the backend translates through the memory table.
    fn frontend_va(&self, gpa: u64) -> u64 {
        self.mem
            .get_host_address(GuestAddress(gpa))
            .expect("gpa in guest memory") as u64
    }

    fn setup_queue(&mut self, q: usize) {
        let base = q as u64 * RING_AREA;
        let queue = Queue {
            desc: base,
            avail: base + 0x800,
            used: base + 0x1000,
            kick: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap(),
            call: EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap(),
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
        };
        // Rings start zeroed: avail.idx = used.idx = 0, no flags, used_event = 0.
        self.mem
            .write_slice(&[0u8; RING_AREA as usize], GuestAddress(base))
            .unwrap();
        let f = &mut self.frontend;
        f.set_vring_num(q, QUEUE_SIZE).expect("SET_VRING_NUM");
        f.set_vring_base(q, 0).expect("SET_VRING_BASE");
        let addrs = VringConfigData {
            queue_max_size: QUEUE_SIZE,
            queue_size: QUEUE_SIZE,
            flags: 0,
            desc_table_addr: self.frontend_va(queue.desc),
            used_ring_addr: self.frontend_va(queue.used),
            avail_ring_addr: self.frontend_va(queue.avail),
            log_addr: None,
        };
        let f = &mut self.frontend;
        f.set_vring_addr(q, &addrs).expect("SET_VRING_ADDR");
        f.set_vring_kick(q, &queue.kick).expect("SET_VRING_KICK");
        f.set_vring_call(q, &queue.call).expect("SET_VRING_CALL");
        f.set_vring_enable(q, true).expect("SET_VRING_ENABLE");
        self.queues.push(queue);
    }

    /// Allocates `len` bytes of guest memory for buffers, never straddling the region boundary
    /// by accident (tests that want that place buffers explicitly).
    pub fn alloc(&mut self, len: u64) -> u64 {
        let len = len.max(1).next_multiple_of(8);
        let mut addr = self.next_data;
        if addr < REGION_SIZE && addr + len > REGION_SIZE {
            addr = REGION_SIZE;
        }
        if addr + len > MEM_END {
            addr = DATA_START;
        }
        self.next_data = addr + len;
        addr
    }

    fn write_desc(&self, table: u64, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&next.to_le_bytes());
        self.mem
            .write_slice(&d, GuestAddress(table + 16 * u64::from(index)))
            .unwrap();
    }

    /// Places the buffers of `segs` in guest memory (writable ones pre-filled with 0xee so that
    /// untouched bytes are recognisable) and returns their addresses.
    fn place(&mut self, segs: &[Seg]) -> Vec<(u64, Seg)> {
        segs.iter()
            .map(|s| {
                let addr = s.addr.unwrap_or_else(|| self.alloc(u64::from(s.len)));
                if s.fill && s.write {
                    self.mem
                        .write_slice(&vec![0xee; s.len as usize], GuestAddress(addr))
                        .unwrap();
                } else if s.fill {
                    self.mem.write_slice(&s.data, GuestAddress(addr)).unwrap();
                }
                (addr, s.clone())
            })
            .collect()
    }

    /// Makes a chain of `segs` available on queue `q` (directly in the ring) and kicks.
    pub fn submit(&mut self, q: usize, segs: &[Seg]) -> Submitted {
        let placed = self.place(segs);
        let descs: Vec<(u64, u32, u16, u16)> = placed
            .iter()
            .enumerate()
            .map(|(i, (addr, s))| {
                let mut flags = if s.write { VRING_DESC_F_WRITE } else { 0 };
                if i + 1 < placed.len() {
                    flags |= VRING_DESC_F_NEXT;
                }
                (*addr, s.len, flags, i as u16 + 1)
            })
            .collect();
        let head = self.submit_descs(q, &descs);
        Submitted {
            queue: q,
            head,
            segs: placed,
        }
    }

    /// Makes a chain available through one indirect descriptor pointing at a table in guest
    /// memory holding `segs`.
    pub fn submit_indirect(&mut self, q: usize, segs: &[Seg]) -> Submitted {
        let placed = self.place(segs);
        let table = self.alloc(16 * placed.len() as u64);
        for (i, (addr, s)) in placed.iter().enumerate() {
            let mut flags = if s.write { VRING_DESC_F_WRITE } else { 0 };
            if i + 1 < placed.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.write_desc(table, i as u16, *addr, s.len, flags, i as u16 + 1);
        }
        let len = 16 * placed.len() as u32;
        let head = self.submit_descs(q, &[(table, len, VRING_DESC_F_INDIRECT, 0)]);
        Submitted {
            queue: q,
            head,
            segs: placed,
        }
    }

    /// Writes raw descriptors `(addr, len, flags, next)` into consecutive slots of queue `q`'s
    /// table and makes the first one available. `next` is relative to the first slot, so a test
    /// can build any chain shape, loops included. Returns the head index.
    pub fn submit_descs(&mut self, q: usize, descs: &[(u64, u32, u16, u16)]) -> u16 {
        let n = descs.len() as u16;
        let queue = &self.queues[q];
        let mut first = queue.next_desc;
        if first + n > QUEUE_SIZE {
            first = 0;
        }
        let table = queue.desc;
        for (i, &(addr, len, flags, next)) in descs.iter().enumerate() {
            let next = (first + next) % QUEUE_SIZE;
            self.write_desc(table, first + i as u16, addr, len, flags, next);
        }
        let queue = &mut self.queues[q];
        queue.next_desc = (first + n) % QUEUE_SIZE;

        // With EVENT_IDX the device must interrupt once used.idx moves past used_event; asking
        // for "the next completion" is what a driver waiting for this request does.
        let used_event = queue.avail + 4 + 2 * u64::from(QUEUE_SIZE);
        self.mem
            .store(queue.last_used, GuestAddress(used_event), Ordering::Release)
            .unwrap();
        let slot = queue.avail + 4 + 2 * u64::from(queue.avail_idx % QUEUE_SIZE);
        self.mem.write_obj(first, GuestAddress(slot)).unwrap();
        queue.avail_idx = queue.avail_idx.wrapping_add(1);
        // The ring entry and descriptors must be visible before the index that publishes them.
        self.mem
            .store(
                queue.avail_idx,
                GuestAddress(queue.avail + 2),
                Ordering::Release,
            )
            .unwrap();
        fence(Ordering::SeqCst);
        // Always kick: avail_event / NO_NOTIFY only allow skipping it, never require it.
        queue.kick.write(1).unwrap();
        first
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        self.mem
            .load(GuestAddress(self.queues[q].used + 2), Ordering::Acquire)
            .unwrap()
    }

    /// Waits for `count` completions on queue `q` and returns them as `(head id, used len)`.
    /// The first one must come with a call-eventfd notification: a completion the guest is
    /// never told about would hang a real driver.
    pub fn wait_used(&mut self, q: usize, count: usize) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let deadline = Instant::now() + TIMEOUT;
        let mut notified = false;
        while out.len() < count {
            if !notified || self.used_idx(q) == self.queues[q].last_used {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if !poll_readable(self.queues[q].call.as_raw_fd(), remaining) {
                    let pending = self.used_idx(q).wrapping_sub(self.queues[q].last_used);
                    if pending > 0 {
                        panic!("queue {q}: {pending} completion(s) in the used ring but no call notification");
                    }
                    panic!(
                        "queue {q}: no completion within {TIMEOUT:?} ({} of {count})",
                        out.len()
                    );
                }
                let _ = self.queues[q].call.read();
                notified = true;
            }
            let used_idx = self.used_idx(q);
            let queue = &mut self.queues[q];
            while queue.last_used != used_idx && out.len() < count {
                let elem = queue.used + 4 + 8 * u64::from(queue.last_used % QUEUE_SIZE);
                let id: u32 = self.mem.read_obj(GuestAddress(elem)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(elem + 4)).unwrap();
                out.push((id, len));
                queue.last_used = queue.last_used.wrapping_add(1);
            }
            // Ask to be told about the next completion, then re-check (a completion that
            // raced with this update may legitimately not have notified).
            let used_event = queue.avail + 4 + 2 * u64::from(QUEUE_SIZE);
            self.mem
                .store(queue.last_used, GuestAddress(used_event), Ordering::Release)
                .unwrap();
            fence(Ordering::SeqCst);
        }
        out
    }

    /// Waits for the single completion of `sub` and returns its used length.
    pub fn complete(&mut self, sub: &Submitted) -> u32 {
        let used = self.wait_used(sub.queue, 1);
        assert_eq!(
            used[0].0,
            u32::from(sub.head),
            "completion for another chain"
        );
        used[0].1
    }

    /// No completion on queue `q` for `wait` (e.g. event-queue buffers must be held).
    pub fn assert_no_completion(&mut self, q: usize, wait: Duration) {
        sleep(wait);
        assert_eq!(
            self.used_idx(q),
            self.queues[q].last_used,
            "queue {q} returned a buffer"
        );
    }

    /// The current contents of the device-writable buffers of `sub`, in chain order.
    pub fn writable(&self, sub: &Submitted) -> Vec<Vec<u8>> {
        sub.segs
            .iter()
            .filter(|(_, s)| s.write)
            .map(|(addr, s)| {
                let mut buf = vec![0u8; s.len as usize];
                self.mem.read_slice(&mut buf, GuestAddress(*addr)).unwrap();
                buf
            })
            .collect()
    }

    /// Writes `data` into guest memory at `gpa`.
    pub fn write_guest(&self, gpa: u64, data: &[u8]) {
        self.mem.write_slice(data, GuestAddress(gpa)).unwrap();
    }

    pub fn frontend(&mut self) -> &mut Frontend {
        &mut self.frontend
    }

    /// Queue `q`'s kick and call eventfds (hostile tests abuse or replace them).
    #[allow(dead_code)]
    pub fn kick_call_fds(&self, q: usize) -> (i32, i32) {
        (
            self.queues[q].kick.as_raw_fd(),
            self.queues[q].call.as_raw_fd(),
        )
    }

    /// The memory table as sent at connect (hostile tests send it again, or remove regions).
    #[allow(dead_code)]
    pub fn regions(&self) -> Vec<VhostUserMemoryRegionInfo> {
        self.mem
            .iter()
            .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).expect("region info"))
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // virtio-scsi on top.
    // -----------------------------------------------------------------------------------------

    /// A request header for `lun` with `cdb`, and a fresh command id.
    pub fn cmd_header(&mut self, lun: [u8; 8], cdb: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; REQ_HEADER_SIZE];
        h[0..8].copy_from_slice(&lun);
        h[8..16].copy_from_slice(&self.next_id.to_le_bytes());
        self.next_id += 1;
        // task_attr SIMPLE (0), prio 0, crn 0.
        h[19..19 + cdb.len()].copy_from_slice(cdb);
        h
    }

    /// Sends a SCSI command on request queue `q` (absolute queue index, 2 = first request
    /// queue) with the request header in one descriptor, `data_out` buffers after it, the
    /// response header and one data-in buffer per entry of `data_in`.
    pub fn scsi_on(
        &mut self,
        q: usize,
        lun: [u8; 8],
        cdb: &[u8],
        data_out: &[&[u8]],
        data_in: &[u32],
    ) -> ScsiReply {
        let header = self.cmd_header(lun, cdb);
        let mut segs = vec![Seg::out(&header)];
        segs.extend(data_out.iter().map(|d| Seg::out(d)));
        segs.push(Seg::inp(RESP_HEADER_SIZE as u32));
        segs.extend(data_in.iter().map(|&n| Seg::inp(n)));
        self.run_cmd(q, &segs)
    }

    /// [`TestVm::scsi_on`] on the first request queue.
    pub fn scsi(
        &mut self,
        lun: [u8; 8],
        cdb: &[u8],
        data_out: &[&[u8]],
        data_in: &[u32],
    ) -> ScsiReply {
        self.scsi_on(2, lun, cdb, data_out, data_in)
    }

    /// Submits a request chain whose first writable segment is the response header (split over
    /// writable segments as laid out), waits, and decodes the response.
    pub fn run_cmd(&mut self, q: usize, segs: &[Seg]) -> ScsiReply {
        let sub = self.submit(q, segs);
        let used_len = self.complete(&sub);
        let writable: Vec<u8> = self.writable(&sub).concat();
        ScsiReply::parse(used_len, &writable)
    }

    /// TEST UNIT READY, accepting (and consuming) at most one power-on/reset unit attention.
    pub fn clear_unit_attention(&mut self, lun: [u8; 8]) {
        let r = self.scsi(lun, &[0x00, 0, 0, 0, 0, 0], &[], &[]);
        r.assert_ok();
        if r.status == STATUS_CHECK_CONDITION {
            assert_eq!(r.sense_key_asc(), (SENSE_UNIT_ATTENTION, 0x29), "{r:?}");
            let again = self.scsi(lun, &[0x00, 0, 0, 0, 0, 0], &[], &[]);
            again.assert_good();
        } else {
            r.assert_good();
        }
    }

    /// Sends a control-queue request and returns (used len, writable bytes).
    pub fn control(&mut self, req: &[u8], resp_len: u32) -> (u32, Vec<u8>) {
        let sub = self.submit(0, &[Seg::out(req), Seg::inp(resp_len)]);
        let used = self.complete(&sub);
        (used, self.writable(&sub).concat())
    }
}

/// A decoded `virtio_scsi_cmd_resp` plus the data-in bytes that followed it.
pub struct ScsiReply {
    pub used_len: u32,
    pub sense_len: u32,
    pub resid: u32,
    pub status: u8,
    pub response: u8,
    pub sense: Vec<u8>,
    /// Everything after the response header (data-in buffers concatenated, the untouched tail
    /// still 0xee).
    pub data: Vec<u8>,
}

impl std::fmt::Debug for ScsiReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ScsiReply {{ used_len: {}, response: {}, status: {:#04x}, resid: {}, sense: {:02x?} }}",
            self.used_len,
            self.response,
            self.status,
            self.resid,
            &self.sense[..(self.sense_len as usize).min(self.sense.len())]
        )
    }
}

impl ScsiReply {
    fn parse(used_len: u32, w: &[u8]) -> Self {
        assert!(
            w.len() >= RESP_HEADER_SIZE,
            "chain has no full response area"
        );
        let le32 = |o: usize| u32::from_le_bytes(w[o..o + 4].try_into().unwrap());
        ScsiReply {
            used_len,
            sense_len: le32(0),
            resid: le32(4),
            status: w[10],
            response: w[11],
            sense: w[12..RESP_HEADER_SIZE].to_vec(),
            data: w[RESP_HEADER_SIZE..].to_vec(),
        }
    }

    /// The transport delivered the command (response OK).
    pub fn assert_ok(&self) {
        assert_eq!(self.response, VIRTIO_SCSI_S_OK, "{self:?}");
        assert!(self.used_len as usize >= RESP_HEADER_SIZE, "{self:?}");
    }

    /// Response OK and SCSI status GOOD, with no sense data.
    pub fn assert_good(&self) {
        self.assert_ok();
        assert_eq!(self.status, STATUS_GOOD, "{self:?}");
        assert_eq!(self.sense_len, 0, "{self:?}");
    }

    /// Bytes of data-in the device says it transferred (used length minus the header).
    pub fn data_in_len(&self) -> usize {
        self.used_len as usize - RESP_HEADER_SIZE
    }

    /// (sense key, additional sense code) from fixed- or descriptor-format sense data.
    pub fn sense_key_asc(&self) -> (u8, u8) {
        let s = &self.sense;
        assert!(self.sense_len >= 8, "no sense data: {self:?}");
        match s[0] & 0x7f {
            0x70 | 0x71 => {
                assert!(self.sense_len >= 14, "fixed sense data too short: {self:?}");
                (s[2] & 0x0f, s[12])
            }
            0x72 | 0x73 => (s[1] & 0x0f, s[2]),
            other => panic!("unknown sense response code {other:#x}: {self:?}"),
        }
    }

    /// CHECK CONDITION with the given sense key and ASC.
    pub fn assert_check_condition(&self, key: u8, asc: u8) {
        self.assert_ok();
        assert_eq!(self.status, STATUS_CHECK_CONDITION, "{self:?}");
        assert_eq!(self.sense_key_asc(), (key, asc), "{self:?}");
    }
}

/// The virtio-scsi LUN field for a single-level LUN below 256: `01 TT 00 LL 00 00 00 00`.
pub fn lun(target: u8, lun: u8) -> [u8; 8] {
    [1, target, 0, lun, 0, 0, 0, 0]
}

pub fn poll_readable(fd: i32, timeout: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + timeout;
    loop {
        let ms = deadline
            .saturating_duration_since(Instant::now())
            .as_millis()
            .min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd for the duration of the call.
        let ret = unsafe { libc::poll(&mut pfd, 1, ms) };
        if ret > 0 {
            return true;
        }
        if ret == 0 {
            return false;
        }
        let e = io::Error::last_os_error();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted, "poll: {e}");
    }
}

// ---------------------------------------------------------------------------------------------
// CDB builders (SBC-3 / SPC-4).
// ---------------------------------------------------------------------------------------------

pub fn cdb_inquiry(alloc_len: u16) -> [u8; 6] {
    let l = alloc_len.to_be_bytes();
    [0x12, 0, 0, l[0], l[1], 0]
}

pub fn cdb_test_unit_ready() -> [u8; 6] {
    [0x00; 6]
}

pub fn cdb_read_capacity10() -> [u8; 10] {
    [0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

fn cdb_rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let a = lba.to_be_bytes();
    let n = blocks.to_be_bytes();
    [op, 0, a[0], a[1], a[2], a[3], 0, n[0], n[1], 0]
}

pub fn cdb_read10(lba: u32, blocks: u16) -> [u8; 10] {
    cdb_rw10(0x28, lba, blocks)
}

pub fn cdb_write10(lba: u32, blocks: u16) -> [u8; 10] {
    cdb_rw10(0x2a, lba, blocks)
}

pub fn cdb_sync_cache10() -> [u8; 10] {
    [0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]
}

/// A recognisable, position-dependent byte pattern (no two sectors alike).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(i as u32 >> 9) as u8 ^ seed)
        .collect()
}
