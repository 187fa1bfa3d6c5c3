//! One request queue served asynchronously: pop many chains, start their I/O, complete each as
//! its result arrives.
//!
//! The worker owns a fixed table of slots (one per descriptor the queue can hold). A slot keeps
//! what an in-flight command needs until its completion: the chain's head index, a guard on the
//! guest memory the I/O reads or writes (so a memory-table change cannot unmap it underneath the
//! kernel), the iovecs handed to the engine and where the response header goes. Slots and their
//! vectors are reused, so a warmed-up queue allocates nothing per request here.

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, RawFd},
    sync::Arc,
    time::{Duration, Instant},
};

use log::{info, warn};
use vhost_user_backend::VringT;
use virtio_queue::{desc::split::Descriptor, DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryLoadGuard, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress, VolatileSlice,
};

mod hold;
mod used;
pub use hold::{RetryTimer, RETRY_MAX, RETRY_MIN};
use used::UsedBatch;

use crate::{
    block::{
        engine::{
            inline::InlineEngine, threads::ThreadEngine, uring::UringEngine, AioMode, Engine,
            IoConfig, Op,
        },
        iscsi::AnswerWake,
        partial_failure,
    },
    scsi::{IoKind, IoMeta, LogicalUnit, ScsiBus, WriteInFlight},
    virtio::{
        command::{
            answer_unparsed, start_command, PassthroughReply, PendingIo, ReplyShape, Started,
        },
        inflight::{HeadChain, InflightQueue},
        poll::{PollPolicy, Poller, OFF_CPU_STRIKE},
        request::{parse_cmd_chain, CmdRequest, RequestError},
    },
};

type MemGuard = GuestMemoryLoadGuard<GuestMemoryMmap>;
/// Whatever virtqueue type serves the queue (the daemon's `ScsiVring`, a test's `VringRwLock`).
pub trait Vring: VringT<vm_memory::GuestMemoryAtomic<GuestMemoryMmap>> {}
impl<T: VringT<vm_memory::GuestMemoryAtomic<GuestMemoryMmap>>> Vring for T {}

/// A chain to serve: popped from the avail ring, or resubmitted from the inflight region (the
/// previous back-end popped it and never answered).
pub enum Chain {
    Popped(DescriptorChain<MemGuard>),
    Resubmitted(HeadChain<MemGuard>),
}

impl Chain {
    pub fn head_index(&self) -> u16 {
        match self {
            Chain::Popped(c) => c.head_index(),
            Chain::Resubmitted(c) => c.head_index(),
        }
    }
}

impl Iterator for Chain {
    type Item = Descriptor;
    fn next(&mut self) -> Option<Descriptor> {
        match self {
            Chain::Popped(c) => c.next(),
            Chain::Resubmitted(c) => c.next(),
        }
    }
}

/// A queue's inflight tracking (vhost-user INFLIGHT_SHMFD, [`super::inflight`]).
#[derive(Default)]
pub struct Tracking {
    queue: Option<InflightQueue>,
    /// Which SET_INFLIGHT_FD `queue` came from (0: none yet); see [`Tracking::set`].
    generation: u64,
    /// `queue.start` has run for this region.
    started: bool,
    /// Heads left to resubmit, in pop order.
    resubmit: VecDeque<u16>,
}

impl Tracking {
    /// The SET_INFLIGHT_FD this queue's tracking comes from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Tracks requests in `queue` from now on (the front-end handed over region number
    /// `generation`); what it says was left in flight is resubmitted before anything new.
    pub fn set(&mut self, queue: Option<InflightQueue>, generation: u64) {
        *self = Tracking {
            queue,
            generation,
            ..Tracking::default()
        };
    }

    /// This queue's part of the region, if any.
    pub fn queue(&self) -> Option<&InflightQueue> {
        self.queue.as_ref()
    }

    /// The next chain to resubmit, before anything is popped from the avail ring.
    pub fn next_resubmit(&mut self, vring: &impl Vring, mem: &MemGuard) -> Option<Chain> {
        let head = self.resubmit.pop_front()?;
        Some(Chain::Resubmitted(resubmitted_chain(vring, mem, head)))
    }

    /// On the queue's first use with this region: reads what the previous back-end left in
    /// flight, and moves the avail position past it (the front-end's ring base is the last
    /// answered request, which skips requests answered out of order).
    pub fn start(&mut self, vring: &impl Vring) -> Result<(), QueueError> {
        let Some(q) = self.queue.as_mut().filter(|_| !self.started) else {
            return Ok(());
        };
        if !vring.get_ref().get_queue().ready() {
            return Ok(());
        }
        let used = vring.queue_used_idx()?;
        let start = q.start(used);
        self.started = true;
        if start.resumed {
            vring.set_queue_next_avail(used.wrapping_add(start.resubmit.len() as u16));
        }
        if !start.resubmit.is_empty() {
            info!(
                "resubmitting {} request(s) the previous back-end left in flight",
                start.resubmit.len()
            );
        }
        self.resubmit = start.resubmit.into();
        Ok(())
    }

    pub fn popped(&mut self, head: u16) {
        if let Some(q) = self.queue.as_mut() {
            q.popped(head);
        }
    }
}

/// Publishes `head`'s used element, recording it in the inflight region around it (the same
/// order as libvhost-user: mark the batch head, publish, clear the mark, record used idx).
pub fn publish_used(
    vring: &impl Vring,
    inflight: Option<&InflightQueue>,
    head: u16,
    len: u32,
) -> Result<(), virtio_queue::Error> {
    let Some(q) = inflight else {
        return vring.add_used(head, len);
    };
    q.before_used(head);
    vring.add_used(head, len)?;
    q.after_used(head, vring.get_ref().get_queue().next_used());
    Ok(())
}

/// The chain whose head is `head`, walked from the queue's descriptor table.
fn resubmitted_chain(vring: &impl Vring, mem: &MemGuard, head: u16) -> HeadChain<MemGuard> {
    let state = vring.get_ref();
    let queue = state.get_queue();
    HeadChain::new(
        mem.clone(),
        GuestAddress(queue.desc_table()),
        queue.size(),
        head,
    )
}

/// Most passthrough (iSCSI) commands one `pop_and_start` sends before it lets the engine's
/// completions and the event loop have their turn.
const PASSTHROUGH_ROUND: usize = 1024;

