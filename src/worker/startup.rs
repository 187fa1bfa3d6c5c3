//! The worker's start-up, from the moment the supervisor's `clone` returned 0, in order (each
//! step fails closed; the numbers are those of [`crate::sandbox`]):
//! 1. standard streams onto `/dev/null` and the stderr pipe, every other descriptor outside the
//!    inherited set closed, the process named, allocator settings that keep glibc from opening
//!    files later;
//! 2. wait for the supervisor (uid/gid maps), then [`sandbox::confine`] (steps 2-5);
//! 3. the main thread's seccomp filters (step 6);
//! 4. the bus is assembled and [`serve::serve`] runs until the end.

use std::{
    ffi::CString,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd},
        unix::net::{UnixListener, UnixStream},
    },
    sync::Arc,
};

use log::{info, warn};
use nix::{sys::prctl, unistd};

use super::{
    assemble::{self, OpenedLun},
    broker,
    inflight::{InflightMemfd, QueueShape},
    manage,
    serve::{self, ServeOptions},
    vhost_user::ScsiBackend,
};
use crate::{
    block::engine::{uring::UringEngine, AioMode},
    config::Config,
    logging::relay,
    sandbox::{self, SandboxError, WorkerJail},
    scsi::ScsiBus,
};

/// Exit code when serving failed after setup.
pub const EXIT_RUNTIME: u8 = 1;

/// The worker's process name (`comm`), so that it stands out in `ps` and in the SIGSYS report.
pub const WORKER_COMM: &str = "vus-worker";

/// Per-worker channels, created fresh for every worker by the supervisor (both ends: the
/// worker closes the supervisor's).
pub struct Channels {
    /// Worker's stderr: (read end for the supervisor, write end for the worker).
    pub stderr: (OwnedFd, OwnedFd),
    /// Set-up handshake (supervisor end, worker end).
    pub sync: (UnixStream, UnixStream),
    /// The fd broker (supervisor end, worker end): messages and fds (SCM_RIGHTS) for
    /// management and iSCSI reconnects ([`crate::broker`]); the worker holds its end from the
    /// start so that none has to be opened.
    pub broker: (UnixStream, UnixStream),
    /// A duplicate of the listening socket for the worker (never unlinks anything).
    pub listener: UnixListener,
}

/// What the worker inherits besides its channels: everything it will ever use, opened by the
/// supervisor.
pub struct Inherited<'a> {
    pub luns: &'a [OpenedLun],
    /// The LUN files' descriptors (images and `pr-file`s), kept open in the worker.
    pub lun_fds: &'a [RawFd],
    /// `/dev/null`, for the worker's stdin and stdout.
    pub dev_null: BorrowedFd<'a>,
    /// This worker replaces one that failed: the guest missed whatever events that one had
    /// not delivered.
    pub restarted: bool,
}

/// One io_uring per request queue for `--aio=io-uring`, over the LUN files io_uring handles
/// correctly (not FUSE: its I/O then runs synchronously), each LU given its fixed-file slot.
/// Made while the worker is still unfiltered: once the seccomp filters are in, no thread may
/// create a ring (a fresh ring would run any operation unseen by seccomp). None when io_uring
/// is refused: the queues use the thread pool, started now by `with_io_config`'s caller below.
fn make_rings(bus: &ScsiBus, config: &Config) -> Vec<UringEngine> {
    if config.io.aio != AioMode::IoUring {
        return Vec::new();
    }
    let files = bus.assign_fixed_files();
    match UringEngine::for_queues(
        config.num_queues,
        config.queue_size,
        &files,
        config.io.register_buffers,
    ) {
        Ok(rings) => rings,
        Err(e) => {
            // ENOMEM: the rings' memory counts against RLIMIT_MEMLOCK of the worker's account
            // (about 16 KiB per request queue, shared by every process of that account).
            let hint = if e.raw_os_error() == Some(libc::ENOMEM) {
                " (RLIMIT_MEMLOCK too low for one ring per request queue? see --num-queues)"
            } else {
                ""
            };
            warn!("io_uring unavailable ({e}){hint}; the request queues use the thread pool");
            Vec::new()
        }
    }
}

