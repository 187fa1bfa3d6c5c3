//! The vhost-user front-end of the tests and the host bench: memfd-backed guest memory shared
//! with the daemon, the handshake QEMU performs over the rust-vmm `vhost` front-end driver, and
//! split virtqueues laid out in that memory. [`TestVm`] is a mini QEMU on top of it that
//! submits virtio-scsi requests the way a guest driver does.
//!
//! Everything that could block is bounded (socket timeouts, `poll` on the call eventfds), so a
//! broken daemon fails a test instead of hanging CI.

use std::{
    fs::File,
    io,
    os::{
        fd::{AsRawFd, FromRawFd},
        unix::net::UnixStream,
    },
    path::Path,
    sync::atomic::{fence, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use vhost::{
    vhost_user::{
        message::{VhostUserConfigFlags, VhostUserHeaderFlag},
        Frontend, VhostUserFrontend, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
    },
    VhostBackend, VhostUserMemoryRegionInfo, VringConfigData,
};
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use crate::{
    ring::{chain_flags, write_desc, SplitRing},
    wire::*,
};

/// How long any single wait (socket appearing, completion, exit) may take before the test fails.
pub const TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// Building blocks: memory, handshake, queues (shared by `TestVm` and the host bench).
// ---------------------------------------------------------------------------------------------

/// A memfd of `size` bytes (close-on-exec), to back guest memory shared with the daemon,
/// sealed against growing and shrinking as QEMU's `memory-backend-memfd` seals it (the daemon
/// refuses an unsealed memfd).
pub fn memfd(name: &str, size: u64) -> File {
    let file = unsealed_memfd(name, size);
    // SAFETY: fcntl on a descriptor we own.
    let r = unsafe {
        libc::fcntl(
            file.as_raw_fd(),
            libc::F_ADD_SEALS,
            libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL,
        )
    };
    assert_eq!(r, 0, "F_ADD_SEALS: {}", io::Error::last_os_error());
    file
}

/// A memfd of `size` bytes that allows sealing but carries no seal yet.
pub fn unsealed_memfd(name: &str, size: u64) -> File {
    let cname = std::ffi::CString::new(name).unwrap();
    // SAFETY: memfd_create with a valid C string; the returned fd is owned by the File.
    let fd =
        unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
    // SAFETY: fd is a fresh descriptor nobody else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).expect("ftruncate memfd");
    file
}

/// Guest memory of the given `(guest-physical address, size)` regions, each its own memfd (and
/// so its own mapping in the daemon).
pub fn memfd_guest_memory(regions: &[(u64, u64)]) -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges_with_files(regions.iter().enumerate().map(|(i, &(gpa, size))| {
        (
            GuestAddress(gpa),
            size as usize,
            Some(FileOffset::new(memfd(&format!("guest-ram-{i}"), size), 0)),
        )
    }))
    .expect("guest memory")
}

/// Connects to `socket`, retrying while it refuses: the path exists from bind(2) on, but
/// connections are only accepted after listen(2), so there is a short window after start-up.
pub fn connect_with_retry(socket: &Path) -> UnixStream {
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

/// What the daemon offered during the handshake.
pub struct Offered {
    pub features: u64,
    pub protocol_features: VhostUserProtocolFeatures,
    pub queue_num: u64,
    pub config: Vec<u8>,
}

/// Connects to `socket` and performs the first part of QEMU's handshake: SET_OWNER, the
/// virtio features `wanted` (plus PROTOCOL_FEATURES; each must be offered), the protocol
/// features `proto_wanted` (each must be offered), then NEED_REPLY on every later message (so
/// a backend-side failure shows up at the message that caused it), GET_QUEUE_NUM and
/// GET_CONFIG. Returns the front-end, what was offered and the virtio features acked.
pub fn handshake(
    socket: &Path,
    wanted: u64,
    proto_wanted: VhostUserProtocolFeatures,
) -> (Frontend, Offered, u64) {
    let stream = connect_with_retry(socket);
    // Every vhost-user message waits for a reply at most this long.
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    let mut frontend = Frontend::from_stream(stream, 64);

    frontend.set_owner().expect("SET_OWNER");
    let features = frontend.get_features().expect("GET_FEATURES");
    let wanted = wanted | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    assert_eq!(
        features & wanted,
        wanted,
        "daemon does not offer every feature we ack: {features:#x}"
    );
    frontend.set_features(wanted).expect("SET_FEATURES");

    let protocol_features = frontend
        .get_protocol_features()
        .expect("GET_PROTOCOL_FEATURES");
    assert!(
        protocol_features.contains(proto_wanted),
        "protocol features {protocol_features:?} lack some of {proto_wanted:?}"
    );
    frontend
        .set_protocol_features(proto_wanted)
        .expect("SET_PROTOCOL_FEATURES");
    frontend.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);

    let queue_num = frontend.get_queue_num().expect("GET_QUEUE_NUM");
    let (_, config) = frontend
        .get_config(0, 36, VhostUserConfigFlags::empty(), &[0u8; 36])
        .expect("GET_CONFIG");
    let offered = Offered {
        features,
        protocol_features,
        queue_num,
        config,
    };
    (frontend, offered, wanted)
}

/// SET_MEM_TABLE with every region of `mem`.
pub fn set_mem_table(frontend: &mut Frontend, mem: &GuestMemoryMmap) {
    let regions: Vec<VhostUserMemoryRegionInfo> = mem
        .iter()
        .map(|r| VhostUserMemoryRegionInfo::from_guest_region(r).expect("region info"))
        .collect();
    frontend.set_mem_table(&regions).expect("SET_MEM_TABLE");
}

/// Zeroes `ring`'s memory (`ring_bytes` from its descriptor table on: avail.idx = used.idx = 0,
/// no flags, used_event = 0) and sets up queue `q` over it as QEMU does: size, base 0,
/// addresses, new kick and call eventfds (returned), enabled.
pub fn setup_vring(
    frontend: &mut Frontend,
    mem: &GuestMemoryMmap,
    q: usize,
    ring: &SplitRing,
    ring_bytes: usize,
) -> (EventFd, EventFd) {
    mem.write_slice(&vec![0u8; ring_bytes], GuestAddress(ring.desc))
        .unwrap();
    setup_vring_at(frontend, mem, q, ring, 0)
}

/// Sets up queue `q` over `ring` as it is in guest memory (not zeroed), starting at avail
/// position `base`: what QEMU does when it reconnects to a restarted back-end (its base is the
/// used ring's idx after a failed GET_VRING_BASE).
pub fn setup_vring_at(
    frontend: &mut Frontend,
    mem: &GuestMemoryMmap,
    q: usize,
    ring: &SplitRing,
    base: u16,
) -> (EventFd, EventFd) {
    // SET_VRING_ADDR carries front-end (virtual) addresses, which the backend translates
    // through the memory table.
    let va = |gpa: u64| {
        mem.get_host_address(GuestAddress(gpa))
            .expect("gpa in guest memory") as u64
    };
    let kick = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
    let call = EventFd::new(libc::EFD_NONBLOCK | libc::EFD_CLOEXEC).unwrap();
    frontend.set_vring_num(q, ring.size).expect("SET_VRING_NUM");
    frontend.set_vring_base(q, base).expect("SET_VRING_BASE");
    let addrs = VringConfigData {
        queue_max_size: ring.size,
        queue_size: ring.size,
        flags: 0,
        desc_table_addr: va(ring.desc),
        used_ring_addr: va(ring.used),
        avail_ring_addr: va(ring.avail),
        log_addr: None,
    };
    frontend.set_vring_addr(q, &addrs).expect("SET_VRING_ADDR");
    frontend.set_vring_kick(q, &kick).expect("SET_VRING_KICK");
    frontend.set_vring_call(q, &call).expect("SET_VRING_CALL");
    frontend
        .set_vring_enable(q, true)
        .expect("SET_VRING_ENABLE");
    (kick, call)
}

/// Waits (bounded) until `fd` is readable; false on timeout.
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

/// A recognisable, position-dependent byte pattern (no two sectors alike).
pub fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(31).wrapping_add(i as u32 >> 9) as u8 ^ seed)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// TestVm: guest memory layout.
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

