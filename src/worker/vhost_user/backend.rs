//! The virtio-scsi device behind the vhost-user protocol: feature negotiation, the config space,
//! the virtqueue loops, guest memory and the inflight region. It outlives connections; the
//! request handler ([`super::handler`]) and the queue threads ([`super::event_loop`]) of each
//! connection call into it.

use std::{
    fs::File,
    io,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, RwLock,
    },
};

use log::{debug, info, warn};
use vhost::vhost_user::message::{
    VhostUserInflight, VhostUserProtocolFeatures, VhostUserVirtioFeatures,
};
use vhost_user_backend::VringT;
use virtio_bindings::{
    virtio_config::VIRTIO_F_VERSION_1,
    virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC},
    virtio_scsi::{VIRTIO_SCSI_F_CHANGE, VIRTIO_SCSI_F_HOTPLUG},
};
use virtio_queue::QueueOwnedT;
use vm_memory::{GuestAddressSpace, GuestMemoryAtomic, GuestMemoryLoadGuard, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;

use crate::{
    block::engine::{uring::UringEngine, AioMode, IoConfig},
    scsi::ScsiBus,
    virtio::inflight::InflightQueue,
    virtio::{
        config_space::{config_space, read_config, CONFIG_SPACE_SIZE},
        control::handle_control,
        events::{Event, EventQueue},
        queue::{
            publish_used, Chain, QueueError, QueueWorker, RetryTimer, Tracking, TEARDOWN_DRAIN,
        },
        request::{split_chain, SplitChain},
    },
    worker::inflight::{InflightMemfd, InflightRegion, QueueShape},
};

use super::{event_loop::EventLoop, ScsiVring};

/// Guest memory as the vrings see it (no dirty-page bitmap: dirty logging is not offered).
pub type GuestMemory = GuestMemoryAtomic<GuestMemoryMmap>;
type MemGuard = GuestMemoryLoadGuard<GuestMemoryMmap>;

const CONTROL_QUEUE: usize = 0;
const EVENT_QUEUE: usize = 1;
/// Number of fixed (non-request) queues before the first request queue.
const FIXED_QUEUES: usize = 2;

/// Errors that stop a queue thread's current batch (the guest's own bad requests never do).
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("event {0:?} on a queue is not an input event")]
    UnexpectedEvent(EventSet),
    #[error("event for unknown queue {0} on thread {1}")]
    UnknownQueue(u16, usize),
    #[error("queue used before the front-end sent a memory table")]
    NoMemory,
    #[error("virtqueue error: {0}")]
    Queue(virtio_queue::Error),
    #[error("cannot notify the guest: {0}")]
    Notify(io::Error),
    #[error("request queue: {0}")]
    Engine(QueueError),
}

impl From<BackendError> for io::Error {
    fn from(e: BackendError) -> Self {
        io::Error::other(e)
    }
}

