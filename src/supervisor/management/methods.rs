//! The management methods: validation (with the `config` grammar), the supervisor's own record
//! of the LUNs, opening what `add-lun` names, and what to ask the worker.
//!
//! A method either answers at once (`list`, and every refusal) or becomes a [`WorkerCall`] and
//! a [`Then`]: what to record once the worker said yes. Nothing in the record changes before
//! that, so a refused or failed call changes nothing; while a call on a LUN is in flight the
//! LUN is marked busy and other changes to it are refused.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::File,
    os::fd::OwnedFd,
    path::{Component, Path, PathBuf},
};

use serde_json::{json, Map, Value};

pub use super::call::WorkerCall;
use super::{
    medium,
    peer::Caller,
    protocol::{address_param, bool_param, code, only_params, RpcError},
    stats,
};
use crate::{
    config::{cli::parse_lun, ctl::Address, CacheMode, LunConfig, MAX_LUN},
    supervisor::{
        luns::Change,
        open::{self, RuntimeLun},
    },
};

/// Where a LUN stands in the supervisor's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LunState {
    Online,
    /// `add-lun` sent, the worker has not answered yet.
    Adding,
    /// Another call on it is in flight.
    Busy(&'static str),
}

impl LunState {
    fn name(self) -> &'static str {
        match self {
            LunState::Online => "online",
            LunState::Adding => "adding",
            LunState::Busy(what) => what,
        }
    }
}

/// One LUN as the supervisor knows it.
#[derive(Debug, Clone)]
pub struct LunEntry {
    pub config: LunConfig,
    /// Bytes, as last opened or resized.
    pub size: u64,
    pub state: LunState,
    /// Added by `add-lun` (not from the command line or file).
    pub runtime: bool,
    /// The source came as a descriptor from a client.
    pub passed_fd: bool,
}

/// The LUNs the worker serves, by address.
#[derive(Debug, Default)]
pub struct Table {
    pub luns: BTreeMap<Address, LunEntry>,
    /// Changes the worker confirmed, for the LUN set a restarted worker gets
    /// ([`crate::supervisor::luns`]); taken by [`super::Server::take_changes`].
    pub changes: Vec<Change>,
    /// Removable LUNs whose medium `eject` took out ([`super::medium`]).
    pub ejected: std::collections::BTreeSet<Address>,
}

fn addr(config: &LunConfig) -> Address {
    Address {
        target: config.target,
        lun: config.lun,
    }
}

impl Table {
    /// The LUNs the daemon was started with.
    pub fn new(initial: impl IntoIterator<Item = (LunConfig, u64)>) -> Self {
        let luns = initial
            .into_iter()
            .map(|(config, size)| {
                (
                    addr(&config),
                    LunEntry {
                        config,
                        size,
                        state: LunState::Online,
                        runtime: false,
                        passed_fd: false,
                    },
                )
            })
            .collect();
        Self {
            luns,
            ..Self::default()
        }
    }

    /// The lowest free LUN number on target 0 (how a `--lun` without an address is numbered).
    fn free_address(&self) -> Option<Address> {
        (0..=MAX_LUN)
            .map(|lun| Address { target: 0, lun })
            .find(|a| !self.luns.contains_key(a))
    }

    /// The LUN at `a`, if no other call is changing it and it is not an iSCSI LUN (its size and
    /// protection are the target's).
    fn online(&mut self, a: Address) -> Result<&mut LunEntry, RpcError> {
        self.online_for(a, false)
    }

    /// [`Self::online`], an iSCSI LUN too when `iscsi` (`remove-lun`).
    fn online_for(&mut self, a: Address, iscsi: bool) -> Result<&mut LunEntry, RpcError> {
        let e = self
            .luns
            .get_mut(&a)
            .ok_or_else(|| RpcError::new(code::UNKNOWN_LUN, format!("no LUN {a}")))?;
        if !iscsi && e.config.source.iscsi().is_some() {
            return Err(RpcError::new(
                code::UNSUPPORTED,
                format!("LUN {a} is an iSCSI LUN: it is changed on its target, not here"),
            ));
        }
        if e.state != LunState::Online {
            return Err(RpcError::new(
                code::BUSY,
                format!("LUN {a} is {}: try again when that is done", e.state.name()),
            ));
        }
        Ok(e)
    }

