//! `--print-capabilities`: what this back-end program supports, for management software.
//!
//! QEMU's vhost-user "backend program conventions" (docs/interop/vhost-user.rst) ask every
//! back-end to describe itself as a JSON object `{"type": ..., "features": [...]}` on stdout
//! when run with `--print-capabilities`, and to exit 0 without doing anything else.

use std::io::{self, Write};

use serde::Serialize;

/// The vhost-user device type we implement (the `type` member of the capabilities object).
pub const DEVICE_TYPE: &str = "scsi";

/// Optional features this daemon implements, by name.
///
/// **These names are a stable interface**: management software (libvirt, scripts) may test for
/// them to decide which command-line options it can pass. Never rename or remove an entry; only
/// add new ones for new abilities.
///
/// - `read-only`: `--lun ...,readonly` / `read-only = true` serves a LUN write-protected.
/// - `multiqueue`: `--num-queues N` offers more than one request queue.
/// - `discard`: UNMAP / WRITE SAME with UNMAP reach the backing file (`discard=on|off`).
/// - `block-size`: `block-size=512|4096` per LUN.
/// - `cache-mode`: `cache=none|writeback` per LUN (`none` means `O_DIRECT`).
/// - `serial`: `serial=S` per LUN (VPD page 80h).
/// - `wwn`: `wwn=W` per LUN (NAA designator in VPD page 83h).
/// - `config-file`: `--config FILE` (TOML).
/// - `systemd-activation`: the listening socket may come from systemd (`LISTEN_FDS`).
/// - `reconnect`: after the front-end disconnects, the daemon waits for the next connection.
/// - `exit-on-disconnect`: `--exit-on-disconnect` turns `reconnect` off.
/// - `syslog`: `--syslog` logs to the system log instead of stderr.
/// - `cdrom`: `--lun ...,type=cdrom` serves an ISO image as a CD/DVD-ROM drive.
/// - `removable`: `--lun ...,removable` serves a disk with a removable medium (RMB = 1).
pub const FEATURES: &[&str] = &[
    "read-only",
    "multiqueue",
    "discard",
    "block-size",
    "cache-mode",
    "serial",
    "wwn",
    "config-file",
    "systemd-activation",
    "reconnect",
    "exit-on-disconnect",
    "syslog",
    "cdrom",
    "removable",
];

#[derive(Serialize)]
struct Capabilities {
    #[serde(rename = "type")]
    device_type: &'static str,
    features: &'static [&'static str],
}

/// The capabilities object as pretty-printed JSON, without a trailing newline.
pub fn to_json() -> String {
    serde_json::to_string_pretty(&Capabilities {
        device_type: DEVICE_TYPE,
        features: FEATURES,
    })
    .expect("serializing static strings cannot fail")
}

/// Writes the capabilities object and a newline to `out` (main passes stdout).
pub fn print(out: &mut impl Write) -> io::Result<()> {
    writeln!(out, "{}", to_json())?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let v: serde_json::Value = serde_json::from_str(&to_json()).unwrap();
        assert_eq!(v["type"], "scsi");
        let features: Vec<&str> = v["features"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert_eq!(features, FEATURES);
        assert_eq!(v.as_object().unwrap().len(), 2);
    }

    #[test]
    fn feature_names_are_unique_kebab_case() {
        let mut seen = std::collections::HashSet::new();
        for f in FEATURES {
            assert!(seen.insert(*f), "duplicate feature {f}");
            assert!(f
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'));
        }
    }

    #[test]
    fn print_ends_with_newline() {
        let mut buf = Vec::new();
        print(&mut buf).unwrap();
        assert!(buf.ends_with(b"}\n"));
    }
}
