//! End-to-end SCSI conformance: a Linux guest (QEMU, TCG) runs sg3_utils against the daemon
//! (`tests/e2e/guest-sg3.sh` with `e2e.sg3=strict`: every expectation must hold), then the same
//! script against QEMU's own `scsi-hd` on an identical fresh image (`e2e.sg3=survey`: results
//! recorded only). Every check whose exit status or output differs between the two is listed
//! (also in `target/e2e-cache/logs/sg3-differences.txt`); docs/scsi.md explains each one.
//!
//! The daemon also serves a CD-ROM LUN (`type=cdrom`, an ISO 9660 image made with genisoimage)
//! and a removable disk: the guest checks the MMC answers, mounts the ISO through Linux's sr and
//! isofs and compares the files' checksum with the host's, ejects it (`eject`, START STOP UNIT
//! with LOEJ), checks the medium is gone (NOT READY, MEDIUM NOT PRESENT) and loads it back.
//! The control run attaches QEMU's `scsi-cd` (the same ISO) and a `scsi-hd` with `removable=on`
//! at the same addresses, so those checks (`cd_*`, `rm_*`) are compared too.
//!
//! `e2e_boot_from_cdrom` boots a guest from an ISO on a `type=cdrom` LUN through the firmware
//! (SeaBIOS, El Torito, isolinux; tests/e2e/make-boot-iso.sh), as an installer starts.
//!
//! `VUS_E2E_SKIP=1` skips (prints SKIPPED); `VUS_E2E_SG3_QEMU=0` skips the scsi-hd control run;
//! `VUS_E2E_DAEMON_ARGS` adds daemon options. Anything else that prevents the test from running
//! fails it.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread::sleep,
    time::{Duration, Instant},
};

use vus_test_support::e2e::system_qemu;

const IMAGE_SIZE: u64 = 64 << 20;
const BOOT_TIMEOUT_SECS: u32 = 240;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn log_dir() -> PathBuf {
    let d = repo().join("target/e2e-cache/logs");
    fs::create_dir_all(&d).unwrap();
    d
}

/// One guest command: exit status and normalized output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Check {
    rc: i32,
    out: Vec<String>,
}

fn parse_checks(log: &str) -> BTreeMap<String, Check> {
    let mut checks = BTreeMap::new();
    for line in log.lines() {
        if let Some(rest) = line.trim_end().strip_prefix("SG3-CHECK: name=") {
            let (name, rc) = rest.split_once(" rc=").expect("bad SG3-CHECK line");
            checks.insert(
                name.to_string(),
                Check {
                    rc: rc.trim().parse().expect("bad rc"),
                    out: Vec::new(),
                },
            );
        } else if let Some(rest) = line.strip_prefix("SG3-OUT: ") {
            if let Some((name, text)) = rest.split_once(" | ") {
                if let Some(c) = checks.get_mut(name) {
                    c.out.push(text.trim_end().to_string());
                }
            }
        }
    }
    checks
}

/// The LUNs of both runs: the disk under test, the CD-ROM, the removable disk.
const DISKS: &str = "0:0,0:1,0:2";

/// Boots the sg3 guest script against `backend` (`--socket S` or `--builtin IMAGES`).
fn boot(qemu: &str, backend: &[&str], append: &str, log: &Path) -> (bool, String, String) {
    let append = format!("e2e.script=guest-sg3.sh {append}");
    let mut args = vec!["--phase", "sg3", "--disks", DISKS, "--append", &append];
    args.extend_from_slice(backend);
    run_guest(qemu, &args, log)
}

