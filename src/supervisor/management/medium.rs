//! `change-medium` and `eject`: the host's side of a removable LUN's medium (a `type=cdrom`
//! LUN's ISO, a `removable` disk's image), as QEMU's `change` and `eject` monitor commands.
//!
//! The supervisor opens the new image the way `add-lun` opens a source (a path under an
//! `--image-dir`, or a descriptor the client passed; read-only for a CD-ROM, locked shared or
//! exclusive as the LUN is read-only or not), with the LUN's own options, and passes it over the
//! fd broker; the worker swaps it in ([`crate::scsi::LogicalUnit::change_medium`]: the guest
//! sees MEDIUM NOT PRESENT, then NOT READY TO READY CHANGE, MEDIUM MAY HAVE CHANGED, and the
//! GET EVENT STATUS NOTIFICATION media events). A medium the guest locked in with PREVENT ALLOW
//! MEDIUM REMOVAL is refused ([`code::MEDIUM_LOCKED`]; the guest gets an Eject Request event)
//! unless `"force": true`.
//!
//! The record follows the worker's answer: `list` shows the new source, or `"medium": "none"`
//! after an eject. The change is also one for the LUN set a restarted worker gets
//! ([`crate::supervisor::luns::Change::Medium`]): the supervisor keeps its copy of the new
//! medium (and closes the one it replaced), so a worker started again after a failure serves
//! the medium the operator left, or none.

use std::{collections::BTreeSet, fs::File, path::PathBuf};

use serde_json::{json, Map, Value};

use super::{
    call::WorkerCall,
    protocol::{address_param, bool_param, code, only_params, RpcError},
};
use crate::{
    config::{ctl::Address, LunConfig, LunSource},
    supervisor::{
        luns::Change,
        open::{self, RuntimeLun},
    },
};

/// A `change-medium` or `eject` call, its parameters checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediumCall {
    pub address: Address,
    /// `change-medium`'s new image: a path to resolve, or (`passed`) only the name of the
    /// descriptor that came with the request. `None`: `eject`.
    pub image: Option<(PathBuf, bool)>,
    pub force: bool,
}

/// What to record once the worker answered a medium change.
#[derive(Debug)]
pub struct Changed {
    pub address: Address,
    /// The new medium's source (`None`: ejected).
    pub source: Option<LunSource>,
    /// The supervisor's copy of the new image: kept for a restarted worker once the worker
    /// has its own ([`record`]), closed if the change fails.
    pub opened: Option<RuntimeLun>,
}

/// The parameters of `change-medium` (`{"lun": "T:L", "path": PATH, "fd": false, "force":
/// false}`; with `"fd": true` the image is the descriptor passed with the request and `path`
/// only its name) or `eject` (`{"lun": "T:L", "force": false}`).
pub fn parse(method: &str, params: &Map<String, Value>) -> Result<MediumCall, RpcError> {
    let eject = method == "eject";
    if eject {
        only_params(params, &["lun", "force"])?;
    } else {
        only_params(params, &["lun", "path", "fd", "force"])?;
    }
    let address = address_param(params)?;
    let force = bool_param(params, "force", false)?;
    if eject {
        return Ok(MediumCall {
            address,
            image: None,
            force,
        });
    }
    let passed = bool_param(params, "fd", false)?;
    let path = match params.get("path") {
        Some(Value::String(p)) if !p.is_empty() => PathBuf::from(p),
        Some(_) => {
            return Err(RpcError::invalid_params(
                "\"path\" must be a non-empty string",
            ))
        }
        None if passed => PathBuf::from("(passed descriptor)"),
        None => return Err(RpcError::invalid_params("missing \"path\": the new image")),
    };
    if !passed && crate::block::null::null_source_size(&path).is_some() {
        return Err(RpcError::invalid_params(
            "a medium is an image file or device, not null://",
        ));
    }
    Ok(MediumCall {
        address,
        image: Some((path, passed)),
        force,
    })
}

/// Refuses a LUN without a removable medium.
pub fn check_removable(address: Address, lun: &LunConfig) -> Result<(), RpcError> {
    if lun.removable {
        return Ok(());
    }
    Err(RpcError::new(
        code::UNSUPPORTED,
        format!(
            "LUN {address} has no removable medium: only type=cdrom and removable LUNs have one"
        ),
    ))
}

