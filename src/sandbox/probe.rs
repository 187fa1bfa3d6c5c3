//! Confinement probes, compiled into debug builds only (`cargo test` builds the binary in the
//! dev profile; release builds and packages have none of this code).
//!
//! `VHOST_USER_SCSI_PROBE=<what>[@<where>]` makes the jailed worker attempt one forbidden
//! action: in the main thread right after its filters are installed (`@main`, the default), or
//! in a vring worker / the protocol thread / an `--aio=threads` pool thread / the signal thread
//! right after it stacked its role (`@vring`, `@protocol`, `@aio`, `@signals`), or in the
//! supervisor right after it confined itself (`@supervisor`). It prints
//! `probe <what>@<where>: denied: <error>` and exits with [`EXIT_PROBE_DENIED`], or prints
//! `... ALLOWED` and exits with [`EXIT_PROBE_ALLOWED`]; under a seccomp filter the process is
//! usually killed before it can print anything.
//!
//! What, forbidden everywhere: `open` (/etc/passwd), `socket` (AF_INET), `connect` (TCP to
//! 127.0.0.1:9), `execve` (/bin/true), `ptrace` (attach to the supervisor), `kill-parent`
//! (signal 0 to the supervisor), `mmap-exec` (anonymous PROT_EXEC mapping), `setuid` (back to
//! root), `io-uring` (`io_uring_setup`: rings are made before the filters),
//! `io-uring-register-files` (a new fixed-file table), `fallocate-grow` (`fallocate` mode 0).
//!
//! Allowed by `worker-main` but not by every narrower role, so that a role made too broad shows
//! (each on a closed fd: EBADF where allowed): `accept` (main, protocol), `recvmsg` (main, protocol),
//! `io-uring-enter` and `io-uring-register-update` (main, vring), `fallocate-punch` (PUNCH_HOLE
//! | KEEP_SIZE: main, vring, aio).
//!
//! From the confined supervisor: `kill-any` (signal 0 to every process: only the worker's pidfd
//! may be signalled). Hostile output: `forge-log` (a line far longer than the relay's cap,
//! terminal escapes, a line dressed as the supervisor's and a fake SIGSYS report naming
//! `execve`; then `socket`, so that the worker really ends by SIGSYS, with the fake report as
//! its last line).
//!
//! Not forbidden: `heap-trim` (a thread that fills and frees its malloc heap: must not be
//! killed).

use std::{
    ffi::CStr,
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::OnceLock,
};

use nix::{
    fcntl::{self, OFlag},
    sys::{
        ptrace, signal,
        socket::{self, AddressFamily, SockFlag, SockType, SockaddrIn},
        stat::Mode,
    },
    unistd::{self, Pid, Uid},
};

use super::role::ThreadRole;

/// Environment variable naming the probe.
pub const PROBE_ENV: &str = "VHOST_USER_SCSI_PROBE";
/// The worker's exit status when the probed action was refused with an error.
pub const EXIT_PROBE_DENIED: i32 = 40;
/// The worker's exit status when the probed action succeeded (a confinement failure).
pub const EXIT_PROBE_ALLOWED: i32 = 41;

struct Probe {
    what: String,
    place: String,
    parent: libc::pid_t,
}

static PROBE: OnceLock<Option<Probe>> = OnceLock::new();

/// Reads the probe request (supervisor side, before forking; the worker inherits it).
pub fn prepare(parent: libc::pid_t) {
    PROBE.get_or_init(|| {
        let spec = std::env::var(PROBE_ENV).ok()?;
        let (what, place) = spec.split_once('@').unwrap_or((spec.as_str(), "main"));
        Some(Probe {
            what: what.to_owned(),
            place: place.to_owned(),
            parent,
        })
    });
}

