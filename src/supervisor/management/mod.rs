//! The management socket (`--management-socket`): JSON-RPC 2.0, one request per line, for
//! operators and tools (`vhost-user-scsi ctl`) to list, add, remove and resize LUNs and read
//! statistics while the guest runs (docs/management.md).
//!
//! It lives in the supervisor, which owns every path and the privileged end of the fd broker;
//! the supervisor stays single-threaded, so the socket and its clients are non-blocking and
//! polled by its loop ([`super::monitor`]): [`Server::poll_fds`] gives the descriptors,
//! [`Server::on_poll`] handles what they reported. A call that needs the worker is sent over the
//! broker ([`WorkerLink`]) and answered when its reply arrives ([`Server::on_reply`]).
//!
//! Layers: [`protocol`] (framing and JSON-RPC, pure), [`peer`] (who is calling),
//! [`methods`] (what each method does, the supervisor's record of the LUNs), [`stats`]
//! (Prometheus), [`client`] (the `ctl` side).

pub mod call;
pub mod client;
pub mod iscsi;
pub mod link;
pub mod medium;
pub mod methods;
pub mod peer;
pub mod protocol;
pub mod stats;

use std::{
    collections::{HashMap, VecDeque},
    io::{self, IoSliceMut, Write},
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::net::UnixStream,
    },
    path::PathBuf,
};

use log::{info, warn};
use nix::{
    errno::Errno,
    poll::{PollFd, PollFlags},
    sys::socket::{self, ControlMessageOwned, MsgFlags, SockFlag},
};
use serde_json::Value;

use self::{
    call::WorkerCall,
    methods::{Context, LunEntry, Outcome, Table, Then},
    peer::{Access, Caller},
    protocol::{code, error_line, ok_line, Line, LineReader, RpcError},
};
use super::listener::{self, ListenError, Listener};
use crate::broker::Body;
use crate::config::{ListenSpec, ManagementConfig};

pub use call::{NoWorker, WorkerLink};
pub use methods::LunState;

/// Clients connected at once; one more is told so and closed.
pub const MAX_CLIENTS: usize = 16;
/// Calls one client may have waiting for the worker.
const MAX_CALLS_PER_CLIENT: usize = 8;
/// Descriptors a client may have passed and not yet used.
const MAX_PASSED_FDS: usize = 4;
/// Reads of 8 KiB from one client per wake-up.
const READ_BATCH: usize = 16;
/// Answers not yet read by a client; past this the client is dropped.
const MAX_OUTPUT: usize = 16 << 20;
/// Descriptors the server may hold besides the listener: clients, passed descriptors, LUNs
/// being added (for the supervisor's RLIMIT_NOFILE).
pub const FD_BUDGET: u64 = (MAX_CLIENTS * (1 + MAX_PASSED_FDS) + 2 * MAX_CALLS_PER_CLIENT) as u64;
/// Descriptors of LUNs added at run time that a supervisor restarting workers keeps open for
/// the next one (`supervisor::luns`): 256 LUNs with a `pr-file` each. Past it, `add-lun` fails
/// to open (EMFILE, -32002).
pub const RETAINED_LUN_FDS: usize = 512;

