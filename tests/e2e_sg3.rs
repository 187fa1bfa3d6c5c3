//! End-to-end SCSI conformance: a Linux guest (QEMU, TCG) runs sg3_utils against the daemon
//! (`tests/e2e/guest-sg3.sh` with `e2e.sg3=strict`: every expectation must hold), then the same
//! script against QEMU's own `scsi-hd` on an identical fresh image (`e2e.sg3=survey`: results
//! recorded only). Every check whose exit status or output differs between the two is listed
//! (also in `target/e2e-cache/logs/sg3-differences.txt`); docs/scsi.md explains each one.
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
const BOOT_TIMEOUT_SECS: u32 = 150;

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

fn boot(qemu: &str, backend: &[&str], mode: &str, log: &Path) -> (bool, String, String) {
    let out = Command::new("bash")
        .arg(repo().join("tests/e2e/run-guest.sh"))
        .args(["--qemu", qemu, "--phase", "sg3", "--disks", "0:0"])
        .args(["--timeout", &BOOT_TIMEOUT_SECS.to_string()])
        .args([
            "--append",
            &format!("e2e.script=guest-sg3.sh e2e.sg3={mode}"),
        ])
        .arg("--log")
        .arg(log)
        .arg("--no-log-on-failure")
        .args(backend)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run tests/e2e/run-guest.sh");
    let serial = fs::read_to_string(log)
        .unwrap_or_default()
        .replace('\r', "");
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

fn start_daemon(socket: &Path, image: &Path, log: &Path) -> Daemon {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vhost-user-scsi"));
    cmd.arg("--socket-path")
        .arg(socket)
        .arg("--lun")
        .arg(format!("0:0={}", image.display()));
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

/// Differences between our answers and scsi-hd's, one line each.
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
    let socket = tmp.path().join("vus.sock");
    let daemon_log = logs.join("sg3-daemon.log");
    let daemon = start_daemon(&socket, &image, &daemon_log);
    let log = logs.join("sg3-ours.log");
    let sock = socket.display().to_string();
    let (ok, serial, harness) = boot(&qemu, &["--socket", &sock], "strict", &log);
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
    let log2 = logs.join("sg3-scsi-hd.log");
    let img2 = image2.display().to_string();
    let (ok, serial2, harness2) = boot(&qemu, &["--builtin", &img2], "survey", &log2);
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