/// The virtio-scsi device served over one vhost-user connection at a time.
pub struct ScsiBackend {
    bus: Arc<ScsiBus>,
    num_request_queues: u16,
    queue_size: u16,
    config: [u8; CONFIG_SPACE_SIZE],
    mem: RwLock<Option<GuestMemory>>,
    event_idx: AtomicBool,
    /// Data-path engine and tuning (`--aio`, `--poll-us` …).
    io: IoConfig,
    /// Per request queue: the asynchronous worker, created on its thread at first use and
    /// dropped between connections (queue threads are new for every connection). Locked for
    /// as long as the queue's thread serves a batch, whatever the engine.
    workers: Vec<Mutex<Option<QueueWorker>>>,
    /// Per request queue: its io_uring, made at start-up before the seccomp filters
    /// (`--aio=io-uring`), while no queue worker holds it. A queue worker takes it for its
    /// connection and [`ScsiBackend::disconnect`] puts it back.
    rings: Vec<Mutex<Option<UringEngine>>>,
    /// The control queue's inflight tracking; locked while its batch runs (see `stop_vring`).
    control: Mutex<Tracking>,
    /// The memfd handed out with GET_INFLIGHT_FD (made at start-up); without it the
    /// INFLIGHT_SHMFD protocol feature is not offered.
    inflight_memfd: Option<InflightMemfd>,
    /// The region the front-end handed over with SET_INFLIGHT_FD, for this connection.
    inflight: Mutex<InflightState>,
    /// `inflight`'s generation, read by the queues before every batch without the lock.
    inflight_generation: AtomicU64,
    /// `--allow-unsealed-memory`.
    allow_unsealed_memory: bool,
    /// Every memory table this connection installed that somebody may still use: the current
    /// one and replaced ones a queue thread still holds (I/O in flight). Keeping a reference
    /// here means a queue thread never drops the last one: unmapping a table and closing its
    /// fds is not in the data path's seccomp role. Released on the protocol thread (at the next
    /// table change) and on the main thread (at disconnect).
    tables: Mutex<Vec<Arc<GuestMemoryMmap>>>,
    /// Device events (LUNs added, removed, resized) waiting for the guest's event buffers.
    events: EventQueue,
    /// This connection's event queue, once the guest posted buffers on it: events raised by
    /// runtime management are delivered from the raising thread.
    event_vring: Mutex<Option<ScsiVring>>,
    /// Per request queue: its retry timer (`enospc=hold`: held commands are retried when it
    /// fires), registered in the queue thread's epoll for each connection
    /// ([`ScsiBackend::register_retry_timers`]). `None` when they could not be made.
    retry_timers: Option<Arc<[RetryTimer]>>,
    /// Per request queue: its vring for this connection, kept so that a ring stop can answer
    /// the commands the queue holds ([`QueueWorker::give_up_held`]).
    vrings: Vec<Mutex<Option<ScsiVring>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ScsiBackend {
    pub fn new(bus: Arc<ScsiBus>, num_request_queues: u16, queue_size: u16) -> Self {
        Self {
            bus,
            num_request_queues,
            queue_size,
            config: config_space(num_request_queues, queue_size),
            mem: RwLock::new(None),
            event_idx: AtomicBool::new(false),
            io: IoConfig::default(),
            workers: (0..num_request_queues).map(|_| Mutex::new(None)).collect(),
            rings: Vec::new(),
            control: Mutex::new(Tracking::default()),
            inflight_memfd: None,
            inflight: Mutex::new(InflightState::default()),
            inflight_generation: AtomicU64::new(0),
            tables: Mutex::new(Vec::new()),
            allow_unsealed_memory: false,
            events: EventQueue::new(),
            event_vring: Mutex::new(None),
            retry_timers: (0..num_request_queues)
                .map(|_| RetryTimer::new())
                .collect::<io::Result<Vec<_>>>()
                .map(Arc::from)
                .map_err(|e| {
                    warn!("no retry timers for enospc=hold (retries only at a ring stop): {e}")
                })
                .ok(),
            vrings: (0..num_request_queues).map(|_| Mutex::new(None)).collect(),
        }
    }

    /// Offers inflight I/O tracking (`INFLIGHT_SHMFD`) with `memfd` as the region handed out
    /// ([`super::inflight`]).
    pub fn with_inflight_memfd(mut self, memfd: InflightMemfd) -> Self {
        self.inflight_memfd = Some(memfd);
        self
    }

    /// The device's queue count and largest queue size.
    pub fn queue_shape(&self) -> QueueShape {
        QueueShape {
            num_queues: FIXED_QUEUES as u16 + self.num_request_queues,
            max_queue_size: self.queue_size,
        }
    }

    /// The current region's part for vhost queue `index`, if the current region is newer than
    /// `seen` (the generation a queue's tracking comes from).
    fn inflight_update(&self, index: usize, seen: u64) -> Option<(Option<InflightQueue>, u64)> {
        if self.inflight_generation.load(Ordering::Acquire) == seen {
            return None;
        }
        let state = lock(&self.inflight);
        (state.generation != seen).then(|| {
            (
                state.current.as_ref().and_then(|r| r.queue(index)),
                state.generation,
            )
        })
    }

    /// The epoll event number of request queue `q`'s retry timer: past the numbers
    /// [`EventLoop::register_listener`] reserves for the queues.
    pub(super) fn retry_event(&self, q: usize) -> u64 {
        (FIXED_QUEUES + usize::from(self.num_request_queues) + 1 + q) as u64
    }

    /// Registers each request queue's retry timer in its thread's epoll (`handlers`: the new
    /// connection's, thread 0 serving the control and event queues, thread `1 + q` request
    /// queue `q`).
    pub(super) fn register_retry_timers(&self, handlers: &[Arc<EventLoop>]) {
        let Some(timers) = &self.retry_timers else {
            return;
        };
        for (q, timer) in timers.iter().enumerate() {
            let Some(handler) = handlers.get(1 + q) else {
                continue;
            };
            for fd in timer.fds() {
                if let Err(e) = handler.register_listener(fd, EventSet::IN, self.retry_event(q)) {
                    warn!("request queue {q}: cannot watch its retry timer: {e}");
                }
            }
        }
    }

    /// Retries every command held for lack of space (`enospc=hold`) now, on every queue (the
    /// management interface's "space was freed"); returns at once, the retries run on the
    /// queue threads. Any thread may call it: it only `write`s to eventfds.
    pub fn retry_held(&self) {
        for timer in self.retry_timers.iter().flat_map(|t| t.iter()) {
            timer.fire_now();
        }
    }

    /// Commands held for lack of space (`enospc=hold`) on every queue not serving right now.
    pub fn held(&self) -> usize {
        self.workers
            .iter()
            .filter_map(|w| w.try_lock().ok().and_then(|w| w.as_ref().map(|w| w.held())))
            .sum()
    }

    /// Accepts guest memory that cannot be (or is not) sealed against shrinking
    /// (`--allow-unsealed-memory`; see [`super::guest_memory`]).
    pub fn allow_unsealed_memory(mut self, allow: bool) -> Self {
        self.allow_unsealed_memory = allow;
        self
    }

    /// Selects the data-path engine and its tuning (default: io_uring).
    pub fn with_io_config(mut self, io: IoConfig) -> Self {
        if io.aio == AioMode::Threads {
            if let Err(e) = crate::block::engine::threads::start_pool(io.aio_threads) {
                warn!("cannot start the I/O thread pool: {e}");
            }
        }
        self.io = io;
        self
    }

    /// The request queues' io_uring rings, by queue (made by the caller before its seccomp
    /// filters: no role that runs later may create one). Queues without one use the thread
    /// pool.
    pub fn with_rings(mut self, rings: Vec<UringEngine>) -> Self {
        if self.io.aio == AioMode::IoUring && rings.len() < usize::from(self.num_request_queues) {
            // Started here, on the main thread, rather than by the first queue thread.
            if let Err(e) = crate::block::engine::threads::start_pool(self.io.aio_threads) {
                warn!("cannot start the I/O thread pool: {e}");
            }
        }
        self.rings = rings.into_iter().map(|r| Mutex::new(Some(r))).collect();
        self
    }

    /// Serves request queue `index` with its asynchronous worker, retrying its held commands
    /// first when `retry` (its retry timer fired).
    fn process_request_queue(
        &self,
        vring: &ScsiVring,
        index: usize,
        retry: bool,
    ) -> Result<(), BackendError> {
        let slot = self.workers.get(index).ok_or(BackendError::UnknownQueue(
            (FIXED_QUEUES + index) as u16,
            index + 1,
        ))?;
        let mut worker = slot.lock().unwrap_or_else(|e| e.into_inner());
        if worker.is_none() {
            let ring = self.rings.get(index).and_then(|r| lock(r).take());
            let mut w = QueueWorker::new(&self.io, ring, self.queue_size, index)
                .map_err(|e| BackendError::Engine(QueueError::Engine(e)))?;
            if let Some(timers) = &self.retry_timers {
                w.set_retry_timers(timers.clone(), index);
            }
            *worker = Some(w);
            if let Some(v) = self.vrings.get(index) {
                *lock(v) = Some(vring.clone());
            }
        }
        if let Some(w) = worker.as_mut() {
            if let Some((queue, generation)) =
                self.inflight_update(FIXED_QUEUES + index, w.inflight_generation())
            {
                w.set_inflight(queue, generation);
            }
        }
        let mem = self.memory()?;
        let event_idx = self.event_idx.load(Ordering::Acquire);
        worker
            .as_mut()
            .map_or(Ok(()), |w| {
                w.run_and_retry(&self.bus, vring, &mem, event_idx, retry)
            })
            .map_err(BackendError::Engine)
    }

    pub fn bus(&self) -> &Arc<ScsiBus> {
        &self.bus
    }

    /// Tells the guest about a device event (a LUN added, removed, resized) on the event
    /// queue: now if it has a buffer posted, else when it posts one (bounded backlog, then
    /// EVENTS_MISSED).
    pub fn raise_event(&self, event: Event) {
        self.events.raise(event);
        let vring = lock(&self.event_vring).clone();
        if let Some(vring) = vring {
            self.deliver_events(&vring);
        }
    }

    /// The guest is to be told that events were missed (a restarted worker: the events the
    /// dead one had not delivered are lost, and the LUN set may differ from what the guest
    /// last heard of).
    pub fn report_missed_events(&self) {
        self.events.report_missed();
    }

    /// Events waiting for a guest buffer, and whether some were dropped (diagnostics, tests).
    pub fn pending_events(&self) -> (usize, bool) {
        self.events.pending()
    }

    fn deliver_events(&self, vring: &ScsiVring) {
        let Ok(mem) = self.memory() else {
            return;
        };
        let event_idx = self.event_idx.load(Ordering::Acquire);
        if let Err(e) = self.events.deliver(vring, &mem, event_idx) {
            warn!("event queue: {e}");
        }
    }

    /// Brings every engine's registered files up to the bus's fixed-file table (the files of
    /// LUNs added at run time registered, those of removed LUNs let go of): the rings between
    /// connections and those of idle queues now, busy queues at their next request or
    /// completion (they look on their own).
    pub fn sync_fixed_files(&self) {
        let table = self.bus.fixed_files();
        for ring in &self.rings {
            if let Some(ring) = lock(ring).as_mut() {
                if let Err(e) = ring.sync_files(&table) {
                    warn!("cannot update an io_uring's files (LUNs added or removed): {e}");
                }
            }
        }
        for worker in &self.workers {
            // Held while the queue serves a batch, which then does this itself.
            if let Ok(mut w) = worker.try_lock() {
                if let Some(w) = w.as_mut() {
                    w.sync_fixed_files(&self.bus);
                }
            }
        }
    }

    /// Forgets the previous front-end's memory and closes what its connection left, and takes
    /// the queues' rings back for the next connection's threads (called between connections,
    /// on the main thread, after the connection's [`super::Connection`] was dropped: its queue
    /// threads are joined).
    pub fn disconnect(&self) {
        // One deadline for all queues: the teardown is bounded as a whole.
        let deadline = std::time::Instant::now() + TEARDOWN_DRAIN;
        for (q, worker) in self.workers.iter().enumerate() {
            let Some(mut w) = lock(worker).take() else {
                continue;
            };
            w.set_teardown_deadline(deadline);
            let Some(mut ring) = w.into_ring() else {
                continue;
            };
            match ring.recycle() {
                Ok(()) => {
                    if let Some(slot) = self.rings.get(q) {
                        *lock(slot) = Some(ring);
                    }
                }
                // No new ring can be made in the jail: the queue uses the thread pool.
                Err(e) => warn!("request queue {q}: its io_uring cannot be reused: {e}"),
            }
        }
        *lock(&self.event_vring) = None;
        for v in &self.vrings {
            *lock(v) = None;
        }
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = None;
        lock(&self.tables).clear();
        // The queue workers (and their parts of the region) are gone: unmapped here.
        lock(&self.control).set(None, 0);
        {
            let mut state = lock(&self.inflight);
            state.current = None;
            state.retired.clear();
        }
    }

    fn memory(&self) -> Result<MemGuard, BackendError> {
        self.mem
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|m| m.memory())
            .ok_or(BackendError::NoMemory)
    }