/// Why the management socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ManagementError {
    #[error("--management-socket: {0}")]
    Listen(#[source] ListenError),
    #[error("--management-socket: {0}")]
    NonBlocking(#[source] io::Error),
    #[error("--management-group {group}: {error}")]
    Group {
        group: String,
        #[source]
        error: crate::config::error::SocketGroupError,
    },
    #[error("--iscsi-portal {portal}: cannot resolve it: {}", crate::config::error::io_msg(.error))]
    IscsiPortal {
        portal: String,
        #[source]
        error: io::Error,
    },
    #[error("--image-dir {}: {}", .path.display(), crate::config::error::io_msg(.error))]
    ImageDir {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
}

struct Client {
    token: u64,
    stream: UnixStream,
    caller: Caller,
    reader: LineReader,
    out: Vec<u8>,
    fds: VecDeque<OwnedFd>,
    calls: usize,
    /// The peer shut down its side: answer what is in flight, then close.
    eof: bool,
    /// Broken or misbehaving: drop it.
    dead: bool,
}

impl Client {
    fn send(&mut self, line: &[u8]) {
        if self.out.len() + line.len() > MAX_OUTPUT {
            warn!(
                "management client ({}) does not read its answers; dropped",
                self.caller
            );
            self.dead = true;
            return;
        }
        self.out.extend_from_slice(line);
    }

    fn flush(&mut self) {
        while !self.out.is_empty() && !self.dead {
            match self.stream.write(&self.out) {
                Ok(0) => self.dead = true,
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => self.dead = true,
            }
        }
    }

    /// Reads what is there (bytes and passed descriptors), at most [`READ_BATCH`] reads per
    /// wake-up: a client that keeps writing cannot hold the supervisor in this loop, nor queue
    /// more lines than one batch holds.
    fn receive(&mut self) {
        let mut buf = [0u8; 8192];
        for _ in 0..READ_BATCH {
            if self.eof || self.dead {
                return;
            }
            let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; MAX_PASSED_FDS]);
            let (n, fds, truncated) = {
                let mut iov = [IoSliceMut::new(&mut buf)];
                match socket::recvmsg::<()>(
                    self.stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC | MsgFlags::MSG_DONTWAIT,
                ) {
                    Ok(msg) => {
                        let mut fds = Vec::new();
                        if let Ok(cmsgs) = msg.cmsgs() {
                            for c in cmsgs {
                                if let ControlMessageOwned::ScmRights(raw) = c {
                                    // SAFETY: SCM_RIGHTS gave us these new descriptors; each is
                                    // owned from here on.
                                    fds.extend(
                                        raw.into_iter()
                                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                                    );
                                }
                            }
                        }
                        (msg.bytes, fds, msg.flags.contains(MsgFlags::MSG_CTRUNC))
                    }
                    Err(Errno::EAGAIN) => return,
                    Err(Errno::EINTR) => continue,
                    Err(_) => {
                        self.dead = true;
                        return;
                    }
                }
            };
            if truncated || self.fds.len() + fds.len() > MAX_PASSED_FDS {
                drop(fds);
                let e = RpcError::new(
                    code::TOO_MANY,
                    format!(
                        "at most {MAX_PASSED_FDS} unused descriptors may be passed; the extra ones \
                         were closed"
                    ),
                );
                self.send(&error_line(&Value::Null, &e));
            } else {
                self.fds.extend(fds);
            }
            if n == 0 {
                self.eof = true;
                return;
            }
            self.reader.feed(&buf[..n]);
        }
    }
}

/// A call sent to the worker, waiting for its reply.
struct Waiting {
    client: u64,
    id: Option<Value>,
    method: String,
    caller: Caller,
    call: WorkerCall,
    then: Then,
}

/// The management socket, its clients and the calls in flight.
pub struct Server {
    listener: Listener,
    access: Access,
    image_dirs: Vec<PathBuf>,
    clients: Vec<Client>,
    next_token: u64,
    table: Table,
    waiting: HashMap<u64, Waiting>,
    /// The iSCSI portals `add-lun` may log in to (resolved at start-up).
    iscsi: iscsi::IscsiAllow,
}