/// The inherited LUNs, owned by the worker. `luns` lies in this process's copy of the
/// supervisor's memory, which the worker never drops: references counted there would keep each
/// configured LUN's file open (and locked) in the worker after a `remove-lun` took it off the
/// bus. Moving them out gives every one exactly one owner, the returned vector.
fn own_luns(luns: &[OpenedLun]) -> Vec<OpenedLun> {
    luns.iter()
        // SAFETY: each element is read once, and the originals are never read or dropped
        // again: only `worker_main` has them (through `Inherited`), it calls this first and
        // uses the result from then on, and the worker ends with `process::exit` (no
        // destructor runs on the supervisor's objects).
        .map(|l| unsafe { std::ptr::read(l) })
        .collect()
}

/// The worker, from the moment `clone` returned 0. Never returns.
pub fn worker_process(res: &Inherited<'_>, config: &Config, jail: &WorkerJail, ch: Channels) -> ! {
    relay::become_worker();
    let code = match worker_main(res, config, jail, ch) {
        Ok(code) => code,
        Err(e) => {
            log::error!("worker: {e}");
            sandbox::EXIT_SANDBOX
        }
    };
    // Exit without running destructors: the supervisor's objects (the Listener that unlinks
    // the socket path) are copies here and are not ours to drop.
    std::process::exit(code)
}

