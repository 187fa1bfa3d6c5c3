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
//! first asks the kernel how long this thread was kept off its CPU while runnable since the
//! last spin (`getrusage(RUSAGE_THREAD)`: when it was switched out involuntarily and never
//! blocked, the wall time it did not run), and a spin yields the CPU at every turn so that a
//! task arriving meanwhile shows at once (a turn of [`OFF_CPU_STRIKE`] or more).
//!
//! One such stretch is a strike, not a verdict: on any host a kernel thread (the block
//! layer's completion work, a timer) takes the CPU for a few microseconds now and then — on
//! the 2-CPU bench host the queue thread was switched out once per I/O at QD1 while nothing
//! else ran, and pausing at the first switch kept polling off all the time (QD1 at 0.75× of
//! fio instead of 1.2×). A strike skips that one spin; [`STRIKES`] strikes within
//! [`STRIKE_WINDOW`] mean the CPU is really wanted, and pause polling, for half a second at
//! first and twice as long each time contention is found again soon after a pause (up to
//! 8 s), since on such a host spinning delays whoever produces the awaited event (a vCPU, the
//! client).
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

/// Time off the CPU while runnable that counts as a strike against polling: another task ran
/// on this thread's CPU (an uncontended spin turn, a check and a `sched_yield`, takes about a
/// microsecond).
pub const OFF_CPU_STRIKE: Duration = Duration::from_micros(100);

/// Strikes within this long of the first pause polling ([`STRIKES`]).
const STRIKE_WINDOW: Duration = Duration::from_millis(100);

/// How many strikes within [`STRIKE_WINDOW`] pause polling: at most a stretch or two per
/// 100 ms (each can cost the woken thread up to a tick, 4 ms) is the price of polling on a
/// host that is not otherwise contended; more is a host whose CPUs are wanted.
const STRIKES: u32 = 3;

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
    /// This thread's usage at the last look, and when (`None`: look again before comparing,
    /// e.g. after a pause).
    last_look: Option<(Instant, ThreadUsage)>,
    /// Strikes since `strikes_since` (see [`STRIKES`]).
    strikes: u32,
    strikes_since: Option<Instant>,
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
            last_look: None,
            strikes: 0,
            strikes_since: None,
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
                self.last_look = None;
                self.strikes = 0;
                self.strikes_since = None;
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
            self.last_look = None;
            self.strikes = 0;
            self.strikes_since = None;
        }
    }

    /// Another task had this thread's CPU for a while ([`OFF_CPU_STRIKE`] or more) while it
    /// was runnable: a strike, and the [`STRIKES`]th within [`STRIKE_WINDOW`] pauses polling
    /// ([`Poller::contended`]). Adaptive only.
    pub fn preempted(&mut self) {
        self.strike_at(Instant::now());
    }

    fn strike_at(&mut self, now: Instant) {
        if !self.adaptive() || self.paused_until.is_some() {
            return;
        }
        match self.strikes_since {
            Some(since) if now.saturating_duration_since(since) < STRIKE_WINDOW => {
                self.strikes += 1;
            }
            _ => {
                self.strikes_since = Some(now);
                self.strikes = 1;
            }
        }
        if self.strikes >= STRIKES {
            self.contended();
        }
    }

    /// Before a spin (adaptive only): whether another task kept this thread off its CPU while
    /// it was runnable since the last look — then it is a strike ([`Poller::preempted`]) and
    /// the caller should not spin this time. One `getrusage` per spin; none while polling is
    /// off or paused.
    pub fn switched_out(&mut self) -> bool {
        if !self.adaptive() || self.paused_until.is_some() {
            return false;
        }
        let Some(usage) = ThreadUsage::now() else {
            return false;
        };
        let now = Instant::now();
        let before = self.last_look.replace((now, usage));
        let Some((then, before)) = before else {
            return false;
        };
        if off_cpu(then, &before, now, &usage) >= OFF_CPU_STRIKE {
            self.strike_at(now);
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

/// What the kernel counts for the calling thread (`getrusage(RUSAGE_THREAD)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThreadUsage {
    /// Times it blocked (slept) of its own accord.
    voluntary: i64,
    /// Times it was switched out while runnable (preempted, or a `sched_yield` that let
    /// another task run).
    involuntary: i64,
    /// CPU time it used (`CLOCK_THREAD_CPUTIME_ID`, exact: getrusage's times lag up to a
    /// tick for a running thread).
    cpu: Duration,
}

impl ThreadUsage {
    fn now() -> Option<Self> {
        // SAFETY: a zeroed rusage is a valid value for getrusage to fill in.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: RUSAGE_THREAD fills `usage` for the calling thread.
        if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) } != 0 {
            return None;
        }
        let mut cpu = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `cpu` is a valid timespec for the kernel to fill in.
        if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut cpu) } != 0 {
            return None;
        }
        Some(Self {
            voluntary: usage.ru_nvcsw,
            involuntary: usage.ru_nivcsw,
            cpu: Duration::new(
                cpu.tv_sec.max(0) as u64,
                cpu.tv_nsec.clamp(0, 999_999_999) as u32,
            ),
        })
    }
}

