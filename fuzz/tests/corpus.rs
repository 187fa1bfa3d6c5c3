//! Replays every checked-in input of every target (the seed corpora in `corpus/TARGET/` and
//! the inputs that once crashed, in `regressions/TARGET/`) through the target's body, without
//! libFuzzer or instrumentation: a plain `cargo test` on any toolchain. A regression input
//! that panics again fails here.

use std::{fs, path::Path, sync::Mutex};

/// One target at a time: the vhost_user target counts this process's open descriptors.
static SERIAL: Mutex<()> = Mutex::new(());

fn replay(target: &str, run: fn(&[u8])) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut n = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
        paths.sort();
        for path in paths {
            let data = fs::read(&path).unwrap();
            eprintln!("{target}: {}", path.display());
            run(&data);
            n += 1;
        }
    }
    assert!(n > 0, "no inputs for {target}");
}

#[test]
fn virtio_request() {
    replay("virtio_request", vhost_user_scsi_fuzz::virtio_request::run);
}

#[test]
fn scsi_cdb() {
    replay("scsi_cdb", vhost_user_scsi_fuzz::scsi_cdb::run);
}

#[test]
fn vhost_user() {
    replay("vhost_user", vhost_user_scsi_fuzz::vhost_user::run);
}

#[test]
fn config() {
    replay("config", vhost_user_scsi_fuzz::config::run);
}

#[test]
fn iscsi_pdu() {
    replay("iscsi_pdu", vhost_user_scsi_fuzz::iscsi_pdu::run);
}

#[test]
fn iscsi_login() {
    replay("iscsi_login", vhost_user_scsi_fuzz::iscsi_login::run);
}

#[test]
fn management() {
    replay("management", vhost_user_scsi_fuzz::management::run);
}
