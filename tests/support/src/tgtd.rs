//! A `tgtd` (Debian package `tgt`) owned by one test: started on a free port of 127.0.0.1 with
//! a private control port, targets with file-backed LUNs, CHAP accounts, target parameters,
//! restarts, and a clean stop (tgtd ignores SIGTERM; docs/iscsi.md, "tgtd quirks"). Used by the
//! initiator's tests (tests/iscsi.rs) and the daemon's iSCSI LUN tests (tests/iscsi_lun.rs).
//!
//! [`Tgtd::start`] prints `SKIPPED: ...` and returns `None` when tgtd is missing or does not
//! start.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Block size of the LUNs' pattern.
pub const BLOCK: usize = 512;
/// Size of the file behind each LUN that [`Tgtd::add_target`] creates.
pub const LUN_SIZE: u64 = 8 << 20;

static CONTROL: AtomicU32 = AtomicU32::new(0);

pub struct Tgtd {
    pub child: Child,
    pub control: u32,
    pub port: u16,
    pub opts: String,
    pub dir: tempfile::TempDir,
    /// (tid, iqn, backing file) of every target, to recreate them after a restart.
    pub targets: Vec<(u32, String, PathBuf)>,
}

fn spawn_tgtd(control: u32, port: u16, opts: &str, dir: &Path) -> std::io::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("tgtd.log"))?;
    let mut cmd = Command::new("tgtd");
    cmd.arg("-f")
        .arg("-C")
        .arg(control.to_string())
        .arg("--iscsi")
        .arg(format!("portal=127.0.0.1:{port}{opts}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // tgtd ignores SIGTERM and outlives a test process that ends without unwinding (killed by
    // a timeout, aborted): it would keep its port and control socket for good. It dies with
    // the thread that started it instead, the test's own, which owns the `Tgtd` (a test that
    // ends normally has stopped it already, in `Drop`).
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.spawn()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind a free port")
}

impl Tgtd {
    /// Starts tgtd, or returns None (after printing SKIPPED) if it is unavailable.
    pub fn start(test: &str) -> Option<Tgtd> {
        Self::start_with(test, "")
    }

    /// `iscsi_opts` is appended to tgtd's `--iscsi portal=...` option (e.g. `,nop_interval=1`).
    pub fn start_with(test: &str, iscsi_opts: &str) -> Option<Tgtd> {
        if Command::new("tgtd").arg("--version").output().is_err() {
            println!("SKIPPED: {test}: tgtd is not installed (apt-get install tgt)");
            return None;
        }
        for _ in 0..5 {
            // A private control port: tgtadm talks to /var/run/tgtd/socket.N.
            let control =
                2000 + (std::process::id() % 1000) * 16 + CONTROL.fetch_add(1, Ordering::SeqCst);
            let port = free_port();
            let dir = tempfile::tempdir().expect("tempdir");
            let Ok(child) = spawn_tgtd(control, port, iscsi_opts, dir.path()) else {
                println!("SKIPPED: {test}: tgtd cannot be started");
                return None;
            };
            let mut t = Tgtd {
                child,
                control,
                port,
                opts: iscsi_opts.to_string(),
                dir,
                targets: Vec::new(),
            };
            if t.wait_ready() {
                return Some(t);
            }
            eprintln!(
                "tgtd did not come up on port {port}: {}",
                std::fs::read_to_string(t.dir.path().join("tgtd.log")).unwrap_or_default()
            );
        }
        println!("SKIPPED: {test}: tgtd did not start");
        None
    }

    /// Ready when both the control socket answers and the portal accepts connections.
    pub fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            let ctl_ok = self.try_adm(&["--op", "show", "--mode", "target"]).is_ok();
            if ctl_ok && TcpStream::connect(self.addr()).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// Kills tgtd (SIGKILL: a crash, connections reset) and starts a new one on the same port
    /// with the same targets and backing files (contents kept).
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The new daemon must bind the same portal; retry while the old socket goes away.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            self.child = spawn_tgtd(self.control, self.port, &self.opts, self.dir.path())
                .expect("respawn tgtd");
            if self.wait_ready() {
                break;
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
            assert!(Instant::now() < deadline, "tgtd does not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
        for (tid, iqn, path) in std::mem::take(&mut self.targets) {
            if path.as_os_str().is_empty() {
                self.add_bare_target(tid, &iqn);
            } else {
                self.create_target(tid, &iqn, &path);
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn try_adm(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new("tgtadm")
            .arg("-C")
            .arg(self.control.to_string())
            .arg("--lld")
            .arg("iscsi")
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(format!(
                "tgtadm {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    }

    pub fn adm(&self, args: &[&str]) -> String {
        self.try_adm(args).unwrap()
    }

    /// What tgtd printed so far (its stdout and stderr, kept across restarts).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("tgtd.log")).unwrap_or_default()
    }

    /// Turns tgtd's debug messages on or off at run time (`tgtadm --mode sys --op update
    /// --name debug`): with them on, [`Tgtd::log`] shows each PDU tgtd queues.
    pub fn set_debug(&self, on: bool) {
        let v = if on { "on" } else { "off" };
        self.adm(&[
            "--mode", "sys", "--op", "update", "--name", "debug", "-v", v,
        ]);
    }

    /// How many Logout Requests tgtd queued while its debug messages were on
    /// ([`Tgtd::set_debug`]): each PDU it queues is logged as `iscsi_task_queue(..) STATSN
    /// EXPCMDSN OPCODE`, and 46 is an immediate Logout Request (06 | 40). A session that ends
    /// with a bare close of the socket has none (tgtd ends it just as quickly, so the session
    /// list alone cannot tell).
    pub fn logouts(&self) -> usize {
        let log = self.log();
        assert!(
            log.contains("set debug to: 1"),
            "tgtd's debug messages are off:\n{log}"
        );
        log.lines()
            .filter(|l| l.contains("iscsi_task_queue(") && l.trim_end().ends_with(" 46"))
            .count()
    }

    /// Waits (at most 10 s) until target `tid` has no connection left.
    pub fn wait_no_connection(&self, tid: u32) -> Result<(), String> {
        let t = tid.to_string();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let conns = self.adm(&["--mode", "conn", "--op", "show", "--tid", &t]);
            if !conns.contains("Connection") {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("target {tid}'s connection stayed: {conns}"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Creates target `tid` with LUN 1 backed by a new file of `LUN_SIZE` bytes filled with a
    /// pattern; returns the file path.
    pub fn add_target(&mut self, tid: u32, iqn: &str) -> PathBuf {
        let path = self.dir.path().join(format!("lun{tid}.img"));
        let mut f = std::fs::File::create(&path).unwrap();
        let pattern: Vec<u8> = (0..LUN_SIZE as usize)
            .map(|i| (i / BLOCK) as u8 ^ (i as u8))
            .collect();
        f.write_all(&pattern).unwrap();
        self.create_target(tid, iqn, &path);
        path
    }

    pub fn create_target(&mut self, tid: u32, iqn: &str, path: &Path) {
        let t = tid.to_string();
        self.adm(&["--op", "new", "--mode", "target", "--tid", &t, "-T", iqn]);
        self.targets
            .push((tid, iqn.to_string(), path.to_path_buf()));
        self.adm(&[
            "--op",
            "new",
            "--mode",
            "logicalunit",
            "--tid",
            &t,
            "--lun",
            "1",
            "-b",
            path.to_str().unwrap(),
        ]);
        self.adm(&["--op", "bind", "--mode", "target", "--tid", &t, "-I", "ALL"]);
    }

    /// A target without LUNs (only LUN 0, tgtd's controller), accepting every initiator.
    pub fn add_bare_target(&mut self, tid: u32, iqn: &str) {
        let t = tid.to_string();
        self.adm(&["--op", "new", "--mode", "target", "--tid", &t, "-T", iqn]);
        self.targets.push((tid, iqn.to_string(), PathBuf::new()));
        self.adm(&["--op", "bind", "--mode", "target", "--tid", &t, "-I", "ALL"]);
    }

    pub fn set_param(&self, tid: u32, name: &str, value: &str) {
        let t = tid.to_string();
        self.adm(&[
            "--op", "update", "--mode", "target", "--tid", &t, "-n", name, "-v", value,
        ]);
    }

    pub fn add_account(&self, tid: u32, user: &str, password: &str, outgoing: bool) {
        let t = tid.to_string();
        self.adm(&[
            "--op",
            "new",
            "--mode",
            "account",
            "--user",
            user,
            "--password",
            password,
        ]);
        let mut args = vec![
            "--op", "bind", "--mode", "account", "--tid", &t, "--user", user,
        ];
        if outgoing {
            args.push("--outgoing");
        }
        self.adm(&args);
    }
}

impl Drop for Tgtd {
    fn drop(&mut self) {
        // tgtd ignores SIGTERM: take the targets offline, delete them, then ask the daemon to
        // exit; SIGKILL if it is still there after a while.
        for tid in self.targets.iter().map(|t| t.0).collect::<Vec<_>>() {
            let t = tid.to_string();
            let _ = self.try_adm(&[
                "--op", "update", "--mode", "target", "--tid", &t, "-n", "state", "-v", "offline",
            ]);
            let _ = self.try_adm(&["--op", "delete", "--mode", "target", "--tid", &t, "--force"]);
        }
        let _ = Command::new("tgtadm")
            .arg("-C")
            .arg(self.control.to_string())
            .args(["--op", "delete", "--mode", "system"])
            .output();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut exited = false;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                exited = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if !exited {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // tgtd leaves its control socket and lock file behind.
        for suffix in ["", ".lock"] {
            let _ = std::fs::remove_file(format!("/var/run/tgtd/socket.{}{suffix}", self.control));
        }
    }
}