/// tests/e2e/run-guest.sh with `args`: whether the guest passed, its serial log, the harness's
/// own output.
fn run_guest(qemu: &str, args: &[&str], log: &Path) -> (bool, String, String) {
    let out = Command::new("bash")
        .arg(repo().join("tests/e2e/run-guest.sh"))
        .args(["--qemu", qemu])
        .args(["--timeout", &BOOT_TIMEOUT_SECS.to_string()])
        .arg("--log")
        .arg(log)
        .arg("--no-log-on-failure")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run tests/e2e/run-guest.sh");
    // Lossy: a tool may print binary (sg_sanitize prints scsi-hd's LU name raw), and one
    // invalid byte must not turn the whole log into "nothing ran".
    let serial = String::from_utf8_lossy(&fs::read(log).unwrap_or_default()).replace('\r', "");
    let harness = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), serial, harness)
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_daemon(socket: &Path, luns: &[String], log: &Path) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"));
    cmd.arg("--socket-path").arg(socket);
    for lun in luns {
        cmd.arg("--lun").arg(lun);
    }
    if let Ok(extra) = std::env::var("VUS_E2E_DAEMON_ARGS") {
        cmd.args(extra.split_whitespace());
    }
    let f = fs::File::create(log).unwrap();
    cmd.stdin(Stdio::null())
        .stdout(f.try_clone().unwrap())
        .stderr(f);
    let mut d = Daemon(cmd.spawn().expect("cannot start the daemon"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if let Some(st) = d.0.try_wait().unwrap() {
            panic!(
                "daemon exited ({st}):\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not create its socket"
        );
        sleep(Duration::from_millis(50));
    }
    d
}

fn terminate(mut d: Daemon, log: &Path) {
    let pid = d.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(st) = d.0.try_wait().unwrap() {
            assert!(
                st.success(),
                "daemon exited with {st}:\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
            return;
        }
        assert!(
            Instant::now() < deadline,
            "daemon still running after SIGTERM"
        );
        sleep(Duration::from_millis(50));
    }
}

/// An ISO 9660 image (Rock Ridge, Joliet) holding `a`, `dir/b` and `c` of deterministic
/// pseudo-random contents (3 MiB in all, so the guest reads well past the first blocks), made
/// with genisoimage (tests/e2e/setup.sh installs it); returns the SHA-256 of the three files'
/// contents concatenated in that order.
fn make_iso(dir: &Path, iso: &Path) -> String {
    let root = dir.join("iso-root");
    fs::create_dir_all(root.join("dir")).unwrap();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    };
    let files = [
        ("a", bytes(2 << 20)),
        ("dir/b", b"vhost-user-scsi CD-ROM test\n".to_vec()),
        ("c", bytes((1 << 20) + 12345)),
    ];
    let mut all = Vec::new();
    for (name, data) in &files {
        fs::write(root.join(name), data).unwrap();
        all.extend_from_slice(data);
    }
    vus_test_support::e2e::genisoimage(&root, iso, "VUSTEST");
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(&all)?;
            c.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// Differences between our answers and scsi-hd's (scsi-cd's for the CD-ROM), one line each.
fn differences(ours: &BTreeMap<String, Check>, qemu: &BTreeMap<String, Check>) -> Vec<String> {
    let mut diffs = Vec::new();
    for (name, o) in ours {
        match qemu.get(name) {
            None => diffs.push(format!("{name}: only run against us (rc {})", o.rc)),
            Some(q) if q.rc != o.rc => diffs.push(format!(
                "{name}: exit status ours {} / scsi-hd {}",
                o.rc, q.rc
            )),
            Some(q) if q.out != o.out => {
                let first = o
                    .out
                    .iter()
                    .zip(&q.out)
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| format!("ours `{}` / scsi-hd `{}`", a.trim(), b.trim()))
                    .unwrap_or_else(|| "output lengths differ".to_string());
                diffs.push(format!("{name}: output differs: {first}"));
            }
            Some(_) => {}
        }
    }
    diffs
}

