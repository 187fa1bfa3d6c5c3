//! The account the worker runs as. Resolved in the supervisor before forking (the worker cannot
//! read `/etc/passwd`), applied in the worker.

use std::io;

use nix::unistd::{self, Gid, Uid, User};

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
    if name.contains('\0') {
        return Err(UserError::NoSuchUser(name.to_owned()));
    }
    // getpwnam_r underneath.
    let user = User::from_name(name).map_err(|e| UserError::Lookup {
        name: name.to_owned(),
        error: e.into(),
    })?;
    Ok(user.map(|u| Ids {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }))
}

/// The identity the worker switches to: `None` when the daemon was not started as root (the
/// worker keeps the caller's identity); otherwise `--user`, or the default account.
pub fn resolve(user: Option<&str>) -> Result<Option<Ids>, UserError> {
    if !unistd::geteuid().is_root() {
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
        unistd::setgroups(&[]).map_err(|e| UserError::SetGroups(e.into()))?;
    }
    let (gid, uid) = (Gid::from_raw(ids.gid), Uid::from_raw(ids.uid));
    unistd::setresgid(gid, gid, gid).map_err(|e| UserError::SetGid(ids.gid, e.into()))?;
    unistd::setresuid(uid, uid, uid).map_err(|e| UserError::SetUid(ids.uid, e.into()))?;
    Ok(())
}
