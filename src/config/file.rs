//! The TOML configuration file (`--config FILE`).
//!
//! It holds the same information as the command line: daemon options at the top level and one
//! `[[lun]]` table per logical unit. Key names are the long option names.
//!
//! ```toml
//! socket-path = "/run/vus/vm1.sock"   # or: fd = 3
//! num-queues = 4
//! queue-size = 1024
//! log-level = "info"
//! syslog = false
//! exit-on-disconnect = false
//! management-socket = "/run/vus/vm1.mgmt"   # runtime control (docs/management.md)
//! management-group = "vus-admin"           # optional
//! image-dir = ["/var/lib/images"]           # where add-lun may open images by path
//! pidfile = "/run/vus/vm1.pid"             # written once serving
//!
//! [[lun]]
//! target = 0                # optional, default 0
//! lun = 0                   # optional: without it the LUN is auto-numbered like a bare --lun
//! source = "/var/lib/images/disk0.img"
//! read-only = false
//! discard = true
//! cache = "writeback"       # or "none" (O_DIRECT)
//! enospc = "report"         # or "hold": keep and retry writes that found the storage full
//! block-size = 512          # or 4096
//! phys-block-size = 4096    # optional, default: block-size
//! serial = "DISK0"
//! wwn = "0x5000000000000001"
//! pr-file = "/var/lib/vus/disk0.pr"   # optional: persistent reservations survive restarts
//! removable = false         # optional: true makes the medium ejectable (RMB = 1)
//!
//! [[lun]]
//! source = "/var/lib/images/install.iso"
//! type = "cdrom"            # or "disk" (the default): read-only, 2048-byte blocks, removable
//!
//! [[lun]]                   # a LUN on an iSCSI target (docs/iscsi.md)
//! source = "iscsi://chapuser@192.0.2.10:3260/iqn.2026-01.com.example:disk/0"
//! initiator-name = "iqn.2026-01.com.example:vm1"
//! chap-secret-file = "/etc/vus/vm1.chap"   # the secret, read by the supervisor
//! header-digest = "crc32c"  # or "none" (default)
//! data-digest = "none"
//! ```
//!
//! Unknown keys are errors. Relative paths (`socket-path`, `source`, `pr-file`, `chap-secret-file`) are relative to the
//! directory holding the file. How the file combines with command-line options is described in
//! [`crate::config::cli`]. This module only reads and parses; validation of the values is shared with
//! the command line and lives in [`crate::config::cli`].

use std::{
    os::fd::RawFd,
    path::{Path, PathBuf},
};

use serde::Deserialize;

pub use super::error::ConfigFileError;

/// The file's contents, parsed but not yet validated.
#[derive(Debug, Default, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    pub socket_path: Option<PathBuf>,
    pub fd: Option<RawFd>,
    pub socket_group: Option<String>,
    pub num_queues: Option<u64>,
    pub queue_size: Option<u64>,
    pub log_level: Option<String>,
    pub syslog: Option<bool>,
    pub exit_on_disconnect: Option<bool>,
    pub allow_unsealed_memory: Option<bool>,
    pub management_socket: Option<PathBuf>,
    pub management_group: Option<String>,
    #[serde(default)]
    pub image_dir: Vec<PathBuf>,
    pub pidfile: Option<PathBuf>,
    #[serde(default, rename = "lun")]
    pub luns: Vec<FileLun>,
}

/// One `[[lun]]` table: the LUN grammar the command line's `--lun` shares.
pub type FileLun = super::lun::LunFields;

/// Reads and parses `path`, resolving relative paths in it against the file's directory.
pub fn load(path: &Path) -> Result<FileConfig, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigFileError::Read {
        path: path.to_owned(),
        error,
    })?;
    let mut cfg = parse_str(&text, path)?;
    let base = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let resolve = |p: &mut PathBuf| {
        if p.is_relative() && !p.as_os_str().is_empty() {
            *p = base.join(&*p);
        }
    };
    if let Some(p) = cfg.socket_path.as_mut() {
        resolve(p);
    }
    if let Some(p) = cfg.management_socket.as_mut() {
        resolve(p);
    }
    if let Some(p) = cfg.pidfile.as_mut() {
        resolve(p);
    }
    for p in &mut cfg.image_dir {
        resolve(p);
    }
    for lun in &mut cfg.luns {
        // URLs are not paths.
        let url = lun.source.to_str().is_some_and(|s| {
            s.starts_with(super::lun::ISCSI_SCHEME) || s.starts_with(super::lun::NULL_SCHEME)
        });
        if !url {
            resolve(&mut lun.source);
        }
        if let Some(p) = lun.chap_secret_file.as_mut() {
            resolve(p);
        }
        if let Some(p) = lun.pr_file.as_mut() {
            resolve(p);
        }
    }
    Ok(cfg)
}