    /// `list`'s answer.
    pub fn list(&self) -> Value {
        let luns: Vec<Value> = self
            .luns
            .iter()
            .map(|(a, e)| {
                let c = &e.config;
                json!({
                    "target": a.target,
                    "lun": a.lun,
                    "source": c.source.to_string(),
                    "size": e.size,
                    "read-only": c.read_only,
                    "block-size": c.block_size.bytes(),
                    "phys-block-size": c.phys_block_size.unwrap_or(c.block_size.bytes()),
                    "cache": match c.cache { CacheMode::None => "none", CacheMode::Writeback => "writeback" },
                    "discard": c.discard,
                    // What the guest sees: the configured identities or the derived defaults.
                    "serial": c.effective_serial(),
                    "wwn": format!("0x{:016x}", c.effective_wwn()),
                    "pr-file": c.pr_file.as_ref().map(|p| p.display().to_string()),
                    "state": e.state.name(),
                    "origin": if e.runtime { "add-lun" } else { "configuration" },
                    "passed-fd": e.passed_fd,
                    "medium": c.removable.then(|| {
                        if self.ejected.contains(a) { "none" } else { "loaded" }
                    }),
                })
            })
            .collect();
        json!({ "luns": luns })
    }
}

/// What to record once the worker answered yes.
#[derive(Debug)]
pub enum Then {
    /// Keep the supervisor's copy of the files until then (the worker got its own).
    Added {
        address: Address,
        opened: Box<RuntimeLun>,
    },
    Removed(Address),
    Resized(Address),
    ReadOnly(Address, bool),
    Flushed(Address),
    /// `change-medium`, `eject`.
    Medium(Box<medium::Changed>),
    RetriedHeld,
    /// Statistics; `pages`: what earlier pages brought.
    Stats {
        prometheus: bool,
        pages: Vec<Value>,
    },
}

/// What a method came to.
#[derive(Debug)]
pub enum Outcome {
    Answer(Result<Value, RpcError>),
    Forward {
        call: WorkerCall,
        fds: Vec<File>,
        then: Then,
    },
}

impl From<RpcError> for Outcome {
    fn from(e: RpcError) -> Self {
        Outcome::Answer(Err(e))
    }
}

/// What a method may use besides its parameters.
pub struct Context<'a> {
    pub table: &'a mut Table,
    /// The `--image-dir`s, canonical.
    pub image_dirs: &'a [PathBuf],
    pub caller: &'a Caller,
    /// Descriptors the client passed (SCM_RIGHTS), oldest first.
    pub fds: &'a mut VecDeque<OwnedFd>,
    /// The iSCSI portals `add-lun` may log in to.
    pub iscsi: &'a super::iscsi::IscsiAllow,
}

/// Every method, for `METHOD_NOT_FOUND`'s message and the docs.
pub const METHODS: &[&str] = &[
    "list",
    "add-lun",
    "remove-lun",
    "resize",
    "set-readonly",
    "flush",
    "retry-held",
    "stats",
    "change-medium",
    "eject",
];

/// Runs `method`.
pub fn call(ctx: Context<'_>, method: &str, params: &Map<String, Value>) -> Outcome {
    match run(ctx, method, params) {
        Ok(o) => o,
        Err(e) => Outcome::Answer(Err(e)),
    }
}

