//! What the guest end-to-end tests (`tests/e2e_*.rs`) share on the host side.

use std::{
    path::Path,
    process::{Command, Stdio},
};

/// The system QEMU that `tests/e2e/setup.sh` provides (installing what the guest tests need on
/// the way); panics with setup.sh's output when there is none.
pub fn system_qemu() -> String {
    let out = Command::new("bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../e2e/setup.sh"))
        .arg("--no-backports")
        .stdin(Stdio::null())
        .output()
        .expect("cannot run tests/e2e/setup.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "setup.sh failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.len() >= 3 && f[0] == "E2E-QEMU" && f[1] == "system").then(|| f[2].to_string())
        })
        .unwrap_or_else(|| panic!("setup.sh reported no system QEMU:\n{stdout}"))
}

/// An ISO 9660 image (Rock Ridge, Joliet) of the directory `root` at `iso`, labelled `volume`,
/// made with genisoimage (tests/e2e/setup.sh installs it).
pub fn genisoimage(root: &Path, iso: &Path, volume: &str) {
    let st = Command::new("genisoimage")
        .args(["-quiet", "-R", "-J", "-V", volume, "-o"])
        .arg(iso)
        .arg(root)
        .status()
        .expect("genisoimage (tests/e2e/setup.sh installs it)");
    assert!(st.success(), "genisoimage failed: {st}");
}
