//! Runtime management over the fd broker: what the supervisor asks the running worker to do
//! (add, remove, resize a LUN, set it read-only, flush it, report statistics and state) and
//! what the worker answers.
//!
//! Both directions travel as [`ManageMsg`] inside the broker's envelope (JSON, at most 64 KiB,
//! file descriptors as SCM_RIGHTS). The trust is not symmetric: the worker is the jailed process
//! that a guest or a front-end may have compromised, so **its replies are hostile input to the
//! supervisor**. [`ManageReply::check`] is what the supervisor runs on every reply before using
//! it: the variant must be the one the request calls for, every list is bounded and every
//! string short and printable. [`ManageRequest::check`] is the worker's validation of a request
//! (the supervisor validated it already; the check keeps a bug there from becoming an
//! out-of-range LUN inside the worker).
//!
//! Lists (statistics, state) come in pages so that a reply always fits one envelope whatever
//! the number of LUNs: a request names the address to start after, a reply says whether more
//! follow. The page sizes are chosen so that the largest possible page (every counter at
//! `u64::MAX`) serializes well below the envelope limit; a unit test checks it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::config::{
    lun::MAX_SERIAL_LEN, BlockSize, CacheMode, EnospcPolicy, LunConfig, LunType, MAX_LUN,
};

/// Most LUN statistics in one [`ManageReply::Stats`] page.
pub const MAX_STATS_PAGE: usize = 16;
/// Most LUN states in one [`ManageReply::List`] page.
pub const MAX_LIST_PAGE: usize = 64;
/// Buckets of a latency histogram: bucket 0 counts commands that took less than 1 µs, bucket
/// `i` those that took `[2^(i-1), 2^i)` µs; the last one also everything longer.
pub const LATENCY_BUCKETS: usize = 32;
/// Longest failure message a reply may carry (bytes).
pub const MAX_MESSAGE_LEN: usize = 512;
/// Longest source text an [`AddLun`] may carry (bytes; for log lines and default identities).
pub const MAX_SOURCE_LEN: usize = 4096;
/// Largest size of a `null://` LUN (as `size=` accepts).
pub const MAX_NULL_SIZE: u64 = i64::MAX as u64;

/// A LUN's address on the bus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunAddress {
    pub target: u8,
    pub lun: u16,
}

impl LunAddress {
    pub fn new(target: u8, lun: u16) -> Self {
        Self { target, lun }
    }

    fn check(self) -> Result<Self, ManageError> {
        if self.lun > MAX_LUN {
            return Err(ManageError::Invalid(format!(
                "LUN {} out of range (0..={MAX_LUN})",
                self.lun
            )));
        }
        Ok(self)
    }
}

impl std::fmt::Display for LunAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.target, self.lun)
    }
}

/// One management message: a request from the supervisor or the worker's reply to it (the
/// broker envelope's `kind` says which is expected; a reply in a request's place is refused).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ManageMsg {
    Request(ManageRequest),
    Reply(ManageReply),
}

/// What the supervisor asks the worker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ManageRequest {
    /// Put a new LUN on the bus; its storage follows as fds ([`AddLun::fd_count`]). Answered
    /// [`ManageReply::Done`] once the guest can address it (a rescan event is raised).
    AddLun(AddLun),
    /// Take a LUN off the bus: new commands get LOGICAL UNIT NOT SUPPORTED, those in flight
    /// finish, then the backend is dropped (file closed, lock released) and the worker answers
    /// [`ManageReply::Done`].
    RemoveLun { address: LunAddress },
    /// Re-read the backend's size; answered [`ManageReply::Resized`]. When it changed, the LUN
    /// raises CAPACITY DATA HAS CHANGED on every I_T nexus and the guest gets a PARAM_CHANGE
    /// event.
    Resize { address: LunAddress },
    /// Refuse (or allow again) writes: DATA PROTECT while read-only, MODE SENSE's WP bit.
    /// Answered [`ManageReply::Done`].
    SetReadOnly {
        address: LunAddress,
        read_only: bool,
    },
    /// Make every completed write durable; answered [`ManageReply::Done`].
    Flush { address: LunAddress },
    /// Retry the writes held for lack of space (`enospc=hold`) now, on every request queue
    /// (the retries run on the queue threads; answered [`ManageReply::Done`] at once).
    RetryHeld,
    /// Per-LUN statistics: of one LUN (`address`), or a page of every LUN's in address order,
    /// starting after `after`. Answered [`ManageReply::Stats`].
    Stats {
        address: Option<LunAddress>,
        after: Option<LunAddress>,
    },
    /// A page of the LUNs on the bus and their runtime state, in address order, starting after
    /// `after`. Answered [`ManageReply::List`].
    List { after: Option<LunAddress> },
    /// Change a removable LUN's medium (docs/management.md `change-medium`, `eject`): with
    /// `medium`, the new image follows as one fd, opened (and locked) by the supervisor with
    /// that cache mode; without, the medium is taken out. A medium the guest locked in (PREVENT
    /// ALLOW MEDIUM REMOVAL) is only changed with `force`, else [`FailureCode::MediumLocked`].
    /// Answered [`ManageReply::Done`].
    ChangeMedium {
        address: LunAddress,
        medium: Option<WireCache>,
        force: bool,
    },
}

