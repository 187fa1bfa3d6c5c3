//! How long a request-queue thread spins before it sleeps (`--poll-us`, `--poll-max-us`).
//!
//! Sleeping costs a wake-up per event: an interrupt, a context switch, on a virtual machine an
//! inter-processor interrupt and its exits. At QD1 that is most of the gap between the daemon
//! and fio on the same file. Spinning a little before sleeping hides it, but a thread that
//! always spins burns a CPU while its guest does nothing.
//!
//! The adaptive policy is QEMU's (util/aio-posix.c, `adjust_polling_time`, one window per
//! event source as in QEMU 10): each source the queue waits for (a completion while I/O is in
//! flight; the guest's next request while the queue is idle) has its own window, which
//! - stays as it is when the event came within it (polling worked),
//! - grows (from 4 µs, doubling, up to the maximum) when the event came later but within the
//!   maximum (polling a little longer would have caught it),
//! - halves (to 0 below 4 µs) when the event took longer than the maximum (polling would have
//!   been wasted). QEMU's default shrink resets to 0; halving keeps one slow outlier among fast
//!   completions from costing the next five their polling.
//!
//! Polling must never take a CPU that another task wants. A spinning thread that another task
//! waits behind builds up that task's claim on the CPU (EEVDF): the moment the spinner is
//! switched out — it yields, its slice ends, or the eventfd write that wakes the guest's
//! thread (placed on the waker's CPU) reschedules it — the waiting task runs for a whole slice,
//! until the next timer tick (4 ms at HZ=250), and the thread just woken waits behind it. At
//! QD1 that was one tick per I/O (docs/benchmarks.md, "The polling stall"). So every spin
//! first asks the kernel whether this thread was switched out while runnable since the last
//! spin (`getrusage(RUSAGE_THREAD)`'s involuntary context switches, which count yields that let
//! another task run and every preemption, wherever it happened), and a spin yields the CPU at
//! every turn so that a task arriving meanwhile shows at once (a turn of 20 µs or more). Either
//! sign pauses polling, for half a second at first and twice as long each time contention is
//! found again soon after a pause (up to 8 s), since on such a host spinning delays whoever
//! produces the awaited event (a vCPU, the client).
//!
//! An idle queue therefore spins at most once, for at most the maximum, after its last request,
//! and sleeps in epoll until the guest kicks; the first request after a long pause halves the
//! window again. Nothing spins while no request arrives: the queue thread only runs when
//! the guest kicks it.

use std::time::{Duration, Instant};

/// How long polling stays off after a spin found the CPU contended: long enough that a loaded
/// host sees at most a spin or two per second per queue, short enough that polling is back soon
/// after the load goes.
const CONTENDED_PAUSE: Duration = Duration::from_millis(500);
/// The longest pause, reached when contention is found again right after each pause.
const CONTENDED_PAUSE_MAX: Duration = Duration::from_secs(8);

/// Where a window starts growing (QEMU: "start polling at 4 microseconds").
const POLL_START: Duration = Duration::from_micros(4);

/// How much longer than `--poll-max-us` the window for a passthrough (iSCSI) answer may grow:
/// the answer comes after a network round trip through the LUN thread and the target (about
/// 50-150 µs to a tgtd on the same host, docs/iscsi.md "QD1 answer latency"), longer than a
/// local disk's completion, and a sleep costs it two wake-ups (the LUN thread's eventfd
/// write, this thread's poll) on top.
const ANSWER_MAX_FACTOR: u32 = 4;

/// What `--poll-us` / `--poll-max-us` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollPolicy {
    /// Never spin (`--poll-us 0`, or `--poll-max-us 0`).
    Never,
    /// Always spin this long before sleeping (`--poll-us N`).
    Fixed(Duration),
    /// Spin only as long as events have recently been arriving (the default).
    Adaptive { max: Duration },
}