#[test]
fn e2e_sg3_conformance() {
    if std::env::var("VUS_E2E_SKIP").as_deref() == Ok("1") {
        println!("SKIPPED: e2e sg3 (VUS_E2E_SKIP=1)");
        return;
    }
    let t0 = Instant::now();
    let qemu = system_qemu();
    let tmp = tempfile::Builder::new()
        .prefix("vus-sg3-")
        .tempdir()
        .unwrap();
    let logs = log_dir();

    // Our daemon, strict.
    let image = tmp.path().join("ours.img");
    fs::File::create(&image)
        .unwrap()
        .set_len(IMAGE_SIZE)
        .unwrap();
    let iso = tmp.path().join("cd.iso");
    let cdsum = make_iso(tmp.path(), &iso);
    let removable = tmp.path().join("removable.img");
    fs::File::create(&removable)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let socket = tmp.path().join("vus.sock");
    let daemon_log = logs.join("sg3-daemon.log");
    let luns = [
        format!("0:0={}", image.display()),
        format!("0:1={},type=cdrom", iso.display()),
        format!("0:2={},removable", removable.display()),
    ];
    let daemon = start_daemon(&socket, &luns, &daemon_log);
    let log = logs.join("sg3-ours.log");
    let sock = socket.display().to_string();
    let append = format!("e2e.sg3=strict e2e.cdrom=0:1 e2e.cdsum={cdsum} e2e.removable=0:2");
    let (ok, serial, harness) = boot(&qemu, &["--socket", &sock], &append, &log);
    let ours = parse_checks(&serial);
    if !ok {
        let fails: Vec<&str> = serial
            .lines()
            .filter(|l| l.starts_with("SG3-FAIL") || l.starts_with("E2E-RESULT"))
            .collect();
        panic!(
            "sg3 checks failed against the daemon:\n{}\n--- harness ---\n{harness}\n--- serial log {} ---\n{serial}\n--- daemon log ---\n{}",
            fails.join("\n"),
            log.display(),
            fs::read_to_string(&daemon_log).unwrap_or_default()
        );
    }
    assert!(ours.len() > 80, "only {} checks ran:\n{serial}", ours.len());
    // The CD-ROM and removable disk sections ran (their LUNs were found).
    for name in ["cd_mount", "cd_load_ua", "cd_remount", "rm_tur_ua"] {
        assert!(
            ours.contains_key(name),
            "check {name} did not run:\n{serial}"
        );
    }
    terminate(daemon, &daemon_log);
    println!(
        "sg3 against the daemon: {} checks PASS in {:.1}s",
        ours.len(),
        t0.elapsed().as_secs_f64()
    );

    if std::env::var("VUS_E2E_SG3_QEMU").as_deref() == Ok("0") {
        println!("SKIPPED: scsi-hd control run (VUS_E2E_SG3_QEMU=0)");
        return;
    }
    // QEMU's scsi-hd on an identical image: survey only.
    let t1 = Instant::now();
    let image2 = tmp.path().join("qemu.img");
    fs::File::create(&image2)
        .unwrap()
        .set_len(IMAGE_SIZE)
        .unwrap();
    let removable2 = tmp.path().join("qemu-removable.img");
    fs::File::create(&removable2)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let log2 = logs.join("sg3-scsi-hd.log");
    let builtin = format!(
        "{},cdrom:{},removable:{}",
        image2.display(),
        iso.display(),
        removable2.display()
    );
    let append = format!("e2e.sg3=survey e2e.cdrom=0:1 e2e.cdsum={cdsum} e2e.removable=0:2");
    let (ok, serial2, harness2) = boot(&qemu, &["--builtin", &builtin], &append, &log2);
    assert!(
        ok,
        "scsi-hd control run did not complete:\n{harness2}\n{serial2}"
    );
    let theirs = parse_checks(&serial2);
    let diffs = differences(&ours, &theirs);
    let report = format!(
        "# guest-sg3.sh: daemon vs QEMU scsi-hd ({qemu})\n{}\n",
        diffs.join("\n")
    );
    fs::write(logs.join("sg3-differences.txt"), &report).unwrap();
    println!(
        "scsi-hd control run in {:.1}s; {} of {} checks differ:\n{report}",
        t1.elapsed().as_secs_f64(),
        diffs.len(),
        ours.len()
    );
}

/// A guest boots from an ISO served by a `type=cdrom` LUN: SeaBIOS finds the CD-ROM on the
/// vhost-user-scsi device (bootindex 0) and boots its El Torito image (isolinux), which loads
/// the kernel and initramfs from the ISO with READ(10) through the firmware's virtio-scsi
/// driver; the booted guest then finds the LUN through Linux's sr and checks the kernel on it
/// (tests/e2e/guest-cdboot.sh). That is how an installer starts.
#[test]
fn e2e_boot_from_cdrom() {
    if std::env::var("VUS_E2E_SKIP").as_deref() == Ok("1") {
        println!("SKIPPED: e2e CD-ROM boot (VUS_E2E_SKIP=1)");
        return;
    }
    let qemu = system_qemu();
    let tmp = tempfile::Builder::new()
        .prefix("vus-cdboot-")
        .tempdir()
        .unwrap();
    let logs = log_dir();
    let nonce = format!("cdboot{}", std::process::id());
    let iso = tmp.path().join("boot.iso");
    let cmdline = format!(
        "console=ttyS0 panic=-1 quiet e2e.phase=cdboot e2e.nonce={nonce} \
         e2e.script=guest-cdboot.sh e2e.cdrom=0:0 e2e.cdsum=@KERNEL_SHA256@"
    );
    let out = Command::new("bash")
        .arg(repo().join("tests/e2e/make-boot-iso.sh"))
        .arg(&iso)
        .arg(&cmdline)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run tests/e2e/make-boot-iso.sh");
    assert!(
        out.status.success(),
        "make-boot-iso.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let socket = tmp.path().join("vus.sock");
    let daemon_log = logs.join("cdboot-daemon.log");
    let daemon = start_daemon(
        &socket,
        &[format!("0:0={},type=cdrom", iso.display())],
        &daemon_log,
    );
    let log = logs.join("cdboot.log");
    let sock = socket.display().to_string();
    let args = [
        "--boot-cd",
        "--socket",
        &sock,
        "--nonce",
        &nonce,
        "--phase",
        "cdboot",
        "--disks",
        "0:0",
    ];
    let (ok, serial, harness) = run_guest(&qemu, &args, &log);
    assert!(
        ok,
        "booting from the CD-ROM failed:\n{harness}\n--- serial log ---\n{serial}\n--- daemon log ---\n{}",
        fs::read_to_string(&daemon_log).unwrap_or_default()
    );
    assert!(
        serial.contains("Booting from DVD/CD"),
        "not booted from the CD:\n{serial}"
    );
    terminate(daemon, &daemon_log);
}
