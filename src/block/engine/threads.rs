//! The thread-pool engine: for kernels (or policies) where io_uring is disabled.
//!
//! One pool per daemon runs `preadv2`/`pwritev2`/`fdatasync`; each queue worker has its own
//! completion list and eventfd, so a queue thread sleeps in `poll` on that eventfd and the
//! guest's kick at once.

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, RawFd},
    sync::{Arc, Condvar, Mutex, OnceLock},
    thread,
    time::{Duration, Instant},
};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{drain_eventfd, Engine, Op, DEALLOCATE_MODE};
use crate::block::IoKind;

/// Where a queue worker's completions go.
struct Completions {
    done: Mutex<Vec<(u64, i32)>>,
    event: EventFd,
}

struct Job {
    op: Op,
    to: Arc<Completions>,
}

#[derive(Default)]
struct Pool {
    jobs: Mutex<Jobs>,
    ready: Condvar,
}

/// The pool's queue, shared by every queue worker.
#[derive(Default)]
struct Jobs {
    queue: VecDeque<Job>,
    /// The sum of the live engines' depths: the queue never holds more (each engine has at
    /// most `depth` operations in flight), so its capacity is kept at least this large and a
    /// `push_back` never allocates (on a queue thread, under the lock) however the queues'
    /// bursts overlap.
    reserved: usize,
}

impl Jobs {
    fn reserve(&mut self, depth: usize) {
        self.reserved += depth;
        let missing = self.reserved.saturating_sub(self.queue.len());
        self.queue.reserve(missing);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Starts the daemon-wide pool now (from the main thread, before any queue thread exists), so
/// that queue threads never need the thread-creation syscalls.
pub fn start_pool(threads: usize) -> io::Result<()> {
    pool(threads).map(drop)
}

/// The daemon-wide pool, started on first use with `threads` workers.
fn pool(threads: usize) -> io::Result<&'static Arc<Pool>> {
    static POOL: OnceLock<Arc<Pool>> = OnceLock::new();
    if let Some(p) = POOL.get() {
        return Ok(p);
    }
    let pool = Arc::new(Pool::default());
    for i in 0..threads.max(1) {
        let p = pool.clone();
        thread::Builder::new()
            .name(format!("aio-{i}"))
            .spawn(move || worker(&p))?;
    }
    Ok(POOL.get_or_init(|| pool))
}

fn worker(pool: &Pool) {
    // Narrowed at once: the pool starts after the worker installed its filters (from the main
    // thread, or from a queue thread when io_uring is refused), and only runs file I/O.
    crate::sandbox::seccomp::enter_role(crate::sandbox::seccomp::ThreadRole::WorkerAio);
    #[cfg(debug_assertions)]
    crate::sandbox::probe::run_in_thread(crate::sandbox::seccomp::ThreadRole::WorkerAio);
    loop {
        let job = {
            let mut jobs = lock(&pool.jobs);
            loop {
                if let Some(job) = jobs.queue.pop_front() {
                    break job;
                }
                jobs = pool.ready.wait(jobs).unwrap_or_else(|e| e.into_inner());
            }
        };
        let res = run(&job.op);
        lock(&job.to.done).push((job.op.user_data, res));
        let _ = job.to.event.write(1);
    }
}

/// Runs one operation; returns bytes moved or `-errno`.
fn run(op: &Op) -> i32 {
    let iovcnt = op.iovcnt as libc::c_int;
    // SAFETY: the iovecs and the buffers they describe are valid for the duration of the job
    // (see `Op`); the fd is a LUN file kept open by the bus.
    let ret = unsafe {
        match op.kind {
            IoKind::Read => libc::preadv2(op.fd, op.iov, iovcnt, op.offset as libc::off_t, 0),
            IoKind::Write { fua } => libc::pwritev2(
                op.fd,
                op.iov,
                iovcnt,
                op.offset as libc::off_t,
                if fua { libc::RWF_DSYNC } else { 0 },
            ),
            IoKind::Flush => libc::fdatasync(op.fd) as isize,
            IoKind::Deallocate { bytes } => libc::fallocate(
                op.fd,
                DEALLOCATE_MODE,
                op.offset as libc::off_t,
                bytes as libc::off_t,
            ) as isize,
        }
    };
    if ret < 0 {
        -io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    } else {
        i32::try_from(ret).unwrap_or(i32::MAX)
    }
}

/// A queue worker's handle on the pool.
pub struct ThreadEngine {
    pool: &'static Arc<Pool>,
    completions: Arc<Completions>,
    queued: Vec<Op>,
    /// The most operations this engine has in flight (its worker's slots): room for them is
    /// made once here, in the pool's queue and in the lists below, so that the request path
    /// never allocates.
    depth: usize,
}

impl ThreadEngine {
    /// A handle on the pool (started with `threads` workers if it is not yet) for a worker
    /// with at most `depth` operations in flight.
    pub fn new(threads: usize, depth: usize) -> io::Result<Self> {
        let pool = pool(threads)?;
        let completions = Arc::new(Completions {
            done: Mutex::new(Vec::with_capacity(depth)),
            event: EventFd::new(EFD_NONBLOCK)?,
        });
        lock(&pool.jobs).reserve(depth);
        Ok(Self {
            pool,
            completions,
            queued: Vec::with_capacity(depth),
            depth,
        })
    }
}

impl Drop for ThreadEngine {
    fn drop(&mut self) {
        // The capacity stays (the next connection's engines reuse it).
        let mut jobs = lock(&self.pool.jobs);
        jobs.reserved = jobs.reserved.saturating_sub(self.depth);
        drop(jobs);
        // A pool thread lets go of a job's reference to these completions just after it
        // signalled them, so it could drop the last reference, closing the eventfd: a system
        // call the pool's role (worker-aio) does not allow. The last reference is dropped here
        // instead (the main thread, at the disconnect). A job still queued or running past the
        // wait (I/O stuck beyond the teardown deadline) keeps them: they are leaked.
        let deadline = Instant::now() + JOB_RELEASE_WAIT;
        while Arc::strong_count(&self.completions) > 1 {
            if Instant::now() >= deadline {
                std::mem::forget(self.completions.clone());
                break;
            }
            thread::yield_now();
        }
    }
}

/// How long dropping an engine waits for the pool's jobs to let go of its completions.
const JOB_RELEASE_WAIT: Duration = Duration::from_millis(100);

impl Engine for ThreadEngine {
    fn push(&mut self, op: &Op) -> bool {
        self.queued.push(*op);
        true
    }