/// Most iovecs one `readv`/`writev` takes (`UIO_MAXIOV`); longer lists run synchronously.
const MAX_IOVECS: usize = 1024;

/// Why a request queue stopped serving its current batch.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("virtqueue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("cannot notify the guest: {0}")]
    Notify(io::Error),
    #[error("I/O engine failed: {0}")]
    Engine(io::Error),
}

/// An in-flight command.
struct Slot {
    head: u16,
    mem: Option<MemGuard>,
    iov: Vec<libc::iovec>,
    /// Response-header area: (host address, length) segments in guest memory.
    response: Vec<(*mut u8, usize)>,
    target: u8,
    lun: u16,
    meta: IoMeta,
    reply: ReplyShape,
    fd: RawFd,
    offset: u64,
    /// A write's registration with its LU's write gate: COMPARE AND WRITE waits until it is
    /// dropped, which happens when the slot is completed or reaped (also in `Drop`), or with
    /// the slot itself.
    write: Option<WriteInFlight>,
    /// The LU the command belongs to: kept (its backend open) until the command is completed,
    /// even when the LUN is removed meanwhile.
    unit: Option<Arc<LogicalUnit>>,
}

// SAFETY: the raw pointers point into guest memory mapped by `mem`, which the slot keeps alive;
// a slot is only ever used by the queue thread that owns the worker.
unsafe impl Send for Slot {}

impl Slot {
    fn empty() -> Self {
        Self {
            head: 0,
            mem: None,
            iov: Vec::new(),
            response: Vec::new(),
            target: 0,
            lun: 0,
            meta: IoMeta {
                kind: IoKind::Flush,
                opcode: 0,
                lba: 0,
                len: 0,
                start: None,
            },
            reply: ReplyShape {
                data_in: false,
                buffer_len: 0,
            },
            fd: -1,
            offset: 0,
            write: None,
            unit: None,
        }
    }

    /// Takes `io`'s command: where its data and response header are in guest memory (kept
    /// mapped by a guard on `mem`), what completing it needs. Its write-gate registration
    /// stays with `io` until the caller moves it in.
    fn fill(&mut self, head: u16, mem: &MemGuard, io: &PendingIo<'_>) {
        self.iov.clear();
        self.iov
            .extend(io.plan.bufs.segments().map(|s| libc::iovec {
                iov_base: s.ptr_guard_mut().as_ptr().cast(),
                iov_len: s.len(),
            }));
        self.response.clear();
        self.response.extend(
            io.response
                .segments()
                .iter()
                .map(|s| (s.ptr_guard_mut().as_ptr(), s.len())),
        );
        self.head = head;
        self.mem = Some(mem.clone());
        self.target = io.target;
        self.lun = io.lun;
        self.meta = io.plan.meta;
        self.reply = io.reply;
        self.fd = io.plan.fd.unwrap_or(-1);
        self.offset = io.plan.offset;
        // The LU the command runs on (a held command is retried and answered through it).
        self.unit = io.plan.unit.clone();
    }

    /// The slot's command is over: lets go of guest memory and the write gate.
    fn release(&mut self) {
        self.write = None;
        self.mem = None;
        self.unit = None;
    }
}

/// The per-thread state of one request queue.
pub struct QueueWorker {
    engine: Box<dyn Engine>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    inflight: usize,
    done: Vec<(u64, i32)>,
    chains: Vec<Chain>,
    /// Inflight tracking, when the front-end shares a region.
    tracking: Tracking,
    /// How long to spin before sleeping (`--poll-us`, `--poll-max-us`).
    poller: Poller,
    /// When the queue last ran out of work and went back to the event loop (adaptive
    /// polling measures how long the guest's next request took).
    idle_since: Option<Instant>,
    /// `--submit-batch`: operations pushed to the engine before it is told to start them.
    submit_batch: u32,
    /// Operations pushed since the last submit.
    unsubmitted: u32,
    /// The command being started is the last one of this pass over the ring: its I/O is
    /// handed to the kernel together with the wait that follows (one `io_uring_enter` instead
    /// of two at QD1), or before the spin.
    last_of_pass: bool,
    /// The front-end stopped the ring (GET_VRING_BASE) during this `run`.
    ring_stopped: bool,
    /// `--register-buffers`: whether to register guest memory with the engine, and the memory
    /// table registered (kept alive, so that a new table can never reuse its address).
    register_buffers: bool,
    registered: Option<MemGuard>,
    /// See [`QueueWorker::set_teardown_deadline`].
    teardown_deadline: Option<Instant>,
    /// Which queue this is (log messages).
    queue: usize,
    /// The bus generation whose removed LUNs' fixed files the engine has let go of.
    bus_generation: u64,
    /// `enospc=hold`: the commands kept unanswered until their storage has room (see `hold`).
    held: hold::Held,
    /// Answers not yet in the used ring: published (one used index store) and notified (at
    /// most one call) per batch, before any sleep ([`used`]).
    used: UsedBatch,
    /// This thread's answer eventfd for passthrough (iSCSI) commands, made when the first one
    /// comes (`block::iscsi::answer_wake`); `None` before, or if it could not be made (then
    /// the oldest answer is waited for alone).
    answer_wake: Option<Arc<AnswerWake>>,
    /// `answer_wake` could not be made (said once).
    answer_wake_failed: bool,
}

impl QueueWorker {
    /// Builds the engine `config` asks for, with room for `depth` commands in flight: the
    /// queue's io_uring `ring` (made at start-up) for `--aio=io-uring`, the thread pool when
    /// there is none (io_uring was refused at start-up). Runs on the queue thread that will
    /// use it.
    pub fn new(
        config: &IoConfig,
        ring: Option<UringEngine>,
        depth: u16,
        queue: usize,
    ) -> io::Result<Self> {
        let inline = config.aio == AioMode::Sync;
        // (`--queue-cpus` and `--register-buffers` tune the asynchronous engines only.)
        if !config.queue_cpus.is_empty() && !inline {
            pin_to_cpu(config.queue_cpus[queue % config.queue_cpus.len()]);
        }
        let mut depth = usize::from(depth.max(1));
        let engine: Box<dyn Engine> = match (config.aio, ring) {
            (AioMode::IoUring, Some(ring)) => {
                // No more in flight than the ring's completion queue holds with room for kicks.
                depth = depth.min(ring.entries() as usize);
                Box::new(ring)
            }
            (AioMode::IoUring | AioMode::Threads, _) => {
                Box::new(ThreadEngine::new(config.aio_threads, depth)?)
            }
            (AioMode::Sync, _) => Box::new(InlineEngine),
        };
        if queue == 0 && !inline {
            info!("request queues use the {} engine", engine.name());
        }
        let mut worker = Self::with_engine_batching(engine, depth as u16, config.submit_batch);
        worker.poller = Poller::new(PollPolicy::from_options(config.poll_us, config.poll_max_us));
        worker.register_buffers = config.register_buffers && !inline;
        worker.queue = queue;
        Ok(worker)
    }

