//! End to end, runtime management with a live Linux guest (QEMU, TCG): the daemon starts with
//! one LUN and a management socket; while the guest runs `tests/e2e/guest-hotplug.sh` (I/O on
//! that LUN all along), the test, through `vhost-user-scsi ctl`:
//!  1. adds 0:1 → the guest's kernel sees a new disk, which gets an ext4 file system;
//!  2. grows its image and resizes it → the guest's `/sys/block/sdX/size` follows;
//!  3. removes it → the disk disappears from the guest, whose I/O on 0:0 carries on without
//!     an error;
//!
//! `guest_sees_the_cdrom_medium_changed_and_ejected` does the same for a `type=cdrom` LUN's
//! medium (`tests/e2e/guest-medium.sh`): the guest mounts ISO A (which locks the tray), the
//! host's `change-medium` is refused (-32020) and the guest gets an Eject Request event and
//! unmounts; the change then goes through and the guest mounts ISO B; after `eject` the guest
//! finds no medium. The medium loaded at run time is released once ejected.
//!
//! then checks on the host that the file system the guest wrote is clean (`e2fsck -fn`), that
//! the removed image is unlocked, and that the daemon exits 0 on SIGTERM.
//!
//! `VUS_E2E_SKIP=1` skips (prints SKIPPED). Serial logs are kept in
//! `target/e2e-cache/logs/hotplug-*.log`.

#[allow(dead_code, unused_imports)]
mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use common::{unlocked, Daemon, Disk};
use vus_test_support::e2e::{complete_lines, system_qemu};

const MIB: u64 = 1 << 20;
const BASE_SIZE: u64 = 64 * MIB;
const ADDED_SIZE: u64 = 64 * MIB;
const GROWN_SIZE: u64 = 96 * MIB;
/// Boot plus every step (TCG on a shared 2-core machine).
const GUEST_TIMEOUT_SECS: u64 = 420;
const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-scsi");

fn log_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/e2e-cache/logs");
    fs::create_dir_all(&d).unwrap();
    d
}

/// The guest (run-guest.sh), killed if the test bails out.
struct Guest {
    child: Option<Child>,
    log: PathBuf,
}

impl Guest {
    fn serial(&self) -> String {
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .replace('\r', "")
    }

    /// Waits for the guest's complete `E2E-HP: <step> ...` line; returns its rest.
    fn wait_step(&mut self, step: &str, daemon: &Daemon) -> String {
        let prefix = format!("E2E-HP: {step}");
        let deadline = Instant::now() + Duration::from_secs(GUEST_TIMEOUT_SECS);
        loop {
            let serial = self.serial();
            if let Some(line) = complete_lines(&serial)
                .into_iter()
                .find(|l| l.starts_with(&prefix))
            {
                println!("guest: {line}");
                return line[prefix.len()..].trim().to_owned();
            }
            let ended = self.child.as_mut().unwrap().try_wait().unwrap();
            if ended.is_some() || Instant::now() > deadline {
                panic!(
                    "guest never reported {step:?} (run-guest.sh: {ended:?})\n--- serial ---\n\
                     {serial}\n--- daemon ---\n{}",
                    daemon.log()
                );
            }
            sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn try_ctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("ctl")
        .arg("--management-socket")
        .arg(socket)
        .args(args)
        .output()
        .unwrap()
}

fn ctl(socket: &Path, args: &[&str], daemon: &Daemon) -> Output {
    let out = try_ctl(socket, args);
    assert!(
        out.status.success(),
        "ctl {args:?}: {}\n{}{}\n--- daemon ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    println!(
        "ctl {args:?}: {}",
        String::from_utf8_lossy(&out.stdout).trim()
    );
    out
}

/// What every test here starts with: the QEMU to run, and a fresh directory (kept until
/// dropped) for images and the management socket, `<dir>/mgmt.sock` (canonical: `--image-dir`
/// wants that). None with `VUS_E2E_SKIP=1` (after printing SKIPPED).
fn prepare() -> Option<(String, tempfile::TempDir, PathBuf, PathBuf)> {
    if std::env::var("VUS_E2E_SKIP").as_deref() == Ok("1") {
        println!("SKIPPED: e2e (VUS_E2E_SKIP=1)");
        return None;
    }
    let qemu = system_qemu();
    let dir = tempfile::tempdir().unwrap();
    let images = fs::canonicalize(dir.path()).unwrap();
    let mgmt = images.join("mgmt.sock");
    Some((qemu, dir, images, mgmt))
}

/// The daemon of these tests: 0:0 (the guest's own disk, `BASE_SIZE`) and the management
/// socket `mgmt`, with `extra` options.
fn managed_daemon(mgmt: &Path, extra: &[&str]) -> Daemon {
    let mut args = vec!["--management-socket", mgmt.to_str().unwrap()];
    args.extend_from_slice(extra);
    Daemon::start(
        &[Disk {
            addr: "0:0",
            size: BASE_SIZE,
            readonly: false,
        }],
        &args,
    )
}

/// The file system the guest made in `image` (an image file or tgtd's backing file) is clean
/// (`e2fsck -fn`).
fn assert_clean_ext4(image: &Path) {
    let fsck = Command::new("e2fsck")
        .arg("-fn")
        .arg(image)
        .output()
        .unwrap();
    assert!(
        fsck.status.success(),
        "e2fsck -fn of {} (the guest formatted it): {}\n{}",
        image.display(),
        fsck.status,
        String::from_utf8_lossy(&fsck.stdout)
    );
}

/// SIGTERM: the daemon exits 0.
fn assert_clean_exit(daemon: &mut Daemon) {
    let status = daemon.terminate();
    assert!(status.success(), "daemon exit: {status}\n{}", daemon.log());
}

fn field<'a>(rest: &'a str, key: &str) -> &'a str {
    rest.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {rest:?}"))
}

