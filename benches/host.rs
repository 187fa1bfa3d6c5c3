//! Host benchmark: a vhost-user front-end (own memfd guest memory, hand-built split rings, the
//! same handshake as QEMU and as the tests: `vus_test_support::frontend`) that drives the
//! daemon over its real socket
//! with virtio-scsi READ(10)/WRITE(10) at a fixed queue depth, and reports IOPS, MB/s and
//! p50/p99/p99.9 latency.
//!
//! `cargo bench --bench host -- --socket SOCK [--bs 4096] [--qd 32] [--queues 1]
//!  [--rw randread|randwrite|read|write|randrw] [--mix 70] [--runtime 10] [--ramp 1]
//!  [--json] [--wait poll|event] [--mem-mib N]`
//!
//! One client thread per request queue; each keeps `qd` commands in flight, honours
//! EVENT_IDX for kicks (avail_event) and, in the default `poll` mode, busy-polls the used ring
//! with interrupts suppressed (as a polling guest driver would); `event` waits on the call
//! eventfd instead.

use std::{
    os::fd::AsRawFd,
    path::PathBuf,
    sync::{
        atomic::{fence, AtomicBool, AtomicU16, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use vhost::vhost_user::{Frontend, VhostUserProtocolFeatures};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;
use vus_test_support::{
    cdb,
    frontend::{handshake, memfd_guest_memory, set_mem_table, setup_vring},
    ring::SplitRing,
    rng::XorShift,
    wire::{
        cmd_req_lun0, CmdResp, CDB_OFFSET, REQ_HEADER_SIZE, RESP_HEADER_SIZE, VIRTIO_F_VERSION_1,
        VIRTIO_RING_F_EVENT_IDX, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
    },
};

#[derive(Clone, Debug)]
struct Opts {
    socket: PathBuf,
    bs: u32,
    qd: u16,
    queues: u16,
    rw: String,
    mix: u32,
    runtime: f64,
    ramp: f64,
    json: bool,
    poll: bool,
    queue_size: u16,
    /// Guest memory floor in MiB (`--mem-mib`; the layout needs about 1 MiB per queue plus
    /// 2): small enough to register under an 8 MiB RLIMIT_MEMLOCK (`--register-buffers`).
    mem_mib: u64,
    label: String,
}

fn usage() -> ! {
    eprintln!(
        "usage: host --socket SOCK [--bs N] [--qd N] [--queues N] [--rw randread|randwrite|read|write|randrw] \
         [--mix READ%] [--runtime S] [--ramp S] [--wait poll|event] [--mem-mib N] [--label TEXT] [--json]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let mut o = Opts {
        socket: PathBuf::new(),
        bs: 4096,
        qd: 32,
        queues: 1,
        rw: "randread".into(),
        mix: 70,
        runtime: 10.0,
        ramp: 1.0,
        json: false,
        poll: true,
        queue_size: 256,
        mem_mib: 64,
        label: String::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--socket" => o.socket = val().into(),
            "--bs" => o.bs = val().parse().unwrap_or_else(|_| usage()),
            "--qd" => o.qd = val().parse().unwrap_or_else(|_| usage()),
            "--queues" => o.queues = val().parse().unwrap_or_else(|_| usage()),
            "--rw" => o.rw = val(),
            "--mix" => o.mix = val().parse().unwrap_or_else(|_| usage()),
            "--runtime" => o.runtime = val().parse().unwrap_or_else(|_| usage()),
            "--ramp" => o.ramp = val().parse().unwrap_or_else(|_| usage()),
            "--wait" => o.poll = val() == "poll",
            "--mem-mib" => o.mem_mib = val().parse().unwrap_or_else(|_| usage()),
            "--label" => o.label = val(),
            "--json" => o.json = true,
            "--bench" => {} // cargo bench passes this
            _ => usage(),
        }
    }
    if o.socket.as_os_str().is_empty() || o.qd == 0 || o.queues == 0 || o.bs % 512 != 0 {
        usage();
    }
    // Three descriptors per command, no indirect tables.
    o.queue_size = (3 * o.qd).next_power_of_two().max(64);
    o
}

/// Per-queue layout inside guest memory.
struct QueueLayout {
    desc: u64,
    avail: u64,
    used: u64,
    /// Per slot: header, response and data buffers.
    slot_base: u64,
    slot_stride: u64,
}

fn layout(o: &Opts, q: usize) -> QueueLayout {
    let qs = u64::from(o.queue_size);
    let ring_bytes = (16 * qs + 6 + 2 * qs + 6 + 8 * qs).next_multiple_of(4096) + 8192;
    let slot_stride = (u64::from(o.bs) + 4096).next_multiple_of(4096);
    let per_queue = ring_bytes + slot_stride * u64::from(o.qd);
    let base = q as u64 * per_queue.next_multiple_of(1 << 20);
    QueueLayout {
        desc: base,
        avail: base + 16 * qs,
        used: (base + 16 * qs + 6 + 2 * qs).next_multiple_of(4096),
        slot_base: base + ring_bytes,
        slot_stride,
    }
}

fn mem_size(o: &Opts) -> u64 {
    let l = layout(o, 1);
    (l.desc * (u64::from(o.queues) + 2))
        .max(o.mem_mib << 20)
        .next_multiple_of(2 << 20)
}

struct Setup {
    _frontend: Frontend,
    mem: GuestMemoryMmap,
    kicks: Vec<EventFd>,
    calls: Vec<EventFd>,
    capacity_blocks: u64,
}

fn connect(o: &Opts) -> Setup {
    let proto = VhostUserProtocolFeatures::MQ
        | VhostUserProtocolFeatures::CONFIG
        | VhostUserProtocolFeatures::REPLY_ACK;
    let (mut f, offered, _) = handshake(
        &o.socket,
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX,
        proto,
    );
    let qn = offered.queue_num;
    assert!(
        u64::from(o.queues) + 2 <= qn,
        "daemon offers {} request queues, {} wanted (--num-queues)",
        qn - 2,
        o.queues
    );
    let mem = memfd_guest_memory(&[(0, mem_size(o))]);
    set_mem_table(&mut f, &mem);
    let mut kicks = Vec::new();
    let mut calls = Vec::new();
    let mut rings = Vec::new();
    // Control and event queues are set up (tiny) so that the device is complete; the request
    // queues are laid out after them.
    for q in 0..(2 + usize::from(o.queues)) {
        let l = layout(o, q);
        let ring = SplitRing::new(l.desc, l.avail, l.used, o.queue_size);
        let (kick, call) = setup_vring(&mut f, &mem, q, &ring, (l.slot_base - l.desc) as usize);
        kicks.push(kick);
        calls.push(call);
        rings.push(ring);
    }
    let mut s = Setup {
        _frontend: f,
        mem,
        kicks,
        calls,
        capacity_blocks: 0,
    };
    s.capacity_blocks = read_capacity(o, &s, &mut rings[2]);
    s
}

/// Issues one command synchronously on request queue 0 (its first slot's buffers), returning
/// (status, data).
fn sync_cmd(o: &Opts, s: &Setup, ring: &mut SplitRing, cdb: &[u8], data_in: u32) -> (u8, Vec<u8>) {
    let q = 2;
    let l = layout(o, q);
    let (hdr, resp, data) = (l.slot_base, l.slot_base + 64, l.slot_base + 4096);
    s.mem
        .write_slice(&cmd_req_lun0(cdb), GuestAddress(hdr))
        .unwrap();
    let wflags = VRING_DESC_F_WRITE | if data_in > 0 { VRING_DESC_F_NEXT } else { 0 };
    let head = ring.write_descs(
        &s.mem,
        &[
            (hdr, REQ_HEADER_SIZE as u32, VRING_DESC_F_NEXT, 1),
            (resp, RESP_HEADER_SIZE as u32, wflags, 2),
            (data, data_in, VRING_DESC_F_WRITE, 0),
        ],
    );
    ring.publish(&s.mem, head);
    s.kicks[q].write(1).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while ring.pop_used(&s.mem).is_none() {
        assert!(
            Instant::now() < deadline,
            "no completion for the setup command"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut r = vec![0u8; RESP_HEADER_SIZE];
    s.mem.read_slice(&mut r, GuestAddress(resp)).unwrap();
    let mut d = vec![0u8; data_in as usize];
    s.mem.read_slice(&mut d, GuestAddress(data)).unwrap();
    (CmdResp::parse(&r).unwrap().status, d)
}

fn read_capacity(o: &Opts, s: &Setup, ring: &mut SplitRing) -> u64 {
    // The first command after connect may report the power-on unit attention.
    for _ in 0..3 {
        let (status, d) = sync_cmd(o, s, ring, &cdb::read_capacity10(), 8);
        if status == 0 {
            let last = u32::from_be_bytes(d[0..4].try_into().unwrap());
            let bs = u32::from_be_bytes(d[4..8].try_into().unwrap());
            assert_eq!(bs, 512, "the bench expects 512-byte blocks");
            return u64::from(last) + 1;
        }
    }
    panic!("READ CAPACITY failed");
}

/// Raw view of a queue for the hot loop.
struct Ring {
    base: *mut u8,
    l: QueueLayout,
    qs: u16,
}

impl Ring {
    fn at<T>(&self, gpa: u64) -> *mut T {
        // SAFETY: all addresses used are inside the single guest memory region.
        unsafe { self.base.add(gpa as usize).cast() }
    }
    fn avail_ring(&self, i: u16) -> *mut u16 {
        self.at(self.l.avail + 4 + 2 * u64::from(i % self.qs))
    }
    fn avail_idx(&self) -> &AtomicU16 {
        // SAFETY: aligned u16 in shared memory, accessed atomically by both sides.
        unsafe { &*self.at::<AtomicU16>(self.l.avail + 2) }
    }
    fn used_event(&self) -> &AtomicU16 {
        // SAFETY: as above.
        unsafe { &*self.at::<AtomicU16>(self.l.avail + 4 + 2 * u64::from(self.qs)) }
    }
    fn used_idx(&self) -> &AtomicU16 {
        // SAFETY: as above.
        unsafe { &*self.at::<AtomicU16>(self.l.used + 2) }
    }
    fn avail_event(&self) -> &AtomicU16 {
        // SAFETY: as above.
        unsafe { &*self.at::<AtomicU16>(self.l.used + 4 + 8 * u64::from(self.qs)) }
    }
    fn used_elem(&self, i: u16) -> (u32, u32) {
        let p: *const u32 = self.at(self.l.used + 4 + 8 * u64::from(i % self.qs));
        // SAFETY: inside the used ring; read after the Acquire load of used.idx.
        unsafe { (p.read_volatile(), p.add(1).read_volatile()) }
    }
}

#[derive(Default)]
struct QueueResult {
    ios: u64,
    bytes: u64,
    errors: u64,
    kicks: u64,
    lat_ns: Vec<u32>,
}

fn run_queue(
    o: &Opts,
    s: &Setup,
    qi: usize,
    stop: &AtomicBool,
    measuring: &AtomicBool,
) -> QueueResult {
    let q = 2 + qi;
    let l = layout(o, q);
    let base = s.mem.get_host_address(GuestAddress(0)).unwrap();
    let ring = Ring {
        base,
        l,
        qs: o.queue_size,
    };
    let blocks_per_io = u64::from(o.bs / 512);
    let max_lba = s.capacity_blocks.saturating_sub(blocks_per_io);
    let random = o.rw.starts_with("rand");
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ ((qi as u64 + 1) * 0x1234_5678_9abc_def1));
    let mut seq_lba = (max_lba / u64::from(o.queues)) * qi as u64;
    let qd = o.qd;
    let mut start = vec![Instant::now(); usize::from(qd)];
    let mut res = QueueResult {
        lat_ns: Vec::with_capacity(1 << 20),
        ..Default::default()
    };
    let mut avail_idx: u16 = ring.avail_idx().load(Ordering::Acquire);
    let mut last_used: u16 = ring.used_idx().load(Ordering::Acquire);
    let kick = &s.kicks[q];
    let call = &s.calls[q];

    // Prepares slot `i` (descriptors 3i..3i+2) for a new command and returns its head.
    let prepare = |i: u16, rng: &mut XorShift, seq: &mut u64| -> u16 {
        let is_read = match o.rw.as_str() {
            "randread" | "read" => true,
            "randwrite" | "write" => false,
            _ => (rng.next_u64() % 100) < u64::from(o.mix),
        };
        let lba = if random {
            (rng.next_u64() % (max_lba / blocks_per_io + 1)) * blocks_per_io
        } else {
            let v = *seq;
            *seq = if v + 2 * blocks_per_io > max_lba {
                0
            } else {
                v + blocks_per_io
            };
            v
        };
        let sb = ring.l.slot_base + u64::from(i) * ring.l.slot_stride;
        let (hdr, resp, data) = (sb, sb + 64, sb + 4096);
        let h: *mut u8 = ring.at(hdr);
        let n = (o.bs / 512) as u16;
        let opcode = if is_read { cdb::READ_10 } else { cdb::WRITE_10 };
        let cdb = cdb::rw10_array(opcode, lba as u32, n);
        // Only the LUN's first byte and the CDB change: the rest of the header stays zero.
        // SAFETY: the header buffer belongs to this slot, which is not in flight.
        unsafe {
            *h = 1;
            std::ptr::copy_nonoverlapping(cdb.as_ptr(), h.add(CDB_OFFSET), cdb.len());
        }
        let d = 3 * i;
        let table = ring.l.desc;
        let wd = |idx: u16, addr: u64, len: u32, flags: u16, next: u16| {
            let p: *mut u64 = ring.at(table + 16 * u64::from(idx));
            // SAFETY: descriptor `idx` belongs to this slot.
            unsafe {
                p.write_volatile(addr);
                p.add(1).write_volatile(
                    u64::from(len) | u64::from(flags) << 32 | u64::from(next) << 48,
                );
            }
        };
        wd(d, hdr, REQ_HEADER_SIZE as u32, VRING_DESC_F_NEXT, d + 1);
        if is_read {
            wd(
                d + 1,
                resp,
                RESP_HEADER_SIZE as u32,
                VRING_DESC_F_WRITE | VRING_DESC_F_NEXT,
                d + 2,
            );
            wd(d + 2, data, o.bs, VRING_DESC_F_WRITE, 0);
        } else {
            wd(d + 1, data, o.bs, VRING_DESC_F_NEXT, d + 2);
            wd(d + 2, resp, RESP_HEADER_SIZE as u32, VRING_DESC_F_WRITE, 0);
        }
        d
    };
    let publish = |avail_idx: &mut u16, heads: &[u16], res: &mut QueueResult| {
        let old = *avail_idx;
        for &h in heads {
            // SAFETY: ring slot inside the avail ring.
            unsafe { ring.avail_ring(*avail_idx).write_volatile(h) };
            *avail_idx = avail_idx.wrapping_add(1);
        }
        ring.avail_idx().store(*avail_idx, Ordering::Release);
        fence(Ordering::SeqCst);
        // vring_need_event(avail_event, new, old)
        let ev = ring.avail_event().load(Ordering::Acquire);
        if avail_idx.wrapping_sub(ev).wrapping_sub(1) < avail_idx.wrapping_sub(old) {
            kick.write(1).unwrap();
            res.kicks += 1;
        }
    };

    let mut heads: Vec<u16> = Vec::with_capacity(usize::from(qd));
    for i in 0..qd {
        heads.push(prepare(i, &mut rng, &mut seq_lba));
        start[usize::from(i)] = Instant::now();
    }
    if o.poll {
        ring.used_event()
            .store(last_used.wrapping_add(0x8000), Ordering::Release);
    }
    publish(&mut avail_idx, &heads, &mut res);
    while !stop.load(Ordering::Relaxed) {
        let used = ring.used_idx().load(Ordering::Acquire);
        if used == last_used {
            if o.poll {
                // A polling driver whose CPU is shared: let the daemon's threads run when they
                // are waiting for this CPU (the machine has two, shared by everything).
                std::thread::yield_now();
                ring.used_event()
                    .store(last_used.wrapping_add(0x8000), Ordering::Release);
            } else {
                ring.used_event().store(last_used, Ordering::Release);
                fence(Ordering::SeqCst);
                if ring.used_idx().load(Ordering::Acquire) == last_used {
                    let mut pfd = libc::pollfd {
                        fd: call.as_raw_fd(),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut pfd, 1, 100) };
                    let _ = call.read();
                }
            }
            continue;
        }
        heads.clear();
        let now = Instant::now();
        let counting = measuring.load(Ordering::Relaxed);
        while last_used != used {
            let (id, _len) = ring.used_elem(last_used);
            last_used = last_used.wrapping_add(1);
            let slot = (id / 3) as u16;
            let sb = ring.l.slot_base + u64::from(slot) * ring.l.slot_stride;
            let resp: *const u8 = ring.at(sb + 64);
            // SAFETY: the response buffer of a completed slot.
            let (status, response) =
                unsafe { (resp.add(10).read_volatile(), resp.add(11).read_volatile()) };
            if counting {
                if status != 0 || response != 0 {
                    res.errors += 1;
                }
                res.ios += 1;
                res.bytes += u64::from(o.bs);
                let ns = now.duration_since(start[usize::from(slot)]).as_nanos();
                res.lat_ns.push(ns.min(u128::from(u32::MAX)) as u32);
            }
            heads.push(prepare(slot, &mut rng, &mut seq_lba));
            start[usize::from(slot)] = now;
        }
        publish(&mut avail_idx, &heads, &mut res);
    }
    // Drain what is in flight so the daemon is idle for the next run.
    let deadline = Instant::now() + Duration::from_secs(5);
    while ring.used_idx().load(Ordering::Acquire) != avail_idx && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
    }
    res
}

fn pct(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p / 100.0).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn main() {
    let o = parse_opts();
    let setup = Arc::new(connect(&o));
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let handles: Vec<_> = (0..usize::from(o.queues))
        .map(|qi| {
            let (o, s, st, m) = (o.clone(), setup.clone(), stop.clone(), measuring.clone());
            std::thread::spawn(move || run_queue(&o, &s, qi, &st, &m))
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(o.ramp));
    measuring.store(true, Ordering::Relaxed);
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(o.runtime));
    measuring.store(false, Ordering::Relaxed);
    let elapsed = t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let mut total = QueueResult::default();
    for h in handles {
        let r = h.join().expect("queue thread");
        total.ios += r.ios;
        total.bytes += r.bytes;
        total.errors += r.errors;
        total.kicks += r.kicks;
        total.lat_ns.extend(r.lat_ns);
    }
    total.lat_ns.sort_unstable();
    let iops = total.ios as f64 / elapsed;
    let mbs = total.bytes as f64 / elapsed / 1e6;
    let (p50, p99, p999) = (
        pct(&total.lat_ns, 50.0),
        pct(&total.lat_ns, 99.0),
        pct(&total.lat_ns, 99.9),
    );
    if o.json {
        println!(
            "{{\"label\":\"{}\",\"rw\":\"{}\",\"bs\":{},\"qd\":{},\"queues\":{},\"iops\":{:.0},\"mbps\":{:.1},\"p50_us\":{:.1},\"p99_us\":{:.1},\"p999_us\":{:.1},\"errors\":{},\"kicks_per_io\":{:.3}}}",
            o.label, o.rw, o.bs, o.qd, o.queues, iops, mbs, p50, p99, p999, total.errors,
            total.kicks as f64 / total.ios.max(1) as f64
        );
    } else {
        println!(
            "{} {} bs={} qd={} queues={}: {:.0} IOPS, {:.1} MB/s, lat p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, errors {}, kicks/io {:.3}",
            o.label, o.rw, o.bs, o.qd, o.queues, iops, mbs, p50, p99, p999, total.errors,
            total.kicks as f64 / total.ios.max(1) as f64
        );
    }
    if total.errors > 0 {
        std::process::exit(1);
    }
}