    fn submit(&mut self) -> io::Result<()> {
        if self.queued.is_empty() {
            return Ok(());
        }
        let n = self.queued.len();
        {
            let mut jobs = lock(&self.pool.jobs);
            for op in self.queued.drain(..) {
                jobs.queue.push_back(Job {
                    op,
                    to: self.completions.clone(),
                });
            }
        }
        if n == 1 {
            self.pool.ready.notify_one();
        } else {
            self.pool.ready.notify_all();
        }
        Ok(())
    }

    fn reap(&mut self, out: &mut Vec<(u64, i32)>) {
        out.append(&mut lock(&self.completions.done));
    }

    fn wait(&mut self, kick_fd: Option<RawFd>) -> io::Result<bool> {
        self.submit()?;
        let event = self.completions.event.as_raw_fd();
        let mut fds = [
            libc::pollfd {
                fd: event,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: kick_fd.unwrap_or(-1),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // Without pending completions sleep; with them only look (timeout 0).
        let timeout = if lock(&self.completions.done).is_empty() {
            -1
        } else {
            0
        };
        // SAFETY: `fds` is a valid array of two pollfds for the duration of the call (a negative
        // fd is ignored by poll).
        let ret = unsafe { libc::poll(fds.as_mut_ptr(), 2, timeout) };
        if ret < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
            return Ok(false);
        }
        drain_eventfd(event);
        Ok(kick_fd.is_some() && fds[1].revents & libc::POLLIN != 0)
    }

    fn ready(&mut self) -> bool {
        !lock(&self.completions.done).is_empty()
    }

    fn name(&self) -> &'static str {
        "threads"
    }

    fn completion_fd(&self) -> Option<RawFd> {
        Some(self.completions.event.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every live engine's depth has room in the pool's queue, so that however the queues'
    /// bursts overlap a submission never grows it (tests/alloc_free.rs counted one allocation
    /// in 5,760 READs when two tests' bursts met in a queue sized by the first burst alone).
    #[test]
    fn the_pool_queue_has_room_for_every_engine_in_flight() {
        let a = ThreadEngine::new(2, 300).unwrap();
        let b = ThreadEngine::new(2, 500).unwrap();
        {
            let jobs = lock(&a.pool.jobs);
            assert!(jobs.reserved >= 800, "reserved {}", jobs.reserved);
            assert!(
                jobs.queue.capacity() >= jobs.queue.len() + 800,
                "capacity {} for {} queued",
                jobs.queue.capacity(),
                jobs.queue.len()
            );
        }
        assert!(a.queued.capacity() >= 300 && lock(&a.completions.done).capacity() >= 300);
        drop(b);
        // Other tests' engines may come and go meanwhile: only this one's share is checked.
        let jobs = lock(&a.pool.jobs);
        assert!(jobs.reserved >= 300);
        assert!(jobs.queue.capacity() >= jobs.reserved);
    }
}