/// The storage behind a LUN being added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Backing {
    /// An image or block device, open (and locked) by the supervisor: the first fd. Opened
    /// with `O_DIRECT` exactly when the LUN's cache mode is `none`.
    File,
    /// `null://SIZE`: no storage, no fd.
    Null { size: u64 },
    /// LUN `target_lun` of an iSCSI target the supervisor logged in to: the fd is the
    /// connection, in the full feature phase, idle; `params` its negotiated state (checked
    /// again by the worker's `Session::new`). No secret crosses.
    Iscsi {
        target_lun: u16,
        params: Box<crate::iscsi::login::SessionParams>,
    },
}

/// Cache mode on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WireCache {
    None,
    Writeback,
}

/// A LUN to add: its configuration with the identities already resolved (the defaults are
/// derived from the source path's bytes, which need not be UTF-8; the supervisor has them), and
/// which fds follow the message, in order: the image (for [`Backing::File`]), then the
/// `pr-file` (when `pr_file`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddLun {
    pub address: LunAddress,
    /// The source as written, for log lines and `list` (lossy UTF-8; nothing opens it).
    pub source: String,
    pub backing: Backing,
    pub read_only: bool,
    pub serial: String,
    /// NAA identifier (VPD 83h).
    pub wwn: u64,
    /// Logical block size: 512 or 4096.
    pub block_size: u32,
    /// Physical block size; `None`: the logical block size.
    pub phys_block_size: Option<u32>,
    pub discard: bool,
    pub cache: WireCache,
    /// A `pr-file` fd follows the image fd (persistent reservations survive restarts).
    pub pr_file: bool,
    /// `type=cdrom`: an MMC CD/DVD-ROM (read-only, 2048-byte blocks, removable).
    #[serde(default)]
    pub cdrom: bool,
    /// `removable`: the medium can be ejected (INQUIRY RMB = 1).
    #[serde(default)]
    pub removable: bool,
    /// `enospc=hold`: writes that find the storage full wait for room instead of failing.
    #[serde(default)]
    pub enospc_hold: bool,
}

impl AddLun {
    /// The message for `config` (validated by `config`): identities resolved, the source's
    /// backing as given.
    pub fn from_config(config: &LunConfig, backing: Backing) -> Self {
        Self {
            address: LunAddress::new(config.target, config.lun),
            source: truncate(&config.source.to_string(), MAX_SOURCE_LEN),
            backing,
            read_only: config.read_only,
            serial: config.effective_serial(),
            wwn: config.effective_wwn(),
            block_size: config.block_size.bytes(),
            phys_block_size: config.phys_block_size,
            discard: config.discard,
            cache: match config.cache {
                CacheMode::None => WireCache::None,
                CacheMode::Writeback => WireCache::Writeback,
            },
            pr_file: config.pr_file.is_some(),
            cdrom: config.lun_type == LunType::Cdrom,
            removable: config.removable,
            enospc_hold: config.enospc == EnospcPolicy::Hold,
        }
    }

