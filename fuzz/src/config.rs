//! The LUN option language (`--lun [T:L=]SOURCE[,OPTION[=VALUE]]...`) and the TOML
//! configuration file, both ending in the one validation path (`LunFields::validate`).
//!
//! Input: first byte selects the parser (even: `--lun`, odd: TOML), the rest is the text
//! (lossily decoded as UTF-8, as the command line's OsString would be refused otherwise).
//! Invariants: no panic; whatever validates is within the documented ranges.

use std::path::Path;

use vhost_user_scsi::config::{
    file::parse_str,
    lun::{LunFields, LunSpec, MAX_SERIAL_LEN},
    BlockSize, LunSource, MAX_LUN,
};

fn check(spec: &LunSpec) {
    let c = &spec.config;
    if let Some((_, lun)) = spec.address {
        assert!(lun <= MAX_LUN, "LUN {lun} accepted");
    }
    match &c.source {
        LunSource::Path(p) => assert!(!p.as_os_str().is_empty(), "empty source accepted"),
        LunSource::Iscsi(i) => {
            assert!(
                !i.host.is_empty() && i.port != 0,
                "iSCSI portal {i} accepted"
            );
            assert!(i.lun <= MAX_LUN, "iSCSI LUN {} accepted", i.lun);
            assert_eq!(
                i.user.is_some(),
                i.chap_secret_file.is_some(),
                "CHAP user without secret file or the reverse accepted: {i}"
            );
            assert!(
                !i.user.as_deref().unwrap_or("").contains(':'),
                "a USER:PASSWORD URL accepted"
            );
        }
    }
    if let Some(s) = &c.serial {
        assert!(
            s.len() <= MAX_SERIAL_LEN,
            "serial of {} bytes accepted",
            s.len()
        );
    }
    let bs = c.block_size.bytes();
    assert!(matches!(c.block_size, BlockSize::B512 | BlockSize::B4096));
    if let Some(p) = c.phys_block_size {
        assert!(
            p.is_power_of_two() && p >= bs && p <= 32768,
            "physical block size {p} accepted with logical {bs}"
        );
    }
    if let Some(size) = c.create_size {
        assert!(size > 0 && size <= i64::MAX as u64, "size {size} accepted");
    }
}

/// One input (the fuzz target's body; also replayed by `tests/corpus.rs`).
pub fn run(data: &[u8]) {
    let Some((&mode, text)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(text);
    if mode % 2 == 0 {
        if let Ok(fields) = LunFields::parse_arg(&text) {
            if let Ok(spec) = fields.validate() {
                check(&spec);
            }
        }
    } else if let Ok(cfg) = parse_str(&text, Path::new("fuzz.toml")) {
        for lun in &cfg.luns {
            if let Ok(spec) = lun.validate() {
                check(&spec);
            }
        }
    }
}
