//! Logging across the process split.
//!
//! The worker never talks to syslog: its stderr is a pipe the supervisor reads. With `--syslog`,
//! the global logger ([`super::init`]) sends the supervisor's records to syslog and, once
//! [`become_worker`] was called in the worker, writes `[LEVEL target] message` lines to stderr
//! instead; the supervisor forwards each relayed line to syslog at its level. Without
//! `--syslog`, both processes use the stderr logger and relayed lines are copied verbatim.

use std::{
    io::Write,
    os::fd::BorrowedFd,
    sync::atomic::{AtomicBool, Ordering},
};

use log::Level;
use nix::{
    errno::Errno,
    fcntl::{self, FcntlArg, OFlag},
    unistd,
};

/// Set in the worker right after the fork (its records go to stderr under `--syslog`).
pub(super) static IN_WORKER: AtomicBool = AtomicBool::new(false);
/// The supervisor logs to syslog (relayed lines are forwarded there, parsed by level).
pub(super) static SYSLOG: AtomicBool = AtomicBool::new(false);

/// Called in the worker right after the fork: from now on records go to stderr.
pub fn become_worker() {
    IN_WORKER.store(true, Ordering::Relaxed);
}

/// Supervisor side: forwards one line the worker wrote to its stderr.
pub fn relay_line(line: &[u8]) {
    if !SYSLOG.load(Ordering::Relaxed) {
        let _ = std::io::stderr().lock().write_all(line);
        return;
    }
    let text = String::from_utf8_lossy(line);
    let text = text.trim_end();
    let (level, rest) = parse_level(text);
    log::log!(target: "worker", level, "{rest}");
}

/// `[LEVEL target] message` → (LEVEL, `target] message`); other lines are warnings.
fn parse_level(text: &str) -> (Level, &str) {
    if let Some(rest) = text.strip_prefix('[') {
        if let Some((level, rest)) = rest.split_once(' ') {
            if let Ok(level) = level.parse::<Level>() {
                return (level, rest);
            }
        }
    }
    (Level::Warn, text)
}

/// Splits what the worker wrote into lines and relays them; remembers its SIGSYS report.
#[derive(Default)]
pub struct Relay {
    partial: Vec<u8>,
    /// The worker's SIGSYS report line (`seccomp: ...`), if it wrote one.
    pub seccomp_report: Option<String>,
}

impl Relay {
    pub fn feed(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=pos).collect();
            if line.starts_with(b"seccomp: ") {
                self.seccomp_report = Some(String::from_utf8_lossy(&line).trim_end().to_owned());
            }
            relay_line(&line);
        }
    }

    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            self.partial.push(b'\n');
            let rest = std::mem::take(&mut self.partial);
            self.feed(&rest);
        }
    }
}

/// Reads `fd` until EOF (blocking), relaying every line.
pub fn drain(fd: BorrowedFd<'_>, report: &mut Option<String>) {
    let mut relay = Relay::default();
    // Blocking again: read until the worker's end is closed.
    let _ = fcntl::fcntl(fd, FcntlArg::F_SETFL(OFlag::empty()));
    let mut buf = [0u8; 4096];
    loop {
        match unistd::read(fd, &mut buf) {
            Err(Errno::EINTR) => continue,
            Ok(0) | Err(_) => break,
            Ok(n) => relay.feed(&buf[..n]),
        }
    }
    relay.finish();
    if relay.seccomp_report.is_some() {
        *report = relay.seccomp_report;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_of_relayed_lines() {
        assert_eq!(parse_level("[INFO a::b] hi"), (Level::Info, "a::b] hi"));
        assert_eq!(
            parse_level("seccomp: thread x"),
            (Level::Warn, "seccomp: thread x")
        );
    }
}