    /// How many fds must accompany the message.
    pub fn fd_count(&self) -> usize {
        usize::from(matches!(
            self.backing,
            Backing::File | Backing::Iscsi { .. }
        )) + usize::from(self.pr_file)
    }

    /// The worker's view as a [`LunConfig`] (serial and WWN explicit; `pr_file` names no path,
    /// only that one is open).
    pub fn to_config(&self) -> LunConfig {
        LunConfig {
            read_only: self.read_only,
            serial: Some(self.serial.clone()),
            wwn: Some(self.wwn),
            block_size: match self.block_size {
                4096 => BlockSize::B4096,
                2048 => BlockSize::B2048,
                _ => BlockSize::B512,
            },
            lun_type: if self.cdrom {
                LunType::Cdrom
            } else {
                LunType::Disk
            },
            removable: self.removable || self.cdrom,
            enospc: if self.enospc_hold {
                EnospcPolicy::Hold
            } else {
                EnospcPolicy::Report
            },
            phys_block_size: self.phys_block_size,
            discard: self.discard,
            cache: match self.cache {
                WireCache::None => CacheMode::None,
                WireCache::Writeback => CacheMode::Writeback,
            },
            pr_file: self.pr_file.then(|| PathBuf::from("(pr-file fd)")),
            ..LunConfig::new(self.address.target, self.address.lun, self.source.as_str())
        }
    }

    fn check(&self, fds: usize) -> Result<(), ManageError> {
        self.address.check()?;
        let invalid = |m: String| Err(ManageError::Invalid(m));
        if self.source.len() > MAX_SOURCE_LEN {
            return invalid(format!("source longer than {MAX_SOURCE_LEN} bytes"));
        }
        if let Backing::Null { size } = self.backing {
            if size == 0 || size > MAX_NULL_SIZE {
                return invalid(format!("null size {size} out of range"));
            }
        }
        if let Backing::Iscsi { target_lun, .. } = &self.backing {
            if *target_lun > MAX_LUN || self.pr_file || self.cdrom || self.removable {
                return invalid(
                    "an iSCSI LUN is passed through: a LUN number up to 16383, no pr-file, \
                     no CD-ROM"
                        .to_string(),
                );
            }
        }
        check_serial(&self.serial)?;
        match (self.cdrom, self.block_size) {
            (false, 512 | 4096) | (true, 2048) => {}
            (false, b) => return invalid(format!("block size {b} is not 512 or 4096")),
            (true, b) => return invalid(format!("a CD-ROM has 2048-byte blocks, not {b}")),
        }
        if self.cdrom && !self.read_only {
            return invalid("a CD-ROM is read-only".to_string());
        }
        if let Some(p) = self.phys_block_size {
            if !p.is_power_of_two() || p < self.block_size || p > 32768 {
                return invalid(format!("physical block size {p} out of range"));
            }
        }
        if fds != self.fd_count() {
            return Err(ManageError::BadFds {
                expected: self.fd_count(),
                got: fds,
            });
        }
        Ok(())
    }
}

/// The worker's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ManageReply {
    /// Add, remove, set-read-only, flush: done.
    Done,
    /// The sizes (bytes) before and after a resize.
    Resized { old_size: u64, new_size: u64 },
    /// A page of statistics; `more`: ask again after the last one.
    Stats { luns: Vec<LunStats>, more: bool },
    /// A page of LUN states; `more`: ask again after the last one.
    List { luns: Vec<LunState>, more: bool },
    /// The request was not carried out; nothing changed.
    Failed { code: FailureCode, message: String },
}

/// Why a request failed (the supervisor maps it to its JSON-RPC error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCode {
    /// No LUN at that address (or it is being removed).
    NoSuchLun,
    /// A LUN already sits at that address.
    AddressInUse,
    /// The request is malformed (out-of-range values, wrong fds).
    Invalid,
    /// The backend could not be used (size, flush, fstat failed).
    Io,
    /// Another management operation on the same LUN is under way (a remove that waits for
    /// in-flight commands).
    Busy,
    /// The worker cannot do that.
    Unsupported,
    /// The guest prevents medium removal (a change without `force`).
    MediumLocked,
}

