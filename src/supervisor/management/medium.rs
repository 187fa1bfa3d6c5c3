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
//! after an eject. A worker started again after a failure serves the configured media again
//! (the record is reset with it).

use std::{fs::File, path::Path};

use serde_json::{json, Map, Value};

use super::{
    methods::{allowed_path, Context, LunState, Outcome, Table, Then},
    protocol::{address_param, bool_param, code, only_params, RpcError},
    WorkerCall,
};
use crate::{
    config::{ctl::Address, LunSource},
    supervisor::open::{self, RuntimeLun},
};

/// What to record once the worker answered a medium change.
#[derive(Debug)]
pub struct Changed {
    pub address: Address,
    /// The new medium's source (`None`: ejected).
    pub source: Option<LunSource>,
    /// The supervisor's copy of the new image, closed once the worker has its own.
    pub opened: Option<RuntimeLun>,
}

/// Marks `address` busy if it is a removable LUN that may be changed now.
fn removable(table: &mut Table, address: Address) -> Result<(), RpcError> {
    let e = table.online(address)?;
    if !e.config.removable {
        return Err(RpcError::new(
            code::UNSUPPORTED,
            format!(
                "LUN {address} has no removable medium: only type=cdrom and removable LUNs \
                 have one"
            ),
        ));
    }
    e.state = LunState::Busy("changing medium");
    Ok(())
}

/// `change-medium`: `{"lun": "T:L", "path": PATH, "fd": false, "force": false}`. With
/// `"fd": true` the image is the descriptor passed with the request and `path` only its name.
pub fn change_medium(ctx: Context<'_>, params: &Map<String, Value>) -> Result<Outcome, RpcError> {
    only_params(params, &["lun", "path", "fd", "force"])?;
    let address = address_param(params)?;
    let passed = bool_param(params, "fd", false)?;
    let force = bool_param(params, "force", false)?;
    let path = match params.get("path") {
        Some(Value::String(p)) if !p.is_empty() => Path::new(p),
        Some(_) => {
            return Err(RpcError::invalid_params(
                "\"path\" must be a non-empty string",
            ))
        }
        None if passed => Path::new("(passed descriptor)"),
        None => return Err(RpcError::invalid_params("missing \"path\": the new image")),
    };
    let Some(entry) = ctx.table.luns.get(&address) else {
        return Err(RpcError::new(
            code::UNKNOWN_LUN,
            format!("no LUN {address}"),
        ));
    };
    let mut config = entry.config.clone();
    // Only the medium changes: the LUN's pr-file stays the worker's, nothing is created.
    config.pr_file = None;
    config.create_size = None;
    config.source = if passed {
        LunSource::Path(path.to_path_buf())
    } else {
        if crate::block::null::null_source_size(path).is_some() {
            return Err(RpcError::invalid_params(
                "a medium is an image file or device, not null://",
            ));
        }
        LunSource::Path(allowed_path(path, ctx.image_dirs, "medium")?)
    };
    // Refusals that need no file come first (and leave the descriptor unused).
    removable(ctx.table, address)?;
    let file = if passed {
        match ctx.fds.pop_front() {
            Some(fd) => Some(File::from(fd)),
            None => {
                set_online(ctx.table, address);
                return Err(RpcError::invalid_params(
                    "\"fd\": true, but no descriptor came with the request (SCM_RIGHTS)",
                ));
            }
        }
    } else {
        None
    };
    let mut opened = match open::open_runtime(&config, file) {
        Ok(o) => o,
        Err(e) => {
            set_online(ctx.table, address);
            return Err(RpcError::new(code::CANNOT_OPEN, e.to_string()));
        }
    };
    let fds = std::mem::take(&mut opened.fds);
    Ok(Outcome::Forward {
        call: WorkerCall::ChangeMedium {
            address,
            cache: Some(config.cache),
            force,
        },
        fds,
        then: Then::Medium(Box::new(Changed {
            address,
            source: Some(config.source),
            opened: Some(opened),
        })),
    })
}

/// `eject`: `{"lun": "T:L", "force": false}`; the medium is taken out (the guest then gets NOT
/// READY, MEDIUM NOT PRESENT) and its image closed.
pub fn eject(ctx: Context<'_>, params: &Map<String, Value>) -> Result<Outcome, RpcError> {
    only_params(params, &["lun", "force"])?;
    let address = address_param(params)?;
    let force = bool_param(params, "force", false)?;
    removable(ctx.table, address)?;
    Ok(Outcome::Forward {
        call: WorkerCall::ChangeMedium {
            address,
            cache: None,
            force,
        },
        fds: Vec::new(),
        then: Then::Medium(Box::new(Changed {
            address,
            source: None,
            opened: None,
        })),
    })
}

fn set_online(table: &mut Table, a: Address) {
    if let Some(e) = table.luns.get_mut(&a) {
        e.state = LunState::Online;
    }
}

/// Records the worker's answer to a medium change.
pub fn finish(
    table: &mut Table,
    changed: Changed,
    answer: Result<Value, RpcError>,
) -> Result<Value, RpcError> {
    let Changed {
        address,
        source,
        opened,
    } = changed;
    set_online(table, address);
    answer?;
    // The worker holds its own descriptor now; ours closes here.
    let size = opened.map(|o| o.lun.backend.size());
    let entry = table.luns.get_mut(&address);
    match (source, entry) {
        (Some(source), Some(e)) => {
            e.config.source = source;
            e.size = size.unwrap_or(0);
            table.ejected.remove(&address);
        }
        (None, Some(e)) => {
            e.size = 0;
            table.ejected.insert(address);
        }
        (_, None) => {}
    }
    Ok(match size {
        Some(size) => json!({ "size": size }),
        None => json!({}),
    })
}

#[cfg(test)]
mod tests {
    use std::{fs::File, path::PathBuf};

    use serde_json::json;

    use super::super::methods::{finish as finish_call, tests::Fixture, LunEntry};
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
        // Again, and the worker agrees.
        let Outcome::Forward { then, .. } =
            f.call("change-medium", json!({"lun": "0:1", "path": b}))
        else {
            panic!()
        };
        let v = finish_call(&mut f.table, then, Ok(json!({}))).unwrap();
        assert_eq!(v, json!({"size": 2 << 20}));
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