    /// A worker over a ready-made engine, with room for `depth` commands in flight, each
    /// submitted at once, and no busy polling (tests, custom engines).
    pub fn with_engine(engine: Box<dyn Engine>, depth: u16) -> Self {
        Self::with_engine_batching(engine, depth, 1)
    }

    /// [`QueueWorker::with_engine`] submitting after every `submit_batch` commands
    /// (`--submit-batch`).
    pub fn with_engine_batching(engine: Box<dyn Engine>, depth: u16, submit_batch: u32) -> Self {
        let depth = usize::from(depth.max(1));
        Self {
            engine,
            slots: (0..depth).map(|_| Slot::empty()).collect(),
            free: (0..depth as u32).rev().collect(),
            inflight: 0,
            done: Vec::with_capacity(depth),
            chains: Vec::with_capacity(depth),
            tracking: Tracking::default(),
            poller: Poller::new(PollPolicy::Never),
            idle_since: None,
            submit_batch: submit_batch.max(1),
            unsubmitted: 0,
            last_of_pass: false,
            ring_stopped: false,
            register_buffers: false,
            registered: None,
            teardown_deadline: None,
            queue: 0,
            bus_generation: 0,
            held: hold::Held::default(),
            used: UsedBatch::with_capacity(depth),
            answer_wake: None,
            answer_wake_failed: false,
        }
    }

    /// Completes what is in flight (the connection is gone: nothing is answered) and hands
    /// back the io_uring engine, if that is what this worker used, for the next connection.
    pub fn into_ring(mut self) -> Option<UringEngine> {
        self.abandon_in_flight();
        if self.inflight > 0 {
            // Their completions would reach the next connection's worker as its own slots':
            // the ring goes (the kernel keeps it until they end), the queue uses the pool.
            warn!(
                "request queue {}: its io_uring is not reused ({} I/O(s) still in flight)",
                self.queue, self.inflight
            );
            // Their memory is leaked already (above): nothing for Drop to wait for again.
            self.inflight = 0;
            return None;
        }
        std::mem::replace(&mut self.engine, Box::new(InlineEngine)).into_ring()
    }

    /// Waits for the I/O in flight, answering none (the kernel may still be writing guest
    /// memory: the guards must not go before), but only until the teardown deadline: what is
    /// still in flight then keeps its guest memory mapped for good (leaked).
    fn abandon_in_flight(&mut self) {
        self.forget_held();
        // The kernel may still be writing guest memory: wait before the guards go, but only so
        // long (bounded teardown).
        let deadline = self
            .teardown_deadline
            .unwrap_or_else(|| Instant::now() + TEARDOWN_DRAIN);
        while self.inflight > 0 {
            let _ = self.engine.submit();
            self.engine.reap(&mut self.done);
            for &(user_data, _) in &self.done {
                if let Some(slot) = self.slots.get_mut(user_data as usize) {
                    // The command is never answered (the connection is gone), but its write
                    // no longer holds the gate.
                    slot.release();
                    self.inflight = self.inflight.saturating_sub(1);
                }
            }
            self.done.clear();
            if self.inflight == 0 {
                break;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                warn!(
                    "request queue {}: {} I/O(s) still in flight at the disconnect deadline \
                     ({TEARDOWN_DRAIN:?}); their guest memory stays mapped (leaked) so that they can \
                     never write into a later mapping",
                    self.queue, self.inflight
                );
                for slot in &mut self.slots {
                    std::mem::forget(slot.mem.take());
                    slot.write = None;
                    // Its file too: the kernel may still be using it.
                    std::mem::forget(slot.unit.take());
                }
                std::mem::forget(self.registered.take());
                break;
            }
            match self.engine.completion_fd() {
                Some(fd) => {
                    let mut pfd = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    let ms = left.as_millis().clamp(1, 50) as libc::c_int;
                    // SAFETY: one valid pollfd for the duration of the call.
                    if unsafe { libc::poll(&mut pfd, 1, ms) } > 0 && self.engine.wait(None).is_err()
                    {
                        break;
                    }
                }
                None => {
                    if self.engine.wait(None).is_err() {
                        break;
                    }
                }
            }
        }
    }

    /// Tracks this queue's requests in `queue` (a part of the front-end's inflight region) from
    /// now on; what the region says was left in flight is resubmitted before the next new
    /// request. Called before the first `run` and whenever the front-end hands over a region
    /// again (SET_INFLIGHT_FD), which it does only while the ring is stopped.
    pub fn set_inflight(&mut self, queue: Option<InflightQueue>, generation: u64) {
        self.tracking.set(queue, generation);
    }

    /// The SET_INFLIGHT_FD the tracking comes from (0: none).
    pub fn inflight_generation(&self) -> u64 {
        self.tracking.generation()
    }

    /// The ring is being stopped (GET_VRING_BASE): a new kick eventfd may follow.
    pub fn forget_kick(&mut self) {
        self.engine.forget_kick();
    }

    /// Commands whose I/O is in the engine.
    pub fn in_flight(&self) -> usize {
        self.inflight
    }

    /// Serves the queue until nothing is in flight and no request is waiting.
    pub fn run(
        &mut self,
        bus: &ScsiBus,
        vring: &impl Vring,
        mem: &MemGuard,
        event_idx: bool,
    ) -> Result<(), QueueError> {
        let served = self.serve(bus, vring, mem, event_idx);
        // Answers collected before an error still reach the guest (the ring may be stopped
        // before the next call).
        let flushed = self
            .used
            .flush(vring, mem, event_idx, self.tracking.queue());
        served.and(flushed.map(|_| ()))
    }