    /// Pops every available chain, handles it and returns it to the guest, re-checking after
    /// re-enabling notifications so that no kick is lost (EVENT_IDX).
    fn process_queue(
        &self,
        vring: &ScsiVring,
        tracking: &mut Tracking,
        mut handle: impl FnMut(SplitChain<'_>) -> u32,
    ) -> Result<(), BackendError> {
        let event_idx = self.event_idx.load(Ordering::Acquire);
        tracking.start(vring).map_err(BackendError::Engine)?;
        loop {
            if event_idx {
                vring.disable_notification().map_err(BackendError::Queue)?;
            }
            let mem = self.memory()?;
            // Resubmitted chains first, on their own: a bad avail index (the front-end's) must
            // not keep them from being answered.
            let mut chains: Vec<Chain> = Vec::new();
            while let Some(chain) = tracking.next_resubmit(vring, &mem) {
                chains.push(chain);
            }
            let mut any = !chains.is_empty();
            if chains.is_empty() {
                match vring.get_mut().get_queue_mut().iter(mem.clone()) {
                    Ok(iter) => {
                        for chain in iter {
                            tracking.popped(chain.head_index());
                            chains.push(Chain::Popped(chain));
                        }
                    }
                    // GET_VRING_BASE stopped the ring while a kick was being handled: nothing
                    // more to take. (An error here would end the queue thread for good.)
                    Err(virtio_queue::Error::QueueNotReady) => return Ok(()),
                    Err(e) => return Err(BackendError::Queue(e)),
                }
                any = !chains.is_empty();
            }
            let resubmitted = chains
                .first()
                .is_some_and(|c| matches!(c, Chain::Resubmitted(_)));
            for chain in chains {
                let head = chain.head_index();
                let used_len = match split_chain(&mem, chain) {
                    Ok(split) => handle(split),
                    Err(e) => {
                        warn!("descriptor chain {head}: {e}; returned unanswered");
                        0
                    }
                };
                publish_used(vring, tracking.queue(), head, used_len)
                    .map_err(BackendError::Queue)?;
            }
            if any && (!event_idx || vring.needs_notification().map_err(BackendError::Queue)?) {
                vring.signal_used_queue().map_err(BackendError::Notify)?;
            }
            // Then the avail ring, in the next pass.
            if resubmitted {
                continue;
            }
            if !event_idx || !vring.enable_notification().map_err(BackendError::Queue)? {
                return Ok(());
            }
        }
    }
}

/// What the request handler ([`super::handler`]) and the queue threads
/// ([`super::event_loop`]) call.
impl ScsiBackend {
    pub(super) fn num_queues(&self) -> usize {
        FIXED_QUEUES + usize::from(self.num_request_queues)
    }

