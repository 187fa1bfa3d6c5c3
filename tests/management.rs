//! The management socket with the real daemon (issue 13, the supervisor's side): who may use
//! it (mode, SO_PEERCRED), the JSON-RPC error paths (malformed, oversized, unknown, refused
//! paths) that change nothing, `vhost-user-scsi ctl`, the supervisor's confinement with
//! `--image-dir` (Landlock refuses a path outside), and readiness (`--pidfile`, `READY=1`).
//! Calls that reach the worker (add, remove, resize, statistics) are in the second half.

#[allow(dead_code, unused_imports)]
mod common;

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        net::{UnixDatagram, UnixStream},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    thread::sleep,
    time::{Duration, Instant},
};

use common::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-scsi");
const NOBODY: u32 = 65534;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn disk() -> Vec<Disk> {
    vec![Disk {
        addr: "0:0",
        size: 1 << 20,
        readonly: false,
    }]
}

/// A daemon with a management socket and one image directory, both in `dir`.
struct Managed {
    daemon: Daemon,
    dir: tempfile::TempDir,
    socket: PathBuf,
    images: PathBuf,
}

impl Managed {
    fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("mgmt.sock");
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        let images = std::fs::canonicalize(&images).unwrap();
        let mut args = vec![
            "--management-socket".to_owned(),
            socket.display().to_string(),
            "--image-dir".to_owned(),
            images.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let daemon = Daemon::start_with_env(&disk(), &args, Listen::Path, env);
        let m = Self {
            daemon,
            dir,
            socket,
            images,
        };
        m.wait_for("supervisor confined");
        m
    }

    fn image(&self, name: &str, size: u64) -> PathBuf {
        let p = self.images.join(name);
        std::fs::File::create(&p).unwrap().set_len(size).unwrap();
        p
    }

    fn wait_for(&self, needle: &str) {
        let deadline = Instant::now() + TIMEOUT;
        while !self.daemon.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in the log\n{}",
                self.daemon.log()
            );
            sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> Client {
        let s = UnixStream::connect(&self.socket).expect("connect to the management socket");
        s.set_read_timeout(Some(TIMEOUT)).unwrap();
        Client {
            reader: BufReader::new(s.try_clone().unwrap()),
            stream: s,
        }
    }