/// What to ask the worker: for a change, the new medium `source` (a resolved path, or the
/// name of the passed `file`) opened with `lun`'s options (read-only and a shared lock for a
/// CD-ROM or a `readonly` LUN, `O_DIRECT` for `cache=none`; it must hold one block); the
/// descriptors that go with the call; what to record once it is done.
pub fn prepare(
    call: &MediumCall,
    lun: &LunConfig,
    source: Option<LunSource>,
    file: Option<File>,
) -> Result<(WorkerCall, Vec<File>, Changed), RpcError> {
    let address = call.address;
    let Some(source) = source else {
        let worker = WorkerCall::ChangeMedium {
            address,
            cache: None,
            force: call.force,
        };
        let changed = Changed {
            address,
            source: None,
            opened: None,
        };
        return Ok((worker, Vec::new(), changed));
    };
    let mut config = lun.clone();
    // Only the medium changes: the LUN's pr-file stays the worker's, nothing is created.
    config.pr_file = None;
    config.create_size = None;
    config.source = source;
    let mut opened = open::open_runtime(&config, file)
        .map_err(|e| RpcError::new(code::CANNOT_OPEN, e.to_string()))?;
    let fds = std::mem::take(&mut opened.fds);
    let worker = WorkerCall::ChangeMedium {
        address,
        cache: Some(config.cache),
        force: call.force,
    };
    let changed = Changed {
        address,
        source: Some(config.source),
        opened: Some(opened),
    };
    Ok((worker, fds, changed))
}

/// Records a change the worker made in the LUN's `config` and `size` and in the set of
/// `ejected` LUNs; the client's result, and the change for the LUN set a restarted worker gets.
pub fn record(
    changed: Changed,
    entry: Option<(&mut LunConfig, &mut u64)>,
    ejected: &mut BTreeSet<Address>,
) -> (Value, Change) {
    let Changed {
        address,
        source,
        opened,
    } = changed;
    let size = opened.as_ref().map(|o| o.lun.backend.size());
    // The worker holds its own descriptor now; ours goes to the retained LUN set (or is closed
    // there when nothing restarts).
    let change = Change::Medium {
        target: address.target,
        lun: address.lun,
        medium: opened.map(|o| Box::new(o.lun)),
    };
    match source {
        Some(_) => ejected.remove(&address),
        None => ejected.insert(address),
    };
    if let Some((config, s)) = entry {
        *s = size.unwrap_or(0);
        if let Some(source) = source {
            config.source = source;
        }
    }
    let result = match size {
        Some(size) => json!({ "size": size }),
        None => json!({}),
    };
    (result, change)
}

#[cfg(test)]
mod tests {
    use std::{fs::File, path::PathBuf};

    use serde_json::json;

    use super::super::methods::{
        finish as finish_call, tests::Fixture, LunEntry, LunState, Outcome,
    };
    use super::*;
    use crate::config::{BlockSize, LunConfig, LunType};

    /// The fixture with a CD-ROM at 0:1 over `a.iso` (1 MiB) and the path of a second ISO.
    fn with_cdrom() -> (Fixture, PathBuf) {
        let mut f = Fixture::new();
        let iso = f.image("a.iso", 1 << 20);
        let mut c = LunConfig::new(0, 1, &iso);
        c.lun_type = LunType::Cdrom;
        c.block_size = BlockSize::B2048;
        c.read_only = true;
        c.removable = true;
        f.table.luns.insert(
            Address { target: 0, lun: 1 },
            LunEntry {
                config: c,
                size: 1 << 20,
                state: LunState::Online,
                runtime: false,
                passed_fd: false,
            },
        );
        let b = f.image("b.iso", 2 << 20);
        (f, b)
    }

    const CD: Address = Address { target: 0, lun: 1 };