fn worker_main(
    res: &Inherited<'_>,
    config: &Config,
    jail: &WorkerJail,
    ch: Channels,
) -> Result<i32, SandboxError> {
    let Channels {
        stderr: (stderr_r, stderr_w),
        sync: (sync_parent, mut sync),
        broker: (broker_parent, broker),
        listener,
    } = ch;
    // From here on only `luns` is used, never `res.luns`.
    let luns = own_luns(res.luns);
    // Step 1: standard streams, then everything outside the pre-opened set goes.
    let null = res.dev_null;
    unistd::dup2_stdin(null)
        .and_then(|()| unistd::dup2_stdout(null))
        .and_then(|()| unistd::dup2_stderr(&stderr_w))
        .map_err(|e| SandboxError::CloseFds(e.into()))?;
    let mut keep = vec![
        0,
        1,
        2,
        listener.as_raw_fd(),
        broker.as_raw_fd(),
        sync.as_raw_fd(),
    ];
    keep.extend(res.lun_fds);
    // The descriptors about to be closed must not be closed again by their owners' Drop.
    std::mem::forget((stderr_r, stderr_w, sync_parent, broker_parent));
    sandbox::sanitize_process(&keep)?;
    let name = CString::new(WORKER_COMM).expect("no NUL");
    // Only a label for `ps` and the SIGSYS report: a failure changes nothing else.
    let _ = prctl::set_name(&name);

    // glibc sizes its malloc arena limit from /sys/devices/system/cpu/online the first time a
    // thread needs a new arena; fixing the limit now keeps the jailed worker from ever opening
    // a file (seccomp would kill it for the attempt).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // SAFETY: mallopt only changes allocator tuning; M_ARENA_MAX takes a positive count.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, (8 * cpus).min(1024) as libc::c_int) };
    // The first time glibc shrinks a thread arena's heap (typically a vring worker exiting at
    // disconnect, freeing its tcache) it opens /proc/sys/vm/overcommit_memory
    // (check_may_shrink_heap): a seccomp kill of the whole worker, about one sg3 guest run in
    // four. Thread heaps below this threshold are never trimmed, so that open never happens;
    // the memory stays in the arena for the next connection's threads, and heaps that empty
    // completely are still unmapped.
    // SAFETY: as above; M_TRIM_THRESHOLD takes a byte count.
    unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, libc::c_int::MAX) };

    // glibc reports fatal errors (heap corruption, failed assertions) by opening /dev/tty
    // unless this is set: in the jail that open is a seccomp kill naming `openat`, which hides
    // the real message. With it the message reaches stderr (the supervisor's log) and the
    // worker ends with SIGABRT. Set while the worker is still single-threaded.
    std::env::set_var("LIBC_FATAL_STDERR_", "1");

    // Wait for the supervisor (uid/gid maps written); EOF means it is gone.
    let mut go = [0u8; 1];
    if !matches!(sync.read(&mut go), Ok(1)) {
        return Ok(sandbox::EXIT_SANDBOX);
    }
    // Steps 2-5.
    let landlock = sandbox::confine(jail)?;
    let (uid, gid) = (unistd::getuid(), unistd::getgid());
    info!(
        "worker jailed: sandbox={} {}, uid={uid} gid={gid}, no capabilities, no_new_privs, not \
         dumpable, no core dumps, {}, seccomp={:?}",
        jail.mode.name(),
        jail.describe_root(),
        landlock.description,
        jail.seccomp
    );
    if !landlock.fully_enforced {
        warn!("worker: {}", landlock.description);
    }
    if sync.write_all(b"r").is_err() {
        return Ok(sandbox::EXIT_SANDBOX);
    }
    drop(sync);
    // The bus (memory only), then the request queues' rings over its files, made, restricted
    // and enabled now: no role installed below allows io_uring_setup.
    let mut bus = assemble::build_bus(&luns);
    let rings = make_rings(&bus, config);
    // The inflight region handed out to front-ends (GET_INFLIGHT_FD), likewise made now: no
    // role may create a file.
    let inflight = InflightMemfd::create(QueueShape {
        num_queues: 2 + config.num_queues,
        max_queue_size: config.queue_size,
    })
    .map_err(|e| warn!("inflight I/O tracking is off: cannot create its memfd: {e}"))
    .ok();
    // Step 6.
    sandbox::install_main_filters(jail.seccomp)?;
    #[cfg(debug_assertions)]
    sandbox::probe::run_in_main();

    // The broker thread, under the filters like every thread; it runs the supervisor's
    // management requests on the bus (once the bus is served: `manage` is filled in below) and
    // carries the iSCSI LUN threads' requests for fresh connections. The thread lives until
    // the process ends.
    let manage: Arc<broker::ManageSlot> = Arc::default();
    let handlers = broker::Handlers {
        manage: Some(broker::deferred(manage.clone())),
    };
    let broker = match broker::start(broker, handlers) {
        Ok(handle) => handle,
        Err(e) => {
            log::error!("cannot start the fd broker thread: {e}");
            return Ok(i32::from(EXIT_RUNTIME));
        }
    };

    // Serve.
    if let Err(e) = assemble::start_iscsi_luns(&mut bus, &luns, |lun| {
        crate::block::iscsi::broker_reconnect(broker.clone(), lun.target, lun.lun)
    }) {
        log::error!("worker: cannot start the iSCSI LUN threads: {e}");
        return Ok(i32::from(EXIT_RUNTIME));
    }
    // The bus holds the LUNs now: a removed one's file closes when the bus lets go of it.
    drop(luns);
    // The bus's backend: served over vhost-user, changed at runtime by management requests.
    let mut backend = ScsiBackend::new(Arc::new(bus), config.num_queues, config.queue_size)
        .with_io_config(config.io.clone())
        .with_rings(rings)
        .allow_unsealed_memory(config.allow_unsealed_memory);
    if let Some(memfd) = inflight {
        backend = backend.with_inflight_memfd(memfd);
    }
    let backend = Arc::new(backend);
    if res.restarted {
        // The dead worker's undelivered events are gone, and LUNs may have been added or
        // removed since the guest last looked: EVENTS_MISSED makes Linux rescan the bus.
        backend.report_missed_events();
    }
    // iSCSI LUNs added at run time get their threads from a thread under worker-main only
    // (`worker::spawner`), started now, from the main thread.
    let iscsi = match config.management {
        Some(_) => match super::spawner::IscsiStarter::start() {
            Ok(starter) => Some(manage::IscsiRuntime {
                starter,
                broker: broker.clone(),
            }),
            Err(e) => {
                warn!("cannot start the thread for iSCSI LUNs added at run time: {e}");
                None
            }
        },
        None => None,
    };
    manage.install(manage::handler(backend.clone(), iscsi));
    let opts = ServeOptions {
        exit_on_disconnect: config.exit_on_disconnect,
    };
    let result = serve::serve(&listener, backend.clone(), &opts);
    // iSCSI LUNs log out (a target that does not answer is given up on after
    // `LOGOUT_TIMEOUT`), so that the targets end their sessions now, not when they notice
    // the closed sockets.
    let deadline = std::time::Instant::now()
        + crate::block::iscsi::LOGOUT_TIMEOUT
        + std::time::Duration::from_secs(1);
    let left = backend.bus().close_passthroughs(deadline);
    if left > 0 {
        warn!("{left} iSCSI LUN(s) had not logged out at exit");
    }
    Ok(match result {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e}");
            i32::from(EXIT_RUNTIME)
        }
    })
}
