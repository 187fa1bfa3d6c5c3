//! Logging across the process split.
//!
//! The worker never talks to syslog: its stderr is a pipe the supervisor reads. With `--syslog`,
//! the global logger ([`super::init`]) sends the supervisor's records to syslog and, once
//! [`become_worker`] was called in the worker, writes `[LEVEL target] message` lines to stderr
//! instead; the supervisor forwards each relayed line to syslog at its level, under the target
//! `worker[PID]`. Without `--syslog`, both processes use the stderr logger and every relayed
//! line is prefixed with `worker[PID]: `.
//!
//! The worker may be compromised, so what it writes is hostile text: a line is at most
//! [`MAX_LINE`] bytes (the rest is dropped and the cut is said), control bytes, backslashes and
//! invalid UTF-8 are escaped (`\xNN`, `\\`), and every line carries the worker's mark, so that
//! no worker output can pose as a supervisor line or rewrite the terminal. Its SIGSYS report
//! (`seccomp: ...`) is only remembered as the *last* line it wrote: the supervisor trusts it only
//! when the exit status says the SIGSYS reporter ended the worker (`supervisor::monitor`).

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

/// Longest relayed line, in bytes of worker output (before escaping). Longer lines are cut
/// here and the rest up to the next newline is dropped: the relay holds at most this much.
pub const MAX_LINE: usize = 4096;

/// What a cut line ends with.
const TRUNCATED: &str = " [worker line truncated]";

/// Called in the worker right after the fork: from now on records go to stderr.
pub fn become_worker() {
    IN_WORKER.store(true, Ordering::Relaxed);
}

/// `line` with every byte that could act on a terminal or a log reader escaped: C0 controls
/// (tab excepted), DEL, C1 controls and invalid UTF-8 as `\xNN` (C1 as `\u{NN}`), and the
/// backslash itself as `\\`, so that an escape in the output always means one of these.
pub fn escape(line: &[u8]) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while !rest.is_empty() {
        let (valid, bad) = match std::str::from_utf8(rest) {
            Ok(s) => (s, &[][..]),
            Err(e) => {
                let (v, b) = rest.split_at(e.valid_up_to());
                // The first `valid_up_to` bytes are valid UTF-8 by definition.
                (std::str::from_utf8(v).unwrap_or_default(), b)
            }
        };
        for c in valid.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\t' => out.push('\t'),
                c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                    out.push_str(&format!("\\x{:02x}", c as u32))
                }
                c if (0x80..0xa0).contains(&(c as u32)) => {
                    out.push_str(&format!("\\u{{{:02x}}}", c as u32))
                }
                c => out.push(c),
            }
        }
        match bad.first() {
            Some(&b) => {
                out.push_str(&format!("\\x{b:02x}"));
                rest = &bad[1..];
            }
            None => rest = &[],
        }
    }
    out
}

