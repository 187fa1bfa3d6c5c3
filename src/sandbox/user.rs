//! The account the worker runs as. Resolved in the supervisor before forking (the worker cannot
//! read `/etc/passwd`), applied in the worker.

use std::{ffi::CString, io};

/// Preferred service account; `nobody` is the fallback.
pub const DEFAULT_USER: &str = "vhost-user-scsi";
const FALLBACK_USER: &str = "nobody";

/// Numeric identity of the worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub uid: u32,
    pub gid: u32,
}

/// Why the worker's account is unusable or could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error("--user {0}: no such user")]
    NoSuchUser(String),
    #[error("neither user {DEFAULT_USER} nor {FALLBACK_USER} exists; create one or give --user")]
    NoDefaultUser,
    #[error("--user {0}: refusing to run the worker as root")]
    Root(String),
    #[error("--user needs the daemon to be started as root")]
    NotRoot,
    #[error("cannot look up user {name}: {error}")]
    Lookup { name: String, error: io::Error },
    #[error("setgroups([]) failed: {0}")]
    SetGroups(#[source] io::Error),
    #[error("setresgid({0}) failed: {1}")]
    SetGid(u32, #[source] io::Error),
    #[error("setresuid({0}) failed: {1}")]
    SetUid(u32, #[source] io::Error),
}

fn lookup(name: &str) -> Result<Option<Ids>, UserError> {
    let c = CString::new(name).map_err(|_| UserError::NoSuchUser(name.to_owned()))?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid out-parameter.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; `buf` outlives it and its length is passed.
    let ret = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if ret != 0 {
        return Err(UserError::Lookup {
            name: name.to_owned(),
            error: io::Error::from_raw_os_error(ret),
        });
    }
    Ok((!result.is_null()).then_some(Ids {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
    }))
}

/// The identity the worker switches to: `None` when the daemon was not started as root (the
/// worker keeps the caller's identity); otherwise `--user`, or the default account.
pub fn resolve(user: Option<&str>) -> Result<Option<Ids>, UserError> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return match user {
            Some(_) => Err(UserError::NotRoot),
            None => Ok(None),
        };
    }
    let ids = match user {
        Some(name) => lookup(name)?.ok_or_else(|| UserError::NoSuchUser(name.to_owned()))?,
        None => match lookup(DEFAULT_USER)? {
            Some(ids) => ids,
            None => lookup(FALLBACK_USER)?.ok_or(UserError::NoDefaultUser)?,
        },
    };
    if ids.uid == 0 {
        return Err(UserError::Root(user.unwrap_or(DEFAULT_USER).to_owned()));
    }
    Ok(Some(ids))
}

/// Worker side: drop supplementary groups (when allowed), then gid, then uid.
pub fn switch_to(ids: Ids, drop_groups: bool) -> Result<(), UserError> {
    if drop_groups {
        // SAFETY: an empty list; the pointer is not read for size 0.
        if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
            return Err(UserError::SetGroups(io::Error::last_os_error()));
        }
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresgid(ids.gid, ids.gid, ids.gid) } != 0 {
        return Err(UserError::SetGid(ids.gid, io::Error::last_os_error()));
    }
    // SAFETY: plain integer arguments.
    if unsafe { libc::setresuid(ids.uid, ids.uid, ids.uid) } != 0 {
        return Err(UserError::SetUid(ids.uid, io::Error::last_os_error()));
    }
    Ok(())
}