    #[test]
    fn refusals_change_nothing() {
        let (mut f, b) = with_cdrom();
        let b = b.display().to_string();
        for (method, params, want) in [
            (
                "change-medium",
                json!({"lun": "0:9", "path": b}),
                code::UNKNOWN_LUN,
            ),
            ("eject", json!({"lun": "0:9"}), code::UNKNOWN_LUN),
            // A fixed disk has no medium to change.
            (
                "change-medium",
                json!({"lun": "0:0", "path": b}),
                code::UNSUPPORTED,
            ),
            ("eject", json!({"lun": "0:0"}), code::UNSUPPORTED),
            ("change-medium", json!({"lun": "0:1"}), code::INVALID_PARAMS),
            (
                "change-medium",
                json!({"lun": "0:1", "path": 3}),
                code::INVALID_PARAMS,
            ),
            (
                "change-medium",
                json!({"lun": "0:1", "path": b, "x": 1}),
                code::INVALID_PARAMS,
            ),
            (
                "change-medium",
                json!({"lun": "0:1", "path": b, "force": "y"}),
                code::INVALID_PARAMS,
            ),
            (
                "eject",
                json!({"lun": "0:1", "path": b}),
                code::INVALID_PARAMS,
            ),
            ("eject", json!({}), code::INVALID_PARAMS),
            // Paths as add-lun's: under an --image-dir, absolute, no '..', must open.
            (
                "change-medium",
                json!({"lun": "0:1", "path": "/etc/passwd"}),
                code::PATH_NOT_ALLOWED,
            ),
            (
                "change-medium",
                json!({"lun": "0:1", "path": "b.iso"}),
                code::PATH_NOT_ALLOWED,
            ),
            (
                "change-medium",
                json!({"lun": "0:1", "path": "null://1M"}),
                code::INVALID_PARAMS,
            ),
            (
                "change-medium",
                json!({"lun": "0:1", "path": format!("{}/../b.iso", f.dirs[0].display())}),
                code::PATH_NOT_ALLOWED,
            ),
            (
                "change-medium",
                json!({"lun": "0:1", "path": f.dirs[0].join("missing.iso")}),
                code::CANNOT_OPEN,
            ),
            (
                "change-medium",
                json!({"lun": "0:1", "path": "x", "fd": true}),
                code::INVALID_PARAMS,
            ),
        ] {
            let e = f.error(method, params.clone());
            assert_eq!(e.code, want, "{method} {params}: {}", e.message);
            assert_eq!(
                f.table.luns[&CD].state,
                LunState::Online,
                "{method} {params}"
            );
        }
        // Too small for one 2048-byte block.
        let tiny = f.image("tiny.iso", 1000);
        let e = f.error("change-medium", json!({"lun": "0:1", "path": tiny}));
        assert_eq!(e.code, code::CANNOT_OPEN);
        assert!(e.message.contains("too small"), "{}", e.message);
        // An iSCSI LUN is changed on its target.
        let source =
            crate::config::lun::parse_iscsi_url("127.0.0.1/iqn.2026-01.org.example:t/0").unwrap();
        f.table.luns.get_mut(&CD).unwrap().config.source = LunSource::Iscsi(source);
        assert_eq!(
            f.error("eject", json!({"lun": "0:1"})).code,
            code::UNSUPPORTED
        );
    }