/// Supervisor side: forwards one line the worker wrote to its stderr (already escaped, without
/// its newline), marked as the worker's.
pub fn relay_line(pid: libc::pid_t, text: &str) {
    if !SYSLOG.load(Ordering::Relaxed) {
        let _ = writeln!(std::io::stderr().lock(), "worker[{pid}]: {text}");
        return;
    }
    let (level, rest) = parse_level(text.trim_end());
    let target = format!("worker[{pid}]");
    log::log!(target: &target, level, "{rest}");
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

/// Splits what the worker wrote into bounded, escaped lines and relays them; remembers its
/// SIGSYS report while it is the last line.
pub struct Relay {
    pid: libc::pid_t,
    /// Bytes of the current line (at most [`MAX_LINE`]).
    partial: Vec<u8>,
    /// The current line was cut: drop everything up to the next newline.
    skipping: bool,
    /// The worker's last line, when it was a SIGSYS report (`seccomp: ...`, escaped): any
    /// later line clears it (the reporter's line is the last thing the worker writes).
    last_seccomp_line: Option<String>,
}

impl Relay {
    /// A relay for the worker `pid` (the mark on its lines).
    pub fn new(pid: libc::pid_t) -> Self {
        Self {
            pid,
            partial: Vec::new(),
            skipping: false,
            last_seccomp_line: None,
        }
    }

    /// Relays every complete line in `data`; keeps the start of an unfinished one.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (chunk, ends_line) = match newline {
                Some(pos) => (&data[..pos], true),
                None => (data, false),
            };
            data = newline.map_or(&[][..], |pos| &data[pos + 1..]);
            if self.skipping {
                self.skipping = !ends_line;
                continue;
            }
            let room = MAX_LINE - self.partial.len();
            if chunk.len() > room {
                self.partial.extend_from_slice(&chunk[..room]);
                self.emit(true);
                self.skipping = !ends_line;
                continue;
            }
            self.partial.extend_from_slice(chunk);
            if ends_line {
                self.emit(false);
            }
        }
    }

    /// Relays the unfinished line, if any (the worker's end was closed).
    pub fn finish(&mut self) {
        if !self.partial.is_empty() {
            self.emit(false);
        }
        self.skipping = false;
    }

    /// The worker's SIGSYS report, if the last line it wrote was one.
    pub fn seccomp_report(&self) -> Option<&str> {
        self.last_seccomp_line.as_deref()
    }

    fn emit(&mut self, truncated: bool) {
        let line = std::mem::take(&mut self.partial);
        let mut text = escape(&line);
        self.last_seccomp_line =
            (!truncated && text.starts_with("seccomp: ")).then(|| text.clone());
        if truncated {
            text.push_str(TRUNCATED);
        }
        relay_line(self.pid, &text);
    }
}

/// Reads `fd` until EOF (blocking), relaying every line through `relay`.
pub fn drain(fd: BorrowedFd<'_>, relay: &mut Relay) {
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

    #[test]
    fn control_bytes_and_bad_utf8_are_escaped() {
        assert_eq!(escape(b"plain text\tok"), "plain text\tok");
        assert_eq!(escape(b"\x1b[2J\r\x00x\x7f"), "\\x1b[2J\\x0d\\x00x\\x7f");
        assert_eq!(escape(b"a\\x1b"), "a\\\\x1b");
        assert_eq!(escape(b"\xff\xfeok\xc3"), "\\xff\\xfeok\\xc3");
        assert_eq!(escape("é\u{9b}".as_bytes()), "é\\u{9b}");
    }

    #[test]
    fn lines_are_bounded_and_the_relay_holds_at_most_one_line() {
        let mut relay = Relay::new(1);
        let long = vec![b'A'; 10 * MAX_LINE];
        for chunk in long.chunks(1000) {
            relay.feed(chunk);
            assert!(relay.partial.len() <= MAX_LINE);
        }
        assert!(relay.skipping);
        // The rest of the long line is dropped; the next line is whole again.
        relay.feed(b"AAAA\nseccomp: thread t made forbidden syscall 1 (write)\n");
        assert!(!relay.skipping);
        assert_eq!(
            relay.seccomp_report(),
            Some("seccomp: thread t made forbidden syscall 1 (write)")
        );
    }

    #[test]
    fn a_seccomp_report_counts_only_as_the_last_line() {
        let mut relay = Relay::new(1);
        relay.feed(b"seccomp: thread t made forbidden syscall 59 (execve)\n");
        assert!(relay.seccomp_report().is_some());
        relay.feed(b"more output\n");
        assert_eq!(relay.seccomp_report(), None);
        // An unfinished report at EOF still counts (the reporter always ends its line, but a
        // cut pipe must not make the relay lose it).
        relay.feed(b"seccomp: thread t made forbidden syscall 41 (socket)");
        relay.finish();
        assert_eq!(
            relay.seccomp_report(),
            Some("seccomp: thread t made forbidden syscall 41 (socket)")
        );
        // A truncated line is never a report.
        let mut relay = Relay::new(1);
        let mut fake = b"seccomp: ".to_vec();
        fake.resize(MAX_LINE + 1, b'x');
        relay.feed(&fake);
        relay.feed(b"\n");
        assert_eq!(relay.seccomp_report(), None);
    }
}
