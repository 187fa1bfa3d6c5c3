#![no_main]
//! Input format and invariants: see `src/iscsi_login.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_user_scsi_fuzz::iscsi_login::run(data));