    fn serve(
        &mut self,
        bus: &ScsiBus,
        vring: &impl Vring,
        mem: &MemGuard,
        event_idx: bool,
    ) -> Result<(), QueueError> {
        // Once the kick is seen readable it stays so until this call returns to the event loop
        // (which consumes it): watching it again with a level-triggered engine would spin, so
        // new requests are then picked up at every completion and by the event loop's next
        // call. An edge-triggered engine (io_uring) keeps watching: requests published while
        // the I/O in flight is slow must not wait for it.
        let mut watch_kick = true;
        self.ring_stopped = false;
        self.sync_fixed_files(bus);
        if self.register_buffers {
            self.track_memory(bus, vring, mem)?;
        }
        self.tracking.start(vring)?;
        if let Some(since) = self.idle_since {
            // The guest's request came this long after the queue went idle (epoll and a kick).
            // A wake-up without one (a kick the spin already served) says nothing: the wait
            // goes on until a request is really there.
            if has_avail(vring, mem) {
                self.idle_since = None;
                self.poller.requested(since.elapsed());
            }
        }
        loop {
            if event_idx {
                vring.disable_notification()?;
            }
            self.sync_fixed_files(bus);
            // The pass's last I/O (if queued) is submitted with the wait or before the spin.
            self.pop_and_start(bus, vring, mem, event_idx)?;
            self.reap(bus, vring)?;
            // The pass's answers: one used index store, at most one call.
            self.used
                .flush(vring, mem, event_idx, self.tracking.queue())?;
            if self.inflight == 0 {
                // A stopped ring takes nothing new: what was in flight has completed. Nor does a
                // queue whose slots are all held (enospc=hold): its retry timer brings it back.
                if self.ring_stopped || self.free.is_empty() {
                    return Ok(());
                }
                // Resubmissions beyond the free slots go before any return to the event loop
                // (the guest will not kick for them).
                if !self.tracking.resubmit.is_empty() {
                    continue;
                }
                // Idle: spin a moment for the guest's next request (notifications still off
                // with EVENT_IDX, so it need not kick), then back to the event loop unless a
                // request raced with re-enabling.
                let start = self.poller.adaptive().then(Instant::now);
                let window = self.poller.request_window();
                if self.spin(vring, mem, window, true, || false) != Spun::Nothing {
                    // Measured from when the queue first went idle, if a wake-up without a
                    // request came in between.
                    if let Some(start) = self.idle_since.take().or(start) {
                        self.poller.requested(start.elapsed());
                    }
                    continue;
                }
                if !event_idx || !vring.enable_notification()? {
                    if self.idle_since.is_none() {
                        self.idle_since = start;
                    }
                    return Ok(());
                }
                continue;
            }
            let start = self.poller.adaptive().then(Instant::now);
            let window = self.poller.completion_window();
            if !window.is_zero() {
                self.submit()?;
            }
            match self.spin(vring, mem, window, true, || false) {
                Spun::Completion => {
                    if let Some(start) = start {
                        self.poller.completed(start.elapsed());
                    }
                    continue;
                }
                Spun::Request => continue,
                Spun::Nothing => {}
            }
            // Sleep until an I/O completes or, if a slot is free, the guest kicks.
            // A stopped ring (GET_VRING_BASE) only waits for what is in flight: its avail
            // entries would make the checks below go round without ever sleeping.
            let kick = if self.free.is_empty() || !watch_kick || self.ring_stopped {
                None
            } else {
                // Kicks so far announced requests this pass has taken (or the check below
                // finds); a later one wakes the wait.
                self.engine.forget_seen_kicks();
                if event_idx && vring.enable_notification()? {
                    continue;
                }
                if !event_idx && has_avail(vring, mem) {
                    continue;
                }
                kick_fd(vring)
            };
            // Every engine's wait submits what is queued first.
            self.unsubmitted = 0;
            let kicked = self.engine.wait(kick).map_err(QueueError::Engine)?;
            if kicked && !self.engine.kick_edges() {
                watch_kick = false;
            }
            if let (false, Some(start)) = (kicked, start) {
                self.poller.completed(start.elapsed());
            }
        }
    }

    /// Brings the engine's registered files up to the bus's fixed-file table when it changed
    /// since the last look (one atomic load when nothing changed): LUNs added at run time are
    /// served by the engine, and a removed LUN's file is really closed once its last command
    /// completed. (The kernel keeps the file for I/O still in flight on it.)
    pub fn sync_fixed_files(&mut self, bus: &ScsiBus) {
        let generation = bus.generation();
        if generation == self.bus_generation {
            return;
        }
        self.bus_generation = generation;
        if let Err(e) = self.engine.sync_fixed_files(&bus.fixed_files()) {
            warn!(
                "request queue {}: cannot update its io_uring's files (LUNs added or removed): \
                 {e}",
                self.queue
            );
        }
    }

