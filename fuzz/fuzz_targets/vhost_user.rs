#![no_main]
//! Input format and invariants: see `src/vhost_user.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_user_scsi_fuzz::vhost_user::run(data));
