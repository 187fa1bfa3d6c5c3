#![no_main]
//! Input format and invariants: see `src/config.rs`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| vhost_user_scsi_fuzz::config::run(data));