    pub(super) fn max_queue_size(&self) -> usize {
        usize::from(self.queue_size)
    }

    pub(super) fn features(&self) -> u64 {
        1 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_SCSI_F_HOTPLUG
            // QEMU offers CHANGE (`param_change`) by default; a backend that refuses it makes
            // the guest fail at boot.
            | 1 << VIRTIO_SCSI_F_CHANGE
            | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits()
    }

    pub(super) fn acked_features(&self, features: u64) {
        debug!("guest acked virtio features {features:#x}");
    }

    pub(super) fn protocol_features(&self) -> VhostUserProtocolFeatures {
        // STATUS is not offered: the vhost crate does not implement SET/GET_STATUS, and QEMU
        // resets through RESET_DEVICE when STATUS is absent.
        VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | if self.inflight_memfd.is_some() {
                VhostUserProtocolFeatures::INFLIGHT_SHMFD
            } else {
                VhostUserProtocolFeatures::empty()
            }
    }

    pub(super) fn reset_device(&self) {
        // A virtio reset is a guest reboot or driver reload: every LUN sees a power-on reset.
        debug!("device reset");
        self.bus.reset_all();
        // The driver starts over and scans the bus: earlier events mean nothing to it.
        self.events.clear();
        *lock(&self.event_vring) = None;
    }