/// Parses `text` (the contents of `path`, which is only used in errors). Paths are left as
/// written.
pub fn parse_str(text: &str, path: &Path) -> Result<FileConfig, ConfigFileError> {
    toml::from_str(text).map_err(|e| ConfigFileError::Parse {
        path: path.to_owned(),
        line: e
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
        message: e.message().trim().replace('\n', " "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
socket-path = "/run/vus/vm1.sock"   # or fd = 3
num-queues = 4
[[lun]]
target = 0
lun = 0
source = "/var/lib/images/disk0.img"
read-only = false
discard = true
cache = "writeback"
enospc = "hold"
block-size = 512
serial = "DISK0"
wwn = "0x5000000000000001"

[[lun]]
source = "disk1.img"
phys-block-size = 4096
pr-file = "disk1.pr"
"#;

    #[test]
    fn iscsi_lun_in_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "[[lun]]\nsource = \"iscsi://u@10.0.0.1/iqn.2026-01.org.example:d/1\"\n\
             chap-secret-file = \"chap\"\nheader-digest = \"crc32c\"\n",
        )
        .unwrap();
        let cfg = load(&path).unwrap();
        let spec = cfg.luns[0].validate().unwrap();
        let i = spec.config.source.iscsi().expect("an iSCSI source");
        assert_eq!(i.portal(), "10.0.0.1:3260");
        assert_eq!(
            i.chap_secret_file.as_deref(),
            Some(dir.path().join("chap").as_path())
        );
        assert_eq!(i.header_digest, crate::config::IscsiDigest::Crc32c);
    }

    #[test]
    fn parses_example() {
        let cfg = parse_str(EXAMPLE, Path::new("x.toml")).unwrap();
        assert_eq!(cfg.socket_path, Some(PathBuf::from("/run/vus/vm1.sock")));
        assert_eq!(cfg.fd, None);
        assert_eq!(cfg.num_queues, Some(4));
        assert_eq!(cfg.luns.len(), 2);
        assert_eq!(
            cfg.luns[0],
            FileLun {
                target: Some(0),
                lun: Some(0),
                source: "/var/lib/images/disk0.img".into(),
                lun_type: None,
                removable: None,
                read_only: Some(false),
                discard: Some(true),
                cache: Some("writeback".into()),
                enospc: Some("hold".into()),
                block_size: Some(512.into()),
                serial: Some("DISK0".into()),
                wwn: Some("0x5000000000000001".into()),
                size: None,
                phys_block_size: None,
                pr_file: None,
                ..Default::default()
            }
        );
        assert_eq!(
            cfg.luns[1],
            FileLun {
                source: "disk1.img".into(),
                phys_block_size: Some(4096.into()),
                pr_file: Some("disk1.pr".into()),
                ..Default::default()
            }
        );
    }

    #[test]
    fn cdrom_and_removable_keys() {
        let text = "[[lun]]\nsource = \"a.iso\"\ntype = \"cdrom\"\n\n\
                    [[lun]]\nsource = \"b.img\"\nremovable = true\n\n\
                    [[lun]]\nsource = \"c.iso\"\ntype = \"cdrom\"\nread-only = false\n";
        let cfg = parse_str(text, Path::new("x.toml")).unwrap();
        assert_eq!(cfg.luns[0].lun_type.as_deref(), Some("cdrom"));
        assert_eq!(cfg.luns[1].removable, Some(true));
        let a = cfg.luns[0].validate().unwrap().config;
        assert!(a.read_only && a.removable && a.block_size.bytes() == 2048);
        assert!(cfg.luns[1].validate().unwrap().config.removable);
        // The same validation as --lun, so the same message.
        assert_eq!(
            cfg.luns[2].validate().unwrap_err().to_string(),
            "readonly=off cannot be used with type=cdrom: a CD-ROM is read-only"
        );
    }

    #[test]
    fn empty_file_is_fine() {
        assert_eq!(
            parse_str("", Path::new("x.toml")).unwrap(),
            FileConfig::default()
        );
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = parse_str(
            "num-queues = 2\nsokcet-path = \"/x\"\n",
            Path::new("/etc/v.toml"),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("config file /etc/v.toml: line 2: unknown field `sokcet-path`"));
        assert!(!msg.contains('\n'));

        let e = parse_str(
            "[[lun]]\nsource = \"a\"\nreadonly = true\n",
            Path::new("v.toml"),
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown field `readonly`"), "{e}");
    }

    #[test]
    fn type_errors_and_syntax_errors_are_one_line() {
        for text in [
            "num-queues = \"four\"",
            "num-queues = -1",
            "[[lun]]\nlun = 0\n",
            "socket-path = ",
            "[[lun]]\nsource = \"a\"\nwwn = 5",
        ] {
            let e = parse_str(text, Path::new("v.toml")).unwrap_err();
            let msg = e.to_string();
            assert!(msg.starts_with("config file v.toml: line "), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
    }

    #[test]
    fn relative_paths_resolve_against_file_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("v.toml");
        std::fs::write(
            &file,
            "socket-path = \"s.sock\"\n[[lun]]\nsource = \"d.img\"\npr-file = \"d.pr\"\n[[lun]]\nsource = \"/abs.img\"\npr-file = \"/abs.pr\"\n",
        )
        .unwrap();
        let cfg = load(&file).unwrap();
        assert_eq!(cfg.socket_path, Some(dir.path().join("s.sock")));
        assert_eq!(cfg.luns[0].source, dir.path().join("d.img"));
        assert_eq!(cfg.luns[1].source, PathBuf::from("/abs.img"));
        assert_eq!(cfg.luns[0].pr_file, Some(dir.path().join("d.pr")));
        assert_eq!(cfg.luns[1].pr_file, Some(PathBuf::from("/abs.pr")));
    }

    #[test]
    fn missing_file() {
        let e = load(Path::new("/nonexistent/v.toml")).unwrap_err();
        assert_eq!(
            e.to_string(),
            "config file /nonexistent/v.toml: cannot read it: No such file or directory"
        );
    }
}
