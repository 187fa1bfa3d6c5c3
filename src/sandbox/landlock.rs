//! Landlock: the worker handles every file-system and network right the kernel knows and allows
//! none (no path, no TCP port), and scopes abstract unix sockets and signals to its own domain.
//! The supervisor handles the same file-system and network rights but may still remove the
//! socket file it created; it does not scope signals, because it must still signal the worker,
//! whose domain is not nested in its own.

use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, CompatLevel, Compatible, LandlockStatus, NetPort, PathBeneath,
    PathFd, RestrictionStatus, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetError,
    RulesetStatus, Scope, ABI,
};

use crate::config::LandlockMode;

/// The newest ABI whose rights we ask for; older kernels get what they support (best effort).
const TARGET_ABI: ABI = ABI::V10;

/// Why Landlock could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("cannot build the Landlock ruleset: {0}")]
    Ruleset(#[source] RulesetError),
    #[error("cannot open {} for a Landlock rule: {error}", .path.display())]
    RulePath {
        path: std::path::PathBuf,
        #[source]
        error: landlock::PathFdError,
    },
    #[error("cannot enforce the Landlock ruleset: {0}")]
    RestrictSelf(#[source] RulesetError),
    #[error("--landlock=required, but this kernel does not enforce Landlock ({0})")]
    Unsupported(String),
}

/// What was achieved, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LandlockOutcome {
    /// `None` when Landlock is off or not available.
    pub abi: Option<i32>,
    pub fully_enforced: bool,
    pub description: String,
}

fn describe(status: &RestrictionStatus) -> LandlockOutcome {
    let abi = match status.landlock {
        LandlockStatus::Available { effective_abi, .. } => Some(effective_abi as i32),
        _ => None,
    };
    let what = match status.ruleset {
        RulesetStatus::FullyEnforced => "enforced",
        RulesetStatus::PartiallyEnforced => "enforced with every right this kernel knows",
        RulesetStatus::NotEnforced => "not enforced",
    };
    let description = match abi {
        Some(abi) => format!("Landlock ABI {abi}, {what}"),
        None => format!("Landlock unavailable ({:?}), {what}", status.landlock),
    };
    LandlockOutcome {
        abi,
        // ABI 6 brings the last layer we rely on (signal and abstract-socket scoping); ABI 4
        // the TCP rules. Older kernels get a warning.
        fully_enforced: status.ruleset != RulesetStatus::NotEnforced && abi.is_some_and(|a| a >= 6),
        description,
    }
}

fn check_required(mode: LandlockMode, status: &RestrictionStatus) -> Result<(), LandlockError> {
    if mode == LandlockMode::Required && status.ruleset == RulesetStatus::NotEnforced {
        return Err(LandlockError::Unsupported(format!("{:?}", status.landlock)));
    }
    Ok(())
}

fn off() -> LandlockOutcome {
    LandlockOutcome {
        abi: None,
        fully_enforced: false,
        description: "Landlock off (--landlock=off)".into(),
    }
}

/// The worker: no file-system access, no TCP bind/connect, abstract unix sockets and signals
/// scoped to the worker's own domain.
pub fn restrict_worker(mode: LandlockMode) -> Result<LandlockOutcome, LandlockError> {
    if mode == LandlockMode::Off {
        return Ok(off());
    }
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .and_then(|r| r.handle_access(AccessNet::from_all(TARGET_ABI)))
        .and_then(|r| r.scope(Scope::from_all(TARGET_ABI)))
        .and_then(|r| r.create())
        .map_err(LandlockError::Ruleset)?
        .restrict_self()
        .map_err(LandlockError::RestrictSelf)?;
    check_required(mode, &status)?;
    Ok(describe(&status))
}

/// The supervisor: no file-system access except removing entries of `remove_dirs` (its socket
/// files and pid file at exit), reading `read_files` (the iSCSI LUNs' CHAP secret files, read
/// for each login) and, under `image_dirs` (`--image-dir`, for the management socket's
/// `add-lun`), reading, writing, creating and truncating regular files; no TCP bind, TCP
/// connect only to `connect_ports` (the iSCSI LUNs' portals).
pub fn restrict_supervisor(
    mode: LandlockMode,
    remove_dirs: &[&Path],
    image_dirs: &[&Path],
    connect_ports: &[u16],
    read_files: &[&Path],
) -> Result<LandlockOutcome, LandlockError> {
    if mode == LandlockMode::Off {
        return Ok(off());
    }
    let mut ruleset = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(TARGET_ABI))
        .and_then(|r| r.handle_access(AccessNet::from_all(TARGET_ABI)))
        .and_then(|r| r.create())
        .map_err(LandlockError::Ruleset)?;
    let image_rights = AccessFs::ReadFile
        | AccessFs::WriteFile
        | AccessFs::MakeReg
        | AccessFs::Truncate
        | AccessFs::IoctlDev;
    let rules = remove_dirs
        .iter()
        .map(|d| (*d, AccessFs::RemoveFile.into()))
        .chain(image_dirs.iter().map(|d| (*d, image_rights)));
    for (dir, rights) in rules {
        let fd = PathFd::new(dir).map_err(|error| LandlockError::RulePath {
            path: dir.to_owned(),
            error,
        })?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, rights))
            .map_err(LandlockError::Ruleset)?;
    }
    for &file in read_files {
        let fd = PathFd::new(file).map_err(|error| LandlockError::RulePath {
            path: file.to_owned(),
            error,
        })?;
        ruleset = ruleset
            .add_rule(PathBeneath::new(fd, AccessFs::ReadFile))
            .map_err(LandlockError::Ruleset)?;
    }
    for &port in connect_ports {
        ruleset = ruleset
            .add_rule(NetPort::new(port, AccessNet::ConnectTcp))
            .map_err(LandlockError::Ruleset)?;
    }
    let status = ruleset
        .restrict_self()
        .map_err(LandlockError::RestrictSelf)?;
    check_required(mode, &status)?;
    Ok(describe(&status))
}