fn run(ctx: Context<'_>, method: &str, params: &Map<String, Value>) -> Result<Outcome, RpcError> {
    let simple = |table: &mut Table,
                  state: &'static str,
                  make: fn(Address) -> (WorkerCall, Then)|
     -> Result<Outcome, RpcError> {
        only_params(params, &["lun"])?;
        let a = address_param(params)?;
        table.online_for(a, state == "removing")?.state = LunState::Busy(state);
        let (call, then) = make(a);
        Ok(Outcome::Forward {
            call,
            fds: Vec::new(),
            then,
        })
    };
    match method {
        "list" => {
            only_params(params, &[])?;
            Ok(Outcome::Answer(Ok(ctx.table.list())))
        }
        "add-lun" => add_lun(ctx, params),
        "change-medium" | "eject" => change_medium(ctx, method, params),
        "remove-lun" => simple(ctx.table, "removing", |a| {
            (WorkerCall::RemoveLun(a), Then::Removed(a))
        }),
        "resize" => simple(ctx.table, "resizing", |a| {
            (WorkerCall::Resize(a), Then::Resized(a))
        }),
        "flush" => {
            // Not a change: a LUN that is busy otherwise may still be flushed.
            only_params(params, &["lun"])?;
            let a = address_param(params)?;
            if !ctx.table.luns.contains_key(&a) {
                return Err(RpcError::new(code::UNKNOWN_LUN, format!("no LUN {a}")));
            }
            Ok(Outcome::Forward {
                call: WorkerCall::Flush(a),
                fds: Vec::new(),
                then: Then::Flushed(a),
            })
        }
        "retry-held" => {
            // Not a change either: it only makes the worker retry what it holds sooner.
            only_params(params, &[])?;
            Ok(Outcome::Forward {
                call: WorkerCall::RetryHeld,
                fds: Vec::new(),
                then: Then::RetriedHeld,
            })
        }
        "set-readonly" => {
            only_params(params, &["lun", "read-only"])?;
            let a = address_param(params)?;
            if !params.contains_key("read-only") {
                return Err(RpcError::invalid_params(
                    "missing \"read-only\": true or false",
                ));
            }
            let ro = bool_param(params, "read-only", false)?;
            ctx.table.online(a)?.state = LunState::Busy("changing");
            Ok(Outcome::Forward {
                call: WorkerCall::SetReadOnly(a, ro),
                fds: Vec::new(),
                then: Then::ReadOnly(a, ro),
            })
        }
        "stats" => {
            only_params(params, &["lun", "format"])?;
            let a = match params.get("lun") {
                None => None,
                Some(_) => {
                    let a = address_param(params)?;
                    if !ctx.table.luns.contains_key(&a) {
                        return Err(RpcError::new(code::UNKNOWN_LUN, format!("no LUN {a}")));
                    }
                    Some(a)
                }
            };
            let prometheus = match params.get("format") {
                None => false,
                Some(Value::String(f)) if f == "json" => false,
                Some(Value::String(f)) if f == "prometheus" => true,
                Some(_) => {
                    return Err(RpcError::invalid_params(
                        "\"format\" must be \"json\" or \"prometheus\"",
                    ))
                }
            };
            Ok(Outcome::Forward {
                call: WorkerCall::Stats {
                    address: a,
                    after: None,
                },
                fds: Vec::new(),
                then: Then::Stats {
                    prometheus,
                    pages: Vec::new(),
                },
            })
        }
        other => Err(RpcError::new(
            code::METHOD_NOT_FOUND,
            format!("unknown method \"{other}\" (known: {})", METHODS.join(", ")),
        )),
    }
}