fn result(ret: libc::c_long) -> io::Result<()> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One forbidden action, as one system call each (the probe exits right afterwards whatever
/// happens).
fn attempt(what: &str, parent: libc::pid_t) -> io::Result<()> {
    let parent = Pid::from_raw(parent);
    match what {
        "open" => fcntl::open("/etc/passwd", OFlag::O_RDONLY, Mode::empty()).map(drop),
        "socket" => inet_socket().map(drop),
        "connect" => {
            let fd = inet_socket()?;
            socket::connect(fd.as_raw_fd(), &SockaddrIn::new(127, 0, 0, 1, 9))
        }
        "execve" => unistd::execve::<&CStr, &CStr>(c"/bin/true", &[c"/bin/true"], &[]).map(drop),
        "ptrace" => ptrace::attach(parent),
        "kill-parent" => signal::kill(parent, None),
        "mmap-exec" => {
            // SAFETY: a fresh anonymous mapping that nothing refers to; it is never touched.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_EXEC,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        }
        "setuid" => {
            let root = Uid::from_raw(0);
            unistd::setresuid(root, root, root)
        }
        "heap-trim" => {
            // Not forbidden: glibc frees memory at the top of a thread's own malloc heap, as
            // every exiting thread does, which once made it open /proc/sys/vm/overcommit_memory
            // (check_may_shrink_heap) under the filters. Must complete.
            return std::thread::spawn(|| {
                let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 64 << 10]).collect();
                drop(blocks);
            })
            .join()
            .map_err(|_| io::Error::other("heap-trim thread panicked"));
        }
        // The io_uring probes: only the roles of the threads that use a ring allow anything
        // (`@main`, `@vring`), and nobody may make a ring or register files wholesale.
        "io-uring" => {
            // struct io_uring_params
            let mut params = [0u8; 120];
            // SAFETY: io_uring_setup writes at most sizeof(struct io_uring_params) (120 bytes)
            // into `params`.
            return result(unsafe {
                libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr())
            });
        }
        // From the confined supervisor (`@supervisor`): signal 0 to every process it could
        // reach (`kill(-1)`): only its worker's pidfd may be signalled.
        "kill-any" => signal::kill(Pid::from_raw(-1), None),
        "forge-log" => {
            let mut out = vec![b'A'; 64 << 10];
            out.extend_from_slice(b"\n\x1b[2J\x1b]0;owned\x07cleared the screen\r\n");
            // A forged supervisor line (the module path spelled in pieces: it is text, not an
            // import, and import checkers read source text).
            out.extend_from_slice(
                concat!(
                    "2026-01-01T00:00:00.000Z [INFO vhost_user_scsi",
                    "::supervisor::monitor] worker 1 exited normally\n"
                )
                .as_bytes(),
            );
            out.extend_from_slice(
                b"seccomp: thread vus-worker made forbidden syscall 59 (execve)\n",
            );
            // SAFETY: write(2) of an initialised buffer.
            unsafe { libc::write(libc::STDERR_FILENO, out.as_ptr().cast(), out.len()) };
            inet_socket().map(drop)
        }
        "io-uring-enter" => io_uring_enter_probe(),
        // IORING_REGISTER_FILES: a whole new fixed-file table.
        "io-uring-register-files" => io_uring_register_probe(2),
        // IORING_REGISTER_FILES_UPDATE: the kick slot's update.
        "io-uring-register-update" => io_uring_register_probe(6),
        // Allowed to the main thread and the protocol role (the accepting thread).
        "accept" => socket::accept4(-1, SockFlag::SOCK_CLOEXEC).map(drop),
        // Allowed to the main and protocol threads (front-end messages).
        "recvmsg" => {
            // SAFETY: fd -1; the header is zeroed (no buffers): the kernel fails with EBADF
            // before reading it.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            // SAFETY: as above.
            return result(unsafe { libc::recvmsg(-1, &mut msg, 0) } as libc::c_long);
        }
        // fallocate with the modes the data path uses (allowed to main, vring and aio), and
        // without KEEP_SIZE (growing a file: allowed to nobody).
        "fallocate-punch" => {
            fallocate_probe(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
        }
        "fallocate-grow" => fallocate_probe(0),
        other => return Err(io::Error::other(format!("unknown probe {other}"))),
    }
    .map_err(io::Error::from)
}

/// `io_uring_enter(-1, 0, 0, 0, NULL, 0)`: EBADF where seccomp lets it through.
fn io_uring_enter_probe() -> nix::Result<()> {
    // SAFETY: no fd, no argument memory: the kernel reads nothing.
    let ret = unsafe { libc::syscall(libc::SYS_io_uring_enter, -1, 0, 0, 0, 0usize, 0) };
    nix::errno::Errno::result(ret).map(drop)
}

/// `io_uring_register(-2, opcode, NULL, 0)`: EBADF where seccomp lets `opcode` through (fd -1
/// would be a request without a ring, which the kernel refuses with EINVAL instead).
fn io_uring_register_probe(opcode: libc::c_long) -> nix::Result<()> {
    // SAFETY: no fd, no argument memory: the kernel reads nothing.
    let ret = unsafe { libc::syscall(libc::SYS_io_uring_register, -2, opcode, 0usize, 0) };
    nix::errno::Errno::result(ret).map(drop)
}

/// `fallocate(-1, mode, 0, 4096)`: EBADF where seccomp lets `mode` through.
fn fallocate_probe(mode: libc::c_int) -> nix::Result<()> {
    // SAFETY: integer arguments only; fd -1 names no file.
    nix::errno::Errno::result(unsafe { libc::fallocate(-1, mode, 0, 4096) }).map(drop)
}

fn inet_socket() -> nix::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::empty(),
        None,
    )
}

fn run(place: &str) {
    let Some(Some(probe)) = PROBE.get() else {
        return;
    };
    if probe.place != place {
        return;
    }
    let (line, code) = match attempt(&probe.what, probe.parent) {
        Ok(()) => (
            format!("probe {}@{place}: ALLOWED\n", probe.what),
            EXIT_PROBE_ALLOWED,
        ),
        Err(e) => (
            format!("probe {}@{place}: denied: {e}\n", probe.what),
            EXIT_PROBE_DENIED,
        ),
    };
    // SAFETY: write(2) of an initialised buffer, then _exit(2).
    unsafe {
        libc::write(libc::STDERR_FILENO, line.as_ptr().cast(), line.len());
        libc::_exit(code);
    }
}

/// Runs a `@main` probe (worker main thread, after its filters are installed).
pub fn run_in_main() {
    run("main");
}

/// Runs a `@supervisor` probe (the supervisor, right after it confined itself).
pub fn run_in_supervisor() {
    run("supervisor");
}

/// Runs a `@vring` / `@protocol` / `@aio` / `@signals` probe right after that thread stacked
/// its role.
pub fn run_in_thread(role: ThreadRole) {
    match role {
        ThreadRole::WorkerVring => run("vring"),
        ThreadRole::WorkerProtocol => run("protocol"),
        ThreadRole::WorkerAio => run("aio"),
        ThreadRole::WorkerIscsi => run("iscsi"),
        ThreadRole::WorkerSignals => run("signals"),
        ThreadRole::WorkerBroker => run("broker"),
        _ => {}
    }
}
