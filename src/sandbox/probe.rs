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

use std::{io, sync::OnceLock};

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

fn attempt(what: &str, parent: libc::pid_t) -> io::Result<()> {
    // SAFETY (all blocks below): each is one system call with valid, NUL-terminated or
    // correctly sized arguments; the probe exits right afterwards whatever happens.
    match what {
        "open" => result(unsafe { libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY) }.into()),
        "socket" => result(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) }.into()),
        "connect" => {
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
            result(fd.into())?;
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 9u16.to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
                },
                sin_zero: [0; 8],
            };
            result(
                unsafe {
                    libc::connect(
                        fd,
                        (&addr as *const libc::sockaddr_in).cast(),
                        std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                    )
                }
                .into(),
            )
        }
        "execve" => {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            result(unsafe { libc::execve(argv[0], argv.as_ptr(), envp.as_ptr()) }.into())
        }
        "ptrace" => result(unsafe {
            libc::ptrace(
                libc::PTRACE_ATTACH,
                parent,
                std::ptr::null_mut::<libc::c_void>(),
                0,
            )
        }),
        "kill-parent" => result(unsafe { libc::kill(parent, 0) }.into()),
        "mmap-exec" => {
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
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        }
        "setuid" => result(unsafe { libc::setresuid(0, 0, 0) }.into()),
        "heap-trim" => {
            // Not forbidden: glibc frees memory at the top of a thread's own malloc heap, as
            // every exiting thread does, which once made it open /proc/sys/vm/overcommit_memory
            // (check_may_shrink_heap) under the filters. Must complete.
            std::thread::spawn(|| {
                let blocks: Vec<Vec<u8>> = (0..256).map(|i| vec![i as u8; 64 << 10]).collect();
                drop(blocks);
            })
            .join()
            .map_err(|_| io::Error::other("heap-trim thread panicked"))
        }
        "io-uring" => {
            // Allowed to the main and vring roles (the io-uring engine), not to the aio pool.
            let mut params = [0u8; 120]; // struct io_uring_params
            result(unsafe { libc::syscall(libc::SYS_io_uring_setup, 4, params.as_mut_ptr()) })
        }
        other => Err(io::Error::other(format!("unknown probe {other}"))),
    }
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