/// The guest (`tests/e2e/guest-hotplug.sh`) on `daemon`'s socket; `append`: more of its
/// kernel command line.
fn start_guest(qemu: &str, daemon: &Daemon, name: &str, append: &str) -> Guest {
    let log = log_dir().join(format!("{name}-{}.log", std::process::id()));
    let append = format!("e2e.script=guest-hotplug.sh {append}");
    run_guest(qemu, daemon, "hotplug", append.trim(), log)
}

/// `tests/e2e/run-guest.sh` in `phase` on `daemon`'s socket (disk 0:0), its serial log in
/// `log`; `append`: its kernel command line (which script, and its parameters).
fn run_guest(qemu: &str, daemon: &Daemon, phase: &str, append: &str, log: PathBuf) -> Guest {
    let child = Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/e2e/run-guest.sh"
        ))
        .args(["--qemu", qemu, "--phase", phase, "--disks", "0:0"])
        .args(["--timeout", &GUEST_TIMEOUT_SECS.to_string()])
        .args(["--append", append])
        .arg("--socket")
        .arg(&daemon.socket)
        .arg("--log")
        .arg(&log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cannot run tests/e2e/run-guest.sh");
    Guest {
        child: Some(child),
        log,
    }
}

/// Waits for the guest to end and checks it passed (no failure reported either).
fn guest_passed(mut guest: Guest, daemon: &mut Daemon) {
    let out = guest.child.take().unwrap().wait_with_output().unwrap();
    let serial = guest.serial();
    assert!(
        out.status.success() && !serial.contains("E2E-RESULT: FAIL"),
        "guest failed ({})\n{}{}\n--- serial ---\n{serial}\n--- daemon ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        daemon.log()
    );
    daemon.assert_alive();
}

#[test]
fn guest_sees_a_lun_added_grown_and_removed() {
    let Some((qemu, _dir, images, mgmt)) = prepare() else {
        return;
    };
    let added = images.join("added.img");
    fs::File::create(&added)
        .unwrap()
        .set_len(ADDED_SIZE)
        .unwrap();
    let mut daemon = managed_daemon(&mgmt, &["--image-dir", images.to_str().unwrap()]);

    let mut guest = start_guest(&qemu, &daemon, "hotplug", "");

    guest.wait_step("ready", &daemon);
    let spec = format!("0:1={}", added.display());
    ctl(&mgmt, &["add-lun", "--lun", &spec], &daemon);
    let step = guest.wait_step("added", &daemon);
    assert_eq!(field(&step, "sectors"), (ADDED_SIZE / 512).to_string());

    fs::File::options()
        .write(true)
        .open(&added)
        .unwrap()
        .set_len(GROWN_SIZE)
        .unwrap();
    ctl(&mgmt, &["resize", "0:1"], &daemon);
    let step = guest.wait_step("resized", &daemon);
    assert_eq!(field(&step, "sectors"), (GROWN_SIZE / 512).to_string());

    ctl(&mgmt, &["remove-lun", "0:1"], &daemon);
    guest.wait_step("removed", &daemon);
    guest_passed(guest, &mut daemon);

    // The image the guest formatted, released by the daemon.
    assert!(unlocked(&added), "the removed image is still locked");
    assert_clean_ext4(&added);
    assert_clean_exit(&mut daemon);
}