impl Server {
    /// Creates the socket (0600, or 0660 for `--management-group`) and the record of the LUNs
    /// the daemon serves (their configuration and size).
    pub fn bind(
        config: &ManagementConfig,
        luns: impl IntoIterator<Item = (crate::config::LunConfig, u64)>,
    ) -> Result<Self, ManagementError> {
        let group = config
            .group
            .as_ref()
            .map(|g| {
                listener::resolve_group(g)
                    .map(|gid| gid.as_raw())
                    .map_err(|error| ManagementError::Group {
                        group: g.clone(),
                        error,
                    })
            })
            .transpose()?;
        let image_dirs = config
            .image_dirs
            .iter()
            .map(|d| {
                std::fs::canonicalize(d).map_err(|error| ManagementError::ImageDir {
                    path: d.clone(),
                    error,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let luns: Vec<(crate::config::LunConfig, u64)> = luns.into_iter().collect();
        let iscsi = iscsi::IscsiAllow::new(luns.iter().map(|(c, _)| c), &config.iscsi_portals)
            .map_err(|(portal, error)| ManagementError::IscsiPortal { portal, error })?;
        let listener = listener::listen(
            &ListenSpec::SocketPath(config.socket.clone()),
            config.group.as_deref(),
        )
        .map_err(ManagementError::Listen)?;
        listener
            .as_unix_listener()
            .set_nonblocking(true)
            .map_err(ManagementError::NonBlocking)?;
        info!(
            "management socket {} ({}); add-lun opens paths under: {}",
            config.socket.display(),
            match &config.group {
                Some(g) => format!("0660, group {g}"),
                None => "0600".into(),
            },
            if image_dirs.is_empty() {
                "nothing (descriptors only)".to_owned()
            } else {
                image_dirs
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        );
        Ok(Self {
            listener,
            access: Access {
                owner: nix::unistd::geteuid().as_raw(),
                group,
            },
            image_dirs,
            clients: Vec::new(),
            next_token: 0,
            table: Table::new(luns),
            waiting: HashMap::new(),
            iscsi,
        })
    }

    /// The socket's path (its directory must stay writable for removal at exit).
    pub fn path(&self) -> Option<&std::path::Path> {
        self.listener.owned_path()
    }

    /// The TCP ports of the iSCSI portals `add-lun` may log in to (the supervisor's Landlock
    /// ruleset allows connecting to them).
    pub fn iscsi_ports(&self) -> Vec<u16> {
        self.iscsi.ports()
    }

    /// Takes the portals of iSCSI LUNs added at run time out of `changes` (for the
    /// supervisor's reconnection service), leaving the rest.
    pub fn iscsi_portals_added(
        changes: &mut Vec<crate::supervisor::luns::Change>,
    ) -> Vec<crate::supervisor::iscsi::IscsiLunPortal> {
        let mut portals = Vec::new();
        changes.retain_mut(|c| match c {
            crate::supervisor::luns::Change::Portal {
                target,
                lun,
                portal,
            } => {
                portals.push(((*target, *lun), (**portal).clone()));
                false
            }
            _ => true,
        });
        portals
    }

    /// The `--image-dir`s, canonical (the supervisor's Landlock ruleset allows them).
    pub fn image_dirs(&self) -> &[PathBuf] {
        &self.image_dirs
    }

    /// The LUNs as the supervisor knows them.
    pub fn luns(&self) -> impl Iterator<Item = &LunEntry> {
        self.table.luns.values()
    }

    /// Whether client `c` is polled: not once it hung up with nothing left to send (a closed
    /// socket reports POLLHUP whatever is asked, and its calls may still be with the worker:
    /// polling it would spin until they come back).
    fn polled(c: &Client) -> bool {
        !c.eof || !c.out.is_empty()
    }

    /// Descriptors to poll: the listener, then each client [`Self::polled`] (reading, and
    /// writing while it has unsent answers).
    pub fn poll_fds(&self) -> Vec<PollFd<'_>> {
        let mut fds = vec![PollFd::new(
            self.listener.as_unix_listener().as_fd(),
            PollFlags::POLLIN,
        )];
        for c in self.clients.iter().filter(|c| Self::polled(c)) {
            let mut ev = PollFlags::empty();
            if !c.eof {
                ev |= PollFlags::POLLIN;
            }
            if !c.out.is_empty() {
                ev |= PollFlags::POLLOUT;
            }
            fds.push(PollFd::new(c.stream.as_fd(), ev));
        }
        fds
    }

    /// Handles what `poll` reported for [`Self::poll_fds`] (same order; nothing may change
    /// the clients in between).
    pub fn on_poll(&mut self, revents: &[PollFlags], link: &mut dyn WorkerLink) {
        let polled: Vec<usize> = (0..self.clients.len())
            .filter(|&i| Self::polled(&self.clients[i]))
            .collect();
        for (slot, i) in polled.into_iter().enumerate() {
            if revents.get(slot + 1).is_some_and(|r| !r.is_empty()) {
                self.clients[i].receive();
                self.serve_lines(i, link);
                self.clients[i].flush();
            }
        }
        if revents.first().is_some_and(|r| !r.is_empty()) {
            self.accept();
        }
        self.reap();
    }

    fn accept(&mut self) {
        loop {
            // Non-blocking from the start (no separate fcntl/ioctl for each client).
            let stream = match socket::accept4(
                self.listener.as_raw_fd(),
                SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
            ) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) }),
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => {
                    warn!("management socket: accept: {e}");
                    return;
                }
            };
            let refuse = |stream: &UnixStream, e: RpcError| {
                let _ = (&*stream).write(&error_line(&Value::Null, &e));
            };
            let caller = match peer::caller(stream.as_fd()) {
                Ok(c) => c,
                Err(e) => {
                    warn!("management connection refused: cannot read its credentials: {e}");
                    continue;
                }
            };
            if let Err(why) = self.access.check(&caller) {
                warn!("management connection from {caller} refused: {why}");
                refuse(&stream, RpcError::new(code::PERMISSION_DENIED, why));
                continue;
            }
            if self.clients.len() >= MAX_CLIENTS {
                warn!("management connection from {caller} refused: {MAX_CLIENTS} clients already");
                refuse(
                    &stream,
                    RpcError::new(
                        code::TOO_MANY,
                        format!("{MAX_CLIENTS} management clients are connected already"),
                    ),
                );
                continue;
            }
            log::debug!("management client connected: {caller}");
            self.next_token += 1;
            self.clients.push(Client {
                token: self.next_token,
                stream,
                caller,
                reader: LineReader::default(),
                out: Vec::new(),
                fds: VecDeque::new(),
                calls: 0,
                eof: false,
                dead: false,
            });
        }
    }