    pub(super) fn set_event_idx(&self, enabled: bool) {
        self.event_idx.store(enabled, Ordering::Release);
    }

    pub(super) fn get_config(&self, offset: u32, size: u32) -> Vec<u8> {
        read_config(&self.config, offset, size).unwrap_or_else(|| {
            warn!("GET_CONFIG outside the config space: offset {offset}, size {size}");
            Vec::new()
        })
    }

    pub(super) fn set_config(&self, offset: u32, buf: &[u8]) -> io::Result<()> {
        // sense_size and cdb_size are the only writable fields, and QEMU's vhost-user-scsi does
        // not let a guest change them either.
        warn!(
            "SET_CONFIG (offset {offset}, {} bytes) refused: config space is read-only",
            buf.len()
        );
        Err(io::Error::from_raw_os_error(libc::EPERM))
    }

    /// Checks a memory table the front-end sent before anything uses it: a region past the end
    /// of its file, or an unsealed memfd, would let the front-end SIGBUS the worker
    /// ([`crate::worker::guest_memory`]).
    pub(super) fn check_memory(&self, mem: &GuestMemoryMmap) -> io::Result<()> {
        crate::worker::guest_memory::check_table(mem, self.allow_unsealed_memory).map_err(|e| {
            warn!("memory table refused, closing the connection: {e}");
            io::Error::new(io::ErrorKind::InvalidInput, e)
        })
    }

