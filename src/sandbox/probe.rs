//! Confinement probes, compiled into debug builds only (`cargo test` builds the binary in the
//! dev profile; release builds and packages have none of this code).
//!
//! `VHOST_USER_SCSI_PROBE=<what>[@<where>]` makes the jailed worker attempt one forbidden
//! action: in the main thread right after its filters are installed (`@main`, the default), or
//! in a vring worker / the protocol thread / an `--aio=threads` pool thread right after it
//! stacked its role (`@vring`, `@protocol`, `@aio`). It prints `probe <what>@<where>: denied: <error>` and exits with
//! [`EXIT_PROBE_DENIED`], or prints `... ALLOWED` and exits with [`EXIT_PROBE_ALLOWED`]; under a
//! seccomp filter the process is usually killed before it can print anything.
//!
//! What: `open` (/etc/passwd), `socket` (AF_INET), `connect` (TCP to 127.0.0.1:9), `execve`
//! (/bin/true), `ptrace` (attach to the supervisor), `kill-parent` (signal 0 to the
//! supervisor), `mmap-exec` (anonymous PROT_EXEC mapping), `setuid` (back to root),
//! `io-uring` (`io_uring_setup`: allowed to the main and vring roles, not to the aio pool),
//! `heap-trim` (a thread that fills and frees its malloc heap: allowed, must not be killed).

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
        "io-uring" => {
            // Allowed to the main and vring roles (the io-uring engine), not to the aio pool.
            let mut params = [0u8; 120]; // struct io_uring_params
                                         // SAFETY: io_uring_setup writes at most sizeof(struct io_uring_params) (120 bytes)
                                         // into `params`.
            return result(unsafe {
                libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr())
            });
        }
        other => return Err(io::Error::other(format!("unknown probe {other}"))),
    }
    .map_err(io::Error::from)
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

/// Runs a `@vring` / `@protocol` / `@aio` probe right after that thread stacked its role.
pub fn run_in_thread(role: ThreadRole) {
    match role {
        ThreadRole::WorkerVring => run("vring"),
        ThreadRole::WorkerProtocol => run("protocol"),
        ThreadRole::WorkerAio => run("aio"),
        _ => {}
    }
}