    /// `vhost-user-scsi ctl --management-socket ... ARGS`.
    fn ctl(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("ctl")
            .arg("--management-socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .unwrap()
    }

    /// [`Self::ctl`] with `file` inherited by the child under its own number (for `--fd N`).
    fn ctl_inheriting(&self, file: &std::fs::File, args: &[&str]) -> Output {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let mut cmd = Command::new(BIN);
        cmd.arg("ctl")
            .arg("--management-socket")
            .arg(&self.socket)
            .args(args);
        // SAFETY: only dup2 (async-signal-safe) between fork and exec, onto the same number,
        // which clears FD_CLOEXEC for the child alone.
        unsafe {
            cmd.pre_exec(move || {
                let tmp = libc::dup(fd);
                if tmp < 0 || libc::dup2(tmp, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                libc::close(tmp);
                Ok(())
            });
        }
        cmd.output().unwrap()
    }

    fn ctl_json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--json"];
        full.extend_from_slice(args);
        let out = self.ctl(&full);
        assert!(
            out.status.success(),
            "ctl {args:?}: {:?}\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.daemon.log()
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    fn list(&self) -> Value {
        self.ctl_json(&["list"])
    }
}

struct Client {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    fn answer(&mut self) -> Value {
        let mut line = String::new();
        self.reader.read_line(&mut line).expect("an answer");
        assert!(line.ends_with('\n'), "unterminated answer {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    fn call(&mut self, method: &str, params: Value) -> Value {
        let req = json!({"jsonrpc": "2.0", "id": 7, "method": method, "params": params});
        self.send_raw(format!("{req}\n").as_bytes());
        let a = self.answer();
        assert_eq!(a["id"], 7, "{a}");
        a
    }
}

fn error_code(a: &Value) -> i64 {
    a["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("not an error: {a}"))
}

#[test]
fn socket_is_0600_and_bad_requests_change_nothing() {
    let mut m = Managed::start(&[]);
    let meta = std::fs::symlink_metadata(&m.socket).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o600, "management socket mode");
    let before = m.list();
    assert_eq!(before["luns"].as_array().unwrap().len(), 1);
    assert_eq!(before["luns"][0]["state"], "online");

    let mut c = m.connect();
    c.send_raw(b"{this is not json\n");
    let a = c.answer();
    assert_eq!(error_code(&a), -32700, "{a}");
    assert!(a["id"].is_null());
    // A line longer than 64 KiB is answered once and skipped; the connection goes on.
    let mut long = vec![b'x'; 70 * 1024];
    long.push(b'\n');
    c.send_raw(&long);
    let a = c.answer();
    assert_eq!(error_code(&a), -32600, "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("longer than"),
        "{a}"
    );
    c.send_raw(b"[1,2]\n");
    assert_eq!(error_code(&c.answer()), -32600);
    assert_eq!(error_code(&c.call("frobnicate", json!({}))), -32601);
    assert_eq!(
        error_code(&c.call("remove-lun", json!({"lun": "0:9"}))),
        -32000
    );
    assert_eq!(
        error_code(&c.call("remove-lun", json!({"lun": "zero"}))),
        -32602
    );
    let a = c.call("add-lun", json!({"spec": "/etc/passwd"}));
    assert_eq!(error_code(&a), -32003, "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("outside every --image-dir"),
        "{a}"
    );
    let img = m.image("b.img", 1 << 20);
    let a = c.call("add-lun", json!({"spec": format!("0:0={}", img.display())}));
    assert_eq!(error_code(&a), -32001, "duplicate address: {a}");
    let a = c.call(
        "add-lun",
        json!({"spec": m.images.join("missing.img").display().to_string()}),
    );
    assert_eq!(error_code(&a), -32002, "{a}");
    let small = m.image("small.img", 100);
    let a = c.call("add-lun", json!({"spec": small.display().to_string()}));
    assert_eq!(error_code(&a), -32002, "{a}");
    assert!(a["error"]["message"]
        .as_str()
        .unwrap()
        .contains("too small"));
    let a = c.call(
        "add-lun",
        json!({"spec": format!("{},bogus", img.display())}),
    );
    assert_eq!(error_code(&a), -32602, "{a}");
    // Still one connection, still serving, nothing changed.
    assert_eq!(m.list(), before);
    // Every refused change is logged with the caller's credentials.
    let who = format!(
        "management: add-lun by pid {} uid {} gid {}",
        std::process::id(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    assert!(m.daemon.log().contains(&who), "{}", m.daemon.log());
    m.daemon.assert_alive();
    drop(c);
    drop(m.dir);
}

#[test]
fn ctl_prints_for_people_and_fails_clearly() {
    let mut m = Managed::start(&[]);
    let out = m.ctl(&["list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("LUN"), "{text}");
    let row = lines.next().unwrap();
    assert!(
        row.starts_with("0:0") && row.contains("1.0 MiB") && row.contains("online"),
        "{text}"
    );
    let out = m.ctl(&["remove-lun", "3:3"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim_end(),
        "vhost-user-scsi ctl: remove-lun: no LUN 3:3 (code -32000)"
    );
    let out = m.ctl(&["remove-lun", "3"]);
    assert_eq!(out.status.code(), Some(2), "usage error");
    let out = Command::new(BIN)
        .args(["ctl", "--management-socket"])
        .arg(m.dir.path().join("nothing.sock"))
        .arg("list")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
    // The daemon's own options are refused next to ctl.
    let out = Command::new(BIN)
        .args([
            "--num-queues",
            "2",
            "ctl",
            "--management-socket",
            "x",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    m.daemon.assert_alive();
}

/// The socket's mode keeps other users out; SO_PEERCRED is the second wall: with the socket
/// opened to everyone (as a careless chmod would), `nobody` connects but is refused, and the
/// refusal is logged with its credentials. With `--management-group`, a member is served.
#[test]
fn peer_credentials_refuse_other_users() {
    if !is_root() {
        eprintln!("SKIPPED: needs root (to connect as another user)");
        return;
    }
    let mut m = Managed::start(&[]);
    std::fs::set_permissions(m.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let list = b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"list\"}\n";
    assert_eq!(
        ask_as(&m.socket, NOBODY, NOBODY, list),
        Err(libc::EACCES),
        "0600 keeps nobody out"
    );
    std::fs::set_permissions(&m.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    let answer = ask_as(&m.socket, NOBODY, NOBODY, list).expect("connects now");
    let a: Value = serde_json::from_slice(&answer).expect("one JSON answer");
    assert_eq!(error_code(&a), -32010, "{a}");
    assert!(
        a["error"]["message"]
            .as_str()
            .unwrap()
            .contains("uid 65534"),
        "{a}"
    );
    // ctl says why, not "broken pipe".
    let out = Command::new(BIN)
        .args(["ctl", "--management-socket"])
        .arg(&m.socket)
        .arg("list")
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("permission denied") && err.contains("(code -32010)"),
        "{err}"
    );
    m.wait_for("management connection from pid");
    assert!(
        m.daemon.log().contains("uid 65534 gid 65534 refused"),
        "{}",
        m.daemon.log()
    );
    m.daemon.assert_alive();

    // A member of --management-group is served (its gid is checked, not only the mode).
    let gid = nix::unistd::Group::from_name("nogroup")
        .unwrap()
        .expect("group nogroup")
        .gid
        .as_raw();
    let mut g = Managed::start(&["--management-group", "nogroup"]);
    let meta = std::fs::symlink_metadata(&g.socket).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.gid()), (0o660, gid));
    std::fs::set_permissions(g.dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let answer = ask_as(&g.socket, NOBODY, gid, list).expect("a member connects");
    let a: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(a["result"]["luns"][0]["lun"], 0, "{a}");
    std::fs::set_permissions(&g.socket, std::fs::Permissions::from_mode(0o666)).unwrap();
    // nogroup is nobody's own group on Debian: another gid is not a member.
    let answer = ask_as(&g.socket, NOBODY, gid + 1, list).unwrap();
    let a: Value = serde_json::from_slice(&answer).unwrap();
    assert_eq!(error_code(&a), -32010, "not a member: {a}");
    g.daemon.assert_alive();
}

/// `--image-dir` is what the confined supervisor may open: its Landlock domain refuses a file
/// outside (the probe opens /etc/passwd right after the supervisor confined itself, past the
/// supervisor's own path check, which would refuse it first).
#[test]
fn landlock_refuses_paths_outside_the_image_dirs() {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    let img = dir.path().join("d.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let out = Command::new(BIN)
        .arg("--socket-path")
        .arg(dir.path().join("vus.sock"))
        .arg("--lun")
        .arg(&img)
        .arg("--management-socket")
        .arg(dir.path().join("m.sock"))
        .arg("--image-dir")
        .arg(&images)
        .env("VHOST_USER_SCSI_PROBE", "open@supervisor")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    if !log.contains("Landlock ABI") {
        eprintln!("SKIPPED: Landlock is not enforced on this kernel\n{log}");
        return;
    }
    assert!(
        log.contains("role supervisor-management"),
        "the management role is installed\n{log}"
    );
    assert!(log.contains("probe open@supervisor: denied"), "{log}");
    assert_eq!(out.status.code(), Some(40), "{log}");
}

/// The pid file and READY=1 come once the daemon serves (both sockets exist), STOPPING=1 and
/// the pid file's removal when it stops.
#[test]
fn readiness_pidfile_and_sd_notify() {
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(TIMEOUT)).unwrap();
    let pidfile = dir.path().join("vus.pid");
    let mut m = Managed::start_with_env(
        &["--pidfile", pidfile.to_str().unwrap()],
        &[("NOTIFY_SOCKET", notify_path.to_str().unwrap())],
    );
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY=1");
    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(msg.contains("READY=1\n"), "{msg:?}");
    assert!(
        msg.contains(&format!("MAINPID={}\n", m.daemon.pid())),
        "{msg:?}"
    );
    // By then every socket exists.
    assert!(m.socket.exists() && m.daemon.socket.exists());
    assert_eq!(
        std::fs::read_to_string(&pidfile).unwrap(),
        format!("{}\n", m.daemon.pid())
    );
    let status = m.daemon.terminate();
    assert!(status.success(), "{status:?}");
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert_eq!(&buf[..n], b"STOPPING=1\n");
    assert!(!pidfile.exists(), "pid file removed at exit");
    assert!(!m.socket.exists(), "management socket removed at exit");
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + TIMEOUT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        sleep(Duration::from_millis(20));
    }
}

/// Through the worker: add (by path and by passed descriptor), list, statistics (JSON and
/// Prometheus), resize, read-only, flush, remove; the image is unlocked once removed.
#[test]
fn add_resize_stats_remove_round_trip() {
    let mut m = Managed::start(&[]);
    let img = m.image("b.img", 2 << 20);
    let added = m.ctl_json(&[
        "add-lun",
        "--lun",
        &format!("0:3={},serial=ADDED", img.display()),
    ]);
    assert_eq!(added, json!({"target": 0, "lun": 3, "size": 2 << 20}));
    let list = m.list();
    let l = &list["luns"][1];
    assert_eq!(
        (l["lun"].clone(), l["origin"].clone()),
        (json!(3), json!("add-lun"))
    );
    assert_eq!(l["serial"], "ADDED");
    // The supervisor locked it for the worker: another writer is refused.
    let locked = std::fs::File::options().write(true).open(&img).unwrap();
    // SAFETY: flock on a descriptor we own.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&locked),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(r, -1, "the added image is locked");

    // A descriptor opened by the client (libvirt's way), outside every image directory.
    let passed = m.dir.path().join("passed.img");
    std::fs::File::create(&passed)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let spec = format!("0:4={},ro", passed.display());
    let added = m.ctl_json(&["add-lun", "--lun", &spec, "--pass-fd"]);
    assert_eq!(added["lun"], 4);
    assert_eq!(m.list()["luns"][2]["passed-fd"], true);

    let stats = m.ctl_json(&["stats"]);
    let luns = stats["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 3, "{stats}");
    assert_eq!(luns[1]["lun"], 3);
    assert_eq!(luns[1]["read"]["latency-us"].as_array().unwrap().len(), 32);
    let one = m.ctl_json(&["stats", "0:3"]);
    assert_eq!(one["luns"].as_array().unwrap().len(), 1);
    let out = m.ctl(&["stats", "--prometheus"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("vhost_user_scsi_lun_commands_total{target=\"0\",lun=\"3\",kind=\"read\"}"),
        "{text}"
    );

    // Grow the file, resize: the new size is read.
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(4 << 20)
        .unwrap();
    let r = m.ctl_json(&["resize", "0:3"]);
    assert_eq!(r["size"], 4 << 20, "{r}");
    assert_eq!(m.list()["luns"][1]["size"], 4 << 20);
    m.ctl_json(&["set-readonly", "0:3", "on"]);
    assert_eq!(m.list()["luns"][1]["read-only"], true);
    m.ctl_json(&["flush", "0:3"]);

    m.ctl_json(&["remove-lun", "0:3"]);
    m.ctl_json(&["remove-lun", "0:4"]);
    assert_eq!(m.list()["luns"].as_array().unwrap().len(), 1);
    // Released: the lock goes once the worker closed the image.
    wait_until("the removed image's lock to go", || {
        // SAFETY: as above.
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&locked),
                libc::LOCK_EX | libc::LOCK_NB,
            ) == 0
        }
    });
    // Every change is logged with who asked.
    let log = m.daemon.log();
    for what in ["add-lun", "resize", "set-readonly", "remove-lun"] {
        assert!(
            log.contains(&format!("management: {what} by pid")),
            "{what}\n{log}"
        );
    }
    m.daemon.assert_alive();
}

/// A socket path given twice, an unknown group or a missing image directory: one error, exit
/// 2, nothing created.
#[test]
fn bad_management_options_fail_before_anything_exists() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let sock = dir.path().join("vus.sock");
    let run = |args: &[&str]| {
        let mut all = vec!["--lun", img.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = run_to_failure(&sock, &all);
        assert_eq!(out.code, Some(2), "{}", out.stderr);
        assert!(!out.socket_seen);
        out.stderr.trim_end().to_owned()
    };
    let m = dir.path().join("m.sock");
    let m = m.to_str().unwrap();
    assert_eq!(
        run(&[
            "--management-socket",
            m,
            "--management-group",
            "no-such-group-vus"
        ]),
        "vhost-user-scsi: error: --management-group no-such-group-vus: no such group"
    );
    let missing = dir.path().join("nope");
    assert_eq!(
        run(&[
            "--management-socket",
            m,
            "--image-dir",
            missing.to_str().unwrap()
        ]),
        format!(
            "vhost-user-scsi: error: --image-dir {}: No such file or directory",
            missing.display()
        )
    );
    assert_eq!(
        run(&["--image-dir", "/tmp"]),
        "vhost-user-scsi: error: --image-dir needs --management-socket (or management-socket in --config)"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// `--restart-worker=on-failure`: the LUNs a restarted worker serves are the ones the operator
/// left, not the start-up configuration: an added LUN (resized, write-protected) is back with
/// its size and protection, a removed configured LUN stays removed, and its image is unlocked
/// as soon as it was removed (the supervisor closes its own copy too); the guest is told it
/// missed events. Checked from a front-end connected to the restarted worker, not only from
/// the supervisor's record.
#[test]
fn a_restarted_worker_serves_the_luns_as_the_operator_left_them() {
    let m = Managed::start(&["--restart-worker", "on-failure"]);
    let img = m.image("b.img", 1 << 20);
    let spec = format!("0:1={}", img.display());
    m.ctl_json(&["add-lun", "--lun", &spec]);
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    assert_eq!(m.ctl_json(&["resize", "0:1"])["size"], 2 << 20);
    m.ctl_json(&["set-readonly", "0:1", "on"]);
    m.ctl_json(&["remove-lun", "0:0"]);
    let configured = std::fs::File::options()
        .write(true)
        .open(&m.daemon.images[0])
        .unwrap();
    wait_until("the removed configured image's lock to go", || {
        // SAFETY: flock on a descriptor we own.
        unsafe {
            libc::flock(
                std::os::fd::AsRawFd::as_raw_fd(&configured),
                libc::LOCK_EX | libc::LOCK_NB,
            ) == 0
        }
    });
    // SAFETY: as above; let go again, the test only wanted to know it could.
    unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&configured), libc::LOCK_UN) };

    let worker = worker_of(m.daemon.pid());
    // SAFETY: kill(2) on the worker of the daemon this test started.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    m.wait_for("(restart 1 in the current window)");
    let list = m.list();
    let luns = list["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 1, "{list}");
    assert_eq!(
        (&luns[0]["lun"], &luns[0]["size"], &luns[0]["read-only"]),
        (&json!(1), &json!(2 << 20), &json!(true)),
        "{list}"
    );
    // The worker's own view (statistics come from its bus).
    let stats = m.ctl_json(&["stats"]);
    let served: Vec<&Value> = stats["luns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["lun"])
        .collect();
    assert_eq!(served, [&json!(1)], "{stats}");

    // What a guest sees from the restarted worker.
    let mut vm = TestVm::connect(&m.daemon.socket, VmOptions::default());
    // The dead worker's undelivered events are lost: the new one says so (NO_EVENT with
    // EVENTS_MISSED), and Linux rescans the bus.
    let event = vm.submit(1, &[Seg::inp(16)]);
    assert_eq!(vm.complete(&event), 16);
    let e = vm.writable(&event).concat();
    assert_eq!(
        u32::from_le_bytes(e[..4].try_into().unwrap()),
        0x8000_0000,
        "EVENTS_MISSED: {e:02x?}"
    );
    vm.clear_unit_attention(lun(0, 1));
    let r = vm.scsi(lun(0, 1), &cdb::read_capacity10(), &[], &[8]);
    r.assert_good();
    let last = u32::from_be_bytes(r.data[..4].try_into().unwrap());
    assert_eq!(u64::from(last) + 1, (2 << 20) / 512, "the resized capacity");
    let w = vm.scsi(lun(0, 1), &cdb::write10(0, 1), &[&[0u8; 512]], &[]);
    assert_eq!(w.sense_key_asc(), (SENSE_DATA_PROTECT, 0x27), "{w:?}");
    let gone = vm.scsi(lun(0, 0), &cdb::test_unit_ready(), &[], &[]);
    assert_eq!(
        gone.sense_key_asc(),
        (SENSE_ILLEGAL_REQUEST, 0x25),
        "the removed LUN is not served: {gone:?}"
    );
    // Its image is not locked by the new worker either.
    // SAFETY: as above.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&configured),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(r, 0, "the removed image is locked again");
    // The address is free again, and adding there reaches the new worker.
    let again = m.ctl_json(&["add-lun", "--lun", "0:0=null://1M"]);
    assert_eq!(again["lun"], 0);
}

/// `size=` and `pr-file=` work at run time as at start-up: the confined supervisor creates
/// both in the image directory (mode 0600), then serves the new image.
#[test]
fn add_lun_creates_size_images_and_pr_files_in_the_image_dir() {
    let m = Managed::start(&[]);
    let img = m.images.join("new.img");
    let pr = m.images.join("new.pr");
    let spec = format!("0:5={},size=8M,pr-file={}", img.display(), pr.display());
    let added = m.ctl_json(&["add-lun", "--lun", &spec]);
    assert_eq!(added["size"], 8 << 20);
    for p in [&img, &pr] {
        let meta = std::fs::metadata(p).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600, "{}", p.display());
    }
    assert_eq!(m.list()["luns"][1]["pr-file"], pr.display().to_string());
    // A pr-file outside the image directories is refused like a source.
    let other = m.image("other.img", 1 << 20);
    let out = m.ctl(&[
        "add-lun",
        "--lun",
        &format!("0:6={},pr-file=/tmp/vus-mgmt-test.pr", other.display()),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("(code -32003)"));
    assert!(!Path::new("/tmp/vus-mgmt-test.pr").exists());
}

/// The worker sends statistics in pages (16 LUNs at most): with 40 LUNs the supervisor
/// gathers every page before it answers, in address order. `null://` LUNs open nothing.
#[test]
fn stats_of_many_luns_come_in_pages() {
    let m = Managed::start(&[]);
    let mut c = m.connect();
    for lun in 1..40 {
        let a = c.call("add-lun", json!({ "spec": format!("2:{lun}=null://1M") }));
        assert_eq!(a["result"]["lun"], lun, "{a}");
    }
    let a = c.call("stats", json!({}));
    let luns = a["result"]["luns"].as_array().unwrap();
    assert_eq!(luns.len(), 40, "{a}");
    let addresses: Vec<(u64, u64)> = luns
        .iter()
        .map(|l| (l["target"].as_u64().unwrap(), l["lun"].as_u64().unwrap()))
        .collect();
    let mut sorted = addresses.clone();
    sorted.sort();
    assert_eq!(addresses, sorted);
    let text = c.call("stats", json!({"format": "prometheus"}));
    let text = text["result"]["text"].as_str().unwrap();
    assert_eq!(
        text.lines()
            .filter(|l| l.starts_with("vhost_user_scsi_lun_in_flight{"))
            .count(),
        40
    );
}

/// `ctl add-lun --fd N` passes a descriptor the client inherited (how a management tool that
/// opened the image, like libvirt, hands it over); a read-only one for a writable LUN is
/// refused with the reason, and nothing is added.
#[test]
fn add_lun_from_an_inherited_descriptor() {
    use std::os::fd::AsRawFd;
    let m = Managed::start(&[]);
    let outside = tempfile::tempdir().unwrap();
    let path = outside.path().join("inherited.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let run = |file: std::fs::File, spec: &str| {
        m.ctl_inheriting(
            &file,
            &[
                "add-lun",
                "--lun",
                spec,
                "--fd",
                &file.as_raw_fd().to_string(),
            ],
        )
    };
    let out = run(std::fs::File::open(&path).unwrap(), "0:7=inherited");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not open read-write") && err.contains("-32002"),
        "{err}"
    );
    assert_eq!(m.list()["luns"].as_array().unwrap().len(), 1);
    let rw = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let out = run(rw, "0:7=inherited");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = &m.list()["luns"][1];
    assert_eq!(
        (l["source"].clone(), l["passed-fd"].clone()),
        (json!("inherited"), json!(true))
    );
}

/// At most 16 clients at once: the 17th is told why and closed; once one leaves, the next is
/// served. Five passed descriptors where 4 may wait unused: the extra ones are closed and said so.
#[test]
fn clients_and_passed_descriptors_are_bounded() {
    let m = Managed::start(&[]);
    let mut clients: Vec<Client> = (0..16).map(|_| m.connect()).collect();
    // Each is accepted (and served) before the next comes.
    for c in &mut clients {
        assert!(c.call("list", json!({}))["result"].is_object());
    }
    let mut extra = m.connect();
    let a = extra.answer();
    assert_eq!(error_code(&a), -32011, "{a}");
    let mut rest = String::new();
    assert_eq!(extra.reader.read_line(&mut rest).unwrap(), 0, "then closed");
    clients.pop();
    wait_until("a free client slot", || {
        let mut c = m.connect();
        c.send_raw(b"{\"jsonrpc\":\"2.0\",\"id\":7,\"method\":\"list\"}\n");
        c.answer().get("result").is_some()
    });

    let c = &mut clients[0];
    let files: Vec<std::fs::File> = (0..5).map(|_| tempfile::tempfile().unwrap()).collect();
    let fds: Vec<i32> = files.iter().map(std::os::fd::AsRawFd::as_raw_fd).collect();
    let line = b"{\"jsonrpc\":\"2.0\",\"id\":8,\"method\":\"list\"}\n";
    let iov = [std::io::IoSlice::new(line)];
    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
    nix::sys::socket::sendmsg::<()>(
        std::os::fd::AsRawFd::as_raw_fd(&c.stream),
        &iov,
        &cmsg,
        nix::sys::socket::MsgFlags::empty(),
        None,
    )
    .unwrap();
    let a = c.answer();
    assert_eq!(error_code(&a), -32011, "{a}");
    assert!(a["id"].is_null());
    assert_eq!(c.answer()["id"], 8, "the request itself is still answered");
}

/// The fdinfo of the worker's io_uring rings (one per request queue).
fn rings_fdinfo(worker: libc::pid_t) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{worker}/fd"))
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            (std::fs::read_link(e.path()).ok()?.to_string_lossy() == "anon_inode:[io_uring]").then(
                || {
                    std::fs::read_to_string(format!(
                        "/proc/{worker}/fdinfo/{}",
                        e.file_name().to_string_lossy()
                    ))
                    .unwrap_or_default()
                },
            )
        })
        .collect()
}

/// A ring's `SqHead` (submission queue entries the kernel has taken so far).
fn sq_head(fdinfo: &str) -> u64 {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("SqHead:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no SqHead in\n{fdinfo}"))
}

/// A LUN added at run time is served by io_uring like a configured one: its file takes a
/// spare fixed-file slot of the ring (the kernel lists it in the ring's fdinfo), its reads
/// are submitted on the ring (SqHead moves by at least one per command; the synchronous
/// fallback would not move it), and remove-lun takes it out of the ring again (the file is
/// closed, its lock released).
#[test]
fn an_added_lun_uses_io_uring_and_its_removal_releases_the_slot() {
    let mut m = Managed::start(&["--num-queues", "1"]);
    let log = m.daemon.log();
    if log.contains("io_uring unavailable") {
        eprintln!("SKIPPED: io_uring is unavailable here\n{log}");
        return;
    }
    let worker = worker_of(m.daemon.pid());
    let img = m.image("uring.img", 1 << 20);
    let mut content = Vec::new();
    for i in 0..16u8 {
        content.extend(pattern(512, i));
    }
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .and_then(|mut f| f.write_all(&content))
        .unwrap();
    let name = img.display().to_string();
    let in_ring = || {
        let rings = rings_fdinfo(worker);
        assert_eq!(rings.len(), 1, "one ring per request queue");
        rings[0]
            .lines()
            .any(|l| l.trim_start().split_once(": ").map(|(_, p)| p) == Some(&name))
    };
    assert!(!in_ring());
    m.ctl_json(&["add-lun", "--lun", &format!("0:1={name}")]);
    wait_until("the added LUN's file in the ring", in_ring);

    let mut vm = TestVm::connect(&m.daemon.socket, VmOptions::default());
    vm.clear_unit_attention(lun(0, 1));
    let before = sq_head(&rings_fdinfo(worker)[0]);
    // Reads (buffered writes are copied inline by design, whatever the engine).
    const READS: u32 = 16;
    for i in 0..READS {
        let r = vm.scsi(lun(0, 1), &cdb::read10(i, 1), &[], &[512]);
        r.assert_good();
        assert_eq!(r.data, pattern(512, i as u8), "block {i}");
    }
    let after = sq_head(&rings_fdinfo(worker)[0]);
    assert!(
        after - before >= u64::from(READS),
        "{READS} reads moved SqHead by {} only: not through io_uring",
        after - before
    );

    m.ctl_json(&["remove-lun", "0:1"]);
    wait_until("the removed LUN's file out of the ring", || !in_ring());
    let f = std::fs::File::options().write(true).open(&img).unwrap();
    // SAFETY: flock on a descriptor we own.
    let r = unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    };
    assert_eq!(r, 0, "the removed image is still locked");
    drop(vm);
    m.daemon.assert_alive();
}

/// With a management socket the worker runs `vus-spawn` (it starts the threads of iSCSI LUNs
/// added at run time): filtered like the main thread (worker-enosys + worker-main, no role of
/// its own, so that the threads it starts carry only theirs), no_new_privs, no capabilities.
#[test]
fn the_spawning_thread_is_confined_like_the_main_thread() {
    let m = Managed::start(&[]);
    let worker = worker_of(m.daemon.pid());
    let status = |tid: &str| {
        std::fs::read_to_string(format!("/proc/{worker}/task/{tid}/status")).unwrap_or_default()
    };
    let field = |st: &str, key: &str| {
        st.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    let mut spawn = None;
    wait_until("the vus-spawn thread", || {
        spawn = std::fs::read_dir(format!("/proc/{worker}/task"))
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| status(&e.file_name().to_string_lossy()))
            .find(|st| field(st, "Name") == "vus-spawn");
        spawn.is_some()
    });
    let st = spawn.unwrap();
    assert_eq!(field(&st, "Seccomp"), "2", "{st}");
    assert_eq!(field(&st, "Seccomp_filters"), "2", "{st}");
    assert_eq!(field(&st, "NoNewPrivs"), "1", "{st}");
    assert_eq!(field(&st, "CapEff"), "0000000000000000", "{st}");
}
/// Kills the daemon's worker and waits for restart number `n` (`--restart-worker=on-failure`).
fn kill_worker(m: &Managed, n: usize) {
    let worker = worker_of(m.daemon.pid());
    // SAFETY: kill(2) on the worker of the daemon this test started.
    assert_eq!(unsafe { libc::kill(worker, libc::SIGKILL) }, 0);
    m.wait_for(&format!("(restart {n} in the current window)"));
}

/// With `--restart-worker=on-failure`, `change-medium` and `eject` are changes like the others:
/// a worker restarted after a change serves the new ISO (its bytes and capacity, read from a
/// front-end), one restarted after an eject serves the drive empty (NOT READY, MEDIUM NOT
/// PRESENT). The supervisor keeps no copy of a medium once it was replaced: the configured ISO
/// is unlocked after the change, the new one after the eject, and no restart locks them again.
#[test]
fn a_restarted_worker_serves_the_medium_the_operator_left() {
    let isos = tempfile::tempdir().unwrap();
    let a = isos.path().join("a.iso");
    std::fs::write(&a, vec![b'A'; 1 << 20]).unwrap();
    let spec = format!("0:3={},type=cdrom", a.display());
    let m = Managed::start(&["--restart-worker", "on-failure", "--lun", &spec]);
    let b = m.image("b.iso", 0);
    std::fs::write(&b, vec![b'B'; 2 << 20]).unwrap();
    let cd = lun(0, 3);
    assert!(!unlocked(&a), "the configured ISO is served");

    m.ctl_json(&["change-medium", "0:3", b.to_str().unwrap()]);
    wait_until("the replaced configured ISO's lock to go", || unlocked(&a));
    kill_worker(&m, 1);
    assert_eq!(m.list()["luns"][1]["source"], json!(b));
    let mut vm = TestVm::connect(&m.daemon.socket, VmOptions::default());
    vm.clear_unit_attention(cd);
    let inq = vm.scsi(cd, &cdb::inquiry(36), &[], &[36]);
    inq.assert_good();
    assert_eq!(&inq.data[..2], &[0x05, 0x80], "a removable CD-ROM");
    let r = vm.scsi(cd, &cdb::read_capacity10(), &[], &[8]);
    r.assert_good();
    let last = u32::from_be_bytes(r.data[..4].try_into().unwrap());
    assert_eq!(u64::from(last) + 1, (2 << 20) / 2048, "B's capacity");
    let r = vm.scsi(cd, &cdb::read10(0, 1), &[], &[2048]);
    r.assert_good();
    assert_eq!(r.data, vec![b'B'; 2048], "B's bytes");
    assert!(!unlocked(&b), "B is served");
    assert!(
        unlocked(&a),
        "the restart did not lock the configured ISO again"
    );
    drop(vm);

    m.ctl_json(&["eject", "0:3"]);
    kill_worker(&m, 2);
    wait_until("the ejected ISO's lock to go", || unlocked(&b));
    assert_eq!(m.list()["luns"][1]["medium"], "none");
    let mut vm = TestVm::connect(&m.daemon.socket, VmOptions::default());
    let mut tur = vm.scsi(cd, &cdb::test_unit_ready(), &[], &[]);
    // The first command may get the new LU's power-on unit attention.
    if tur.sense_len > 0 && tur.sense_key_asc() == (SENSE_UNIT_ATTENTION, 0x29) {
        tur = vm.scsi(cd, &cdb::test_unit_ready(), &[], &[]);
    }
    assert_eq!(tur.sense_key_asc(), (SENSE_NOT_READY, 0x3a), "{tur:?}");
    let r = vm.scsi(cd, &cdb::read10(0, 1), &[], &[2048]);
    assert_eq!(r.sense_key_asc(), (SENSE_NOT_READY, 0x3a), "{r:?}");
    assert!(unlocked(&a) && unlocked(&b));
    // The empty drive takes a medium again.
    drop(vm);
    let r = m.ctl_json(&["change-medium", "0:3", b.to_str().unwrap()]);
    assert_eq!(r, json!({"size": 2 << 20}));
    assert!(!unlocked(&b));
}

/// `change-medium` and `eject` through the worker, on a CD-ROM added at run time: the new ISO
/// is opened read-only and locked shared, the old one released; a passed descriptor works as
/// a path does; a fixed disk and a missing image are refused, changing nothing.
#[test]
fn change_medium_and_eject_round_trip() {
    use std::os::fd::AsRawFd;
    let mut m = Managed::start(&[]);
    let a = m.image("a.iso", 1 << 20);
    let b = m.image("b.iso", 2 << 20);
    let spec = format!("0:5={},type=cdrom", a.display());
    m.ctl_json(&["add-lun", "--lun", &spec]);
    let cd = |list: &Value| list["luns"][1].clone();
    assert_eq!(cd(&m.list())["medium"], "loaded");
    assert!(m.list()["luns"][0]["medium"].is_null());
    // Shared-locked while served: a writer cannot take it.
    let exclusive = unlocked;
    assert!(!exclusive(&a));

    let r = m.ctl_json(&["change-medium", "0:5", b.to_str().unwrap()]);
    assert_eq!(r, json!({"size": 2 << 20}));
    let l = cd(&m.list());
    assert_eq!(
        (l["source"].clone(), l["size"].clone()),
        (json!(b), json!(2 << 20))
    );
    wait_until("the old medium's lock to go", || exclusive(&a));
    assert!(!exclusive(&b));

    // Refusals: a fixed disk, a missing image, outside the image directory.
    let out = m.ctl(&["change-medium", "0:0", b.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("-32012"));
    let out = m.ctl(&["eject", "0:0"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("no removable medium"));
    let missing = m.images.join("missing.iso");
    let out = m.ctl(&["change-medium", "0:5", missing.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("-32002"));
    let out = m.ctl(&["change-medium", "0:5", "/etc/hostname"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("-32003"));
    assert_eq!(cd(&m.list())["source"], json!(b));

    let out = m.ctl(&["eject", "0:5"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "LUN 0:5: medium ejected\n"
    );
    assert_eq!(cd(&m.list())["medium"], "none");
    let table = String::from_utf8_lossy(&m.ctl(&["list"]).stdout).into_owned();
    assert!(table.contains("(no medium)"), "{table}");
    wait_until("the ejected medium's lock to go", || exclusive(&b));

    // A descriptor the client opened, from outside the image directory.
    let outside = tempfile::tempdir().unwrap();
    let c = outside.path().join("c.iso");
    std::fs::File::create(&c).unwrap().set_len(1 << 20).unwrap();
    let file = std::fs::File::open(&c).unwrap();
    let fd = file.as_raw_fd().to_string();
    let out = m.ctl_inheriting(
        &file,
        &["change-medium", "0:5", "installer.iso", "--fd", &fd],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l = cd(&m.list());
    assert_eq!(
        (l["source"].clone(), l["medium"].clone()),
        (json!("installer.iso"), json!("loaded"))
    );
    let log = m.daemon.log();
    for what in ["change-medium", "eject"] {
        assert!(
            log.contains(&format!("management: {what} by pid")),
            "{what}\n{log}"
        );
    }
    assert!(
        log.contains("LUN 0:5: medium changed by the management"),
        "{log}"
    );
    m.daemon.assert_alive();
}