/// The same with an iSCSI LUN added at run time (a real tgtd; no resize: its size is the
/// target's): the guest sees the disk appear, makes a file system on it and reads it back
/// through the daemon's passthrough, sees it go at remove-lun while I/O on 0:0 carries on; on
/// the host, the file system in tgtd's backing file is clean and the session is closed.
#[test]
fn guest_sees_an_iscsi_lun_added_and_removed() {
    use vus_test_support::tgtd::{Tgtd, LUN_SIZE};
    let Some((qemu, _dir, _, mgmt)) = prepare() else {
        return;
    };
    let Some(mut t) = Tgtd::start("guest_sees_an_iscsi_lun_added_and_removed") else {
        return;
    };
    const IQN: &str = "iqn.2026-01.org.vhost-user-scsi:hotplug";
    let backing = t.add_target(1, IQN);
    let portal = format!("127.0.0.1:{}", t.port);
    let mut daemon = managed_daemon(&mgmt, &["--iscsi-portal", &portal]);
    let mut guest = start_guest(&qemu, &daemon, "hotplug-iscsi", "e2e.resize=0");
    guest.wait_step("ready", &daemon);
    let spec = format!("0:1=iscsi://{portal}/{IQN}/1");
    ctl(&mgmt, &["add-lun", "--lun", &spec], &daemon);
    let step = guest.wait_step("added", &daemon);
    assert_eq!(field(&step, "sectors"), (LUN_SIZE / 512).to_string());
    guest.wait_step("resized skipped", &daemon);
    t.set_debug(true);
    ctl(&mgmt, &["remove-lun", "0:1"], &daemon);
    guest.wait_step("removed", &daemon);
    guest_passed(guest, &mut daemon);

    // The session ended with the daemon's logout (tests/support `Tgtd::logouts`).
    if let Err(e) = t.wait_no_connection(1) {
        panic!("{e}\n{}", daemon.log());
    }
    assert_eq!(t.logouts(), 1, "{}\n{}", t.log(), daemon.log());
    assert_clean_ext4(&backing);
    assert_clean_exit(&mut daemon);
}

/// An ISO 9660 image at `iso` whose `/which` holds `which`, padded with `pad` bytes of data.
fn make_iso(dir: &Path, iso: &Path, which: &str, pad: usize) {
    let root = dir.join(format!("{which}-root"));
    fs::create_dir_all(&root).unwrap();
    fs::write(root.join("which"), format!("{which}\n")).unwrap();
    fs::write(root.join("pad"), vec![0x5a; pad]).unwrap();
    vus_test_support::e2e::genisoimage(&root, iso, "VUSMEDIUM");
}

#[test]
fn guest_sees_the_cdrom_medium_changed_and_ejected() {
    let Some((qemu, _dir, images, mgmt)) = prepare() else {
        return;
    };
    let (a, b) = (images.join("a.iso"), images.join("b.iso"));
    let nonce = std::process::id();
    let (which_a, which_b) = (format!("A-{nonce}"), format!("B-{nonce}"));
    make_iso(&images, &a, &which_a, 4096);
    make_iso(&images, &b, &which_b, 1 << 20);
    let cdrom = format!("0:1={},type=cdrom", a.display());
    let mut daemon = managed_daemon(
        &mgmt,
        &["--image-dir", images.to_str().unwrap(), "--lun", &cdrom],
    );

    let log = log_dir().join(format!("medium-{nonce}.log"));
    let mut guest = run_guest(
        &qemu,
        &daemon,
        "medium",
        "e2e.script=guest-medium.sh e2e.cdrom=0:1",
        log,
    );
    let sectors = |iso: &Path| (fs::metadata(iso).unwrap().len() / 512).to_string();

    // 1. Mounted in the guest, so locked in: the change is refused, the guest is asked to let
    // go of the medium.
    let step = guest.wait_step("mounted", &daemon);
    assert_eq!(field(&step, "which"), which_a);
    assert_eq!(field(&step, "sectors"), sectors(&a));
    let b_text = b.to_str().unwrap();
    let out = try_ctl(&mgmt, &["change-medium", "0:1", b_text]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.code() == Some(1) && err.contains("-32020"),
        "change-medium of a mounted CD-ROM: {}\n{err}",
        out.status
    );
    assert!(!unlocked(&a), "A is still the medium");
    // 2. The guest unmounted: the change goes through. (The guest's polling opens the drive,
    // which locks it for that moment: a refusal then is retried.)
    guest.wait_step("unmounted", &daemon);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = try_ctl(&mgmt, &["change-medium", "0:1", b_text]);
        if out.status.success() {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("-32020") && Instant::now() < deadline,
            "change-medium after the guest unmounted: {}\n{err}\n{}",
            out.status,
            daemon.log()
        );
        sleep(Duration::from_millis(200));
    }
    // 3. The guest mounts B.
    let step = guest.wait_step("changed", &daemon);
    assert_eq!(field(&step, "which"), which_b);
    assert_eq!(field(&step, "sectors"), sectors(&b));
    // (A replaced medium is closed once no command uses it, the configured one too: without
    // --restart-worker the supervisor keeps no LUN file, and with it it drops its copy of a
    // replaced medium; checked below, once the eject released what the swap may have kept.)
    // 4. Ejected: the guest finds no medium.
    ctl(&mgmt, &["eject", "0:1"], &daemon);
    guest.wait_step("ejected", &daemon);
    guest_passed(guest, &mut daemon);
    assert!(unlocked(&b), "the ejected ISO is still locked");
    assert!(unlocked(&a), "the replaced configured ISO is still locked");
    assert_clean_exit(&mut daemon);
}