    /// Registers the guest memory table with the engine when it is not the one registered
    /// (first use, or the front-end changed it), after the I/O in flight has completed. On
    /// failure (RLIMIT_MEMLOCK, an engine without the notion) it says why once and stops
    /// trying: I/O then pins pages per request, as without the option.
    fn track_memory(
        &mut self,
        bus: &ScsiBus,
        vring: &impl Vring,
        mem: &MemGuard,
    ) -> Result<(), QueueError> {
        if let Some(old) = &self.registered {
            if std::ptr::eq(&**old, &**mem) {
                return Ok(());
            }
        }
        // Completed I/O is answered (and signalled) by `drain`.
        self.drain(bus, vring, mem)?;
        let regions: Vec<(*mut u8, usize)> = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(MemoryRegionAddress(0)).ok()?;
                Some((host, r.len() as usize))
            })
            .collect();
        match self.engine.register_memory(&regions) {
            Ok(bytes) => {
                info!(
                    "request queue {}: {} MiB of guest memory registered with the {} engine",
                    self.queue,
                    bytes >> 20,
                    self.engine.name()
                );
                self.registered = Some(mem.clone());
            }
            Err(e) => {
                warn!(
                    "request queue {}: cannot register guest memory ({e}); I/O pins pages per \
                     request instead",
                    self.queue
                );
                self.register_buffers = false;
                self.registered = None;
            }
        }
        Ok(())
    }

    /// Spins up to `window` for a completion (of the engine, or `answered`: a passthrough
    /// command's answer) or, when `watch_avail` and a slot is free, a new request.
    fn spin(
        &mut self,
        vring: &impl Vring,
        mem: &MemGuard,
        window: Duration,
        watch_avail: bool,
        mut answered: impl FnMut() -> bool,
    ) -> Spun {
        // Not on a CPU another task wanted since the last spin (see `virtio::poll`).
        if window.is_zero() || self.poller.switched_out() {
            return Spun::Nothing;
        }
        let mut last = Instant::now();
        let deadline = last + window;
        loop {
            if (self.inflight > 0 && self.engine.ready()) || answered() {
                return Spun::Completion;
            }
            // A stopped ring takes nothing new: its avail entries are no reason to go round.
            if watch_avail && !self.free.is_empty() && !self.ring_stopped && has_avail(vring, mem) {
                return Spun::Request;
            }
            if last >= deadline {
                return Spun::Nothing;
            }
            // Give the CPU to any thread waiting for it (sched_yield returns at once when none
            // is): on a loaded host a spinning queue thread otherwise holds the CPU that the
            // thread about to submit the next request, or the vCPU, needs. With a plain spin,
            // QD1 fell from 7,500 to 125-460 IOPS here under load (docs/benchmarks.md).
            std::thread::yield_now();
            // A turn this long means another thread had the CPU meanwhile (in the yield, or by
            // preempting the spin anywhere in the turn).
            let now = Instant::now();
            let turn = now.saturating_duration_since(last);
            last = now;
            if turn >= OFF_CPU_STRIKE && self.poller.adaptive() {
                // Another thread had this CPU meanwhile: spinning on may take it from whoever
                // produces the next event. Sleep; a few of these soon after one another pause
                // polling (`virtio::poll`).
                self.poller.preempted();
                return Spun::Nothing;
            }
        }
    }

    /// Pops as many chains as there are free slots and starts them; true when some were
    /// answered at once (used-ring entries were added).
    ///
    /// Commands for passthrough LUs (iSCSI) are sent to their LU as they are popped; every
    /// answer already in is published, in any order, else the thread sleeps until an answer
    /// (its answer eventfd, written by the LUN threads) or an engine completion comes, and
    /// publishes that (the others stay outstanding at the target meanwhile); answers are
    /// published (and the guest notified) at once, and requests the guest added meanwhile are
    /// popped and sent before the next wait, so the guest's queue depth keeps reaching the
    /// target (at most [`PASSTHROUGH_ROUND`] commands per call, then the event loop gets its
    /// turn).
    fn pop_and_start(
        &mut self,
        bus: &ScsiBus,
        vring: &impl Vring,
        mem: &MemGuard,
        event_idx: bool,
    ) -> Result<bool, QueueError> {
        let mut passthrough = VecDeque::new();
        let mut popped = 0usize;
        let mut used_any = self.pop_some(bus, vring, mem, &mut passthrough, &mut popped)?;
        if !passthrough.is_empty() && self.answer_wake.is_none() && !self.answer_wake_failed {
            // The commands popped so far do not write it; later ones do.
            match crate::block::iscsi::answer_wake() {
                Ok(w) => self.answer_wake = Some(w),
                Err(e) => {
                    warn!(
                        "request queue {}: no answer eventfd for iSCSI commands ({e}); each \
                         waits for the oldest answer",
                        self.queue
                    );
                    self.answer_wake_failed = true;
                }
            }
        }
        while !passthrough.is_empty() {
            if self.unsubmitted > 0 {
                // The engine's I/O popped with them runs meanwhile.
                self.submit()?;
            }
            // Every command whose answer is in, in any order; if none is, wait for the oldest.
            let mut answered = false;
            let mut i = 0;
            while i < passthrough.len() {
                if passthrough[i].1.is_ready() {
                    if let Some((head, p)) = passthrough.remove(i) {
                        self.used.push(head, p.finish());
                        answered = true;
                    }
                } else {
                    i += 1;
                }
            }
            if !answered {
                let wake = self
                    .answer_wake
                    .clone()
                    .filter(|_| passthrough.iter().all(|(_, p)| p.wakes()));
                if let Some(wake) = wake {
                    // New requests end the wait too, when more may be taken: with
                    // notifications on (EVENT_IDX) and none that raced with turning them on.
                    let take_more =
                        popped < PASSTHROUGH_ROUND && !self.ring_stopped && !self.free.is_empty();
                    let mut kick = None;
                    if take_more {
                        let more = if event_idx {
                            vring.enable_notification()?
                        } else {
                            has_avail(vring, mem)
                        };
                        if !more {
                            kick = kick_fd(vring);
                        }
                    }
                    // Sleep until an answer, an engine completion or a request is in; publish
                    // what the engine completed and take the new requests, then go round for
                    // the answers.
                    if !take_more || kick.is_some() {
                        // Nothing stays collected across a sleep ([`used`]).
                        used_any |=
                            self.used
                                .flush(vring, mem, event_idx, self.tracking.queue())?;
                        self.await_answers(vring, mem, &wake, kick, &mut passthrough)?;
                    }
                    if event_idx && take_more {
                        vring.disable_notification()?;
                    }
                    self.reap(bus, vring)?;
                    if take_more {
                        self.pop_some(bus, vring, mem, &mut passthrough, &mut popped)?;
                    }
                    used_any |= self
                        .used
                        .flush(vring, mem, event_idx, self.tracking.queue())?;
                    continue;
                }
                if let Some((head, p)) = passthrough.pop_front() {
                    self.used.push(head, p.finish());
                }
            }
            used_any = true;
            self.used
                .flush(vring, mem, event_idx, self.tracking.queue())?;
            if popped < PASSTHROUGH_ROUND && !self.ring_stopped {
                self.pop_some(bus, vring, mem, &mut passthrough, &mut popped)?;
            }
        }
        Ok(used_any)
    }

    /// Waits for an answer to one of the `passthrough` commands, an engine completion or, with
    /// a `kick` to watch, a new request: spins for them first as long as adaptive polling
    /// says (the completion window of [`Poller`], which the answers' latency adjusts, and not
    /// on a contended CPU), then sleeps ([`QueueWorker::wait_for_answers`]).
    ///
    /// At QD1 a sleep costs each answer the LUN thread's eventfd write, a wake-up and an
    /// eventfd read here, on top of the target's round trip: polling catches the answer
    /// without them ([`AnswerWake`]: the LUN thread writes the eventfd only while this thread
    /// sleeps). A lone command this thread sent itself is also read here, from its connection
    /// (`PassthroughReply::read_input`), which saves the LUN thread's wake-up as well. Nothing
    /// spins without a command outstanding, nor with more than one.
    fn await_answers(
        &mut self,
        vring: &impl Vring,
        mem: &MemGuard,
        wake: &AnswerWake,
        kick: Option<RawFd>,
        passthrough: &mut VecDeque<(u16, PassthroughReply<'_>)>,
    ) -> Result<(), QueueError> {
        let start = self.poller.adaptive().then(Instant::now);
        // Only for a lone command (QD1): with more outstanding, the wake-up is shared by the
        // answers it brings, and the CPU a spin would take is the guest's (its vCPUs are busy
        // submitting) or the LUN thread's.
        let window = if passthrough.len() == 1 {
            self.poller.answer_window()
        } else {
            Duration::ZERO
        };
        let mut answered = || {
            passthrough
                .iter_mut()
                .any(|(_, p)| p.is_ready() || (p.read_input() && p.is_ready()))
        };
        match self.spin(vring, mem, window, kick.is_some(), &mut answered) {
            Spun::Completion => {
                if let Some(start) = start {
                    self.poller.answered(start.elapsed());
                }
                return Ok(());
            }
            Spun::Request => return Ok(()),
            Spun::Nothing => {}
        }
        self.wait_for_answers(wake, kick, passthrough)?;
        // A wake-up for a new request alone says nothing about how long answers take.
        if let Some(start) = start {
            if passthrough.iter_mut().any(|(_, p)| p.is_ready()) {
                self.poller.answered(start.elapsed());
            }
        }
        Ok(())
    }

    /// Sleeps until `wake` (an answer to one of the `passthrough` commands), the `kick`
    /// eventfd (a new request; consumed here, since this call takes the requests) or, with
    /// I/O in flight, the engine's completion fd is readable. Engines whose completions reach
    /// their fd only when this thread enters the kernel (io_uring with COOP_TASKRUN) are
    /// looked at every millisecond meanwhile. A lone command's connection is watched too, and
    /// read here when it says something: its answer then needs no LUN thread (at QD1 the
    /// whole wait is for it; with more commands the LUN thread reads, for all of them).
    fn wait_for_answers(
        &mut self,
        wake: &AnswerWake,
        kick: Option<RawFd>,
        passthrough: &mut VecDeque<(u16, PassthroughReply<'_>)>,
    ) -> Result<(), QueueError> {
        // From here on every answer writes the eventfd; one that came before may not have:
        // looked for once more before sleeping (no lost wake-up, see [`AnswerWake`]).
        wake.prepare_sleep();
        if passthrough.iter_mut().any(|(_, p)| p.is_ready()) {
            wake.awake(false);
            return Ok(());
        }
        let engine_fd = if self.inflight > 0 {
            self.engine.completion_fd()
        } else {
            None
        };
        let input_fd = match passthrough.len() {
            1 => passthrough[0].1.input_fd(),
            _ => {
                // A command alone on its connection may have told its LUN thread to leave the
                // socket to this thread (`block::iscsi::Ticket::read_input`): not watched
                // here now, so the LUN thread must read it again.
                for (_, p) in passthrough.iter_mut() {
                    p.stop_watching();
                }
                None
            }
        };
        let mut fds = [
            libc::pollfd {
                fd: wake.fd().as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // A negative fd is ignored by poll.
                fd: engine_fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: kick.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                // The command's socket. Should the LUN thread drop the connection meanwhile,
                // the number may wake this poll for nothing (POLLNVAL, or another file's by
                // then): the read below finds it is not the session's socket any more, and
                // the ticket stops giving it out; the answer comes through `wake`.
                fd: input_fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let timeout = if self.inflight > 0 { 1 } else { -1 };
        loop {
            // SAFETY: four valid pollfds for the duration of the call.
            let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if r >= 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                wake.awake(false);
                return Err(QueueError::Engine(e));
            }
        }
        wake.awake(fds[0].revents != 0);
        if fds[3].revents != 0 {
            // Read here unless the LUN thread holds the lock (then it is reading it, and
            // answers through the eventfd).
            if let Some((_, p)) = passthrough.front_mut() {
                p.read_input();
            }
        }
        if let (Some(fd), true) = (kick, fds[2].revents & libc::POLLIN != 0) {
            // The requests it announces are taken next; left readable, it would end every
            // later wait at once. (The kick eventfd is non-blocking.)
            let mut counter = [0u8; 8];
            // SAFETY: reads at most 8 bytes into our own buffer from the kick eventfd, which
            // the vring owns and keeps open while this thread serves it.
            let _ = unsafe { libc::read(fd, counter.as_mut_ptr().cast(), counter.len()) };
        }
        if self.inflight > 0 {
            // Moves finished I/O to the completion queue (io_uring with COOP_TASKRUN) for the
            // caller's reap.
            let _ = self.engine.ready();
        }
        Ok(())
    }

    /// Pops the chains available (up to the free slots) and starts them; passthrough commands
    /// join `passthrough` to be finished by the caller. True when used-ring entries were added.
    fn pop_some<'m>(
        &mut self,
        bus: &ScsiBus,
        vring: &impl Vring,
        mem: &'m MemGuard,
        passthrough: &mut VecDeque<(u16, PassthroughReply<'m>)>,
        popped: &mut usize,
    ) -> Result<bool, QueueError> {
        if self.free.is_empty() {
            return Ok(false);
        }
        let mut used_any = false;
        if !self.tracking.resubmit.is_empty() {
            if !vring.get_ref().get_queue().ready() {
                self.ring_stopped = true;
                return Ok(false);
            }
            // Started before anything is popped, and on their own: a bad avail index (the
            // front-end's) must not keep them from being answered.
            for _ in 0..self.free.len() {
                let Some(chain) = self.tracking.next_resubmit(vring, mem) else {
                    break;
                };
                self.chains.push(chain);
            }
            used_any |= self.start_chains(bus, vring, mem, passthrough, popped)?;
            if self.free.is_empty() || !self.tracking.resubmit.is_empty() {
                return Ok(used_any);
            }
        }
        let room = self.free.len();
        {
            let mut state = vring.get_mut();
            match state.get_queue_mut().iter(mem.clone()) {
                Ok(iter) => {
                    for chain in iter.take(room) {
                        self.tracking.popped(chain.head_index());
                        self.chains.push(Chain::Popped(chain));
                    }
                }
                // GET_VRING_BASE stopped the ring: take nothing new, but let what is in flight
                // complete (`stop_vring` waits for it before the base is reported).
                Err(virtio_queue::Error::QueueNotReady) => {
                    self.ring_stopped = true;
                    return Ok(used_any);
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(self.start_chains(bus, vring, mem, passthrough, popped)? || used_any)
    }

    /// Starts every chain in `self.chains` (passthrough commands join `passthrough`); true
    /// when some were answered at once.
    fn start_chains<'m>(
        &mut self,
        bus: &ScsiBus,
        vring: &impl Vring,
        mem: &'m MemGuard,
        passthrough: &mut VecDeque<(u16, PassthroughReply<'m>)>,
        popped: &mut usize,
    ) -> Result<bool, QueueError> {
        *popped += self.chains.len();
        let mut used_any = false;
        let mut drain_error = None;
        let mut chains = std::mem::take(&mut self.chains);
        // One clock reading for the chains popped together: they were all waiting by now.
        let arrived = Instant::now();
        let count = chains.len();
        // Walked in place (a chain is a few words of iterator state plus its memory guard):
        // moving each out of the vector was a copy per request. Dropped together below.
        for (i, chain) in chains.iter_mut().enumerate() {
            self.last_of_pass = i + 1 == count;
            let head = chain.head_index();
            // Parsed in place and only borrowed from here on (see `parse_cmd_chain`).
            let mut req = CmdRequest::new();
            let mut started = match parse_cmd_chain(mem, chain, &mut req) {
                Ok(()) => start_command(bus, &req, self.inflight > 0, arrived),
                Err(RequestError::Chain(e)) => {
                    warn!("descriptor chain {head}: {e}; returned unanswered");
                    Started::Done(0)
                }
                Err(e) => Started::Done(answer_unparsed(&req, &e)),
            };
            if let Started::DrainFirst = started {
                // The command would block on a LU's write gate, which our own writes in flight
                // hold: only this thread can complete them. Then it may wait.
                match self.drain(bus, vring, mem) {
                    Ok(used) => used_any |= used,
                    Err(e) => drain_error = Some(e),
                }
                started = start_command(bus, &req, false, arrived);
            }
            let used = match started {
                Started::Done(used) => Some(used),
                Started::Io(io) => self.start_io(bus, head, mem, io),
                Started::Passthrough(p) => {
                    passthrough.push_back((head, p));
                    None
                }
                // Not answered to a caller without I/O in flight.
                Started::DrainFirst => Some(0),
            };
            if let Some(used) = used {
                self.used.push(head, used);
                used_any = true;
            }
        }
        chains.clear();
        self.chains = chains;
        match drain_error {
            Some(e) => Err(e),
            None => Ok(used_any),
        }
    }

    /// Completes every I/O in flight (waiting for the engine); true when used-ring entries
    /// were added.
    fn drain(
        &mut self,
        bus: &ScsiBus,
        vring: &impl Vring,
        mem: &MemGuard,
    ) -> Result<bool, QueueError> {
        if self.inflight == 0 {
            return Ok(false);
        }
        self.submit()?;
        let mut used_any = false;
        loop {
            used_any |= self.reap(bus, vring)?;
            if self.inflight == 0 {
                break;
            }
            self.engine.wait(None).map_err(QueueError::Engine)?;
        }
        // The guest may be waiting for these (and the pass's answers before them) while the
        // command that drained blocks: published and signalled now.
        if self.used.publish(vring, mem, self.tracking.queue())? {
            self.used.signal(vring)?;
        }
        Ok(used_any)
    }

    /// Hands a command's I/O to the engine; runs it synchronously (and returns the used length)
    /// when the engine cannot take it.
    ///
    /// A write's gate registration (`io.plan.write`) moves into the slot once the engine took
    /// the I/O; otherwise it is dropped with `io` after the synchronous run.
    fn start_io(
        &mut self,
        bus: &ScsiBus,
        head: u16,
        mem: &MemGuard,
        mut io: PendingIo<'_>,
    ) -> Option<u32> {
        // enospc=hold: behind the LU's held writes, or held itself when it finds no room.
        if self.hold_behind(bus, head, mem, &mut io) || self.queue_io(head, mem, &mut io) {
            None
        } else {
            // The engine cannot take it: the one synchronous fallback.
            let result = bus.run_sync(&io.plan);
            if self.hold_failed(bus, head, mem, &mut io, &result) {
                return None;
            }
            Some(io.finish(bus, result))
        }
    }

    /// Hands a command's I/O to the engine; false when the engine cannot take it (no file
    /// descriptor, too many segments, a file or an operation it refuses, no room).
    fn queue_io(&mut self, head: u16, mem: &MemGuard, io: &mut PendingIo<'_>) -> bool {
        let (Some(fd), Some(&index)) = (io.plan.fd, self.free.last()) else {
            return false;
        };
        if io.plan.bufs.segment_count() > MAX_IOVECS || !self.engine.accepts(fd, io.plan.fixed) {
            return false;
        }
        let slot = &mut self.slots[index as usize];
        slot.fill(head, mem, io);
        let op = Op {
            kind: slot.meta.kind,
            fd,
            fixed: io.plan.fixed,
            iov: slot.iov.as_ptr(),
            iovcnt: slot.iov.len(),
            offset: slot.offset,
            user_data: u64::from(index),
        };
        let mut queued = self.engine.push(&op);
        if !queued && self.submit().is_ok() {
            queued = self.engine.push(&op);
        }
        if !queued {
            self.slots[index as usize].release();
            return false;
        }
        self.slots[index as usize].write = io.plan.write.take();
        self.slots[index as usize].unit = io.plan.unit.take();
        self.free.pop();
        self.inflight += 1;
        // Let the device start on this one while the rest of the ring is parsed: holding a
        // whole pass back costs more latency than the system call saves (see
        // docs/benchmarks.md).
        self.unsubmitted += 1;
        if self.unsubmitted >= self.submit_batch && !self.last_of_pass {
            // An error here shows again at the end-of-pass submit, which reports it.
            let _ = self.submit();
        }
        true
    }

    /// Hands everything pushed so far to the kernel (or the pool).
    fn submit(&mut self) -> Result<(), QueueError> {
        self.unsubmitted = 0;
        self.engine.submit().map_err(QueueError::Engine)
    }

    /// Completes every finished I/O into the used batch; true when answers were added.
    fn reap(&mut self, bus: &ScsiBus, _vring: &impl Vring) -> Result<bool, QueueError> {
        self.engine.reap(&mut self.done);
        if self.done.is_empty() {
            return Ok(false);
        }
        let mut done = std::mem::take(&mut self.done);
        // One clock reading for the completions reaped together.
        let now = Instant::now();
        for &(user_data, res) in &done {
            let index = user_data as usize;
            let Some(slot) = self.slots.get_mut(index).filter(|s| s.mem.is_some()) else {
                warn!("completion for unknown request slot {index}");
                continue;
            };
            let result = io_result(slot, res);
            if self.held.hold_failed(bus, index as u32, slot, &result) {
                // Kept (enospc=hold): still not answered, but no longer in the engine.
                self.inflight -= 1;
                continue;
            }
            let out = bus.complete_at(slot.unit.as_deref(), slot.meta, result, now);
            let used = slot
                .reply
                .respond_with(&out, |header| write_raw(&slot.response, header));
            let head = slot.head;
            slot.release();
            self.free.push(index as u32);
            self.inflight -= 1;
            // Every completion is accounted for (slot freed, in flight counted down) even if
            // the used ring turns out not to take it when the batch is published.
            self.used.push(head, used);
        }
        done.clear();
        self.done = done;
        Ok(true)
    }

    /// Where the teardown of this worker stops waiting for its I/O (see [`TEARDOWN_DRAIN`]):
    /// the disconnect gives every queue the same deadline, so the whole teardown is bounded.
    pub fn set_teardown_deadline(&mut self, deadline: Instant) {
        self.teardown_deadline = Some(deadline);
    }
}

/// What a spin before sleeping saw.
#[derive(Debug, PartialEq, Eq)]
enum Spun {
    Completion,
    Request,
    Nothing,
}

/// How long the disconnect waits for the queues' I/O in flight: the listener must be ready for
/// the next front-end soon, whatever the storage or the last front-end did.
pub const TEARDOWN_DRAIN: Duration = Duration::from_millis(500);

impl Drop for QueueWorker {
    fn drop(&mut self) {
        self.abandon_in_flight();
    }
}

/// Turns an engine result into the I/O's outcome, finishing a short transfer synchronously.
fn io_result(slot: &mut Slot, res: i32) -> io::Result<()> {
    if let IoKind::Deallocate { bytes } = slot.meta.kind {
        return match res {
            // No holes on this file system: zero the range instead, as the synchronous path
            // does, so that it still reads back zero; that error, if any, is the command's.
            r if r == -libc::EOPNOTSUPP => {
                crate::block::file::zero_range(slot.fd, slot.offset, bytes)
            }
            r if r < 0 => Err(io::Error::from_raw_os_error(-r)),
            _ => Ok(()),
        };
    }
    if res < 0 {
        return Err(io::Error::from_raw_os_error(-res));
    }
    let done = res as usize;
    if matches!(slot.meta.kind, IoKind::Flush) || done >= slot.meta.len {
        return Ok(());
    }
    finish_short(slot, done)
}

/// Runs the rest of a short `readv`/`writev` with blocking calls (rare: end of a file that
/// shrank, signals, some file systems).
fn finish_short(slot: &mut Slot, mut done: usize) -> io::Result<()> {
    let mut first = 0;
    loop {
        // Skip what has been transferred.
        let mut skip = done;
        let mut iov: Vec<libc::iovec> = Vec::with_capacity(slot.iov.len());
        for v in &slot.iov {
            if skip >= v.iov_len {
                skip -= v.iov_len;
                continue;
            }
            iov.push(libc::iovec {
                // SAFETY: `skip < iov_len`, so the pointer stays inside the segment.
                iov_base: unsafe { v.iov_base.cast::<u8>().add(skip) }.cast(),
                iov_len: v.iov_len - skip,
            });
            skip = 0;
        }
        if iov.is_empty() {
            return Ok(());
        }
        let offset = (slot.offset + done as u64) as libc::off_t;
        // SAFETY: the iovecs describe guest memory kept mapped by the slot's guard.
        let ret = unsafe {
            match slot.meta.kind {
                IoKind::Read => libc::preadv(slot.fd, iov.as_ptr(), iov.len() as i32, offset),
                IoKind::Write { fua } => libc::pwritev2(
                    slot.fd,
                    iov.as_ptr(),
                    iov.len() as i32,
                    offset,
                    if fua { libc::RWF_DSYNC } else { 0 },
                ),
                IoKind::Flush | IoKind::Deallocate { .. } => return Ok(()),
            }
        };
        match ret {
            0 => {
                let eof = io::ErrorKind::UnexpectedEof.into();
                return Err(partial_failure(done as u64, eof));
            }
            n if n < 0 => {
                let e = io::Error::last_os_error();
                if e.kind() != io::ErrorKind::Interrupted {
                    return Err(partial_failure(done as u64, e));
                }
            }
            n => done += n as usize,
        }
        first += 1;
        if first > 1_000_000 {
            return Err(io::ErrorKind::WriteZero.into());
        }
    }
}

/// Copies the response header into its guest-memory segments.
fn write_raw(segments: &[(*mut u8, usize)], mut bytes: &[u8]) {
    for &(ptr, len) in segments {
        if bytes.is_empty() {
            break;
        }
        let n = len.min(bytes.len());
        // SAFETY: the segment was resolved from a descriptor by `split_chain` and its guest
        // memory is kept mapped by the slot's guard while this runs.
        let slice = unsafe { VolatileSlice::new(ptr, len) };
        slice.copy_from(&bytes[..n]);
        bytes = &bytes[n..];
    }
}

fn kick_fd(vring: &impl Vring) -> Option<RawFd> {
    vring.get_ref().get_kick().as_ref().map(|k| k.as_raw_fd())
}

/// Whether the guest has made chains available that we have not popped.
fn has_avail(vring: &impl Vring, mem: &MemGuard) -> bool {
    let state = vring.get_ref();
    let queue = state.get_queue();
    queue
        .avail_idx(&**mem, std::sync::atomic::Ordering::Acquire)
        .map(|idx| idx.0 != queue.next_avail())
        .unwrap_or(false)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it and
    // sched_setaffinity reads it for the calling thread (pid 0).
    let ret = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if ret != 0 {
        warn!(
            "cannot pin request queue thread to CPU {cpu}: {}",
            io::Error::last_os_error()
        );
    }
}