/// Whether `path` is allowed to be opened by path: absolute, no `..`, and (its real path)
/// inside one of `dirs`. Returns the real path to open (so a link swapped in afterwards is not
/// followed out of the directory; Landlock enforces the same directories in the kernel).
pub fn allowed_path(path: &Path, dirs: &[PathBuf], what: &str) -> Result<PathBuf, RpcError> {
    let refuse = |why: String| RpcError::new(code::PATH_NOT_ALLOWED, why);
    if dirs.is_empty() {
        return Err(refuse(format!(
            "{what} {}: this daemon has no --image-dir: add LUNs by passing an open descriptor \
             (fd)",
            path.display()
        )));
    }
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return Err(refuse(format!(
            "{what} {}: give an absolute path without '..'",
            path.display()
        )));
    }
    let cannot = |e: std::io::Error| {
        RpcError::new(
            code::CANNOT_OPEN,
            format!(
                "{what} {}: {}",
                path.display(),
                crate::config::error::io_msg(&e)
            ),
        )
    };
    // A file that does not exist yet (a pr-file, a size= image): its directory's real path.
    let real = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
                return Err(refuse(format!(
                    "{what} {}: not a file path",
                    path.display()
                )));
            };
            std::fs::canonicalize(parent).map_err(cannot)?.join(name)
        }
        Err(e) => return Err(cannot(e)),
    };
    if dirs.iter().any(|d| real.starts_with(d) && real != *d) {
        Ok(real)
    } else {
        Err(refuse(format!(
            "{what} {} is outside every --image-dir ({})",
            path.display(),
            dirs.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

fn add_lun(ctx: Context<'_>, params: &Map<String, Value>) -> Result<Outcome, RpcError> {
    only_params(params, &["spec", "fd"])?;
    let spec = match params.get("spec") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(RpcError::invalid_params("\"spec\" must be a string")),
        None => {
            return Err(RpcError::invalid_params(
                "missing \"spec\": [TARGET:LUN=]SOURCE[,OPTION]... (as --lun)",
            ))
        }
    };
    let passed = bool_param(params, "fd", false)?;
    let spec =
        parse_lun(spec).map_err(|e| RpcError::invalid_params(format!("--lun {spec}: {e}")))?;
    let mut config = spec.config;
    let address = match spec.address {
        Some((target, lun)) => Address { target, lun },
        None => ctx
            .table
            .free_address()
            .ok_or_else(|| RpcError::new(code::DUPLICATE, "no free LUN number left on target 0"))?,
    };
    (config.target, config.lun) = (address.target, address.lun);
    if let Some(other) = ctx.table.luns.get(&address) {
        return Err(RpcError::new(
            code::DUPLICATE,
            format!(
                "LUN {address} already exists (source {})",
                other.config.source
            ),
        ));
    }
    let Some(source) = config.source.path().map(Path::to_path_buf) else {
        // An iSCSI source: the supervisor logs in (super::iscsi), the worker gets the
        // connection.
        let dirs = ctx.image_dirs;
        let l = super::iscsi::login(ctx.iscsi, config, address, |p| {
            allowed_path(p, dirs, "chap-secret-file")
        })?;
        ctx.table.luns.insert(
            address,
            LunEntry {
                config: l.config.clone(),
                size: l.size,
                state: LunState::Adding,
                runtime: true,
                passed_fd: false,
            },
        );
        return Ok(Outcome::Forward {
            call: WorkerCall::AddLun {
                config: Box::new(l.config),
                pr_file: false,
                iscsi: Some(Box::new(l.params)),
            },
            fds: vec![File::from(OwnedFd::from(l.stream))],
            then: Then::Added {
                address,
                opened: Box::new(l.retained),
            },
        });
    };
    let null = crate::block::null::null_source_size(&source);
    if passed && (config.create_size.is_some() || null.is_some()) {
        return Err(RpcError::invalid_params(
            "a passed descriptor is the source: size= and null:// do not apply",
        ));
    }
    if let Some(Err(e)) = &null {
        return Err(RpcError::invalid_params(format!(
            "{}: {e}",
            source.display()
        )));
    }
    if !passed && null.is_none() {
        config.source = allowed_path(&source, ctx.image_dirs, "source")?.into();
    }
    if let Some(pr) = &config.pr_file {
        let pr = allowed_path(pr, ctx.image_dirs, "pr-file")?;
        if let Some((a, _)) = ctx
            .table
            .luns
            .iter()
            .find(|(_, e)| e.config.pr_file.as_ref() == Some(&pr))
        {
            return Err(RpcError::new(
                code::DUPLICATE,
                format!("pr-file {} is LUN {a}'s", pr.display()),
            ));
        }
        config.pr_file = Some(pr);
    }
    let file = if passed {
        let fd = ctx.fds.pop_front().ok_or_else(|| {
            RpcError::invalid_params(
                "\"fd\": true, but no descriptor came with the request (SCM_RIGHTS)",
            )
        })?;
        Some(File::from(fd))
    } else {
        None
    };
    let mut opened = open::open_runtime(&config, file)
        .map_err(|e| RpcError::new(code::CANNOT_OPEN, e.to_string()))?;
    let size = opened.lun.backend.size();
    // The copies go to the worker; the supervisor's own stay open (and locked) until it
    // answered.
    let fds = std::mem::take(&mut opened.fds);
    ctx.table.luns.insert(
        address,
        LunEntry {
            config: config.clone(),
            size,
            state: LunState::Adding,
            runtime: true,
            passed_fd: passed,
        },
    );
    let pr_file = config.pr_file.is_some();
    Ok(Outcome::Forward {
        call: WorkerCall::AddLun {
            config: Box::new(config),
            pr_file,
            iscsi: None,
        },
        fds,
        then: Then::Added {
            address,
            opened: Box::new(opened),
        },
    })
}

/// `change-medium` and `eject` ([`medium`]): refusals that need no file first (so a passed
/// descriptor stays unused), then the new medium is opened with the LUN's options.
fn change_medium(
    ctx: Context<'_>,
    method: &str,
    params: &Map<String, Value>,
) -> Result<Outcome, RpcError> {
    let call = medium::parse(method, params)?;
    let a = call.address;
    let entry = ctx.table.online(a)?;
    medium::check_removable(a, &entry.config)?;
    let config = entry.config.clone();
    let (source, file) = match &call.image {
        None => (None, None),
        Some((path, false)) => (Some(allowed_path(path, ctx.image_dirs, "medium")?), None),
        Some((name, true)) => {
            let fd = ctx.fds.pop_front().ok_or_else(|| {
                RpcError::invalid_params(
                    "\"fd\": true, but no descriptor came with the request (SCM_RIGHTS)",
                )
            })?;
            (Some(name.clone()), Some(File::from(fd)))
        }
    };
    let (call, fds, changed) = medium::prepare(&call, &config, source.map(Into::into), file)?;
    if let Some(e) = ctx.table.luns.get_mut(&a) {
        e.state = LunState::Busy("changing");
    }
    Ok(Outcome::Forward {
        call,
        fds,
        then: Then::Medium(Box::new(changed)),
    })
}

/// Records the worker's answer to a forwarded call and makes the client's answer. `answer` is
/// the worker's result (a JSON object) or its error message.
pub fn finish(
    table: &mut Table,
    then: Then,
    answer: Result<Value, RpcError>,
) -> Result<Value, RpcError> {
    let worker_err = |e: RpcError| e;
    match then {
        Then::Added { address, opened } => {
            match answer {
                Ok(_) => {
                    let e = table.luns.get_mut(&address);
                    // As recorded when it was opened (an iSCSI LUN's backend has no size).
                    let mut size = opened.lun.backend.size();
                    if let Some(e) = e {
                        e.state = LunState::Online;
                        size = e.size;
                    }
                    // The worker holds its own descriptors now; ours are kept for a restarted
                    // worker, or closed when nothing restarts.
                    let opened = *opened;
                    if let Some(portal) = opened.iscsi_portal {
                        table.changes.push(Change::Portal {
                            target: address.target,
                            lun: address.lun,
                            portal,
                        });
                    }
                    table.changes.push(Change::Added(Box::new(opened.lun)));
                    Ok(json!({"target": address.target, "lun": address.lun, "size": size}))
                }
                Err(e) => {
                    table.luns.remove(&address);
                    Err(worker_err(e))
                }
            }
        }
        Then::Removed(a) => match answer {
            Ok(_) => {
                table.luns.remove(&a);
                table.changes.push(Change::Removed {
                    target: a.target,
                    lun: a.lun,
                });
                table.ejected.remove(&a);
                Ok(json!({}))
            }
            Err(e) => {
                set_online(table, a);
                Err(worker_err(e))
            }
        },
        Then::Resized(a) => {
            set_online(table, a);
            let v = answer.map_err(worker_err)?;
            let size = v.get("size").and_then(Value::as_u64);
            if let (Some(size), Some(e)) = (size, table.luns.get_mut(&a)) {
                e.size = size;
            }
            table.changes.push(Change::Resized {
                target: a.target,
                lun: a.lun,
            });
            Ok(json!({ "size": size }))
        }
        Then::ReadOnly(a, ro) => {
            set_online(table, a);
            answer.map_err(worker_err)?;
            if let Some(e) = table.luns.get_mut(&a) {
                e.config.read_only = ro;
            }
            table.changes.push(Change::ReadOnly {
                target: a.target,
                lun: a.lun,
                read_only: ro,
            });
            Ok(json!({}))
        }
        Then::Flushed(_) | Then::RetriedHeld => answer.map(|_| json!({})).map_err(worker_err),
        Then::Medium(changed) => {
            set_online(table, changed.address);
            answer?;
            let entry = table
                .luns
                .get_mut(&changed.address)
                .map(|e| (&mut e.config, &mut e.size));
            let (result, change) = medium::record(*changed, entry, &mut table.ejected);
            table.changes.push(change);
            Ok(result)
        }
        Then::Stats {
            prometheus,
            mut pages,
        } => {
            let v = answer?;
            pages.extend(v["luns"].as_array().into_iter().flatten().cloned());
            let v = json!({ "luns": pages });
            if prometheus {
                Ok(json!({ "text": stats::prometheus(&v) }))
            } else {
                Ok(v)
            }
        }
    }
}

fn set_online(table: &mut Table, a: Address) {
    if let Some(e) = table.luns.get_mut(&a) {
        e.state = LunState::Online;
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn me() -> Caller {
        Caller {
            pid: 1,
            uid: 0,
            gid: 0,
            groups: vec![],
        }
    }

    /// A record with one disk LUN at 0:0 over an image in an `--image-dir` (also used by
    /// [`super::super::medium`]'s tests).
    pub(crate) struct Fixture {
        pub dir: tempfile::TempDir,
        pub table: Table,
        pub dirs: Vec<PathBuf>,
        pub fds: VecDeque<OwnedFd>,
    }

    impl Fixture {
        pub fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let real = std::fs::canonicalize(dir.path()).unwrap();
            let img = real.join("a.img");
            File::create(&img).unwrap().set_len(1 << 20).unwrap();
            Self {
                table: Table::new([(LunConfig::new(0, 0, &img), 1 << 20)]),
                dirs: vec![real],
                dir,
                fds: VecDeque::new(),
            }
        }

        pub fn image(&self, name: &str, size: u64) -> PathBuf {
            let p = self.dirs[0].join(name);
            File::create(&p).unwrap().set_len(size).unwrap();
            p
        }

        pub fn call(&mut self, method: &str, params: Value) -> Outcome {
            let caller = me();
            let Value::Object(params) = params else {
                panic!()
            };
            call(
                Context {
                    table: &mut self.table,
                    image_dirs: &self.dirs,
                    caller: &caller,
                    fds: &mut self.fds,
                    iscsi: &super::super::iscsi::IscsiAllow::default(),
                },
                method,
                &params,
            )
        }

        pub fn error(&mut self, method: &str, params: Value) -> RpcError {
            let before = format!("{:?}", self.table.list());
            match self.call(method, params) {
                Outcome::Answer(Err(e)) => {
                    assert_eq!(
                        format!("{:?}", self.table.list()),
                        before,
                        "a refused call changed the record"
                    );
                    e
                }
                other => panic!("{method}: not refused: {other:?}"),
            }
        }
    }

    #[test]
    fn list_shows_the_configured_luns() {
        let mut f = Fixture::new();
        let Outcome::Answer(Ok(v)) = f.call("list", json!({})) else {
            panic!()
        };
        assert_eq!(v["luns"][0]["target"], 0);
        assert_eq!(v["luns"][0]["size"], 1 << 20);
        assert_eq!(v["luns"][0]["state"], "online");
        assert_eq!(v["luns"][0]["origin"], "configuration");
        assert_eq!(f.error("list", json!({"x": 1})).code, code::INVALID_PARAMS);
    }

    #[test]
    fn unknown_method_and_lun() {
        let mut f = Fixture::new();
        let e = f.error("frobnicate", json!({}));
        assert_eq!(e.code, code::METHOD_NOT_FOUND);
        assert!(e.message.contains("add-lun"), "{}", e.message);
        for m in ["remove-lun", "resize", "flush"] {
            let e = f.error(m, json!({"lun": "0:9"}));
            assert_eq!(
                (e.code, e.message.as_str()),
                (code::UNKNOWN_LUN, "no LUN 0:9")
            );
            assert_eq!(f.error(m, json!({})).code, code::INVALID_PARAMS);
            assert_eq!(f.error(m, json!({"lun": "x"})).code, code::INVALID_PARAMS);
        }
        let e = f.error("set-readonly", json!({"lun": "0:9", "read-only": true}));
        assert_eq!(e.code, code::UNKNOWN_LUN);
        let e = f.error("set-readonly", json!({"lun": "0:0"}));
        assert_eq!(e.code, code::INVALID_PARAMS);
        let e = f.error("set-readonly", json!({"lun": "0:0", "read-only": "yes"}));
        assert_eq!(e.code, code::INVALID_PARAMS);
        assert_eq!(
            f.error("stats", json!({"lun": "3:3"})).code,
            code::UNKNOWN_LUN
        );
        assert_eq!(
            f.error("stats", json!({"format": "xml"})).code,
            code::INVALID_PARAMS
        );
    }

    #[test]
    fn iscsi_luns_are_removed_but_not_changed_at_run_time() {
        let mut f = Fixture::new();
        let e = f.error(
            "add-lun",
            json!({"spec": "1:0=iscsi://127.0.0.1/iqn.2026-01.org.example:t/0"}),
        );
        // No portal allowed (none configured, no --iscsi-portal): refused before any
        // connection, naming the option; nothing recorded.
        assert_eq!(e.code, code::PATH_NOT_ALLOWED, "{}", e.message);
        assert!(e.message.contains("--iscsi-portal"), "{}", e.message);
        assert_eq!(f.table.luns.len(), 1);
        // A configured iSCSI LUN is listed and may be removed, but not resized or
        // write-protected from here (that is the target's business).
        let source =
            crate::config::lun::parse_iscsi_url("127.0.0.1/iqn.2026-01.org.example:t/0").unwrap();
        f.table = Table::new([(
            LunConfig::new(2, 0, crate::config::LunSource::Iscsi(source)),
            0,
        )]);
        for (method, params) in [
            ("resize", json!({"lun": "2:0"})),
            ("set-readonly", json!({"lun": "2:0", "read-only": true})),
        ] {
            let e = f.error(method, params);
            assert_eq!(e.code, code::UNSUPPORTED, "{method}: {}", e.message);
        }
        let Outcome::Forward { call, then, .. } = f.call("remove-lun", json!({"lun": "2:0"}))
        else {
            panic!("remove-lun of an iSCSI LUN not forwarded");
        };
        assert!(matches!(call, WorkerCall::RemoveLun(_)), "{call:?}");
        finish(&mut f.table, then, Ok(json!({}))).unwrap();
        assert!(f.table.luns.is_empty());
    }

    #[test]
    fn add_lun_refusals_change_nothing() {
        let mut f = Fixture::new();
        let img = f.image("b.img", 1 << 20);
        let e = f.error("add-lun", json!({}));
        assert_eq!(e.code, code::INVALID_PARAMS);
        let e = f.error("add-lun", json!({"spec": format!("0:0={}", img.display())}));
        assert_eq!(e.code, code::DUPLICATE);
        assert!(
            e.message.contains("LUN 0:0 already exists"),
            "{}",
            e.message
        );
        let e = f.error(
            "add-lun",
            json!({"spec": format!("{},bogus", img.display())}),
        );
        assert_eq!(e.code, code::INVALID_PARAMS);
        assert!(
            e.message.contains("unknown option 'bogus'"),
            "{}",
            e.message
        );
        // Outside every image directory, relative, with '..'.
        for p in ["/etc/passwd", "relative.img"] {
            let e = f.error("add-lun", json!({ "spec": p }));
            assert_eq!(e.code, code::PATH_NOT_ALLOWED, "{p}: {}", e.message);
        }
        let sneaky = format!("{}/../{}", f.dirs[0].display(), "x.img");
        assert_eq!(
            f.error("add-lun", json!({ "spec": sneaky })).code,
            code::PATH_NOT_ALLOWED
        );
        // A link inside the directory that points outside it.
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("o.img");
        File::create(&target).unwrap().set_len(1 << 20).unwrap();
        std::os::unix::fs::symlink(&target, f.dirs[0].join("link.img")).unwrap();
        let e = f.error(
            "add-lun",
            json!({ "spec": f.dirs[0].join("link.img").display().to_string() }),
        );
        assert_eq!(e.code, code::PATH_NOT_ALLOWED, "{}", e.message);
        // Missing, too small, unreadable.
        let e = f.error(
            "add-lun",
            json!({ "spec": f.dirs[0].join("missing.img").display().to_string() }),
        );
        assert_eq!(e.code, code::CANNOT_OPEN, "{}", e.message);
        let small = f.image("small.img", 100);
        let e = f.error("add-lun", json!({ "spec": small.display().to_string() }));
        assert_eq!(e.code, code::CANNOT_OPEN);
        assert!(e.message.contains("too small"), "{}", e.message);
        // The image is in use (locked by another LUN of ours).
        let e = f.error(
            "add-lun",
            json!({"spec": format!("0:5={}", img.display()), "fd": true}),
        );
        assert_eq!(e.code, code::INVALID_PARAMS, "no descriptor was passed");
        let e = f.error("add-lun", json!({"spec": "null://1M", "fd": true}));
        assert_eq!(e.code, code::INVALID_PARAMS);
        let e = f.error("add-lun", json!({"spec": "x", "fdd": true}));
        assert_eq!(e.code, code::INVALID_PARAMS);
        // No image directory at all.
        f.dirs.clear();
        let e = f.error("add-lun", json!({ "spec": img.display().to_string() }));
        assert_eq!(e.code, code::PATH_NOT_ALLOWED);
        assert!(e.message.contains("no --image-dir"), "{}", e.message);
        drop(f.dir);
    }

    #[test]
    fn add_lun_opens_and_locks_then_records_on_success_only() {
        let mut f = Fixture::new();
        let img = f.image("b.img", 2 << 20);
        let Outcome::Forward { call, fds, then } =
            f.call("add-lun", json!({"spec": format!("{},ro", img.display())}))
        else {
            panic!("not forwarded")
        };
        let WorkerCall::AddLun {
            config, pr_file, ..
        } = &call
        else {
            panic!("{call:?}")
        };
        assert_eq!((config.target, config.lun, *pr_file), (0, 1, false));
        assert!(config.read_only);
        assert_eq!(fds.len(), 1);
        assert_eq!(
            f.table.luns[&Address { target: 0, lun: 1 }].state,
            LunState::Adding
        );
        // While it is being added, the address is taken and the LUN is busy.
        let e = f.error("add-lun", json!({"spec": format!("0:1={}", img.display())}));
        assert_eq!(e.code, code::DUPLICATE);
        let e = f.error("remove-lun", json!({"lun": "0:1"}));
        assert_eq!(e.code, code::BUSY);
        // The worker refuses: nothing is recorded, the image is released.
        let e = finish(&mut f.table, then, Err(RpcError::new(code::WORKER, "no"))).unwrap_err();
        assert_eq!(e.code, code::WORKER);
        assert!(!f.table.luns.contains_key(&Address { target: 0, lun: 1 }));
        drop(fds);
        // Again, and the worker agrees.
        let Outcome::Forward { then, .. } =
            f.call("add-lun", json!({"spec": format!("0:7={}", img.display())}))
        else {
            panic!()
        };
        let v = finish(&mut f.table, then, Ok(json!({}))).unwrap();
        assert_eq!(v, json!({"target": 0, "lun": 7, "size": 2 << 20}));
        let e = &f.table.luns[&Address { target: 0, lun: 7 }];
        assert_eq!((e.state, e.runtime), (LunState::Online, true));
    }

    #[test]
    fn passed_descriptor() {
        let mut f = Fixture::new();
        let outside = tempfile::tempdir().unwrap();
        let p = outside.path().join("passed.img");
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        // Read-only descriptor for a writable LUN: refused.
        f.fds.push_back(File::open(&p).unwrap().into());
        let e = f.error("add-lun", json!({"spec": "0:3=guest-disk", "fd": true}));
        assert_eq!(e.code, code::CANNOT_OPEN);
        assert!(e.message.contains("read-write"), "{}", e.message);
        assert!(f.fds.is_empty(), "the descriptor was used up");
        f.fds.push_back(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&p)
                .unwrap()
                .into(),
        );
        let Outcome::Forward { call, fds, .. } =
            f.call("add-lun", json!({"spec": "0:3=guest-disk", "fd": true}))
        else {
            panic!()
        };
        assert!(matches!(call, WorkerCall::AddLun { .. }));
        assert_eq!(fds.len(), 1);
        assert!(f.table.luns[&Address { target: 0, lun: 3 }].passed_fd);
    }

    #[test]
    fn busy_luns_refuse_other_changes() {
        let mut f = Fixture::new();
        let Outcome::Forward { then, .. } = f.call("resize", json!({"lun": "0:0"})) else {
            panic!()
        };
        assert_eq!(
            f.error("remove-lun", json!({"lun": "0:0"})).code,
            code::BUSY
        );
        assert!(matches!(
            f.call("flush", json!({"lun": "0:0"})),
            Outcome::Forward { .. }
        ));
        let v = finish(&mut f.table, then, Ok(json!({"size": 4096}))).unwrap();
        assert_eq!(v, json!({"size": 4096}));
        let e = &f.table.luns[&Address { target: 0, lun: 0 }];
        assert_eq!((e.state, e.size), (LunState::Online, 4096));
        let Outcome::Forward { then, .. } =
            f.call("set-readonly", json!({"lun": "0:0", "read-only": true}))
        else {
            panic!()
        };
        finish(&mut f.table, then, Err(RpcError::new(code::WORKER, "x"))).unwrap_err();
        assert!(
            !f.table.luns[&Address { target: 0, lun: 0 }]
                .config
                .read_only
        );
        let Outcome::Forward { then, .. } = f.call("remove-lun", json!({"lun": "0:0"})) else {
            panic!()
        };
        finish(&mut f.table, then, Ok(json!({}))).unwrap();
        assert!(f.table.luns.is_empty());
    }

    /// `retry-held` takes no parameters, goes to the worker whatever state the LUNs are in,
    /// and changes nothing in the record.
    #[test]
    fn retry_held_is_forwarded_and_changes_nothing() {
        let mut f = Fixture::new();
        assert_eq!(
            f.error("retry-held", json!({"lun": "0:0"})).code,
            code::INVALID_PARAMS
        );
        let Outcome::Forward { .. } = f.call("resize", json!({"lun": "0:0"})) else {
            panic!()
        };
        let before = format!("{:?}", f.table.list());
        let Outcome::Forward { call, fds, then } = f.call("retry-held", json!({})) else {
            panic!()
        };
        assert_eq!(call, WorkerCall::RetryHeld);
        assert!(!call.mutates());
        assert!(fds.is_empty());
        assert_eq!(
            finish(&mut f.table, then, Ok(json!({}))).unwrap(),
            json!({})
        );
        assert_eq!(format!("{:?}", f.table.list()), before);
    }
}
