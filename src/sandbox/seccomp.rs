//! Seccomp: one filter per thread role, compiled at build time from `seccomp/<arch>/<role>.json`.
//!
//! Install order (filters are inherited by threads created later and can only be narrowed):
//! 1. The worker main thread installs `worker-enosys` (clone3 → ENOSYS, so that glibc falls back
//!    to `clone`, whose flags can be checked) and then `worker-main`, the union of what every
//!    worker thread needs, before it creates any thread.
//! 2. Every thread it creates later inherits both and stacks its own narrower role as its first
//!    action: the signal thread and the vring workers when they start ([`enter_role`]); the
//!    vhost-user protocol thread is started by a thread already in its role and inherits it
//!    ([`inherited_role_by_thread_name`] marks it so).
//!
//! Filters are installed with the raw `seccomp(2)` call (no `prctl(PR_SET_NO_NEW_PRIVS)`: that
//! was set once by the sandbox), so stacking needs only `seccomp(SECCOMP_SET_MODE_FILTER)` in
//! `worker-main`, and no other role allows `seccomp` at all.

use std::{cell::Cell, io, sync::OnceLock};

use seccompiler::sock_filter;

pub use super::role::ThreadRole;
use crate::config::SeccompMode;

include!(concat!(env!("OUT_DIR"), "/seccomp_filters.rs"));

/// Why a filter could not be found or installed.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error(
        "no seccomp policy for role {role} on {arch}; use --seccomp=none on this architecture"
    )]
    NoPolicy {
        role: ThreadRole,
        arch: &'static str,
    },
    #[error("seccomp policy {role} is empty")]
    EmptyProgram { role: ThreadRole },
    #[error("cannot install the seccomp filter of role {role}: {error}")]
    Install {
        role: ThreadRole,
        #[source]
        error: io::Error,
    },
    #[error("unknown seccomp role '{0}' (roles: supervisor, supervisor-management, supervisor-restart, worker-enosys, worker-main, worker-signals, worker-protocol, worker-vring, worker-aio, worker-broker)")]
    UnknownRole(String),
    #[error("--seccomp=none has no program to print")]
    NoneMode,
}

/// The architecture the embedded programs were compiled for.
pub fn arch() -> &'static str {
    ARCH
}

/// The embedded program of `role` for `mode` (`None` for `--seccomp=none`).
pub fn program(
    role: ThreadRole,
    mode: SeccompMode,
) -> Result<Option<&'static [sock_filter]>, SeccompError> {
    let index = match mode {
        SeccompMode::Kill => 0,
        SeccompMode::Trap => 1,
        SeccompMode::Log => 2,
        SeccompMode::None => return Ok(None),
    };
    PROGRAMS
        .iter()
        .find(|(name, _, _)| *name == role.name())
        .map(|(_, _, progs)| Some(progs[index]))
        .ok_or(SeccompError::NoPolicy { role, arch: ARCH })
}

/// The policy file text `role`'s programs were compiled from.
pub fn policy_source(role: ThreadRole) -> Option<&'static str> {
    PROGRAMS
        .iter()
        .find(|(name, _, _)| *name == role.name())
        .map(|(_, text, _)| *text)
}