impl PollPolicy {
    /// The policy of `--poll-us` (an explicit window) or else `--poll-max-us`.
    pub fn from_options(poll_us: Option<u32>, poll_max_us: u32) -> Self {
        match poll_us {
            Some(0) => Self::Never,
            Some(us) => Self::Fixed(Duration::from_micros(u64::from(us))),
            None if poll_max_us == 0 => Self::Never,
            None => Self::Adaptive {
                max: Duration::from_micros(u64::from(poll_max_us)),
            },
        }
    }
}

/// One event source's adaptive window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollWindow {
    window: Duration,
}

impl PollWindow {
    pub fn get(&self) -> Duration {
        self.window
    }

    /// The event came `waited` after the queue started waiting for it (spinning and sleeping).
    pub fn adjust(&mut self, waited: Duration, max: Duration) {
        if waited <= self.window {
            // Polling caught it: the sweet spot.
        } else if waited > max {
            // It would have taken longer than we are willing to spin.
            self.window /= 2;
            if self.window < POLL_START {
                self.window = Duration::ZERO;
            }
        } else if self.window < max {
            self.window = if self.window.is_zero() {
                POLL_START
            } else {
                self.window * 2
            }
            .min(max);
        }
    }
}

/// The spin windows of one request queue.
#[derive(Debug, Clone, Copy)]
pub struct Poller {
    policy: PollPolicy,
    /// Waiting for an I/O completion (I/O in flight).
    completion: PollWindow,
    /// Waiting for the guest's next request (nothing in flight).
    request: PollWindow,
    /// Waiting for an answer to a passthrough (iSCSI) command.
    answer: PollWindow,
    /// Polling is off until then: a spin found the CPU wanted by another thread.
    paused_until: Option<Instant>,
    /// The length of the last pause, and when it ended (contention again soon after doubles
    /// the next one).
    pause: Duration,
    resumed_at: Option<Instant>,
    /// This thread's involuntary context switches at the last look (`None`: look again before
    /// comparing, e.g. after a pause).
    switches: Option<i64>,
}

impl Poller {
    pub fn new(policy: PollPolicy) -> Self {
        Self {
            policy,
            completion: PollWindow::default(),
            request: PollWindow::default(),
            answer: PollWindow::default(),
            paused_until: None,
            pause: Duration::ZERO,
            resumed_at: None,
            switches: None,
        }
    }

    /// Whether waits are timed at all (the policy adapts).
    pub fn adaptive(&self) -> bool {
        matches!(self.policy, PollPolicy::Adaptive { .. })
    }

    /// How long to spin for a completion before sleeping.
    pub fn completion_window(&self) -> Duration {
        self.window(self.completion)
    }

    /// How long to spin for the guest's next request before going back to the event loop.
    pub fn request_window(&self) -> Duration {
        self.window(self.request)
    }

    /// How long to spin for a passthrough command's answer before sleeping.
    pub fn answer_window(&self) -> Duration {
        self.window(self.answer)
    }

    fn window(&self, source: PollWindow) -> Duration {
        match self.policy {
            PollPolicy::Never => Duration::ZERO,
            PollPolicy::Fixed(window) => window,
            PollPolicy::Adaptive { .. } if self.paused_until.is_some() => Duration::ZERO,
            PollPolicy::Adaptive { .. } => source.get(),
        }
    }

    /// Whether polling is paused (contention), ending the pause when it is over.
    fn paused(&mut self) -> bool {
        match self.paused_until {
            Some(until) if Instant::now() < until => true,
            Some(_) => {
                self.paused_until = None;
                self.resumed_at = Some(Instant::now());
                // What happened during the pause says nothing about spinning.
                self.switches = None;
                false
            }
            None => false,
        }
    }

