//! Capabilities: the worker drops every one of them from every set; the supervisor keeps only
//! what it still needs.

use caps::{CapSet, Capability, CapsHashSet};

/// Why a capability set could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("cannot drop capability {cap} from the bounding set: {error}")]
    Bounding { cap: u32, error: std::io::Error },
    #[error("cannot clear the {set:?} capability set: {error}")]
    Clear {
        set: CapSet,
        error: caps::errors::CapsError,
    },
    #[error("cannot set the {set:?} capability set: {error}")]
    Set {
        set: CapSet,
        error: caps::errors::CapsError,
    },
}

/// Highest capability number we try to drop from the bounding set (beyond the kernel's last
/// capability `PR_CAPBSET_DROP` fails with EINVAL, which ends the loop).
const MAX_CAP: u32 = 63;

/// Drops `[0, MAX_CAP]` minus `keep` from the bounding set. Needs CAP_SETPCAP when there is
/// anything to drop; without it (unprivileged start) the set is already what we can get, and a
/// non-empty bounding set of an unprivileged process grants nothing under no_new_privs.
fn drop_bounding(keep: &[Capability]) -> Result<(), CapsError> {
    for cap in 0..=MAX_CAP {
        if keep.iter().any(|k| k.index() == cap as u8) {
            continue;
        }
        // SAFETY: PR_CAPBSET_READ/DROP take an integer argument and touch no memory of ours.
        let present = unsafe { libc::prctl(libc::PR_CAPBSET_READ, cap as libc::c_ulong) };
        if present < 0 {
            break; // EINVAL: past the kernel's last capability.
        }
        if present == 0 {
            continue;
        }
        // SAFETY: as above.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong) } != 0 {
            let error = std::io::Error::last_os_error();
            // Unprivileged (no CAP_SETPCAP and nothing permitted): the bounding set can only
            // limit what an exec could gain, and no_new_privs plus seccomp forbid that.
            if error.raw_os_error() == Some(libc::EPERM)
                && caps::read(None, CapSet::Permitted).is_ok_and(|p| p.is_empty())
            {
                return Ok(());
            }
            return Err(CapsError::Bounding { cap, error });
        }
    }
    Ok(())
}

/// Empties the bounding set (call while still privileged).
pub fn drop_bounding_all() -> Result<(), CapsError> {
    drop_bounding(&[])
}

/// Empties the bounding, ambient, inheritable, effective and permitted sets (in that order:
/// the bounding set needs CAP_SETPCAP, which goes with the effective set).
pub fn drop_all() -> Result<(), CapsError> {
    drop_bounding(&[])?;
    for set in [
        CapSet::Ambient,
        CapSet::Inheritable,
        CapSet::Effective,
        CapSet::Permitted,
    ] {
        caps::clear(None, set).map_err(|error| CapsError::Clear { set, error })?;
    }
    Ok(())
}

/// Keeps only `keep` in the effective and permitted sets (if we have them), and nothing in the
/// bounding, ambient and inheritable sets.
pub fn keep_only(keep: &[Capability]) -> Result<(), CapsError> {
    let permitted = caps::read(None, CapSet::Permitted).unwrap_or_default();
    let wanted: CapsHashSet = keep
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    drop_bounding(keep)?;
    for set in [CapSet::Ambient, CapSet::Inheritable] {
        caps::clear(None, set).map_err(|error| CapsError::Clear { set, error })?;
    }
    for set in [CapSet::Effective, CapSet::Permitted] {
        caps::set(None, set, &wanted).map_err(|error| CapsError::Set { set, error })?;
    }
    Ok(())
}