/// Installs `role`'s filter on the calling thread (stacked on whatever it already has).
/// `PR_SET_NO_NEW_PRIVS` must already be set.
pub fn install(role: ThreadRole, mode: SeccompMode) -> Result<(), SeccompError> {
    let Some(prog) = program(role, mode)? else {
        return Ok(());
    };
    if prog.is_empty() {
        return Err(SeccompError::EmptyProgram { role });
    }
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        // The kernel only reads the program; seccompiler's sock_filter has the kernel layout.
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `fprog` points to `len` valid instructions that outlive the call; the kernel copies
    // the program.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if ret != 0 {
        return Err(SeccompError::Install {
            role,
            error: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The mode the worker's threads stack their roles with; set once, by the worker, after its
/// main-thread filter is installed. Unset (supervisor, tests, `--seccomp=none`): roles are not
/// stacked.
static WORKER_MODE: OnceLock<SeccompMode> = OnceLock::new();

thread_local! {
    static ROLE_ENTERED: Cell<bool> = const { Cell::new(false) };
}

/// Records that worker threads must stack their roles in `mode` from now on.
pub fn enable_thread_roles(mode: SeccompMode) {
    if mode != SeccompMode::None {
        let _ = WORKER_MODE.set(mode);
    }
}

/// Stacks `role` on the calling thread once, if the worker enabled thread roles. Fails closed: a
/// thread that cannot narrow itself ends the process.
pub fn enter_role(role: ThreadRole) {
    let Some(&mode) = WORKER_MODE.get() else {
        return;
    };
    if ROLE_ENTERED.with(|e| e.replace(true)) {
        return;
    }
    if let Err(e) = install(role, mode) {
        log::error!("{e}; stopping the worker");
        // SAFETY: _exit ends the process without running anything else; nothing to uphold.
        unsafe { libc::_exit(crate::sandbox::EXIT_SANDBOX) };
    }
}

/// For a thread started by a thread that had already stacked `role` for it (the vhost-user
/// protocol thread, started by the accepting thread): the filter is inherited, so nothing is
/// installed (the role does not allow `seccomp`); the thread is only marked as being in its
/// role, and in debug builds its probes run. Called first thing in the thread.
pub fn inherited_role_by_thread_name(roles: &[(&str, ThreadRole)]) {
    if WORKER_MODE.get().is_none() || ROLE_ENTERED.with(Cell::get) {
        return;
    }
    let current = std::thread::current();
    let Some(&(_, _role)) = roles.iter().find(|(name, _)| current.name() == Some(*name)) else {
        return;
    };
    ROLE_ENTERED.with(|e| e.set(true));
    #[cfg(debug_assertions)]
    crate::sandbox::probe::run_in_thread(_role);
}

/// Writes `role`'s program for `mode` in a form auditors can diff: the policy file, then one BPF
/// instruction per line (`code jt jf k`, hexadecimal code and k).
pub fn print_policy(
    out: &mut dyn io::Write,
    role_name: &str,
    mode: SeccompMode,
) -> Result<(), PrintError> {
    let role = ThreadRole::from_name(role_name)
        .ok_or_else(|| SeccompError::UnknownRole(role_name.to_owned()))?;
    let prog = program(role, mode)?.ok_or(SeccompError::NoneMode)?;
    let source = policy_source(role).unwrap_or_default();
    writeln!(
        out,
        "# role {role}, arch {ARCH}, --seccomp={mode:?}, {} instructions",
        prog.len()
    )?;
    for line in source.lines() {
        writeln!(out, "# {line}")?;
    }
    for ins in prog {
        writeln!(
            out,
            "{:#06x} {} {} {:#010x}",
            ins.code, ins.jt, ins.jf, ins.k
        )?;
    }
    Ok(())
}

/// Why `--print-seccomp-policy` failed.
#[derive(Debug, thiserror::Error)]
pub enum PrintError {
    #[error(transparent)]
    Policy(#[from] SeccompError),
    #[error("cannot write the policy: {0}")]
    Write(#[from] io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_role_is_embedded_in_every_mode() {
        for role in ThreadRole::ALL {
            for mode in [SeccompMode::Kill, SeccompMode::Trap, SeccompMode::Log] {
                let prog = program(role, mode).unwrap().unwrap();
                assert!(!prog.is_empty(), "{role} {mode:?}");
            }
            assert!(program(role, SeccompMode::None).unwrap().is_none());
            assert_eq!(ThreadRole::from_name(role.name()), Some(role));
        }
    }

    #[test]
    fn modes_differ_only_in_the_default_action() {
        let kill = program(ThreadRole::WorkerVring, SeccompMode::Kill)
            .unwrap()
            .unwrap();
        let trap = program(ThreadRole::WorkerVring, SeccompMode::Trap)
            .unwrap()
            .unwrap();
        assert_eq!(kill.len(), trap.len());
        let differing = kill.iter().zip(trap).filter(|(a, b)| a.k != b.k).count();
        assert!(differing >= 1);
        assert!(kill.iter().any(|i| i.k == libc::SECCOMP_RET_KILL_PROCESS));
        assert!(trap.iter().any(|i| i.k == libc::SECCOMP_RET_TRAP));
    }
}