/// Counters of one class of commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpStats {
    /// Commands completed.
    pub ops: u64,
    /// Bytes transferred by those that succeeded.
    pub bytes: u64,
    /// Commands that ended with CHECK CONDITION.
    pub errors: u64,
    /// Completion latency histogram ([`LATENCY_BUCKETS`] log2 buckets of microseconds).
    pub latency_us: [u64; LATENCY_BUCKETS],
}

/// One LUN's statistics since it was added (or the worker started).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunStats {
    pub address: LunAddress,
    pub read: OpStats,
    pub write: OpStats,
    /// Every other command (flush, unmap, inquiry, ...); `bytes` counts data-in and data-out.
    pub other: OpStats,
    /// Commands in flight now (the queue depth).
    pub in_flight: u64,
}

/// One LUN's runtime state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LunState {
    pub address: LunAddress,
    /// Size in bytes as served now.
    pub size: u64,
    pub block_size: u32,
    pub read_only: bool,
    pub serial: String,
    pub wwn: u64,
    /// Commands in flight now.
    pub in_flight: u64,
}

/// A request or reply that does not hold up.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ManageError {
    #[error("invalid management message: {0}")]
    Invalid(String),
    #[error("expected {expected} file descriptor(s) with the request, got {got}")]
    BadFds { expected: usize, got: usize },
    #[error("the worker's reply does not answer the request: {0}")]
    BadReply(String),
}

impl ManageRequest {
    /// The worker's check of a request that arrived with `fds` file descriptors.
    pub fn check(&self, fds: usize) -> Result<(), ManageError> {
        let no_fds = || {
            if fds == 0 {
                Ok(())
            } else {
                Err(ManageError::BadFds {
                    expected: 0,
                    got: fds,
                })
            }
        };
        match self {
            ManageRequest::AddLun(add) => return add.check(fds),
            ManageRequest::RemoveLun { address }
            | ManageRequest::Resize { address }
            | ManageRequest::SetReadOnly { address, .. }
            | ManageRequest::Flush { address } => {
                address.check()?;
            }
            ManageRequest::Stats { address, after } => {
                if let Some(a) = address {
                    a.check()?;
                }
                if let Some(a) = after {
                    a.check()?;
                }
            }
            ManageRequest::List { after } => {
                if let Some(a) = after {
                    a.check()?;
                }
            }
            ManageRequest::ChangeMedium {
                address, medium, ..
            } => {
                address.check()?;
                let expected = usize::from(medium.is_some());
                if fds != expected {
                    return Err(ManageError::BadFds { expected, got: fds });
                }
                return Ok(());
            }
            ManageRequest::RetryHeld => {}
        }
        no_fds()
    }

    /// The LUN the request is about, if it names one.
    pub fn address(&self) -> Option<LunAddress> {
        match self {
            ManageRequest::AddLun(add) => Some(add.address),
            ManageRequest::RemoveLun { address }
            | ManageRequest::Resize { address }
            | ManageRequest::SetReadOnly { address, .. }
            | ManageRequest::Flush { address }
            | ManageRequest::ChangeMedium { address, .. } => Some(*address),
            ManageRequest::Stats { address, .. } => *address,
            ManageRequest::List { .. } | ManageRequest::RetryHeld => None,
        }
    }
}

impl ManageReply {
    /// A failure reply; the message is cut to [`MAX_MESSAGE_LEN`].
    pub fn failed(code: FailureCode, message: impl AsRef<str>) -> Self {
        ManageReply::Failed {
            code,
            message: truncate(message.as_ref(), MAX_MESSAGE_LEN),
        }
    }