    /// Takes the memory table installed in `mem` (shared with every vring) as the guest's.
    pub(super) fn update_memory(&self, mem: GuestMemory) -> io::Result<()> {
        let current = mem.memory().into_inner();
        // The request handler checked it before installing it ([`Self::check_memory`]); checked
        // again here so that this entry point is safe on its own. On refusal the table is taken
        // out of `mem` too (an empty table: every access fails cleanly) and forgotten
        // (NoMemory); the front-end's SET_MEM_TABLE / ADD_MEM_REG fails and this connection
        // ends, only this one.
        let checked =
            crate::worker::guest_memory::check_table(&*current, self.allow_unsealed_memory)
                .map_err(|e| {
                    warn!("memory table refused, closing the connection: {e}");
                    mem.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .replace(GuestMemoryMmap::new());
                    io::Error::new(io::ErrorKind::InvalidInput, e)
                });
        {
            let mut tables = lock(&self.tables);
            // Tables only this list still holds are released here, on the protocol thread;
            // those a queue thread still uses wait for the next change or the disconnect.
            tables.retain(|t| Arc::strong_count(t) > 1);
            tables.push(current);
        }
        *self.mem.write().unwrap_or_else(|e| e.into_inner()) = checked.is_ok().then_some(mem);
        checked
    }

    pub(super) fn get_inflight_fd(
        &self,
        req: &VhostUserInflight,
    ) -> io::Result<(VhostUserInflight, File)> {
        let memfd = self.inflight_memfd.as_ref().ok_or_else(|| {
            io::Error::new(io::ErrorKind::Unsupported, "inflight tracking not offered")
        })?;
        memfd.get(req).map_err(|e| {
            warn!("GET_INFLIGHT_FD refused: {e}");
            e.into()
        })
    }

