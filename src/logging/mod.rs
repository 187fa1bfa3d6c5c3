//! Logging setup: the system log (`--syslog`) or stderr.
//!
//! Stderr lines look like `2024-05-01T12:34:56.789Z [INFO vhost_user_scsi::cli] message`
//! (UTC timestamp, level, module). Syslog messages go to facility `daemon` under the process
//! name `vhost-user-scsi`; when no syslog daemon is reachable (`/dev/log` missing, e.g. in a
//! container) logging falls back to stderr with a warning rather than failing.

pub mod relay;

use std::{
    io::Write,
    sync::{atomic::Ordering, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use log::{Log, Metadata, Record};

use crate::config::LogConfig;

/// Bounds a kind of log line that input can repeat without end (a failing disk fails every
/// command): at most `burst` lines per `window`; the lines held back are counted and the count
/// is reported with the next line let through.
pub struct RateLimit {
    burst: u32,
    window: Duration,
    /// Start of the current window, lines let through in it, lines held back since the last
    /// line let through.
    state: Mutex<(Option<Instant>, u32, u64)>,
}

impl RateLimit {
    pub const fn new(burst: u32, window: Duration) -> Self {
        Self {
            burst,
            window,
            state: Mutex::new((None, 0, 0)),
        }
    }

    /// `Some(lines held back since the last one)` when this line may be logged.
    pub fn admit(&self) -> Option<u64> {
        self.admit_at(Instant::now())
    }

    fn admit_at(&self, now: Instant) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (start, passed, held) = &mut *state;
        if start.map_or(true, |s| now.duration_since(s) >= self.window) {
            *start = Some(now);
            *passed = 0;
        }
        if *passed >= self.burst {
            *held += 1;
            return None;
        }
        *passed += 1;
        Some(std::mem::take(held))
    }
}

/// Process name used for syslog messages.
pub const SYSLOG_IDENT: &str = "vhost-user-scsi";

/// Why [`init`] failed.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("cannot install logger: a logger is already installed")]
    AlreadyInitialized(#[from] log::SetLoggerError),
}

/// Installs the global logger described by `cfg` and sets the maximum level. Call once, early
/// (before forking the worker).
///
/// Without `--syslog`, every process writes [`format_line`] lines to stderr (the worker's
/// stderr is a pipe the supervisor copies). With it, the supervisor's records go to syslog
/// and, once [`relay::become_worker`] was called in the worker, the worker writes
/// `[LEVEL target] message` lines ([`record_text`]) to stderr, which the supervisor forwards to
/// syslog at their level ([`relay::relay_line`]). When no syslog daemon is reachable, stderr.
pub fn init(cfg: &LogConfig) -> Result<(), LoggingError> {
    let mut syslog_failure = None;
    let logger: Box<dyn Log> = if cfg.syslog {
        match syslog_logger() {
            Ok(syslog) => {
                relay::SYSLOG.store(true, Ordering::Relaxed);
                Box::new(SplitLogger { syslog })
            }
            Err(e) => {
                syslog_failure = Some(e);
                Box::new(StderrLogger)
            }
        }
    } else {
        Box::new(StderrLogger)
    };
    log::set_boxed_logger(logger)?;
    log::set_max_level(cfg.level);
    if let Some(e) = syslog_failure {
        log::warn!("syslog is not available ({e}), logging to stderr instead");
    }
    Ok(())
}

/// The one connection to syslog: facility `daemon`, under [`SYSLOG_IDENT`].
fn syslog_logger() -> Result<syslog::BasicLogger, syslog::Error> {
    let formatter = syslog::Formatter3164 {
        facility: syslog::Facility::LOG_DAEMON,
        hostname: None,
        process: SYSLOG_IDENT.to_owned(),
        pid: std::process::id(),
    };
    syslog::unix(formatter).map(syslog::BasicLogger::new)
}

/// With `--syslog`: syslog in the supervisor, `[LEVEL target] message` lines on stderr in the
/// worker (relayed by the supervisor).
struct SplitLogger {
    syslog: syslog::BasicLogger,
}

impl Log for SplitLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        if relay::IN_WORKER.load(Ordering::Relaxed) {
            let line = record_text(record);
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        } else {
            self.syslog.log(record);
        }
    }

    fn flush(&self) {}
}

/// Writes one line per record to stderr.
struct StderrLogger;

impl Log for StderrLogger {
    fn enabled(&self, metadata: &Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &Record) {
        if self.enabled(record.metadata()) {
            let line = format_line(SystemTime::now(), record);
            // Nowhere to report a failing stderr.
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {
        let _ = std::io::stderr().flush();
    }
}

/// `TIMESTAMP [LEVEL target] message\n`: a line on stderr.
fn format_line(now: SystemTime, record: &Record) -> String {
    format!("{} {}", timestamp(now), record_text(record))
}

/// `[LEVEL target] message\n`: a record without its time (the worker's lines under `--syslog`,
/// which the supervisor parses back in [`relay::relay_line`]).
fn record_text(record: &Record) -> String {
    format!(
        "[{} {}] {}\n",
        record.level(),
        record.target(),
        record.args()
    )
}

/// RFC 3339 UTC timestamp with milliseconds, e.g. `2024-05-01T12:34:56.789Z`.
fn timestamp(now: SystemTime) -> String {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_783), (2024, 3, 1));
        assert_eq!(
            timestamp(UNIX_EPOCH + Duration::from_millis(1_714_566_896_789)),
            "2024-05-01T12:34:56.789Z"
        );
        assert_eq!(timestamp(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
    }

    #[test]
    fn line_format() {
        let line = format_line(
            UNIX_EPOCH,
            &Record::builder()
                .args(format_args!("hello {}", 42))
                .level(log::Level::Warn)
                .target("vhost_user_scsi::cli")
                .build(),
        );
        assert_eq!(
            line,
            "1970-01-01T00:00:00.000Z [WARN vhost_user_scsi::cli] hello 42\n"
        );
    }
}

#[cfg(test)]
mod rate_limit_tests {
    use super::*;

    #[test]
    fn lets_a_burst_through_per_window_and_counts_the_rest() {
        let limit = RateLimit::new(2, Duration::from_secs(10));
        let t0 = Instant::now();
        assert_eq!(limit.admit_at(t0), Some(0));
        assert_eq!(limit.admit_at(t0), Some(0));
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(1)), None);
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(9)), None);
        // A new window: the next line carries the count of those held back.
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(10)), Some(0));
        assert_eq!(limit.admit_at(t0 + Duration::from_secs(11)), None);
    }
}