/// How long the thread was kept off its CPU while runnable between two looks: the wall time it
/// did not run, when it was switched out involuntarily and never slept in between. (When it
/// slept, that time is the sleep's, not another task's: nothing is counted.)
fn off_cpu(then: Instant, before: &ThreadUsage, now: Instant, after: &ThreadUsage) -> Duration {
    if after.involuntary == before.involuntary || after.voluntary != before.voluntary {
        return Duration::ZERO;
    }
    now.saturating_duration_since(then)
        .saturating_sub(after.cpu.saturating_sub(before.cpu))
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
    fn a_thread_kept_off_its_cpu_again_and_again_stops_polling() {
        let mut p = Poller::new(PollPolicy::from_options(None, 64));
        for _ in 0..4 {
            p.completed(us(50));
        }
        assert!(!p.switched_out(), "the first look only takes the count");
        // Another thread spins on this thread's CPU (both pinned there): every yield of this
        // one, which stays runnable, lets it run for a slice — a strike at each look.
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
        let mut strikes = 0;
        // (A guard against a host where the two cannot share a CPU, not a timing condition.)
        let give_up = Instant::now() + Duration::from_secs(30);
        while p.completion_window() != Duration::ZERO && Instant::now() < give_up {
            std::thread::yield_now();
            if p.switched_out() {
                strikes += 1;
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        hog.join().unwrap();
        if strikes == 0 {
            eprintln!("SKIPPED: this thread was never kept off its CPU by a thread pinned there");
            return;
        }
        assert_eq!(p.completion_window(), Duration::ZERO, "paused");
        assert!(strikes >= STRIKES, "{strikes} strikes paused polling");
        assert!(!p.switched_out(), "no look while paused");
    }

    #[test]
    fn strikes_far_apart_never_pause_polling_and_a_burst_does() {
        let mut p = Poller::new(PollPolicy::from_options(None, 64));
        for _ in 0..4 {
            p.completed(us(50));
        }
        let t0 = Instant::now();
        // One strike every 60 ms (a kernel thread now and then): never two windows' worth.
        for i in 0..20 {
            p.strike_at(t0 + Duration::from_millis(60 * i));
            assert_eq!(
                p.completion_window(),
                us(32),
                "strike {i} alone pauses nothing"
            );
        }
        // STRIKES within the window: paused.
        let t1 = t0 + Duration::from_secs(5);
        for i in 0..u64::from(STRIKES) {
            assert_eq!(p.completion_window(), us(32));
            p.strike_at(t1 + Duration::from_millis(10 * i));
        }
        assert_eq!(p.completion_window(), Duration::ZERO, "paused");
    }

    #[test]
    fn only_time_off_the_cpu_while_runnable_counts() {
        let t0 = Instant::now();
        let t1 = t0 + us(500);
        let at = |voluntary, involuntary, cpu_us| ThreadUsage {
            voluntary,
            involuntary,
            cpu: us(cpu_us),
        };
        // Switched out once, ran 300 of the 500 µs: 200 µs another task's.
        assert_eq!(off_cpu(t0, &at(5, 7, 1000), t1, &at(5, 8, 1300)), us(200));
        // Never switched out involuntarily: whatever the wall time, nothing.
        assert_eq!(
            off_cpu(t0, &at(5, 7, 1000), t1, &at(5, 7, 1010)),
            Duration::ZERO
        );
        // It slept meanwhile: the time is the sleep's.
        assert_eq!(
            off_cpu(t0, &at(5, 7, 1000), t1, &at(6, 8, 1010)),
            Duration::ZERO
        );
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
