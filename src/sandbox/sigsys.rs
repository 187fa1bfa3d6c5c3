//! The SIGSYS reporter for `--seccomp=trap`.
//!
//! Async-signal-safe: no allocation, no lock, no logger. It formats
//! `seccomp: thread <comm> made forbidden syscall <nr> (<name>)` into a stack buffer, writes it to
//! stderr (the pipe the supervisor relays and remembers) and ends the process with
//! [`EXIT_SECCOMP_TRAP`]. Every role allows the three syscalls it uses: `prctl(PR_GET_NAME)`,
//! `write` and `exit_group`.

use std::io;

/// Exit status of a worker stopped by the SIGSYS reporter (128 + SIGSYS, as a shell reports it).
pub const EXIT_SECCOMP_TRAP: i32 = 128 + libc::SIGSYS;

/// `si_code` of a SIGSYS raised by seccomp.
const SYS_SECCOMP: libc::c_int = 1;

/// Installs the reporter as the SIGSYS handler of the process.
pub fn install() -> io::Result<()> {
    // SAFETY: a zeroed sigaction is valid; we fill in the handler and flags.
    let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
    act.sa_sigaction = handler as *const () as usize;
    act.sa_flags = libc::SA_SIGINFO;
    // SAFETY: `act.sa_mask` is a valid sigset_t owned by us.
    unsafe { libc::sigemptyset(&mut act.sa_mask) };
    // SAFETY: `act` is fully initialised; the old action is not requested.
    if unsafe { libc::sigaction(libc::SIGSYS, &act, std::ptr::null_mut()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The part of `siginfo_t` that SIGSYS fills in (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    si_signo: libc::c_int,
    si_errno: libc::c_int,
    si_code: libc::c_int,
    #[cfg(target_pointer_width = "64")]
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// A fixed buffer we can format into without allocating.
struct Buf {
    data: [u8; 160],
    len: usize,
}

impl Buf {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len < self.data.len() {
                self.data[self.len] = b;
                self.len += 1;
            }
        }
    }

    fn push_num(&mut self, mut n: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }
}

extern "C" fn handler(_sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    let mut buf = Buf {
        data: [0; 160],
        len: 0,
    };
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO handlers, and for SIGSYS its
    // layout starts with the fields of `SigsysInfo`.
    let info = unsafe { &*(info as *const SigsysInfo) };
    let mut comm = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes into `comm`.
    unsafe { libc::prctl(libc::PR_GET_NAME, comm.as_mut_ptr()) };
    let comm_len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    buf.push(b"seccomp: thread ");
    buf.push(&comm[..comm_len]);
    if info.si_code == SYS_SECCOMP {
        buf.push(b" made forbidden syscall ");
        buf.push_num(info.syscall as u64);
        buf.push(b" (");
        buf.push(syscall_name(i64::from(info.syscall)).as_bytes());
        buf.push(b")\n");
    } else {
        buf.push(b" got SIGSYS (not from seccomp)\n");
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf.data[..len]` is initialised.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.data.as_ptr().cast(), buf.len);
        libc::_exit(EXIT_SECCOMP_TRAP);
    }
}

/// Names of the syscalls a compromised or buggy worker is most likely to try (cheap: a match).
pub fn syscall_name(nr: i64) -> &'static str {
    macro_rules! names {
        ($($n:ident),* $(,)?) => {
            $(if nr == libc::$n { return &stringify!($n)[4..]; })*
        };
    }
    names!(
        SYS_read,
        SYS_write,
        SYS_openat,
        SYS_close,
        SYS_socket,
        SYS_connect,
        SYS_bind,
        SYS_listen,
        SYS_accept4,
        SYS_sendto,
        SYS_recvfrom,
        SYS_sendmsg,
        SYS_recvmsg,
        SYS_execve,
        SYS_execveat,
        SYS_ptrace,
        SYS_kill,
        SYS_tgkill,
        SYS_tkill,
        SYS_mmap,
        SYS_mprotect,
        SYS_munmap,
        SYS_madvise,
        SYS_clone,
        SYS_clone3,
        SYS_capset,
        SYS_setuid,
        SYS_setgid,
        SYS_setresuid,
        SYS_setresgid,
        SYS_prctl,
        SYS_seccomp,
        SYS_mount,
        SYS_umount2,
        SYS_pivot_root,
        SYS_unshare,
        SYS_setns,
        SYS_ioctl,
        SYS_fcntl,
        SYS_futex,
        SYS_getrandom,
        SYS_newfstatat,
        SYS_statx,
        SYS_fstat,
        SYS_lseek,
        SYS_pread64,
        SYS_pwrite64,
        SYS_preadv,
        SYS_pwritev,
        SYS_preadv2,
        SYS_pwritev2,
        SYS_fdatasync,
        SYS_fsync,
        SYS_fallocate,
        SYS_copy_file_range,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_eventfd2,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_sigaltstack,
        SYS_sched_getaffinity,
        SYS_sched_yield,
        SYS_rseq,
        SYS_set_robust_list,
        SYS_getpid,
        SYS_gettid,
        SYS_uname,
        SYS_unlinkat,
        SYS_mkdirat,
        SYS_bpf,
        SYS_perf_event_open,
        SYS_process_vm_readv,
        SYS_process_vm_writev,
        SYS_memfd_create,
        SYS_userfaultfd,
        SYS_io_uring_setup,
        SYS_wait4,
        SYS_waitid,
        SYS_exit,
        SYS_exit_group,
        SYS_shutdown,
        SYS_mremap,
        SYS_brk,
        SYS_ppoll,
        SYS_rt_sigtimedwait,
    );
    #[cfg(target_arch = "x86_64")]
    {
        names!(
            SYS_open,
            SYS_stat,
            SYS_lstat,
            SYS_poll,
            SYS_epoll_wait,
            SYS_fork,
            SYS_vfork,
            SYS_unlink,
            SYS_access,
            SYS_accept,
        );
    }
    "unknown"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(syscall_name(libc::SYS_openat), "openat");
        assert_eq!(syscall_name(libc::SYS_socket), "socket");
        assert_eq!(syscall_name(100_000), "unknown");
    }

    #[test]
    fn numbers() {
        let mut b = Buf {
            data: [0; 160],
            len: 0,
        };
        b.push_num(0);
        b.push(b" ");
        b.push_num(18_446_744_073_709_551_615);
        assert_eq!(&b.data[..b.len], b"0 18446744073709551615");
    }
}