    /// The supervisor's check of the worker's reply to `request` (which came back with `fds`
    /// file descriptors): anything but the expected shape is refused.
    pub fn check(&self, request: &ManageRequest, fds: usize) -> Result<(), ManageError> {
        let bad = |m: &str| Err(ManageError::BadReply(m.to_owned()));
        if fds != 0 {
            return bad("a management reply carries no file descriptors");
        }
        match (self, request) {
            (ManageReply::Failed { message, .. }, _) => {
                if message.len() > MAX_MESSAGE_LEN || !printable(message) {
                    return bad("failure message too long or not printable");
                }
                Ok(())
            }
            (
                ManageReply::Done,
                ManageRequest::AddLun(_)
                | ManageRequest::RemoveLun { .. }
                | ManageRequest::SetReadOnly { .. }
                | ManageRequest::Flush { .. }
                | ManageRequest::ChangeMedium { .. }
                | ManageRequest::RetryHeld,
            )
            | (ManageReply::Resized { .. }, ManageRequest::Resize { .. }) => Ok(()),
            (ManageReply::Stats { luns, more }, ManageRequest::Stats { address, after }) => {
                if luns.len() > MAX_STATS_PAGE {
                    return bad("statistics page too long");
                }
                check_page(luns.iter().map(|s| s.address), *address, *after, *more)?;
                for s in luns {
                    s.address
                        .check()
                        .map_err(|e| ManageError::BadReply(e.to_string()))?;
                }
                Ok(())
            }
            (ManageReply::List { luns, more }, ManageRequest::List { after }) => {
                if luns.len() > MAX_LIST_PAGE {
                    return bad("list page too long");
                }
                check_page(luns.iter().map(|s| s.address), None, *after, *more)?;
                for s in luns {
                    s.address
                        .check()
                        .map_err(|e| ManageError::BadReply(e.to_string()))?;
                    if !matches!(s.block_size, 512 | 2048 | 4096) {
                        return bad("block size not 512, 2048 or 4096");
                    }
                    check_serial(&s.serial).map_err(|e| ManageError::BadReply(e.to_string()))?;
                }
                Ok(())
            }
            _ => bad("reply of the wrong kind"),
        }
    }
}

/// A page's addresses must be strictly ascending, after `after`; for one LUN's statistics at
/// most that one, and no more to come.
fn check_page(
    addresses: impl Iterator<Item = LunAddress>,
    only: Option<LunAddress>,
    after: Option<LunAddress>,
    more: bool,
) -> Result<(), ManageError> {
    let bad = |m: &str| Err(ManageError::BadReply(m.to_owned()));
    let mut last = after;
    let mut n = 0;
    for a in addresses {
        if last.is_some_and(|l| a <= l) {
            return bad("page not in ascending address order after the cursor");
        }
        if only.is_some_and(|o| o != a) {
            return bad("statistics of a LUN that was not asked for");
        }
        last = Some(a);
        n += 1;
    }
    if only.is_some() && (n > 1 || more) {
        return bad("more than one LUN's statistics for one LUN");
    }
    if more && n == 0 {
        // An empty page that promises more would loop forever.
        return bad("empty page with more to come");
    }
    Ok(())
}

fn check_serial(serial: &str) -> Result<(), ManageError> {
    if serial.is_empty() || serial.len() > MAX_SERIAL_LEN || !printable(serial) {
        return Err(ManageError::Invalid(format!(
            "serial must be 1 to {MAX_SERIAL_LEN} printable ASCII characters"
        )));
    }
    Ok(())
}

fn printable(s: &str) -> bool {
    s.bytes().all(|b| (0x20..=0x7e).contains(&b))
}