/// A split virtqueue with its eventfds. Descriptors are handed out in order, starting over at
/// 0 when a chain does not fit before the table's end: tests never have anywhere near
/// QUEUE_SIZE descriptors in flight.
struct Queue {
    ring: SplitRing,
    kick: EventFd,
    call: EventFd,
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

impl TestVm {
    /// Connects and performs the handshake QEMU performs, up to enabled queues.
    pub fn connect(socket: &Path, opts: VmOptions) -> Self {
        let mut wanted = VIRTIO_F_VERSION_1
            | VIRTIO_RING_F_INDIRECT_DESC
            | VIRTIO_SCSI_F_HOTPLUG
            | VIRTIO_SCSI_F_CHANGE;
        if opts.event_idx {
            wanted |= VIRTIO_RING_F_EVENT_IDX;
        }
        let proto_wanted = VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS;
        let (mut frontend, offered, acked) = handshake(socket, wanted, proto_wanted);
        let mem = memfd_guest_memory(&[(0, REGION_SIZE), (REGION_SIZE, REGION_SIZE)]);
        set_mem_table(&mut frontend, &mem);

        let mut vm = TestVm {
            frontend,
            mem,
            queues: Vec::new(),
            next_data: DATA_START,
            offered,
            acked_features: acked,
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
        self.queues[q].ring.avail_idx()
    }

    fn setup_queue(&mut self, q: usize) {
        let base = q as u64 * RING_AREA;
        let ring = SplitRing::new(base, base + 0x800, base + 0x1000, QUEUE_SIZE);
        let (kick, call) = setup_vring(&mut self.frontend, &self.mem, q, &ring, RING_AREA as usize);
        self.queues.push(Queue { ring, kick, call });
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
                let flags = chain_flags(i, placed.len(), s.write);
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
            let flags = chain_flags(i, placed.len(), s.write);
            write_desc(
                &self.mem,
                table,
                i as u16,
                *addr,
                s.len,
                flags,
                i as u16 + 1,
            );
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
        let queue = &mut self.queues[q];
        let first = queue.ring.write_descs(&self.mem, descs);
        // With EVENT_IDX the device must interrupt once used.idx moves past used_event; asking
        // for "the next completion" is what a driver waiting for this request does.
        queue.ring.request_notification(&self.mem);
        queue.ring.publish(&self.mem, first);
        // Always kick: avail_event / NO_NOTIFY only allow skipping it, never require it.
        queue.kick.write(1).unwrap();
        first
    }

    pub fn used_idx(&self, q: usize) -> u16 {
        self.queues[q].ring.used_idx(&self.mem)
    }

    /// Waits for `count` completions on queue `q` and returns them as `(head id, used len)`.
    /// The first one must come with a call-eventfd notification: a completion the guest is
    /// never told about would hang a real driver.
    pub fn wait_used(&mut self, q: usize, count: usize) -> Vec<(u32, u32)> {
        self.wait_used_within(q, count, TIMEOUT)
    }

    /// [`TestVm::wait_used`] waiting up to `timeout` instead of [`TIMEOUT`] (a completion
    /// that is slow on purpose).
    pub fn wait_used_within(
        &mut self,
        q: usize,
        count: usize,
        timeout: Duration,
    ) -> Vec<(u32, u32)> {
        let mut out = Vec::new();
        let deadline = Instant::now() + timeout;
        let mut notified = false;
        while out.len() < count {
            if !notified || self.used_idx(q) == self.queues[q].ring.last_used() {
                let remaining = deadline.saturating_duration_since(Instant::now());
                if !poll_readable(self.queues[q].call.as_raw_fd(), remaining) {
                    let pending = self
                        .used_idx(q)
                        .wrapping_sub(self.queues[q].ring.last_used());
                    if pending > 0 {
                        panic!("queue {q}: {pending} completion(s) in the used ring but no call notification");
                    }
                    panic!(
                        "queue {q}: no completion within {timeout:?} ({} of {count})",
                        out.len()
                    );
                }
                let _ = self.queues[q].call.read();
                notified = true;
            }
            let used_idx = self.used_idx(q);
            let queue = &mut self.queues[q];
            while queue.ring.last_used() != used_idx && out.len() < count {
                out.push(queue.ring.pop_used(&self.mem).unwrap());
            }
            // Ask to be told about the next completion, then re-check (a completion that
            // raced with this update may legitimately not have notified).
            queue.ring.request_notification(&self.mem);
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
            self.queues[q].ring.last_used(),
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
    pub fn kick_call_fds(&self, q: usize) -> (i32, i32) {
        (
            self.queues[q].kick.as_raw_fd(),
            self.queues[q].call.as_raw_fd(),
        )
    }

    /// The memory table as sent at connect (hostile tests send it again, or remove regions).
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
        // task_attr SIMPLE (0), prio 0, crn 0.
        let h = cmd_req(lun, self.next_id, 0, cdb).to_vec();
        self.next_id += 1;
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
        let sub = self.submit_scsi(q, lun, cdb, data_out, data_in);
        let used_len = self.complete(&sub);
        self.reply(&sub, used_len)
    }

    /// Sends the command [`TestVm::scsi_on`] sends without waiting for it (several in flight
    /// at once); [`TestVm::reply`] decodes its answer once it completed.
    pub fn submit_scsi(
        &mut self,
        q: usize,
        lun: [u8; 8],
        cdb: &[u8],
        data_out: &[&[u8]],
        data_in: &[u32],
    ) -> Submitted {
        let header = self.cmd_header(lun, cdb);
        let mut segs = vec![Seg::out(&header)];
        segs.extend(data_out.iter().map(|d| Seg::out(d)));
        segs.push(Seg::inp(RESP_HEADER_SIZE as u32));
        segs.extend(data_in.iter().map(|&n| Seg::inp(n)));
        self.submit(q, &segs)
    }

    /// The decoded answer of `sub`, which completed with `used_len`.
    pub fn reply(&self, sub: &Submitted, used_len: u32) -> ScsiReply {
        let writable: Vec<u8> = self.writable(sub).concat();
        ScsiReply::parse(used_len, &writable)
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
        self.reply(&sub, used_len)
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
        let r = CmdResp::parse(w).expect("chain has no full response area");
        ScsiReply {
            used_len,
            sense_len: r.sense_len,
            resid: r.resid,
            status: r.status,
            response: r.response,
            sense: r.sense,
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
