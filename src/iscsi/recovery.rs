//! Connection loss at ErrorRecoveryLevel 0 (RFC 7143 §7.1.5, §6.3.5): the caller drops the failed
//! connection, keeps its outstanding commands ([`super::session::Session::take_outstanding`]),
//! reinstates the session on a new connection (same ISID, TSIH 0) after a backoff of at least
//! DefaultTime2Wait, and reissues the commands.
//!
//! This module gives the pieces: the backoff schedule, the reinstatement login configuration,
//! and a retry loop for callers that may connect (the supervisor).

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::login::{self, LoginConfig, LoginError, SessionParams};

/// Exponential backoff between reconnection attempts, never below the negotiated
/// DefaultTime2Wait (§13.15), with up to 25% random jitter so that many initiators that lost the
/// same target do not come back in lockstep.
#[derive(Clone, Debug)]
pub struct Backoff {
    attempt: u32,
    initial: Duration,
    max: Duration,
    min_wait: Duration,
}

impl Backoff {
    /// `time2wait`: DefaultTime2Wait in seconds from the lost session's parameters.
    pub fn new(time2wait: u16) -> Self {
        Self {
            attempt: 0,
            initial: Duration::from_millis(100),
            max: Duration::from_secs(10),
            min_wait: Duration::from_secs(u64::from(time2wait)),
        }
    }

    /// Overrides the first delay and the cap.
    pub fn with_limits(mut self, initial: Duration, max: Duration) -> Self {
        self.initial = initial;
        self.max = max.max(initial);
        self
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let mut j = [0u8; 2];
        let jitter = if getrandom::fill(&mut j).is_ok() {
            exp.mul_f64(f64::from(u16::from_le_bytes(j)) / f64::from(u16::MAX) * 0.25)
        } else {
            Duration::ZERO
        };
        (exp + jitter).max(self.min_wait)
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// The login configuration that reinstates the session `lost` (§6.3.5): same initiator name,
/// target and ISID, TSIH 0, so the target closes the old session and its tasks.
pub fn reinstatement_config(cfg: &LoginConfig, lost: &SessionParams) -> LoginConfig {
    let mut c = cfg.clone();
    c.isid = lost.isid;
    c.tsih = 0;
    c
}

/// True for login failures that retrying will not fix (wrong credentials, negotiation
/// impossible, redirection refused by policy); a target that is restarting or not yet
/// configured ("target not found", "service unavailable", connection refused) is retried.
pub fn is_permanent(e: &LoginError) -> bool {
    e.is_auth_failure()
        || matches!(
            e,
            LoginError::Negotiation(_)
                | LoginError::RedirectNotAllowed(_)
                | LoginError::TooManyRedirects
                | LoginError::Refused {
                    class: 2,
                    detail: 5 | 7 | 9
                }
        )
}

/// Logs in again until it works, a permanent error occurs or `deadline` passes, sleeping per
/// `backoff` between attempts.
pub fn reconnect(
    portal: SocketAddr,
    cfg: &LoginConfig,
    backoff: &mut Backoff,
    deadline: Instant,
    connect_timeout: Duration,
    max_redirects: usize,
    allow: &dyn Fn(&SocketAddr) -> bool,
) -> Result<(TcpStream, SessionParams), LoginError> {
    loop {
        let delay = backoff.next_delay();
        if Instant::now() + delay > deadline {
            return Err(LoginError::Connect {
                portal: portal.to_string(),
                source: std::io::ErrorKind::TimedOut.into(),
            });
        }
        std::thread::sleep(delay);
        match login::login_tcp(portal, cfg, connect_timeout, max_redirects, allow) {
            Ok(r) => return Ok(r),
            Err(e) if is_permanent(&e) => return Err(e),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_respects_time2wait() {
        let mut b = Backoff::new(0).with_limits(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        assert!(d[0] >= Duration::from_millis(100) && d[0] <= Duration::from_millis(125));
        assert!(d[1] >= Duration::from_millis(200) && d[1] <= Duration::from_millis(250));
        assert!(d[7] >= Duration::from_secs(1) && d[7] <= Duration::from_millis(1250));
        assert_eq!(b.attempts(), 8);
        let mut b = Backoff::new(2);
        assert!(b.next_delay() >= Duration::from_secs(2));
        // Huge attempt counts do not overflow.
        let mut b = Backoff::new(0);
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_millis(12500));
        }
    }

    #[test]
    fn permanent_errors() {
        assert!(is_permanent(&LoginError::Refused {
            class: 2,
            detail: 1
        }));
        assert!(is_permanent(&LoginError::Auth("x")));
        assert!(!is_permanent(&LoginError::Refused {
            class: 2,
            detail: 3
        }));
        assert!(!is_permanent(&LoginError::Refused {
            class: 3,
            detail: 1
        }));
    }
}