/// At most `max` bytes of `s`, with control and non-ASCII characters replaced by `?`.
fn truncate(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(max)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(t: u8, l: u16) -> LunAddress {
        LunAddress::new(t, l)
    }

    fn stats(a: LunAddress) -> LunStats {
        let full = OpStats {
            ops: u64::MAX,
            bytes: u64::MAX,
            errors: u64::MAX,
            latency_us: [u64::MAX; LATENCY_BUCKETS],
        };
        LunStats {
            address: a,
            read: full,
            write: full,
            other: full,
            in_flight: u64::MAX,
        }
    }

    fn state(a: LunAddress) -> LunState {
        LunState {
            address: a,
            size: u64::MAX,
            block_size: 4096,
            read_only: false,
            serial: "S".repeat(MAX_SERIAL_LEN),
            wwn: u64::MAX,
            in_flight: u64::MAX,
        }
    }

    /// The largest pages fit the broker's 64 KiB envelope with room for its own fields.
    #[test]
    fn largest_pages_fit_one_envelope() {
        let page = ManageMsg::Reply(ManageReply::Stats {
            luns: (0..MAX_STATS_PAGE as u16)
                .map(|l| stats(addr(255, MAX_LUN - l)))
                .collect(),
            more: true,
        });
        let len = serde_json::to_vec(&page).unwrap().len();
        assert!(len < 60 * 1024, "stats page is {len} bytes");
        let page = ManageMsg::Reply(ManageReply::List {
            luns: (0..MAX_LIST_PAGE as u16)
                .map(|l| state(addr(255, MAX_LUN - l)))
                .collect(),
            more: true,
        });
        let len = serde_json::to_vec(&page).unwrap().len();
        assert!(len < 60 * 1024, "list page is {len} bytes");
        let failed = ManageMsg::Reply(ManageReply::failed(FailureCode::Io, "\n".repeat(100_000)));
        assert!(serde_json::to_vec(&failed).unwrap().len() < 1024);
    }

    #[test]
    fn messages_round_trip() {
        let mut c = LunConfig::new(1, 300, "/img/a b.raw");
        c.pr_file = Some("/img/pr".into());
        let add = AddLun::from_config(&c, Backing::File);
        assert_eq!(add.fd_count(), 2);
        assert_eq!(add.serial, "VUS-T001-L00300");
        assert_eq!(add.wwn, c.default_wwn());
        for m in [
            ManageMsg::Request(ManageRequest::AddLun(add.clone())),
            ManageMsg::Request(ManageRequest::Stats {
                address: None,
                after: Some(addr(0, 1)),
            }),
            ManageMsg::Reply(ManageReply::Resized {
                old_size: 1,
                new_size: 2,
            }),
        ] {
            let text = serde_json::to_string(&m).unwrap();
            assert_eq!(
                serde_json::from_str::<ManageMsg>(&text).unwrap(),
                m,
                "{text}"
            );
        }
        let back = add.to_config();
        assert_eq!((back.target, back.lun), (1, 300));
        assert_eq!(back.serial.as_deref(), Some("VUS-T001-L00300"));
    }

    #[test]
    fn requests_are_checked() {
        let c = LunConfig::new(0, 0, "/img/a");
        let add = AddLun::from_config(&c, Backing::File);
        assert!(ManageRequest::AddLun(add.clone()).check(1).is_ok());
        assert_eq!(
            ManageRequest::AddLun(add.clone()).check(0),
            Err(ManageError::BadFds {
                expected: 1,
                got: 0
            })
        );
        let mut bad = add.clone();
        bad.address.lun = MAX_LUN + 1;
        assert!(ManageRequest::AddLun(bad).check(1).is_err());
        let mut bad = add.clone();
        bad.block_size = 1024;
        assert!(ManageRequest::AddLun(bad).check(1).is_err());
        let mut bad = add.clone();
        bad.phys_block_size = Some(256);
        assert!(ManageRequest::AddLun(bad).check(1).is_err());
        let mut bad = add.clone();
        bad.serial = "a\nb".into();
        assert!(ManageRequest::AddLun(bad).check(1).is_err());
        let mut null = add;
        null.backing = Backing::Null { size: 0 };
        assert!(ManageRequest::AddLun(null.clone()).check(0).is_err());
        null.backing = Backing::Null { size: 1 << 20 };
        assert!(ManageRequest::AddLun(null).check(0).is_ok());
        let rm = ManageRequest::RemoveLun {
            address: addr(0, 0),
        };
        assert!(rm.check(0).is_ok());
        assert!(rm.check(1).is_err());
    }

    #[test]
    fn medium_changes_carry_one_fd_or_none() {
        let change = |medium| ManageRequest::ChangeMedium {
            address: addr(0, 2),
            medium,
            force: false,
        };
        let load = change(Some(WireCache::Writeback));
        assert_eq!(load.check(1), Ok(()));
        assert_eq!(
            load.check(0),
            Err(ManageError::BadFds {
                expected: 1,
                got: 0
            })
        );
        assert!(load.check(2).is_err());
        let eject = change(None);
        assert_eq!(eject.check(0), Ok(()));
        assert!(eject.check(1).is_err());
        let far = ManageRequest::ChangeMedium {
            address: addr(0, MAX_LUN + 1),
            medium: None,
            force: true,
        };
        assert!(matches!(far.check(0), Err(ManageError::Invalid(_))));
        assert_eq!(load.address(), Some(addr(0, 2)));
        // Done answers it; another reply shape does not.
        assert_eq!(ManageReply::Done.check(&eject, 0), Ok(()));
        let resized = ManageReply::Resized {
            old_size: 1,
            new_size: 2,
        };
        assert!(resized.check(&eject, 0).is_err());
        let locked = ManageReply::failed(FailureCode::MediumLocked, "locked");
        assert_eq!(locked.check(&load, 0), Ok(()));
        let text = serde_json::to_string(&ManageMsg::Request(load.clone())).unwrap();
        assert_eq!(
            serde_json::from_str::<ManageMsg>(&text).unwrap(),
            ManageMsg::Request(load),
            "{text}"
        );
    }

    #[test]
    fn unknown_fields_and_wrong_shapes_are_refused() {
        for text in [
            r#"{"request":{"op":"remove-lun","address":{"target":0,"lun":0},"x":1}}"#,
            r#"{"request":{"op":"remove-lun","address":{"target":256,"lun":0}}}"#,
            r#"{"reply":{"result":"stats","luns":[{"address":{"target":0,"lun":0},"read":{"ops":1,"bytes":1,"errors":0,"latency_us":[1]},"write":{"ops":1,"bytes":1,"errors":0,"latency_us":[1]},"other":{"ops":1,"bytes":1,"errors":0,"latency_us":[1]},"in_flight":0}],"more":false}}"#,
            r#"{"request":{"op":"format-disk"}}"#,
        ] {
            assert!(serde_json::from_str::<ManageMsg>(text).is_err(), "{text}");
        }
    }

    /// The worker's replies are hostile: everything out of shape is refused.
    #[test]
    fn hostile_replies_are_refused() {
        let list = ManageRequest::List { after: None };
        let ok = ManageReply::List {
            luns: vec![state(addr(0, 0)), state(addr(0, 1))],
            more: true,
        };
        assert!(ok.check(&list, 0).is_ok());
        assert!(ok.check(&list, 1).is_err(), "fds in a reply");
        assert!(ManageReply::Done.check(&list, 0).is_err(), "wrong kind");
        let unordered = ManageReply::List {
            luns: vec![state(addr(0, 1)), state(addr(0, 1))],
            more: false,
        };
        assert!(unordered.check(&list, 0).is_err());
        let before_cursor = ManageReply::List {
            luns: vec![state(addr(0, 0))],
            more: false,
        };
        let after = ManageRequest::List {
            after: Some(addr(0, 0)),
        };
        assert!(before_cursor.check(&after, 0).is_err());
        let endless = ManageReply::List {
            luns: vec![],
            more: true,
        };
        assert!(endless.check(&list, 0).is_err());
        let long = ManageReply::List {
            luns: (0..=MAX_LIST_PAGE as u16)
                .map(|l| state(addr(0, l)))
                .collect(),
            more: false,
        };
        assert!(long.check(&list, 0).is_err());
        let mut s = state(addr(0, 0));
        s.serial = "\u{7f}".into();
        let bad_serial = ManageReply::List {
            luns: vec![s],
            more: false,
        };
        assert!(bad_serial.check(&list, 0).is_err());
        let one = ManageRequest::Stats {
            address: Some(addr(0, 2)),
            after: None,
        };
        let other = ManageReply::Stats {
            luns: vec![stats(addr(0, 3))],
            more: false,
        };
        assert!(other.check(&one, 0).is_err(), "statistics of another LUN");
        let failed = ManageReply::Failed {
            code: FailureCode::Io,
            message: "x".repeat(MAX_MESSAGE_LEN + 1),
        };
        assert!(failed.check(&one, 0).is_err());
        assert!(ManageReply::failed(FailureCode::Io, "\x1b[2J")
            .check(&one, 0)
            .is_ok());
    }
}