    /// The CPU was taken by another thread while spinning: no polling for a while (adaptive
    /// only), and the windows start again from nothing. Polling on a CPU that something else
    /// needs delays the very thread (a vCPU, the submitting client) whose event it waits for,
    /// and a thread that spins loses the scheduler's preference for threads that sleep: on a
    /// loaded host its wake-ups then wait for a whole round of the run queue.
    pub fn contended(&mut self) {
        if self.adaptive() {
            let now = Instant::now();
            // Contention again within twice the last pause of its end: it is the host's steady
            // state, not a moment; pause longer.
            let again = self
                .resumed_at
                .is_some_and(|at| now.saturating_duration_since(at) < self.pause * 2);
            self.pause = if again {
                (self.pause * 2).min(CONTENDED_PAUSE_MAX)
            } else {
                CONTENDED_PAUSE
            };
            self.completion = PollWindow::default();
            self.request = PollWindow::default();
            self.answer = PollWindow::default();
            self.paused_until = Some(now + self.pause);
            self.switches = None;
        }
    }

    /// Before a spin (adaptive only): whether another task took this thread's CPU while it
    /// was runnable since the last look — then polling pauses ([`Poller::contended`]) and the
    /// caller should not spin. One `getrusage` per spin; none while polling is off or paused.
    pub fn switched_out(&mut self) -> bool {
        if !self.adaptive() || self.paused_until.is_some() {
            return false;
        }
        let Some(now) = involuntary_switches() else {
            return false;
        };
        let before = self.switches.replace(now);
        if before.is_some_and(|b| now > b) {
            self.contended();
            return true;
        }
        false
    }

    /// A completion came `waited` after the queue started waiting for one.
    pub fn completed(&mut self, waited: Duration) {
        if self.paused() {
            return;
        }
        if let PollPolicy::Adaptive { max } = self.policy {
            self.completion.adjust(waited, max);
        }
    }

    /// An answer to a passthrough command came `waited` after the queue started waiting for
    /// one (its window may grow to [`ANSWER_MAX_FACTOR`] times the maximum).
    pub fn answered(&mut self, waited: Duration) {
        if self.paused() {
            return;
        }
        if let PollPolicy::Adaptive { max } = self.policy {
            self.answer.adjust(waited, max * ANSWER_MAX_FACTOR);
        }
    }

    /// A request came `waited` after the queue ran out of work.
    pub fn requested(&mut self, waited: Duration) {
        if self.paused() {
            return;
        }
        if let PollPolicy::Adaptive { max } = self.policy {
            self.request.adjust(waited, max);
        }
    }
}

