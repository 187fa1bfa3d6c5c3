//! Command-line behaviour of the built binary: `--print-capabilities`, and early, one-line,
//! exit-status-2 failures that leave nothing behind. The option grammar itself is unit-tested
//! in `src/config/cli.rs`; these tests check the wiring in `main`.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_vhost-user-scsi");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .output()
        .expect("cannot run the binary")
}

/// Asserts exit status 2, no stdout, and exactly one stderr line of the form
/// `vhost-user-scsi: error: ...`; returns that line.
fn fails(args: &[&str]) -> String {
    let out = run(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr: {stderr}");
    assert!(out.stdout.is_empty(), "{args:?}: stdout: {:?}", out.stdout);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line: {stderr}");
    assert!(
        lines[0].starts_with("vhost-user-scsi: error: "),
        "{args:?}: {stderr}"
    );
    lines[0].to_owned()
}

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Self {
        Self(tempfile::tempdir().unwrap())
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }

    fn image(&self, name: &str) -> String {
        let p = self.path(name);
        File::create(&p).unwrap().set_len(1 << 20).unwrap();
        p.display().to_string()
    }

    fn sock(&self) -> String {
        self.path("vus.sock").display().to_string()
    }

    /// The directory holds nothing but `expected`.
    fn assert_only(&self, expected: &[&str]) {
        let mut names: Vec<String> = std::fs::read_dir(self.0.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
        expected.sort();
        assert_eq!(names, expected);
    }
}

#[test]
fn print_capabilities() {
    for args in [
        &["--print-capabilities"][..],
        &[
            "--socket-path",
            "/nonexistent/dir/x.sock",
            "--fd",
            "7",
            "--lun",
            "999:0=/nope,bogus",
            "--print-capabilities",
            "--no-such-option",
        ],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {out:?}");
        assert!(out.stderr.is_empty(), "{args:?}: {out:?}");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("valid JSON");
        assert_eq!(v["type"], "scsi");
        let features = v["features"].as_array().expect("features array");
        assert!(features.iter().all(|f| f.is_string()));
        assert!(features.iter().any(|f| f == "read-only"));
    }
    assert!(!Path::new("/nonexistent/dir/x.sock").exists());
}

#[test]
fn help_and_version_exit_zero() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--socket-path") && help.contains("--lun"));
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn missing_listen_option() {
    let d = Dir::new();
    let img = d.image("a.img");
    let e = fails(&["--lun", &img]);
    assert!(e.contains("--socket-path") && e.contains("--fd"), "{e}");
}

#[test]
fn socket_path_and_fd_conflict() {
    let d = Dir::new();
    let img = d.image("a.img");
    let e = fails(&["--socket-path", &d.sock(), "--fd", "3", "--lun", &img]);
    assert!(e.contains("--socket-path") && e.contains("--fd"), "{e}");
    d.assert_only(&["a.img"]);
}

#[test]
fn nonexistent_image_creates_no_socket() {
    let d = Dir::new();
    let nope = d.path("nope.img").display().to_string();
    let e = fails(&["--socket-path", &d.sock(), "--lun", &format!("0:0={nope}")]);
    assert!(e.contains(&nope), "{e}");
    assert!(e.contains("No such file or directory"), "{e}");
    d.assert_only(&[]);
}

#[test]
fn locked_image_creates_no_socket() {
    let d = Dir::new();
    let img = d.image("a.img");
    let holder = File::options().read(true).write(true).open(&img).unwrap();
    assert_eq!(
        // SAFETY: flock on a descriptor we own.
        unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    let e = fails(&["--socket-path", &d.sock(), "--lun", &img]);
    assert!(e.contains(&img), "{e}");
    d.assert_only(&["a.img"]);
}

#[test]
fn duplicate_lun_address() {
    let d = Dir::new();
    let (a, b) = (d.image("a.img"), d.image("b.img"));
    let e = fails(&[
        "--socket-path",
        &d.sock(),
        "--lun",
        &format!("0:3={a}"),
        "--lun",
        &format!("0:3={b}"),
    ]);
    assert!(e.contains("0:3="), "{e}");
    d.assert_only(&["a.img", "b.img"]);
}

#[test]
fn address_out_of_range() {
    let d = Dir::new();
    let img = d.image("a.img");
    let e = fails(&["--socket-path", &d.sock(), "--lun", &format!("256:0={img}")]);
    assert!(e.contains("256"), "{e}");
    let e = fails(&[
        "--socket-path",
        &d.sock(),
        "--lun",
        &format!("0:16384={img}"),
    ]);
    assert!(e.contains("16384"), "{e}");
    d.assert_only(&["a.img"]);
}

#[test]
fn bad_lun_option() {
    let d = Dir::new();
    let img = d.image("a.img");
    let e = fails(&["--socket-path", &d.sock(), "--lun", &format!("{img},turbo")]);
    assert!(e.contains("turbo"), "{e}");
    let e = fails(&[
        "--socket-path",
        &d.sock(),
        "--lun",
        &format!("{img},block-size=1000"),
    ]);
    assert!(e.contains("1000"), "{e}");
    d.assert_only(&["a.img"]);
}

#[test]
fn bad_data_path_options() {
    let d = Dir::new();
    let img = d.image("a.img");
    for (option, value) in [
        ("--aio", "turbo"),
        ("--submit-batch", "0"),
        ("--submit-batch", "5000"),
        ("--aio-threads", "0"),
        ("--queue-cpus", "3-1"),
        ("--poll-us", "2000000"),
        ("--poll-max-us", "2000000"),
    ] {
        let e = fails(&["--socket-path", &d.sock(), "--lun", &img, option, value]);
        assert!(
            e.contains(option) && e.contains(value),
            "{option} {value}: {e}"
        );
    }
    d.assert_only(&["a.img"]);
}

#[test]
fn fd_that_is_not_a_socket() {
    let d = Dir::new();
    let img = d.image("a.img");
    // run() connects stdin (fd 0) to /dev/null.
    let e = fails(&["--fd", "0", "--lun", &img]);
    assert!(e.contains("--fd 0") && e.contains("not a socket"), "{e}");
}

#[test]
fn config_file_unknown_key() {
    let d = Dir::new();
    let img = d.image("a.img");
    let cfg = d.path("vus.toml");
    std::fs::write(
        &cfg,
        format!(
            "socket-path = \"{}\"\nnum-queue = 4\n[[lun]]\nsource = \"{img}\"\n",
            d.sock()
        ),
    )
    .unwrap();
    let e = fails(&["--config", cfg.to_str().unwrap()]);
    assert!(e.contains("num-queue") && e.contains("vus.toml"), "{e}");
    d.assert_only(&["a.img", "vus.toml"]);
}

#[test]
fn unknown_option_is_one_line() {
    let e = fails(&["--frobnicate"]);
    assert!(e.contains("--frobnicate"), "{e}");
}

/// [`fails`], but a daemon that starts serving (the check it should have failed is missing) is
/// stopped after 10 s and fails the test instead of hanging it.
fn fails_bounded(args: &[&str]) -> String {
    let out = Command::new("timeout")
        .arg("10")
        .arg(BIN)
        .args(args)
        .stdin(Stdio::null())
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .output()
        .expect("cannot run the binary");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: stderr: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{args:?}: expected one line: {stderr}");
    lines[0].to_owned()
}

/// Issue 11 item 10: the files the daemon creates and keeps (`pr-file`, `size=` images) are
/// never opened through a symbolic link planted at their path, nor taken over when another
/// user's file (or a hard link) is found there. One line naming the LUN, exit 2, and the file
/// the link points to is neither created nor changed.
#[test]
fn created_files_refuse_symlinks_and_foreign_files() {
    use std::os::unix::fs::symlink;
    let d = Dir::new();
    let img = d.image("a.img");
    let sock = d.sock();
    let victim = d.path("victim");
    std::fs::write(&victim, b"precious").unwrap();
    let link = d.path("link");
    let lun_arg = |opts: &str| format!("{img},{opts}");

    // A pr-file path that is a link to an existing file, or a dangling link.
    symlink(&victim, &link).unwrap();
    let arg = lun_arg(&format!("pr-file={}", link.display()));
    assert_eq!(
        fails_bounded(&["--socket-path", &sock, "--lun", &arg]),
        format!(
            "vhost-user-scsi: error: --lun {arg}: pr-file {} is a symbolic link: files this \
             daemon creates are never opened through one",
            link.display()
        )
    );
    std::fs::remove_file(&link).unwrap();
    let absent = d.path("absent");
    symlink(&absent, &link).unwrap();
    let e = fails_bounded(&["--socket-path", &sock, "--lun", &arg]);
    assert!(e.contains("is a symbolic link"), "{e}");
    assert!(!absent.exists(), "created through the link");

    // A size= image path that is a link to an existing file, or a dangling link.
    let arg = format!("{},size=1M", link.display());
    let e = fails_bounded(&["--socket-path", &sock, "--lun", &arg]);
    assert_eq!(
        e,
        format!(
            "vhost-user-scsi: error: --lun {arg}: size= image {} is a symbolic link: files \
             this daemon creates are never opened through one",
            link.display()
        )
    );
    assert!(!absent.exists(), "created through the link");
    std::fs::remove_file(&link).unwrap();
    symlink(&victim, &link).unwrap();
    let e = fails_bounded(&["--socket-path", &sock, "--lun", &arg]);
    assert!(e.contains("is a symbolic link"), "{e}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    // A hard link to another file at the pr-file path.
    let hard = d.path("hard");
    std::fs::hard_link(&victim, &hard).unwrap();
    let arg = lun_arg(&format!("pr-file={}", hard.display()));
    let e = fails_bounded(&["--socket-path", &sock, "--lun", &arg]);
    assert!(
        e.ends_with("has 2 hard links: it was not created by this daemon"),
        "{e}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");

    // Another user's file at the pr-file path (root only: chown).
    if nix::unistd::geteuid().is_root() {
        let foreign = d.path("foreign.pr");
        std::fs::write(&foreign, b"").unwrap();
        nix::unistd::chown(&foreign, Some(nix::unistd::Uid::from_raw(65534)), None).unwrap();
        let arg = lun_arg(&format!("pr-file={}", foreign.display()));
        let e = fails_bounded(&["--socket-path", &sock, "--lun", &arg]);
        assert!(
            e.ends_with(
                "is owned by uid 65534, not by this daemon's uid 0: it was not created by it"
            ),
            "{e}"
        );
        std::fs::remove_file(&foreign).unwrap();
    } else {
        eprintln!("skipped the foreign-owner case: needs root");
    }
    std::fs::remove_file(&hard).unwrap();
    std::fs::remove_file(&link).unwrap();
    d.assert_only(&["a.img", "victim"]);
}