    fn serve_lines(&mut self, i: usize, link: &mut dyn WorkerLink) {
        while let Some(line) = self.clients[i].reader.next_line() {
            let line = match line {
                Line::Oversized => {
                    let e = RpcError::new(
                        code::INVALID_REQUEST,
                        format!(
                            "request line longer than {} bytes: ignored",
                            protocol::MAX_LINE
                        ),
                    );
                    self.clients[i].send(&error_line(&Value::Null, &e));
                    continue;
                }
                Line::Complete(l) => l,
            };
            let req = match protocol::parse_request(&line) {
                Ok(r) => r,
                Err((id, e)) => {
                    self.clients[i].send(&error_line(&id, &e));
                    continue;
                }
            };
            self.serve(i, req, link);
        }
    }

    fn serve(&mut self, i: usize, req: protocol::Request, link: &mut dyn WorkerLink) {
        let client = &mut self.clients[i];
        let answer_id = req.id.clone().unwrap_or(Value::Null);
        if client.calls >= MAX_CALLS_PER_CLIENT {
            let e = RpcError::new(
                code::TOO_MANY,
                format!("at most {MAX_CALLS_PER_CLIENT} calls may wait for the worker"),
            );
            if req.id.is_some() {
                client.send(&error_line(&answer_id, &e));
            }
            return;
        }
        let caller = client.caller.clone();
        let outcome = methods::call(
            Context {
                table: &mut self.table,
                image_dirs: &self.image_dirs,
                caller: &caller,
                fds: &mut client.fds,
                iscsi: &self.iscsi,
            },
            &req.method,
            &req.params,
        );
        let params = Value::Object(req.params.clone());
        let result = match outcome {
            Outcome::Answer(r) => r,
            Outcome::Forward { call, fds, then } => {
                let mutates = call.mutates();
                if mutates {
                    info!(
                        "management: {} by {caller}: {params}: sent to the worker",
                        req.method
                    );
                }
                let borrowed: Vec<BorrowedFd<'_>> = fds.iter().map(AsFd::as_fd).collect();
                match link.send(&call, &borrowed) {
                    Ok(broker_id) => {
                        drop(fds);
                        client.calls += 1;
                        self.waiting.insert(
                            broker_id,
                            Waiting {
                                client: client.token,
                                id: req.id,
                                method: req.method,
                                caller,
                                call,
                                then,
                            },
                        );
                        return;
                    }
                    Err(e) => {
                        // Undo the mark the method made (nothing reached the worker).
                        let e =
                            RpcError::new(code::WORKER, format!("cannot reach the worker: {e}"));
                        let _ = methods::finish(&mut self.table, then, Err(e.clone()));
                        Err(e)
                    }
                }
            }
        };
        if let Err(e) = &result {
            if is_mutating(&req.method) {
                warn!(
                    "management: {} by {caller}: {params}: refused: {}",
                    req.method, e.message
                );
            }
        }
        if let Some(id) = &req.id {
            let line = match result {
                Ok(v) => ok_line(id, v),
                Err(e) => error_line(id, &e),
            };
            self.clients[i].send(&line);
        }
    }