/// The calling thread's involuntary context switches so far: times it was switched out while
/// runnable (preempted, or a `sched_yield` that let another task run).
fn involuntary_switches() -> Option<i64> {
    // SAFETY: a zeroed rusage is a valid value for getrusage to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD fills `usage` for the calling thread.
    let ret = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    (ret == 0).then_some(usage.ru_nivcsw)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(64);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn a_window_grows_while_events_come_within_the_maximum() {
        let mut w = PollWindow::default();
        let mut seen = Vec::new();
        for _ in 0..7 {
            w.adjust(us(50), MAX);
            seen.push(w.get().as_micros());
        }
        assert_eq!(seen, [4, 8, 16, 32, 64, 64, 64]);
        // Caught within the window: unchanged.
        w.adjust(us(10), MAX);
        assert_eq!(w.get(), MAX);
    }

    #[test]
    fn a_window_halves_when_events_take_longer_than_the_maximum_and_reaches_zero() {
        let mut w = PollWindow::default();
        for _ in 0..5 {
            w.adjust(us(50), MAX);
        }
        w.adjust(Duration::from_secs(3), MAX);
        assert_eq!(w.get(), us(32));
        for _ in 0..4 {
            w.adjust(Duration::from_secs(3), MAX);
        }
        assert_eq!(w.get(), Duration::ZERO);
        // An idle source never starts polling.
        w.adjust(Duration::from_secs(3), MAX);
        assert_eq!(w.get(), Duration::ZERO);
    }

    #[test]
    fn pauses_grow_while_contention_comes_back_after_each() {
        let mut p = Poller::new(PollPolicy::from_options(None, 64));
        p.contended();
        assert_eq!(p.pause, CONTENDED_PAUSE);
        // The pause ends, and contention is found again at once: twice as long, up to the cap.
        for want in [1, 2, 4, 8, 8] {
            p.paused_until = Some(Instant::now());
            assert!(!p.paused());
            p.contended();
            assert_eq!(p.pause, Duration::from_secs(want));
        }
        // Long after the last pause ended: back to the shortest.
        p.paused_until = Some(Instant::now());
        assert!(!p.paused());
        p.resumed_at = Some(Instant::now() - Duration::from_secs(60));
        p.contended();
        assert_eq!(p.pause, CONTENDED_PAUSE);
    }

    #[test]
    fn a_thread_switched_out_since_the_last_spin_stops_polling() {
        let mut p = Poller::new(PollPolicy::from_options(None, 64));
        for _ in 0..4 {
            p.completed(us(50));
        }
        assert!(!p.switched_out(), "the first look only takes the count");
        // Another thread spins on this thread's CPU (both pinned there) until this one, which
        // stays runnable, has been switched out involuntarily at least once.
        let before = involuntary_switches().unwrap();
        // SAFETY: no preconditions.
        let cpu = unsafe { libc::sched_getcpu() };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hog = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                pin(cpu);
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    std::hint::spin_loop();
                }
            })
        };
        pin(cpu);
        // (A guard against a host where the two cannot share a CPU, not a timing condition.)
        let give_up = Instant::now() + Duration::from_secs(30);
        while involuntary_switches().unwrap() == before && Instant::now() < give_up {
            std::thread::yield_now();
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hog.join().unwrap();
        if involuntary_switches().unwrap() == before {
            eprintln!("SKIPPED: this thread was never switched out for a thread on its CPU");
            return;
        }
        assert!(p.switched_out());
        assert_eq!(p.completion_window(), Duration::ZERO, "paused");
        assert!(!p.switched_out(), "no second look while paused");
    }

    fn pin(cpu: i32) {
        // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it and
        // sched_setaffinity reads it for the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu.max(0) as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }

    #[test]
    fn the_options_pick_the_policy() {
        assert_eq!(PollPolicy::from_options(Some(0), 64), PollPolicy::Never);
        assert_eq!(PollPolicy::from_options(None, 0), PollPolicy::Never);
        assert_eq!(
            PollPolicy::from_options(Some(50), 64),
            PollPolicy::Fixed(us(50))
        );
        assert_eq!(
            PollPolicy::from_options(None, 64),
            PollPolicy::Adaptive { max: MAX }
        );
        let mut fixed = Poller::new(PollPolicy::Fixed(us(50)));
        fixed.completed(Duration::from_secs(1));
        assert_eq!(fixed.completion_window(), us(50));
        assert_eq!(fixed.request_window(), us(50));
        let mut never = Poller::new(PollPolicy::Never);
        never.requested(us(1));
        assert_eq!(never.request_window(), Duration::ZERO);
        let mut contended = Poller::new(PollPolicy::from_options(None, 64));
        for _ in 0..4 {
            contended.completed(us(50));
        }
        contended.contended();
        assert_eq!(contended.completion_window(), Duration::ZERO);
        // Paused: short waits do not bring polling back yet.
        contended.completed(us(50));
        assert_eq!(contended.completion_window(), Duration::ZERO);
        contended.paused_until = Some(Instant::now());
        contended.completed(us(50));
        assert_eq!(contended.completion_window(), us(4));
        fixed.contended();
        assert_eq!(fixed.completion_window(), us(50));
        let mut answers = Poller::new(PollPolicy::from_options(None, 64));
        for _ in 0..8 {
            answers.answered(us(120));
        }
        assert_eq!(
            answers.answer_window(),
            us(128),
            "beyond the maximum, to a round trip"
        );
        assert_eq!(answers.completion_window(), Duration::ZERO);
        answers.answered(Duration::from_millis(1));
        assert_eq!(
            answers.answer_window(),
            us(64),
            "halves after a slow answer"
        );
        answers.contended();
        assert_eq!(answers.answer_window(), Duration::ZERO);
        let mut adaptive = Poller::new(PollPolicy::from_options(None, 64));
        adaptive.requested(us(3));
        assert_eq!(adaptive.request_window(), us(4));
        assert_eq!(adaptive.completion_window(), Duration::ZERO);
    }
}