    #[test]
    fn change_opens_the_image_and_records_it_on_success_only() {
        let (mut f, b) = with_cdrom();
        let Outcome::Forward { call, fds, then } = f.call(
            "change-medium",
            json!({"lun": "0:1", "path": b, "force": true}),
        ) else {
            panic!("not forwarded")
        };
        assert_eq!(
            call,
            WorkerCall::ChangeMedium {
                address: CD,
                cache: Some(crate::config::CacheMode::Writeback),
                force: true
            }
        );
        assert_eq!(fds.len(), 1, "the image goes to the worker");
        // Opened read-only, as the CD-ROM is.
        let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFL).unwrap();
        assert_eq!(flags & libc::O_ACCMODE, libc::O_RDONLY);
        // Busy meanwhile.
        let e = f.error("eject", json!({"lun": "0:1"}));
        assert_eq!(e.code, code::BUSY);
        // The guest locked it: refused, nothing recorded.
        let e = finish_call(
            &mut f.table,
            then,
            Err(RpcError::new(code::MEDIUM_LOCKED, "locked")),
        )
        .unwrap_err();
        assert_eq!(e.code, code::MEDIUM_LOCKED);
        let entry = &f.table.luns[&CD];
        assert_eq!(entry.state, LunState::Online);
        assert!(entry.config.source.to_string().ends_with("a.iso"));
        assert!(f.table.changes.is_empty(), "nothing for restarts either");
        // Again, and the worker agrees.
        let Outcome::Forward { then, .. } =
            f.call("change-medium", json!({"lun": "0:1", "path": b}))
        else {
            panic!()
        };
        let v = finish_call(&mut f.table, then, Ok(json!({}))).unwrap();
        assert_eq!(v, json!({"size": 2 << 20}));
        // The supervisor's copy of the new medium, for a restarted worker.
        match f.table.changes.as_slice() {
            [Change::Medium {
                target: 0,
                lun: 1,
                medium: Some(m),
            }] => {
                assert_eq!(m.backend.size(), 2 << 20);
                assert_eq!(m.config.source.to_string(), b.display().to_string());
            }
            other => panic!("{other:?}"),
        }
        let list = f.table.list();
        let cd = &list["luns"][1];
        assert_eq!(cd["source"], b.display().to_string());
        assert_eq!(
            (cd["size"].clone(), cd["medium"].clone()),
            (json!(2 << 20), json!("loaded"))
        );
        assert!(
            list["luns"][0]["medium"].is_null(),
            "a fixed disk has no medium"
        );
    }

    /// A removable disk's new medium is opened as the LUN is: read-write (and locked
    /// exclusively) unless the LUN is read-only.
    #[test]
    fn a_removable_disk_gets_its_medium_opened_like_its_image() {
        let mut f = Fixture::new();
        let disk = f.image("d.img", 1 << 20);
        let mut c = LunConfig::new(0, 2, &disk);
        c.removable = true;
        let entry = LunEntry {
            config: c,
            size: 1 << 20,
            state: LunState::Online,
            runtime: false,
            passed_fd: false,
        };
        f.table.luns.insert(Address { target: 0, lun: 2 }, entry);
        let next = f.image("e.img", 2 << 20);
        let access = |f: &mut Fixture| {
            let Outcome::Forward { fds, then, .. } =
                f.call("change-medium", json!({"lun": "0:2", "path": next}))
            else {
                panic!("not forwarded")
            };
            let flags = nix::fcntl::fcntl(&fds[0], nix::fcntl::FcntlArg::F_GETFL).unwrap();
            // Exclusive for read-write: another exclusive lock fails meanwhile.
            let other = File::open(&next).unwrap();
            // SAFETY: flock on a descriptor we own.
            let free = unsafe {
                libc::flock(
                    std::os::fd::AsRawFd::as_raw_fd(&other),
                    libc::LOCK_SH | libc::LOCK_NB,
                ) == 0
            };
            finish_call(&mut f.table, then, Err(RpcError::new(code::WORKER, "no"))).unwrap_err();
            (flags & libc::O_ACCMODE, free)
        };
        assert_eq!(access(&mut f), (libc::O_RDWR, false));
        f.table
            .luns
            .get_mut(&Address { target: 0, lun: 2 })
            .unwrap()
            .config
            .read_only = true;
        assert_eq!(access(&mut f), (libc::O_RDONLY, true));
    }

    #[test]
    fn eject_records_no_medium_until_the_next_change() {
        let (mut f, b) = with_cdrom();
        let Outcome::Forward { call, fds, then } = f.call("eject", json!({"lun": "0:1"})) else {
            panic!()
        };
        assert_eq!(
            (call, fds.len()),
            (
                WorkerCall::ChangeMedium {
                    address: CD,
                    cache: None,
                    force: false
                },
                0
            )
        );
        assert_eq!(
            finish_call(&mut f.table, then, Ok(json!({}))).unwrap(),
            json!({})
        );
        assert_eq!(f.table.list()["luns"][1]["medium"], "none");
        assert!(matches!(
            f.table.changes.as_slice(),
            [Change::Medium {
                target: 0,
                lun: 1,
                medium: None
            }]
        ));
        // A passed descriptor: its name is the path given.
        f.fds.push_back(File::open(&b).unwrap().into());
        let Outcome::Forward { then, fds, .. } = f.call(
            "change-medium",
            json!({"lun": "0:1", "path": "installer.iso", "fd": true}),
        ) else {
            panic!()
        };
        assert!(f.fds.is_empty() && fds.len() == 1);
        finish_call(&mut f.table, then, Ok(json!({}))).unwrap();
        let cd = &f.table.list()["luns"][1];
        assert_eq!(
            (cd["source"].clone(), cd["medium"].clone()),
            (json!("installer.iso"), json!("loaded"))
        );
    }
}
