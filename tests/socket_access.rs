//! Who may connect to the vhost-user socket (issue 11, item 3): the socket the daemon creates is
//! 0600 (only its owner, root, connects), `--socket-group GROUP` makes it 0660 root:GROUP, an
//! unknown group is refused before the socket exists, and every front-end connection is logged
//! with the peer's SO_PEERCRED credentials.
//!
//! The "refused" cases connect from a forked child that dropped to `nobody` (uid and gid 65534),
//! with the socket's directory opened to everyone, so that the socket's own mode is the only
//! thing that can refuse; the `--socket-group nogroup` case is the positive control (same child,
//! same directory, accepted).

#[allow(dead_code, unused_imports)]
mod common;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
    thread::sleep,
    time::{Duration, Instant},
};

use common::*;

const NOBODY: u32 = 65534;
/// `nogroup` on Debian: gid 65534.
const NOGROUP: &str = "nogroup";

fn disk() -> Vec<Disk> {
    vec![Disk {
        addr: "0:0",
        size: 1 << 20,
        readonly: false,
    }]
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Connects to `path` from a forked child running as uid `uid`, gid `gid`, no supplementary
/// groups. Returns 0 when connect(2) succeeded, else its errno.
fn connect_as(path: &Path, uid: u32, gid: u32) -> i32 {
    ask_as(path, uid, gid, b"").err().unwrap_or(0)
}

/// Lets everyone traverse the socket's directory (the test's tempdir is 0700).
fn open_dir(socket: &Path) {
    let dir = socket.parent().unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
}

#[test]
fn socket_is_0600_and_refuses_other_users() {
    if !is_root() {
        eprintln!("skipped: needs root (to connect as another user)");
        return;
    }
    let mut d = Daemon::start(&disk(), &[]);
    let m = std::fs::symlink_metadata(&d.socket).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o600, "socket mode");
    assert_eq!(m.uid(), 0);
    open_dir(&d.socket);
    assert_eq!(
        connect_as(&d.socket, NOBODY, NOBODY),
        libc::EACCES,
        "nobody must not connect to a 0600 socket"
    );
    d.assert_alive();
}

#[test]
fn socket_group_makes_it_0660_for_that_group() {
    if !is_root() {
        eprintln!("skipped: needs root (to give the socket to a group)");
        return;
    }
    let gid = nix::unistd::Group::from_name(NOGROUP)
        .unwrap()
        .expect("group nogroup")
        .gid
        .as_raw();
    let mut d = Daemon::start(&disk(), &["--socket-group", NOGROUP]);
    let m = std::fs::symlink_metadata(&d.socket).unwrap();
    assert_eq!(m.mode() & 0o7777, 0o660, "socket mode");
    assert_eq!((m.uid(), m.gid()), (0, gid));
    open_dir(&d.socket);
    // A member of the group connects; someone outside it does not.
    assert_eq!(connect_as(&d.socket, NOBODY, gid), 0);
    assert_eq!(connect_as(&d.socket, NOBODY, NOBODY + 1), libc::EACCES);
    d.assert_alive();
}

#[test]
fn unknown_socket_group_is_one_error_before_the_socket_exists() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("d.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let sock = dir.path().join("s.sock");
    let img = img.to_str().unwrap();
    let out = run_to_failure(
        &sock,
        &["--lun", img, "--socket-group", "no-such-group-vus"],
    );
    assert_eq!(out.code, Some(2), "{}", out.stderr);
    assert_eq!(
        out.stderr.trim_end(),
        "vhost-user-scsi: error: --socket-group no-such-group-vus: no such group"
    );
    assert!(!out.socket_seen);
    assert!(!sock.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

fn wait_for_log(d: &Daemon, needle: &str) -> bool {
    let deadline = Instant::now() + TIMEOUT;
    while Instant::now() < deadline {
        if d.log().contains(needle) {
            return true;
        }
        sleep(Duration::from_millis(20));
    }
    false
}

/// The peer's credentials as the kernel recorded them. `--sandbox none`: in the default
/// namespace mode the worker sees ids from outside its namespaces translated (pid 0, unmapped
/// uid/gid 65534), see docs/security.md.
#[test]
fn connection_logs_peer_credentials() {
    let mut d = Daemon::start(&disk(), &["--sandbox", "none"]);
    let _vm = TestVm::connect(&d.socket, VmOptions::default());
    let line = format!(
        "front-end connected (connection 1): pid {} uid {} gid {}",
        std::process::id(),
        nix::unistd::geteuid(),
        nix::unistd::getegid()
    );
    assert!(wait_for_log(&d, &line), "no line {line:?}\n{}", d.log());
    d.assert_alive();
}