    pub(super) fn set_inflight_fd(&self, req: &VhostUserInflight, file: File) -> io::Result<()> {
        if self.inflight_memfd.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "inflight tracking not offered",
            ));
        }
        let region = InflightRegion::map(req, &file, self.queue_shape()).map_err(|e| {
            warn!("SET_INFLIGHT_FD refused: {e}");
            io::Error::from(e)
        })?;
        let mut state = lock(&self.inflight);
        // Regions only this list still holds are unmapped here, on the protocol thread; those
        // a queue's tracking still uses wait for the next change or the disconnect.
        state.retired.retain(|r| Arc::strong_count(r) > 1);
        if let Some(old) = state.current.take() {
            state.retired.push(old);
        }
        state.current = Some(Arc::new(region));
        state.generation += 1;
        self.inflight_generation
            .store(state.generation, Ordering::Release);
        info!(
            "inflight region from the front-end: {} queues of {} descriptors, {} bytes",
            req.num_queues, req.queue_size, req.mmap_size
        );
        Ok(())
    }

    pub(super) fn queues_per_thread(&self) -> Vec<u64> {
        let fixed = (1u64 << CONTROL_QUEUE) | (1u64 << EVENT_QUEUE);
        std::iter::once(fixed)
            .chain((0..self.num_request_queues).map(|q| 1u64 << (FIXED_QUEUES + usize::from(q))))
            .collect()
    }

    pub(super) fn stop_vring(&self, queue_index: u32) -> io::Result<()> {
        // GET_VRING_BASE must report a ring with nothing in flight. A queue's lock is held for
        // as long as its thread serves a batch (and an asynchronous worker only lets go once
        // every started command has completed): taking it waits for exactly that.
        match (queue_index as usize).checked_sub(FIXED_QUEUES) {
            Some(q) => {
                if let Some(worker) = self.workers.get(q) {
                    // Then stop watching its kick: SET_VRING_KICK may follow with a new eventfd
                    // under the same fd number, which the engine could not tell apart.
                    if let Some(w) = lock(worker).as_mut() {
                        w.forget_kick();
                        // Held commands (enospc=hold) cannot stay in flight across a stop.
                        if let Some(vring) = self.vrings.get(q).and_then(|v| lock(v).clone()) {
                            w.give_up_held(&self.bus, &vring);
                        }
                    }
                }
            }
            None if queue_index as usize == CONTROL_QUEUE => drop(lock(&self.control)),
            // The broker thread may be delivering an event into it right now.
            None if queue_index as usize == EVENT_QUEUE => self.events.quiesce(),
            None => {}
        }
        Ok(())
    }

    pub(super) fn handle_event(
        &self,
        device_event: u16,
        evset: EventSet,
        vrings: &[ScsiVring],
        thread_id: usize,
    ) -> io::Result<()> {
        if evset != EventSet::IN {
            return Err(BackendError::UnexpectedEvent(evset).into());
        }
        // A request queue's retry timer (enospc=hold): retry what that queue holds, if anything
        // (the timer may have fired before this connection, or after the ring stopped).
        let first_timer = self.retry_event(0);
        if u64::from(device_event) >= first_timer {
            let q = (u64::from(device_event) - first_timer) as usize;
            if let Some(timer) = self.retry_timers.as_ref().and_then(|t| t.get(q)) {
                timer.consume();
            }
            let holds = self
                .workers
                .get(q)
                .is_some_and(|w| lock(w).as_ref().is_some_and(|w| w.held() > 0));
            if holds {
                if let Some(vring) = vrings.first() {
                    self.process_request_queue(vring, q, true)?;
                }
            }
            return Ok(());
        }
        let vring = vrings
            .get(usize::from(device_event))
            .ok_or(BackendError::UnknownQueue(device_event, thread_id))?;
        match (thread_id, usize::from(device_event)) {
            (0, CONTROL_QUEUE) => {
                let mut tracking = lock(&self.control);
                if let Some((queue, generation)) =
                    self.inflight_update(CONTROL_QUEUE, tracking.generation())
                {
                    tracking.set(queue, generation);
                }
                self.process_queue(vring, &mut tracking, |chain| {
                    handle_control(&self.bus, &chain)
                })?
            }
            // Event-queue buffers stay with us until there is an event to report (hotplug,
            // capacity change): the guest expects them to be held, not returned empty. Events
            // raised while it had none posted go out now.
            (0, EVENT_QUEUE) => {
                *lock(&self.event_vring) = Some(vring.clone());
                self.deliver_events(vring);
            }
            (_, 0) => self.process_request_queue(vring, thread_id - 1, false)?,
            _ => return Err(BackendError::UnknownQueue(device_event, thread_id).into()),
        }
        Ok(())
    }
}