    /// Whether broker request `broker_id` is a management call waiting for its reply.
    pub fn is_waiting(&self, broker_id: u64) -> bool {
        self.waiting.contains_key(&broker_id)
    }

    /// The worker's reply to request `broker_id`, which [`Self::is_waiting`] for. A page of
    /// statistics with more to come asks for the next one through `link`.
    pub fn on_reply(
        &mut self,
        broker_id: u64,
        body: Body,
        fds: Vec<OwnedFd>,
        link: &mut dyn WorkerLink,
    ) {
        let Some(w) = self.waiting.remove(&broker_id) else {
            return;
        };
        let (answer, w) = match link::answer(&w.call, body, fds) {
            link::Answer::Done(v) => (Ok(v), w),
            link::Answer::Failed(e) => (Err(e), w),
            link::Answer::More { page, next } => {
                let mut w = w;
                if let Then::Stats { pages, .. } = &mut w.then {
                    pages.extend(page);
                    w.call = WorkerCall::Stats {
                        address: None,
                        after: Some(next),
                    };
                    match link.send(&w.call, &[]) {
                        Ok(next_id) => {
                            self.waiting.insert(next_id, w);
                            return;
                        }
                        Err(e) => (
                            Err(RpcError::new(
                                code::WORKER,
                                format!("cannot reach the worker: {e}"),
                            )),
                            w,
                        ),
                    }
                } else {
                    let e = RpcError::new(code::WORKER, "a statistics page for another call");
                    (Err(e), w)
                }
            }
        };
        self.complete(w, answer);
    }

    /// Records a call's outcome and answers its client.
    fn complete(&mut self, w: Waiting, answer: Result<Value, RpcError>) {
        let mutates = w.call.mutates();
        let result = methods::finish(&mut self.table, w.then, answer);
        if mutates {
            match &result {
                Ok(v) => info!("management: {} by {}: done: {v}", w.method, w.caller),
                Err(e) => warn!(
                    "management: {} by {}: failed: {}",
                    w.method, w.caller, e.message
                ),
            }
        }
        if let Some(c) = self.clients.iter_mut().find(|c| c.token == w.client) {
            c.calls = c.calls.saturating_sub(1);
            if let Some(id) = &w.id {
                let line = match result {
                    Ok(v) => ok_line(id, v),
                    Err(e) => error_line(id, &e),
                };
                c.send(&line);
                c.flush();
            }
        }
        self.reap();
    }

    /// The worker ended: every call waiting for it fails and changes nothing in the record
    /// (what the worker did before it died is lost with it: a restarted worker is made from
    /// the supervisor's LUN set, which follows the record, [`crate::supervisor::luns`]).
    pub fn worker_gone(&mut self) {
        let ids: Vec<u64> = self.waiting.keys().copied().collect();
        for id in ids {
            if let Some(w) = self.waiting.remove(&id) {
                let e = RpcError::new(code::WORKER, "the worker ended before answering");
                self.complete(w, Err(e));
            }
        }
    }

    /// The changes the worker confirmed since the last call, in order (for the LUN set a
    /// restarted worker gets).
    pub fn take_changes(&mut self) -> Vec<crate::supervisor::luns::Change> {
        std::mem::take(&mut self.table.changes)
    }

    /// Drops clients that are gone, and those that hung up once their answers are out.
    fn reap(&mut self) {
        self.clients.retain(|c| {
            let done = c.dead || (c.eof && c.calls == 0 && c.out.is_empty());
            if done {
                log::debug!("management client disconnected: {}", c.caller);
            }
            !done
        });
    }
}

fn is_mutating(method: &str) -> bool {
    matches!(
        method,
        "add-lun" | "remove-lun" | "resize" | "set-readonly" | "change-medium" | "eject"
    )
}
