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

/// The complete lines of a serial log that the guest is still writing (carriage returns
/// dropped). QEMU writes the guest's console to the file a few bytes at a time, so the last
/// line may be half there: "E2E-HP: added de" was once read for "E2E-HP: added dev=sdb
/// sectors=131072". Only text followed by a newline counts.
pub fn complete_lines(serial: &str) -> Vec<String> {
    let done = serial.rfind('\n').map_or("", |end| &serial[..end]);
    done.lines().map(|l| l.replace('\r', "")).collect()
}

#[cfg(test)]
mod tests {
    use super::complete_lines;

    #[test]
    fn a_line_still_being_written_is_not_read() {
        assert_eq!(complete_lines(""), Vec::<String>::new());
        assert_eq!(complete_lines("E2E-HP: added de"), Vec::<String>::new());
        assert_eq!(
            complete_lines("boot\r\nE2E-HP: ready base=sda\r\nE2E-HP: added de"),
            ["boot", "E2E-HP: ready base=sda"]
        );
        assert_eq!(complete_lines("a\nb\n"), ["a", "b"]);
    }
}