/// The inflight region of the connection (SET_INFLIGHT_FD).
#[derive(Default)]
struct InflightState {
    current: Option<Arc<InflightRegion>>,
    /// Counts SET_INFLIGHT_FD requests: a queue whose tracking comes from an older one takes
    /// its part of `current` before its next batch.
    generation: u64,
    /// Replaced regions a queue's tracking may still hold (until its next batch): kept so that
    /// they are unmapped here, on the protocol or main thread, as memory tables are.
    retired: Vec<Arc<InflightRegion>>,
}

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        os::fd::{AsRawFd, FromRawFd},
    };

    use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestRegionMmap, MmapRegion};

    use super::*;

    fn memfd(len: u64) -> File {
        // SAFETY: a NUL-terminated name; the result is checked before use.
        let fd = unsafe { libc::memfd_create(c"guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0, "memfd_create: {}", io::Error::last_os_error());
        // SAFETY: a new fd that nothing else owns.
        let f = unsafe { File::from_raw_fd(fd) };
        f.set_len(len).unwrap();
        f
    }

    fn table(file_len: u64, region_len: usize, offset: u64) -> GuestMemory {
        let region = MmapRegion::from_file(FileOffset::new(memfd(file_len), offset), region_len)
            .expect("mmap does not check the file's size");
        GuestMemoryAtomic::new(
            GuestMemoryMmap::from_regions(vec![
                GuestRegionMmap::new(region, GuestAddress(0)).unwrap()
            ])
            .unwrap(),
        )
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    /// A new kick fd is kicked once by us: after a reconnection, the event queue's thread must
    /// look at buffers the guest posted before (and will not kick for again).
    #[test]
    fn a_new_kick_fd_is_kicked_once() {
        use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
        let vring = ScsiVring::new(GuestMemoryAtomic::new(GuestMemoryMmap::new()), 16).unwrap();
        let kick = EventFd::new(EFD_NONBLOCK).unwrap();
        // SAFETY: a duplicate of an eventfd we own, handed over as the vring's own.
        let file = unsafe { File::from_raw_fd(libc::dup(kick.as_raw_fd())) };
        vring.set_kick(Some(file));
        assert_eq!(kick.read().unwrap(), 1);
        assert!(kick.read().is_err(), "kicked more than once");
    }

    /// Regression (fuzz/vhost_user: EMFILE after ~6600 connections; fixed with issue 19):
    /// every connection leaked one exit-event fd per queue thread (vhost-user-backend's daemon
    /// kept them as raw numbers and never closed them; our event loop owns its exit event).
    #[test]
    fn connections_leak_no_fds() {
        let backend = Arc::new(ScsiBackend::new(Arc::new(ScsiBus::new()), 2, 16));
        let connect = || {
            let connection = super::super::Connection::new(backend.clone()).unwrap();
            // As worker::serve does at the end of a connection.
            drop(connection);
            backend.disconnect();
        };
        connect();
        let before = open_fds();
        for _ in 0..20 {
            connect();
        }
        // Other tests open and close fds concurrently: a leak is 3 per connection, 60 here.
        let after = open_fds();
        assert!(
            after < before + 10,
            "{} fds leaked over 20 connections",
            after - before
        );
    }

    /// Regression (fuzz/vhost_user, input fuzz/corpus/vhost_user/mem_table_larger_than_file):
    /// a memory table whose region is larger than its memfd was accepted, and the first kick
    /// made the queue thread read the ring past the file's end: SIGBUS killed the worker.
    #[test]
    fn memory_table_larger_than_its_file_is_refused_and_forgotten() {
        // Plain (unsealed) memfds: the size check holds in every mode.
        let backend = ScsiBackend::new(Arc::new(ScsiBus::new()), 1, 16).allow_unsealed_memory(true);
        backend.update_memory(table(0x10000, 0x10000, 0)).unwrap();
        assert!(backend.memory().is_ok());

        for (file_len, region_len, offset) in [(0x1000, 0x10000, 0), (0x10000, 0x10000, 0x1000)] {
            let shared = table(file_len, region_len, offset);
            let err = backend.update_memory(shared.clone()).unwrap_err();
            // Gone from the memory the request handler shares with the vrings too (their
            // used-ring writes SIGBUSed while only our copy was forgotten: fuzz/vhost_user,
            // fuzz/regressions/vhost_user/sigbus-vring-after-refused-table).
            assert_eq!(shared.memory().num_regions(), 0);
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{err}");
            assert!(
                matches!(backend.memory(), Err(BackendError::NoMemory)),
                "a refused table must not stay in use"
            );
        }
        // Exactly the file's size, at an offset, is fine.
        backend
            .update_memory(table(0x11000, 0x10000, 0x1000))
            .unwrap();
        assert!(backend.memory().is_ok());
    }
}
